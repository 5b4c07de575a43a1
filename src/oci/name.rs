//! Repository names, tags and references, validated against the distribution spec's grammar.
//!
//! Hand-written rather than a regex: the grammar is small, and a byte loop makes the "no path
//! traversal can get through" argument easy to read.

use std::fmt;
use std::str::FromStr;

use super::Digest;

/// Why a name, tag or digest was refused. The payload is the offending input, cut to a safe length.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid repository name {0:?}")]
    Repo(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid digest {0:?}")]
    Digest(String),
}

/// Longest repository name accepted, as in the reference registry.
const MAX_REPO_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

fn truncated(s: &str) -> String {
    s.chars().take(200).collect()
}

/// A repository name such as `library/alpine` or `a/b/c/d/e`:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &[u8]) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (c.first(), c.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Separators: one '.', one or two '_', or any run of '-'; each between alphanumerics.
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            b if alnum(b) => i += 1,
            b'.' => {
                if !alnum(c[i + 1]) {
                    return false;
                }
                i += 1;
            }
            b'_' => {
                let run = c[i..].iter().take_while(|&&b| b == b'_').count();
                if run > 2 || !alnum(c[i + run]) {
                    return false;
                }
                i += run;
            }
            b'-' => {
                let run = c[i..].iter().take_while(|&&b| b == b'-').count();
                if !alnum(c[i + run]) {
                    return false;
                }
                i += run;
            }
            _ => return false,
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.len() > MAX_REPO_LEN || !s.split('/').all(|c| valid_component(c.as_bytes())) {
            return Err(NameError::Repo(truncated(s)));
        }
        Ok(RepoName(s.to_owned()))
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_TAG_LEN
            && word(bytes[0])
            && bytes[1..].iter().all(|&b| word(b) || b == b'.' || b == b'-');
        if !ok {
            return Err(NameError::Tag(truncated(s)));
        }
        Ok(Tag(s.to_owned()))
    }
}

/// What a manifest URL names: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.contains(':') {
            s.parse().map(Reference::Digest)
        } else {
            s.parse().map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t.as_str()),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

/// Parse an image reference as users write it: `repo:tag` or `repo@digest`. A bare `repo` is an
/// error, not `repo:latest`: deleting the wrong image by a guessed tag cannot be undone. Errors
/// are sentences for a person at a terminal.
pub fn parse_image_ref(s: &str) -> Result<(RepoName, Reference), String> {
    let (repo, reference) = if let Some((repo, digest)) = s.split_once('@') {
        (repo, digest.parse().map(Reference::Digest))
    } else if let Some((repo, tag)) = s.rsplit_once(':') {
        (repo, tag.parse().map(Reference::Tag))
    } else {
        return Err(format!(
            "{s} names no tag or digest; write {s}:TAG or {s}@sha256:DIGEST (there is no implicit :latest)"
        ));
    };
    let repo: RepoName = repo.parse().map_err(|e: NameError| format!("{e} in {s}"))?;
    Ok((repo, reference.map_err(|e: NameError| format!("{e} in {s}"))?))
}

macro_rules! string_newtype_fmt {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    )*};
}
string_newtype_fmt!(RepoName, Tag);

/// Serialise a validated newtype as its string form; deserialising validates again, so a corrupt
/// record can never produce an invalid value.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
pub(crate) use serde_via_str;
serde_via_str!(RepoName, Tag);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_of_any_depth() {
        for good in [
            "alpine",
            "library/alpine",
            "a/b/c/d/e",
            "my-org/app_1",
            "a__b",
            "a.b-c---d/x",
            "0",
        ] {
            assert!(good.parse::<RepoName>().is_ok(), "{good} should be accepted");
        }
    }

    #[test]
    fn rejects_traversal_and_malformed_names() {
        let long = "a".repeat(256);
        for bad in [
            "", "..", "../etc", "a/../b", "/abs", "a//b", "a/", "A", "a___b", "-a", "a-", "a.", "a..b", "%2e%2e",
            "a b", "a\0b", &long,
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn validates_tags() {
        assert!("latest".parse::<Tag>().is_ok());
        assert!("_v1.0-rc.1".parse::<Tag>().is_ok());
        assert!("a".repeat(128).parse::<Tag>().is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "..", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn image_references() {
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(parse_image_ref("team/app:1.4").unwrap().1.to_string(), "1.4");
        assert_eq!(parse_image_ref(&format!("team/app@{d}")).unwrap().1.to_string(), d);
        let bare = parse_image_ref("team/app").unwrap_err();
        assert!(bare.contains("no tag or digest"), "{bare}");
        assert!(parse_image_ref("Team/app:1").is_err());
    }

    #[test]
    fn reference_is_tag_or_digest() {
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!("sha256:zz".parse::<Reference>().is_err());
    }
}
