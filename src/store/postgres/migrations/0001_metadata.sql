-- berth's metadata in PostgreSQL: the tables of the redb store (src/store/redb_meta.rs), one row
-- per key. Names and digests compare bytewise (COLLATE "C"), so pages come in the same lexical
-- order as redb's keys whatever the database's locale.

CREATE TABLE repos (
    name     TEXT COLLATE "C" PRIMARY KEY,
    -- JSON RepoInfo; `private` repeats its origin for the usage query.
    info     TEXT NOT NULL,
    private  BOOLEAN NOT NULL
);

CREATE TABLE tags (
    repo    TEXT COLLATE "C" NOT NULL,
    tag     TEXT COLLATE "C" NOT NULL,
    digest  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (repo, tag)
);
CREATE INDEX tags_by_digest ON tags (repo, digest);

CREATE TABLE manifests (
    repo     TEXT COLLATE "C" NOT NULL,
    digest   TEXT COLLATE "C" NOT NULL,
    -- JSON ManifestRecord
    record   TEXT NOT NULL,
    subject  TEXT COLLATE "C",
    PRIMARY KEY (repo, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repo, subject) WHERE subject IS NOT NULL;

-- The repository may serve that blob.
CREATE TABLE blob_links (
    repo    TEXT COLLATE "C" NOT NULL,
    digest  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX blob_links_by_digest ON blob_links (digest);

CREATE TABLE uploads (
    id       TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    started  BIGINT NOT NULL,
    -- JSON UploadRecord
    record   TEXT NOT NULL
);
CREATE INDEX uploads_by_owner ON uploads (owner);
CREATE INDEX uploads_by_start ON uploads (started);

-- Unix seconds of the last pull of a manifest.
CREATE TABLE pulls (
    repo    TEXT COLLATE "C" NOT NULL,
    digest  TEXT COLLATE "C" NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (repo, digest)
);

-- The blob registry: what the blob store holds, and GC's marks.
CREATE TABLE blobs (
    digest              TEXT COLLATE "C" PRIMARY KEY,
    size                BIGINT NOT NULL,
    created_ms          BIGINT NOT NULL,
    last_referenced_ms  BIGINT NOT NULL,
    marked              BOOLEAN NOT NULL DEFAULT FALSE
);

-- `manifest` in `repo` references `blob` as its own bytes (0), a blob (1) or a child (2).
CREATE TABLE blob_refs (
    blob      TEXT COLLATE "C" NOT NULL,
    repo      TEXT COLLATE "C" NOT NULL,
    manifest  TEXT COLLATE "C" NOT NULL,
    kind      SMALLINT NOT NULL,
    PRIMARY KEY (blob, repo, manifest)
);
CREATE INDEX blob_refs_by_manifest ON blob_refs (repo, manifest);

-- Written by the readiness check.
CREATE TABLE probe (
    id  INTEGER PRIMARY KEY,
    at  BIGINT NOT NULL
);
