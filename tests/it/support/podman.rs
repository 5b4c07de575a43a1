//! podman configured, as a user would, with a `registries.conf` mirror for docker.io. Storage is
//! private to the test (vfs), and other registry traffic goes to a dead proxy so a failing mirror
//! cannot fall back to the real Docker Hub.

use std::process::Command;

use tempfile::TempDir;

pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// podman pulling docker.io through the mirror at `mirror` (`HOST:PORT`, plain HTTP).
    pub fn with_mirror(mirror: &str) -> Podman {
        super::require("podman");
        let dir = tempfile::Builder::new()
            .prefix("berth-podman-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let registries = format!(
            "unqualified-search-registries = [\"docker.io\"]\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
        );
        std::fs::write(d.join("registries.conf"), registries).unwrap();
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/graph\"\n",
            d.display()
        );
        std::fs::write(d.join("storage.conf"), storage).unwrap();
        Podman { dir }
    }

    pub fn command(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
        c
    }

    /// Run `podman ARGS` and return stdout, panicking with its output on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        super::run(self.command().args(args))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["system", "reset", "--force"]).output();
        let _ = Command::new("rm").arg("-rf").arg(self.dir.path()).status();
    }
}
