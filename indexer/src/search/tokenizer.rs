//! Text normalization shared by indexing and query parsing, so both sides always agree.
//!
//! - Free text is split into *words*: maximal runs of letters and digits
//!   ([`char::is_alphanumeric`]), lowercased character by character. `cut-in` is the words
//!   `cut`, `in` at consecutive positions, `/camera/front/image_compressed` is `camera`, `front`,
//!   `image`, `compressed`; a query word with separators becomes a phrase of its words, so
//!   `cut-in`, `av-3.14` and `front/image` all find what they look like.
//! - Each free-text value is also indexed as *word pairs* ([`PairTokenizer`]): every two
//!   consecutive words of one value as one term (`cut-in` → `cut in`, at the position of `cut`).
//!   A phrase of two words (`cut-in`, `gz-004`, `"lane merge"`) is then a single term lookup
//!   instead of a positional intersection with a word as frequent as `in`, and a longer phrase
//!   is a phrase over its pairs, which are far rarer than its words. Pairs never span two
//!   values, so what a phrase matches is exactly what it matched over words.
//! - Keyword fields (`city:`, `tag:`, `topic:` ...) keep the whole value: trimmed and lowercased,
//!   nothing else.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// Name under which [`WordTokenizer`] is registered. It is part of the on-disk schema, so a
/// change in tokenization must change this name: old indexes then fail the schema check and
/// are rebuilt instead of silently missing matches.
pub(crate) const WORD_TOKENIZER: &str = "milepost_words_v1";
/// Name under which [`PairTokenizer`] is registered; same rule as [`WORD_TOKENIZER`].
pub(crate) const PAIR_TOKENIZER: &str = "milepost_word_pairs_v1";

/// The pair term of two consecutive words. Words are letters and digits only, so the space
/// cannot be confused with a word's own characters.
pub(crate) fn pair(first: &str, second: &str) -> String {
    let mut out = String::with_capacity(first.len() + 1 + second.len());
    out.push_str(first);
    out.push(' ');
    out.push_str(second);
    out
}

/// Lowercases `c` into `out` the same way for documents and queries (per character, so the
/// result does not depend on context, unlike `str::to_lowercase` for a final sigma).
fn push_lowercase(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
    } else {
        out.extend(c.to_lowercase());
    }
}

/// The normalized form of a keyword value, or `None` when it is blank.
pub(crate) fn keyword(value: &str) -> Option<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        push_lowercase(&mut out, c);
    }
    Some(out)
}

/// The words of `text`, as the index stores them.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut tokenizer = WordTokenizer::default();
    let mut stream = tokenizer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// Tokenizer of the free-text fields: alphanumeric runs, lowercased.
#[derive(Clone, Debug, Default)]
pub(crate) struct WordTokenizer {
    token: Token,
}

#[derive(Debug)]
pub(crate) struct WordTokenStream<'a> {
    text: &'a str,
    chars: std::str::CharIndices<'a>,
    token: &'a mut Token,
}

impl Tokenizer for WordTokenizer {
    type TokenStream<'a> = WordTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> WordTokenStream<'a> {
        self.token.reset();
        WordTokenStream {
            text,
            chars: text.char_indices(),
            token: &mut self.token,
        }
    }
}

impl TokenStream for WordTokenStream<'_> {
    fn advance(&mut self) -> bool {
        self.token.text.clear();
        self.token.position = self.token.position.wrapping_add(1);
        for (start, c) in self.chars.by_ref() {
            if !c.is_alphanumeric() {
                continue;
            }
            self.token.offset_from = start;
            push_lowercase(&mut self.token.text, c);
            let mut end = self.text.len();
            for (offset, c) in self.chars.by_ref() {
                if !c.is_alphanumeric() {
                    end = offset;
                    break;
                }
                push_lowercase(&mut self.token.text, c);
            }
            self.token.offset_to = end;
            return true;
        }
        false
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

/// Tokenizer of the word-pair fields: every two consecutive words of a value as one token
/// (`"cut in"`), positioned at the first word, so pairs of one phrase are at consecutive
/// positions.
#[derive(Clone, Debug, Default)]
pub(crate) struct PairTokenizer {
    words: WordTokenizer,
    token: Token,
}

#[derive(Debug)]
pub(crate) struct PairTokenStream<'a> {
    words: WordTokenStream<'a>,
    /// The previous word, its position and start offset; `None` before the first word.
    previous: Option<(usize, usize)>,
    previous_text: String,
    token: &'a mut Token,
}

impl Tokenizer for PairTokenizer {
    type TokenStream<'a> = PairTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> PairTokenStream<'a> {
        self.token.reset();
        PairTokenStream {
            words: self.words.token_stream(text),
            previous: None,
            previous_text: String::new(),
            token: &mut self.token,
        }
    }
}

impl TokenStream for PairTokenStream<'_> {
    fn advance(&mut self) -> bool {
        while self.words.advance() {
            let word = self.words.token();
            let previous = self.previous.replace((word.position, word.offset_from));
            if let Some((position, offset_from)) = previous {
                self.token.text.clear();
                self.token.text.push_str(&self.previous_text);
                self.token.text.push(' ');
                self.token.text.push_str(&word.text);
                self.token.position = position;
                self.token.offset_from = offset_from;
                self.token.offset_to = word.offset_to;
                self.previous_text.clone_from(&word.text);
                return true;
            }
            self.previous_text.clone_from(&word.text);
        }
        false
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_separators_and_lowercase() {
        assert_eq!(words("Cut-In"), ["cut", "in"]);
        assert_eq!(words("av-3.14.2"), ["av", "3", "14", "2"]);
        assert_eq!(
            words("/camera/front/image_compressed"),
            ["camera", "front", "image", "compressed"]
        );
        assert_eq!(words("  Grüße, ΣΑΣ! "), ["grüße", "σασ"]);
        assert!(words("--- / ***").is_empty());
    }

    #[test]
    fn positions_and_offsets_follow_the_text() {
        let mut tokenizer = WordTokenizer::default();
        let mut stream = tokenizer.token_stream("GZ-004 rain");
        let mut seen = Vec::new();
        while stream.advance() {
            let t = stream.token();
            seen.push((t.text.clone(), t.position, t.offset_from, t.offset_to));
        }
        assert_eq!(
            seen,
            [
                ("gz".to_owned(), 0, 0, 2),
                ("004".to_owned(), 1, 3, 6),
                ("rain".to_owned(), 2, 7, 11)
            ]
        );
    }

    #[test]
    fn pairs_are_consecutive_words_at_the_first_position() {
        let mut tokenizer = PairTokenizer::default();
        let mut stream = tokenizer.token_stream("left-Cut-in, rain");
        let mut seen = Vec::new();
        while stream.advance() {
            let t = stream.token();
            seen.push((t.text.clone(), t.position, t.offset_from, t.offset_to));
        }
        assert_eq!(
            seen,
            [
                ("left cut".to_owned(), 0, 0, 8),
                ("cut in".to_owned(), 1, 5, 11),
                ("in rain".to_owned(), 2, 9, 17)
            ]
        );
        let mut stream = tokenizer.token_stream("alone");
        assert!(!stream.advance());
        assert_eq!(pair("cut", "in"), "cut in");
    }

    #[test]
    fn keywords_keep_the_whole_value() {
        assert_eq!(
            keyword(" Topic/Lidar_Points ").as_deref(),
            Some("topic/lidar_points")
        );
        assert_eq!(keyword("San Francisco").as_deref(), Some("san francisco"));
        assert_eq!(keyword("  "), None);
    }
}
