//! Manifest and index parsing, as a PUT or an upstream delivers them. The first byte picks the
//! Content-Type sent along; the rest is the body. A parsed manifest has the shape its media type
//! promises.
#![no_main]

use berth::oci::{Manifest, media};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some(media::OCI_MANIFEST),
    Some(media::OCI_INDEX),
    Some(media::DOCKER_MANIFEST),
    Some(media::DOCKER_LIST),
    Some("application/json; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let Ok(m) = Manifest::parse(body, CONTENT_TYPES[pick as usize % CONTENT_TYPES.len()]) else {
        return;
    };
    match m.media_type.as_str() {
        media::OCI_INDEX | media::DOCKER_LIST => {
            assert!(m.config.is_none() && m.layers.is_empty(), "an index has no config or layers");
            assert_eq!(m.blob_refs().count(), 0);
        }
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            assert!(m.config.is_some() && m.manifests.is_empty(), "an image has a config, no children");
            assert!((1..=1 + m.layers.len()).contains(&m.blob_refs().count()));
        }
        other => panic!("parsed with media type {other:?}"),
    }
    assert_eq!(m.child_refs().count(), m.manifests.len());
});
