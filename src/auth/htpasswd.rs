//! An htpasswd file of bcrypt entries (`htpasswd -B`), as registry:2 uses. Verification is
//! bcrypt's constant-time comparison; an unknown user is checked against a dummy hash so the
//! answer takes as long as for a known one. Successful checks are remembered (by a SHA-256 of the
//! credentials) so a push does not pay bcrypt's cost on every request.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::oci::Digest;

/// A real bcrypt hash (cost 10, as `htpasswd -B` writes), made once, so an unknown user costs the
/// same bcrypt work as a known one.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| bcrypt::hash("no such user", 10).expect("bcrypt"))
}
/// Remembered successful verifications; cleared when full.
const CACHE_LIMIT: usize = 4096;

#[derive(Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<Digest>>,
}

impl Htpasswd {
    pub fn load(path: &Path) -> std::io::Result<Htpasswd> {
        let text = std::fs::read_to_string(path)?;
        let mut users = HashMap::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let Some((user, hash)) = line.split_once(':') else {
                continue;
            };
            if hash.starts_with("$2") {
                users.insert(user.to_owned(), hash.to_owned());
            } else {
                tracing::warn!(user, file = %path.display(), "htpasswd entry is not bcrypt; ignored (create it with htpasswd -B)");
            }
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. Runs bcrypt on a blocking thread.
    pub async fn verify(self: &Arc<Self>, user: &str, password: &str) -> bool {
        let key = Digest::sha256_of(format!("{user}\0{password}").as_bytes());
        if self.verified.lock().expect("htpasswd cache").contains(&key) {
            return true;
        }
        let hash = self.users.get(user).cloned();
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let matched = bcrypt::verify(&password, hash.as_deref().unwrap_or_else(|| dummy_hash())).unwrap_or(false);
            matched && hash.is_some()
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut verified = self.verified.lock().expect("htpasswd cache");
            if verified.len() >= CACHE_LIMIT {
                verified.clear();
            }
            verified.insert(key);
        }
        ok
    }
}
