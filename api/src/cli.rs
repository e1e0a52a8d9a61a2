//! The command line: one binary, one verb per job, every verb taking `--config PATH`.
//!
//! (Over 600 lines: the verbs' arguments and their dispatch in one place, so `--help` and the
//! code read alike; what a verb does at length lives in its own module.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use milepost_schema::enums::Role;

use crate::app::AppState;
use crate::config::Config;
use crate::server;

#[derive(Debug, Parser)]
#[command(
    name = "milepost",
    version,
    about = "Data catalog and office cache for autonomous-driving data"
)]
pub struct Cli {
    /// Configuration file (TOML); MILEPOST_<SECTION>_<KEY> variables override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: GraphQL, /healthz and /metrics.
    Serve,
    /// Create or upgrade the catalog database schema, then exit.
    Migrate,
    /// Manage API tokens (run on the server host, against its database).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the effective configuration (defaults, file and environment merged).
    Config,
    /// Everything embedded: a loopback S3 seeded with a synthetic fleet, synced, then served.
    Demo,
    /// Rescan the catalog bucket: on a running server with --server, else locally.
    Sync {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Search the catalog of a running server and print a table.
    Search {
        /// Query, e.g. `cut-in city:guangzhou weather:rain after:2026-10-01`.
        query: String,
        /// Only these kinds (drive, scenario, run, dataset); repeatable.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        #[arg(long, default_value_t = 20)]
        first: i32,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Rebuild the search index from the catalog database (with the server stopped).
    Reindex,
    /// Datasets on a running server.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Reserve a dataset on a running server; with --wait, show progress until it is READY.
    Reserve {
        /// Dataset name (latest version unless --version).
        dataset: String,
        #[arg(long)]
        version: Option<i32>,
        /// How long the reservation holds, e.g. 8h, 30m, 2d.
        #[arg(long, default_value = "24h")]
        ttl: crate::config::DurationSetting,
        #[arg(long)]
        purpose: Option<String>,
        /// Needed READY by this time (RFC 3339, e.g. 2026-12-08T02:00:00Z): materialized
        /// within the office's download windows, refused if they cannot make it.
        #[arg(long)]
        ready_by: Option<chrono::DateTime<chrono::Utc>>,
        /// Wait until READY (or FAILED), with a progress bar.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Copy a dataset version to DIR (as DIR/<bucket>/<key>) through a running server's
    /// /data: parallel, verified, resumable; a re-run fetches only what is missing or changed.
    Pull {
        /// NAME or NAME@VERSION (latest version without one).
        dataset: String,
        dir: PathBuf,
        /// Files fetched at once.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Mount your reservations (or one dataset version) read-only at MOUNTPOINT, as
    /// <name@version>/<bucket>/<key>, read through a running server's /data with read-ahead
    /// and a block cache on this machine; unmounts on SIGINT or SIGTERM.
    Mount {
        mountpoint: PathBuf,
        /// Mount this dataset version (NAME or NAME@VERSION) instead of your reservations.
        #[arg(long)]
        dataset: Option<String>,
        /// Where blocks are kept between reads and mounts (default: ~/.cache/milepost/blocks).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Most bytes the block cache keeps on disk.
        #[arg(long, default_value = "10GiB")]
        cache_size: crate::config::ByteSize,
        /// Memory for recently read and read-ahead blocks.
        #[arg(long, default_value = "128MiB")]
        memory: crate::config::ByteSize,
        /// How often your reservations are read again (new ones appear, expired ones go).
        #[arg(long, default_value = "5s")]
        refresh: crate::config::DurationSetting,
        /// How long a server restart or network fault is waited out before a read fails.
        #[arg(long, default_value = "10m")]
        retry_for: crate::config::DurationSetting,
        /// Let other users of this machine read the files.
        #[arg(long)]
        allow_other: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The write-back queue of a running server: rate, limit, ETA and the transfers in
    /// upload order.
    Transfers {
        /// Only transfers in this state.
        #[arg(long, value_enum)]
        state: Option<crate::transfers::StateArg>,
        /// How many transfers to list (at most 500).
        #[arg(long, default_value_t = 50)]
        first: i32,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The background workers of a running server: state, runs, failures, last error.
    Status {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The office cluster (`[cluster] enabled`), read from its database.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes (alive or gone), the uploads and reservations each holds, the office tier's
    /// usage and the work waiting to be taken over.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Create a dataset (a new version if the name exists) from a query, ids or object keys.
    Create {
        name: String,
        /// Search query selecting drives, scenarios or runs.
        #[arg(long, conflicts_with_all = ["ids", "objects"])]
        query: Option<String>,
        /// Entity ids (drives, scenarios, runs); repeatable.
        #[arg(long = "id", conflicts_with = "objects")]
        ids: Vec<String>,
        /// Objects as s3://bucket/key; repeatable.
        #[arg(long = "object")]
        objects: Vec<String>,
        /// Key globs to keep, e.g. "*.mcap"; repeatable.
        #[arg(long = "include")]
        include: Vec<String>,
        /// Topics that scenarios' trimmed MCAP logs keep (all when omitted); repeatable.
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Seconds kept before and after each scenario's span (default 2).
        #[arg(long = "padding", allow_hyphen_values = true)]
        padding_seconds: Option<i32>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// How verbs reach a running server.
#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// Server URL, e.g. http://127.0.0.1:8080 (default: server.listen of the config).
    #[arg(long, env = "MILEPOST_SERVER")]
    pub server: Option<String>,
    /// API token.
    #[arg(long, env = "MILEPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret, once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Also create S3 credentials for the office gateway; prints shell assignments
        /// (`MILEPOST_TOKEN=`, `AWS_ACCESS_KEY_ID=`, `AWS_SECRET_ACCESS_KEY=`) instead of the
        /// bare secret.
        #[arg(long)]
        s3: bool,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by name; it stops working at once.
    Revoke { name: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Engineer,
    Pipeline,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Engineer => Role::Engineer,
            RoleArg::Pipeline => Role::Pipeline,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// Logs go to stderr: human-readable by default, JSON with `MILEPOST_LOG_FORMAT=json`;
/// filtered by `MILEPOST_LOG` (or `RUST_LOG`), default `info` for Milepost and `warn` for the
/// libraries whose `info` is internal bookkeeping (tantivy logs every commit and merge).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("MILEPOST_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn,tantivy=warn".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|err| {
        eprintln!("warning: ignoring invalid log filter {filter:?}: {err}");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only where a terminal renders them; in a journal or a file they are
        // noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let json = std::env::var("MILEPOST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if result.is_err() {
        // Already initialised (tests start several servers in one process).
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    Ok(Config::load(cli.config.as_deref(), &env)?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            AppState::open(config).await?;
            eprintln!("catalog database is up to date");
            Ok(())
        }
        Command::Token { command } => token(config, command).await,
        Command::Config => {
            print!(
                "{}",
                toml::to_string_pretty(&config).context("cannot render config")?
            );
            Ok(())
        }
        Command::Demo => crate::demo::run(config).await,
        Command::Sync { remote } => sync(config, remote).await,
        Command::Pull {
            dataset,
            dir,
            jobs,
            remote,
        } => pull(config, remote, dataset, dir, jobs).await,
        Command::Mount {
            mountpoint,
            dataset,
            cache_dir,
            cache_size,
            memory,
            refresh,
            retry_for,
            allow_other,
            remote,
        } => {
            let source = match dataset {
                Some(text) => {
                    let (name, version) = dataset_and_version(text)?;
                    crate::mount::MountSource::Dataset { name, version }
                }
                None => crate::mount::MountSource::Reservations,
            };
            let server = remote
                .server
                .unwrap_or_else(|| format!("http://{}", config.server.listen));
            let command = crate::mount::MountCommand {
                mountpoint,
                source,
                cache_dir: cache_dir.or_else(crate::mount::default_cache_dir),
                cache_size: cache_size.0,
                memory: memory.0,
                refresh: refresh.0,
                retry_for: retry_for.0,
                allow_other,
            };
            crate::mount::mount(&server, remote.token, command).await
        }
        Command::Search {
            query,
            kinds,
            first,
            remote,
        } => search(config, remote, query, kinds, first).await,
        Command::Dataset {
            command:
                DatasetCommand::Create {
                    name,
                    query,
                    ids,
                    objects,
                    include,
                    topics,
                    padding_seconds,
                    description,
                    remote,
                },
        } => {
            let objects: Vec<serde_json::Value> = objects
                .iter()
                .map(|uri| {
                    let rest = uri.strip_prefix("s3://").ok_or_else(|| {
                        anyhow::anyhow!("--object {uri:?}: expected s3://bucket/key")
                    })?;
                    let (bucket, key) = rest.split_once('/').ok_or_else(|| {
                        anyhow::anyhow!("--object {uri:?}: expected s3://bucket/key")
                    })?;
                    Ok(serde_json::json!({ "bucket": bucket, "key": key }))
                })
                .collect::<anyhow::Result<_>>()?;
            let mut input = serde_json::json!({ "name": name, "description": description });
            if let Some(query) = query {
                input["query"] = query.into();
            } else if !ids.is_empty() {
                input["entityIds"] = ids.into();
            } else if !objects.is_empty() {
                input["objects"] = objects.into();
            } else {
                anyhow::bail!("give one of --query, --id or --object");
            }
            if !include.is_empty() {
                input["include"] = include.into();
            }
            if !topics.is_empty() {
                input["topics"] = topics.into();
            }
            if let Some(padding) = padding_seconds {
                input["paddingSeconds"] = padding.into();
            }
            let data = client(&config, remote)?
                .query(
                    "mutation($input: CreateDatasetInput!) { createDataset(input: $input) { name version objectCount totalBytes manifestKey } }",
                    serde_json::json!({ "input": input }),
                )
                .await?;
            let d = &data["createDataset"];
            println!(
                "dataset {} v{}: {} objects, {} ({})",
                d["name"].as_str().unwrap_or_default(),
                d["version"],
                d["objectCount"],
                crate::progress::human_bytes(d["totalBytes"].as_u64().unwrap_or_default()),
                d["manifestKey"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        Command::Reserve {
            dataset,
            version,
            ttl,
            purpose,
            ready_by,
            wait,
            remote,
        } => {
            crate::progress::reserve(
                &client(&config, remote)?,
                &dataset,
                version,
                ttl.0,
                purpose,
                ready_by,
                wait,
            )
            .await
        }
        Command::Transfers {
            state,
            first,
            remote,
        } => crate::transfers::print(&client(&config, remote)?, state, first).await,
        Command::Status { remote } => crate::status::print(&client(&config, remote)?).await,
        Command::Cluster {
            command: ClusterCommand::Status { json },
        } => crate::cluster::print_status(&config, json).await,
        Command::Reindex => {
            let state = AppState::open(config).await?;
            let documents = state.catalog.reindex().await?;
            eprintln!("search index rebuilt: {documents} documents");
            Ok(())
        }
    }
}

async fn pull(
    config: Config,
    remote: RemoteArgs,
    dataset: String,
    dir: PathBuf,
    jobs: usize,
) -> anyhow::Result<()> {
    let (name, version) = dataset_and_version(dataset)?;
    let server = remote
        .server
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.server.listen));
    let token = remote.token.clone();
    let client = client(&config, remote)?;
    let started = std::time::Instant::now();
    let request = crate::pull::PullRequest {
        dataset: name,
        version,
        dir,
        jobs,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = crate::pull::pull(&client, &server, token.as_deref(), &request).await?;
    println!("{}", crate::pull::summary_line(&report, started.elapsed()));
    Ok(())
}

/// `NAME` or `NAME@VERSION`.
fn dataset_and_version(text: String) -> anyhow::Result<(String, Option<i32>)> {
    Ok(match text.rsplit_once('@') {
        Some((name, v)) => (
            name.to_owned(),
            Some(
                v.parse::<i32>()
                    .with_context(|| format!("{text:?}: the version after @ must be a number"))?,
            ),
        ),
        None => (text, None),
    })
}

fn client(config: &Config, remote: RemoteArgs) -> anyhow::Result<crate::client::Client> {
    let server = remote
        .server
        .unwrap_or_else(|| format!("http://{}", config.server.listen));
    crate::client::Client::new(&server, remote.token)
}
async fn sync(config: Config, remote: RemoteArgs) -> anyhow::Result<()> {
    use crate::progress::{show_sync_progress, SyncLine, SYNC_STATUS_QUERY};
    let report = if remote.server.is_some() {
        let client = client(&config, remote)?;
        // The server's syncStatus, asked beside the mutation that runs the pass.
        let status = || {
            let client = client.clone();
            async move {
                let data = client
                    .query(SYNC_STATUS_QUERY, serde_json::json!({}))
                    .await
                    .ok()?;
                serde_json::from_value::<SyncLine>(data["syncStatus"].clone()).ok()
            }
        };
        let data = show_sync_progress(
            status,
            client.query(
                "mutation { syncCatalog { objectsSeen objectsChanged objectsDeleted drives runs filesRead bytesRead errors } }",
                serde_json::json!({}),
            ),
        )
        .await?;
        data["syncCatalog"].clone()
    } else {
        let state = AppState::open(config).await?;
        let progress = state.sync_progress.clone();
        let status = || {
            let line = SyncLine::from(progress.status());
            async move { Some(line) }
        };
        let report = show_sync_progress(status, state.sync_catalog()).await?;
        serde_json::json!({
            "objectsSeen": report.objects_seen, "objectsChanged": report.objects_changed,
            "objectsDeleted": report.objects_deleted, "drives": report.drives, "runs": report.runs,
            "filesRead": report.files_read, "bytesRead": report.bytes_read, "errors": report.errors,
        })
    };
    println!(
        "objects seen {}, changed {}, deleted {}; drives {}, runs {}; files read {} ({} bytes)",
        report["objectsSeen"],
        report["objectsChanged"],
        report["objectsDeleted"],
        report["drives"],
        report["runs"],
        report["filesRead"],
        report["bytesRead"]
    );
    for error in report["errors"].as_array().into_iter().flatten() {
        println!("problem: {}", error.as_str().unwrap_or_default());
    }
    Ok(())
}

const SEARCH_QUERY: &str = r#"query($q: String!, $kinds: [EntityKind!], $first: Int) {
  search(query: $q, kinds: $kinds, first: $first) {
    totalCount
    facets { field values { value count } }
    edges { score node {
      __typename
      ... on Drive { id vehicle city weather softwareVersion startedAt }
      ... on Scenario { id label startTime drive { id vehicle city } }
      ... on Run { id kind pipeline status startedAt }
    } }
  }
}"#;

/// One table row for a search hit: kind and a one-line summary.
fn describe_hit(node: &serde_json::Value) -> (String, String) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let typename = node["__typename"].as_str().unwrap_or_default();
    let summary = match typename {
        "Drive" => [
            &node["vehicle"],
            &node["city"],
            &node["weather"],
            &node["softwareVersion"],
            &node["startedAt"],
        ]
        .map(text)
        .join(" "),
        "Scenario" => format!(
            "{} on {} ({} {}) at {}",
            text(&node["label"]),
            text(&node["drive"]["id"]),
            text(&node["drive"]["vehicle"]),
            text(&node["drive"]["city"]),
            text(&node["startTime"])
        ),
        "Run" => [
            &node["kind"],
            &node["pipeline"],
            &node["status"],
            &node["startedAt"],
        ]
        .map(text)
        .join(" "),
        _ => String::new(),
    };
    (typename.to_lowercase(), summary)
}

async fn search(
    config: Config,
    remote: RemoteArgs,
    query: String,
    kinds: Vec<String>,
    first: i32,
) -> anyhow::Result<()> {
    let kinds: Vec<String> = kinds.iter().map(|k| k.to_ascii_uppercase()).collect();
    let variables = serde_json::json!({
        "q": query,
        "kinds": if kinds.is_empty() { serde_json::Value::Null } else { serde_json::json!(kinds) },
        "first": first,
    });
    let data = client(&config, remote)?
        .query(SEARCH_QUERY, variables)
        .await?;
    let result = &data["search"];
    println!("{:<9} {:<28} {:>6}  SUMMARY", "KIND", "ID", "SCORE");
    for edge in result["edges"].as_array().into_iter().flatten() {
        let (kind, summary) = describe_hit(&edge["node"]);
        println!(
            "{kind:<9} {:<28} {:>6.2}  {summary}",
            edge["node"]["id"].as_str().unwrap_or("-"),
            edge["score"].as_f64().unwrap_or_default()
        );
    }
    println!("{} results", result["totalCount"]);
    for facet in result["facets"].as_array().into_iter().flatten() {
        let values: Vec<String> = facet["values"]
            .as_array()
            .into_iter()
            .flatten()
            .take(8)
            .map(|v| {
                format!(
                    "{} ({})",
                    v["value"].as_str().unwrap_or_default(),
                    v["count"]
                )
            })
            .collect();
        if !values.is_empty() {
            println!(
                "  {}: {}",
                facet["field"].as_str().unwrap_or_default(),
                values.join(", ")
            );
        }
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let running = server::start(config).await?;
    // Before the banner: whoever reads it may signal at once.
    let signal = server::shutdown_signal();
    {
        // A reader that takes the first line and closes the pipe (or no reader at all) must
        // not stop the server: the banner is best effort.
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "milepost listening on http://{}", running.addr);
        let _ = writeln!(out, "milepost s3 gateway on http://{}", running.s3_addr);
        let _ = out.flush();
    }
    let stop = running.shutdown_token();
    tokio::spawn(async move {
        signal.await;
        stop.cancel();
    });
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn token(config: Config, command: TokenCommand) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // The database alone: tokens are made and revoked while the service runs (the search
    // index and the cache belong to the running process).
    let url = config.database_url();
    let db = &milepost_schema::connect(&url).await.with_context(|| {
        format!(
            "cannot open the catalog database ({})",
            crate::app::redact_url(&url)
        )
    })?;
    milepost_schema::migrate(db)
        .await
        .context("cannot migrate the catalog database")?;
    match command {
        TokenCommand::Create {
            name,
            role,
            s3: true,
        } => {
            let (secret, s3) = crate::auth::create_s3_token(db, &name, role.into()).await?;
            println!("MILEPOST_TOKEN={secret}");
            println!("AWS_ACCESS_KEY_ID={}", s3.access_key_id);
            println!("AWS_SECRET_ACCESS_KEY={}", s3.secret_access_key);
            eprintln!("token {name:?} created with S3 credentials for the gateway; store them now: they cannot be shown again");
        }
        TokenCommand::Create {
            name,
            role,
            s3: false,
        } => {
            let secret = crate::auth::create_token(db, &name, role.into()).await?;
            println!("{secret}");
            eprintln!("token {name:?} created; store the secret now: it is not kept and cannot be shown again");
        }
        TokenCommand::List => {
            println!(
                "{:<24} {:<9} {:<20} {:<20} STATUS",
                "NAME", "ROLE", "CREATED", "LAST USED"
            );
            for token in crate::auth::list_tokens(db).await? {
                println!(
                    "{:<24} {:<9} {:<20} {:<20} {}",
                    token.name,
                    crate::auth::role_name(token.role),
                    token.created_at.format("%Y-%m-%d %H:%M:%S"),
                    token.last_used_at.map_or("never".to_owned(), |at| at
                        .format("%Y-%m-%d %H:%M:%S")
                        .to_string()),
                    if token.revoked { "revoked" } else { "active" }
                );
            }
        }
        TokenCommand::Revoke { name } => {
            crate::auth::revoke_token(db, &name).await?;
            eprintln!("token {name:?} revoked");
        }
    }
    Ok(())
}
