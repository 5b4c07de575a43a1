#!/usr/bin/env python3
"""Docker Hub emulator used by berth's integration tests (test support, not shipped).

    python3 tests/hub/hub.py --dir DIR [--port 0] [--cdn-host 127.0.0.1] [--token-ttl 300]

One process that runs Debian's reference registry (`docker-registry serve`, distribution
2.8) as a child on a private loopback port and puts a Docker Hub-like front door before it:
/token (JWT token service), /v2/ (streaming reverse proxy; blob GETs become 307 redirects
to /cdn/), /cdn/ (presigned-URL style blob downloads), rate-limit headers and 429s, and a
control API under /_hub/ for stats and fault injection. See tests/hub/README.md.

When ready it writes DIR/hub.json = {"url": ..., "pid": ...} and prints the same JSON as
one line on stdout. After that it never writes to stdout/stderr (a test that stops
reading its pipes must not block us): everything goes to DIR/hub.log and DIR/registry.log.
"""
import argparse
import base64
import binascii
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import traceback
from http.client import HTTPConnection, HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

sys.dont_write_bytecode = True  # no __pycache__ in the source tree when tests run us
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # hubparts.py, even under python3 -I
from hubparts import (RATE_WINDOW, SERVICE, Registry, State, TokenIssuer,  # noqa: E402
                      bearer_expired, cdn_sign, classify, parse_range, remove_if_ours,
                      watch_stdin, write_json_atomically)

BLOCK = 1 << 20  # streaming block size for bodies
# Headers that describe one hop only; forwarding them would corrupt the framing.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "expect", "proxy-authorization", "proxy-authenticate"}
RATE_MSG = ("You have reached your pull rate limit. You may increase the limit by authenticating "
            "and upgrading: https://www.docker.com/increase-rate-limit")
S3_AUTH_MSG = ("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature "
               "query string parameter or the Authorization header should be specified")


class Hub(ThreadingHTTPServer):
    daemon_threads = True       # idle keep-alive connections must not block exit
    request_queue_size = 256    # tests open many connections at once

    def __init__(self, args):
        super().__init__(("127.0.0.1", args.port), Handler)  # port 0: the kernel picks one
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn_base = f"http://{args.cdn_host}:{self.port}"
        self.dir, self.cdn_ttl = args.dir, args.cdn_ttl
        self.cdn_key = secrets.token_bytes(32)
        self.log_file = open(os.path.join(self.dir, "hub.log"), "a", buffering=1)
        self.log_lock = threading.Lock()
        self.state = State(args.rate_limit)
        self.tokens = TokenIssuer(self.dir, args.token_ttl)
        self.registry = Registry(self.dir, self.url, self.tokens)

    def log(self, text):
        # Escape what is not printable: TLS probes (clients trying https first) log raw bytes.
        lines = ["".join(c if c.isprintable() else repr(c)[1:-1] for c in ln) for ln in text.rstrip("\n").split("\n")]
        with self.log_lock:
            self.log_file.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + "\n  ".join(lines) + "\n")

    def blob_file(self, digest):
        algo, _, hexd = digest.partition(":")
        return os.path.join(self.registry.storage, "docker/registry/v2/blobs", algo, hexd[:2], hexd, "data")

    def service_actions(self):
        # serve_forever calls this about twice a second: without its registry the hub is useless,
        # so exit (tests then see a dead process instead of a stream of 502s).
        if self.registry.exited():
            self.log(f"docker-registry exited ({self.registry.proc.returncode}), see registry.log; exiting")
            raise SystemExit(1)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):  # client went away: routine, not a bug
            self.log(f"{client_address[0]}:{client_address[1]} disconnected: {exc!r}")
        else:
            self.log("handler error:\n" + traceback.format_exc())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive; every response is length-delimited or chunked
    # TCP_NODELAY, as Docker Hub's and its CDN's servers have it. Without it a response's body,
    # written after its headers, waited on a kept-alive connection for the client's delayed ACK
    # (40 ms on Linux): the bimodal 10 ms / 55 ms TTFBs in BENCHMARKS.md, W6 and W9.
    disable_nagle_algorithm = True
    server_version = "berth-test-hub"
    sys_version = ""
    timeout = 300                   # drop connections idle this long
    kind = "unknown"

    def log_message(self, fmt, *args):
        self.server.log(f"{self.client_address[0]}:{self.client_address[1]} " + fmt % args)

    def dispatch(self):
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.body_pending = self.has_body()
        if url.path.startswith("/_hub/"):
            self.kind = "control"
            return self.control(url.path)
        self.kind, name, ref = classify(url.path)
        st, faults = self.server.state, self.server.state.faults
        st.bump("requests", f"{self.command} {self.kind}")
        if faults.get("latency_ms"):
            time.sleep(faults["latency_ms"] / 1000)
        if self.kind == "unknown":
            return self.send(404, b"404 page not found\n", "text/plain; charset=utf-8")
        if faults.get("down"):
            return self.oci_error(503, "UNAVAILABLE", "service unavailable (emulated outage)")
        if self.kind == "token":
            return self.token()
        if self.kind == "cdn":
            return self.cdn(ref)
        return self.proxy(name, ref)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch

    # --- sending -------------------------------------------------------------------------
    def head(self, code, headers):
        """Status line + headers; counts the response (control traffic is not counted)."""
        if self.kind != "control":
            self.server.state.bump("responses", f"{self.command} {self.kind} {code}")
        if self.body_pending:
            # We answer without reading the request body: the stream is out of sync, so close.
            self.close_connection = True
            headers = [*headers, ("Connection", "close")]
        self.log_request(code)
        self.send_response_only(code)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def send(self, code, body=b"", ctype="application/json", headers=()):
        self.head(code, [("Content-Type", ctype), ("Content-Length", str(len(body))), *headers])
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, code, obj, headers=()):
        self.send(code, json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n", headers=headers)

    def oci_error(self, code, err, message, headers=()):
        self.send_json(code, {"errors": [{"code": err, "message": message, "detail": None}]}, headers)

    def s3_error(self, code, err, message):
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{err}</Code>'
                f'<Message>{message}</Message><RequestId>{secrets.token_hex(8)}</RequestId></Error>\n')
        self.send(code, body.encode(), "application/xml")

    def block_size(self):
        mbps = self.server.state.faults.get("bandwidth_mbps")
        return max(1024, min(BLOCK, int(mbps * 6250))) if mbps else BLOCK  # ~50 ms per block if throttled

    def stream(self, blocks, chunked=False):
        """Write body blocks, pacing them when the bandwidth fault is set, or a byte at a time
        when the drip fault is (a response started under it drips to its end)."""
        start, sent = time.monotonic(), 0
        drip = self.server.state.faults.get("drip_bps")
        for block in blocks:
            if not block:
                continue
            if drip and not chunked:
                for i in range(len(block)):
                    self.wfile.write(block[i:i + 1])
                    self.wfile.flush()
                    time.sleep(1 / drip)
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            sent += len(block)
            mbps = self.server.state.faults.get("bandwidth_mbps")
            if mbps:
                ahead = sent * 8 / (mbps * 1e6) - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    # --- request bodies --------------------------------------------------------------------
    def has_body(self):
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower() or \
            self.headers.get("Content-Length", "0").strip() not in ("", "0")

    def read_n(self, n):
        while n > 0:
            block = self.rfile.read(min(n, BLOCK))
            if not block:
                raise ConnectionResetError("client closed the connection in the middle of a body")
            n -= len(block)
            yield block

    def read_chunked(self):
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            yield from self.read_n(size)
            self.rfile.readline(1024)  # CRLF after the chunk
        while self.rfile.readline(8192).strip():  # trailer section up to the empty line
            pass

    def body_blocks(self):
        """The request body as a generator of blocks (never held whole), or None."""
        if not self.body_pending:
            return None
        self.body_pending = False  # whoever takes the generator consumes the body
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked()
        return self.read_n(int(self.headers["Content-Length"]))

    def body_bytes(self):  # only for small bodies (control API, token form)
        return b"".join(self.body_blocks() or [])

    # --- /_hub/ control API ------------------------------------------------------------
    def control(self, path):
        hub, st, route = self.server, self.server.state, (self.command, path)
        if route == ("GET", "/_hub/stats"):
            return self.send_json(200, st.snapshot())
        if route == ("POST", "/_hub/reset-stats"):
            st.reset_stats()
            return self.send_json(200, {})
        if route in (("GET", "/_hub/fault"), ("POST", "/_hub/fault")):
            if self.command == "POST":
                try:
                    st.set_faults(json.loads(self.body_bytes() or b"{}"))
                except (ValueError, TypeError) as e:
                    return self.send_json(400, {"error": str(e)})
            return self.send_json(200, st.fault_view())
        if route == ("GET", "/_hub/info"):
            return self.send_json(200, {"url": hub.url, "cdn": hub.cdn_base, "dir": hub.dir, "pid": os.getpid(),
                                        "registry": hub.registry.url, "registry_pid": hub.registry.proc.pid})
        self.send_json(404, {"error": f"no control endpoint {self.command} {path}"})

    # --- /token --------------------------------------------------------------------------
    def token(self):
        if self.command not in ("GET", "POST"):
            return self.send_json(405, {"error": "method not allowed"})
        params = {k: v[:] for k, v in self.query.items()}
        if self.command == "POST":  # OAuth2 form: grant_type=password&username=..&password=..&scope=..
            for k, v in parse_qs(self.body_bytes().decode("utf-8", "replace")).items():
                params.setdefault(k, []).extend(v)
        user, password = self.tokens_credentials(params)
        if user is not None and not self.server.tokens.check(user, password):
            return self.send_json(401, {"details": "incorrect username or password"})
        scopes = " ".join(params.get("scope", [])).split()  # a scope param may hold several
        body = self.server.tokens.grant(user, scopes)
        who = user or "anonymous"
        for scope in scopes or [""]:
            self.server.state.bump("token_requests", f"{who} {scope}".rstrip())
        self.send_json(200, body)

    def tokens_credentials(self, params):
        """(user, password) from Basic auth or the OAuth2 form; (None, None) when anonymous."""
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
                return user, password
            except (binascii.Error, UnicodeDecodeError):
                return "", ""  # garbage credentials are wrong credentials
        if "username" in params or "password" in params:
            return params.get("username", [""])[0], params.get("password", [""])[0]
        return None, None

    # --- /v2/ proxy --------------------------------------------------------------------
    def rate_headers(self):
        limit, remaining = self.server.state.rate()
        return [("ratelimit-limit", f"{limit};w={RATE_WINDOW}"),
                ("ratelimit-remaining", f"{remaining};w={RATE_WINDOW}"),
                ("docker-ratelimit-source", self.client_address[0])]

    def proxy(self, name, ref):
        hub, st = self.server, self.server.state
        is_manifest, is_get = self.kind == "manifest", self.command == "GET"
        if bearer_expired(self.headers.get("Authorization", "")):
            scope = f'repository:{name}:{"pull" if self.command in ("GET", "HEAD") else "pull,push"}'
            challenge = f'Bearer realm="{hub.url}/token",service="{SERVICE}"' + \
                (f',scope="{scope}",error="invalid_token"' if name else ',error="invalid_token"')
            return self.oci_error(401, "UNAUTHORIZED", "authentication required (token expired)",
                                  [("WWW-Authenticate", challenge)])
        # Take the pull from the budget *before* proxying so that concurrent GETs at N=1 cannot
        # both succeed; give it back below if the registry does not answer 200.
        charged = False
        if is_manifest and is_get and "Authorization" in self.headers:
            if not st.take_pull():
                retry_after = st.faults.get("retry_after") or "60"
                return self.oci_error(429, "TOOMANYREQUESTS", RATE_MSG,
                                      [*self.rate_headers(), ("Retry-After", retry_after)])
            charged = True
        headers = HTTPMessage()  # unlike a dict it keeps repeated headers (Accept!) in order
        for k, v in self.headers.items():
            if k.lower() not in HOP_BY_HOP:
                headers[k] = v  # Host included: the registry builds upload Locations from it
        conn = HTTPConnection("127.0.0.1", hub.registry.port, timeout=600)
        try:
            try:
                # A generator body without Content-Length is re-chunked by http.client.
                conn.request(self.command, self.path, body=self.body_blocks(), headers=headers)
                resp = conn.getresponse()
            except OSError as e:
                if charged:
                    st.refund_pull()
                self.close_connection = True
                return self.oci_error(502, "UNAVAILABLE", f"hub emulator: registry unreachable: {e}")
            ok = resp.status == 200
            if is_manifest and is_get:
                if charged and not ok:
                    st.refund_pull()
                elif ok and not charged:
                    st.take_pull()
            if ok and is_manifest:
                st.bump("manifest_gets" if is_get else "manifest_heads", f"{name}{'@' if ':' in ref else ':'}{ref}")
            if self.kind == "blob" and is_get and resp.status in (200, 206):
                st.bump("blob_gets", ref)
                expires = int(time.time()) + hub.cdn_ttl
                location = f"{hub.cdn_base}/cdn/{ref}?expires={expires}&sig={cdn_sign(hub.cdn_key, ref, expires)}"
                # Not reading the registry's body: conn.close() below drops it.
                return self.send(307, headers=[("Location", location)], ctype="text/plain")
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            if is_manifest:
                out += self.rate_headers()  # Docker Hub sends them on HEADs too (the free way to check)
            has_body = self.command != "HEAD" and resp.status not in (204, 304) and resp.status >= 200
            chunked = has_body and resp.getheader("Content-Length") is None
            if chunked:
                out.append(("Transfer-Encoding", "chunked"))
            self.head(resp.status, out)
            if has_body:
                self.stream(iter(lambda: resp.read(self.block_size()), b""), chunked)
        finally:
            conn.close()

    # --- /cdn/ ------------------------------------------------------------------------------
    def cdn(self, digest):
        hub, st = self.server, self.server.state
        if self.command not in ("GET", "HEAD"):
            return self.s3_error(405, "MethodNotAllowed", "The specified method is not allowed")
        if "Authorization" in self.headers:  # a presigned URL plus a header is an S3 error
            return self.s3_error(400, "InvalidArgument", S3_AUTH_MSG)
        expires = self.query.get("expires", [""])[0]
        sig = self.query.get("sig", [""])[0]
        if not (expires.isdigit() and int(expires) >= time.time()
                and secrets.compare_digest(sig, cdn_sign(hub.cdn_key, digest, expires))):
            return self.s3_error(403, "AccessDenied", "Request has expired or the signature does not match")
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest or ""):
            return self.s3_error(404, "NoSuchKey", "The specified key does not exist.")
        try:
            f = open(hub.blob_file(digest), "rb")
        except FileNotFoundError:
            return self.s3_error(404, "NoSuchKey", "The specified key does not exist.")
        with f:
            size = os.fstat(f.fileno()).st_size
            span = parse_range(self.headers.get("Range"), size)
            if span == "unsatisfiable":
                return self.send(416, headers=[("Content-Range", f"bytes */{size}")], ctype="application/xml")
            first, last = span or (0, size - 1)
            headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(last - first + 1)),
                       ("Accept-Ranges", "bytes"), ("ETag", f'"{digest}"'),
                       ("Cache-Control", "public, max-age=14400")]
            if span:
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
            if self.command == "GET":
                st.cdn_get(digest, bool(span))
            self.head(206 if span else 200, headers)
            if self.command == "GET":
                flip = size // 2 if st.faults.get("corrupt_blob") == digest else -1
                self.stream(self.file_blocks(f, first, last, flip))

    def file_blocks(self, f, first, last, flip):
        """Bytes first..last of f, with the byte at absolute offset `flip` inverted (if in range)."""
        f.seek(first)
        pos = first
        while pos <= last:
            block = f.read(min(self.block_size(), last + 1 - pos))
            if not block:
                return
            if pos <= flip < pos + len(block):
                block = bytearray(block)
                block[flip - pos] ^= 0xFF
            yield bytes(block)
            pos += len(block)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="state directory: registry storage, config, cert, logs, hub.json")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: pick a free one)")
    ap.add_argument("--cdn-host", default="127.0.0.1",
                    help="host name in CDN redirect URLs (default 127.0.0.1; 'localhost' makes the redirect "
                         "cross-host, as on Docker Hub)")
    ap.add_argument("--token-ttl", type=int, default=300, help="token lifetime in seconds (default 300)")
    ap.add_argument("--cdn-ttl", type=int, default=1200, help="CDN URL lifetime in seconds (default 1200)")
    ap.add_argument("--rate-limit", type=int, default=1_000_000, help="default pull limit (default 1000000)")
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="exit when stdin is closed")
    args = ap.parse_args()
    args.dir = os.path.abspath(args.dir)
    os.makedirs(args.dir, exist_ok=True)
    info_path = os.path.join(args.dir, "hub.json")
    if os.path.exists(info_path):
        os.remove(info_path)  # a stale file from an earlier run must not look like us

    # SIGTERM/SIGINT unwind through the finally below, which stops the registry.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    hub = None
    try:
        hub = Hub(args)
        hub.log(f"starting on {hub.url} (cdn {hub.cdn_base}), dir {args.dir}")
        hub.registry.start(hub.log)
        if args.exit_on_stdin_eof:
            threading.Thread(target=watch_stdin, daemon=True).start()
        info = {"url": hub.url, "pid": os.getpid()}
        write_json_atomically(info_path, info)
        try:
            print(json.dumps(info), flush=True)
        except OSError:
            pass  # nobody reads our stdout: hub.json is enough
        hub.log(f"ready: registry pid {hub.registry.proc.pid} on {hub.registry.url}")
        hub.serve_forever(poll_interval=0.5)
    except (RuntimeError, OSError) as e:  # startup failure (port taken, no registry): say why
        print(f"hub.py: {e}", file=sys.stderr, flush=True)
        if hub:
            hub.log(f"startup failed: {e}")
        sys.exit(1)
    finally:
        if hub:
            hub.registry.stop()
            hub.server_close()
            hub.log("stopped")
        remove_if_ours(info_path)


if __name__ == "__main__":
    main()
