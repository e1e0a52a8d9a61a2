//! `presignData(bucket, key, ttlSeconds)`: a short-lived `/data` URL a browser viewer can
//! read without a bearer token ([`crate::auth::presign`]).

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::{principal, state};
use crate::error::GqlResultExt;
use async_graphql::Result as GqlResult;

#[derive(Debug, Default)]
pub struct PresignQuery;

/// A presigned `/data` URL.
#[derive(SimpleObject, Debug)]
pub struct PresignedUrl {
    /// Absolute, from `server.public_url` (or `listen`).
    pub url: String,
    /// The same without scheme and host.
    pub path: String,
    pub expires_at: DateTime<Utc>,
}

#[Object]
impl PresignQuery {
    /// A URL that reads `bucket/key` through `/data` without a token, signed with the
    /// caller's token, until `ttlSeconds` from now (at most 7 days). Revoking the token
    /// revokes the URL. Reads through it are authorized as the caller's.
    async fn presign_data(
        &self,
        ctx: &Context<'_>,
        bucket: String,
        key: String,
        #[graphql(default = 3600)] ttl_seconds: i64,
    ) -> GqlResult<PresignedUrl> {
        let app = state(ctx);
        let signed =
            crate::auth::presign::presign(&app.db, principal(ctx), &bucket, &key, ttl_seconds)
                .await
                .gql()?;
        Ok(PresignedUrl {
            url: format!(
                "{}{}",
                app.config.server.public_base(),
                signed.path_and_query
            ),
            path: signed.path_and_query,
            expires_at: signed.expires_at,
        })
    }
}
