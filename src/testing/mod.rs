//! Test infrastructure in the library, so unit tests and the integration tests (through the
//! `testing` feature) share it: launchers of the real engines the cluster backends run on. Each
//! binds 127.0.0.1 only, on free ports, in a fresh temporary directory, as a child process that
//! its launcher's `Drop` stops by PID. A missing engine binary fails the test, saying what
//! `tests/run` installs; nothing skips.

pub mod engines;
