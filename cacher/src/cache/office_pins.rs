//! In an office cluster, what other nodes need kept: pins live in each node's book, so a
//! node about to evict an entry asks the shared database whether the office still needs it.

use sea_orm::{ConnectionTrait as _, DatabaseBackend, DatabaseConnection, Statement};

use super::{CacheError, ObjectKey};

/// Whether `object` is dirty (written in the office, not yet in S3) or belongs to a dataset
/// an active reservation holds. A byte range or trimmed entry (`<key>#...`) counts as its
/// source object's. Reservations of dead nodes count too: another node takes them over.
pub(super) async fn needed(
    db: &DatabaseConnection,
    object: &ObjectKey,
) -> Result<bool, CacheError> {
    let source_key = object
        .key
        .split_once('#')
        .map_or(object.key.as_str(), |(key, _)| key);
    let row = db
        .query_one(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "SELECT \
               EXISTS (SELECT 1 FROM cache_entries WHERE bucket = $1 AND key = $2 AND etag = $3 \
                       AND state = 'dirty') \
               OR EXISTS (SELECT 1 FROM dataset_members m \
                       JOIN reservations r ON r.dataset_id = m.dataset_id \
                       WHERE r.state IN ('pending', 'materializing', 'ready') \
                       AND m.bucket = $1 AND m.key = $4 AND m.etag = $3) AS needed",
            [
                object.bucket.clone().into(),
                object.key.clone().into(),
                object.etag.clone().into(),
                source_key.to_owned().into(),
            ],
        ))
        .await
        .map_err(|err| {
            CacheError::database(format!("checking whether the office needs {object}"), err)
        })?;
    match row {
        Some(row) => row.try_get::<bool>("", "needed").map_err(|err| {
            CacheError::database(format!("checking whether the office needs {object}"), err)
        }),
        None => Ok(false),
    }
}
