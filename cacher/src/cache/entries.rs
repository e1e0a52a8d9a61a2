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
    let now = Utc::now();
    let row = cache_entry::ActiveModel {
        bucket: Set(object.bucket.clone()),
        key: Set(object.key.clone()),
        etag: Set(object.etag.clone()),
        size: Set(i64::try_from(object.size).unwrap_or(i64::MAX)),
        path: Set(path.to_owned()),
        state: Set(state),
        last_access: Set(now),
        created_at: Set(now),
        ..Default::default()
    };
    cache_entry::Entity::insert(row)
        .on_conflict(
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
            .to_owned(),
        )
        .exec(db)
        .await
        .map_err(|err| {
            CacheError::database(format!("recording the cache entry of {object}"), err)
        })?;
    Ok(())
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
