//! `berth prefetch`: the named images or the config's `[[prefetch]]` lists, through the running
//! server's admin socket or on the store directly; progress on a terminal, one line per image.

use std::io::{IsTerminal, Write};

use anyhow::{Context, bail};
use berth::config::{Config, MetadataBackend};
use berth::service::gc;
use berth::service::prefetch::{Event as PrefetchEvent, ImageReport, Job as PrefetchJob};
use berth::service::{Core, Services};
use berth::store;
use berth::wiring::Backends;
use bytesize::ByteSize;

use super::{Target, admin_url, ask, read_lines, target};

/// `[cache]` and `[gc]` as a policy, with the `[[prefetch]]` images that are exempt from the
/// size cap resolved to the local names the mirror stores them under.
pub fn gc_policy(config: &Config) -> anyhow::Result<gc::Policy> {
    let mut policy = berth::cache::Policy::from_config(config);
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
    // A cluster's store is its database and bucket, never a new local one.
    let target = if config.metadata.backend == MetadataBackend::Postgres || root.join("meta.redb").is_file() {
        target(config).await?
    } else {
        eprintln!("berth: no store at {} yet; creating it", root.display());
        Target::Direct(Backends::local(
            store::fs::open(root).with_context(|| format!("creating the store at {}", root.display()))?,
        ))
    };
    let reports: Vec<ImageReport> = match target {
        Target::Direct(backends) => {
            let (store, coord) = (backends.store.clone(), backends.coord.clone());
            let upstreams = config
                .upstream_settings()
                .context("no server runs, so berth prefetch contacts the upstreams itself and needs their credentials (password_env) in its environment")?
                .into_iter()
                .map(berth::upstream::Upstream::new)
                .collect::<Result<Vec<_>, _>>()?;
            let services = Services::new(
                Core::new(store.clone(), upstreams, coord).with_private_namespaces(config.private.namespaces.clone()),
            );
            let reports = services.prefetch.run(&jobs, &show).await;
            // The runs count as pulls for TTL eviction, as they do on a server.
            let recorded = store.meta.record_pulls(&services.core.pulls().drain()).await;
            backends.leave().await;
            recorded?;
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
