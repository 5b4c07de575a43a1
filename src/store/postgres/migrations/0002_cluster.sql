-- Cluster coordination (src/coord/postgres): leases for fills and periodic tasks, and the
-- membership heartbeats.

-- A lease on `key` ("fill/<digest>" or "task/<name>") held by replica `holder` (empty once
-- released) until `expires`
-- (the database's clock, so replicas' clocks need not agree). `generation` grows with every
-- claim of the key, a takeover included. `url` is the holder's advertised URL, where other
-- replicas stream a fill from.
CREATE TABLE leases (
    key         TEXT COLLATE "C" PRIMARY KEY,
    holder      TEXT NOT NULL,
    url         TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    expires     TIMESTAMPTZ NOT NULL
);

-- One row per running replica, renewed every `[cluster] heartbeat`.
CREATE TABLE members (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    started    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen  TIMESTAMPTZ NOT NULL DEFAULT now()
);
