//! berth's own base URL as the client reached it: the scheme and authority that go into the token
//! realm of challenges and into notification target URLs.
//!
//! The authority is the request's: HTTP/2 carries it in `:authority` (the URI's authority in
//! hyper), HTTP/1.1 in `Host`. Behind a reverse proxy, `X-Forwarded-Host` and `X-Forwarded-Proto`
//! name what the client used, but anyone can send them, so they count only when
//! `[server] trust_forwarded_headers` says a trusted proxy sets them. Every candidate must parse
//! as a URI authority, so no header can smuggle a quote or a comma into a challenge.

use axum::http::request::Parts;
use axum::http::uri::Authority;
use axum::http::{HeaderMap, header};

const FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// `http(s)://host[:port]` of this request.
pub fn base_url(parts: &Parts, tls: bool, trust_forwarded: bool) -> String {
    let forwarded = |name: &str| trust_forwarded.then(|| first(&parts.headers, name)).flatten();
    let scheme = match forwarded(FORWARDED_PROTO) {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ if tls => "https",
        _ => "http",
    };
    let host = forwarded(FORWARDED_HOST)
        .and_then(authority)
        .or_else(|| parts.uri.authority().map(Authority::to_string))
        .or_else(|| first(&parts.headers, header::HOST.as_str()).and_then(authority))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{scheme}://{host}")
}

/// The first value of a header that may list several (`a, b`), trimmed.
fn first<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let value = headers.get(name)?.to_str().ok()?;
    value.split(',').next().map(str::trim).filter(|v| !v.is_empty())
}

/// `text` when it is a plain `host[:port]` (no user info).
fn authority(text: &str) -> Option<String> {
    let a: Authority = text.parse().ok()?;
    (!a.as_str().contains('@')).then(|| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut r = Request::builder().uri(uri);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap().into_parts().0
    }

    #[test]
    fn authority_then_host_then_trusted_forwarded_headers() {
        // HTTP/2: the URI carries :authority and there is no Host header.
        let h2 = parts("https://reg.example:5443/v2/", &[]);
        assert_eq!(base_url(&h2, true, false), "https://reg.example:5443");
        let h1 = parts("/v2/", &[("host", "127.0.0.1:5000")]);
        assert_eq!(base_url(&h1, false, false), "http://127.0.0.1:5000");
        let proxied = parts(
            "/v2/",
            &[
                ("host", "127.0.0.1:5000"),
                ("x-forwarded-host", "registry.example.com, inner"),
                ("x-forwarded-proto", "https"),
            ],
        );
        assert_eq!(base_url(&proxied, false, false), "http://127.0.0.1:5000", "untrusted");
        assert_eq!(base_url(&proxied, false, true), "https://registry.example.com");
        let hostile = parts("/v2/", &[("host", "a\"b"), ("x-forwarded-host", "x@evil")]);
        assert_eq!(base_url(&hostile, false, true), "http://localhost");
    }
}
