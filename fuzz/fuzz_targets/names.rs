//! Repository names, tags, references, digests and `repo:tag` / `repo@digest` image references,
//! each parser on the same string. Whatever parses displays as exactly the text it came from.
#![no_main]

use berth::oci::{Digest, Reference, RepoName, Tag, parse_image_ref};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex().len(), if s.starts_with("sha256:") { 64 } else { 128 });
        assert_eq!(d.algorithm().as_str(), s.split_once(':').unwrap().0);
    }
    if let Ok(r) = s.parse::<RepoName>() {
        assert_eq!(r.to_string(), s);
    }
    if let Ok(t) = s.parse::<Tag>() {
        assert_eq!(t.to_string(), s);
    }
    if let Ok(r) = s.parse::<Reference>() {
        assert_eq!(r.to_string(), s);
    }
    if let Ok((repo, reference)) = parse_image_ref(s) {
        let again = match &reference {
            Reference::Tag(t) => format!("{repo}:{t}"),
            Reference::Digest(d) => format!("{repo}@{d}"),
        };
        assert_eq!(parse_image_ref(&again), Ok((repo, reference)), "{s:?}");
    }
});
