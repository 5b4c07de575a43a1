//! Authentication and authorization: htpasswd (bcrypt) users, Basic or Bearer challenges, the
//! tokens of the built-in `/token` endpoint, and per-repository access rules.
//!
//! Without an htpasswd file, authentication is off and every request is allowed, as with a plain
//! registry:2. Credentials a client presents are checked here and never leave berth: nothing in
//! this module is ever sent upstream.
//!
//! Mirror clients need care (moby#42022): a Docker daemon that is logged in to Docker Hub sends
//! those credentials to its mirror. So a pull of mirrored content with credentials berth does not
//! know is served as an anonymous pull (when anonymous pulls are allowed), not refused.

mod htpasswd;
mod login;
mod rules;
mod throttle;
mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

pub use login::Login;
pub use rules::{Action, Actions};
pub use token::{Claims, Grant, Signer};

use crate::config::{AuthConfig, AuthScheme};
use crate::metrics::Metrics;

/// How long a failed login waits before its 401: slows password guessing to a crawl.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(400);

/// The logged-in user of a request, left in the response's extensions for the access log.
#[derive(Clone, Debug)]
pub struct User(pub String);

/// The client's address as the access middleware found it (the peer, or the trusted
/// `X-Forwarded-For` hop), in a request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub Option<IpAddr>);

/// Who sent a request.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// The logged-in user; `None` for an anonymous client.
    pub user: Option<String>,
    /// With a Bearer token: exactly what the token grants.
    pub grants: Option<Vec<Grant>>,
    /// Credentials were presented and did not verify.
    pub rejected: bool,
    /// Credentials were presented and not checked: too many failed logins from this client or
    /// for this user name. Try again in this many seconds.
    pub throttled: Option<u64>,
}

/// What a request is for.
#[derive(Clone, Debug)]
pub enum Scope<'a> {
    /// `GET /v2/`: the login check.
    Base,
    Catalog,
    Repository {
        name: &'a str,
        action: Action,
        proxied: bool,
    },
}

/// Why a request may not proceed.
#[derive(Debug, Clone)]
pub enum Denied {
    /// 401 with this `WWW-Authenticate` value.
    Challenge(String),
    /// 403: logged in, but not allowed.
    Forbidden(String),
}

pub struct Auth {
    logins: Option<login::Logins>,
    rules: rules::Rules,
    signer: token::Signer,
    scheme: AuthScheme,
    token_ttl: u64,
    service: String,
    realm: String,
    /// Signs the UI's CSRF tokens: derived from `auth.token_key` when one is configured (so
    /// every replica, and the next start, verifies them), else random per process.
    csrf_key: ProcessLocalKey,
}

impl Auth {
    /// Authentication off: every request allowed.
    pub fn disabled() -> Auth {
        Auth::new(&AuthConfig::default()).expect("the default auth config is valid")
    }

    /// Auth as `config` says, counting logins in a metrics registry of its own.
    pub fn new(config: &AuthConfig) -> Result<Auth, String> {
        Auth::with_metrics(config, Arc::new(Metrics::new()))
    }

    /// Auth as `config` says, counting logins in `metrics`.
    pub fn with_metrics(config: &AuthConfig, metrics: Arc<Metrics>) -> Result<Auth, String> {
        let htpasswd = if config.htpasswd.is_empty() {
            None
        } else {
            let file = htpasswd::Htpasswd::load(config.htpasswd.as_ref())
                .map_err(|e| format!("auth.htpasswd {}: {e}", config.htpasswd))?;
            if file.is_empty() {
                return Err(format!(
                    "auth.htpasswd {} has no bcrypt entries (create them with htpasswd -B)",
                    config.htpasswd
                ));
            }
            Some(Arc::new(file))
        };
        let (key, csrf_key) = if config.token_key.is_empty() {
            // Tokens then verify in this process only, until it restarts.
            (ProcessLocalKey::random().bytes().to_vec(), ProcessLocalKey::random())
        } else {
            let key =
                std::fs::read(&config.token_key).map_err(|e| format!("auth.token_key {}: {e}", config.token_key))?;
            let csrf = ProcessLocalKey::derived(&key, b"berth ui csrf");
            (key, csrf)
        };
        let token_ttl = config.token_ttl.as_secs().max(1);
        let bounds = login::Bounds {
            failures_per_ip: config.login_failures_per_ip,
            failures_per_user: config.login_failures_per_user,
            failure_window: config.login_failure_window,
            remember: config.login_cache_ttl,
            concurrent: config.password_checks as usize,
        };
        Ok(Auth {
            logins: htpasswd.map(|h| login::Logins::new(h, bounds, metrics)),
            rules: rules::Rules::new(config)?,
            signer: token::Signer::new(key, config.service.clone()),
            scheme: config.scheme,
            token_ttl,
            service: config.service.clone(),
            realm: config.realm.clone(),
            csrf_key,
        })
    }

    /// The key the UI signs its CSRF tokens with (see the field).
    pub fn csrf_key(&self) -> &ProcessLocalKey {
        &self.csrf_key
    }

    pub fn enabled(&self) -> bool {
        self.logins.is_some()
    }

    /// Check a username and password sent by `client` (the `/token` endpoint's login). A
    /// failure waits first.
    pub async fn login(&self, user: &str, password: &str, client: Option<IpAddr>) -> Login {
        let result = match &self.logins {
            Some(l) => l.check(user, password, client).await,
            None => Login::Failed,
        };
        if result == Login::Failed {
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
        }
        result
    }

    /// Identify the sender of a request, `client`, from its `Authorization` header.
    pub async fn identify(&self, authorization: Option<&str>, client: Option<IpAddr>) -> Identity {
        if !self.enabled() {
            return Identity::default();
        }
        let Some(value) = authorization else {
            return Identity::default();
        };
        let rejected = Identity {
            rejected: true,
            ..Identity::default()
        };
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let Some((user, password)) = decode_basic(credentials) else {
                return rejected;
            };
            return match self.login(&user, &password, client).await {
                Login::Ok => Identity {
                    user: Some(user),
                    ..Identity::default()
                },
                Login::Failed => rejected,
                Login::Throttled { retry_after } => Identity {
                    throttled: Some(retry_after),
                    ..rejected
                },
            };
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return match self.signer.verify(credentials.trim()) {
                Some(claims) => Identity {
                    user: (!claims.sub.is_empty()).then_some(claims.sub),
                    grants: Some(claims.access),
                    ..Identity::default()
                },
                None => rejected,
            };
        }
        rejected
    }

    /// Whether `who` may pull `name` (which caches an upstream when `proxied`): what the
    /// catalog lists. By the rules for the user, not a token's grants: a catalog token grants
    /// only the catalog.
    pub fn may_pull(&self, who: &Identity, name: &str, proxied: bool) -> bool {
        if !self.enabled() {
            return true;
        }
        self.rules
            .allowed(who.user.as_deref(), name, proxied)
            .union(self.rules.allowed(None, name, proxied))
            .contains(Action::Pull)
    }

    /// Decide whether `who` may do what `scope` says. `realm` is the token endpoint to name in a
    /// Bearer challenge when the config does not fix one.
    pub fn authorize(&self, who: &Identity, scope: &Scope, realm: &str) -> Result<(), Denied> {
        if !self.enabled() {
            return Ok(());
        }
        let challenge = |error: bool| Denied::Challenge(self.challenge(scope, realm, error));
        match scope {
            Scope::Base if who.user.is_some() => Ok(()),
            Scope::Base => Err(challenge(who.rejected)),
            Scope::Catalog if who.user.is_some() => Ok(()),
            Scope::Catalog => Err(challenge(who.rejected)),
            Scope::Repository { name, action, proxied } => {
                let anonymous = self.rules.allowed(None, name, *proxied);
                if who.rejected {
                    // Foreign credentials (a Docker Hub login sent to its mirror) pull as anonymous.
                    return if anonymous.contains(*action) {
                        Ok(())
                    } else {
                        Err(challenge(true))
                    };
                }
                let allowed = match &who.grants {
                    Some(grants) => granted(grants, name),
                    None => self.rules.allowed(who.user.as_deref(), name, *proxied),
                };
                if allowed.union(anonymous).contains(*action) {
                    Ok(())
                } else if who.user.is_none() {
                    Err(challenge(false))
                } else {
                    Err(Denied::Forbidden(format!(
                        "{} may not {} {name}",
                        who.user.as_deref().unwrap_or(""),
                        action.as_str()
                    )))
                }
            }
        }
    }

    /// The `WWW-Authenticate` value for `scope`.
    pub fn challenge(&self, scope: &Scope, realm: &str, invalid: bool) -> String {
        match self.scheme {
            AuthScheme::Basic => format!("Basic realm=\"{}\"", self.service),
            AuthScheme::Token => {
                let realm = if self.realm.is_empty() { realm } else { &self.realm };
                let mut value = format!("Bearer realm=\"{realm}\",service=\"{}\"", self.service);
                match scope {
                    Scope::Base => {}
                    Scope::Catalog => value.push_str(",scope=\"registry:catalog:*\""),
                    Scope::Repository { name, action, .. } => {
                        let actions = if *action == Action::Push {
                            "pull,push"
                        } else {
                            action.as_str()
                        };
                        value.push_str(&format!(",scope=\"repository:{name}:{actions}\""));
                    }
                }
                if invalid {
                    value.push_str(",error=\"invalid_token\"");
                }
                value
            }
        }
    }

    /// What `user` may do in `name`, for a token request.
    pub fn allowed(&self, user: Option<&str>, name: &str, proxied: bool) -> Actions {
        if !self.enabled() {
            return Actions::ALL;
        }
        self.rules.allowed(user, name, proxied)
    }

    /// A signed token for `user` with `grants`, and its lifetime in seconds.
    pub fn issue(&self, user: Option<&str>, grants: Vec<Grant>) -> (String, u64) {
        (
            self.signer.issue(user.unwrap_or(""), grants, self.token_ttl),
            self.token_ttl,
        )
    }
}

/// The actions a token grants on repository `name`.
fn granted(grants: &[Grant], name: &str) -> Actions {
    grants
        .iter()
        .filter(|g| g.kind == "repository" && g.name == name)
        .flat_map(|g| g.actions.iter().filter_map(|a| Action::parse(a)))
        .fold(Actions::NONE, Actions::with)
}

/// `user:password` from a Basic credential.
pub fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A 32-byte signing key. [`ProcessLocalKey::random`] makes one that exists in this process
/// only and is gone on restart: signatures made with it (tokens without `auth.token_key`, the
/// UI's CSRF tokens) verify nowhere else. Cluster mode refuses to start without
/// `auth.token_key`, and both keys then come from it ([`ProcessLocalKey::derived`] for the CSRF
/// key), so every replica verifies what any replica signed.
#[derive(Clone)]
pub struct ProcessLocalKey([u8; 32]);

impl ProcessLocalKey {
    /// A key for one `purpose`, derived from `secret` with HMAC-SHA256, so one configured
    /// secret gives independent keys for tokens and forms.
    pub fn derived(secret: &[u8], purpose: &[u8]) -> ProcessLocalKey {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(purpose);
        ProcessLocalKey(mac.finalize().into_bytes().into())
    }

    pub fn random() -> ProcessLocalKey {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        ProcessLocalKey(key)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
