//! The bucket's open multipart uploads (S3's ListMultipartUploads), which `object_store` does not
//! list: garbage collection aborts those a crash left behind (a fill or a session whose replica
//! died before it could abort them), whose parts would otherwise take space for ever. The
//! request is signed with `object_store`'s SigV4 signer and sent with berth's reqwest.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::HttpRequestBody;

use super::{Bucket, config_error};
use crate::config::S3Config;
use crate::store::Result;

/// What listing needs: where the bucket answers and how to sign.
#[derive(Clone, Debug)]
pub(super) struct Lister {
    /// The bucket's URL, without a trailing slash: `endpoint/bucket` (path style) or
    /// `scheme://bucket.host`.
    base: String,
    region: String,
    credential: Arc<AwsCredential>,
    http: reqwest::Client,
}

/// An open multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

impl Lister {
    pub(super) fn new(cfg: &S3Config, key_id: &str, secret: &str) -> Result<Lister> {
        let endpoint = if cfg.endpoint.is_empty() {
            format!("https://s3.{}.amazonaws.com", cfg.region)
        } else {
            cfg.endpoint.trim_end_matches('/').to_owned()
        };
        let base = if cfg.path_style {
            format!("{endpoint}/{}", cfg.bucket)
        } else {
            let (scheme, host) = endpoint
                .split_once("://")
                .ok_or_else(|| config_error(format!("[storage.s3] endpoint {endpoint:?} has no scheme")))?;
            format!("{scheme}://{}.{host}", cfg.bucket)
        };
        let http = reqwest::Client::builder().build().map_err(io::Error::other)?;
        Ok(Lister {
            base,
            region: cfg.region.clone(),
            credential: Arc::new(AwsCredential {
                key_id: key_id.to_owned(),
                secret_key: secret.to_owned(),
                token: None,
            }),
            http,
        })
    }
}

impl Bucket {
    /// Every open multipart upload whose key starts with `prefix`, page by page.
    pub(super) async fn open_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>> {
        let lister = &self.lister;
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = reqwest::Url::parse(&format!("{}/", lister.base)).map_err(io::Error::other)?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("prefix", prefix).append_pair("uploads", "");
                if let Some((key, id)) = &markers {
                    query.append_pair("key-marker", key).append_pair("upload-id-marker", id);
                }
            }
            let mut request = http::Request::get(url.as_str())
                .body(HttpRequestBody::empty())
                .map_err(io::Error::other)?;
            AwsAuthorizer::new(&lister.credential, "s3", &lister.region)
                .try_authorize(&mut request, None)
                .map_err(super::s3_error)?;
            let mut send = lister.http.get(url.as_str());
            for (name, value) in request.headers() {
                send = send.header(name, value);
            }
            let answer = send.send().await.map_err(io::Error::other)?;
            let status = answer.status();
            let body = answer.text().await.map_err(io::Error::other)?;
            if !status.is_success() {
                return Err(io::Error::other(format!("listing multipart uploads: {status}: {body}")).into());
            }
            let page = parse(&body);
            out.extend(page.uploads);
            match page.next {
                Some(next) if markers.as_ref() != Some(&next) => markers = Some(next),
                _ => return Ok(out),
            }
        }
    }
}

struct Page {
    uploads: Vec<OpenUpload>,
    /// The key and upload id markers of the next page, when the listing was truncated.
    next: Option<(String, String)>,
}

/// A ListMultipartUploadsResult. The XML is simple and fixed; reading the few elements needed by
/// hand spares a parser dependency.
fn parse(xml: &str) -> Page {
    let uploads = blocks(xml, "Upload")
        .filter_map(|block| {
            Some(OpenUpload {
                key: element(block, "Key")?,
                upload_id: element(block, "UploadId")?,
                initiated: humantime::parse_rfc3339_weak(&element(block, "Initiated")?).ok()?,
            })
        })
        .collect();
    let truncated = element(xml, "IsTruncated").as_deref() == Some("true");
    let next = match (element(xml, "NextKeyMarker"), element(xml, "NextUploadIdMarker")) {
        (Some(key), Some(id)) if truncated => Some((key, id)),
        _ => None,
    };
    Page { uploads, next }
}

/// The contents of every `<tag>…</tag>` in `xml`.
fn blocks<'a>(xml: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut rest = xml;
    std::iter::from_fn(move || {
        let start = rest.find(open.as_str())? + open.len();
        let len = rest[start..].find(close.as_str())?;
        let inside = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(inside)
    })
}

/// The text of the first `<tag>` in `xml`, unescaped.
fn element(xml: &str, tag: &str) -> Option<String> {
    let text = blocks(xml, tag).next()?;
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_page_is_read_with_its_continuation() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>berth</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>uploads/b/data</NextKeyMarker><NextUploadIdMarker>id&amp;2</NextUploadIdMarker>
  <IsTruncated>true</IsTruncated>
  <Upload><Key>blobs/sha256/ab/abcd</Key><UploadId>id1</UploadId><Initiated>2026-01-02T03:04:05.000Z</Initiated></Upload>
  <Upload><Key>uploads/b/data</Key><UploadId>id&amp;2</UploadId><Initiated>2026-01-02T03:04:06Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page = parse(xml);
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[0].key, "blobs/sha256/ab/abcd");
        assert_eq!(page.uploads[1].upload_id, "id&2");
        assert_eq!(
            page.uploads[0].initiated,
            humantime::parse_rfc3339("2026-01-02T03:04:05Z").unwrap()
        );
        assert_eq!(page.next, Some(("uploads/b/data".into(), "id&2".into())));
        let last = parse("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>");
        assert!(last.uploads.is_empty() && last.next.is_none());
    }
}
