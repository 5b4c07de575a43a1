//! The container image, built the way docker/README.md tells a host without Docker Hub to build
//! it: a Debian base made from Debian packages (`mmdebstrap` piped into `docker import`), berth
//! packaged with docker/Dockerfile's `prebuilt` target and `BASE_IMAGE`, then run with both setups
//! of docker/compose.yml (the private registry with htpasswd and TLS, and the Docker Hub mirror)
//! and used by a real dockerd.
//!
//! The base root filesystem is cached in `~/.cache/berth-base-rootfs-<codename>-<recipe>.tar`
//! because mmdebstrap downloads and unpacks a few dozen packages (minutes); delete it to rebuild.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::tls::TestCa;
use crate::support::{Dockerd, Hub, run};
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const BASE: &str = "berth-test-base:local";
const IMAGE: &str = "berth:test";

/// The host's Debian codename. The base must be the host's release: the prebuilt binary links
/// against the host's glibc.
fn codename() -> String {
    let os = std::fs::read_to_string("/etc/os-release").expect("read /etc/os-release");
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .expect("VERSION_CODENAME in /etc/os-release (a Debian host)")
}

/// How the base is made: Debian's essential packages plus what docker/Dockerfile needs
/// (ca-certificates, and passwd for useradd), without documentation, manual pages and locales.
/// Half the files of `--variant=minbase`, which matters because dockerd unpacks and later removes
/// every one of them on a disk that other jobs share. Part of the cache file's name, so changing
/// the recipe rebuilds the base.
const RECIPE: (&str, &[&str]) = (
    "essential-ca-passwd-nodoc",
    &[
        "--variant=essential",
        "--include=ca-certificates,passwd",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    ],
);

/// A root filesystem of the host's release made by [`RECIPE`] from the host's own apt sources (so
/// a local mirror or proxy the host uses is used here too). Built once, then cached.
fn base_rootfs() -> PathBuf {
    let codename = codename();
    let home = std::env::var_os("HOME").expect("HOME");
    let cache = Path::new(&home).join(".cache");
    std::fs::create_dir_all(&cache).unwrap();
    let (recipe, options) = RECIPE;
    let tar = cache.join(format!("berth-base-rootfs-{codename}-{recipe}.tar"));
    if tar.exists() {
        return tar;
    }
    support::require("mmdebstrap");
    let sources = ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file() && std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .expect("the host's apt sources (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)");
    // Written under a per-process name and renamed, so a concurrent or interrupted run never
    // leaves a half-written cache behind.
    let partial = cache.join(format!(
        "berth-base-rootfs-{codename}-{recipe}.{}.partial",
        std::process::id()
    ));
    let started = Instant::now();
    run(Command::new("mmdebstrap")
        .args(options)
        .args(["--format=tar", "--quiet"])
        .arg(&codename)
        .arg(&partial)
        .arg(sources)
        .stdin(Stdio::null()));
    std::fs::rename(&partial, &tar).unwrap();
    eprintln!("built {} in {:?}", tar.display(), started.elapsed());
    tar
}

/// A build context with what the `prebuilt` target copies: mirror.toml and docker/prebuilt/berth
/// (this build's binary, without debug info so the image layers stay small).
fn prebuilt_context(dir: &Path) -> PathBuf {
    support::require("objcopy");
    let ctx = dir.join("context");
    std::fs::create_dir_all(ctx.join("docker/prebuilt")).unwrap();
    std::fs::copy(Path::new(REPO).join("mirror.toml"), ctx.join("mirror.toml")).unwrap();
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_berth"))
        .arg(ctx.join("docker/prebuilt/berth")));
    ctx
}

/// Let the container's berth user (uid 10001) read `path` and what is in it: tempdirs are 0700.
fn readable_dir(path: &Path) {
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(path));
}

/// Wait until `url` answers 200 (curl, so TLS uses `ca`); panic with the container's log if not.
fn wait_ready(d: &Dockerd, container: &str, url: &str, ca: Option<&Path>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut curl = Command::new("curl");
        curl.args(["-sf", "-o", "/dev/null", "--max-time", "2"]);
        if let Some(ca) = ca {
            curl.arg("--cacert").arg(ca);
        }
        if curl.arg(url).status().is_ok_and(|s| s.success()) {
            return;
        }
        let running = d.try_docker(&["inspect", "-f", "{{.State.Running}}", container]);
        if Instant::now() > deadline || running.as_deref().map(str::trim) != Ok("true") {
            let logs = d.docker().args(["logs", container]).output().unwrap();
            panic!(
                "{container} is not ready at {url} ({running:?}):\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn curl_json(args: &[&str]) -> Value {
    let out = run(Command::new("curl").arg("-sSf").args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("curl {args:?}: {e}: {out}"))
}

#[test]
fn the_image_builds_from_a_local_debian_base_and_serves_both_compose_setups() {
    support::require("curl");
    support::require("htpasswd");
    let started = Instant::now();
    let rootfs = base_rootfs();
    let base_ready = started.elapsed();

    let private_port = support::free_port();
    let mirror_port = support::free_port();
    let private_addr = format!("127.0.0.1:{private_port}");
    let mirror_url = format!("http://127.0.0.1:{mirror_port}");
    let mut d = Dockerd::start_with_storage(&[&mirror_url], "overlay2");
    let work = tempfile::tempdir().unwrap();

    // The base, as docker/README.md shows it: a root filesystem tarball into `docker import`.
    d.ok(&["import", rootfs.to_str().unwrap(), BASE]);
    // The classic builder (no BuildKit: Debian 12 has no buildx) with no network at all: nothing
    // may come from Docker Hub, and the prepared base needs no apt.
    let ctx = prebuilt_context(work.path());
    let build = d
        .docker()
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--network", "none", "--target", "prebuilt"])
        .args(["--build-arg", &format!("BASE_IMAGE={BASE}"), "-t", IMAGE, "-f"])
        .arg(Path::new(REPO).join("docker/Dockerfile"))
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "docker build failed:\n{}\n{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let user = d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}} {{json .Config.Entrypoint}}",
        IMAGE,
    ]);
    assert_eq!(user.trim(), r#"berth ["berth"]"#, "runs berth as the berth user");
    let built = started.elapsed();

    // Setup 1, compose's `registry`: docker/private.toml with TLS and htpasswd, as in compose.yml
    // (host networking: this dockerd has no bridge; the listen address keeps it on loopback).
    let (certs, auth) = (work.path().join("certs"), work.path().join("auth"));
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&auth).unwrap();
    let ca = TestCa::new(&certs);
    let htpasswd = run(Command::new("htpasswd").args(["-Bbn", "alice", "alice-pw"]));
    std::fs::write(auth.join("htpasswd"), htpasswd).unwrap();
    readable_dir(&certs);
    readable_dir(&auth);
    d.trust_ca(&private_addr, &ca.ca);
    let volume = |host: &Path, inside: &str| format!("{}:{inside}:ro", host.display());
    d.ok(&[
        "run",
        "-d",
        "--name",
        "private",
        "--network",
        "host",
        "-e",
        &format!("BERTH_SERVER_LISTEN={private_addr}"),
        "-e",
        "BERTH_SERVER_TLS_CERT=/certs/server.crt",
        "-e",
        "BERTH_SERVER_TLS_KEY=/certs/server.key",
        "-e",
        "BERTH_AUTH_HTPASSWD=/auth/htpasswd",
        "-v",
        &volume(&Path::new(REPO).join("docker/private.toml"), "/etc/berth/mirror.toml"),
        "-v",
        &volume(&certs, "/certs"),
        "-v",
        &volume(&auth, "/auth"),
        IMAGE,
    ]);
    wait_ready(&d, "private", &format!("https://{private_addr}/readyz"), Some(&ca.ca));

    // The seeds' pushes, as they write them (after the login their TLS+htpasswd setup needs).
    d.ok(&["login", "-u", "alice", "-p", "alice-pw", &private_addr]);
    let tar = support::rootfs_tar(work.path(), "pushed into the image's berth");
    d.ok(&["import", tar.to_str().unwrap(), "alpine:latest"]);
    let id = d.ok(&["image", "inspect", "-f", "{{.Id}}", "alpine:latest"]);
    for name in ["my-alpine", "alpine", "cdecl/alpine:3.13"] {
        let image = format!("{private_addr}/{name}");
        d.ok(&["tag", "alpine:latest", &image]);
        d.ok(&["push", &image]);
        d.ok(&["rmi", &image]);
        d.ok(&["pull", &image]);
        let pulled = d.ok(&["image", "inspect", "-f", "{{.Id}}", &image]);
        assert_eq!(pulled, id, "{name} comes back as the image that was pushed");
    }
    let cacert = ca.ca.to_str().unwrap();
    let catalog = curl_json(&[
        "--cacert",
        cacert,
        "-u",
        "alice:alice-pw",
        &format!("https://{private_addr}/v2/_catalog"),
    ]);
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["alpine", "cdecl/alpine", "my-alpine"])
    );
    let anonymous = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", cacert])
        .arg(format!("https://{private_addr}/v2/my-alpine/tags/list")));
    assert_eq!(anonymous, "401", "the private registry wants a login");

    // Setup 2, compose's `mirror`: the repository's mirror.toml unchanged but for the upstream
    // URL, which is the project's Docker Hub emulator instead of the real Docker Hub.
    let hub = Hub::start();
    hub.seed(0);
    let mirror_toml = std::fs::read_to_string(Path::new(REPO).join("mirror.toml"))
        .unwrap()
        .replace(
            "url = \"https://registry-1.docker.io\"",
            &format!("url = \"{}\"", hub.url),
        );
    assert!(
        mirror_toml.contains(&hub.url),
        "mirror.toml names Docker Hub's URL to replace"
    );
    let conf = work.path().join("mirror-conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("mirror.toml"), mirror_toml).unwrap();
    readable_dir(&conf);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "mirror",
        "--network",
        "host",
        "-e",
        &format!("BERTH_SERVER_LISTEN=127.0.0.1:{mirror_port}"),
        "-v",
        &volume(&conf.join("mirror.toml"), "/etc/berth/mirror.toml"),
        IMAGE,
    ]);
    wait_ready(&d, "mirror", &format!("{mirror_url}/readyz"), None);
    // dockerd sends Docker Hub pulls to its registry-mirror, and only there: its own route to
    // Docker Hub is a dead proxy, so this pull succeeds only through the container.
    d.ok(&["pull", "busybox"]);
    let catalog = curl_json(&[&format!("{mirror_url}/v2/_catalog")]);
    assert!(
        catalog["repositories"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("library/busybox")),
        "the mirror cached what dockerd pulled: {catalog}"
    );
    d.ok(&["stop", "-t", "40", "private", "mirror"]);
    eprintln!(
        "base ready after {base_ready:?}, image built after {built:?}, done after {:?}",
        started.elapsed()
    );
}

/// docker/compose.yml as Debian 12's docker-compose 1.29 reads it (it refuses a top-level `name:`
/// and needs profiles from 1.28 on): valid, the private registry by default, the mirror in its
/// profile, each with the config file that makes it that setup.
#[test]
fn compose_file_is_valid_for_docker_compose_1_29_with_both_setups() {
    support::require("docker-compose");
    let compose = |args: &[&str]| {
        run(Command::new("docker-compose")
            .current_dir(Path::new(REPO).join("docker"))
            .args(args)
            .stdin(Stdio::null()))
    };
    let version = compose(&["version", "--short"]);
    assert!(version.starts_with("1.") || version.starts_with("2."), "{version}");
    // 1.29's `config --services` lists every service whatever the profiles, so the profile is
    // checked in the resolved file: only the mirror has one.
    let mut services: Vec<String> = compose(&["config", "--services"]).lines().map(str::to_owned).collect();
    services.sort();
    assert_eq!(services, ["mirror", "registry"]);
    let config = compose(&["config"]);
    assert_eq!(
        config.matches("profiles:").count(),
        1,
        "one service has a profile:\n{config}"
    );
    let mirror = config.split("\n  registry:").next().unwrap();
    assert!(
        mirror.contains("profiles:\n    - mirror"),
        "the mirror is in the `mirror` profile:\n{config}"
    );
    for expected in [
        "docker/private.toml:/etc/berth/mirror.toml:ro",
        "BERTH_AUTH_HTPASSWD: /auth/htpasswd",
        "BERTH_SERVER_TLS_CERT: /certs/domain.crt",
        "published: 5000",
        "published: 5001",
        "stop_grace_period: 40s",
    ] {
        assert!(config.contains(expected), "compose config has {expected:?}:\n{config}");
    }
    let mirror_conf = format!(
        "{}:/etc/berth/mirror.toml:ro",
        Path::new(REPO).join("mirror.toml").display()
    );
    assert!(
        config.contains(&mirror_conf),
        "the mirror runs the default mirror.toml:\n{config}"
    );
}

/// docker/compose.cluster.yml as Debian 12's docker-compose 1.29 reads it: PostgreSQL, Garage,
/// three replicas that each advertise their own name, and nginx running the load balancer the
/// cluster tests run (docker/cluster/nginx.conf, whose `server berth-N` lines name these services).
#[test]
fn cluster_compose_file_is_valid_and_runs_the_tested_load_balancer() {
    support::require("docker-compose");
    let out = run(Command::new("docker-compose")
        .current_dir(Path::new(REPO).join("docker"))
        .args(["-f", "compose.cluster.yml", "config"])
        .env("POSTGRES_PASSWORD", "p")
        .env("CLUSTER_SECRET", "s")
        .env("S3_ACCESS_KEY_ID", "k")
        .env("S3_SECRET_ACCESS_KEY", "x")
        .stdin(Stdio::null()));
    let nginx = std::fs::read_to_string(Path::new(REPO).join("docker/cluster/nginx.conf")).unwrap();
    for i in 1..=3 {
        assert!(out.contains(&format!("\n  berth-{i}:\n")), "service berth-{i}:\n{out}");
        assert!(
            out.contains(&format!("BERTH_CLUSTER_ADVERTISE: http://berth-{i}:5000")),
            "{out}"
        );
        assert!(
            nginx.contains(&format!("server berth-{i}:5000")),
            "nginx.conf balances over berth-{i}"
        );
    }
    for expected in [
        "docker/cluster/nginx.conf:/etc/nginx/nginx.conf:ro",
        "docker/cluster/replica.toml:/etc/berth/mirror.toml:ro",
        "DATABASE_URL: postgres://berth:p@postgres:5432/berth",
        "published: 5000",
    ] {
        assert!(out.contains(expected), "compose config has {expected:?}:\n{out}");
    }
}
