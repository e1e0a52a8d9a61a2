//! Who may use the S3 gateway: SigV4 access keys from `milepost token create --s3`
//! ([`TokenKeys`]), and what each role may do ([`RoleAccess`]): VIEWER reads, ENGINEER and up
//! also write. Buckets the office does not serve are refused before anything else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use milepost_schema::entity::token;
use milepost_schema::enums::Role;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};
use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _};

/// How long a looked-up key is trusted before the database is asked again (a revoked token
/// stops working within this time).
const KEY_TTL: Duration = Duration::from_secs(10);

/// The longest a presigned URL may live (`X-Amz-Expires`), S3's limit: 7 days.
const MAX_PRESIGNED_EXPIRY_SECS: u64 = 7 * 24 * 60 * 60;

/// What an access key maps to: its secret and role, or nothing (unknown or revoked).
type KeyEntry = Option<(String, Role)>;

/// The S3 credentials of the tokens table, with a short-lived cache.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    db: DatabaseConnection,
    /// Looked-up keys and when they were looked up.
    cache: Arc<Mutex<HashMap<String, (Instant, KeyEntry)>>>,
}

impl TokenKeys {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            cache: Arc::default(),
        }
    }

    /// The secret and role of `access_key`, if it belongs to a live token.
    pub async fn lookup(&self, access_key: &str) -> S3Result<Option<(String, Role)>> {
        if let Some((at, found)) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(access_key)
        {
            if at.elapsed() < KEY_TTL {
                return Ok(found.clone());
            }
        }
        let row = token::Entity::find()
            .filter(token::Column::S3AccessKey.eq(access_key))
            .filter(token::Column::RevokedAt.is_null())
            .one(&self.db)
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "cannot look up an s3 access key");
                s3_error!(
                    ServiceUnavailable,
                    "the office catalog database is unavailable"
                )
            })?;
        let found = row.and_then(|row| row.s3_secret.map(|secret| (secret, row.role)));
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(access_key.to_owned(), (Instant::now(), found.clone()));
        Ok(found)
    }
}

#[async_trait::async_trait]
impl S3Auth for TokenKeys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.lookup(access_key).await? {
            Some((secret, _)) => Ok(SecretKey::from(secret)),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "the access key id does not exist in this office (create one with `milepost token create --s3`)"
            )),
        }
    }
}

/// Refuses a SigV4 presigned URL that claims to live longer than S3 allows, as S3 does
/// (s3s checks its signature and whether it has expired, not how long it lives).
fn check_presigned_expiry(query: Option<&str>) -> S3Result<()> {
    let Some(query) = query else { return Ok(()) };
    for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        if name != "X-Amz-Expires" {
            continue;
        }
        match value.parse::<u64>() {
            Ok(seconds) if seconds <= MAX_PRESIGNED_EXPIRY_SECS => {}
            Ok(_) => {
                return Err(s3_error!(
                    AuthorizationQueryParametersError,
                    "X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGNED_EXPIRY_SECS}"
                ))
            }
            Err(_) => {
                return Err(s3_error!(
                    AuthorizationQueryParametersError,
                    "X-Amz-Expires should be a number"
                ))
            }
        }
    }
    Ok(())
}

/// Operations that only read.
fn is_read(op: &str) -> bool {
    matches!(
        op,
        "ListBuckets"
            | "HeadBucket"
            | "GetBucketLocation"
            | "ListObjects"
            | "ListObjectsV2"
            | "HeadObject"
            | "GetObject"
            | "ListParts"
            | "ListMultipartUploads"
    )
}

/// Authentication and role checks. Which buckets are served is the office object API's
/// boundary ([`milepost_cacher::objects::OfficeObjects`]), checked there for every door.
#[derive(Debug, Clone)]
pub struct RoleAccess {
    pub keys: TokenKeys,
    pub allow_anonymous_read: bool,
}

#[async_trait::async_trait]
impl S3Access for RoleAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        check_presigned_expiry(cx.uri().query())?;
        let op = cx.s3_op().name().to_owned();
        let role = match cx.credentials() {
            Some(credentials) => match self.keys.lookup(&credentials.access_key).await? {
                Some((_, role)) => role,
                None => return Err(s3_error!(InvalidAccessKeyId)),
            },
            None if self.allow_anonymous_read && is_read(&op) => Role::Viewer,
            None => return Err(s3_error!(AccessDenied, "a signed request is required")),
        };
        if !is_read(&op) && role < Role::Engineer {
            return Err(s3_error!(
                AccessDenied,
                "{op} needs the ENGINEER role or higher; this key is VIEWER"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_live_seven_days_at_most() {
        let query = |expires: &str| {
            format!(
                "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host"
            )
        };
        assert!(check_presigned_expiry(None).is_ok());
        assert!(check_presigned_expiry(Some("list-type=2")).is_ok());
        assert!(check_presigned_expiry(Some(&query("604800"))).is_ok());
        for refused in ["604801", "99999999999", "-1", "1e3"] {
            let err = check_presigned_expiry(Some(&query(refused))).expect_err(refused);
            assert_eq!(
                *err.code(),
                s3s::S3ErrorCode::AuthorizationQueryParametersError
            );
        }
    }
}
