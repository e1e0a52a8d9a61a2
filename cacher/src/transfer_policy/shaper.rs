//! The transfer policy as the write-back path asks for it ([`UploadShaper`]): priorities from
//! the policy in force, upload bodies through the office's [`UploadLimiter`].

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{Throttled, UploadLimiter};
use crate::writeback::UploadShaper;

/// Shapes uploads by the policy the limiter follows; a policy change applies to the next
/// priority asked for and, within a second, to every body already flowing.
#[derive(Debug)]
pub struct PolicyShaper {
    limiter: Arc<UploadLimiter>,
}

impl PolicyShaper {
    pub fn new(limiter: Arc<UploadLimiter>) -> Arc<PolicyShaper> {
        Arc::new(PolicyShaper { limiter })
    }
}

impl UploadShaper for PolicyShaper {
    fn priority_of(&self, key: &str) -> i32 {
        self.limiter.policy().current().priority_of(key)
    }

    fn shape(
        &self,
        body: BoxStream<'static, Result<Bytes, std::io::Error>>,
    ) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
        Throttled::new(body, self.limiter.clone()).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer_policy::{PolicyHandle, TransferPolicy};
    use futures::stream;

    #[tokio::test(start_paused = true)]
    async fn priorities_follow_the_policy_and_bodies_the_limit() {
        let handle = PolicyHandle::new(
            TransferPolicy::parse("* 1MiB", &["*.json".to_owned()]).expect("valid"),
        );
        let shaper = PolicyShaper::new(UploadLimiter::new(handle.clone()));
        assert_eq!(shaper.priority_of("runs/r/run.json"), 0);
        assert_eq!(shaper.priority_of("runs/r/log.mcap"), 1);
        handle.set(TransferPolicy::parse("* 1MiB", &["*.mcap".to_owned()]).expect("valid"));
        assert_eq!(shaper.priority_of("runs/r/log.mcap"), 0);

        let chunks = (0..4).map(|_| Ok(Bytes::from(vec![0u8; 1 << 20])));
        let start = tokio::time::Instant::now();
        let total: usize = shaper
            .shape(stream::iter(chunks).boxed())
            .map(|chunk| chunk.expect("no error").len())
            .fold(0, |sum, n| async move { sum + n })
            .await;
        assert_eq!(total, 4 << 20);
        let took = start.elapsed().as_secs_f64();
        assert!(
            (3.7..=4.1).contains(&took),
            "4 MiB at 1 MiB/s took {took} s"
        );
    }
}
