//! The layering rule, checked: every module imports only from its own floor's module itself or
//! from floors below, never from a peer on the same floor. ARCHITECTURE.md ("Layers") draws the
//! same picture; this test keeps the code and the drawing the same.
//!
//! The scan is textual on purpose (no `syn`): it finds every `crate::<module>` path (and
//! `berth::<module>` in the binary) in `src/`, including the names inside `use crate::{a, b}`,
//! outside comments and `#[cfg(test)]` modules. Tests build whole stacks and may reach any floor;
//! the rule is about what the product depends on.

use std::path::Path;

/// The floors, top to bottom: a name, the floors that may import it (empty: any floor above), and
/// its modules. A module may import from floors below its own; peers on one floor may not import
/// each other (store must not call upstream, api must not call ui), except on the top floor,
/// which is where the parts are wired together and which nothing imports.
const FLOORS: &[(&str, &[&str], &[&str])] = &[
    // The composition root: the binary (`main`, `cli`), the crate root (`lib`: `app`,
    // `install_crypto_provider`), the listener, the batched log writer, and the wiring `berth
    // serve` and the in-process test app share. Only these name concrete backends.
    ("root", &[], &["main", "cli", "lib", "server", "batched_log", "wiring"]),
    // Test infrastructure (`berth::testing`, only with `cfg(test)` or the `testing` feature):
    // launchers of real engines. A floor of its own that nothing in the product imports.
    ("testing", &[], &["testing"]),
    // The HTTP edges: the registry API and the web UI.
    ("edge", &[], &["api", "ui"]),
    // Who may do what. Both edges ask it; it asks nothing above the leaves (its clock is
    // `clock`, its settings `config`).
    ("auth", &[], &["auth"]),
    // What the registry does, garbage collection (`service::gc`) included.
    ("service", &[], &["service"]),
    // The seams the service drives. Only the service (and the root, which builds them) sees
    // them: an edge that reached past the service would bypass its rules.
    (
        "backends",
        &["root", "service"],
        &["store", "upstream", "cache", "coord"],
    ),
    // registry:2 notifications: event types and the webhook sender. The edges describe the
    // event (who, from where) and the service sends it, so it sits below both and is not sealed
    // like the backends; it needs only settings and metrics.
    ("notify", &[], &["notify"]),
    // Typed settings. Sits above `oci` because settings parse repository names and references
    // (`[[prefetch]]`); every floor above may read them.
    ("config", &[], &["config"]),
    // Pure OCI types (digests, names, manifests, media types, name patterns); no I/O.
    ("oci", &[], &["oci"]),
    // Leaves that any floor may use. `metrics` is counted into from everywhere. `clock` is the
    // one wall clock. `sendfile` is a leaf rather than part of `store` or `server` because both
    // use it: `store` registers mapped blob windows with it, and `server` sends them through it,
    // so neither has to know the other.
    ("leaves", &[], &["metrics", "clock", "sendfile"]),
];

struct Violation {
    at: String,
    from: String,
    to: String,
}

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|(_, _, modules)| modules.contains(&module))
}

fn allowed(from: &str, to: &str) -> Result<(), String> {
    let (Some(f), Some(t)) = (floor_of(from), floor_of(to)) else {
        return Err("on no floor: add it to FLOORS".into());
    };
    let (name, only_from, _) = FLOORS[t];
    match (f, t) {
        _ if f < t && !only_from.is_empty() && !only_from.contains(&FLOORS[f].0) => {
            Err(format!("the {name} floor is reached only from {only_from:?}"))
        }
        _ if f < t => Ok(()),
        (0, 0) => Ok(()),
        _ if f == t => Err(format!("a peer on the {name} floor")),
        _ => Err(format!("{} imports upward from the {name} floor", FLOORS[f].0)),
    }
}

/// The top-level module a file under `src/` belongs to.
fn module_of(rel: &str) -> String {
    let first = rel.split('/').next().unwrap_or(rel);
    first.strip_suffix(".rs").unwrap_or(first).to_owned()
}

/// The first segments of the paths that follow `crate::` or `berth::` in `code`.
fn targets(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in ["crate::", "berth::"] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().next_back();
            let quoted = code.len() - rest.len() + i;
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `mycrate::`, not a path from this crate's root
            }
            if code[..quoted].matches('"').count() % 2 == 1 {
                continue; // inside a string, e.g. a tracing target
            }
            if let Some(group) = rest.strip_prefix('{') {
                found.extend(group_heads(group));
            } else {
                let head = ident(rest);
                // `crate::name!` is a macro exported at the crate root, not an import from `lib`.
                if !rest[head.len()..].starts_with('!') {
                    found.push(head);
                }
            }
        }
    }
    found.retain(|t| !t.is_empty());
    found
}

/// The first segment of each path in a `{a, b::c, d::{e, f}}` group (its opening brace already
/// taken).
fn group_heads(group: &str) -> Vec<String> {
    let (mut heads, mut depth, mut start) = (Vec::new(), 0usize, true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && !c.is_whitespace() => {
                heads.push(ident(&group[i..]));
                start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The product code of one file, line by line: comments and `#[cfg(test)]` modules blanked out.
fn product_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut test_depth: Option<i64> = None;
    let mut pending_test = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let trimmed = code.trim();
        if let Some(depth) = &mut test_depth {
            *depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            if *depth <= 0 {
                test_depth = None;
            }
            continue;
        }
        if trimmed == "#[cfg(test)]" {
            pending_test = true;
            continue;
        }
        if pending_test && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
            test_depth = Some(1);
            pending_test = false;
            continue;
        }
        if !trimmed.starts_with("#[") {
            pending_test = false;
        }
        lines.push((n + 1, code.to_owned()));
    }
    lines
}

fn scan(src: &Path) -> Vec<Violation> {
    let modules: Vec<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| module_of(&e.unwrap().file_name().to_string_lossy()))
        .collect();
    let mut found = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
            // `#[cfg(test)] mod tests;` files: tests, like inline test modules.
            // This file names paths in its own test data.
            if !rel.ends_with(".rs") || rel.ends_with("/tests.rs") || rel == "layering.rs" {
                continue;
            }
            let from = module_of(&rel);
            let binary = from == "main" || from == "cli";
            let text = std::fs::read_to_string(&path).unwrap();
            let lines = product_lines(&text);
            for (i, (n, code)) in lines.iter().enumerate() {
                // A `use crate::{` group may run over several lines.
                let mut statement = code.clone();
                if code.contains("::{") && !code.contains('}') {
                    for (_, next) in &lines[i + 1..] {
                        statement.push_str(next);
                        if next.contains('}') {
                            break;
                        }
                    }
                }
                for to in targets(&statement) {
                    // In the binary, `crate::` is the binary's root; `berth::x` is the library.
                    let to = match modules.contains(&to) {
                        true => to,
                        false if binary => "main".to_owned(),
                        false => "lib".to_owned(),
                    };
                    if to == from || allowed(&from, &to).is_ok() {
                        continue;
                    }
                    found.push(Violation {
                        at: format!("src/{rel}:{n}"),
                        from: from.clone(),
                        to,
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| a.at.cmp(&b.at));
    found
}

#[test]
fn every_import_points_down_the_floors() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let violations = scan(&src);
    let mut report = Vec::new();
    for v in &violations {
        let why = allowed(&v.from, &v.to).unwrap_err();
        report.push(format!("{}: {} -> {} ({why})", v.at, v.from, v.to));
    }
    assert!(report.is_empty(), "imports against the floors:\n{}", report.join("\n"));
}

#[test]
fn every_top_level_module_is_on_a_floor() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let unplaced: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| module_of(&e.unwrap().file_name().to_string_lossy()))
        .filter(|m| m != "layering" && floor_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules on no floor in src/layering.rs: {unplaced:?}"
    );
}

#[test]
fn the_scan_sees_grouped_and_inline_paths_and_skips_comments_and_tests() {
    let text = "use crate::{store, oci::{Digest, Tag}};\n\
                // crate::ui in a comment\n\
                let x = crate::upstream::f(mycrate::y, \"crate::api\");\n\
                crate::suite_macro!(x);\n\
                #[cfg(test)]\n\
                mod tests {\n    use crate::api;\n    fn f() { crate::ui::g(); }\n}\n\
                use berth::cache;\n";
    let found: Vec<(usize, Vec<String>)> = product_lines(text)
        .into_iter()
        .map(|(n, code)| (n, targets(&code)))
        .filter(|(_, t)| !t.is_empty())
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![(1, s(&["store", "oci"])), (3, s(&["upstream"])), (10, s(&["cache"]))]
    );
    assert!(allowed("store", "upstream").is_err(), "peers on the backends floor");
    assert!(allowed("api", "service").is_ok());
    assert!(
        allowed("api", "store").is_err(),
        "only the service reaches the backends"
    );
    assert!(allowed("main", "store").is_ok(), "the root builds the backends");
    assert!(allowed("service", "api").is_err());
    assert!(allowed("oci", "metrics").is_ok());
    assert!(allowed("metrics", "oci").is_err());
}
