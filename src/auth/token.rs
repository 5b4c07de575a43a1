//! Bearer tokens: compact JWTs signed with HMAC-SHA256 under the configured key, carrying the
//! access they grant (the Docker token format: `access: [{type, name, actions}]`).
//!
//! Hand-written on `hmac` + `sha2` + `base64` rather than a JWT crate: berth only signs and checks
//! its own HS256 tokens, and the JWT crates bring RSA and elliptic-curve stacks that would double
//! the build for nothing used here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::clock::unix_now;

/// One grant: `{"type":"repository","name":"team/app","actions":["pull","push"]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user; empty for an anonymous token.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    #[serde(default)]
    pub access: Vec<Grant>,
}

pub struct Signer {
    key: Vec<u8>,
    service: String,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl Signer {
    pub fn new(key: Vec<u8>, service: String) -> Signer {
        Signer { key, service }
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// A token for `user` (empty: anonymous) granting `access`, valid for `ttl` seconds.
    pub fn issue(&self, user: &str, access: Vec<Grant>, ttl: u64) -> String {
        let now = unix_now();
        let claims = Claims {
            iss: "berth".into(),
            sub: user.into(),
            aud: self.service.clone(),
            // A configured TTL may be anything up to u64::MAX seconds: such a token never expires.
            exp: now.saturating_add(ttl),
            nbf: now.saturating_sub(5),
            iat: now,
            access,
        };
        let payload = serde_json::to_vec(&claims).expect("claims serialise");
        let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    /// The claims of a token this signer issued, if it verifies and is in date for this service.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, payload) = signing_input.split_once('.')?;
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&B64.decode(signature).ok()?).ok()?; // constant-time comparison
        if B64.decode(header).ok()? != HEADER.as_bytes() {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        let now = unix_now();
        (claims.aud == self.service && claims.nbf <= now && now < claims.exp).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_verifies_and_rejects_tampering() {
        let signer = Signer::new(b"secret".to_vec(), "berth".into());
        let grant = Grant {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        };
        let token = signer.issue("alice", vec![grant.clone()], 60);
        let claims = signer.verify(&token).expect("valid");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.access, vec![grant]);

        let other = Signer::new(b"other".to_vec(), "berth".into());
        assert!(other.verify(&token).is_none(), "wrong key");
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged_payload =
            B64.encode(br#"{"iss":"berth","sub":"root","aud":"berth","exp":99999999999,"nbf":0,"iat":0,"access":[]}"#);
        let forged = format!(
            "{}.{forged_payload}.{}",
            head.split('.').next().unwrap(),
            token.rsplit_once('.').unwrap().1
        );
        assert!(signer.verify(&forged).is_none(), "payload swapped");
        let expired = signer.issue("alice", vec![], 0);
        assert!(signer.verify(&expired).is_none(), "expired");
        assert!(
            Signer::new(b"secret".to_vec(), "elsewhere".into())
                .verify(&token)
                .is_none(),
            "other audience"
        );
    }

    /// Found by the config fuzz target: `token_ttl = "18446744073709551615s"` made every issued
    /// token overflow its expiry (a panic per `/token` request in debug builds; in release, a
    /// wrapped expiry in the past, so no login ever worked).
    #[test]
    fn a_ttl_up_to_u64_max_issues_a_token_that_verifies() {
        let signer = Signer::new(b"secret".to_vec(), "berth".into());
        let token = signer.issue(
            "alice",
            vec![],
            humantime::parse_duration("18446744073709551615s").unwrap().as_secs(),
        );
        let claims = signer.verify(&token).expect("verifies");
        assert_eq!((claims.sub.as_str(), claims.exp), ("alice", u64::MAX));
    }
}
