//! An htpasswd file of bcrypt entries (`htpasswd -B`), as registry:2 uses. Verification is
//! bcrypt's constant-time comparison; an unknown user is checked against a dummy hash so the
//! answer takes as long as for a known one. Successful checks are remembered (by a SHA-256 of the
//! credentials) so a push does not pay bcrypt's cost on every request.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::oci::Digest;

/// The bcrypt cost of an entry (`$2y$05$…` → 5).
fn cost_of(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}
/// Remembered successful verifications; cleared when full.
const CACHE_LIMIT: usize = 4096;

#[derive(Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// A real hash at the file's own cost, so an unknown user costs the same bcrypt work as a
    /// known one.
    dummy: String,
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
        let cost = users.values().find_map(|h| cost_of(h)).unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = bcrypt::hash("no such user", cost).map_err(std::io::Error::other)?;
        Ok(Htpasswd {
            users,
            dummy,
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
        let known = self.users.get(user).cloned();
        let hash = known.clone().unwrap_or_else(|| self.dummy.clone());
        let password = password.to_owned();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(&password, &hash).unwrap_or(false) && known.is_some())
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
