//! Test support: berth's app in this process (`in_process`), and real processes on 127.0.0.1 —
//! berth itself, the project's Docker Hub emulator (`tests/hub`, a real distribution registry
//! behind Hub-style token auth), and an isolated dockerd. Every process is stopped by PID when its
//! guard drops. A missing tool is a loud failure.

pub mod berth;
pub mod chromium;
pub mod client;
pub mod cluster;
pub mod dockerd;
pub mod hub;
pub mod in_process;
pub mod podman;
pub mod store_layout;
pub mod tls;
pub mod traffic;
pub mod ui;
pub mod verify;

use std::path::Path;
use std::process::Command;

pub use berth::Berth;
pub use dockerd::Dockerd;
pub use hub::Hub;
pub use podman::Podman;

/// A berth that tests send requests to: the real binary ([`Berth`]) or the app in this process
/// ([`in_process::App`]), for helpers that work with either.
pub trait Server {
    /// `http://127.0.0.1:PORT`
    fn url(&self) -> &str;

    /// The URL of `path` (which starts with `/`).
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }
}

impl Server for Berth {
    fn url(&self) -> &str {
        &self.url
    }
}

impl Server for in_process::App {
    fn url(&self) -> &str {
        &self.url
    }
}

/// Panic with a clear message when a tool the test needs is not installed. Tests never skip:
/// `tests/run` installs everything, so a missing tool means a broken setup.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; run tests/run, which installs the test dependencies"
    );
}

/// A free port on 127.0.0.1 (closed again, so the caller can bind it).
pub use ::berth::testing::engines::free_port;

/// Run a command to completion; panic with its output if it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An htpasswd file written by `htpasswd -B` (its default bcrypt cost, 5), as users make them.
pub fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    htpasswd_with_cost(dir, users, 5)
}

/// An htpasswd file written by `htpasswd -B -C cost`.
pub fn htpasswd_with_cost(dir: &Path, users: &[(&str, &str)], cost: u32) -> std::path::PathBuf {
    require("htpasswd");
    let path = dir.join("htpasswd");
    let mut text = String::new();
    for (user, password) in users {
        text += &run(Command::new("htpasswd").args(["-Bbn", "-C", &cost.to_string(), user, password]));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// The `[private]` section that makes `team/*` a private namespace.
pub const PRIVATE: &str = "[private]\nnamespaces = [\"team/*\"]\n";

/// The `[[upstream]]` entry of a berth that mirrors `url` as `docker.io` with a 5 s timeout and
/// (when given) a tag TTL; keys that follow it belong to this entry.
pub fn upstream(url: &str, tag_ttl: Option<&str>) -> String {
    let ttl = tag_ttl.map(|t| format!("tag_ttl = \"{t}\"\n")).unwrap_or_default();
    format!("[[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\n{ttl}timeout = \"5s\"\n")
}

/// A berth mirroring `url` with tag TTL `tag_ttl`; `extra` follows the upstream entry (its keys
/// belong to that entry until a new section starts).
pub fn mirror_of(url: &str, tag_ttl: &str, extra: &str) -> Berth {
    Berth::start(&format!("{}{extra}\n", upstream(url, Some(tag_ttl))))
}

/// Run `skopeo ARGS`; its stdout, asserting success.
pub fn skopeo(args: &[&str]) -> String {
    require("skopeo");
    run(Command::new("skopeo").args(args))
}

/// The stdout of a `berth` command that must have succeeded (`args` name it in the panic).
pub fn succeeded(out: &std::process::Output, args: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "berth {args:?} failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// sha256 digest string of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    berth::digest_of(bytes)
}

/// The sha256 of a file's content, streamed.
pub fn sha256_file(path: &Path) -> String {
    berth::digest_of(&std::fs::read(path).unwrap())
}

/// SIGTERM, then SIGKILL after `grace`, and reap.
pub fn terminate(child: &mut std::process::Child, grace: std::time::Duration) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `len` deterministic pseudo-random bytes (xorshift): incompressible test content without a
/// random-number dependency.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tiny root filesystem tarball for `docker import`, with `marker` in /etc/berth-test.
pub fn rootfs_tar(dir: &Path, marker: &str) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/berth-test"), marker).unwrap();
    std::fs::write(root.join("payload.bin"), pseudo_random(2 << 20, 42)).unwrap();
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&root).arg("."));
    tar
}
