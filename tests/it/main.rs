//! berth's integration tests, one binary: each module drives berth (in process, or as the real
//! `berth` binary) with real clients where users have them. `cargo test --test it api::` runs
//! one module; `tests/run` runs them all.

mod support;

mod api;
mod auth_abuse;
mod clients;
mod cluster;
mod cluster_fill;
mod crash;
mod disk;
mod image;
mod integrity;
mod layout;
mod lazy;
mod lifecycle;
mod limits;
mod mirror;
mod notifications;
mod offline;
mod ops;
mod perf;
mod prefetch;
mod registry2;
mod registry2_http;
mod security;
