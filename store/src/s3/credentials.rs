//! Credentials for [`S3Store`](super::S3Store): static keys, or the standard AWS chain.

use std::fmt;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::{future, ProvideCredentials};
use aws_sdk_s3::config::{Region, SharedHttpClient};
use tokio::sync::OnceCell;

/// An access key pair. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// The access key id (not secret: it names the key).
    pub access_key_id: String,
    /// The secret access key. Only ever handed to the SDK's request signer.
    pub secret_access_key: String,
}

impl StaticCredentials {
    /// A key pair.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .finish()
    }
}

/// The standard AWS credentials chain (environment, profile files, web identity, ECS, EC2
/// instance metadata), built on first use: building it is async, [`S3Store::new`] is not.
///
/// [`S3Store::new`]: super::S3Store::new
#[derive(Debug)]
pub(super) struct LazyDefaultChain {
    region: Region,
    http_client: SharedHttpClient,
    chain: OnceCell<DefaultCredentialsChain>,
}

impl LazyDefaultChain {
    pub fn new(region: Region, http_client: SharedHttpClient) -> Self {
        Self {
            region,
            http_client,
            chain: OnceCell::new(),
        }
    }

    async fn chain(&self) -> &DefaultCredentialsChain {
        self.chain
            .get_or_init(|| async {
                DefaultCredentialsChain::builder()
                    .region(self.region.clone())
                    .configure(ProviderConfig::default().with_http_client(self.http_client.clone()))
                    .build()
                    .await
            })
            .await
    }
}

impl ProvideCredentials for LazyDefaultChain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(
            async move { self.chain().await.provide_credentials().await },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::StaticCredentials;

    #[test]
    fn debug_hides_the_secret() {
        let creds = StaticCredentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG");
        let text = format!("{creds:?}");
        assert!(text.contains("AKIDEXAMPLE"), "{text}");
        assert!(!text.contains("wJalr"), "{text}");
    }
}
