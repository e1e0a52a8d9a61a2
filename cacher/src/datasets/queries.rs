//! Reading datasets back: one by name and version, and their members (a page, or all).

use milepost_schema::entity::{dataset, dataset_member};
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    QuerySelect as _,
};

use super::{DatasetError, ManifestEntry};

/// The dataset `name` at `version`, or its latest version when `version` is `None`.
pub async fn find_dataset(
    db: &impl ConnectionTrait,
    name: &str,
    version: Option<i32>,
) -> Result<Option<dataset::Model>, DatasetError> {
    let query = dataset::Entity::find().filter(dataset::Column::Name.eq(name));
    let found = match version {
        Some(v) => query.filter(dataset::Column::Version.eq(v)).one(db).await?,
        None => {
            query
                .order_by_desc(dataset::Column::Version)
                .one(db)
                .await?
        }
    };
    Ok(found)
}

/// Like [`find_dataset`], but a missing dataset is a [`NotFound`](DatasetErrorKind::NotFound)
/// error.
pub async fn get_dataset(
    db: &impl ConnectionTrait,
    name: &str,
    version: Option<i32>,
) -> Result<dataset::Model, DatasetError> {
    find_dataset(db, name, version)
        .await?
        .ok_or_else(|| DatasetError::NotFound {
            name: name.to_owned(),
            version,
        })
}

/// A page of a dataset's members in manifest order: positions after `after_position` (from
/// the start when `None`), at most `limit`.
pub async fn members(
    db: &impl ConnectionTrait,
    dataset_id: i64,
    after_position: Option<i64>,
    limit: u64,
) -> Result<Vec<dataset_member::Model>, DatasetError> {
    let mut query = dataset_member::Entity::find()
        .filter(dataset_member::Column::DatasetId.eq(dataset_id))
        .order_by_asc(dataset_member::Column::Position)
        // PostgreSQL takes LIMIT as a signed 64-bit integer.
        .limit(limit.min(i64::MAX as u64));
    if let Some(after) = after_position {
        query = query.filter(dataset_member::Column::Position.gt(after));
    }
    Ok(query.all(db).await?)
}

/// Every member of a dataset, in manifest order.
pub async fn all_members(
    db: &impl ConnectionTrait,
    dataset_id: i64,
) -> Result<Vec<ManifestEntry>, DatasetError> {
    const PAGE: u64 = 10_000;
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = members(db, dataset_id, after, PAGE).await?;
        let full = page.len() as u64 == PAGE;
        after = page.last().map(|m| m.position);
        out.extend(page.into_iter().map(ManifestEntry::from));
        if !full {
            return Ok(out);
        }
    }
}
