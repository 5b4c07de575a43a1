//! Access rules: which users and groups may pull, push or delete in which repositories.

use std::collections::HashMap;

use crate::config::AuthConfig;
use crate::oci::pattern::matches;

/// A set of actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions(u8);

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pull = 1,
    Push = 2,
    Delete = 4,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);

    pub fn with(self, a: Action) -> Actions {
        Actions(self.0 | a as u8)
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & a as u8 != 0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        [Action::Pull, Action::Push, Action::Delete]
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

struct Rule {
    pattern: String,
    users: Vec<String>,
    groups: Vec<String>,
    actions: Actions,
}

pub struct Rules {
    rules: Vec<Rule>,
    groups_of: HashMap<String, Vec<String>>,
    anonymous_pull: bool,
}

impl Rules {
    pub fn new(config: &AuthConfig) -> Result<Rules, String> {
        let mut groups_of: HashMap<String, Vec<String>> = HashMap::new();
        for (group, members) in &config.groups {
            for m in members {
                groups_of.entry(m.clone()).or_default().push(group.clone());
            }
        }
        let rules = config
            .access
            .iter()
            .map(|r| {
                let actions = r.actions.iter().try_fold(Actions::NONE, |acc, a| {
                    Action::parse(a)
                        .map(|a| acc.with(a))
                        .ok_or_else(|| format!("auth.access: unknown action {a:?} (pull, push, delete)"))
                })?;
                Ok(Rule {
                    pattern: r.repository.clone(),
                    users: r.users.clone(),
                    groups: r.groups.clone(),
                    actions,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Rules {
            rules,
            groups_of,
            anonymous_pull: config.anonymous_pull,
        })
    }

    /// What `user` (None: not logged in) may do in `repo`, which caches an upstream when `proxied`.
    pub fn allowed(&self, user: Option<&str>, repo: &str, proxied: bool) -> Actions {
        let mut allowed = Actions::NONE;
        if proxied && (self.anonymous_pull || user.is_some()) {
            allowed = allowed.with(Action::Pull);
        }
        if user.is_some() && self.rules.is_empty() {
            return Actions::ALL; // no rules: any logged-in user may do anything, as registry:2
        }
        let groups = user
            .and_then(|u| self.groups_of.get(u))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for rule in self.rules.iter().filter(|r| matches(&r.pattern, repo)) {
            let named = match user {
                Some(u) => {
                    rule.users.iter().any(|x| x == u || x == "*") || rule.groups.iter().any(|g| groups.contains(g))
                }
                None => rule.users.iter().any(|x| x == "anonymous"),
            };
            if named {
                allowed = allowed.union(rule.actions);
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessRule;

    #[test]
    fn rules_grant_by_user_group_and_anonymous() {
        let mut config = AuthConfig::default();
        config.groups.insert("devs".into(), vec!["bob".into()]);
        config.access = vec![
            AccessRule {
                repository: "team/*".into(),
                users: vec!["alice".into()],
                groups: vec![],
                actions: vec!["pull".into(), "push".into()],
            },
            AccessRule {
                repository: "team/*".into(),
                users: vec![],
                groups: vec!["devs".into()],
                actions: vec!["pull".into()],
            },
            AccessRule {
                repository: "public/*".into(),
                users: vec!["anonymous".into()],
                groups: vec![],
                actions: vec!["pull".into()],
            },
        ];
        let rules = Rules::new(&config).unwrap();
        assert!(rules.allowed(Some("alice"), "team/app", false).contains(Action::Push));
        assert!(!rules.allowed(Some("alice"), "team/app", false).contains(Action::Delete));
        assert!(rules.allowed(Some("bob"), "team/app", false).contains(Action::Pull));
        assert!(!rules.allowed(Some("bob"), "team/app", false).contains(Action::Push));
        assert_eq!(rules.allowed(Some("carol"), "team/app", false), Actions::NONE);
        assert_eq!(rules.allowed(None, "team/app", false), Actions::NONE);
        assert!(rules.allowed(None, "public/x", false).contains(Action::Pull));
        assert!(
            rules.allowed(None, "library/alpine", true).contains(Action::Pull),
            "anonymous pulls of mirrored content"
        );
        config.anonymous_pull = false;
        assert_eq!(
            Rules::new(&config).unwrap().allowed(None, "library/alpine", true),
            Actions::NONE
        );
    }
}
