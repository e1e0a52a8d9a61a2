//! The listing stage: pages of the scope's prefixes, sent on as they arrive.
//!
//! A whole pass splits each root prefix into its folders (`drives/<day>/`, `runs/<id>/`) with
//! delimited listings, until there are enough to keep [`LIST_CONCURRENCY`] listings busy, and
//! lists those folders in parallel: a single paginated listing is a chain of round trips,
//! each waiting for the previous page's continuation token. A targeted pass lists its few
//! prefixes as they are.

use std::sync::Arc;

use futures::StreamExt;
use milepost_store::{ObjectMeta, ObjectStore};
use tokio::sync::mpsc;

use super::SyncError;

/// Listings in flight at once.
const LIST_CONCURRENCY: usize = 8;
/// A whole pass stops splitting folders once it has this many to list.
const ENOUGH_FOLDERS: usize = 4 * LIST_CONCURRENCY;
/// How deep below a root prefix the split may go (`drives/<day>/<vehicle>/`).
const MAX_SPLIT_DEPTH: usize = 2;

/// Lists `prefixes` of `bucket` into `pages`; splits them into folders listed in parallel
/// when `split`. Returns when every page was sent (or the receiver is gone).
pub(super) async fn list(
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefixes: Vec<String>,
    split: bool,
    pages: mpsc::Sender<Vec<ObjectMeta>>,
) -> Result<(), SyncError> {
    let folders = if split {
        split_into_folders(&store, &bucket, prefixes, &pages).await?
    } else {
        prefixes
    };
    let mut listings = futures::stream::iter(folders)
        .map(|prefix| list_prefix(store.clone(), bucket.clone(), prefix, pages.clone()))
        .buffer_unordered(LIST_CONCURRENCY);
    while let Some(done) = listings.next().await {
        done?;
    }
    Ok(())
}

/// Every page under `prefix`, in order.
async fn list_prefix(
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
    pages: mpsc::Sender<Vec<ObjectMeta>>,
) -> Result<(), SyncError> {
    let mut continuation = None;
    loop {
        let page = store
            .list_page(&bucket, &prefix, continuation.take())
            .await
            .map_err(|source| list_error(&bucket, &prefix, source))?;
        if !page.objects.is_empty() && pages.send(page.objects).await.is_err() {
            return Ok(());
        }
        match page.next {
            Some(next) => continuation = Some(next),
            None => return Ok(()),
        }
    }
}

/// Replaces the roots by their folders, level by level, until there are [`ENOUGH_FOLDERS`]
/// or [`MAX_SPLIT_DEPTH`] is reached; objects lying directly in a split folder are sent on.
async fn split_into_folders(
    store: &Arc<dyn ObjectStore>,
    bucket: &str,
    roots: Vec<String>,
    pages: &mpsc::Sender<Vec<ObjectMeta>>,
) -> Result<Vec<String>, SyncError> {
    let mut frontier = roots;
    for _ in 0..MAX_SPLIT_DEPTH {
        if frontier.len() >= ENOUGH_FOLDERS {
            break;
        }
        let mut next = Vec::new();
        let mut splits = futures::stream::iter(frontier)
            .map(|prefix| folders_of(store.clone(), bucket.to_owned(), prefix, pages.clone()))
            .buffered(LIST_CONCURRENCY);
        while let Some(folders) = splits.next().await {
            next.extend(folders?);
        }
        frontier = next;
    }
    Ok(frontier)
}

/// The folders directly under `prefix`; its own objects go to `pages`.
async fn folders_of(
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
    pages: mpsc::Sender<Vec<ObjectMeta>>,
) -> Result<Vec<String>, SyncError> {
    let mut folders = Vec::new();
    let mut continuation = None;
    loop {
        let page = store
            .list_delimited(&bucket, &prefix, "/", continuation.take())
            .await
            .map_err(|source| list_error(&bucket, &prefix, source))?;
        folders.extend(page.prefixes);
        if !page.objects.is_empty() {
            // A closed receiver means the pass is over: nothing more to send.
            let _ = pages.send(page.objects).await;
        }
        match page.next {
            Some(next) => continuation = Some(next),
            None => return Ok(folders),
        }
    }
}

fn list_error(bucket: &str, prefix: &str, source: milepost_store::StoreError) -> SyncError {
    SyncError::List {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        source,
    }
}
