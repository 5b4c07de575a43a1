//! An isolated Docker daemon: its own data and exec roots and socket, vfs storage (unless a test
//! asks for another driver), no bridge or iptables, and registry traffic other than the given
//! mirror sent to a dead proxy, so a failing mirror cannot silently fall back to the real Docker Hub.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Dockerd {
    /// `unix://DIR/sock`, for `docker -H`.
    pub host: String,
    child: Option<Child>,
    dir: TempDir,
    trusted: Vec<PathBuf>,
}

impl Dockerd {
    /// Start dockerd with `--registry-mirror` for each of `mirrors` and `daemon_json` merged into
    /// its config (for example `"insecure-registries"`).
    pub fn start(mirrors: &[&str]) -> Dockerd {
        Dockerd::start_with_storage(mirrors, "vfs")
    }

    /// As [`Dockerd::start`], with another storage driver. vfs copies the whole root filesystem
    /// for every container and image build step, which is fine for the tests' tiny images but
    /// takes minutes per build on a real Debian base; tests/it/image.rs uses overlay2.
    pub fn start_with_storage(mirrors: &[&str], storage_driver: &str) -> Dockerd {
        super::require("dockerd");
        super::require("docker");
        let dir = tempfile::Builder::new()
            .prefix("berth-dockerd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}/sock", d.display()))
            .arg(format!("--storage-driver={storage_driver}"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                // One attempt per layer: a failing pull should fail fast, not retry with back-off.
                "--max-download-attempts=1",
            ]);
        for m in mirrors {
            cmd.args(["--registry-mirror", m]);
        }
        let child = cmd
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let mut dockerd = Dockerd {
            host: format!("unix://{}/sock", d.display()),
            child: Some(child),
            dir,
            trusted: Vec::new(),
        };
        dockerd.wait_ready();
        dockerd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited ({status}):\n{}", self.log());
            }
            let ok = Command::new("docker")
                .args(["-H", &self.host, "info"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if ok.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("dockerd did not answer within 60 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker` command against this daemon, with its own client config (logins stay here).
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.host])
            .env("DOCKER_CONFIG", self.dir.path().join("client"));
        c
    }

    /// Trust `ca` for the registry at `host_port`, the way users do: a file in
    /// `/etc/docker/certs.d/<host:port>/ca.crt` (dockerd reads that path only). Removed on drop.
    pub fn trust_ca(&mut self, host_port: &str, ca: &std::path::Path) {
        let dir = std::path::Path::new("/etc/docker/certs.d").join(host_port);
        std::fs::create_dir_all(&dir).expect("write /etc/docker/certs.d (tests run as root)");
        std::fs::copy(ca, dir.join("ca.crt")).unwrap();
        self.trusted.push(dir);
    }

    /// Run `docker ARGS`; Ok(stdout) or Err(stdout+stderr+the daemon's log tail).
    pub fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        let out = self.docker().args(args).output().expect("run docker");
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        Err(format!(
            "docker {args:?} failed: {}{}\n--- dockerd.log (last lines, newest first) ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n")
        ))
    }

    /// Run `docker ARGS` and panic with diagnostics on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        self.try_docker(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for dir in &self.trusted {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(mut c) = self.child.take() {
            super::terminate(&mut c, Duration::from_secs(20));
        }
        // dockerd stops its containerd; make sure, in case it was killed.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("exec/containerd/containerd.pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        // dockerd leaves the host network namespace bind-mounted in its exec root once a container
        // ran with --network host, even after a clean shutdown; rm cannot remove a mount point.
        let netns = self.dir.path().join("exec/netns/default");
        if netns.exists() {
            let _ = Command::new("umount").arg(&netns).stderr(Stdio::null()).status();
        }
        // vfs layers can hold read-only files; remove as root without failing the test.
        let _ = Command::new("rm").arg("-rf").arg(self.dir.path()).status();
    }
}
