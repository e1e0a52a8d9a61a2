//! Text normalization shared by indexing and query parsing, so both sides always agree.
//!
//! - Free text is split into *words*: maximal runs of letters and digits
//!   ([`char::is_alphanumeric`]), lowercased character by character. `cut-in` is the words
//!   `cut`, `in` at consecutive positions, `/camera/front/image_compressed` is `camera`, `front`,
//!   `image`, `compressed`; a query word with separators becomes a phrase of its words, so
//!   `cut-in`, `av-3.14` and `front/image` all find what they look like.
//! - Keyword fields (`city:`, `tag:`, `topic:` ...) keep the whole value: trimmed and lowercased,
//!   nothing else.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// Name under which [`WordTokenizer`] is registered. It is part of the on-disk schema, so a
/// change in tokenization must change this name: old indexes then fail the schema check and
/// are rebuilt instead of silently missing matches.
pub(crate) const WORD_TOKENIZER: &str = "milepost_words_v1";

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
    fn keywords_keep_the_whole_value() {
        assert_eq!(
            keyword(" Topic/Lidar_Points ").as_deref(),
            Some("topic/lidar_points")
        );
        assert_eq!(keyword("San Francisco").as_deref(), Some("san francisco"));
        assert_eq!(keyword("  "), None);
    }
}
