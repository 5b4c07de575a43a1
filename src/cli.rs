//! `berth gc`, `delete`, `du`, `export`, `import` and `prefetch`. They need only the config file, for the store
//! root. While a server runs, its database lock keeps other processes out of the store, so these
//! commands ask the server over its admin socket (`<root>/admin.sock`, owner-only; see
//! `api::admin`), whatever its address, TLS settings or upstream secrets. With no server running,
//! they open the store directly. Only `berth prefetch` creates a store (to prepare a site).

// issue 15: `berth export` and `berth import`.
mod layout;
pub use layout::{ExportArgs, ImportArgs, export, import};

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use berth::api::admin::{SOCKET_FILE, parse_grace};
use berth::config::{Config, MetadataBackend};
use berth::oci::{RepoName, parse_image_ref};
use berth::service::gc::{self, DiskUsage, GcProgress, Report};
use berth::service::{Core, Services};
use berth::store;
use berth::wiring::Backends;
use bytesize::ByteSize;
use futures_util::StreamExt;

// --- issue 15: `berth prefetch` ---
mod prefetch;
pub use prefetch::{gc_policy, prefetch};

enum Target {
    /// No server runs on a single-node store, or cluster mode (each replica's leases and the
    /// metadata fences make a direct run safe beside them): this process works on the backends.
    Direct(Backends),
    Server {
        socket: PathBuf,
        http: reqwest::Client,
    },
}

async fn target(config: &Config) -> anyhow::Result<Target> {
    if config.metadata.backend == MetadataBackend::Postgres {
        return Ok(Target::Direct(
            berth::wiring::open_for_tool(config).await.map_err(anyhow::Error::msg)?,
        ));
    }
    let root = &config.storage.root;
    match store::fs::open_existing(root) {
        Ok(store) => Ok(Target::Direct(Backends::local(store))),
        Err(store::Error::Locked) => {
            let socket = root.join(SOCKET_FILE);
            let http = reqwest::Client::builder().unix_socket(socket.clone()).build()?;
            if std::io::stderr().is_terminal() {
                eprintln!(
                    "berth: a server is running on this store; asking it over {}",
                    socket.display()
                );
            }
            Ok(Target::Server { socket, http })
        }
        Err(e @ store::Error::Missing(_)) => bail!("{e}"),
        Err(e) => Err(e).with_context(|| format!("opening the store at {}", root.display())),
    }
}

/// The URL of an admin request (the host is a placeholder: the connection is the socket).
fn admin_url(path: &str, query: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query {
        q.append_pair(k, v);
    }
    format!("http://berth/{path}?{}", q.finish())
}

/// Send an admin request; a failure to reach the socket or a refusal becomes one sentence.
async fn ask(socket: &std::path::Path, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
    let response = request.send().await.map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        let hint = if cause.contains("ermission denied") {
            " (it is owner-only: run this as the user the server runs as)"
        } else {
            " (the server's log says why at its startup)"
        };
        anyhow::anyhow!(
            "a berth server holds this store, but its admin socket {} did not answer: {cause}{hint}",
            socket.display()
        )
    })?;
    if !response.status().is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("{}", text.trim());
    }
    Ok(response)
}

/// Hand each JSON line of a streamed admin answer to `each` as it arrives.
async fn read_lines(
    response: reqwest::Response,
    mut each: impl FnMut(serde_json::Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut lines = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = lines.next().await {
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: serde_json::Value = serde_json::from_slice(&buffer[..end])?;
            buffer.drain(..=end);
            each(line)?;
        }
    }
    Ok(())
}

/// Progress on a terminal only: a log or a pipe gets the report alone.
fn show_progress(p: GcProgress) {
    let mut err = std::io::stderr();
    if !err.is_terminal() {
        return;
    }
    let _ = match p {
        GcProgress::Plan {
            manifests,
            blobs,
            store_bytes,
        } => writeln!(
            err,
            "gc: {manifests} manifests, {blobs} blobs, {} in the store",
            ByteSize(store_bytes)
        ),
        GcProgress::Evict { manifests } => writeln!(err, "gc: {manifests} manifests to remove"),
        GcProgress::Sweep { done, total } => {
            let end = if done == total { "\n" } else { "" };
            write!(err, "\rgc: sweeping blobs {done}/{total}{end}")
        }
        GcProgress::Uploads { stale } => writeln!(err, "gc: {stale} stale upload sessions"),
    };
}

/// When `unix` is, and how far from now, e.g. `2026-11-30T20:15:03Z (in 59m 58s)`.
fn when(unix: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(unix);
    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
    format!(
        "{} (in {})",
        humantime::format_rfc3339_seconds(at),
        humantime::format_duration(Duration::from_secs(wait.as_secs()))
    )
}

/// The report in registry:2's `garbage-collect` shape: counts, then one line per blob.
fn print_report(r: &Report) {
    let (evict, untag, blob_done, upload) = if r.dry_run {
        (
            "would evict cached manifest",
            "would delete untagged manifest",
            "blob eligible for deletion",
            "would purge upload session",
        )
    } else {
        (
            "evicted cached manifest",
            "deleted untagged manifest",
            "blob deleted",
            "purged upload session",
        )
    };
    for m in &r.evicted {
        println!("{evict} {m}");
    }
    for m in &r.untagged {
        println!("{untag} {m}");
    }
    let grace = humantime::format_duration(Duration::from_secs(r.grace_secs));
    println!(
        "{} blobs marked, {} blobs eligible for deletion ({}), {} held back by the {grace} grace period",
        r.marked,
        r.blobs.len(),
        ByteSize(r.reclaimed_bytes),
        r.held.len()
    );
    for b in &r.blobs {
        println!("{blob_done}: {} ({})", b.digest, ByteSize(b.size));
    }
    for h in &r.held {
        println!(
            "blob held back until {}: {} ({})",
            when(h.eligible_at),
            h.digest,
            ByteSize(h.size)
        );
    }
    for u in &r.uploads {
        println!("{upload} {u}");
    }
    if r.dry_run {
        println!(
            "would reclaim {} in {} blobs; the store holds {}",
            ByteSize(r.reclaimed_bytes),
            r.blobs.len(),
            ByteSize(r.store_bytes_before)
        );
    } else {
        println!(
            "reclaimed {} in {} blobs; the store held {}",
            ByteSize(r.reclaimed_bytes),
            r.blobs.len(),
            ByteSize(r.store_bytes_before)
        );
    }
    if !r.held.is_empty() {
        println!(
            "blobs unreferenced for less than the grace period ([gc] grace = {grace}) are kept for pushes in flight; `berth gc --grace 0s` deletes them now (safe only while nobody pushes)"
        );
    }
}

pub async fn gc(config: &Config, dry_run: bool, grace: Option<&str>) -> anyhow::Result<()> {
    let grace = grace
        .map(|g| parse_grace(g).map(|d| (g, d)))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let report = match target(config).await? {
        Target::Direct(backends) => {
            let mut policy = gc_policy(config)?;
            if let Some((_, g)) = grace {
                policy.grace = g;
            }
            // The coordinator's GC lead keeps this run from overlapping another (a replica's, or
            // another command's): collect_garbage takes it or steps aside.
            let services = Services::new(Core::new(backends.store.clone(), Vec::new(), backends.coord.clone()));
            let run = services.admin.collect_garbage(&policy, dry_run, &show_progress).await;
            backends.leave().await;
            run?.context("another garbage collection is running; try again when it has finished")?
        }
        Target::Server { socket, http } => {
            let mut query = vec![("dry_run", dry_run.to_string())];
            if let Some((text, _)) = grace {
                query.push(("grace", text.to_owned()));
            }
            let response = ask(&socket, http.post(admin_url("gc", &query))).await?;
            let mut report = None;
            read_lines(response, |line| {
                if let Some(error) = line.get("error").and_then(|e| e.as_str()) {
                    bail!("gc failed on the server: {error}");
                }
                if let Some(r) = line.get("report") {
                    report = Some(serde_json::from_value(r.clone())?);
                } else if let Some(p) = line.get("progress") {
                    show_progress(serde_json::from_value(p.clone())?);
                }
                Ok(())
            })
            .await?;
            report.context("the server ended the gc stream without a report")?
        }
    };
    print_report(&report);
    Ok(())
}

/// `berth delete REPO:TAG`, `REPO@DIGEST` or `--repository REPO`.
pub async fn delete(config: &Config, reference: Option<String>, repository: Option<String>) -> anyhow::Result<()> {
    // Checked before anything is opened, so a typo is reported as such.
    let what = match (&reference, &repository) {
        (Some(r), None) => Ok(parse_image_ref(r).map_err(anyhow::Error::msg)?),
        (None, Some(r)) => Err(r
            .parse::<RepoName>()
            .map_err(|e| anyhow::anyhow!("{e}: {r} is not a repository name"))?),
        _ => bail!("give REPO:TAG, REPO@DIGEST, or --repository REPO"),
    };
    match target(config).await? {
        Target::Direct(backends) => {
            let services = Services::new(Core::new(backends.store.clone(), Vec::new(), backends.coord.clone()));
            services.admin.apply_switches(&config.storage); // [storage] delete and read_only hold here too
            let deleted = match &what {
                Ok((repo, r)) => services.manifests.delete_image(repo, r).await,
                Err(repo) => services.manifests.remove_repository(repo).await,
            };
            backends.leave().await;
            deleted?
        }
        Target::Server { socket, http } => {
            let query = match (&reference, &repository) {
                (Some(r), _) => ("reference", r.clone()),
                (_, Some(r)) => ("repository", r.clone()),
                _ => unreachable!("checked above"),
            };
            ask(&socket, http.post(admin_url("delete", &[query]))).await?;
        }
    }
    match what {
        Ok(_) => println!(
            "deleted {}; run `berth gc` to reclaim the blobs only it used",
            reference.unwrap_or_default()
        ),
        Err(repo) => println!(
            "removed repository {repo} (its tags, manifests and links); run `berth gc` to reclaim the blobs only it used"
        ),
    }
    Ok(())
}

pub async fn du(config: &Config) -> anyhow::Result<()> {
    let usage: DiskUsage = match target(config).await? {
        Target::Direct(b) => {
            let usage = gc::disk_usage(&b.store).await;
            b.leave().await;
            usage?
        }
        Target::Server { socket, http } => ask(&socket, http.get("http://berth/du")).await?.json().await?,
    };
    println!(
        "{:<50} {:<24} {:>9} {:>6} {:>12}",
        "REPOSITORY", "ORIGIN", "MANIFESTS", "TAGS", "SIZE"
    );
    for r in &usage.repositories {
        println!(
            "{:<50} {:<24} {:>9} {:>6} {:>12}",
            r.repository,
            r.origin,
            r.manifests,
            r.tags,
            ByteSize(r.bytes).to_string()
        );
    }
    println!(
        "private {}, cached {}, unreferenced {}, total {}",
        ByteSize(usage.private_bytes),
        ByteSize(usage.cached_bytes),
        ByteSize(usage.unreferenced_bytes),
        ByteSize(usage.total_bytes)
    );
    Ok(())
}
