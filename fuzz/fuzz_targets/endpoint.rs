//! The `/v2/` path parser, on raw request paths. A parsed endpoint holds only names that cannot
//! climb out of a directory, and re-renders to a path that parses back to itself. `kind` (the
//! cheap look at a path used for metrics) never panics.
#![no_main]

use berth::api::Endpoint;
use berth::api::endpoint::{kind, parse};
use berth::oci::RepoName;
use libfuzzer_sys::fuzz_target;

fn render(e: &Endpoint) -> String {
    match e {
        Endpoint::Base => "/v2/".into(),
        Endpoint::Catalog => "/v2/_catalog".into(),
        Endpoint::Tags(r) => format!("/v2/{r}/tags/list"),
        Endpoint::Manifest(r, reference) => format!("/v2/{r}/manifests/{reference}"),
        Endpoint::Blob(r, d) => format!("/v2/{r}/blobs/{d}"),
        Endpoint::Upload(r, None) => format!("/v2/{r}/blobs/uploads/"),
        Endpoint::Upload(r, Some(id)) => format!("/v2/{r}/blobs/uploads/{id}"),
        Endpoint::Referrers(r, d) => format!("/v2/{r}/referrers/{d}"),
    }
}

/// Store paths are built from names: no empty, `.` or `..` component, no byte outside the grammar.
fn check_name(r: &RepoName) {
    let s = r.as_str();
    assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."), "{s:?}");
    assert!(s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/')), "{s:?}");
}

fuzz_target!(|path: &str| {
    let _ = kind(path);
    let Ok(endpoint) = parse(path) else {
        return;
    };
    match &endpoint {
        Endpoint::Tags(r) | Endpoint::Manifest(r, _) | Endpoint::Blob(r, _) | Endpoint::Referrers(r, _) => {
            check_name(r)
        }
        Endpoint::Upload(r, id) => {
            check_name(r);
            assert!(id.as_deref().is_none_or(|id| !id.is_empty() && !id.contains('/')), "{id:?}");
        }
        Endpoint::Base | Endpoint::Catalog => {}
    }
    assert_eq!(parse(&render(&endpoint)).as_ref(), Ok(&endpoint), "{path:?}");
});
