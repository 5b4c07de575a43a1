"""Measurement helpers for benches/run: HTTP and curl calls, load generators, interleaved rounds,
result tables (markdown, JSON) and the comparison against a saved baseline.

Nothing here starts or stops a server; benches/run owns the systems under test.
"""
import hashlib, http.client, json, os, re, resource, statistics, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections import namedtuple
from urllib.parse import quote, urljoin, urlsplit

MIB, MB = 1 << 20, 1e6  # sizes are MiB, rates are MB/s (10^6 bytes), as curl reports them
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
QUIET_LIMIT = [15.0]  # seconds wait_quiet() waits at most; --quick lowers it
System = namedtuple("System", "name kind url")  # kind: plain, proxy, ceiling, direct, single, cluster


class BenchError(Exception):
    """One measurement failed: its row records the error and the run goes on."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, timeout=900, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode:
        raise BenchError(f"{cmd[0]} {cmd[1]} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout


def request(method, url, body=None, headers=None, timeout=120):
    """One small HTTP request, redirects not followed: (status, lower-case headers, body)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body, headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def random_file(path, mib):
    """`mib` MiB of fresh random bytes at `path` (a digest no system has seen); returns the digest."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mib):
            chunk = os.urandom(MIB)
            h.update(chunk)
            f.write(chunk)
    return "sha256:" + h.hexdigest()


def wait_quiet(busy=0.25):
    """Wait until the disk has written back what earlier measurements left dirty, then (at most
    QUIET_LIMIT s) until under `busy` of the CPUs is in use over half a second, so a proxy still
    filling its cache, or the hub still hashing a seed, cannot slow the next measurement. The
    disk matters since W5: the reference never fsyncs a push, so up to --reps x --mib of its data
    was still being written back during W6, which made the cold rows swing by 2x."""
    os.sync()
    def cpu():  # jiffies: (total, idle + iowait)
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(v), v[3] + v[4]
    end = time.monotonic() + QUIET_LIMIT[0]
    while time.monotonic() < end:
        (t0, i0), _, (t1, i1) = cpu(), time.sleep(0.5), cpu()
        if 1 - (i1 - i0) / max(t1 - t0, 1) < busy:
            return


def curl(url, *opts, headers=None, size=None):
    """curl -L URL to /dev/null; returns curl's -w %{json} variables (http_code, time_total, ...).
    Given `size`, anything but a 200 with exactly that many bytes is an error."""
    opts += tuple(a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}"))
    r = json.loads(run(["curl", "-sS", "-L", "-o", "/dev/null", "-w", "%{json}", *opts, url]))
    if size is not None and (r["http_code"] != 200 or r["size_download"] != size):
        raise BenchError(f"GET {url}: HTTP {r['http_code']}, {r['size_download']} of {size} bytes")
    return r


def curl_kept(url, n, size):
    """n GETs of url to /dev/null by one curl on one keep-alive connection; curl's -w %{json} per
    GET. Anything but a 200 with exactly `size` bytes is an error."""
    out = run(["curl", "-sS", "-w", "%{json}\\n", *[a for _ in range(n) for a in ("-o", "/dev/null", url)]])
    rs = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(rs) != n or any(r["http_code"] != 200 or r["size_download"] != size for r in rs):
        raise BenchError(f"GET {url} x{n} on one connection: {[(r['http_code'], r['size_download']) for r in rs]}")
    if any(r.get("num_connects", 0) for r in rs[1:]):
        raise BenchError(f"GET {url} x{n}: curl opened more than one connection")
    return rs


def curl_range(url, start, length, out, headers=None):
    """GET bytes start..start+length-1 with curl -L -r (kept across the CDN redirect) into `out`:
    (curl's -w %{json}, the requested bytes). A server that ignores Range and answers 200 with
    the whole body is not an error (the reference proxy does that); its bytes are cut from it."""
    opts = tuple(a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}"))
    r = json.loads(run(["curl", "-sS", "-L", "-r", f"{start}-{start + length - 1}", "-o", out, "-w", "%{json}",
                        *opts, url]))
    with open(out, "rb") as f:
        if r["http_code"] == 200:
            f.seek(start)
        part = f.read(length)
    if r["http_code"] not in (200, 206) or len(part) != length:
        raise BenchError(f"GET {url} bytes={start}-{start + length - 1}: HTTP {r['http_code']}, "
                         f"{r['size_download']} bytes")
    return r, part


def raise_descriptor_limit():
    """Soft RLIMIT_NOFILE up to the hard limit (wrk needs one per connection); (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Sampler:
    """While the `with` block runs, the peak open descriptors and resident memory of process
    `pid` (None: sample nothing), read from /proc every 50 ms."""

    def __init__(self, pid):
        self.pid, self.fds, self.rss_mib, self.stop = pid, 0, 0.0, threading.Event()

    def sample(self):
        while True:
            try:
                self.fds = max(self.fds, len(os.listdir(f"/proc/{self.pid}/fd")))
                rss = int(open(f"/proc/{self.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024
                self.rss_mib = max(self.rss_mib, rss)
            except (OSError, IndexError, ValueError):
                return
            if self.stop.wait(0.05):
                return

    def __enter__(self):
        if self.pid:
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.pid:
            self.stop.set()
            self.thread.join()


def fetch_digest(url, headers=None):
    """GET url (following redirects) piped through `openssl dgst`: the body's digest, or None."""
    hdrs = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    # A cut-short body shows as a wrong digest; the callers report it, so curl's own message is dropped.
    get = subprocess.Popen(["curl", "-sSfL", *hdrs, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    dgst = subprocess.Popen(["openssl", "dgst", "-sha256", "-r"], stdin=get.stdout, stdout=subprocess.PIPE)
    get.stdout.close()  # so curl sees a closed pipe if openssl dies
    out = dgst.communicate()[0].split()
    return "sha256:" + out[0].decode() if get.wait() == 0 and out else None


def at_once(n, fn):
    """Run fn() n times concurrently; returns (wall seconds, [results])."""
    with ThreadPoolExecutor(n) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda _: fn(), range(n)))
        return time.perf_counter() - started, results


def push_blob(base, repo, path, digest, headers=None):
    """Monolithic upload: POST, then PUT ?digest= with the body (curl --data-binary @file).
    Returns the seconds both requests took."""
    started = time.perf_counter()
    status, resp, body = request("POST", f"{base}/v2/{repo}/blobs/uploads/", headers=headers)
    post = time.perf_counter() - started
    if status != 202:
        raise BenchError(f"POST {base}/v2/{repo}/blobs/uploads/: HTTP {status} {body[:200]!r}")
    loc = urljoin(base + "/", resp["location"])
    put = curl(loc + ("&" if "?" in loc else "?") + "digest=" + digest, "-X", "PUT", "--data-binary", f"@{path}",
               "-H", "Content-Type: application/octet-stream", "-H", "Expect:", headers=headers)
    if put["http_code"] != 201:
        raise BenchError(f"PUT blob to {base}/v2/{repo}: HTTP {put['http_code']}")
    return post + put["time_total"]


def push_manifest(base, repo, tag, manifest):
    status, _, body = request("PUT", f"{base}/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": MANIFEST_V2})
    if status != 201:
        raise BenchError(f"PUT {base}/v2/{repo}/manifests/{tag}: HTTP {status} {body[:200]!r}")


class Hub:
    """The Docker Hub emulator (tests/hub): anonymous pull tokens and its /_hub counters."""

    def __init__(self, url):
        self.url = url.rstrip("/")
        _, headers, _ = request("GET", self.url + "/v2/")
        challenge = dict(re.findall(r'(\w+)="([^"]*)"', headers.get("www-authenticate", "")))
        self.realm, self.service = challenge["realm"], challenge.get("service", "")

    def auth(self, repo):
        url = f"{self.realm}?service={quote(self.service)}&scope={quote(f'repository:{repo}:pull')}"
        status, _, body = request("GET", url)
        if status != 200:
            raise BenchError(f"hub token for {repo}: HTTP {status}")
        return {"Authorization": "Bearer " + json.loads(body)["token"]}

    def reset_stats(self):
        request("POST", self.url + "/_hub/reset-stats")

    def stats(self):
        return json.loads(request("GET", self.url + "/_hub/stats")[2])


def interleave(systems, reps, measure, before_round=None, quiet=False):
    """reps rounds of measure(system) -> {metric: value}. Each round starts one system later, so
    drift on a noisy machine hits every system alike. Returns {system: ([results], [errors])}."""
    out = {s: ([], []) for s in systems}
    for rep in range(reps):
        if before_round:
            before_round()
        for s in systems[rep % len(systems):] + systems[:rep % len(systems)]:
            if quiet:
                wait_quiet()
            try:
                out[s][0].append(measure(s))
            except (BenchError, OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
                out[s][1].append(str(e) or type(e).__name__)
                log(f"  {s.name}: {e}")
    return out


def wrk_get(url, conns, duration, *opts):
    """wrk -t2: req/s, p99 (and p50, to tell a tail from a slow middle), requests that got a 2xx, and errors (non-2xx plus socket errors)."""
    out = run(["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", "-H", f"Accept: {MANIFEST_V2}", *opts, url])
    def percentile(p):
        value, unit = re.search(p + r"%\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]
    non2xx = int(re.search(r"Non-2xx or 3xx responses: (\d+)", out)[1]) if "Non-2xx" in out else 0
    return {"req/s": float(re.search(r"Requests/sec:\s*([\d.]+)", out)[1]),
            "p99 ms": percentile("99"), "p50 ms": percentile("50"),
            "n": int(re.search(r"(\d+) requests in", out)[1]) - non2xx,
            "errs": non2xx + sum(map(int, re.findall(r"(?:connect|read|write|timeout) (\d+)", out)))}


WRK_ROTATE = """-- Each connection takes the next of these paths for each request (benches/run, W10).
local paths = {%s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def wrk_mixed(urls, conns, duration, script):
    """wrk_get over several URLs of one server, each request taking the next path (a Lua script at
    `script`). The timeout is 10 s rather than wrk's 2 s: a slow answer at 1,000 connections shows
    in p99, and only one that never comes counts as an error."""
    paths = [urlsplit(u).path for u in urls]
    Path(script).write_text(WRK_ROTATE % ", ".join(json.dumps(p) for p in paths))
    base = urlsplit(urls[0])
    return wrk_get(f"{base.scheme}://{base.netloc}/", conns, duration, "--timeout", "10s", "-s", script)


def hey_head(url, conns, duration):
    """hey -m HEAD (wrk 4.1 hangs on HEAD responses, wg/wrk#198): the same fields as wrk_get."""
    out = run(["hey", "-z", f"{duration}s", "-c", conns, "-m", "HEAD", "-H", f"Accept: {MANIFEST_V2}", url])
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    failed = out.partition("Error distribution:")[2]  # lines like "  [12]\tHead ...: connection refused"
    p99 = re.search(r"99% in ([\d.]+) secs", out)
    return {"req/s": float(re.search(r"Requests/sec:\s*([\d.]+)", out)[1]),
            "p99 ms": float(p99[1]) * 1e3 if p99 else None, "n": codes.get(200, 0),
            "errs": sum(n for c, n in codes.items() if c != 200) + sum(map(int, re.findall(r"\[(\d+)\]", failed)))}


def num(v):
    return "-" if v is None else f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


class Table:
    """One workload's rows, one per system. A result is {metric: value} and its first metric is the
    main one: median, min, max, `ratio` (median / median of the first row of the same kind, so put
    the reference first) and `vs` (median / median of the row of kind `vs`: ceiling or direct).
    Other metrics show as medians, "errs" as a sum. `better` is "higher" or "lower"; `track` names
    extra metrics that --compare follows besides the ratios."""

    def __init__(self, wid, title, unit, vs=None, better="higher", track=()):
        self.wid, self.title, self.unit, self.vs, self.better, self.track = wid, title, unit, vs, better, track
        self.rows = []

    def add(self, system, results, errors=()):
        main = [next(iter(r.values())) for r in results]
        keys = dict.fromkeys(k for r in results for k in list(r)[1:])
        extra = {k: [r[k] for r in results if r.get(k) is not None] for k in keys}
        self.rows.append({"system": system.name, "kind": system.kind, "samples": results, "errors": list(errors),
                          "median": statistics.median(main) if main else None, "min": min(main, default=None),
                          "max": max(main, default=None),
                          "extra": {k: (sum if k == "errs" else statistics.median)(v) for k, v in extra.items() if v}})

    def per_ceiling(self, metric, name):
        """Add `name` to every other row: its median `metric` over the ceiling row's."""
        ceiling = next((r["extra"].get(metric) for r in self.rows if r["kind"] == "ceiling"), None)
        for r in self.rows:
            if r["kind"] != "ceiling" and ceiling and r["extra"].get(metric) is not None:
                r["extra"][name] = r["extra"][metric] / ceiling

    def add_all(self, measured):
        for system, (results, errors) in measured.items():
            self.add(system, results, errors)

    def json(self):
        for r in self.rows:
            for key, kind in (("ratio", r["kind"]), ("vs", self.vs)):
                base = next((b["median"] for b in self.rows if b["kind"] == kind and b["median"]), None)
                r[key] = r["median"] / base if base and r["median"] is not None else None
        return {"workload": self.wid, "title": self.title, "unit": self.unit, "vs": self.vs,
                "better": self.better, "track": list(self.track), "rows": self.rows}

    def render(self):
        """A markdown table (readable as text too), then any errors."""
        self.json()
        vs = self.vs if any(r["kind"] == self.vs for r in self.rows) else None
        extras = list(dict.fromkeys(k for r in self.rows for k in r["extra"]))
        head = ["system", "median", "min", "max", "vs ref", *[f"vs {vs}"] * bool(vs), *extras, "failed"]
        lines = [head]
        for r in self.rows:
            ratios = [r["ratio"]] + ([r["vs"]] if vs else [])
            lines.append([r["system"], *(num(r[k]) for k in ("median", "min", "max")),
                          *(f"{x:.2f}x" if x is not None else "-" for x in ratios),
                          *(num(r["extra"].get(k)) for k in extras), str(len(r["errors"]))])
        widths = [max(map(len, column)) for column in zip(*lines)]
        fmt = lambda line: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                            for i, (c, w) in enumerate(zip(line, widths))) + " |"
        out = [f"\n**{self.wid} {self.title}** ({self.unit})\n", fmt(lines[0]),
               "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"]
        out += [fmt(line) for line in lines[1:]]
        return "\n".join(out + [f"\n- {r['system']}: {e}" for r in self.rows for e in dict.fromkeys(r["errors"])])


def compare(tables, baseline, threshold):
    """Print, per berth row and metric, the baseline's ratio, today's and the change. A ratio that
    moved more than `threshold` in the bad direction is flagged. Returns the number of regressions.
    The reference rows are left out: they are what berth is measured against, not what changes."""
    old = {(t["workload"], r["system"]): (t, r) for t in baseline["tables"] for r in t["rows"]}
    regressions = 0
    print(f"\n**Compared with the baseline** ({baseline.get('meta', {}).get('date', '?')}; "
          f"flagged: ratio worse by more than {threshold:.0%})\n")
    print("| workload | system | metric | baseline | now | change | |\n|---|---|---|--:|--:|--:|---|")
    for t in tables:
        for r in t["rows"]:
            if not r["system"].startswith("berth"):
                continue
            if (t["workload"], r["system"]) not in old:  # a workload or row added since: shown, never flagged
                print(f"| {t['workload']} | {r['system']} | median | - | {num(r['median'])} | | not in the baseline |")
                continue
            ot, orow = old[(t["workload"], r["system"])]
            metrics = [("vs ref", r.get("ratio"), orow.get("ratio")), (f"vs {t['vs']}", r.get("vs"), orow.get("vs"))]
            metrics += [(k, r["extra"].get(k), orow["extra"].get(k)) for k in t["track"]]
            for name, now, before in metrics:
                if now is not None and before is None and name != "vs ref":
                    print(f"| {t['workload']} | {r['system']} | {name} | - | {num(now)} | | not in the baseline |")
                    continue
                if now is None or before is None or (name == "vs ref" and now == before == 1):
                    continue  # the reference row itself, or a metric one side lacks
                change = now / before - 1 if before else 0.0
                worse = -change if t["better"] == "higher" else change
                flag = "REGRESSION" if worse > threshold else ""
                regressions += bool(flag)
                print(f"| {t['workload']} | {r['system']} | {name} | {num(before)} | {num(now)} | {change:+.1%} | {flag} |")
    return regressions


def hub_fetches(stats, digest):
    """(/v2 blob GETs redirected, CDN GETs served) for one digest, from /_hub/stats."""
    return stats["blob_gets"].get(digest, 0), stats["cdn_gets"].get(digest, 0)
