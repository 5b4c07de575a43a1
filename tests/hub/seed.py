#!/usr/bin/env python3
"""Push deterministic test images into the hub emulator (tests/hub/hub.py).

    python3 tests/hub/seed.py --hub URL [--big-mib 256] [--out FILE]
    python3 tests/hub/seed.py --hub URL --blob-mib N [--repo library/cold] [--seed cold-0] [--out FILE]

Images (pushed through the hub's front door as hubuser:hubpass, via the token flow):
  library/alpine:latest, :3.20   Docker schema2; one shared gzip layer, different configs
  library/busybox:latest         OCI image index: linux/amd64 + linux/arm64 OCI manifests
  library/multilayer:latest      5 random layers of 1-8 MiB
  myorg/tool:1.0                 Docker schema2, outside library/
  library/big:latest             one random layer of --big-mib MiB (0 = skip)
Every layer is a real tar.gz that dockerd unpacks; the host-architecture layers carry
/bin/busybox (busybox-static) when it exists. Fixed seeds, tar mtimes and gzip headers make
the digests identical on every run on one machine. Prints a JSON description (see README).

--blob-mib pushes a single random blob (no manifest) and prints just its digest: a fresh
--seed gives a blob no cache has seen yet, for cold-miss tests.
"""
import argparse
import base64
import hashlib
import io
import json
import os
import platform
import random
import sys
import tarfile
import tempfile
import time
import zlib
from http.client import HTTPConnection
from urllib.parse import quote, urlsplit

MIB = 1 << 20
SPOOL_OVER = 16 * MIB  # blobs bigger than this go to a temp file instead of memory
MTIME = 1704067200     # 2024-01-01T00:00:00Z, for every tar entry
CREATED = "2024-01-01T00:00:00Z"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "amd64")
SPOOL_DIR = tempfile.TemporaryDirectory(prefix="hub-seed-")  # removed when the process exits


# --- content ---------------------------------------------------------------------------------
def random_chunks(seed, size):
    """`size` pseudo-random bytes from `seed`, as a generator of 1 MiB chunks (fast: randbytes)."""
    rng = random.Random(seed)
    while size > 0:
        n = min(size, MIB)
        yield rng.randbytes(n)
        size -= n


class Blob:
    """Content-addressed bytes, held in memory or in a spool file; `open()` re-reads them."""

    def __init__(self, media_type, digest, size, data=None, path=None):
        self.media_type, self.digest, self.size, self.data, self.path = media_type, digest, size, data, path

    @classmethod
    def from_chunks(cls, media_type, chunks, expected_size=0):
        h, size = hashlib.sha256(), 0
        sink = Sink(expected_size)
        for c in chunks:
            h.update(c)
            size += len(c)
            sink.write(c)
        return cls(media_type, "sha256:" + h.hexdigest(), size, **sink.finish())

    @classmethod
    def json(cls, media_type, obj):
        return cls.from_chunks(media_type, [json.dumps(obj, indent=2).encode()])

    def open(self):
        return open(self.path, "rb") if self.path else io.BytesIO(self.data)

    def bytes(self):
        with self.open() as f:
            return f.read()

    def descriptor(self, **extra):
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}

    def summary(self):
        return {"digest": self.digest, "size": self.size, "mediaType": self.media_type}


class Sink:
    """Collects output in memory, or in a temp file when it is expected to be large."""

    def __init__(self, expected_size):
        self.file = tempfile.NamedTemporaryFile(dir=SPOOL_DIR.name, delete=False) \
            if expected_size > SPOOL_OVER else None
        self.parts = []

    def write(self, data):
        self.file.write(data) if self.file else self.parts.append(data)

    def finish(self):
        if self.file:
            self.file.close()
            return {"path": self.file.name}
        return {"data": b"".join(self.parts)}


def entry(name, kind=tarfile.REGTYPE, mode=0o644, data=b"", size=None, link=""):
    """A tar member: (TarInfo, bytes or a function returning a chunk generator)."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, MTIME, link
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.size = len(data) if size is None else size
    return info, data


def d(name, mode=0o755):
    return entry(name, tarfile.DIRTYPE, mode)


class Layer(Blob):
    """A gzip-compressed tar of `members`, built in one pass: diff_id (sha256 of the tar) and
    digest (of the gzip) are computed while the gzip bytes are spooled."""

    def __init__(self, members, media_type=DOCKER_LAYER, level=6):
        tar_hash = hashlib.sha256()
        z = zlib.compressobj(level, zlib.DEFLATED, 16 + 15)  # gzip wrapper: mtime 0, no file name
        sink, h, size = Sink(sum(info.size for info, _ in members)), hashlib.sha256(), 0
        for chunk in self.tar_stream(members):
            tar_hash.update(chunk)
            out = z.compress(chunk)
            h.update(out)
            size += len(out)
            sink.write(out)
        tail = z.flush()
        h.update(tail)
        sink.write(tail)
        super().__init__(media_type, "sha256:" + h.hexdigest(), size + len(tail), **sink.finish())
        self.diff_id = "sha256:" + tar_hash.hexdigest()

    @staticmethod
    def tar_stream(members):
        for info, data in members:
            yield info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
            if info.size:
                yield from ([data] if isinstance(data, bytes) else data())
                yield b"\0" * (-info.size % 512)  # pad the member to a 512-byte block
        yield b"\0" * 1024  # end-of-archive marker

    def summary(self):
        return {**super().summary(), "diff_id": self.diff_id}


def random_layer(path, seed, size):
    # Random data does not compress: level 0 (stored deflate blocks) is still a valid gzip
    # stream and is ~10x faster than level 1, which matters for the 256 MiB layer.
    member = entry(path, size=size, data=lambda: random_chunks(seed, size))
    return Layer([d("data/"), member], level=0)


class Image:
    """Single-platform image: config + layers + manifest (Docker schema2 or OCI)."""

    def __init__(self, layers, arch=HOST_ARCH, oci=False, labels=None, env=()):
        self.layers, self.platform = layers, {"architecture": arch, "os": "linux"}
        if arch == "arm64":
            self.platform["variant"] = "v8"
        config = {**self.platform, "created": CREATED,
                  "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *env],
                             "Cmd": ["/bin/sh"], "WorkingDir": "/", "Labels": labels or {}},
                  "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
                  "history": [{"created": CREATED, "created_by": f"berth test hub seed: layer {i}"}
                              for i in range(len(layers))]}
        self.config = Blob.json(OCI_CONFIG if oci else DOCKER_CONFIG, config)
        mtype = OCI_MANIFEST if oci else DOCKER_MANIFEST
        self.manifest = Blob.json(mtype, {"schemaVersion": 2, "mediaType": mtype,
                                          "config": self.config.descriptor(),
                                          "layers": [layer.descriptor() for layer in layers]})

    def summary(self):
        return {**self.manifest.summary(), "platform": self.platform, "config": self.config.summary(),
                "layers": [layer.summary() for layer in self.layers]}


class Index:
    """Multi-platform OCI image index over OCI images."""

    def __init__(self, images):
        self.images = images
        self.manifest = Blob.json(OCI_INDEX, {
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [img.manifest.descriptor(platform=img.platform) for img in images]})

    def summary(self):
        return {**self.manifest.summary(), "manifests": [img.summary() for img in self.images]}


def test_images(big_mib):
    """[(repository, tag, Image | Index)] in push order."""
    if os.path.exists("/bin/busybox"):
        with open("/bin/busybox", "rb") as f:
            busybox = f.read()
    else:  # still a valid image, just not runnable
        busybox = b"#!/bin/sh\necho 'busybox placeholder (install busybox-static)'\n"

    def rootfs(marker, arch=HOST_ARCH, media_type=DOCKER_LAYER):
        binary = busybox if arch == HOST_ARCH else f"#!/bin/sh\necho 'linux/{arch} placeholder'\n".encode()
        return Layer([d("bin/"), entry("bin/busybox", mode=0o755, data=binary),
                      entry("bin/sh", tarfile.SYMTYPE, 0o777, link="busybox"),
                      d("etc/"), entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
                      entry("etc/group", data=b"root:x:0:\n"),
                      entry("etc/os-release", data=f"NAME=berth-test\nID={marker}\n".encode()),
                      d("root/", 0o700), d("tmp/", 0o1777)], media_type)

    alpine_layer = rootfs("alpine")
    sizes = random.Random("multilayer-sizes")
    multilayer = [random_layer(f"data/layer{i}.bin", f"multilayer-{i}", sizes.randint(MIB, 8 * MIB))
                  for i in range(5)]
    tool_layer = Layer([d("usr/"), d("usr/local/"), d("usr/local/bin/"),
                        entry("usr/local/bin/tool", mode=0o755, data=b"#!/bin/sh\necho tool 1.0\n"),
                        d("etc/"), entry("etc/tool.conf", data=b"version = 1.0\n")])
    images = [
        ("library/alpine", "latest", Image([alpine_layer], labels={"org.opencontainers.image.version": "latest"},
                                           env=["ALPINE_TAG=latest"])),
        ("library/alpine", "3.20", Image([alpine_layer], labels={"org.opencontainers.image.version": "3.20"},
                                         env=["ALPINE_TAG=3.20"])),
        ("library/busybox", "latest", Index([Image([rootfs(f"busybox-{arch}", arch, OCI_LAYER)], arch, oci=True)
                                             for arch in ("amd64", "arm64")])),
        ("library/multilayer", "latest", Image(multilayer)),
        ("myorg/tool", "1.0", Image([tool_layer], labels={"org.opencontainers.image.version": "1.0"})),
    ]
    if big_mib > 0:
        images.append(("library/big", "latest", Image([random_layer("data/big.bin", "big", big_mib * MIB)])))
    return images


# --- registry client -------------------------------------------------------------------
class Client:
    """Minimal distribution client: Bearer token flow (Basic credentials at the realm),
    POST+PUT blob uploads streamed from memory or spool files, manifest PUTs."""

    def __init__(self, hub, user="hubuser", password="hubpass"):
        u = urlsplit(hub)
        self.host, self.port = u.hostname, u.port or 80
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.tokens = {}  # repo -> (token, refresh-after monotonic time)
        status, headers, _ = self.call("GET", "/v2/")
        challenge = headers.get("www-authenticate", "")
        if status != 401 or not challenge.lower().startswith("bearer "):
            raise SystemExit(f"seed: expected a Bearer challenge from {hub}/v2/, got {status} {challenge!r}")
        self.challenge = dict(p.strip().split("=", 1) for p in challenge[7:].replace('"', "").split(","))

    def call(self, method, path, body=None, headers=None, repo=None, retry=True):
        hdrs = dict(headers or {})
        if repo:
            hdrs["Authorization"] = "Bearer " + self.token(repo)
        conn = HTTPConnection(self.host, self.port, timeout=600, blocksize=MIB)
        try:
            src = body.open() if isinstance(body, Blob) else None  # re-opened on retry
            conn.request(method, path, body=src or body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            if src:
                src.close()
        finally:
            conn.close()
        if resp.status == 401 and repo and retry:  # token expired (short --token-ttl): once more
            self.tokens.pop(repo, None)
            return self.call(method, path, body, headers, repo, retry=False)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def token(self, repo):
        cached = self.tokens.get(repo)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        realm = urlsplit(self.challenge["realm"])
        query = f"service={quote(self.challenge.get('service', ''))}&scope=" + \
            quote(f"repository:{repo}:pull,push", safe=":/,")
        conn = HTTPConnection(realm.hostname, realm.port or 80, timeout=60)
        try:
            conn.request("GET", f"{realm.path}?{query}", headers={"Authorization": self.basic})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise SystemExit(f"seed: token request failed: {resp.status} {body[:200]!r}")
        answer = json.loads(body)
        ttl = answer.get("expires_in", 60)
        self.tokens[repo] = (answer["token"], time.monotonic() + ttl / 2)  # refresh well before expiry
        return answer["token"]

    @staticmethod
    def expect(want, what, status, body):
        if status != want:
            raise SystemExit(f"seed: {what}: expected HTTP {want}, got {status}: {body[:300]!r}")

    def push_blob(self, repo, blob):
        if self.call("HEAD", f"/v2/{repo}/blobs/{blob.digest}", repo=repo)[0] == 200:
            return  # already there (re-seeding the same hub)
        status, headers, body = self.call("POST", f"/v2/{repo}/blobs/uploads/", repo=repo)
        self.expect(202, f"start upload to {repo}", status, body)
        loc = urlsplit(headers["location"])
        path = f"{loc.path}?{loc.query + '&' if loc.query else ''}digest={quote(blob.digest)}"
        status, _, body = self.call("PUT", path, body=blob, repo=repo, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(blob.size)})
        self.expect(201, f"upload {blob.digest} to {repo}", status, body)

    def push_manifest(self, repo, ref, manifest):
        status, headers, body = self.call("PUT", f"/v2/{repo}/manifests/{ref}", body=manifest.bytes(),
                                          repo=repo, headers={"Content-Type": manifest.media_type})
        self.expect(201, f"put manifest {repo}:{ref}", status, body)
        if headers.get("docker-content-digest") != manifest.digest:
            raise SystemExit(f"seed: {repo}:{ref}: registry computed {headers.get('docker-content-digest')}, "
                             f"we computed {manifest.digest}")

    def push_image(self, repo, ref, image):
        for blob in (*image.layers, image.config):
            self.push_blob(repo, blob)
        self.push_manifest(repo, ref, image.manifest)

    def push(self, repo, tag, item):
        if isinstance(item, Index):
            for image in item.images:  # children first: the registry checks an index's references
                self.push_image(repo, image.manifest.digest, image)
            self.push_manifest(repo, tag, item.manifest)
        else:
            self.push_image(repo, tag, item)


def write_atomically(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a reader never sees half a file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hub", required=True, help="hub URL, e.g. the url in DIR/hub.json")
    ap.add_argument("--big-mib", type=int, default=256, help="library/big layer size in MiB (default 256, 0 = skip)")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--blob-mib", type=int, help="push one random blob of this many MiB instead of the images")
    ap.add_argument("--repo", default="library/cold", help="repository for --blob-mib (default library/cold)")
    ap.add_argument("--seed", default="cold-0", help="content seed for --blob-mib (default cold-0)")
    args = ap.parse_args()
    client = Client(args.hub)
    started = time.monotonic()

    if args.blob_mib is not None:
        blob = Blob.from_chunks("application/octet-stream", random_chunks(args.seed, args.blob_mib * MIB),
                                args.blob_mib * MIB)
        client.push_blob(args.repo, blob)
        if args.out:
            write_atomically(args.out, json.dumps({"repository": args.repo, "digest": blob.digest,
                                                   "size": blob.size}, indent=2) + "\n")
        print(blob.digest)
        return

    result = {"hub": args.hub, "images": {}}
    for repo, tag, item in test_images(args.big_mib):
        t0 = time.monotonic()
        client.push(repo, tag, item)
        result["images"][f"{repo}:{tag}"] = {"repository": repo, "tag": tag, **item.summary()}
        print(f"seed: {repo}:{tag} {item.manifest.digest} ({time.monotonic() - t0:.1f}s)", file=sys.stderr)
    print(f"seed: done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        write_atomically(args.out, text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
