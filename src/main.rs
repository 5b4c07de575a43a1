//! The `berth` binary: parse the command line, load the configuration, run the chosen command.

mod cli;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth::api::admin::{Admin, TOKEN_FILE};
use berth::api::{AppState, ClientLimits};
use berth::auth::Auth;
use berth::config::{Config, LogFormat};
use berth::server::{Options, TlsFiles};
use berth::service::Registry;
use berth::store::Store;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// How often pull times noted in memory are written to the metadata store.
const PULL_FLUSH: Duration = Duration::from_secs(30);
/// How often the store's disk use is measured for the `berth_store_*` gauges.
const USAGE_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Parser)]
#[command(version, about = "An OCI registry and pull-through mirror")]
struct Cli {
    /// Configuration file; default ./mirror.toml, or the built-in defaults when that is absent.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry.
    Serve,
    /// Evict expired cached images and collect unreferenced blobs now. Talks to the running
    /// server when there is one, else works on the store directly.
    Gc {
        /// List what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete REPO:TAG (the tag) or REPO@DIGEST (the manifest and all its tags). `berth gc`
    /// then reclaims the blobs only it used.
    Delete { reference: String },
    /// Disk use per repository, private vs cached.
    Du,
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only for a person at a terminal, never in files, journald or log shippers.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    berth::install_crypto_provider();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Gc { dry_run } => cli::gc(&config, dry_run).await,
        Command::Delete { reference } => cli::delete(&config, &reference).await,
        Command::Du => cli::du(&config).await,
    }
}

/// A fresh admin token in `<root>/admin.token`, readable by this user only.
fn write_admin_token(root: &std::path::Path) -> anyhow::Result<String> {
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let path = root.join(TOKEN_FILE);
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let limits = config.connection_limits()?;
    log_descriptor_limit(limits.max_connections);
    let root = &config.storage.root;
    let store = Store::open(root).with_context(|| format!("opening the store at {}", root.display()))?;
    let upstreams = config
        .upstream_settings()?
        .into_iter()
        .map(|settings| berth::upstream::Upstream::new(settings).context("building an upstream client"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let registry = Registry::new(store.clone(), upstreams)
        .with_private_namespaces(config.private.namespaces.clone())
        .with_upload_session_limit(config.limits.max_upload_sessions);
    let auth = Auth::new(&config.auth).map_err(anyhow::Error::msg)?;
    let addr = config.listen_addr()?;
    if !auth.enabled() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "authentication is off ([auth] htpasswd is empty): anyone who reaches this address may push");
    }
    let tls = &config.server.tls;
    let tls = match (tls.cert.is_empty(), tls.key.is_empty()) {
        (true, true) => None,
        (false, false) => Some(TlsFiles {
            cert: tls.cert.clone().into(),
            key: tls.key.clone().into(),
        }),
        _ => anyhow::bail!("[server.tls] needs both cert and key"),
    };
    let policy = config.gc_policy()?;
    let admin = Admin {
        token: write_admin_token(root)?,
        policy: policy.clone(),
    };
    let state = AppState {
        registry: registry.clone(),
        auth: Arc::new(auth),
        limits: Arc::new(ClientLimits::new(&config.limits)),
        tls: tls.is_some(),
        admin: Some(Arc::new(admin)),
    };
    tokio::spawn(flush_pulls(registry.clone()));
    tokio::spawn(collect_periodically(registry.clone(), policy, config.gc_interval()?));
    // Cancelled when shutdown begins: background tasks watch it and end.
    let stop = CancellationToken::new();
    tokio::spawn({
        let (registry, stop) = (registry.clone(), stop.clone());
        async move { registry.measure_usage_every(USAGE_PERIOD, stop).await }
    });
    let options = Options {
        addr,
        tls,
        drain_timeout: config.drain_timeout()?,
        limits,
    };
    tracing::info!(listen = %addr, root = %root.display(), tls = options.tls.is_some(), "berth serving");
    berth::server::serve(berth::app(state), options, stop)
        .await
        .with_context(|| format!("serving on {addr}"))?;
    // The drain is over: no request runs any more. Pull times noted in memory are written now,
    // before the process exits 0.
    write_pulls(&registry).await;
    tracing::info!("berth stopped");
    Ok(())
}

/// Raise the descriptor limit and say what it is; warn when it cannot cover the connection cap
/// (a socket and a blob file or upstream socket per connection, plus the store's own files).
fn log_descriptor_limit(max_connections: usize) {
    match berth::server::raise_descriptor_limit() {
        Ok((before, soft, hard)) => {
            tracing::info!(
                soft_before = before,
                soft,
                hard,
                "file descriptor limit (RLIMIT_NOFILE)"
            );
            let needed = 2 * max_connections as u64 + 64;
            if soft < needed {
                tracing::warn!(
                    soft,
                    needed,
                    max_connections,
                    "the descriptor limit is low for [server] max_connections; raise the hard limit (LimitNOFILE=) or lower the cap"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
}

async fn write_pulls(registry: &Registry) {
    let batch = registry.pulls().drain();
    if batch.is_empty() {
        return;
    }
    let meta = registry.store().meta.clone();
    match tokio::task::spawn_blocking(move || meta.record_pulls(&batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record pull times"),
        Err(e) => tracing::warn!(error = %e, "could not record pull times"),
    }
}

/// Pull times reach the metadata store in batches, off the request path.
async fn flush_pulls(registry: Registry) {
    let mut tick = tokio::time::interval(PULL_FLUSH);
    loop {
        tick.tick().await;
        write_pulls(&registry).await;
    }
}

/// Online eviction and garbage collection every `[gc] interval`.
async fn collect_periodically(registry: Registry, policy: berth::gc::Policy, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tick.tick().await;
        if let Err(e) = berth::gc::run(
            registry.store(),
            registry.pulls(),
            Some(registry.metrics()),
            &policy,
            false,
            &|_| {},
        )
        .await
        {
            tracing::error!(error = %e, "garbage collection failed");
        }
    }
}
