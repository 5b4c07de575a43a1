//! Repository name patterns, as written in `[private] namespaces`, `[[auth.access]] repository`
//! and export filters: `*` matches any run of characters (`/` included); everything else matches
//! itself. Pure, so every floor above can match names the same way.

/// Whether `name` matches `pattern`. Hand-written: one wildcard does not warrant a glob engine.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| matches(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcard_patterns() {
        assert!(matches("team/*", "team/app"));
        assert!(matches("team/*", "team/a/b"));
        assert!(!matches("team/*", "teams/app"));
        assert!(matches("*", "anything/at/all"));
        assert!(matches("*/app", "x/y/app"));
        assert!(matches("library/alpine", "library/alpine"));
        assert!(!matches("library/alpine", "library/alpine2"));
    }
}
