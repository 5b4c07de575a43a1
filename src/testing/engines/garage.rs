//! A 3-node Garage cluster with replication factor 3, as Garage's own `script/dev-cluster.sh`
//! sets one up: three `garage server`s, each with its own config, ports and directories; `node
//! connect`, `layout assign` and `layout apply`; then a bucket and an imported key allowed on it.
//! Any node answers S3 requests; [`Garage::kill_node`] takes one down (a node failure).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{Process, binary, free_port, wait_for_port};
use crate::config::S3Config;

/// The key imported into every cluster (Garage's format: `GK` + 24 hex digits, a 64-hex secret).
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const BUCKET: &str = "berth";
pub const REGION: &str = "garage";

const INSTALL: &str = "SODIUM_USE_PKG_CONFIG=1 cargo install garage --locked --root ~/.cache/berth/garage/root";

pub struct Garage {
    nodes: Vec<Node>,
    bin: PathBuf,
    // Dropped last, after every node is stopped.
    _dir: tempfile::TempDir,
}

struct Node {
    process: Process,
    config: PathBuf,
    rpc_port: u16,
    s3_port: u16,
}

impl Garage {
    /// Start the cluster and wait until its S3 API serves the bucket. Blocking (a minute at most).
    pub fn start() -> Garage {
        let bin = binary(
            "TEST_GARAGE_BIN",
            &format!(
                "{}/.cache/berth/garage/root/bin/garage",
                std::env::var("HOME").unwrap_or_default()
            ),
            INSTALL,
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let secret: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
        let nodes: Vec<Node> = (0..3).map(|i| start_node(&bin, dir.path(), i, &secret)).collect();
        let mut garage = Garage { nodes, bin, _dir: dir };
        for node in &mut garage.nodes {
            wait_for_port(node.rpc_port, &mut node.process, Duration::from_secs(30));
        }
        let ids: Vec<String> = (0..3)
            .map(|i| text(&garage.cli(i, &["node", "id", "-q"])).trim().to_owned())
            .collect();
        for id in &ids[1..] {
            garage.retry(&["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().expect("an id");
            garage.retry(&["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        garage.retry(&["layout", "apply", "--version", "1"]);
        garage.retry(&["bucket", "create", BUCKET]);
        garage.retry(&["key", "import", "--yes", KEY_ID, SECRET_KEY]);
        garage.retry(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID,
        ]);
        for node in &mut garage.nodes {
            wait_for_port(node.s3_port, &mut node.process, Duration::from_secs(30));
        }
        garage
    }

    /// The S3 endpoint of node `i` (every node serves the whole bucket).
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// `[storage.s3]` for node `i`'s endpoint. The credentials are [`KEY_ID`] and
    /// [`SECRET_KEY`]; tests pass them directly rather than through the environment.
    pub fn s3_config(&self, i: usize) -> S3Config {
        S3Config {
            endpoint: self.endpoint(i),
            bucket: BUCKET.into(),
            region: REGION.into(),
            path_style: true,
            ..S3Config::default()
        }
    }

    /// The PID of node `i`'s server, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].process.pid()
    }

    /// Kill node `i` (SIGKILL), as a crashed host.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].process.kill();
    }

    fn cli(&self, node: usize, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[node].config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running the garage CLI")
    }

    /// Run a CLI command on node 0 until it succeeds (the cluster settles for a few seconds).
    fn retry(&self, args: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(0, args);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} kept failing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn start_node(bin: &Path, root: &Path, i: usize, secret: &str) -> Node {
    let dir = root.join(format!("node{i}"));
    std::fs::create_dir_all(&dir).expect("a node directory");
    let (rpc, s3) = (free_port(), free_port());
    let config = dir.join("garage.toml");
    let text = format!(
        r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 3
metadata_fsync = false
data_fsync = false
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
"#,
        dir = dir.display()
    );
    std::fs::write(&config, text).expect("writing a garage config");
    let log = std::fs::File::create(dir.join("log")).expect("a log file");
    let mut command = Command::new(bin);
    command
        .arg("-c")
        .arg(&config)
        .arg("server")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log);
    Node {
        process: Process::spawn(command, &format!("garage node {i}")),
        config,
        rpc_port: rpc,
        s3_port: s3,
    }
}

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "garage CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A random byte for the cluster's RPC secret (uniqueness, not secrecy, is what tests need).
fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}
