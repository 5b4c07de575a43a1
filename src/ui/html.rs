//! HTML building blocks: the page layout, and how times, digests and ratios are shown. Markup is
//! built with `maud`, which escapes every value it interpolates, so a missed escape cannot happen;
//! only the constant style sheet goes in unescaped.

use std::time::{Duration, UNIX_EPOCH};

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::oci::Digest;

/// `path?k=v&...` with the values percent-encoded (the markup escapes it again in an attribute).
pub fn url(path: &str, params: &[(&str, &str)]) -> String {
    let mut out = path.to_owned();
    let mut sep = '?';
    for (k, v) in params {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(v.as_bytes()));
        sep = '&';
    }
    out
}

/// `2026-01-02 03:04 UTC`, with how long ago as the tooltip.
pub fn time(unix: u64, now: u64) -> Markup {
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string();
    let shown = at.get(..16).unwrap_or(&at).replace('T', " ");
    html! { time datetime=(at) title=(ago(unix, now)) { (shown) " UTC" } }
}

/// `5 minutes ago`
pub fn ago(unix: u64, now: u64) -> String {
    let secs = now.saturating_sub(unix);
    let (n, unit) = match secs {
        0..60 => return "just now".into(),
        60..3600 => (secs / 60, "minute"),
        3600..86_400 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// A digest cut to `sha256:` and 12 hex digits, the whole one in the tooltip.
pub fn digest(d: &Digest) -> Markup {
    let full = d.to_string();
    let short: String = full.chars().take(d.algorithm().as_str().len() + 1 + 12).collect();
    html! { code title=(full) { (short) "…" } }
}

/// A percentage with one decimal, or `–` without data.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "–".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

const STYLE: &str = r#"
:root{--fg:#1d2430;--muted:#5f6b7a;--line:#e3e7ed;--bg:#f6f8fa;--card:#fff;--accent:#0b6bcb;--private:#6f42c1;--cached:#1a7f37;--danger:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:center;gap:1.5rem;padding:.75rem 2rem;background:#14202e;color:#fff}
header a{color:#cfe3ff;text-decoration:none}
header .brand{font-weight:700;font-size:1.15rem;color:#fff;letter-spacing:.02em}
header .who{margin-left:auto;color:#aab8c8;font-size:.9rem}
main{max-width:72rem;margin:0 auto;padding:1.5rem 2rem 3rem}
h1{font-size:1.5rem;margin:.25rem 0 1rem;word-break:break-all}
h1 .muted{font-size:1rem;font-weight:400}
h2{font-size:1.1rem;margin:2rem 0 .75rem}
a{color:var(--accent)}
code{font:13px/1.4 ui-monospace,SFMono-Regular,"DejaVu Sans Mono",Menlo,monospace}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(14rem,1fr));gap:1rem;margin-bottom:1.5rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:1rem 1.25rem}
.card .label{color:var(--muted);font-size:.85rem;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:1.8rem;font-weight:650;margin:.2rem 0}
.card .sub{color:var(--muted);font-size:.85rem}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden}
th,td{text-align:left;padding:.55rem .9rem;border-bottom:1px solid var(--line);vertical-align:middle}
th{background:#eef2f6;font-size:.8rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
tr:last-child td{border-bottom:0}
td.num{text-align:right;white-space:nowrap}
.badge{display:inline-block;padding:.05rem .55rem;border-radius:1rem;font-size:.8rem;font-weight:600;color:#fff}
.badge.private{background:var(--private)}
.badge.cached{background:var(--cached)}
.badge.missing{background:#8c959f}
.badge.online{background:#1a7f37}
.badge.offline{background:#cf222e}
.search{display:flex;gap:.5rem;margin:0 0 1rem}
.search input{flex:1;max-width:28rem;padding:.45rem .7rem;border:1px solid #c6ccd4;border-radius:6px;font-size:1rem}
button{padding:.45rem .9rem;border:1px solid #c6ccd4;border-radius:6px;background:#fff;font-size:.95rem;cursor:pointer}
button.danger{color:var(--danger);border-color:#f1b4b8;padding:.2rem .7rem;font-size:.85rem}
form.inline{margin:0}
.note{padding:.7rem 1rem;border-radius:6px;margin:0 0 1rem;border:1px solid}
.note.warn{background:#fff8c5;border-color:#e6d27a}
.note.ok{background:#dafbe1;border-color:#8fd3a0}
.note.err{background:#ffebe9;border-color:#f1b4b8}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1.5rem;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:1rem 1.25rem;margin:0}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;word-break:break-all}
.muted{color:var(--muted)}
.pager{margin-top:1rem}
footer{max-width:72rem;margin:0 auto;padding:0 2rem 2rem;color:var(--muted);font-size:.85rem}
footer a{color:var(--muted)}
"#;

/// A whole page around `body`. `user` is shown in the header.
pub fn page(title: &str, user: Option<&str>, auth_on: bool, body: Markup) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · berth" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a.brand href="/ui" { "berth" }
                    nav { a href="/ui" { "Repositories" } }
                    span.who {
                        @match (user, auth_on) {
                            (Some(u), _) => { "signed in as " b { (u) } }
                            (None, false) => "authentication off",
                            (None, true) => {}
                        }
                    }
                }
                main { (body) }
                footer {
                    "berth " (env!("CARGO_PKG_VERSION")) " · " a href="/metrics" { "metrics" }
                    " · " a href="/healthz" { "healthz" } " · " a href="/readyz" { "readyz" }
                }
            }
        }
    };
    page.into_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_their_values() {
        assert_eq!(
            url("/ui/repo", &[("name", "a/b"), ("x", "&<")]),
            "/ui/repo?name=a%2Fb&x=%26%3C"
        );
    }

    #[test]
    fn the_layout_escapes_the_title_and_the_user() {
        let out = page("<script>t</script>", Some("<script>u</script>"), true, html! { "body" });
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;t&lt;/script&gt; · berth"), "{out}");
        assert!(
            out.contains("signed in as <b>&lt;script&gt;u&lt;/script&gt;</b>"),
            "{out}"
        );
        assert!(out.starts_with("<!DOCTYPE html><html lang=\"en\">"), "{out}");
    }

    #[test]
    fn sizes_times_and_ratios_read_well() {
        use bytesize::ByteSize;
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
        assert_eq!(ByteSize(3 << 30).to_string(), "3.0 GiB");
        assert_eq!(ago(100, 100), "just now");
        assert_eq!(ago(0, 120), "2 minutes ago");
        assert_eq!(ago(0, 3600), "1 hour ago");
        assert_eq!(
            time(0, 0).into_string(),
            "<time datetime=\"1970-01-01T00:00:00Z\" title=\"just now\">1970-01-01 00:00 UTC</time>"
        );
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(0, 0), "–");
    }
}
