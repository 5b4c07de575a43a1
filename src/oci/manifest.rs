//! Manifest parsing: just enough structure to validate a pushed manifest, find the blobs and child
//! manifests it references, and answer the referrers API. The bytes themselves are never re-encoded.
//!
//! Why not `oci-spec`'s types: they model one spec strictly, while a registry must accept Docker
//! schema2 and manifest lists next to OCI manifests and indexes, and only ever needs the
//! descriptors. A lenient struct of the common fields does that without the builder machinery.
//! Checked against oci-spec 0.10: it requires `layers` and a platform's `os` and `architecture`,
//! which berth accepts absent today (see `accepts_what_a_strict_model_would_refuse`), and it
//! brings derive_builder, getset, strum and regex, which are not optional.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Digest;

/// Media types the registry knows by name.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// Layers that live outside the registry (Windows base layers); pushes may omit them.
    pub const FOREIGN_LAYERS: [&str; 3] = [
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    ];
    /// The manifest media types asked for when the client sent no `Accept`.
    pub const DEFAULT_ACCEPT: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("manifest of type {0} must have {1}")]
    Missing(&'static str, &'static str),
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
}

/// A content descriptor, as found in `config`, `layers`, `manifests` and `subject`.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A parsed, validated manifest of one of the four supported media types.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: String,
    /// `artifactType`, or for an image manifest without one, its config's media type, as the
    /// referrers API reports it.
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// Parse `bytes`, sent with `content_type` (a PUT's Content-Type, or an upstream's).
    /// The body's `mediaType` wins when present and must agree with a specific Content-Type.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let raw: Raw = serde_json::from_slice(bytes)?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
        let media_type = match (&raw.media_type, &header) {
            (Some(body), Some(h)) if is_manifest_type(h) && h != body => {
                return Err(ManifestError::MediaTypeMismatch {
                    header: h.clone(),
                    body: body.clone(),
                });
            }
            (Some(body), _) => body.clone(),
            (None, Some(h)) if is_manifest_type(h) => h.clone(),
            // OCI allows omitting mediaType; the shape tells an index from an image manifest.
            (None, _) if raw.manifests.is_some() => media::OCI_INDEX.to_owned(),
            (None, _) => media::OCI_MANIFEST.to_owned(),
        };
        let is_index = match media_type.as_str() {
            media::OCI_INDEX | media::DOCKER_LIST => true,
            media::OCI_MANIFEST | media::DOCKER_MANIFEST => false,
            other => return Err(ManifestError::MediaType(other.to_owned())),
        };
        if is_index && raw.manifests.is_none() {
            return Err(ManifestError::Missing("index", "manifests"));
        }
        if !is_index && raw.config.is_none() {
            return Err(ManifestError::Missing("image manifest", "config"));
        }
        let config = if is_index { None } else { raw.config };
        let artifact_type = raw.artifact_type.or_else(|| {
            config
                .as_ref()
                .map(|c| c.media_type.clone())
                .filter(|_| media_type == media::OCI_MANIFEST)
        });
        Ok(Manifest {
            media_type,
            artifact_type,
            config,
            layers: if is_index {
                Vec::new()
            } else {
                raw.layers.unwrap_or_default()
            },
            manifests: if is_index {
                raw.manifests.unwrap_or_default()
            } else {
                Vec::new()
            },
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    /// Blobs this manifest needs in the same repository: its config and distributable layers.
    pub fn blob_refs(&self) -> impl Iterator<Item = &Digest> {
        let layers = self
            .layers
            .iter()
            .filter(|l| !media::FOREIGN_LAYERS.contains(&l.media_type.as_str()));
        self.config.iter().chain(layers).map(|d| &d.digest)
    }

    /// Child manifests of an index.
    pub fn child_refs(&self) -> impl Iterator<Item = &Digest> {
        self.manifests.iter().map(|d| &d.digest)
    }
}

/// Whether `media_type` is one this registry stores as a manifest.
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        media::OCI_MANIFEST | media::OCI_INDEX | media::DOCKER_MANIFEST | media::DOCKER_LIST
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_docker_schema2_and_lists_its_blobs() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":1}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":2}},
                      {{"mediaType":"{}","digest":"{}","size":3}}]}}"#,
            media::DOCKER_MANIFEST,
            digest('a'),
            digest('b'),
            media::FOREIGN_LAYERS[0],
            digest('c')
        );
        let m = Manifest::parse(body.as_bytes(), Some(media::DOCKER_MANIFEST)).unwrap();
        let refs: Vec<String> = m.blob_refs().map(|d| d.to_string()).collect();
        assert_eq!(refs, vec![digest('a'), digest('b')], "foreign layers are not required");
        assert_eq!(m.artifact_type, None);
    }

    #[test]
    fn oci_manifest_without_media_type_takes_it_from_content_type_or_shape() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/x-sbom","digest":"{}","size":1}},"layers":[],"subject":{{"mediaType":"{}","digest":"{}","size":9}}}}"#,
            digest('a'),
            media::OCI_MANIFEST,
            digest('d')
        );
        let m = Manifest::parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.media_type, media::OCI_MANIFEST);
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sbom"));
        assert_eq!(m.subject.unwrap().digest.to_string(), digest('d'));
    }

    #[test]
    fn index_lists_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            digest('e')
        );
        let m = Manifest::parse(body.as_bytes(), Some(media::OCI_INDEX)).unwrap();
        assert_eq!(m.child_refs().count(), 1);
        assert_eq!(m.blob_refs().count(), 0);
    }

    #[test]
    fn accepts_what_a_strict_model_would_refuse() {
        // No `layers` (a config-only artifact), and an index entry whose platform names only the OS.
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/x-sbom","digest":"{}","size":1}}}}"#,
            digest('a')
        );
        let m = Manifest::parse(image.as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(m.blob_refs().count(), 1);
        assert!(m.layers.is_empty());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":5,"platform":{{"os":"linux"}}}}]}}"#,
            media::OCI_MANIFEST,
            digest('e')
        );
        let m = Manifest::parse(index.as_bytes(), None).unwrap();
        assert_eq!(m.media_type, media::OCI_INDEX, "the shape tells an index");
        assert_eq!(m.child_refs().count(), 1);
    }

    #[test]
    fn rejects_bad_manifests() {
        let cases: [(&str, Option<&str>); 5] = [
            ("not json", None),
            (r#"{"schemaVersion":1}"#, None),
            (r#"{"schemaVersion":2,"mediaType":"text/plain","config":{}}"#, None),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                None,
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                Some(media::OCI_MANIFEST),
            ),
        ];
        for (body, ct) in cases {
            assert!(
                Manifest::parse(body.as_bytes(), ct).is_err(),
                "{body} should be rejected"
            );
        }
    }
}
