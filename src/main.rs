//! The `berth` binary: parse the command line, load the configuration, run the chosen command.

mod cli;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth::api::AppState;
use berth::api::admin::Admin;
use berth::config::{Config, LogFormat};
use berth::coord::Task;
use berth::coord::postgres::PgCoordinator;
use berth::metrics::ClusterReading;
use berth::server::{Options, TlsFiles};
use berth::service::Services;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// How often pull times noted in memory are written to the metadata store.
const PULL_FLUSH: Duration = Duration::from_secs(30);
/// How long queued notification events may hold up the exit.
const NOTIFY_FLUSH: Duration = Duration::from_secs(3);
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
    /// server over its admin socket in the store root when there is one, else works on the
    /// store directly. Needs only the config file.
    Gc {
        /// List what would be removed now, and what the grace period holds back until when;
        /// remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override `[gc] grace` for this run, e.g. `0s` to collect what was deleted a moment
        /// ago (only safe while nobody pushes).
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
    /// Delete REPO:TAG (the tag, and its manifest when no other tag points at it), REPO@DIGEST
    /// (the manifest and all its tags), or with --repository a whole repository. `berth gc` then
    /// reclaims the blobs only they used.
    Delete {
        /// REPO:TAG or REPO@DIGEST; there is no implicit :latest.
        #[arg(required_unless_present = "repository", conflicts_with = "repository")]
        reference: Option<String>,
        /// Remove this whole repository: its tags, manifests and links. It leaves the catalog
        /// and the UI; a name an upstream serves is mirrored again.
        #[arg(long, value_name = "REPO")]
        repository: Option<String>,
    },
    /// Disk use per repository, private vs cached.
    Du,
    // --- issue 15: export and import ---
    /// Write images to an OCI image layout: a directory, or a tar when PATH ends in .tar. Each
    /// tag becomes an index.json entry named REPO:TAG (org.opencontainers.image.ref.name), as
    /// `skopeo copy oci:PATH:REPO:TAG …` and `berth import` read it.
    Export(cli::ExportArgs),
    /// Read an OCI image layout (a directory or a tar of one) into the store, as private content
    /// or, with --upstream, as content cached from that upstream. Every digest is verified;
    /// images appear whole or not at all, and running it again finishes an interrupted import.
    Import(cli::ImportArgs),
    // --- issue 15: prefetch ---
    /// Fetch images into the cache now: the named ones, or else the config's [[prefetch]]
    /// lists. Through the running server when there is one (its admin socket), else on the
    /// store directly, contacting the upstreams itself (their password_env variables must be
    /// set). Shows progress on a terminal, prints one line per image, and exits non-zero when
    /// any image failed. A second run fetches nothing new.
    Prefetch {
        /// Only this platform of a multi-platform image (repeat for several), e.g.
        /// linux/amd64 or linux/arm64/v8; replaces the lists' own. Default: all platforms.
        #[arg(long = "platform", value_name = "OS/ARCH")]
        platforms: Vec<String>,
        /// Also fetch the images' referrers (signatures, SBOMs) kept under the tag schema.
        #[arg(long)]
        referrers: bool,
        /// Images by tag or digest as a mirror client names them: alpine:3.20,
        /// ghcr.io/org/app:1.4, nginx@sha256:…; no tag means :latest.
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
    },
}

/// Logs go to stderr in batches (one write per batch, not per access-log line); the guard writes
/// out what is left when it is dropped, so keep it to the end of `serve`.
fn init_logging(config: &Config) -> berth::batched_log::FlushGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let (writer, guard) = berth::batched_log::stderr();
    // Colours only for a person at a terminal, never in files, journald or log shippers.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

fn main() -> std::process::ExitCode {
    bound_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Failures end as one line of sentences (the error and its causes), never a debug dump or a
    // backtrace, whatever RUST_BACKTRACE says: the reader is a person at a terminal or a log.
    match runtime.block_on(run(Cli::parse())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {}", sentences(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cap glibc's malloc arenas at one per core, before any thread starts.
///
/// glibc gives each new thread that allocates under contention an arena of its own, up to eight
/// per core, and never returns most of an arena's pages. The runtime starts threads whenever a
/// worker blocks (`block_in_place` around each metadata transaction), so on the cold path berth's
/// peak RSS grew by a third with arenas that each held a few idle megabytes (BENCHMARKS.md,
/// "Round 2, after the storage seam"). One arena per core keeps allocation uncontended for the
/// runtime's workers, which are one per core. `MALLOC_ARENA_MAX` in the environment still wins.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        // SAFETY: mallopt only sets a tunable; it is called before any other thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, i32::try_from(cores).unwrap_or(i32::MAX)) };
    }
}

/// An error and its causes on one line, each cause once: many errors already quote their
/// source in their own message.
fn sentences(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    berth::install_crypto_provider();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(config, cli.config).await,
        Command::Gc { dry_run, grace } => cli::gc(&config, dry_run, grace.as_deref()).await,
        Command::Delete { reference, repository } => cli::delete(&config, reference, repository).await,
        Command::Du => cli::du(&config).await,
        // --- issue 15: export and import ---
        Command::Export(args) => cli::export(&config, args.into()).await,
        Command::Import(args) => cli::import(&config, args.into()).await,
        Command::Prefetch {
            platforms,
            referrers,
            images,
        } => cli::prefetch(&config, &platforms, referrers, &images).await,
    }
}

async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let _log = init_logging(&config);
    let limits = config.connection_limits();
    log_descriptor_limit(limits.max_connections);
    let root = &config.storage.root;
    let tls = &config.server.tls;
    let tls = match (tls.cert.is_empty(), tls.key.is_empty()) {
        (true, true) => None,
        (false, false) => Some(TlsFiles {
            cert: tls.cert.clone().into(),
            key: tls.key.clone().into(),
        }),
        _ => anyhow::bail!("[server.tls] needs both cert and key"),
    };
    let backends = berth::wiring::open(&config).await.map_err(anyhow::Error::msg)?;
    let addr = config.server.listen;
    let services = berth::wiring::services(&config, &backends, format!("{}:{}", hostname(), addr.port()))
        .map_err(anyhow::Error::msg)?;
    let state = berth::wiring::app_state(&config, services.clone(), tls.is_some()).map_err(anyhow::Error::msg)?;
    if !state.auth.enabled() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "authentication is off ([auth] htpasswd is empty): anyone who reaches this address may push");
    }
    let policy = cli::gc_policy(&config)?;
    tokio::spawn(reread_switches_on_sighup(services.clone(), config_path));
    tokio::spawn(flush_pulls(services.clone()));
    tokio::spawn(collect_periodically(
        services.clone(),
        policy.clone(),
        config.gc.interval,
    ));
    // Cancelled when shutdown begins: background tasks watch it and end.
    let stop = CancellationToken::new();
    tokio::spawn({
        let (services, stop) = (services.clone(), stop.clone());
        async move {
            // Led for the life of the process: locally always granted; a replica that does not
            // lead leaves the walk to the one that does.
            if let Some(_leader) = lead_or_log(&services, Task::UsageWalk).await {
                services.admin.measure_usage_every(USAGE_PERIOD, stop).await
            }
        }
    });
    if let Some(cluster) = backends.cluster.clone() {
        tokio::spawn(report_cluster(cluster, services.clone(), config.cluster.heartbeat));
    }
    // --- issue 15: [[prefetch]] lists, each kept fresh on its own interval ---
    for (i, list) in config.prefetch_settings()?.into_iter().enumerate() {
        let Some(interval) = list.interval else { continue };
        let jobs = berth::service::prefetch::Job::from_settings(std::slice::from_ref(&list), &[]);
        // Keyed by position and images: two lists with the same images still both run.
        let task = Task::Prefetch(format!("{i}:{}", list.images.join(",")));
        let (services, stop) = (services.clone(), stop.clone());
        tokio::spawn(async move {
            if let Some(_leader) = lead_or_log(&services, task).await {
                services.prefetch.every(jobs, interval, stop).await
            }
        });
    }
    // The admin channel of `berth gc`/`du`/`delete`; the token file of the old HTTP channel goes.
    let _ = std::fs::remove_file(root.join("admin.token"));
    let admin = Admin {
        services: services.clone(),
        policy: policy.clone(),
    };
    // Without it the registry still serves; only the maintenance commands cannot reach it (a
    // store root too long for a socket path, say), and the log says why.
    match berth::server::admin_socket::bind(root) {
        Ok(socket) => {
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    if let Err(e) = socket.serve(admin, stop).await {
                        tracing::error!(error = %e, "the admin socket failed; berth gc/du/delete cannot reach this server");
                    }
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "no admin socket; berth gc/du/delete cannot reach this server")
        }
    }
    let options = Options {
        addr,
        tls,
        drain_timeout: config.server.drain_timeout,
        limits,
    };
    startup_line(&config, &state, addr);
    berth::server::serve(berth::app(state), options, stop)
        .await
        .with_context(|| format!("serving on {addr}"))?;
    // The drain is over: no request runs any more. Pull times noted in memory are written now,
    // before the process exits 0, and queued notifications get a moment to go out.
    write_pulls(&services).await;
    services.core.notifier().flush(NOTIFY_FLUSH).await;
    // The others take over this replica's leases now instead of when they expire.
    backends.leave().await;
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

async fn write_pulls(services: &Services) {
    let batch = services.core.pulls().drain();
    if batch.is_empty() {
        return;
    }
    if let Err(e) = services.core.store().meta.record_pulls(&batch).await {
        tracing::warn!(error = %e, "could not record pull times");
    }
}

/// Pull times reach the metadata store in batches, off the request path.
async fn flush_pulls(services: Services) {
    let mut tick = tokio::time::interval(PULL_FLUSH);
    loop {
        tick.tick().await;
        write_pulls(&services).await;
    }
}

/// Copy the cluster coordinator's membership and counters into `/metrics`, every heartbeat.
async fn report_cluster(cluster: std::sync::Arc<PgCoordinator>, services: Services, every: Duration) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let members = match cluster.members().await {
            Ok(members) => members.len() as u64,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the cluster's members");
                continue;
            }
        };
        let stats = cluster.stats();
        services.core.metrics().cluster.update(ClusterReading {
            members,
            fills_owned: stats.fills_owned.load(Relaxed),
            fills_joined_remotely: stats.fills_joined_remotely.load(Relaxed),
            takeovers: stats.takeovers.load(Relaxed),
            notices: stats.notices.load(Relaxed),
        });
    }
}

/// Leadership of a periodic `task` that runs for the life of the process, or `None` (logged).
async fn lead_or_log(services: &Services, task: Task) -> Option<berth::coord::LeaderGuard> {
    match services.core.coordinator().lead(&task).await {
        Ok(Some(guard)) => Some(guard),
        Ok(None) => {
            tracing::info!(task = %task.key(), "another process leads this periodic task");
            None
        }
        Err(e) => {
            tracing::warn!(task = %task.key(), error = %e, "periodic task not started: no leadership");
            None
        }
    }
}

/// Online eviction and garbage collection every `[gc] interval`.
async fn collect_periodically(services: Services, policy: berth::cache::Policy, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tick.tick().await;
        // One collection at a time across every process on the store: a run still going when
        // the next tick comes (or a manual or another replica's run) makes this tick skip.
        match services.admin.collect_garbage(&policy, false, &|_| {}).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!("garbage collection skipped: another run leads"),
            Err(e) => tracing::error!(error = %e, "garbage collection failed"),
        }
    }
}

/// On SIGHUP, read the config file again (environment overrides included) and apply
/// `[storage] read_only`, `[storage] delete` and each `[[upstream]]`'s `offline`. Other keys need
/// a restart; a file that no longer parses is reported and changes nothing.
async fn reread_switches_on_sighup(services: Services, path: Option<PathBuf>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot watch SIGHUP; read-only mode can only change with a restart");
        return;
    };
    while hup.recv().await.is_some() {
        match Config::load(path.as_deref()) {
            Ok(config) => {
                services.admin.apply_switches(&config.storage);
                services.admin.apply_offline(&config.upstreams);
                tracing::info!(
                    read_only = config.storage.read_only,
                    delete = config.storage.delete,
                    "SIGHUP: [storage] read_only and delete, and [[upstream]] offline, re-read"
                );
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: the configuration did not load; nothing changed"),
        }
    }
}

/// This machine's name, for the UI address and the notification source.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if ok && !name.is_empty() => name.to_owned(),
        _ => "localhost".to_owned(),
    }
}

/// One line that says what this berth is: what it mirrors, where its web UI is, whether
/// authentication is on, and the maintenance switches.
fn startup_line(config: &Config, state: &AppState, addr: std::net::SocketAddr) {
    let mirrors = if config.upstreams.is_empty() {
        "nothing (a private registry only)".to_owned()
    } else {
        let names: Vec<String> = config
            .upstreams
            .iter()
            .map(|u| {
                let offline = if u.offline { ", offline" } else { "" };
                format!("{} ({}{offline})", u.name, without_userinfo(&u.url))
            })
            .collect();
        names.join(", ")
    };
    let host = if addr.ip().is_unspecified() {
        format!("{}:{}", hostname(), addr.port())
    } else {
        addr.to_string()
    };
    let ui = format!("{}://{host}/ui", if state.tls { "https" } else { "http" });
    let auth = if !state.auth.enabled() {
        "off (anyone who reaches berth may pull and push)".to_owned()
    } else {
        let scheme = match config.auth.scheme {
            berth::config::AuthScheme::Token => "on (token",
            berth::config::AuthScheme::Basic => "on (basic",
        };
        format!("{scheme}, users from {})", config.auth.htpasswd)
    };
    tracing::info!(
        listen = %addr,
        root = %config.storage.root.display(),
        tls = state.tls,
        mirrors = %mirrors,
        ui = %ui,
        auth = %auth,
        read_only = config.storage.read_only,
        delete = config.storage.delete,
        notifications = config.notifications.len(),
        "berth serving: mirrors {mirrors}; web UI at {ui}; auth {auth}"
    );
}

/// `url` without a user name or password, for the log.
fn without_userinfo(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => url.to_owned(),
    }
}
