//! What a new dataset holds: the objects picked by a search query, by entity ids, or listed
//! explicitly, optionally narrowed by key globs. Resolved against the catalog when the dataset
//! is created, so the manifest freezes the ETags seen now.

use milepost_cacher::datasets::ManifestEntry;
use milepost_cacher::StoreErrorKind;
use milepost_indexer::catalog::{self, Owner};
use milepost_indexer::search::{EntityKind, SearchRequest};
use milepost_schema::entity::object;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::error::{ApiError, ApiResult};
use crate::server::AppState;

/// Most entities a query may select, so a careless query cannot build a petabyte dataset.
pub const MAX_SELECTED_ENTITIES: usize = 10_000;

/// One of the three ways to pick objects.
#[derive(Clone, Debug)]
pub enum Selection {
    Query(String),
    EntityIds(Vec<String>),
    Objects(Vec<(String, String)>),
}

/// A key glob: `*` matches within one path step, `**` across steps, `?` one character. A
/// pattern without `/` matches the file name; with `/`, the key relative to its drive or run
/// (`camera/front/*`) or the whole key.
#[derive(Clone, Debug)]
pub struct Glob(String);

impl Glob {
    pub fn new(field: &str, pattern: &str) -> ApiResult<Glob> {
        if pattern.trim().is_empty() || pattern.len() > 256 {
            return Err(ApiError::bad_input(
                field,
                "expected a key glob of 1-256 characters, e.g. *.mcap",
            ));
        }
        Ok(Glob(pattern.trim().to_owned()))
    }

    pub fn matches(&self, key: &str, owner_prefix: Option<&str>) -> bool {
        let pattern = self.0.as_bytes();
        if !self.0.contains('/') {
            let name = key.rsplit('/').next().unwrap_or(key);
            return glob_match(pattern, name.as_bytes());
        }
        if let Some(relative) = owner_prefix.and_then(|p| key.strip_prefix(p)) {
            if glob_match(pattern, relative.as_bytes()) {
                return true;
            }
        }
        glob_match(pattern, key.as_bytes())
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            let rest = &rest[1..];
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            (0..=text.len()).any(|i| glob_match(rest, &text[i..]))
        }
        Some((b'*', rest)) => {
            for i in 0..=text.len() {
                if glob_match(rest, &text[i..]) {
                    return true;
                }
                if text.get(i) == Some(&b'/') {
                    break;
                }
            }
            false
        }
        Some((b'?', rest)) => {
            text.first().is_some_and(|c| *c != b'/') && glob_match(rest, &text[1..])
        }
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

fn entry(row: &object::Model) -> ManifestEntry {
    ManifestEntry {
        bucket: row.bucket.clone(),
        key: row.key.clone(),
        size: row.size as u64,
        etag: row.etag.clone(),
    }
}

/// Live objects of a drive or run with the prefix they are relative to.
async fn owned_objects(
    app: &AppState,
    owner: Owner<'_>,
) -> ApiResult<(Vec<object::Model>, Option<String>)> {
    let (filter, prefix) = match owner {
        Owner::Drive(id) => (
            object::Column::DriveId.eq(id),
            catalog::get_drive(&app.db, id).await?.map(|d| d.prefix),
        ),
        Owner::Run(id) => (
            object::Column::RunId.eq(id),
            catalog::get_run(&app.db, id).await?.map(|r| r.prefix),
        ),
    };
    let rows = object::Entity::find()
        .filter(filter)
        .filter(object::Column::DeletedAt.is_null())
        .order_by_asc(object::Column::Id)
        .all(&app.db)
        .await
        .map_err(|err| ApiError::from(milepost_schema::DbError::from(err)))?;
    Ok((rows, prefix))
}

async fn entity_objects(
    app: &AppState,
    kind: EntityKind,
    id: &str,
    field: &str,
    include: &[Glob],
    out: &mut Vec<ManifestEntry>,
) -> ApiResult<()> {
    let owner_id;
    let owner = match kind {
        EntityKind::Drive => Owner::Drive(id),
        EntityKind::Run => Owner::Run(id),
        // A scenario selects its drive's files whole (trimming to the span is a later step).
        EntityKind::Scenario => {
            let scenario = catalog::get_scenario(&app.db, id)
                .await?
                .ok_or_else(|| ApiError::bad_input(field, format!("unknown scenario {id:?}")))?;
            owner_id = scenario.drive_id;
            Owner::Drive(&owner_id)
        }
        EntityKind::Dataset => {
            return Err(ApiError::bad_input(
                field,
                "datasets cannot be selected into datasets",
            ));
        }
    };
    let (rows, prefix) = owned_objects(app, owner).await?;
    out.extend(
        rows.iter()
            .filter(|row| {
                include.is_empty()
                    || include
                        .iter()
                        .any(|g| g.matches(&row.key, prefix.as_deref()))
            })
            .map(entry),
    );
    Ok(())
}

/// Resolves a selection into manifest entries (unsorted, possibly with duplicates).
pub async fn resolve(
    app: &AppState,
    selection: &Selection,
    include: &[Glob],
) -> ApiResult<Vec<ManifestEntry>> {
    let mut out = Vec::new();
    match selection {
        Selection::Query(query) => {
            let mut after = None;
            let mut seen = 0usize;
            loop {
                let page = app
                    .catalog
                    .search(SearchRequest {
                        query: query.clone(),
                        kinds: Some(vec![
                            EntityKind::Drive,
                            EntityKind::Scenario,
                            EntityKind::Run,
                        ]),
                        first: 500,
                        after,
                    })
                    .await?;
                if page.total > MAX_SELECTED_ENTITIES {
                    return Err(ApiError::bad_input(
                        "input.query",
                        format!(
                            "matches {} entities, more than the {MAX_SELECTED_ENTITIES} a dataset may be built from; narrow it",
                            page.total
                        ),
                    ));
                }
                for hit in &page.hits {
                    entity_objects(app, hit.kind, &hit.id, "input.query", include, &mut out)
                        .await?;
                }
                seen += page.hits.len();
                if !page.has_next || page.hits.is_empty() || seen >= page.total {
                    break;
                }
                after = page.end_cursor;
            }
        }
        Selection::EntityIds(ids) => {
            for (i, id) in ids.iter().enumerate() {
                let field = format!("input.entityIds[{i}]");
                let kind = match catalog::resolve_input_kind(&app.db, id).await? {
                    Some(milepost_schema::enums::InputKind::Drive) => EntityKind::Drive,
                    Some(milepost_schema::enums::InputKind::Scenario) => EntityKind::Scenario,
                    Some(milepost_schema::enums::InputKind::Run) => EntityKind::Run,
                    _ => {
                        return Err(ApiError::bad_input(
                            field,
                            format!("unknown id {id:?}: no drive, scenario or run has it"),
                        ))
                    }
                };
                entity_objects(app, kind, id, &field, include, &mut out).await?;
            }
        }
        Selection::Objects(objects) => {
            for (i, (bucket, key)) in objects.iter().enumerate() {
                let field = format!("input.objects[{i}]");
                if let Some(problem) = crate::data::key_problem(key) {
                    return Err(ApiError::bad_input(field, problem));
                }
                let row = object::Entity::find()
                    .filter(object::Column::Bucket.eq(bucket))
                    .filter(object::Column::Key.eq(key))
                    .filter(object::Column::DeletedAt.is_null())
                    .one(&app.db)
                    .await
                    .map_err(|err| ApiError::from(milepost_schema::DbError::from(err)))?;
                let found = match row {
                    Some(row) => entry(&row),
                    None => match app.store.head(bucket, key).await {
                        Ok(meta) => ManifestEntry {
                            bucket: bucket.clone(),
                            key: key.clone(),
                            size: meta.size,
                            etag: meta.etag,
                        },
                        Err(err) if err.kind() == StoreErrorKind::NotFound => {
                            return Err(ApiError::bad_input(
                                field,
                                format!("s3://{bucket}/{key} does not exist"),
                            ))
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "head failed while building a dataset");
                            return Err(ApiError::Unavailable(format!(
                                "{field}: cannot reach upstream to look up s3://{bucket}/{key}, try again shortly"
                            )));
                        }
                    },
                };
                if include.is_empty() || include.iter().any(|g| g.matches(&found.key, None)) {
                    out.push(found);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn glob(p: &str) -> Glob {
        Glob::new("include", p).expect("valid")
    }

    #[test]
    fn globs() {
        let key = "drives/2026-11-01/gz-004/d1/camera/front/000123.jpg";
        let prefix = Some("drives/2026-11-01/gz-004/d1/");
        assert!(glob("*.jpg").matches(key, prefix));
        assert!(!glob("*.mcap").matches(key, prefix));
        assert!(glob("camera/front/*").matches(key, prefix));
        assert!(
            !glob("camera/*").matches(key, prefix),
            "* stays within one step"
        );
        assert!(glob("camera/**").matches(key, prefix));
        assert!(glob("drives/**/*.jpg").matches(key, None));
        assert!(glob("00012?.jpg").matches(key, prefix));
        assert!(Glob::new("include", " ").is_err());
    }
}
