//! Upstream authentication: parse `WWW-Authenticate` challenges, fetch Bearer tokens from the
//! realm (with Basic credentials when configured), and cache them per scope until they expire.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::Secret;

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// The challenge berth can answer from a `WWW-Authenticate` value: the first `Bearer` with a
/// realm, else `Basic`. The value may list several challenges, and quoted values may hold commas
/// (scopes like `repository:a:pull,push`) and escapes; `http-auth` parses RFC 9110 syntax. What
/// parses before a syntax error still counts, as registries' headers are not always tidy.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let challenges: Vec<_> = http_auth::ChallengeParser::new(header).map_while(Result::ok).collect();
    let param = |c: &http_auth::ChallengeRef, name: &str| {
        c.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_unescaped())
    };
    let bearer = challenges
        .iter()
        .filter(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        .find_map(|c| {
            Some(Challenge::Bearer {
                realm: param(c, "realm")?,
                service: param(c, "service"),
                scope: param(c, "scope"),
            })
        });
    bearer.or_else(|| {
        challenges
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
            .then_some(Challenge::Basic)
    })
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Tokens cached per (realm, service, scope).
#[derive(Default)]
pub struct Tokens {
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

/// Spec default lifetime when the token service does not say.
const DEFAULT_TOKEN_TTL: u64 = 60;

impl Tokens {
    pub fn get(&self, key: &str) -> Option<String> {
        let cache = self.cache.lock();
        cache
            .get(key)
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(t, _)| t.clone())
    }

    /// Fetch a token for `challenge` and cache it under `key`.
    pub async fn fetch(
        &self,
        http: &reqwest::Client,
        key: &str,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        credentials: Option<&(String, Secret)>,
    ) -> Result<String, String> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| format!("bad token realm {realm:?}: {e}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = service {
                q.append_pair("service", service);
            }
            if let Some(scope) = scope {
                q.append_pair("scope", scope);
            }
        }
        let mut request = http.get(url);
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(&password.0));
        }
        let response = request.send().await.map_err(|e| format!("token request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("token service answered {}", response.status()));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| format!("token response is not JSON: {e}"))?;
        let token = body.token.or(body.access_token).ok_or("token response has no token")?;
        // Renew a little early so a token never expires between the check and its use.
        let ttl = body.expires_in.unwrap_or(DEFAULT_TOKEN_TTL).max(10);
        let expires = Instant::now() + Duration::from_secs(ttl - ttl / 10);
        self.cache.lock().insert(key.to_owned(), (token.clone(), expires));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="no realm""#), None);
    }

    #[test]
    fn reads_quoted_commas_escapes_and_several_challenges() {
        let bearer = |scope: &str| {
            Some(Challenge::Bearer {
                realm: "https://r/token".into(),
                service: None,
                scope: Some(scope.into()),
            })
        };
        // Spaces after commas, upper-case names, a comma and an escaped quote inside a value.
        assert_eq!(
            parse_challenge(r#"bearer Realm="https://r/token", SCOPE="repository:a,b:pull,push""#),
            bearer("repository:a,b:pull,push")
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://r/token",scope="x\"y""#),
            bearer(r#"x"y"#)
        );
        // Several challenges in one value: Bearer wins wherever it stands, Basic is the fallback.
        assert_eq!(
            parse_challenge(r#"Basic realm="b", Bearer realm="https://r/token",scope="s""#),
            bearer("s")
        );
        assert_eq!(
            parse_challenge(r#"Negotiate, Basic realm="b, c""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"Bearer service="no realm", Basic realm="b""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge(""), None);
    }
}
