"""The cluster rows of benches/run (C1-C3): three berth replicas on PostgreSQL 15 and a 3-node
Garage cluster with replication factor 3, set up as src/testing/engines/{postgres,garage}.rs do
for the tests, in the bench's temp dir on 127.0.0.1, every process started through benches/run's
Procs (so stopped by its PID at the end).

  C1 the W7 herd spread over the 3 replicas, against single-node berth with the same clients
  C2 warm blob GET through an S3-backed replica (its disk cache), against nginx
  C3 cold blob GET through a replica (in the bucket, not in its cache), against Garage direct
"""
import os, pwd, shutil, socket, subprocess, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import (MB, BenchError, System, Table, curl, hub_fetches, interleave, log, push_blob, random_file, run,
                      wait_quiet)

GARAGE = Path(os.environ.get("GARAGE_BIN", Path.home() / ".cache/berth/garage/root/bin/garage"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# As in src/testing/engines/garage.rs: Garage's key format is GK + 24 hex digits and a 64-hex secret.
KEY_ID, SECRET = "GK0123456789abcdef01234567", "0123456789abcdef" * 4
BUCKET, REGION, REPLICAS = "berth", "garage", 3
PROFILED = {"C1": 0, "C2": 0, "C3": 1}  # the replica `benches/run --profile` records in each workload


def missing_engines():
    """What the cluster rows need and this machine lacks, each with where it comes from."""
    out = []
    if not GARAGE.exists():
        out.append(f"Garage is not at {GARAGE} ($GARAGE_BIN, default ~/.cache/berth/garage/root/bin/garage): "
                   "tests/run builds it there (SODIUM_USE_PKG_CONFIG=1 cargo install garage --locked "
                   "--root ~/.cache/berth/garage/root)")
    if not (PG_BIN / "postgres").exists():
        out.append(f"PostgreSQL 15 is not in {PG_BIN}: apt-get install postgresql-15")
    return out


def wait_port(name, p, port, limit=60):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if p.poll() is not None:
            raise BenchError(f"{name} exited with {p.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise BenchError(f"{name} did not listen on port {port} within {limit} s")


def retry(cmd, limit=60):
    """Run cmd until it succeeds: a new Garage cluster takes a few seconds to settle."""
    end = time.monotonic() + limit
    while True:
        try:
            return run(cmd)
        except BenchError:
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


class Cluster:
    """PostgreSQL, Garage and the replicas; `urls` are the replicas', `endpoints` Garage's S3 APIs
    (replica i uses endpoint i)."""

    def __init__(self, work, procs, free_port, berth_bin, hub_url):
        self.work, self.procs, self.free_port = work, procs, free_port
        log("cluster: PostgreSQL 15, a 3-node Garage (RF 3), 3 berth replicas")
        db = self.start_postgres()
        self.endpoints = self.start_garage()
        (work / "token.key").write_bytes(os.urandom(32))
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG" and not k.startswith("BERTH_")}
        env.update(NO_COLOR="1", DATABASE_URL=db, CLUSTER_SECRET=os.urandom(16).hex(),
                   S3_KEY_ID=KEY_ID, S3_SECRET=SECRET)
        self.urls, self.replicas = [], []
        for i, endpoint in enumerate(self.endpoints):
            port, root = free_port(), work / f"replica{i}"
            url = f"http://127.0.0.1:{port}"
            (work / f"replica{i}.toml").write_text(
                f'[server]\nlisten = "127.0.0.1:{port}"\n[log]\nlevel = "info"\n'
                f'[storage]\nroot = "{root}"\nbackend = "s3"\n'
                f'[storage.s3]\nendpoint = "{endpoint}"\nbucket = "{BUCKET}"\nregion = "{REGION}"\n'
                f'path_style = true\ncache_dir = "{root}/cache"\n'
                # Named here, never BERTH_*: berth reads those as config overrides.
                'access_key_id_env = "S3_KEY_ID"\nsecret_access_key_env = "S3_SECRET"\n'
                f'[metadata]\nbackend = "postgres"\n[cluster]\nadvertise = "{url}"\n'
                f'[auth]\ntoken_key = "{work}/token.key"\n'
                # As single-node berth in benches/run: bench/* takes pushes, the hub is the upstream.
                '[private]\nnamespaces = ["bench/*"]\n'
                f'[[upstream]]\nname = "docker.io"\nurl = "{hub_url}"\ntag_ttl = "5m"\ntimeout = "300s"\n'
                'requests_per_second = 1000\nburst = 2000\n')
            p = procs.spawn(f"replica{i}", [berth_bin, "serve", "--config", work / f"replica{i}.toml"], env=env)
            procs.wait_http(f"replica{i}", p, url + "/v2/")
            self.urls.append(url)
            self.replicas.append(p)

    def start_postgres(self):
        """initdb and the postmaster as the `postgres` user when we are root (PostgreSQL refuses
        root); fsync off, since nothing here needs durability. Returns the database URL."""
        d = self.work / "pg"
        d.mkdir()
        as_pg = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise BenchError("no `postgres` user: apt-get install postgresql-15 creates it") from None
            os.chown(d, user.pw_uid, user.pw_gid)
            as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"]
        run(as_pg + [PG_BIN / "initdb", "--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C",
                     "--no-sync", "-D", d / "data"], cwd=d)
        port = self.free_port()
        # setpriv execs, so the PID Procs stops is the postmaster's.
        p = self.procs.spawn("postgres", as_pg + [
            PG_BIN / "postgres", "-D", d / "data", "-p", port, "-k", d, "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200"], cwd=d)
        pid_file, end = d / "data/postmaster.pid", time.monotonic() + 60
        # Line 8 of postmaster.pid reads "ready" once it accepts connections.
        while not (pid_file.exists() and [l.strip() for l in pid_file.read_text().splitlines()[7:8]] == ["ready"]):
            if p.poll() is not None or time.monotonic() > end:
                raise BenchError(f"PostgreSQL did not start; see {self.work}/postgres.log")
            time.sleep(0.1)
        return f"postgres://postgres@127.0.0.1:{port}/postgres"

    def start_garage(self):
        """Three `garage server`s, then node connect, layout assign/apply, a bucket and an imported
        key allowed on it (Garage's own script/dev-cluster.sh does the same). Returns the S3
        endpoints."""
        secret, nodes = os.urandom(32).hex(), []
        for i in range(REPLICAS):
            d = self.work / f"garage{i}"
            d.mkdir()
            rpc, s3 = self.free_port(), self.free_port()
            (d / "garage.toml").write_text(
                f'metadata_dir = "{d}/meta"\ndata_dir = "{d}/data"\ndb_engine = "sqlite"\nreplication_factor = 3\n'
                f'metadata_fsync = false\ndata_fsync = false\nrpc_bind_addr = "127.0.0.1:{rpc}"\n'
                f'rpc_public_addr = "127.0.0.1:{rpc}"\nrpc_secret = "{secret}"\n'
                f'[s3_api]\ns3_region = "{REGION}"\napi_bind_addr = "127.0.0.1:{s3}"\n')
            p = self.procs.spawn(f"garage{i}", [GARAGE, "-c", d / "garage.toml", "server"],
                                 env=dict(os.environ, RUST_LOG="warn"))
            nodes.append((p, d / "garage.toml", rpc, s3))
        for i, (p, _, rpc, _) in enumerate(nodes):
            wait_port(f"garage{i}", p, rpc)
        cli = lambda conf, *a: [GARAGE, "-c", conf, *a]
        ids = [retry(cli(conf, "node", "id", "-q")).strip() for _, conf, _, _ in nodes]
        first = nodes[0][1]
        for node_id in ids[1:]:
            retry(cli(first, "node", "connect", node_id))
        for node_id in ids:
            retry(cli(first, "layout", "assign", "-z", "dc1", "-c", "1G", node_id.split("@")[0]))
        for cmd in (["layout", "apply", "--version", "1"], ["bucket", "create", BUCKET],
                    ["key", "import", "--yes", KEY_ID, SECRET],
                    ["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID]):
            retry(cli(first, *cmd))
        for i, (p, _, _, s3) in enumerate(nodes):
            wait_port(f"garage{i}", p, s3)
        return [f"http://127.0.0.1:{s3}" for *_, s3 in nodes]

    def object_url(self, i, digest):
        """Where Garage node i serves blob `digest` (berth's key layout, src/store/s3/mod.rs)."""
        hex_ = digest.split(":")[1]
        return f"{self.endpoints[i]}/{BUCKET}/blobs/sha256/{hex_[:2]}/{hex_}"


def fetch(url):
    """GET url through curl | openssl dgst: (the body's digest or None, seconds to the first byte)."""
    get = subprocess.Popen(["curl", "-sSfL", "-o", "-", "-w", "%{stderr}%{time_starttransfer}", url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dgst = subprocess.Popen(["openssl", "dgst", "-sha256", "-r"], stdin=get.stdout, stdout=subprocess.PIPE)
    get.stdout.close()
    out, ttfb = dgst.communicate()[0].split(), get.stderr.read().decode().split()
    ok = get.wait() == 0 and out
    return ("sha256:" + out[0].decode() if ok else None), float(ttfb[-1]) if ttfb else None


def c1(bench):
    """--herd clients at once GET one cold blob through single-node berth (all of them) and through
    the cluster (client i on replica i mod 3). Counts the hub's fetches of it (the goal is 1 for the
    whole cluster, issue 14); `max TTFB s` shows whether clients on replicas that do not own the
    fill got bytes before it ended."""
    n, cluster, bad = bench.args.herd, bench.cluster, {}
    single = System("berth proxy (1 node)", "single", bench.proxy[1].url)
    spread = System(f"berth cluster ({REPLICAS} replicas)", "cluster", cluster.urls[0])
    bases = {single: [single.url], spread: cluster.urls}

    def measure(s):
        digest = bench.seed_blob("library/herd", f"c1-{s.kind}")
        urls = [f"{bases[s][i % len(bases[s])]}/v2/library/herd/blobs/{digest}" for i in range(n)]
        wait_quiet()
        bench.hub.reset_stats()
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            got = list(pool.map(fetch, urls))
        wall = time.perf_counter() - started
        wait_quiet()  # also count fetches made after the clients were answered
        blob_gets, cdn_gets = hub_fetches(bench.hub.stats(), digest)
        ok = sum(d == digest for d, _ in got)
        if ok < n:
            bad.setdefault(s, []).append(f"{n - ok} of {n} GETs failed or had the wrong digest")
        return {"wall s": wall, "hub blob GETs": blob_gets, "hub CDN GETs": cdn_gets,
                "max TTFB s": max((t for _, t in got if t is not None), default=None), "ok": ok}
    t = Table("C1", f"{n} GETs at once of one cold {bench.args.mib} MiB blob, over {REPLICAS} replicas",
              "wall seconds incl. each client's sha256, lower is better; vs single: single-node berth, same clients",
              vs="single", better="lower", track=("hub blob GETs",))
    measured = interleave([single, spread], bench.args.reps, measure)
    for s, errors in bad.items():
        measured[s][1].extend(errors)
    t.add_all(measured)
    return t


def c2(bench):
    """A blob pushed to replica 0, read once so it sits in that replica's disk cache, then GET as
    W1 does (4 in a row per sample) against nginx serving a copy of the same file."""
    cluster, size = bench.cluster, bench.size
    path = bench.work / "c2-blob"
    digest = random_file(path, bench.args.mib)
    push_blob(cluster.urls[0], "bench/c2", path, digest)
    url = f"{cluster.urls[0]}/v2/bench/c2/blobs/{digest}"
    if fetch(url)[0] != digest:
        raise BenchError(f"GET {url} did not return the pushed blob")
    cached, end = bench.work / "replica0/cache/blobs" / digest.replace(":", "-"), time.monotonic() + 60
    while not cached.exists():  # a miss is served from the bucket while a background fill copies it
        if time.monotonic() > end:
            raise BenchError("the blob is not in replica 0's disk cache 60 s after a GET")
        time.sleep(0.1)
    shutil.copyfile(path, bench.www / "c2-blob")
    urls = {System("nginx", "ceiling", bench.ceiling.url): f"{bench.ceiling.url}/c2-blob",
            System("berth s3 replica (cached)", "cluster", cluster.urls[0]): url}
    gets = 1 if bench.args.quick else 4
    t = Table("C2", f"warm blob GET through an S3-backed replica, 1 stream ({gets} in a row per sample)",
              "MB/s, higher is better; served from the replica's disk cache", vs="ceiling")
    t.add_all(interleave(list(urls), bench.args.reps, lambda s: {"MB/s": gets * size / MB / sum(
        curl(urls[s], size=size)["time_total"] for _ in range(gets))}))
    return t


def c3(bench):
    """Each sample pushes a fresh blob through replica 0, so it is in the bucket; then either
    replica 1 (which has never held it) GETs it from Garage node 1 while serving it, or curl
    GETs the object from node 1 directly, signed with SigV4."""
    cluster, size, path = bench.cluster, bench.size, bench.work / "c3-blob"
    direct = System("garage direct", "direct", cluster.endpoints[1])
    replica = System("berth s3 replica (cold)", "cluster", cluster.urls[1])

    def measure(s):
        digest = random_file(path, bench.args.mib)
        push_blob(cluster.urls[0], "bench/c3", path, digest)
        wait_quiet()
        if s is direct:
            # Garage answers 400 without x-amz-content-sha256, which curl does not send by itself.
            r = curl(cluster.object_url(1, digest), "--aws-sigv4", f"aws:amz:{REGION}:s3", "--user",
                     f"{KEY_ID}:{SECRET}", headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}, size=size)
        else:
            r = curl(f"{s.url}/v2/bench/c3/blobs/{digest}", size=size)
        return {"seconds": r["time_total"], "TTFB s": r["time_starttransfer"], "MB/s": r["speed_download"] / MB}
    t = Table("C3", f"cold {bench.args.mib} MiB blob GET from S3 through a replica",
              "seconds, lower is better; direct = curl --aws-sigv4 from the same Garage node", vs="direct",
              better="lower")
    t.add_all(interleave([direct, replica], bench.args.reps, measure))
    return t
