//! `berth gc`, `delete`, `du` and `prefetch`. They need only the config file, for the store
//! root. While a server runs, its database lock keeps other processes out of the store, so these
//! commands ask the server over its admin socket (`<root>/admin.sock`, owner-only; see
//! `api::admin`), whatever its address, TLS settings or upstream secrets. With no server running,
//! they open the store directly. They never create a store.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use berth::api::admin::{SOCKET_FILE, parse_grace};
use berth::cache::Pulls;
use berth::config::Config;
use berth::gc::{self, Progress, Report, Usage};
use berth::oci::{RepoName, parse_image_ref};
use berth::service::Registry;
use berth::service::prefetch::{Event as PrefetchEvent, ImageReport, Job as PrefetchJob};
use berth::store::{self, Store};
use bytesize::ByteSize;
use futures_util::StreamExt;

enum Target {
    Direct(Store),
    Server { socket: PathBuf, http: reqwest::Client },
}

fn target(config: &Config) -> anyhow::Result<Target> {
    let root = &config.storage.root;
    match Store::open_existing(root) {
        Ok(store) => Ok(Target::Direct(store)),
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
fn show_progress(p: Progress) {
    let mut err = std::io::stderr();
    if !err.is_terminal() {
        return;
    }
    let _ = match p {
        Progress::Plan {
            manifests,
            blobs,
            store_bytes,
        } => writeln!(
            err,
            "gc: {manifests} manifests, {blobs} blobs, {} in the store",
            ByteSize(store_bytes)
        ),
        Progress::Evict { manifests } => writeln!(err, "gc: {manifests} manifests to remove"),
        Progress::Sweep { done, total } => {
            let end = if done == total { "\n" } else { "" };
            write!(err, "\rgc: sweeping blobs {done}/{total}{end}")
        }
        Progress::Uploads { stale } => writeln!(err, "gc: {stale} stale upload sessions"),
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
    let report = match target(config)? {
        Target::Direct(store) => {
            let mut policy = gc_policy(config)?;
            if let Some((_, g)) = grace {
                policy.grace = g;
            }
            gc::run(&store, &Pulls::default(), None, &policy, dry_run, &show_progress).await?
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
    match target(config)? {
        Target::Direct(store) => {
            let registry = Registry::new(store, Vec::new());
            registry.apply_switches(&config.storage); // [storage] delete and read_only hold here too
            match &what {
                Ok((repo, r)) => registry.delete_image(repo, r).await?,
                Err(repo) => registry.remove_repository(repo).await?,
            }
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
    let usage: Usage = match target(config)? {
        Target::Direct(store) => tokio::task::spawn_blocking(move || gc::disk_usage(&store)).await??,
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

// --- issue 15: `berth prefetch` ---

/// `[cache]` and `[gc]` as a policy, with the `[[prefetch]]` images that are exempt from the
/// size cap resolved to the local names the mirror stores them under.
pub fn gc_policy(config: &Config) -> anyhow::Result<gc::Policy> {
    let mut policy = config.gc_policy()?;
    let upstreams: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    policy.pinned = berth::service::prefetch::pins(&config.prefetch_settings()?, &upstreams);
    Ok(policy)
}

/// Running totals of the image in progress, for the terminal line.
#[derive(Default)]
struct Tally {
    fetched: (usize, u64),
    cached: (usize, u64),
}

/// Progress on a terminal only: images as they start, then one line of blob counts per image.
fn show_prefetch(tally: &parking_lot::Mutex<Tally>, e: PrefetchEvent) {
    let mut err = std::io::stderr();
    if !err.is_terminal() {
        return;
    }
    let mut t = tally.lock();
    let _ = match e {
        PrefetchEvent::Image { image, n, of } => {
            *t = Tally::default();
            writeln!(err, "[{n}/{of}] {image}")
        }
        PrefetchEvent::Blob { size, cached, .. } => {
            let slot = if cached { &mut t.cached } else { &mut t.fetched };
            slot.0 += 1;
            slot.1 += size;
            write!(
                err,
                "\r  blobs: {} fetched ({}), {} already cached ({})",
                t.fetched.0,
                ByteSize(t.fetched.1),
                t.cached.0,
                ByteSize(t.cached.1)
            )
        }
        PrefetchEvent::Done { .. } if t.fetched.0 + t.cached.0 > 0 => writeln!(err),
        PrefetchEvent::Done { .. } => Ok(()),
    };
}

/// The jobs of a `berth prefetch` command line: the named images, or else the configured lists.
fn prefetch_jobs(
    config: &Config,
    platforms: &[String],
    referrers: bool,
    images: &[String],
) -> anyhow::Result<Vec<PrefetchJob>> {
    for p in platforms {
        p.parse::<berth::oci::Platform>()
            .map_err(|e| anyhow::anyhow!("--platform: {e}"))?;
    }
    if images.is_empty() {
        let mut jobs = PrefetchJob::from_settings(&config.prefetch_settings()?, platforms);
        if jobs.is_empty() {
            bail!(
                "nothing to prefetch: name images (berth prefetch alpine:3.20) or add [[prefetch]] lists to the config file"
            );
        }
        for job in &mut jobs {
            job.referrers |= referrers;
        }
        return Ok(jobs);
    }
    images
        .iter()
        .map(|image| {
            berth::config::parse_image(image).map_err(anyhow::Error::msg)?;
            Ok(PrefetchJob {
                image: image.clone(),
                platforms: platforms.to_vec(),
                referrers,
            })
        })
        .collect()
}

/// `berth prefetch`: through the running server when there is one, else on the store directly
/// (then with this process's own upstream clients, so `password_env` variables must be set).
pub async fn prefetch(config: &Config, platforms: &[String], referrers: bool, images: &[String]) -> anyhow::Result<()> {
    let jobs = prefetch_jobs(config, platforms, referrers, images)?;
    let tally = parking_lot::Mutex::new(Tally::default());
    let show = |e: PrefetchEvent| show_prefetch(&tally, e);
    let root = &config.storage.root;
    // Unlike gc or du, a prefetch may prepare a store that never served yet (a site set up
    // before it goes offline).
    let target = if root.join("meta.redb").is_file() {
        target(config)?
    } else {
        eprintln!("berth: no store at {} yet; creating it", root.display());
        Target::Direct(Store::open(root).with_context(|| format!("creating the store at {}", root.display()))?)
    };
    let reports: Vec<ImageReport> = match target {
        Target::Direct(store) => {
            let upstreams = config
                .upstream_settings()
                .context("no server runs, so berth prefetch contacts the upstreams itself and needs their credentials (password_env) in its environment")?
                .into_iter()
                .map(berth::upstream::Upstream::new)
                .collect::<Result<Vec<_>, _>>()?;
            let registry =
                Registry::new(store.clone(), upstreams).with_private_namespaces(config.private.namespaces.clone());
            let reports = registry.prefetch(&jobs, &show).await;
            // The runs count as pulls for TTL eviction, as they do on a server.
            let (meta, batch) = (store.meta.clone(), registry.pulls().drain());
            tokio::task::spawn_blocking(move || meta.record_pulls(&batch)).await??;
            reports
        }
        Target::Server { socket, http } => {
            let request = http
                .post(admin_url("prefetch", &[]))
                .json(&serde_json::json!({ "jobs": jobs }));
            let response = ask(&socket, request).await?;
            let mut reports = None;
            read_lines(response, |line| {
                if let Some(r) = line.get("reports") {
                    reports = Some(serde_json::from_value(r.clone())?);
                } else if let Some(p) = line.get("progress") {
                    show(serde_json::from_value(p.clone())?);
                }
                Ok(())
            })
            .await?;
            reports.context("the server ended the prefetch stream without a report")?
        }
    };
    print_prefetch(&reports)
}

/// One line per image, then the totals; an error when any image failed.
fn print_prefetch(reports: &[ImageReport]) -> anyhow::Result<()> {
    for r in reports {
        let what = r.resolved.as_deref().unwrap_or("-");
        match &r.error {
            None => println!(
                "ok      {}  {what}  {} manifests, {} blobs ({}); fetched now {} manifests, {} blobs ({}){}",
                r.image,
                r.manifests,
                r.blobs,
                ByteSize(r.bytes),
                r.manifests_fetched,
                r.blobs_fetched,
                ByteSize(r.bytes_fetched),
                if r.referrers > 0 {
                    format!("; {} referrers", r.referrers)
                } else {
                    String::new()
                }
            ),
            Some(e) => println!("FAILED  {}  {what}  {e}", r.image),
        }
    }
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    let fetched: (usize, u64) = reports
        .iter()
        .fold((0, 0), |a, r| (a.0 + r.blobs_fetched, a.1 + r.bytes_fetched));
    let cached: (usize, u64) = reports.iter().fold((0, 0), |a, r| {
        (a.0 + r.blobs - r.blobs_fetched, a.1 + r.bytes - r.bytes_fetched)
    });
    println!(
        "{} of {} images cached; fetched {} blobs ({}), {} blobs ({}) were already cached",
        reports.len() - failed,
        reports.len(),
        fetched.0,
        ByteSize(fetched.1),
        cached.0,
        ByteSize(cached.1)
    );
    if failed > 0 {
        bail!("{failed} of {} images failed (see above)", reports.len());
    }
    Ok(())
}
