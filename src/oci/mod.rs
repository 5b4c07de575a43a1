//! Pure OCI types: digests, repository names, references and manifest parsing. No I/O lives here,
//! so every value that reaches `store` or `service` has already been validated.

mod digest;
mod manifest;
mod name;
pub mod pattern;
mod platform;

pub use digest::{Algorithm, Digest, Hasher};
pub use manifest::{Descriptor, Manifest, ManifestError, media};
pub use name::{NameError, Reference, RepoName, Tag, parse_image_ref};
pub use platform::Platform;

/// Largest manifest accepted on PUT or from an upstream, as in the reference registry and Docker
/// Hub. A pure constant, so `upstream` and `service` both take it from here.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
