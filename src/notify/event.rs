//! The registry:2 notification event, field for field, so receivers written for registry:2 (and
//! its `application/vnd.docker.distribution.events.v1+json` envelope) read berth's events as they
//! are.

use serde::Serialize;

/// The media type of an envelope `{"events": [...]}`.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// The media type registry:2 reports for blobs (their real type is in the manifest only).
pub const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Push,
    Pull,
    Delete,
    /// berth's own: a manifest or blob fetched from an upstream and stored in the cache.
    Fill,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Pull => "pull",
            Action::Delete => "delete",
            Action::Fill => "fill",
        }
    }
}

/// One event, as registry:2 writes it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: String,
    /// RFC 3339 with nanoseconds, UTC.
    pub timestamp: String,
    pub action: Action,
    pub target: Target,
    pub request: Request,
    pub actor: Actor,
    pub source: Source,
}

/// The manifest or blob (or, for a tag delete, the tag) the event is about.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Target {
    #[serde(rename = "mediaType", skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// registry:2 repeats the size here.
    #[serde(skip_serializing_if = "is_zero")]
    pub length: u64,
    pub repository: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The client request behind the event; empty for a cache fill, which serves many requests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Request {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub method: String,
    pub useragent: String,
}

/// Who did it: the logged-in user; empty for anonymous clients and cache fills.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Which berth sent it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Source {
    /// `hostname:port`.
    pub addr: String,
    /// New at each start.
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

/// The request body of one delivery.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub events: &'a [Event],
}
