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

/// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`. Quoted values may hold
/// commas (scopes like `repository:a:pull,push`), so this walks the string instead of splitting.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        params.insert(key, value.to_owned());
        s = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
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
}
