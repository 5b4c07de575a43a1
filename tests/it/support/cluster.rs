//! A berth cluster of real processes on 127.0.0.1, each in its own temporary directory and
//! stopped by PID: PostgreSQL (one database), a 3-node Garage (replication factor 3) behind an
//! nginx that spreads S3 requests over its nodes (so a replica outlives a node), N berth
//! replicas mirroring the project's Docker Hub emulator, and the nginx round robin a user puts in
//! front of them: `docker/cluster/nginx.conf`, rendered with the test's ports, so the tested load
//! balancer is the documented one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::testing::engines::garage::{self, Garage};
use berth::testing::engines::postgres::Postgres;
use tempfile::TempDir;

use super::berth::merge;
use super::{Berth, Hub};

/// The cluster secret every replica shares.
const SECRET: &str = "cluster-test-secret";

pub struct Cluster {
    /// The nginx round robin in front of the replicas: `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT` of [`Cluster::url`] (for image names).
    pub addr: String,
    pub replicas: Vec<Berth>,
    /// The upstream every replica mirrors, seeded with the test images.
    pub hub: Hub,
    /// `hub.seed(0)`'s description of the seeded images.
    pub seed: serde_json::Value,
    // Dropped in this order: the front first, the engines after the replicas.
    front: Nginx,
    s3_front: Nginx,
    garage: Garage,
    postgres: Option<Postgres>,
    _dir: TempDir,
}

impl Cluster {
    /// `replicas` berth replicas with a tag TTL of 5 minutes; `extra` (TOML) is merged into every
    /// replica's config.
    pub fn start(replicas: usize, extra: &str) -> Cluster {
        Cluster::start_with_ttl(replicas, "5m", extra)
    }

    /// [`Cluster::start`] with the upstream's tag TTL `tag_ttl`.
    pub fn start_with_ttl(replicas: usize, tag_ttl: &str, extra: &str) -> Cluster {
        berth::install_crypto_provider();
        let dir = tempfile::Builder::new().prefix("berth-cluster-").tempdir().unwrap();
        // nginx's workers run as an unprivileged user and keep request bodies under it.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // skopeo keeps its token on same-host redirects; a CDN on another host name, as on
        // Docker Hub, serves it (and berth) alike.
        let hub = Hub::start_with(&["--cdn-host", "localhost"]);
        let seed = hub.seed(0);
        let postgres = Postgres::start();
        let garage = Garage::start();
        let nodes: Vec<String> = (0..3).map(|i| garage.endpoint(i)).collect();
        let s3_front = Nginx::start(&dir.path().join("s3-front"), &|port| s3_front_conf(&nodes, port));
        let token_key = dir.path().join("token.key");
        std::fs::write(&token_key, "a token key every replica shares, 32+ bytes long").unwrap();
        let mut base: toml::Table = format!(
            "{upstream}[metadata]\nbackend = \"postgres\"\n\
             [storage]\nbackend = \"s3\"\n\
             [storage.s3]\nendpoint = \"{s3}\"\nbucket = \"{bucket}\"\nregion = \"{region}\"\n\
             [auth]\ntoken_key = \"{key}\"\n\
             [cluster]\nheartbeat = \"1s\"\nlease = \"3s\"\n\
             [server]\ndrain_timeout = \"10s\"\n",
            upstream = super::upstream(&hub.url, Some(tag_ttl)),
            s3 = s3_front.url,
            bucket = garage::BUCKET,
            region = garage::REGION,
            key = token_key.display(),
        )
        .parse()
        .unwrap();
        merge(&mut base, extra.parse().expect("extra TOML parses"));
        let config = base.to_string();
        let db = postgres.url("postgres");
        let env = [
            ("DATABASE_URL", db.as_str()),
            ("CLUSTER_SECRET", SECRET),
            ("AWS_ACCESS_KEY_ID", garage::KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", garage::SECRET_KEY),
        ];
        let replicas: Vec<Berth> = (0..replicas)
            .map(|i| {
                let home = dir.path().join(format!("replica{i}"));
                std::fs::create_dir_all(&home).unwrap();
                let mut b = Berth::configure(&home, &config, &env);
                let url = b.url.clone();
                b.set_env("BERTH_CLUSTER_ADVERTISE", &url);
                b.spawn();
                b
            })
            .collect();
        let addrs: Vec<&str> = replicas.iter().map(|b| b.addr.as_str()).collect();
        let front = Nginx::start(&dir.path().join("front"), &|port| front_conf(&addrs, port));
        Cluster {
            url: front.url.clone(),
            addr: front.url.trim_start_matches("http://").to_owned(),
            replicas,
            hub,
            seed,
            front,
            s3_front,
            garage,
            postgres: Some(postgres),
            _dir: dir,
        }
    }

    /// The URL of `path` (which starts with `/`) through the load balancer.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Replica `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        self.replicas[i].log()
    }

    /// SIGTERM replica `i` and wait until it has drained and exited; its exit status.
    pub fn terminate(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.replicas[i].stop()
    }

    /// Start replica `i` again (after [`Cluster::terminate`], or `replicas[i].kill()`), on the same
    /// port and disk cache, and wait until it listens.
    pub fn restart(&mut self, i: usize) {
        self.replicas[i].spawn();
    }

    /// SIGKILL Garage node `i` (the S3 front sends its requests to the other two).
    pub fn kill_garage_node(&mut self, i: usize) {
        self.garage.kill_node(i);
    }

    /// Stop PostgreSQL (an immediate shutdown: the database is gone for every replica).
    pub fn stop_postgres(&mut self) {
        self.postgres = None;
    }

    /// The load balancer's error log (upstream failures and retries are logged there).
    pub fn front_log(&self) -> String {
        self.front.log()
    }

    /// The error log of the nginx in front of Garage's nodes.
    pub fn s3_front_log(&self) -> String {
        self.s3_front.log()
    }
}

/// `docker/cluster/nginx.conf` with the replicas at `replicas` and listening on 127.0.0.1:`port`.
fn front_conf(replicas: &[&str], port: u16) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/cluster/nginx.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    let (mut servers, mut listens) = (0, 0);
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(rest) = trimmed.strip_prefix("server berth-") {
            // The documented replicas become this cluster's, with the documented parameters.
            let params = rest.split_once(' ').map_or(";", |(_, p)| p);
            if servers == 0 {
                for addr in replicas {
                    out += &format!("{indent}server {addr} {params}\n");
                }
            }
            servers += 1;
        } else if trimmed == "listen 5000;" {
            out += &format!("{indent}listen 127.0.0.1:{port};\n");
            listens += 1;
        } else {
            out += line;
            out.push('\n');
        }
    }
    assert!(
        servers > 0 && listens == 1,
        "{}: no `server berth-N` lines or no `listen 5000;` to render",
        path.display()
    );
    out
}

/// An nginx that spreads S3 requests over Garage's nodes. The Host header is passed on unchanged
/// (SigV4 signs it); request bodies are buffered so a request a dying node dropped can be sent to
/// another node (a part is at most a few MiB); responses stream.
fn s3_front_conf(nodes: &[String], port: u16) -> String {
    let servers: String = nodes
        .iter()
        .map(|n| format!("        server {} max_fails=0;\n", n.trim_start_matches("http://")))
        .collect();
    format!(
        "worker_processes 2;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path body;
    upstream garage {{
{servers}        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        client_body_buffer_size 1m;
        proxy_request_buffering on;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        proxy_set_header Host $http_host;
        proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
        proxy_next_upstream_tries 3;
        proxy_connect_timeout 2s;
        proxy_read_timeout 60s;
        location / {{ proxy_pass http://garage; }}
    }}
}}
"
    )
}

/// nginx as a plain child process: `-p DIR -c DIR/nginx.conf -g 'daemon off; …'`, its PID file
/// and error log in `DIR`; stopped by its PID (SIGTERM: the master stops its workers).
struct Nginx {
    url: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nginx {
    /// Write `conf` (a function of the port it should listen on) and start nginx on a free port.
    fn start(dir: &Path, conf: &dyn Fn(u16) -> String) -> Nginx {
        super::require("nginx");
        std::fs::create_dir_all(dir).unwrap();
        let port = super::free_port();
        let config = dir.join("nginx.conf");
        std::fs::write(&config, conf(port)).unwrap();
        let log = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-g")
            .arg(format!("daemon off; pid {};", dir.join("nginx.pid").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_owned(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nginx.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited ({status}):\n{}", nginx.log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen:\n{}", nginx.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        read("error.log") + &read("stdout.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::terminate(&mut child, Duration::from_secs(5));
        }
    }
}
