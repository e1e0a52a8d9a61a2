//! The command line: one binary, one verb per job, every verb taking `--config PATH`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use milepost_schema::enums::Role;

use crate::config::Config;
use crate::server::{self, AppState};

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
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret, once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
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
/// filtered by `MILEPOST_LOG` (or `RUST_LOG`), default `info`.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("MILEPOST_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|err| {
        eprintln!("warning: ignoring invalid log filter {filter:?}: {err}");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let running = server::start(config).await?;
    println!("milepost listening on http://{}", running.addr);
    let stop = running.shutdown_token();
    tokio::spawn(async move {
        server::shutdown_signal().await;
        stop.cancel();
    });
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn token(config: Config, command: TokenCommand) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let state = AppState::open(config).await?;
    let db = &state.db;
    match command {
        TokenCommand::Create { name, role } => {
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
