//! ListObjects (v1 and v2) over the office's view of a bucket: pages of the [`OfficeStore`]
//! (delimited pages when the client asks for a delimiter, so that a directory listing costs
//! one upstream LIST per page) cut to `max-keys`, resumable from an opaque token that names
//! the store page to read again and the last key or prefix returned.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::writeback::OfficeStore;
use milepost_store::{ObjectMeta, ObjectStore, StoreError};

/// Where a listing resumes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resume {
    /// The store's continuation token of the page holding the resume point.
    #[serde(rename = "t", default)]
    page: Option<String>,
    /// The last key (or common prefix) returned: everything up to it is skipped.
    #[serde(rename = "a", default)]
    after: String,
    /// The last common prefix returned: keys under it are skipped.
    #[serde(rename = "p", default)]
    prefix: Option<String>,
}

impl Resume {
    /// Resumes after `key` (StartAfter, Marker).
    pub fn after(key: String) -> Self {
        Self {
            page: None,
            prefix: None,
            after: key,
        }
    }

    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(token: &str) -> Option<Self> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// The v1 NextMarker: the last key or common prefix returned.
    pub fn marker(&self) -> String {
        self.prefix.clone().unwrap_or_else(|| self.after.clone())
    }

    fn skips(&self, key: &str) -> bool {
        key <= self.after.as_str() || self.prefix.as_deref().is_some_and(|p| key.starts_with(p))
    }
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listed {
    pub contents: Vec<ObjectMeta>,
    pub prefixes: Vec<String>,
    /// Where the next page starts, when the listing is truncated.
    pub next: Option<Resume>,
}

/// Lists up to `max_keys` keys and common prefixes of `bucket` under `prefix`.
pub async fn list(
    store: &OfficeStore,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    resume: Option<Resume>,
    max_keys: usize,
) -> Result<Listed, StoreError> {
    let mut resume = resume.unwrap_or_default();
    // A marker that is itself a common prefix (v1 NextMarker) skips the keys under it.
    if resume.prefix.is_none() {
        if let Some(d) = delimiter {
            if !resume.after.is_empty() && resume.after.ends_with(d) {
                resume.prefix = Some(resume.after.clone());
            }
        }
    }
    let mut listed = Listed::default();
    let mut page_token = resume.page.clone();
    loop {
        // With a delimiter the store groups (one upstream LIST per page of names, however
        // many keys lie under each common prefix); the grouping below stays for a store that
        // lists keys under a common prefix anyway.
        let (entries, next) = match delimiter {
            Some(d) => {
                let page = store
                    .list_delimited(bucket, prefix, d, page_token.clone())
                    .await?;
                let mut entries: Vec<Entry> = page
                    .objects
                    .into_iter()
                    .map(Entry::Object)
                    .chain(page.prefixes.into_iter().map(Entry::Prefix))
                    .collect();
                entries.sort_by(|a, b| a.name().cmp(b.name()));
                (entries, page.next)
            }
            None => {
                let page = store.list_page(bucket, prefix, page_token.clone()).await?;
                (
                    page.objects.into_iter().map(Entry::Object).collect(),
                    page.next,
                )
            }
        };
        for entry in entries {
            if resume.skips(entry.name()) {
                continue;
            }
            let grouped = match &entry {
                Entry::Prefix(common) => Some(common.clone()),
                Entry::Object(object) => delimiter.and_then(|d| {
                    object.key[prefix.len()..]
                        .find(d)
                        .map(|at| object.key[..prefix.len() + at + d.len()].to_owned())
                }),
            };
            if listed.contents.len() + listed.prefixes.len() >= max_keys {
                listed.next = Some(Resume {
                    page: page_token,
                    ..resume
                });
                return Ok(listed);
            }
            match (grouped, entry) {
                (Some(common), _) => {
                    resume.after = common.clone();
                    resume.prefix = Some(common.clone());
                    listed.prefixes.push(common);
                }
                (None, Entry::Object(object)) => {
                    resume.after = object.key.clone();
                    resume.prefix = None;
                    listed.contents.push(object);
                }
                (None, Entry::Prefix(_)) => {}
            }
        }
        match next {
            Some(next) => page_token = Some(next),
            None => return Ok(listed),
        }
    }
}

/// A name of a listing page: an object, or a common prefix.
enum Entry {
    Object(ObjectMeta),
    Prefix(String),
}

impl Entry {
    fn name(&self) -> &str {
        match self {
            Entry::Object(object) => &object.key,
            Entry::Prefix(prefix) => prefix,
        }
    }
}
