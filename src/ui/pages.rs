//! The pages, rendered from the service's views into HTML with `maud` (every value escaped). No
//! I/O here.

use bytesize::ByteSize;
use maud::{Markup, html};

use super::html::{digest, page, percent, time, url};
use crate::service::{Item, ManifestView, RepoList, RepoSummary, RepoView, Usage};

/// What every page knows about the request.
pub struct Ctx<'a> {
    pub user: Option<&'a str>,
    pub auth_on: bool,
    /// Unix time now.
    pub now: u64,
    /// The `Host` the browser used, for pull commands.
    pub host: &'a str,
}

impl Ctx<'_> {
    fn page(&self, title: &str, body: Markup) -> String {
        page(title, self.user, self.auth_on, body)
    }
}

/// Cache statistics for the home page.
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    /// Body bytes answered from the cache.
    pub saved: u64,
    pub usage: Option<Usage>,
    /// Each upstream's name and whether it is in offline mode.
    pub upstreams: Vec<(String, bool)>,
}

/// A card with each upstream's mode: an operator sees at a glance that a site runs offline.
fn upstreams_card(upstreams: &[(String, bool)]) -> Markup {
    if upstreams.is_empty() {
        return html! {};
    }
    let offline = upstreams.iter().filter(|(_, o)| *o).count();
    let value = match offline {
        0 => "online".to_owned(),
        n if n == upstreams.len() => "offline".to_owned(),
        n => format!("{n} of {} offline", upstreams.len()),
    };
    html! {
        div.card {
            div.label { "Upstreams" }
            div.value { (value) }
            div.sub {
                @for (name, offline) in upstreams {
                    div {
                        (name) " "
                        @if *offline { span.badge.offline { "offline" } } @else { span.badge.online { "online" } }
                    }
                }
            }
        }
    }
}

fn kind_badge(repo: &RepoSummary) -> Markup {
    html! {
        @match (&repo.upstream, repo.private) {
            (_, true) => span.badge.private { "private" },
            (Some(u), false) => { span.badge.cached { "cached" } " " span.muted { "from " (u) } },
            (None, false) => span.badge.cached { "cached" },
        }
    }
}

fn repo_link(name: &str) -> Markup {
    html! { a href=(url("/ui/repo", &[("name", name)])) { (name) } }
}

fn card(label: &str, value: impl std::fmt::Display, sub: Markup) -> Markup {
    html! { div.card { div.label { (label) } div.value { (value) } div.sub { (sub) } } }
}

pub fn home(ctx: &Ctx, stats: &Stats, query: &str, list: &RepoList) -> String {
    let served = stats.hits + stats.misses + stats.stale;
    let (hits, misses, stale) = (stats.hits, stats.misses, stats.stale);
    let body = html! {
        section.cards {
            (card("Cache hit ratio", percent(hits + stale, served),
                html! { (hits) " hits · " (misses) " misses · " (stale) " stale (since start)" }))
            (card("Saved upstream", ByteSize(stats.saved), html! { "served from the cache instead of the upstream" }))
            @match &stats.usage {
                Some(u) => (card("Disk use", ByteSize(u.total().bytes), html! {
                    "private " (ByteSize(u.private.bytes)) " · cached " (ByteSize(u.cached.bytes))
                    " · unreferenced " (ByteSize(u.unreferenced.bytes)) " · " (u.total().blobs) " blobs"
                })),
                None => (card("Disk use", "–", html! { "could not be measured; see the log" })),
            }
            (upstreams_card(&stats.upstreams))
        }
        h1 { "Repositories" }
        form.search method="get" action="/ui" {
            input type="search" name="q" value=(query) placeholder="Search by name" aria-label="Search repositories";
            button type="submit" { "Search" }
        }
        @if list.repos.is_empty() {
            p.muted {
                @if query.is_empty() {
                    "No repositories yet. Push an image or pull one through the mirror."
                } @else {
                    "No repository matches “" (query) "”."
                }
            }
        } @else {
            table {
                thead { tr { th { "Repository" } th { "Kind" } th { "Since" } } }
                tbody {
                    @for r in &list.repos {
                        tr { td { (repo_link(&r.name)) } td { (kind_badge(r)) } td { (time(r.created, ctx.now)) } }
                    }
                }
            }
        }
        @if let Some(next) = &list.next {
            p.pager { a href=(url("/ui", &[("q", query), ("last", next)])) { "Next page →" } }
        }
    };
    ctx.page("Repositories", body)
}

/// A notice shown above a repository's tags after an action.
pub enum Flash<'a> {
    Deleted(&'a str),
}

/// Who may delete here, and the token their delete forms carry.
pub struct Deletion<'a> {
    pub csrf: &'a str,
}

pub fn repo(ctx: &Ctx, view: &RepoView, deletion: Option<Deletion>, flash: Option<Flash>) -> String {
    let name = view.repo.name.as_str();
    let body = html! {
        h1 { (name) " " (kind_badge(&view.repo)) }
        @if let Some(Flash::Deleted(tag)) = flash {
            p class="note ok" { "Deleted tag " b { (tag) } "." }
        }
        @if deletion.is_some() && !ctx.auth_on {
            p class="note warn" {
                "Authentication is off ([auth] htpasswd is empty): anyone who can reach berth can delete \
                 tags here, as through the registry API."
            }
        }
        p.muted { "Pull with " code { "docker pull " (ctx.host) "/" (name) ":TAG" } }
        @if view.tags.is_empty() {
            p.muted { "No tags." }
        } @else {
            table {
                thead {
                    tr {
                        th { "Tag" } th { "Digest" } th { "Content" } th.num { "Size" } th { "Last pulled" }
                        @if deletion.is_some() { th {} }
                    }
                }
                tbody {
                    @for t in &view.tags {
                        tr {
                            td { b { (t.tag) } }
                            td { a href=(url("/ui/manifest", &[("repo", name), ("ref", &t.digest.to_string())])) { (digest(&t.digest)) } }
                            td {
                                @if t.platforms.is_empty() { "image" } @else { "multi-arch: " (t.platforms.join(", ")) }
                            }
                            td.num { @match t.size { Some(size) => (ByteSize(size)), None => "–" } }
                            td { (time(t.last_pulled, ctx.now)) }
                            @if let Some(d) = &deletion {
                                td {
                                    form.inline method="post" action="/ui/delete" {
                                        input type="hidden" name="repo" value=(name);
                                        input type="hidden" name="tag" value=(t.tag);
                                        input type="hidden" name="csrf" value=(d.csrf);
                                        button.danger type="submit" title="Remove this tag (the manifest stays until GC)" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &view.next {
            p.pager { a href=(url("/ui/repo", &[("name", name), ("last", next)])) { "Next page →" } }
        }
        @if let Some(d) = &deletion {
            // Typing the name to confirm stands in for a dialog: the pages run no script.
            h2 { "Remove repository" }
            form method="post" action="/ui/remove" {
                p.muted {
                    "Removes every tag, manifest and link of " (name) "; it leaves the catalog, and the next \
                     garbage collection reclaims blobs nothing else uses. Type the name to confirm."
                }
                input type="hidden" name="repo" value=(name);
                input type="hidden" name="csrf" value=(d.csrf);
                input type="text" name="confirm" autocomplete="off" placeholder=(name) required;
                " "
                button.danger type="submit" { "Remove repository" }
            }
        }
    };
    ctx.page(name, body)
}

fn stored_badge(item: &Item) -> Markup {
    html! {
        @if item.stored { span.badge.cached { "stored" } } @else { span.badge.missing { "not stored" } }
    }
}

pub fn manifest(ctx: &Ctx, view: &ManifestView) -> String {
    let name = view.repo.name.as_str();
    let link = |d: &crate::oci::Digest| url("/ui/manifest", &[("repo", name), ("ref", &d.to_string())]);
    let config_type = view.config.as_ref().map(|c| c.media_type.as_str());
    let artifact_type = view.artifact_type.as_deref().filter(|a| Some(*a) != config_type);
    let layer_rows = view.config.iter().map(|c| ("config".to_owned(), c));
    let layer_rows = layer_rows.chain(view.layers.iter().enumerate().map(|(i, l)| ((i + 1).to_string(), l)));
    let body = html! {
        p.muted { a href=(url("/ui/repo", &[("name", name)])) { "← " (name) } }
        h1 { (name) "@" (digest(&view.digest)) }
        dl.facts {
            dt { "Digest" } dd { code { (view.digest) } }
            dt { "Media type" } dd { code { (view.media_type) } }
            dt { "Manifest size" } dd { (ByteSize(view.size)) }
            dt { "Stored" } dd { (time(view.stored_at, ctx.now)) }
            dt { "Last pulled" } dd { (time(view.last_pulled, ctx.now)) }
            @if let Some(a) = artifact_type {
                dt { "Artifact type" } dd { code { (a) } }
            }
            @if let Some(s) = &view.subject {
                dt { "Subject" } dd { a href=(link(s)) { (digest(s)) } }
            }
            @if view.config.is_some() {
                dt { "Image size" } dd { (ByteSize(view.image_size())) }
            }
        }
        @if !view.platforms.is_empty() {
            h2 { "Platforms (" (view.platforms.len()) ")" }
            table {
                thead {
                    tr { th { "Platform" } th { "Manifest" } th { "Media type" } th.num { "Size" } th { "In store" } }
                }
                tbody {
                    @for p in &view.platforms {
                        tr {
                            td { b { (p.platform.as_deref().unwrap_or("")) } }
                            td {
                                @if p.stored { a href=(link(&p.digest)) { (digest(&p.digest)) } } @else { (digest(&p.digest)) }
                            }
                            td { code { (p.media_type) } }
                            td.num { (ByteSize(p.size)) }
                            td { (stored_badge(p)) }
                        }
                    }
                }
            }
        }
        @if view.config.is_some() || !view.layers.is_empty() {
            h2 { "Layers (" (view.layers.len()) ")" }
            table {
                thead {
                    tr { th { "#" } th { "Digest" } th { "Media type" } th.num { "Size" } th { "In store" } }
                }
                tbody {
                    @for (label, item) in layer_rows {
                        tr {
                            td { (label) }
                            td { (digest(&item.digest)) }
                            td { code { (item.media_type) } }
                            td.num { (ByteSize(item.size)) }
                            td { (stored_badge(item)) }
                        }
                    }
                }
            }
        }
    };
    ctx.page(&format!("{name}@{}", view.digest), body)
}

/// A page that only says something (not found, refused, failed).
pub fn message(ctx: &Ctx, title: &str, text: &str) -> String {
    let body = html! {
        h1 { (title) }
        p class="note err" { (text) }
        p { a href="/ui" { "Back to the repositories" } }
    };
    ctx.page(title, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use crate::service::TagRow;

    const EVIL: &str = r#"<script>alert("x&'y")</script>"#;

    fn ctx() -> Ctx<'static> {
        Ctx {
            user: Some(EVIL),
            auth_on: true,
            now: 0,
            host: EVIL,
        }
    }

    fn summary() -> RepoSummary {
        RepoSummary {
            name: EVIL.into(),
            private: false,
            upstream: Some(EVIL.into()),
            created: 0,
        }
    }

    /// No value reaches the page unescaped: the only `<script` would be one a value brought in.
    fn assert_escaped(page: &str) {
        assert!(!page.contains("<script"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(&quot;x&amp;'y&quot;)&lt;/script&gt;"),
            "{page}"
        );
    }

    #[test]
    fn repository_names_tags_and_the_query_render_escaped() {
        let d = Digest::sha256_of(b"x");
        let view = RepoView {
            repo: RepoSummary {
                private: true,
                ..summary()
            },
            tags: vec![TagRow {
                tag: EVIL.into(),
                digest: d.clone(),
                media_type: EVIL.into(),
                size: Some(1536),
                platforms: vec![EVIL.into()],
                last_pulled: 0,
            }],
            next: Some(EVIL.into()),
        };
        let page = repo(&ctx(), &view, Some(Deletion { csrf: EVIL }), Some(Flash::Deleted(EVIL)));
        assert_escaped(&page);
        assert!(
            page.contains(r#"<input type="hidden" name="tag" value="&lt;script&gt;"#),
            "{page}"
        );
        assert!(page.contains("<td class=\"num\">1.5 KiB</td>"), "{page}");
        let list = RepoList {
            repos: vec![summary()],
            next: Some(EVIL.into()),
        };
        let stats = Stats {
            hits: 1,
            misses: 2,
            stale: 0,
            saved: 3 << 30,
            usage: None,
            upstreams: vec![(EVIL.into(), true)],
        };
        let page = home(&ctx(), &stats, EVIL, &list);
        assert_escaped(&page);
        assert!(page.contains("3.0 GiB") && page.contains("33.3%"), "{page}");
        assert_escaped(&message(&ctx(), EVIL, EVIL));
    }

    #[test]
    fn manifest_fields_render_escaped() {
        let item = |n: &[u8]| Item {
            digest: Digest::sha256_of(n),
            media_type: EVIL.into(),
            size: 512,
            platform: Some(EVIL.into()),
            stored: true,
        };
        let view = ManifestView {
            repo: summary(),
            digest: Digest::sha256_of(b"m"),
            media_type: EVIL.into(),
            size: 10,
            artifact_type: Some(EVIL.into()),
            subject: Some(Digest::sha256_of(b"s")),
            stored_at: 0,
            last_pulled: 0,
            platforms: vec![item(b"p")],
            config: Some(item(b"c")),
            layers: vec![item(b"l")],
        };
        let page = manifest(&ctx(), &view);
        assert_escaped(&page);
        assert!(page.contains("Platforms (1)") && page.contains("Layers (1)"), "{page}");
    }
}
