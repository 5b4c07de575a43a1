//! Spec coverage: every OCI Distribution endpoint over HTTP, including the error codes and
//! statuses a client sees. berth's app runs in this process; the restart test runs the binary.

use crate::support::client::*;
use crate::support::in_process::App;
use crate::support::{Berth, Server, sha256, store_layout};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn base_endpoint_announces_the_api_version() {
    let b = App::start("").await;
    let r = client().get(b.at("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-distribution-api-version"), "registry/2.0");
}

#[tokio::test]
async fn blob_get_head_range_and_delete() {
    let b = App::start("").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = push_blob(&b.url, "team/app", &data).await;
    let url = b.at(&format!("/v2/team/app/blobs/{digest}"));

    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), data.len().to_string());
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), data.len().to_string());

    let r = client().get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), format!("bytes 10-19/{}", data.len()));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    let r = client()
        .get(&url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Another repository does not see the blob until it is mounted there.
    let r = client()
        .get(b.at(&format!("/v2/other/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "BLOB_UNKNOWN");

    assert_eq!(
        client().delete(&url).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn post_then_put_upload() {
    let b = App::start("").await;
    let r = client().post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = header(&r, "location");
    assert!(location.starts_with("/v2/team/app/blobs/uploads/"), "{location}");
    let data = b"monolithic after POST";
    let digest = sha256(data);
    let r = client()
        .put(b.at(&format!("{location}?digest={digest}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/team/app/blobs/{digest}"));
    let got = client()
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), data);
}

#[tokio::test]
async fn chunked_upload_with_status_out_of_order_and_cancel() {
    let b = App::start("").await;
    let c = client();
    let r = c.post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    let location = header(&r, "location");
    let data: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 256) as u8).collect();

    let r = c
        .patch(b.at(&location))
        .header("content-range", "0-9999")
        .body(data[..10_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-9999");
    let location = header(&r, "location");

    // A chunk that skips ahead is refused with 416, and the session keeps its offset.
    let r = c
        .patch(b.at(&location))
        .header("content-range", "20000-29999")
        .body(data[20_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), "0-9999");

    // A chunk longer than its declared range is refused and leaves the session unchanged.
    let r = c
        .patch(b.at(&location))
        .header("content-range", "10000-10009")
        .body(data[10_000..20_000].to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = c.get(b.at(&location)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-9999");
    assert_eq!(header(&r, "location"), location);

    // A PATCH without Content-Range (docker's streaming style) appends.
    let r = c
        .patch(b.at(&location))
        .body(data[10_000..20_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "range"), "0-19999");
    let digest = sha256(&data);
    let r = c
        .put(b.at(&format!("{location}?digest={digest}")))
        .header("content-range", "20000-29999")
        .body(data[20_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);

    // Cancel: the session is gone afterwards.
    let r = c.post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    let location = header(&r, "location");
    assert_eq!(
        c.delete(b.at(&location)).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let r = c.get(b.at(&location)).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn content_range_ending_at_u64_max_is_refused_and_the_session_survives() {
    let b = App::start("").await;
    let c = client();
    let r = c.post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    let location = header(&r, "location");
    // end + 1 - start overflows a u64: a debug build panicked, a release build wrapped to length 0.
    for range in ["0-18446744073709551615", "bytes 0-18446744073709551615/*"] {
        let r = c
            .patch(b.at(&location))
            .header("content-range", range)
            .body(&b"abc"[..])
            .send()
            .await
            .unwrap();
        assert!(
            [StatusCode::BAD_REQUEST, StatusCode::RANGE_NOT_SATISFIABLE].contains(&r.status()),
            "{range}: {}",
            r.status()
        );
        assert_eq!(
            r.json::<Value>().await.unwrap()["errors"][0]["code"],
            "BLOB_UPLOAD_INVALID"
        );
    }
    // The session is untouched and still takes a proper chunk.
    let r = c.get(b.at(&location)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-0");
    let r = c
        .patch(b.at(&location))
        .header("content-range", "0-2")
        .body(&b"abc"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-2");
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let b = App::start("").await;
    let wrong = sha256(b"something else");
    let r = client()
        .post(b.at(&format!("/v2/team/app/blobs/uploads/?digest={wrong}")))
        .body("actual bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "DIGEST_INVALID");
    let r = client()
        .head(b.at(&format!("/v2/team/app/blobs/{wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let actual = sha256(b"actual bytes");
    let r = client()
        .head(b.at(&format!("/v2/team/app/blobs/{actual}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the bytes sent are not served either"
    );
    // Not linked is not enough: no file may hold the refused bytes under either name.
    for d in [&wrong, &actual] {
        assert!(!store_layout::has_blob(&b.root, d), "{d} was stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_the_spec_error_codes() {
    let b = App::start("").await;
    let c = client();
    let r = c.get(b.at("/v2/team/app/blobs/sha256:nothex")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "DIGEST_INVALID");
    let r = c
        .post(b.at("/v2/team/app/blobs/uploads/?digest=md5:abc"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "DIGEST_INVALID");
    for name in ["Team/App", "a//b", "-x"] {
        let r = c
            .get(b.at(&format!("/v2/{name}/manifests/latest")))
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "NAME_INVALID", "{name}");
    }
    // HTTP clients normalise dot segments away, so traversal attempts go over a raw socket.
    for path in [
        "/v2/%2e%2e/x/manifests/latest",
        "/v2/../../etc/manifests/passwd",
        "/v2/a/%2F/b/tags/list",
    ] {
        let (status, body) = raw_request(
            &b.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("NAME_INVALID"), "{path}: {body}");
    }
    let long = "a".repeat(300);
    let r = c.get(b.at(&format!("/v2/{long}/tags/list"))).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "NAME_INVALID");
    let r = c.get(b.at("/v2/team/app/manifests/latest")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "NAME_UNKNOWN");
    let r = c
        .get(b.at(&format!("/v2/team/app/blobs/{}", sha256(b"nope"))))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "BLOB_UNKNOWN");
    let r = c.post(b.at("/v2/team/app/tags/list")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::METHOD_NOT_ALLOWED).await, "UNSUPPORTED");
}

#[tokio::test]
async fn manifests_keep_exact_bytes_and_resolve_by_tag_and_digest() {
    let b = App::start("").await;
    let body = image_manifest(&b.url, "team/app", &[b"layer one", b"layer two"]).await;
    let digest = sha256(&body);
    let r = put_manifest(&b.url, "team/app", "1.0", OCI_MANIFEST, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_eq!(header(&r, "location"), format!("/v2/team/app/manifests/{digest}"));

    for reference in ["1.0", digest.as_str()] {
        let r = client()
            .get(b.at(&format!("/v2/team/app/manifests/{reference}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), digest);
        assert_eq!(header(&r, "content-length"), body.len().to_string());
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &body[..],
            "bytes are kept exactly (pretty-printed JSON)"
        );
        let r = client()
            .head(b.at(&format!("/v2/team/app/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-length"), body.len().to_string());
        assert_eq!(header(&r, "docker-content-digest"), digest);
    }

    let r = client().get(b.at("/v2/team/app/manifests/2.0")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "MANIFEST_UNKNOWN");

    // Re-pushing a tag that was just read (and is answered from memory) moves it at once.
    let other = image_manifest(&b.url, "team/app", &[b"layer three"]).await;
    assert_eq!(
        put_manifest(&b.url, "team/app", "1.0", OCI_MANIFEST, &other)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = client().head(b.at("/v2/team/app/manifests/1.0")).send().await.unwrap();
    assert_eq!(header(&r, "docker-content-digest"), sha256(&other));
    assert_eq!(
        put_manifest(&b.url, "team/app", "1.0", OCI_MANIFEST, &body)
            .await
            .status(),
        StatusCode::CREATED
    );

    // Delete by tag removes the tag only; delete by digest removes the manifest.
    let r = client()
        .delete(b.at("/v2/team/app/manifests/1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = client().get(b.at("/v2/team/app/manifests/1.0")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "MANIFEST_UNKNOWN");
    assert_eq!(
        client()
            .get(b.at(&format!("/v2/team/app/manifests/{digest}")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let r = client()
        .delete(b.at(&format!("/v2/team/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = client()
        .get(b.at(&format!("/v2/team/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn docker_schema2_and_indexes_are_validated() {
    let b = App::start("").await;
    let config = push_blob(&b.url, "team/app", br#"{"architecture":"arm64","os":"linux"}"#).await;
    let layer = push_blob(&b.url, "team/app", b"gzip bytes").await;
    let schema2 = json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": descriptor("application/vnd.docker.container.image.v1+json", &config, 37),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &layer, 10)],
    });
    let schema2 = serde_json::to_vec(&schema2).unwrap();
    let r = put_manifest(&b.url, "team/app", "arm64", DOCKER_MANIFEST, &schema2).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let child = header(&r, "docker-content-digest");

    // An index whose child is missing is refused; once the child exists it is accepted.
    let missing = sha256(b"no such manifest");
    let bad_index =
        json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor(OCI_MANIFEST, &missing, 9)] });
    let r = put_manifest(
        &b.url,
        "team/app",
        "multi",
        OCI_INDEX,
        &serde_json::to_vec(&bad_index).unwrap(),
    )
    .await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "MANIFEST_BLOB_UNKNOWN");
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        { "mediaType": DOCKER_MANIFEST, "digest": child, "size": schema2.len(), "platform": { "os": "linux", "architecture": "arm64" } }
    ]});
    let index = serde_json::to_vec(&index).unwrap();
    let r = put_manifest(&b.url, "team/app", "multi", OCI_INDEX, &index).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = client().get(b.at("/v2/team/app/manifests/multi")).send().await.unwrap();
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &index[..]);

    // A manifest whose layer is not in the repository.
    let orphan = json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": descriptor("application/vnd.docker.container.image.v1+json", &config, 37),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &missing, 10)],
    });
    let r = put_manifest(
        &b.url,
        "team/app",
        "orphan",
        DOCKER_MANIFEST,
        &serde_json::to_vec(&orphan).unwrap(),
    )
    .await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "MANIFEST_BLOB_UNKNOWN");
    // The same blobs pushed to another repository do not count.
    let r = put_manifest(&b.url, "other/app", "arm64", DOCKER_MANIFEST, &schema2).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "MANIFEST_BLOB_UNKNOWN");

    for (body, ct) in [
        (&b"{not json"[..], OCI_MANIFEST),
        (br#"{"schemaVersion":2,"mediaType":"text/plain"}"#, "text/plain"),
    ] {
        let r = put_manifest(&b.url, "team/app", "bad", ct, body).await;
        assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "MANIFEST_INVALID");
    }
    // Content-Type disagreeing with the body's mediaType.
    let r = put_manifest(&b.url, "team/app", "bad", OCI_MANIFEST, &schema2).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "MANIFEST_INVALID");
    // PUT by a digest that is not the body's.
    let r = put_manifest(&b.url, "team/app", &missing, DOCKER_MANIFEST, &schema2).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "DIGEST_INVALID");
    let r = client().get(b.at("/v2/team/app/manifests/bad")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "nothing was tagged by the refused PUTs"
    );
}

#[tokio::test]
async fn oversize_manifest_is_refused_with_413() {
    let b = App::start("").await;
    let mut big =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 4 << 20));
    big.extend(br#""}}"#);
    let r = put_manifest(&b.url, "team/app", "big", OCI_MANIFEST, &big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert!(body["errors"][0]["code"].is_string());
}

#[tokio::test]
async fn cross_repo_mount() {
    let b = App::start("").await;
    let digest = push_blob(&b.url, "team/base", b"shared layer").await;
    let r = client()
        .post(b.at(&format!("/v2/team/app/blobs/uploads/?mount={digest}&from=team/base")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "location"), format!("/v2/team/app/blobs/{digest}"));
    let r = client()
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"shared layer");

    // Not in the source repository: a new upload session instead.
    let other = sha256(b"not anywhere");
    let r = client()
        .post(b.at(&format!("/v2/team/app/blobs/uploads/?mount={other}&from=team/base")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(header(&r, "location").starts_with("/v2/team/app/blobs/uploads/"));
}

#[tokio::test]
async fn tags_and_catalog_paginate_with_link() {
    let b = App::start("").await;
    let m = image_manifest(&b.url, "team/app", &[b"l"]).await;
    for tag in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            put_manifest(&b.url, "team/app", tag, OCI_MANIFEST, &m).await.status(),
            StatusCode::CREATED
        );
    }
    for repo in ["team/x", "team/y"] {
        push_blob(&b.url, repo, b"l").await;
    }
    let r = client().get(b.at("/v2/team/app/tags/list?n=2")).send().await.unwrap();
    assert_eq!(header(&r, "link"), "</v2/team/app/tags/list?n=2&last=b>; rel=\"next\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({ "name": "team/app", "tags": ["a", "b"] }));
    let r = client()
        .get(b.at("/v2/team/app/tags/list?n=2&last=d"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "link"), "");
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["e"]));
    let r = client().get(b.at("/v2/team/app/tags/list")).send().await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["tags"],
        json!(["a", "b", "c", "d", "e"])
    );
    let r = client().get(b.at("/v2/team/none/tags/list")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "NAME_UNKNOWN");

    let r = client().get(b.at("/v2/_catalog?n=2")).send().await.unwrap();
    assert_eq!(header(&r, "link"), "</v2/_catalog?n=2&last=team/x>; rel=\"next\"");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "repositories": ["team/app", "team/x"] })
    );
    let r = client().get(b.at("/v2/_catalog?n=2&last=team/x")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "repositories": ["team/y"] }));
}

#[tokio::test]
async fn a_page_of_zero_names_is_empty_and_links_nowhere() {
    let b = App::start("").await;
    push_image(&b.url, "team/app", "a", &[b"l"]).await;
    // Before the fix, n=0 answered `Link: <...?n=0&last=>`, the request itself: a client that
    // follows links looped forever.
    for (path, key) in [
        ("/v2/team/app/tags/list?n=0", "tags"),
        ("/v2/_catalog?n=0", "repositories"),
    ] {
        let r = client().get(b.at(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&r, "link"), "", "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()[key], json!([]), "{path}");
    }
    let r = client().get(b.at("/v2/team/none/tags/list?n=0")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn referrers_list_subjects_with_artifact_type_filter() {
    let b = App::start("").await;
    let subject = push_image(&b.url, "team/app", "1.0", &[b"base layer"]).await;
    let empty = push_blob(&b.url, "team/app", b"{}").await;
    let mut referrer_digests = Vec::new();
    for artifact_type in ["application/vnd.example.sbom", "application/vnd.example.sig"] {
        let m = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": descriptor("application/vnd.oci.empty.v1+json", &empty, 2),
            "layers": [descriptor("application/vnd.oci.empty.v1+json", &empty, 2)],
            "subject": descriptor(OCI_MANIFEST, &subject, 100),
            "annotations": { "org.example.kind": artifact_type },
        });
        let body = serde_json::to_vec(&m).unwrap();
        let r = put_manifest(&b.url, "team/app", &sha256(&body), OCI_MANIFEST, &body).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "oci-subject"), subject);
        referrer_digests.push(sha256(&body));
    }
    let r = client()
        .get(b.at(&format!("/v2/team/app/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let index: Value = r.json().await.unwrap();
    let mut listed: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    referrer_digests.sort();
    assert_eq!(listed, referrer_digests);

    let r = client()
        .get(b.at(&format!(
            "/v2/team/app/referrers/{subject}?artifactType=application/vnd.example.sig"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let index: Value = r.json().await.unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(
        manifests[0]["annotations"]["org.example.kind"],
        "application/vnd.example.sig"
    );

    // A subject with no referrers: an empty index, not an error.
    let r = client()
        .get(b.at(&format!("/v2/team/app/referrers/{}", sha256(b"x"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["manifests"], json!([]));
}

#[tokio::test]
async fn upload_survives_a_restart_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Berth::start_in(dir.path(), "");
    let c = client();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let r = c.post(b.at("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    let location = header(&r, "location");
    let r = c
        .patch(b.at(&location))
        .header("content-range", "0-24999")
        .body(data[..25_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    b.restart();
    let c = client(); // the old pool's connections died with the old process
    let r = c.get(b.at(&location)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-24999");
    let digest = sha256(&data);
    let r = c
        .put(b.at(&format!("{location}?digest={digest}")))
        .header("content-range", "25000-49999")
        .body(data[25_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(b.at(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);
}
