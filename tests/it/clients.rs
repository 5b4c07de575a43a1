//! Real clients against berth as a private registry: the `oci-client` crate, the Docker daemon
//! (`docker push` / `docker pull`), and skopeo copying from the project's Docker Hub emulator.

use crate::support;
use crate::support::{Berth, Dockerd, sha256, skopeo};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

#[tokio::test]
async fn oci_client_crate_pushes_and_pulls() {
    berth::install_crypto_provider();
    let b = Berth::start("");
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let reference: Reference = format!("{}/team/oci-client:v1", b.addr).parse().unwrap();
    let layers = vec![
        ImageLayer::new(
            b"first layer bytes".to_vec(),
            "application/vnd.oci.image.layer.v1.tar".into(),
            None,
        ),
        ImageLayer::new(
            vec![7u8; 3 << 20],
            "application/vnd.oci.image.layer.v1.tar".into(),
            None,
        ),
    ];
    let config = Config::new(
        br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let pushed = client
        .push(&reference, &layers, config, &RegistryAuth::Anonymous, None)
        .await
        .expect("push");
    assert!(
        pushed.manifest_url.contains("/v2/team/oci-client/manifests/"),
        "{}",
        pushed.manifest_url
    );

    let fresh = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let image = fresh
        .pull(
            &reference,
            &RegistryAuth::Anonymous,
            vec!["application/vnd.oci.image.layer.v1.tar"],
        )
        .await
        .expect("pull");
    // oci-client fetches layers concurrently and returns them as they complete.
    let mut pulled: Vec<String> = image.layers.iter().map(|l| sha256(&l.data)).collect();
    let mut pushed = vec![sha256(b"first layer bytes"), sha256(&vec![7u8; 3 << 20])];
    pulled.sort();
    pushed.sort();
    assert_eq!(pulled, pushed);
    let digest = image.digest.expect("pulled manifest digest");
    let head = support::client::client()
        .head(b.at("/v2/team/oci-client/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(support::client::header(&head, "docker-content-digest"), digest);
}

#[tokio::test]
async fn docker_pushes_and_pulls_a_private_image() {
    let b = Berth::start("");
    let d = Dockerd::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let tar = support::rootfs_tar(work.path(), "pushed through berth");
    let image = format!("{}/team/app:1", b.addr);
    d.ok(&["import", tar.to_str().unwrap(), &image]);
    let push = d.ok(&["push", &image]);
    let pushed_digest = push
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("push prints the digest")
        .to_owned();

    let tags = support::client::get_json(b.at("/v2/team/app/tags/list")).await;
    assert_eq!(tags["tags"], serde_json::json!(["1"]));

    d.ok(&["rmi", &image]);
    assert!(
        d.try_docker(&["image", "inspect", &image]).is_err(),
        "image is gone locally"
    );
    d.ok(&["pull", &image]);
    let repo_digests = d.ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", &image]);
    assert!(
        repo_digests.contains(&pushed_digest),
        "pulled digest {repo_digests} is the pushed {pushed_digest}"
    );
    let head = support::client::client()
        .head(b.at("/v2/team/app/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(support::client::header(&head, "docker-content-digest"), pushed_digest);
}

#[tokio::test]
async fn skopeo_copies_schema2_and_multi_arch_images_in_and_out_with_identical_digests() {
    // skopeo keeps its token on same-host redirects; a CDN on another host name, as on Docker
    // Hub, is what it expects.
    let hub = support::Hub::start_with(&["--cdn-host", "localhost"]);
    hub.seed(0);
    let b = Berth::start("");
    let out = tempfile::tempdir().unwrap();
    for (image, target, all) in [
        ("library/alpine:latest", "team/alpine:latest", false),
        ("library/busybox:latest", "team/busybox:latest", true),
    ] {
        let source = format!("docker://{}/{image}", hub.addr());
        let dest = format!("docker://{}/{target}", b.addr);
        let original = sha256(skopeo(&["inspect", "--raw", "--tls-verify=false", &source]).as_bytes());
        let mut copy = vec![
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ];
        if all {
            copy.push("--all");
        }
        skopeo(&[copy.as_slice(), &[source.as_str(), dest.as_str()]].concat());
        let stored = sha256(skopeo(&["inspect", "--raw", "--tls-verify=false", &dest]).as_bytes());
        assert_eq!(stored, original, "{image}: berth serves the exact manifest bytes");

        // And back out, to a directory: the manifest file is byte-identical.
        let dir = out.path().join(target.replace(['/', ':'], "_"));
        let dir_ref = format!("dir:{}", dir.display());
        let mut back = vec!["copy", "--preserve-digests", "--src-tls-verify=false"];
        if all {
            back.push("--all");
        }
        skopeo(&[back.as_slice(), &[dest.as_str(), dir_ref.as_str()]].concat());
        assert_eq!(
            support::sha256_file(&dir.join("manifest.json")),
            original,
            "{image}: copied back out unchanged"
        );
    }
}
