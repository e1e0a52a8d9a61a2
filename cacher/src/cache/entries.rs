//! The `cache_entries` rows: the content store's state persisted in the database.

use chrono::Utc;
use milepost_schema::entity::cache_entry;
use milepost_schema::enums::CacheEntryState;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _, QueryOrder as _, Set,
};

use super::{CacheError, ObjectKey};

/// Row ids deleted per statement.
const IDS_PER_DELETE: usize = 500;
/// Rows per multi-row upsert (8 columns each, under every backend's parameter limit).
const ROWS_PER_UPSERT: usize = 100;

/// Records `object` as ready at `path` (relative to the cache root), replacing any row of the
/// same (bucket, key, etag).
pub(super) async fn upsert_ready(
    db: &DatabaseConnection,
    object: &ObjectKey,
    path: &str,
) -> Result<(), CacheError> {
    upsert(db, object, path, CacheEntryState::Ready).await
}

/// Records `object` in `state` at `path` (relative to the cache root), replacing any row of
/// the same (bucket, key, etag).
pub(super) async fn upsert(
    db: &DatabaseConnection,
    object: &ObjectKey,
    path: &str,
    state: CacheEntryState,
) -> Result<(), CacheError> {
    cache_entry::Entity::insert(row(object, path, state, Utc::now()))
        .on_conflict(replace_on_conflict())
        .exec_without_returning(db)
        .await
        .map_err(|err| {
            CacheError::database(format!("recording the cache entry of {object}"), err)
        })?;
    Ok(())
}

/// Records each of `entries` as ready at its path, in multi-row statements; when one fails,
/// its rows are retried one by one so that one bad row costs only itself. Failures are
/// logged: the files are verified and in place, and one without its row is removed at the
/// next start-up as an orphan.
pub(super) async fn upsert_ready_many(db: &DatabaseConnection, entries: Vec<(ObjectKey, String)>) {
    let entries = last_of_each(&entries);
    let now = Utc::now();
    for chunk in entries.chunks(ROWS_PER_UPSERT) {
        let rows = chunk
            .iter()
            .map(|(object, path)| row(object, path, CacheEntryState::Ready, now));
        let result = cache_entry::Entity::insert_many(rows)
            .on_conflict(replace_on_conflict())
            .exec_without_returning(db)
            .await;
        let Err(err) = result else { continue };
        if chunk.len() > 1 {
            tracing::warn!(rows = chunk.len(), error = %err, "cannot record cache entries together, one at a time");
        }
        for (object, path) in chunk {
            if let Err(err) = upsert(db, object, path, CacheEntryState::Ready).await {
                tracing::error!(object = %object, error = %err, "cannot record a cache entry");
            }
        }
    }
}

/// `entries` without those a later one of the same object replaces, in order: one statement
/// cannot touch a row twice (PostgreSQL refuses), and the last write wins, as it would one
/// statement at a time.
fn last_of_each(entries: &[(ObjectKey, String)]) -> Vec<&(ObjectKey, String)> {
    let mut latest = std::collections::HashMap::with_capacity(entries.len());
    fn conflict_key(o: &ObjectKey) -> (&str, &str, &str) {
        (&o.bucket, &o.key, &o.etag)
    }
    for (i, (object, _)) in entries.iter().enumerate() {
        latest.insert(conflict_key(object), i);
    }
    entries
        .iter()
        .enumerate()
        .filter(|(i, (object, _))| latest.get(&conflict_key(object)) == Some(i))
        .map(|(_, entry)| entry)
        .collect()
}

fn row(
    object: &ObjectKey,
    path: &str,
    state: CacheEntryState,
    now: chrono::DateTime<Utc>,
) -> cache_entry::ActiveModel {
    cache_entry::ActiveModel {
        bucket: Set(object.bucket.clone()),
        key: Set(object.key.clone()),
        etag: Set(object.etag.clone()),
        size: Set(i64::try_from(object.size).unwrap_or(i64::MAX)),
        path: Set(path.to_owned()),
        state: Set(state),
        last_access: Set(now),
        created_at: Set(now),
        ..Default::default()
    }
}

/// A row of the same (bucket, key, etag) is replaced.
fn replace_on_conflict() -> OnConflict {
    OnConflict::columns([
        cache_entry::Column::Bucket,
        cache_entry::Column::Key,
        cache_entry::Column::Etag,
    ])
    .update_columns([
        cache_entry::Column::Size,
        cache_entry::Column::Path,
        cache_entry::Column::State,
        cache_entry::Column::LastAccess,
        cache_entry::Column::CreatedAt,
    ])
    .to_owned()
}

/// Sets the state of `object`'s row (`dirty` once written back becomes `ready`).
pub(super) async fn set_state(
    db: &DatabaseConnection,
    object: &ObjectKey,
    state: CacheEntryState,
) -> Result<(), CacheError> {
    cache_entry::Entity::update_many()
        .col_expr(
            cache_entry::Column::State,
            sea_orm::sea_query::Expr::value(state),
        )
        .filter(cache_entry::Column::Bucket.eq(&object.bucket))
        .filter(cache_entry::Column::Key.eq(&object.key))
        .filter(cache_entry::Column::Etag.eq(&object.etag))
        .exec(db)
        .await
        .map_err(|err| {
            CacheError::database(format!("updating the cache entry of {object}"), err)
        })?;
    Ok(())
}

/// The state of `object`'s row, if it has one (in cluster mode: whether another node holds
/// it in the office tier).
pub(super) async fn find_state(
    db: &DatabaseConnection,
    object: &ObjectKey,
) -> Result<Option<CacheEntryState>, CacheError> {
    let row = cache_entry::Entity::find()
        .filter(cache_entry::Column::Bucket.eq(&object.bucket))
        .filter(cache_entry::Column::Key.eq(&object.key))
        .filter(cache_entry::Column::Etag.eq(&object.etag))
        .one(db)
        .await
        .map_err(|err| {
            CacheError::database(format!("looking up the cache entry of {object}"), err)
        })?;
    Ok(row
        .filter(|row| u64::try_from(row.size).ok() == Some(object.size))
        .map(|row| row.state))
}

/// The objects whose rows are `dirty` (written in the office, not yet in S3).
pub(super) async fn dirty(db: &DatabaseConnection) -> Result<Vec<ObjectKey>, CacheError> {
    let rows = cache_entry::Entity::find()
        .filter(cache_entry::Column::State.eq(CacheEntryState::Dirty))
        .all(db)
        .await
        .map_err(|err| CacheError::database("loading the dirty cache entries", err))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            ObjectKey::new(
                row.bucket,
                row.key,
                row.etag,
                u64::try_from(row.size).unwrap_or(0),
            )
        })
        .collect())
}

/// Deletes the row of `object`, if any.
pub(super) async fn delete(db: &DatabaseConnection, object: &ObjectKey) -> Result<(), CacheError> {
    cache_entry::Entity::delete_many()
        .filter(cache_entry::Column::Bucket.eq(&object.bucket))
        .filter(cache_entry::Column::Key.eq(&object.key))
        .filter(cache_entry::Column::Etag.eq(&object.etag))
        .exec(db)
        .await
        .map_err(|err| {
            CacheError::database(format!("deleting the cache entry of {object}"), err)
        })?;
    Ok(())
}

/// Every row, least recently accessed first.
pub(super) async fn load_all(
    db: &DatabaseConnection,
) -> Result<Vec<cache_entry::Model>, CacheError> {
    cache_entry::Entity::find()
        .order_by_asc(cache_entry::Column::LastAccess)
        .order_by_asc(cache_entry::Column::Id)
        .all(db)
        .await
        .map_err(|err| CacheError::database("loading the cache entries", err))
}

/// Deletes the rows with these ids.
pub(super) async fn delete_ids(db: &DatabaseConnection, ids: &[i64]) -> Result<(), CacheError> {
    for chunk in ids.chunks(IDS_PER_DELETE) {
        cache_entry::Entity::delete_many()
            .filter(cache_entry::Column::Id.is_in(chunk.iter().copied()))
            .exec(db)
            .await
            .map_err(|err| CacheError::database("dropping stale cache entries", err))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{last_of_each, ObjectKey};

    #[test]
    fn a_batch_keeps_the_last_write_of_each_entry_in_order() {
        let object = |key: &str, etag: &str| ObjectKey::new("b", key, etag, 1);
        let entries = vec![
            (object("a", "1"), "first".to_owned()),
            (object("b", "1"), "b".to_owned()),
            (object("a", "2"), "other etag".to_owned()),
            (object("a", "1"), "second".to_owned()),
        ];
        let kept: Vec<_> = last_of_each(&entries)
            .into_iter()
            .map(|(o, path)| (o.key.as_str(), o.etag.as_str(), path.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                ("b", "1", "b"),
                ("a", "2", "other etag"),
                ("a", "1", "second")
            ]
        );
    }
}
