//! An htpasswd file of bcrypt entries (`htpasswd -B`), as registry:2 uses. Verification is
//! bcrypt's constant-time comparison; an unknown user is checked against a dummy hash so the
//! answer takes as long as for a known one. The caller bounds and schedules the work (see
//! `login.rs`): bcrypt is slow on purpose.

use std::collections::HashMap;
use std::path::Path;

/// The bcrypt cost of an entry (`$2y$05$…` → 5).
fn cost_of(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// A real hash at the file's own cost, so an unknown user costs the same bcrypt work as a
    /// known one.
    dummy: String,
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
        Ok(Htpasswd { users, dummy })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s: bcrypt, on the calling (blocking) thread.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let hash = self.users.get(user).unwrap_or(&self.dummy);
        bcrypt::verify(password, hash).unwrap_or(false) && self.users.contains_key(user)
    }
}
