//! [`ObjectMetadata`]: the headers S3 keeps with an object and gives back on HEAD and GET.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The prefix of user metadata headers.
pub const USER_METADATA_PREFIX: &str = "x-amz-meta-";

/// What S3 stores with an object besides its bytes, as written by PutObject or
/// CreateMultipartUpload and returned by HeadObject and GetObject: the standard
/// representation headers and the user metadata (`x-amz-meta-*`).
///
/// Every field is optional; [`Default`] is an object without any. Values are kept as the
/// headers carry them (`expires` too: S3 returns the string it was given, which need not be a
/// valid date). Serializes to JSON without the absent fields, for the write-back journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectMetadata {
    /// `Content-Type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `Cache-Control`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `Content-Disposition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    /// `Content-Encoding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `Content-Language`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// `Expires`, the HTTP-date string as given (`Thu, 01 Dec 2026 16:00:00 GMT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The user metadata: `x-amz-meta-<name>` headers by `<name>`, lower-cased and without
    /// the prefix (HTTP header names are case-insensitive; S3 returns them in lower case).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

impl ObjectMetadata {
    /// Whether no field is set (an object written without any of these headers).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Sets user metadata `name` (`x-amz-meta-` prefix optional, any case) to `value`.
    pub fn insert_user(&mut self, name: &str, value: impl Into<String>) {
        self.user.insert(user_name(name), value.into());
    }

    /// These metadata with user metadata `name` set to `value`; see
    /// [`insert_user`](Self::insert_user).
    #[must_use]
    pub fn with_user(mut self, name: &str, value: impl Into<String>) -> Self {
        self.insert_user(name, value);
        self
    }

    /// The user metadata of an answer (`x-amz-meta-*` names, with or without the prefix, in
    /// any case), normalized as [`user`](Self::user) keeps them.
    pub fn user_from<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> BTreeMap<String, String>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        pairs
            .into_iter()
            .map(|(name, value)| (user_name(name.as_ref()), value.into()))
            .collect()
    }

    /// The JSON the write-back journal keeps, `None` when empty (the column stays null).
    pub fn to_json(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        // Strings and a map of strings: serializing cannot fail.
        serde_json::to_string(self).ok()
    }

    /// Parses what [`to_json`](Self::to_json) wrote.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// `name` lower-cased, without the `x-amz-meta-` prefix.
fn user_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.strip_prefix(USER_METADATA_PREFIX) {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_metadata_is_empty_and_has_no_json() {
        let empty = ObjectMetadata::default();
        assert!(empty.is_empty());
        assert_eq!(empty.to_json(), None);
        assert_eq!(
            ObjectMetadata::from_json("{}").expect("empty json"),
            ObjectMetadata::default()
        );
        let typed = ObjectMetadata {
            content_type: Some("text/plain".into()),
            ..ObjectMetadata::default()
        };
        assert!(!typed.is_empty());
        assert!(!ObjectMetadata::default().with_user("a", "").is_empty());
    }

    #[test]
    fn user_names_are_lower_case_without_prefix() {
        let meta = ObjectMetadata::default()
            .with_user("X-Amz-Meta-Vehicle", "car-7")
            .with_user("Run-Id", "r1");
        assert_eq!(
            meta.user.iter().collect::<Vec<_>>(),
            [
                (&"run-id".to_owned(), &"r1".to_owned()),
                (&"vehicle".to_owned(), &"car-7".to_owned())
            ]
        );
        let from = ObjectMetadata::user_from([("x-amz-meta-A", "1"), ("b", "2")]);
        assert_eq!(from.get("a").map(String::as_str), Some("1"));
        assert_eq!(from.get("b").map(String::as_str), Some("2"));
    }

    #[test]
    fn json_round_trips_and_omits_absent_fields() {
        let meta = ObjectMetadata {
            content_type: Some("application/x-mcap".into()),
            cache_control: Some("no-cache".into()),
            content_disposition: Some("attachment; filename=\"a b.mcap\"".into()),
            content_encoding: Some("zstd".into()),
            content_language: Some("de-DE".into()),
            expires: Some("Thu, 01 Dec 2026 16:00:00 GMT".into()),
            user: ObjectMetadata::user_from([("vehicle", "car-7"), ("note", "ünïcode")]),
        };
        let json = meta.to_json().expect("json");
        assert_eq!(ObjectMetadata::from_json(&json).expect("parse"), meta);

        let only_type = ObjectMetadata {
            content_type: Some("text/csv".into()),
            ..ObjectMetadata::default()
        };
        assert_eq!(
            only_type.to_json().as_deref(),
            Some(r#"{"content_type":"text/csv"}"#)
        );
        // A field a later version may add does not make the journal unreadable.
        assert_eq!(
            ObjectMetadata::from_json(r#"{"content_type":"text/csv","colour":"red"}"#)
                .expect("unknown field"),
            only_type
        );
    }
}
