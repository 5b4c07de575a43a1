//! Real engines for tests (`berth::testing`): database and object-store servers started as child
//! processes on 127.0.0.1, each in a fresh temporary directory, and stopped by PID when their
//! handle drops. Compiled for the unit tests and, with the `testing` feature, for the
//! integration tests; never part of the product.

pub mod engines;
