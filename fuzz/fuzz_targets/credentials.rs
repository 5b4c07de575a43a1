//! The credentials a client presents: Basic `user:password` and berth's own Bearer tokens. The
//! input is tried as a Basic credential, as a token, and as the claims of a correctly signed
//! token (what `verify` parses once the signature holds, which random tokens never reach).
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use berth::auth::{Signer, decode_basic};
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const KEY: &[u8] = b"fuzz-key";
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn signed(payload: &[u8]) -> String {
    let input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let signer = Signer::new(KEY.to_vec(), "berth".into());
    if let Some(claims) = signer.verify(&signed(data)) {
        assert_eq!(claims.aud, "berth");
        assert!(claims.nbf < claims.exp);
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    assert!(signer.verify(s).is_none(), "an unsigned token verified: {s:?}");
    if let Some((user, password)) = decode_basic(s) {
        assert!(!user.contains(':'), "{user:?}");
        let again = STANDARD.encode(format!("{user}:{password}"));
        assert_eq!(decode_basic(&again), Some((user.clone(), password)));
        // Any user name a client can send round-trips through a token berth issues.
        let claims = signer.verify(&signer.issue(&user, vec![], 60)).expect("fresh token verifies");
        assert_eq!(claims.sub, user);
    }
});
