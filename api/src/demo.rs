//! `milepost demo`: everything embedded. A real S3 server on loopback (s3s-fs over
//! `<data_dir>/demo-s3`), seeded once with the synthetic fleet, synced, then served.

use std::sync::Arc;

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use milepost_indexer::fleet::{self, Fleet, FleetSpec};
use milepost_schema::enums::Role;
use milepost_store::loopback::LoopbackS3;
use milepost_store::ObjectStore;

use crate::app::AppState;
use crate::config::Config;
use crate::server;

/// Credentials of the demo's loopback S3 server; it listens on loopback only.
pub const DEMO_ACCESS_KEY: &str = "milepost-demo";
pub const DEMO_SECRET_KEY: &str = "milepost-demo-secret";
/// Files rendered and uploaded at once while seeding.
const SEED_CONCURRENCY: usize = 4;

/// Uploads every file of `fleet` into `bucket`, rendering each on a blocking thread (MCAP
/// encoding and compression are CPU work). Returns the bytes uploaded.
pub async fn seed_fleet(
    store: &Arc<dyn ObjectStore>,
    bucket: &str,
    fleet: &Fleet,
) -> anyhow::Result<u64> {
    store
        .ensure_bucket(bucket)
        .await
        .with_context(|| format!("cannot create bucket {bucket}"))?;
    let files: Vec<_> = fleet.files().cloned().collect();
    let sizes: Vec<u64> = futures::stream::iter(files)
        .map(|file| {
            let store = store.clone();
            let bucket = bucket.to_owned();
            async move {
                let key = file.key.clone();
                let body = tokio::task::spawn_blocking(move || file.render())
                    .await
                    .context("fleet rendering task failed")?
                    .with_context(|| format!("cannot render {key}"))?;
                let size = body.len() as u64;
                store
                    .put(&bucket, &key, body)
                    .await
                    .with_context(|| format!("cannot upload {key}"))?;
                anyhow::Ok(size)
            }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(sizes.iter().sum())
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let s3_root = config.data_dir.join("demo-s3");
    std::fs::create_dir_all(&s3_root)
        .with_context(|| format!("cannot create {}", s3_root.display()))?;
    let s3 = LoopbackS3::start(
        &s3_root,
        ([127, 0, 0, 1], 0).into(),
        DEMO_ACCESS_KEY,
        DEMO_SECRET_KEY,
    )
    .await
    .context("cannot start the loopback S3 server")?;
    let upstream = s3.settings();
    config.upstream.endpoint = s3.endpoint();
    config.upstream.force_path_style = true;

    let state = AppState::open_with_upstream(config, upstream).await?;
    let bucket = state.config.catalog.bucket.clone();
    // Seeded straight into the loopback S3 (the source of truth), not through the office.
    let already_seeded = state
        .upstream
        .list_page(&bucket, &state.config.catalog.drives_prefix, None)
        .await
        .map(|page| !page.objects.is_empty())
        .unwrap_or(false);
    if !already_seeded {
        let mut spec = FleetSpec::demo();
        spec.bucket = bucket.clone();
        spec.drives_prefix = state.config.catalog.drives_prefix.clone();
        spec.runs_prefix = state.config.catalog.runs_prefix.clone();
        let fleet = fleet::generate(&spec);
        eprintln!(
            "seeding s3://{bucket} with a synthetic fleet: {} drives, {} runs, about {} MiB ...",
            fleet.drives.len(),
            fleet.runs.len(),
            fleet.approx_bytes() >> 20
        );
        let bytes = seed_fleet(&state.upstream, &bucket, &fleet).await?;
        eprintln!("seeded {} MiB", bytes >> 20);
    }
    let report = state
        .sync_catalog()
        .await
        .context("initial catalog sync failed")?;
    eprintln!(
        "synced: {} objects, {} drives, {} runs, {} files read ({} KiB){}",
        report.objects_seen,
        report.drives,
        report.runs,
        report.files_read,
        report.bytes_read >> 10,
        if report.errors.is_empty() {
            String::new()
        } else {
            format!(", {} problems: {:?}", report.errors.len(), report.errors)
        }
    );

    let token_name = format!("demo-admin-{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let token = crate::auth::create_token(&state.db, &token_name, Role::Admin).await?;
    let running = server::start_with_state(state).await?;
    // Before the banner: whoever reads it may signal at once.
    let signal = server::shutdown_signal();
    let addr = running.addr;
    println!("milepost demo is running");
    println!("  web catalog: http://{addr}/   (sign in with the admin token below)");
    println!("  GraphQL:   http://{addr}/graphql   (GraphiQL in a browser)");
    println!("  health:    http://{addr}/healthz");
    println!(
        "  S3 (upstream, loopback): {}  access key {DEMO_ACCESS_KEY}, secret {DEMO_SECRET_KEY}",
        s3.endpoint()
    );
    println!("  admin token ({token_name}): {token}");
    println!(
        "  S3 gateway (this office): http://{}  create keys with `milepost token create --name NAME --role engineer --s3`",
        running.s3_addr
    );
    println!("  try: curl -s http://{addr}/graphql -H 'authorization: Bearer {token}' -H 'content-type: application/json' \\");
    println!("         -d '{{\"query\":\"{{ search(query: \\\"cut-in weather:rain\\\") {{ totalCount }} }}\"}}'");
    println!("milepost listening on http://{addr}");
    let stop = running.shutdown_token();
    tokio::spawn(async move {
        signal.await;
        stop.cancel();
    });
    running.wait().await?;
    s3.shutdown().await;
    Ok(())
}
