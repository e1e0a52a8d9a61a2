//! Bearer tokens with roles VIEWER < ENGINEER < PIPELINE < ADMIN.
//!
//! A secret is 32 random bytes shown once at creation; the database keeps only its SHA-256.
//! A fast hash is enough because the secret is uniformly random and long: there is nothing
//! for a slow password hash to protect against, and every request pays for the lookup.

use base64::Engine;
use chrono::Utc;
use milepost_schema::entity::token;
use milepost_schema::enums::Role;
use milepost_schema::DbError;
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};

const SECRET_PREFIX: &str = "mp_";
/// Writing `last_used_at` on every request would turn reads into writes; once a minute is
/// plenty to tell an idle token from a live one.
const LAST_USED_RESOLUTION_SECONDS: i64 = 60;

/// Who is making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// True for a client without a token on a server with `allow_anonymous_read`.
    pub anonymous: bool,
}

impl Principal {
    pub fn anonymous() -> Self {
        Principal {
            name: "anonymous".to_owned(),
            role: Role::Viewer,
            anonymous: true,
        }
    }

    /// Refuses the request unless the principal holds at least `needed`.
    pub fn require(&self, needed: Role) -> ApiResult<()> {
        if self.anonymous {
            return Err(ApiError::Unauthenticated(
                "this needs a token: send Authorization: Bearer <token>",
            ));
        }
        if self.role < needed {
            return Err(ApiError::Forbidden {
                needed: role_name(needed),
                held: role_name(self.role),
            });
        }
        Ok(())
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "VIEWER",
        Role::Engineer => "ENGINEER",
        Role::Pipeline => "PIPELINE",
        Role::Admin => "ADMIN",
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A token as listed to an administrator: never its secret.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at: chrono::DateTime<Utc>,
    pub last_used_at: Option<chrono::DateTime<Utc>>,
    pub revoked: bool,
}

/// Creates a token and returns its secret, which is not stored and cannot be shown again.
pub async fn create_token(db: &DatabaseConnection, name: &str, role: Role) -> ApiResult<String> {
    validate_token_name(name)?;
    let secret = new_secret();
    let now = Utc::now();
    let result = token::ActiveModel {
        name: Set(name.to_owned()),
        role: Set(role),
        secret_hash: Set(hash_secret(&secret)),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await;
    match result {
        Ok(_) => Ok(secret),
        Err(err) => match DbError::from(err) {
            err if err.kind() == milepost_schema::ErrorKind::Conflict => {
                Err(ApiError::Conflict(format!(
                    "a token named {name:?} exists already (revoke it first or pick another name)"
                )))
            }
            err => Err(err.into()),
        },
    }
}

/// S3 credentials for the gateway: an access key id and its secret key.
#[derive(Debug)]
pub struct S3Credentials {
    pub access_key_id: String,
    /// Shown once. SigV4 verification needs it in the clear, so it is stored as is (the
    /// database is office-local state; never logged, never sent back).
    pub secret_access_key: String,
}

/// Creates a token with S3 credentials for the gateway as well; returns the bearer secret
/// and the credentials, none of which can be shown again.
pub async fn create_s3_token(
    db: &DatabaseConnection,
    name: &str,
    role: Role,
) -> ApiResult<(String, S3Credentials)> {
    let secret = create_token(db, name, role).await?;
    // 20 characters like AWS key ids; `MP` marks this office's keys in logs and configs.
    let access_key_id = format!("MP{}", hex::encode_upper(rand::random::<[u8; 9]>()));
    let secret_access_key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        rand::random::<[u8; 30]>(),
    )
    .replace(['+', '/'], "x");
    token::Entity::update_many()
        .col_expr(
            token::Column::S3AccessKey,
            sea_orm::sea_query::Expr::value(access_key_id.clone()),
        )
        .col_expr(
            token::Column::S3Secret,
            sea_orm::sea_query::Expr::value(secret_access_key.clone()),
        )
        .filter(token::Column::Name.eq(name))
        .exec(db)
        .await
        .map_err(|err| ApiError::from(DbError::from(err)))?;
    Ok((
        secret,
        S3Credentials {
            access_key_id,
            secret_access_key,
        },
    ))
}

fn validate_token_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_input(
            "name",
            format!("expected 1-64 characters of letters, digits, - _ . @, got {name:?}"),
        ))
    }
}

pub async fn list_tokens(db: &DatabaseConnection) -> ApiResult<Vec<TokenInfo>> {
    let rows = token::Entity::find()
        .order_by_asc(token::Column::Name)
        .all(db)
        .await
        .map_err(DbError::from)?;
    Ok(rows
        .into_iter()
        .map(|row| TokenInfo {
            name: row.name,
            role: row.role,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked: row.revoked_at.is_some(),
        })
        .collect())
}

/// Revokes the token named `name`; it stops working on the next request.
pub async fn revoke_token(db: &DatabaseConnection, name: &str) -> ApiResult<()> {
    let row = token::Entity::find()
        .filter(token::Column::Name.eq(name))
        .one(db)
        .await
        .map_err(DbError::from)?
        .ok_or_else(|| ApiError::not_found(format!("token {name:?}")))?;
    if row.revoked_at.is_some() {
        return Ok(());
    }
    let mut active: token::ActiveModel = row.into();
    active.revoked_at = Set(Some(Utc::now()));
    active.update(db).await.map_err(DbError::from)?;
    Ok(())
}

/// Resolves the caller of a request from its `Authorization` header. No header is allowed
/// only for reads, and only when `allow_anonymous_read` (`server.allow_anonymous_read`) is
/// set; a header that does not name a live token never is.
pub async fn authenticate_headers(
    tokens: &TokenCache,
    db: &DatabaseConnection,
    allow_anonymous_read: bool,
    headers: &http::HeaderMap,
) -> ApiResult<Principal> {
    match headers.get(http::header::AUTHORIZATION) {
        None if allow_anonymous_read => Ok(Principal::anonymous()),
        None => Err(ApiError::Unauthenticated(
            "missing token: send Authorization: Bearer <token>",
        )),
        Some(value) => {
            let secret =
                value
                    .to_str()
                    .ok()
                    .and_then(bearer_secret)
                    .ok_or(ApiError::Unauthenticated(
                        "malformed Authorization header: expected Bearer <token>",
                    ))?;
            tokens.authenticate(db, secret).await
        }
    }
}

/// Resolves the caller of a `/data` read of `bucket/key`: a presigned URL's proof when the
/// query carries one ([`presign`]), else the `Authorization` header as for every request.
pub async fn authenticate_data_read(
    tokens: &TokenCache,
    db: &DatabaseConnection,
    allow_anonymous_read: bool,
    headers: &http::HeaderMap,
    query: Option<&str>,
    bucket: &str,
    key: &str,
) -> ApiResult<Principal> {
    match presign::params(query) {
        Some(params) => presign::authenticate(db, params?, bucket, key).await,
        None => authenticate_headers(tokens, db, allow_anonymous_read, headers).await,
    }
}

/// Resolves a bearer secret to its principal; unknown or revoked secrets are `Unauthenticated`.
pub async fn authenticate(db: &DatabaseConnection, secret: &str) -> ApiResult<Principal> {
    let row = token::Entity::find()
        .filter(token::Column::SecretHash.eq(hash_secret(secret)))
        .one(db)
        .await
        .map_err(DbError::from)?;
    let Some(row) = row.filter(|row| row.revoked_at.is_none()) else {
        return Err(ApiError::Unauthenticated("unknown or revoked token"));
    };
    let now = Utc::now();
    let stale = row
        .last_used_at
        .is_none_or(|at| (now - at).num_seconds() >= LAST_USED_RESOLUTION_SECONDS);
    let principal = Principal {
        name: row.name.clone(),
        role: row.role,
        anonymous: false,
    };
    if stale {
        let mut active: token::ActiveModel = row.into();
        active.last_used_at = Set(Some(now));
        if let Err(err) = active.update(db).await {
            // Bookkeeping only: a busy database must not turn a valid token away.
            tracing::warn!(error = %err, "could not record token use");
        }
    }
    Ok(principal)
}

/// Extracts the secret of an `Authorization: Bearer <secret>` header value.
pub fn bearer_secret(header: &str) -> Option<&str> {
    let (scheme, secret) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        let engineer = Principal {
            name: "e".into(),
            role: Role::Engineer,
            anonymous: false,
        };
        assert!(engineer.require(Role::Viewer).is_ok());
        assert!(engineer.require(Role::Engineer).is_ok());
        let err = engineer.require(Role::Pipeline).expect_err("too low");
        assert_eq!(err.code(), crate::error::ErrorCode::Forbidden);
        assert!(err.to_string().contains("PIPELINE"));
        let anon = Principal::anonymous();
        assert_eq!(
            anon.require(Role::Viewer).expect_err("anonymous").code(),
            crate::error::ErrorCode::Unauthenticated
        );
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() > 40);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_secret("Bearer abc"), Some("abc"));
        assert_eq!(bearer_secret("bearer  abc "), Some("abc"));
        assert_eq!(bearer_secret("Basic abc"), None);
        assert_eq!(bearer_secret("Bearer "), None);
    }
}

/// Recently verified tokens, so a busy client does not cost a database lookup per request.
///
/// Entries live for [`TokenCache::TTL`]. Revocation through this process (`AppState`) drops
/// the cache at once; a revocation made by another process (`milepost token revoke` on the
/// host) takes effect within the TTL.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Principal, std::time::Instant)>>,
}

impl TokenCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(10);
    /// Bounds memory under a flood of distinct (invalid) secrets: only valid ones are cached,
    /// and the map is cleared when it grows past this.
    const MAX_ENTRIES: usize = 10_000;

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Principal, std::time::Instant)>>
    {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves a secret, from the cache when a fresh entry exists.
    pub async fn authenticate(
        &self,
        db: &DatabaseConnection,
        secret: &str,
    ) -> ApiResult<Principal> {
        let hash = hash_secret(secret);
        if let Some((principal, at)) = self.lock().get(&hash) {
            if at.elapsed() < Self::TTL {
                return Ok(principal.clone());
            }
        }
        let principal = authenticate(db, secret).await?;
        let mut entries = self.lock();
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (principal.clone(), std::time::Instant::now()));
        Ok(principal)
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// Presigned `/data` URLs: a browser viewer cannot send a bearer token, so a token holder asks
/// for a URL that carries its own short-lived proof (`presignData`).
///
/// The proof is an HMAC-SHA256, keyed by the token's stored secret hash, over the method
/// (`GET`; a `HEAD` is checked as the `GET` it precedes), the decoded path
/// `/data/<bucket>/<key>`, the expiry (Unix seconds) and the token id. So it names one object,
/// ends at its expiry, and stops working when the token is revoked (its row is looked up on
/// every use), on every node that shares the database.
pub mod presign {
    use chrono::{DateTime, TimeZone as _, Utc};
    use hmac::{Hmac, Mac};
    use milepost_schema::entity::token;
    use milepost_schema::DbError;
    use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _};
    use sha2::Sha256;

    use super::Principal;
    use crate::error::{ApiError, ApiResult};

    /// The query parameters of a presigned URL.
    pub const TOKEN_PARAM: &str = "mp-token";
    pub const EXPIRES_PARAM: &str = "mp-expires";
    pub const SIGNATURE_PARAM: &str = "mp-signature";
    /// The longest a presigned URL may live (as for S3's).
    pub const MAX_TTL_SECONDS: i64 = 7 * 86_400;

    type HmacSha256 = Hmac<Sha256>;

    fn mac(secret_hash: &str, bucket: &str, key: &str, expires: i64, token_id: i64) -> HmacSha256 {
        // Any key length is accepted by HMAC.
        let mut mac = HmacSha256::new_from_slice(secret_hash.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("GET\n/data/{bucket}/{key}\n{expires}\n{token_id}").as_bytes());
        mac
    }

    /// A presigned URL's path and query, and when it expires.
    #[derive(Debug, Clone)]
    pub struct Presigned {
        pub path_and_query: String,
        pub expires_at: DateTime<Utc>,
    }

    /// Presigns a read of `bucket/key` for `principal`'s token, valid `ttl_seconds`
    /// (1 to [`MAX_TTL_SECONDS`]). An anonymous caller has no token to sign with.
    pub async fn presign(
        db: &DatabaseConnection,
        principal: &Principal,
        bucket: &str,
        key: &str,
        ttl_seconds: i64,
    ) -> ApiResult<Presigned> {
        if principal.anonymous {
            return Err(ApiError::Unauthenticated(
                "presigning needs a token: send Authorization: Bearer <token>",
            ));
        }
        if !(1..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(ApiError::bad_input(
                "ttlSeconds",
                format!("expected 1 to {MAX_TTL_SECONDS} seconds, got {ttl_seconds}"),
            ));
        }
        if bucket.is_empty() || key.is_empty() {
            return Err(ApiError::bad_input(
                "key",
                "bucket and key must not be empty",
            ));
        }
        let row = token::Entity::find()
            .filter(token::Column::Name.eq(&principal.name))
            .one(db)
            .await
            .map_err(DbError::from)?
            .filter(|row| row.revoked_at.is_none())
            .ok_or(ApiError::Unauthenticated("unknown or revoked token"))?;
        let expires_at = Utc::now() + chrono::Duration::seconds(ttl_seconds);
        let expires = expires_at.timestamp();
        let signature = hex::encode(
            mac(&row.secret_hash, bucket, key, expires, row.id)
                .finalize()
                .into_bytes(),
        );
        let path = crate::data::data_path(bucket, key);
        Ok(Presigned {
            path_and_query: format!(
                "{path}?{TOKEN_PARAM}={}&{EXPIRES_PARAM}={expires}&{SIGNATURE_PARAM}={signature}",
                row.id
            ),
            expires_at: Utc.timestamp_opt(expires, 0).single().unwrap_or(expires_at),
        })
    }

    /// The proof a request's query carries; `None` when it carries none (then the request
    /// authenticates with its headers).
    pub fn params(query: Option<&str>) -> Option<ApiResult<(i64, i64, String)>> {
        let query = query?;
        let mut token = None;
        let mut expires = None;
        let mut signature = None;
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                TOKEN_PARAM => token = Some(value),
                EXPIRES_PARAM => expires = Some(value),
                SIGNATURE_PARAM => signature = Some(value),
                _ => {}
            }
        }
        if token.is_none() && expires.is_none() && signature.is_none() {
            return None;
        }
        let parsed = (|| {
            let token = token?.parse().ok()?;
            let expires = expires?.parse().ok()?;
            let signature = signature.filter(|s| !s.is_empty())?.to_owned();
            Some((token, expires, signature))
        })();
        Some(parsed.ok_or_else(|| {
            ApiError::Denied(format!(
                "a presigned URL needs {TOKEN_PARAM}, {EXPIRES_PARAM} and {SIGNATURE_PARAM}"
            ))
        }))
    }

    /// The principal a presigned read of `bucket/key` acts as, or why it is refused
    /// (Forbidden): expired, not signed for this object, or its token revoked.
    pub async fn authenticate(
        db: &DatabaseConnection,
        (token_id, expires, signature): (i64, i64, String),
        bucket: &str,
        key: &str,
    ) -> ApiResult<Principal> {
        let now = Utc::now().timestamp();
        if now > expires {
            return Err(ApiError::Denied(format!(
                "this presigned URL expired {} seconds ago; ask for a new one (presignData)",
                now - expires
            )));
        }
        let denied = || {
            ApiError::Denied("the presigned URL's signature does not match this object, or its token was revoked".to_owned())
        };
        let row = token::Entity::find_by_id(token_id)
            .one(db)
            .await
            .map_err(DbError::from)?
            .filter(|row| row.revoked_at.is_none())
            .ok_or_else(denied)?;
        let signature = hex::decode(&signature).map_err(|_| denied())?;
        mac(&row.secret_hash, bucket, key, expires, row.id)
            .verify_slice(&signature)
            .map_err(|_| denied())?;
        Ok(Principal {
            name: row.name,
            role: row.role,
            anonymous: false,
        })
    }
}
