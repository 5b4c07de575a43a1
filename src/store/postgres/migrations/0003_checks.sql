-- Revalidation claims (src/coord/postgres/checks.rs): a proxied tag is checked with its upstream
-- by one replica per TTL window. `until` is on the database's clock.
CREATE TABLE checks (
    key    TEXT COLLATE "C" PRIMARY KEY,
    until  TIMESTAMPTZ NOT NULL
);
