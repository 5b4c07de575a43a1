//! Whole-store checks through the API: every tag resolves to a manifest whose bytes and blobs
//! verify.

use reqwest::StatusCode;
use serde_json::Value;

use super::client::{client, get_json, header};
use super::sha256;

/// Through the API: every tag of every repository resolves to a manifest whose bytes match its
/// digest, and every blob it references is served and verifies. Returns the number of tags.
pub async fn assert_registry_consistent(base: &str) -> usize {
    let c = client();
    let catalog: Value = get_json(format!("{base}/v2/_catalog")).await;
    let mut tags_checked = 0;
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags: Value = get_json(format!("{base}/v2/{repo}/tags/list")).await;
        for tag in tags["tags"].as_array().unwrap() {
            let r = c
                .get(format!("{base}/v2/{repo}/manifests/{}", tag.as_str().unwrap()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag}");
            let digest = header(&r, "docker-content-digest");
            let bytes = r.bytes().await.unwrap();
            assert_eq!(sha256(&bytes), digest, "{repo}:{tag} manifest bytes");
            let m: Value = serde_json::from_slice(&bytes).unwrap();
            let mut refs = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
            refs.extend(
                m["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["digest"].as_str().unwrap().to_owned()),
            );
            for d in refs {
                let r = c.get(format!("{base}/v2/{repo}/blobs/{d}")).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag} blob {d}");
                assert_eq!(sha256(&r.bytes().await.unwrap()), d, "{repo}:{tag} blob {d} verifies");
            }
            tags_checked += 1;
        }
    }
    tags_checked
}
