"""Building blocks of the Docker Hub emulator (tests/hub/hub.py): shared state (stats,
faults, rate limit), the JWT token issuer, the docker-registry child process, and small
pure helpers (path classification, Range parsing, CDN URL signatures).

Kept apart from hub.py only to keep each file short; nothing else imports it.
"""
import base64
import ctypes
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from http.client import HTTPConnection

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

SERVICE = "registry.docker.io"        # what Docker Hub's challenge names, so clients behave as there
ISSUER = "berth-test-hub"
USERS = {"hubuser": "hubpass"}
RATE_WINDOW = 21600                   # Docker Hub's 6-hour window, only echoed in the headers
STAT_SECTIONS = ("requests", "responses", "blob_gets", "cdn_gets", "cdn_range_gets", "cdn_first_ranged",
                 "manifest_gets", "manifest_heads", "token_requests")
FAULT_KEYS = {"corrupt_blob": str, "latency_ms": float, "bandwidth_mbps": float, "rate_limit": int, "down": bool,
              "drip_bps": float, "retry_after": str}  # expected types
V2_PATH = re.compile(r"/v2/(.+)/(manifests|blobs|tags)/(.+)")  # greedy: repo names may contain "tags"


def classify(path):
    """(kind, repository, reference) for a request path; kind keys the stats counters."""
    if path == "/token":
        return "token", None, None
    if path.startswith("/cdn/"):
        return "cdn", None, path[5:]
    if path in ("/v2", "/v2/"):
        return "base", None, None
    if path == "/v2/_catalog":
        return "catalog", None, None
    m = V2_PATH.fullmatch(path)
    if m:
        name, what, ref = m.groups()
        if what == "blobs" and (ref == "uploads" or ref.startswith("uploads/")):
            return "upload", name, None
        return {"manifests": "manifest", "blobs": "blob", "tags": "tags"}[what], name, ref
    return ("other" if path.startswith("/v2/") else "unknown"), None, None


def parse_range(header, size):
    """A single `bytes=` range as (first, last), None to serve everything, or "unsatisfiable".

    Like most object stores: several ranges or a malformed header are ignored (whole body)."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if not m or m[1] == m[2] == "":
        return None
    if m[1] == "":  # suffix range: the last N bytes
        n = int(m[2])
        return (max(0, size - n), size - 1) if n and size else "unsatisfiable"
    first = int(m[1])
    last = min(int(m[2]), size - 1) if m[2] else size - 1
    if m[2] and int(m[2]) < first:
        return None
    return (first, last) if first < size else "unsatisfiable"


def bearer_expired(authorization, now=None):
    """True if the header carries a Bearer JWT whose exp has passed. distribution accepts tokens
    up to 60 s past exp (its leeway); the hub checks exactly so that --token-ttl is testable."""
    if not authorization.lower().startswith("bearer "):
        return False
    try:
        payload = authorization[7:].strip().split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
    except (IndexError, KeyError, TypeError, ValueError):
        return False  # not ours to judge: the registry will reject it
    return exp < (now or time.time())


def cdn_sign(key, digest, expires):
    return hmac.new(key, f"{digest}\n{expires}".encode(), hashlib.sha256).hexdigest()


class State:
    """Counters, faults and the pull budget, shared by all handler threads."""

    def __init__(self, default_limit):
        self.lock = threading.Lock()
        self.default_limit = default_limit
        self.faults = {}  # replaced, never mutated, so readers need no lock
        self.limit = self.remaining = default_limit
        self.reset_stats()

    def reset_stats(self):
        with self.lock:
            self.stats = {s: Counter() for s in STAT_SECTIONS}

    def bump(self, section, key):
        with self.lock:
            self.stats[section][key] += 1

    def cdn_get(self, digest, ranged):
        """Count a served CDN GET; the first one of a digest since the last reset is also
        counted in cdn_first_ranged when it asked for a Range."""
        with self.lock:
            if ranged and not self.stats["cdn_gets"][digest]:
                self.stats["cdn_first_ranged"][digest] += 1
            self.stats["cdn_gets"][digest] += 1
            if ranged:
                self.stats["cdn_range_gets"][digest] += 1

    def snapshot(self):
        with self.lock:
            out = {s: dict(c) for s, c in self.stats.items()}
            out["rate_limit"] = {"limit": self.limit, "remaining": self.remaining}
        out["faults"] = dict(self.faults)
        return out

    # pull budget: one unit per manifest GET the registry answers 200
    def take_pull(self):
        with self.lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            return True

    def refund_pull(self):
        with self.lock:
            self.remaining = min(self.limit, self.remaining + 1)

    def rate(self):
        with self.lock:
            return self.limit, self.remaining

    def set_faults(self, spec):
        """Merge a fault object; {} clears everything, a falsy value clears that key (except
        rate_limit, where 0 is a limit and null restores the default)."""
        if not isinstance(spec, dict):
            raise ValueError("expected a JSON object")
        unknown = set(spec) - set(FAULT_KEYS)
        if unknown:
            raise ValueError(f"unknown fault keys {sorted(unknown)}; known: {sorted(FAULT_KEYS)}")
        clean = {}
        for k, v in spec.items():
            if v and FAULT_KEYS[k] in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"{k} must be a number")
            if v and k in ("corrupt_blob", "retry_after") and not isinstance(v, str):
                raise ValueError(f"{k} must be a string")
            if k == "rate_limit":
                # A number is the new limit, 0 included (every GET is then refused); null restores
                # the default.
                clean[k] = None if v is None else int(v)
            else:
                clean[k] = v if v else None
        with self.lock:
            if not spec:
                self.faults, self.limit = {}, self.default_limit
                self.remaining = self.limit
                return
            if "rate_limit" in clean:
                limit = clean.pop("rate_limit")
                self.limit = self.default_limit if limit is None else limit
                self.remaining = self.limit
            merged = {**self.faults, **clean}
            self.faults = {k: v for k, v in merged.items() if v}

    def fault_view(self):
        limit, remaining = self.rate()
        return {**self.faults, "rate_limit": limit, "rate_remaining": remaining}


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenIssuer:
    """Signs registry JWTs. The registry trusts DIR/token.crt (rootcertbundle); every token
    carries that same certificate in its x5c header, which is how distribution finds the key."""

    def __init__(self, directory, ttl):
        self.ttl = ttl
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_path = os.path.join(directory, "token.crt")
        with open(self.cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    @staticmethod
    def check(user, password):
        return user in USERS and hmac.compare_digest(USERS[user], password or "")

    def grant(self, user, scopes):
        """Token response for `user` (None = anonymous): requested actions ∩ allowed actions."""
        access = []
        for scope in scopes:  # TYPE:NAME:ACTIONS, NAME may contain ':' (e.g. a port) so split at the ends
            rtype, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if rtype == "repository":
                allowed = {"pull", "push", "delete", "*"} if user else {"pull"}
            else:  # registry:catalog:* and friends: only for the logged-in user
                allowed = {"*"} if user else set()
            access.append({"type": rtype, "name": name,
                           "actions": [a for a in actions.split(",") if a in allowed]})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "iat": now, "nbf": now - 5,
                  "exp": now + self.ttl, "jti": uuid.uuid4().hex, "access": access}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = signing_input + "." + b64url(sig)
        issued = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"token": token, "access_token": token, "expires_in": self.ttl, "issued_at": issued}


REGISTRY_YML = """\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {cert}
"""


def set_parent_death_signal():
    """Runs in the child between fork and exec: the kernel sends it SIGTERM when the hub dies,
    even by SIGKILL, so a crashed test never leaves a registry behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


class Registry:
    """The docker-registry child: config, start, readiness wait and stop."""

    def __init__(self, directory, hub_url, tokens):
        self.dir, self.hub_url, self.tokens = directory, hub_url, tokens
        self.storage = os.path.join(directory, "registry")
        self.proc, self.port = None, None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, log, attempts=3):
        os.makedirs(self.storage, exist_ok=True)
        for attempt in range(attempts):
            # The port is free now but may be taken before the registry binds it; retry then.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            config = os.path.join(self.dir, "registry.yml")
            with open(config, "w") as f:  # JSON strings are valid YAML scalars: safe quoting
                f.write(REGISTRY_YML.format(
                    storage=json.dumps(self.storage), port=self.port, secret=secrets.token_hex(16),
                    realm=json.dumps(self.hub_url + "/token"), service=SERVICE, issuer=ISSUER,
                    cert=json.dumps(self.tokens.cert_path)))
            with open(os.path.join(self.dir, "registry.log"), "ab") as logf:
                self.proc = subprocess.Popen(["docker-registry", "serve", config], stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=subprocess.STDOUT,
                                             preexec_fn=set_parent_death_signal)
            if self.wait_ready(30):
                return
            log(f"docker-registry attempt {attempt + 1} failed (exit {self.proc.poll()})")
            self.stop()
        raise RuntimeError(f"docker-registry did not start; see {self.dir}/registry.log")

    def wait_ready(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            conn = HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/v2/")
                if conn.getresponse().status == 401:  # token auth is on: it is really ours
                    return True
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        return False

    def exited(self):
        return self.proc is not None and self.proc.poll() is not None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_json_atomically(path, obj):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.write("\n")
    os.replace(tmp, path)  # readers see either no file or the whole file


def remove_if_ours(path):
    """Remove hub.json on exit unless a newer hub in the same DIR has already replaced it."""
    try:
        with open(path) as f:
            if json.load(f).get("pid") == os.getpid():
                os.remove(path)
    except (OSError, ValueError):
        pass


def watch_stdin():
    """--exit-on-stdin-eof: a test that dies (even by SIGKILL) closes our stdin; follow it."""
    while sys.stdin.buffer.read1(4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
