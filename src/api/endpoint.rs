//! One parser for every `/v2/` path. Repository names may have any depth, so the path is read from
//! the right: the trailing segments say which endpoint it is, and everything before is the name.
//! Names, tags and digests are validated here, once; handlers receive only newtypes.

use crate::metrics::Kind;
use crate::oci::{Digest, NameError, Reference, RepoName};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/` and `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, Option<String>),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

/// Why a path is not an endpoint: not ours at all (404), or ours with an invalid part (400).
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    NotFound,
    Invalid(NameError),
}

impl From<NameError> for ParseError {
    fn from(e: NameError) -> Self {
        ParseError::Invalid(e)
    }
}

/// Parse a raw (still percent-encoded) request path. Encoded bytes never decode into a name: `%`
/// is outside the grammar, so `%2e%2e` is refused rather than turned into `..`.
pub fn parse(path: &str) -> Result<Endpoint, ParseError> {
    let rest = path.strip_prefix("/v2").ok_or(ParseError::NotFound)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Endpoint::Base);
    }
    let rest = rest.strip_prefix('/').ok_or(ParseError::NotFound)?;
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<RepoName, ParseError> {
        if k == 0 {
            return Err(ParseError::NotFound);
        }
        Ok(segs[..k].join("/").parse::<RepoName>()?)
    };
    if n >= 3 && segs[n - 3..] == ["blobs", "uploads", ""] {
        return Ok(Endpoint::Upload(name(n - 3)?, None));
    }
    if n >= 3 && segs[n - 3..n - 1] == ["blobs", "uploads"] {
        return Ok(Endpoint::Upload(name(n - 3)?, Some(segs[n - 1].to_owned())));
    }
    if n >= 2 && segs[n - 2..] == ["blobs", "uploads"] {
        return Ok(Endpoint::Upload(name(n - 2)?, None));
    }
    if n >= 2 && segs[n - 2..] == ["tags", "list"] {
        return Ok(Endpoint::Tags(name(n - 2)?));
    }
    if n < 2 {
        return Err(ParseError::NotFound);
    }
    let last = segs[n - 1];
    match segs[n - 2] {
        "manifests" => Ok(Endpoint::Manifest(name(n - 2)?, last.parse()?)),
        "blobs" => Ok(Endpoint::Blob(name(n - 2)?, last.parse()?)),
        "referrers" => Ok(Endpoint::Referrers(name(n - 2)?, last.parse()?)),
        _ => Err(ParseError::NotFound),
    }
}

/// What kind of request `path` is, for metrics and logs: a look at the trailing segments only,
/// without validating names (cheap enough for every request).
pub fn kind(path: &str) -> Kind {
    if path == "/token" {
        return Kind::Token;
    }
    let Some(rest) = path.strip_prefix("/v2") else {
        return Kind::Other;
    };
    if rest.is_empty() || rest == "/" {
        return Kind::Base;
    }
    if rest == "/_catalog" {
        return Kind::Catalog;
    }
    let mut segs = rest.rsplit('/');
    let (last, second, third) = (segs.next(), segs.next(), segs.next());
    match (third, second, last) {
        (Some("blobs"), Some("uploads"), _) | (_, Some("blobs"), Some("uploads")) => Kind::Upload,
        (_, Some("tags"), Some("list")) => Kind::Tags,
        (_, Some("manifests"), _) => Kind::Manifest,
        (_, Some("blobs"), _) => Kind::Blob,
        (_, Some("referrers"), _) => Kind::Referrers,
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_paths() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (path, want) in [
            ("/v2/", Kind::Base),
            ("/v2", Kind::Base),
            ("/v2/_catalog", Kind::Catalog),
            ("/v2/a/b/tags/list", Kind::Tags),
            ("/v2/a/manifests/latest", Kind::Manifest),
            ("/v2/manifests/blobs/manifests/v1", Kind::Manifest),
            (&format!("/v2/a/blobs/{d}"), Kind::Blob),
            ("/v2/a/blobs/uploads/", Kind::Upload),
            ("/v2/a/blobs/uploads", Kind::Upload),
            ("/v2/a/blobs/uploads/abc", Kind::Upload),
            (&format!("/v2/a/referrers/{d}"), Kind::Referrers),
            ("/token", Kind::Token),
            ("/metrics", Kind::Other),
            ("/ui/repo", Kind::Other),
            ("/v2/x", Kind::Other),
        ] {
            assert_eq!(kind(path), want, "{path}");
        }
    }

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_endpoint() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse("/v2/"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Endpoint::Catalog));
        assert_eq!(parse("/v2/a/b/c/d/e/tags/list"), Ok(Endpoint::Tags(repo("a/b/c/d/e"))));
        assert_eq!(
            parse("/v2/library/alpine/manifests/latest"),
            Ok(Endpoint::Manifest(repo("library/alpine"), "latest".parse().unwrap()))
        );
        assert_eq!(
            parse(&format!("/v2/x/blobs/{d}")),
            Ok(Endpoint::Blob(repo("x"), d.parse().unwrap()))
        );
        assert_eq!(parse("/v2/x/blobs/uploads/"), Ok(Endpoint::Upload(repo("x"), None)));
        assert_eq!(
            parse("/v2/x/y/blobs/uploads/abc"),
            Ok(Endpoint::Upload(repo("x/y"), Some("abc".into())))
        );
        assert_eq!(
            parse(&format!("/v2/x/referrers/{d}")),
            Ok(Endpoint::Referrers(repo("x"), d.parse().unwrap()))
        );
    }

    #[test]
    fn keywords_inside_names_are_fine() {
        assert_eq!(
            parse("/v2/manifests/blobs/manifests/v1"),
            Ok(Endpoint::Manifest(repo("manifests/blobs"), "v1".parse().unwrap()))
        );
    }

    #[test]
    fn refuses_traversal_and_junk() {
        for p in [
            "/v2/../etc/manifests/x",
            "/v2/%2e%2e/manifests/x",
            "/v2//abs/manifests/x",
            "/v2/a/manifests/..%2f",
        ] {
            assert!(matches!(parse(p), Err(ParseError::Invalid(_))), "{p}");
        }
        for p in ["/v3/", "/v2/x", "/v2/x/unknown/y", "/v2/manifests/x", "/other"] {
            assert_eq!(parse(p), Err(ParseError::NotFound), "{p}");
        }
    }
}
