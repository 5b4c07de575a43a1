//! One launcher per engine. Each fails loudly (naming what `tests/run` installs) when its engine
//! is missing: a test that needs a real component never skips.

pub mod postgres;
