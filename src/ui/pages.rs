//! The pages, rendered from the service's views into HTML strings. No I/O here.

use std::fmt::Write;

use super::html::{bytes, digest, esc, page, percent, time, url};
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
    fn page(&self, title: &str, body: &str) -> String {
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
fn upstreams_card(upstreams: &[(String, bool)]) -> String {
    if upstreams.is_empty() {
        return String::new();
    }
    let mut modes = String::new();
    for (name, offline) in upstreams {
        let badge = if *offline {
            "<span class=\"badge offline\">offline</span>"
        } else {
            "<span class=\"badge online\">online</span>"
        };
        let _ = write!(modes, "<div>{} {badge}</div>", esc(name));
    }
    let offline = upstreams.iter().filter(|(_, o)| *o).count();
    let value = match offline {
        0 => "online".to_owned(),
        n if n == upstreams.len() => "offline".to_owned(),
        n => format!("{n} of {} offline", upstreams.len()),
    };
    format!(
        "<div class=\"card\"><div class=\"label\">Upstreams</div><div class=\"value\">{value}</div>\
         <div class=\"sub\">{modes}</div></div>"
    )
}

fn kind_badge(repo: &RepoSummary) -> String {
    match (&repo.upstream, repo.private) {
        (_, true) => "<span class=\"badge private\">private</span>".into(),
        (Some(u), false) => format!(
            "<span class=\"badge cached\">cached</span> <span class=\"muted\">from {}</span>",
            esc(u)
        ),
        (None, false) => "<span class=\"badge cached\">cached</span>".into(),
    }
}

fn repo_link(name: &str) -> String {
    format!(
        "<a href=\"{}\">{}</a>",
        esc(&url("/ui/repo", &[("name", name)])),
        esc(name)
    )
}

pub fn home(ctx: &Ctx, stats: &Stats, query: &str, list: &RepoList) -> String {
    let mut b = String::new();
    let served = stats.hits + stats.misses + stats.stale;
    b.push_str("<section class=\"cards\">");
    let _ = write!(
        b,
        "<div class=\"card\"><div class=\"label\">Cache hit ratio</div><div class=\"value\">{}</div>\
         <div class=\"sub\">{} hits · {} misses · {} stale (since start)</div></div>",
        percent(stats.hits + stats.stale, served),
        stats.hits,
        stats.misses,
        stats.stale
    );
    let _ = write!(
        b,
        "<div class=\"card\"><div class=\"label\">Saved upstream</div><div class=\"value\">{}</div>\
         <div class=\"sub\">served from the cache instead of the upstream</div></div>",
        bytes(stats.saved)
    );
    match &stats.usage {
        Some(u) => {
            let _ = write!(
                b,
                "<div class=\"card\"><div class=\"label\">Disk use</div><div class=\"value\">{}</div>\
                 <div class=\"sub\">private {} · cached {} · unreferenced {} · {} blobs</div></div>",
                bytes(u.total().bytes),
                bytes(u.private.bytes),
                bytes(u.cached.bytes),
                bytes(u.unreferenced.bytes),
                u.total().blobs
            );
        }
        None => b.push_str(
            "<div class=\"card\"><div class=\"label\">Disk use</div><div class=\"value\">–</div>\
             <div class=\"sub\">could not be measured; see the log</div></div>",
        ),
    }
    b.push_str(&upstreams_card(&stats.upstreams));
    b.push_str("</section>");
    let _ = write!(
        b,
        "<h1>Repositories</h1><form class=\"search\" method=\"get\" action=\"/ui\">\
         <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"Search by name\" aria-label=\"Search repositories\">\
         <button type=\"submit\">Search</button></form>",
        esc(query)
    );
    if list.repos.is_empty() {
        let what = if query.is_empty() {
            "No repositories yet. Push an image or pull one through the mirror.".to_owned()
        } else {
            format!("No repository matches “{}”.", esc(query))
        };
        let _ = write!(b, "<p class=\"muted\">{what}</p>");
    } else {
        b.push_str("<table><thead><tr><th>Repository</th><th>Kind</th><th>Since</th></tr></thead><tbody>");
        for r in &list.repos {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                repo_link(&r.name),
                kind_badge(r),
                time(r.created, ctx.now)
            );
        }
        b.push_str("</tbody></table>");
    }
    if let Some(next) = &list.next {
        let _ = write!(
            b,
            "<p class=\"pager\"><a href=\"{}\">Next page →</a></p>",
            esc(&url("/ui", &[("q", query), ("last", next)]))
        );
    }
    ctx.page("Repositories", &b)
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
    let name = &view.repo.name;
    let mut b = String::new();
    let _ = write!(b, "<h1>{} {}</h1>", esc(name), kind_badge(&view.repo));
    if let Some(Flash::Deleted(tag)) = flash {
        let _ = write!(b, "<p class=\"note ok\">Deleted tag <b>{}</b>.</p>", esc(tag));
    }
    if deletion.is_some() && !ctx.auth_on {
        b.push_str(
            "<p class=\"note warn\">Authentication is off ([auth] htpasswd is empty): anyone who can reach \
             berth can delete tags here, as through the registry API.</p>",
        );
    }
    let _ = write!(
        b,
        "<p class=\"muted\">Pull with <code>docker pull {}/{}:TAG</code></p>",
        esc(ctx.host),
        esc(name)
    );
    if view.tags.is_empty() {
        b.push_str("<p class=\"muted\">No tags.</p>");
    } else {
        b.push_str(
            "<table><thead><tr><th>Tag</th><th>Digest</th><th>Content</th><th class=\"num\">Size</th>\
             <th>Last pulled</th>",
        );
        if deletion.is_some() {
            b.push_str("<th></th>");
        }
        b.push_str("</tr></thead><tbody>");
        for t in &view.tags {
            let link = esc(&url("/ui/manifest", &[("repo", name), ("ref", &t.digest.to_string())]));
            let content = if t.platforms.is_empty() {
                "image".to_owned()
            } else {
                format!("multi-arch: {}", esc(&t.platforms.join(", ")))
            };
            let size = t.size.map(bytes).unwrap_or_else(|| "–".into());
            let _ = write!(
                b,
                "<tr><td><b>{}</b></td><td><a href=\"{link}\">{}</a></td><td>{content}</td><td class=\"num\">{size}</td><td>{}</td>",
                esc(&t.tag),
                digest(&t.digest),
                time(t.last_pulled, ctx.now)
            );
            if let Some(d) = &deletion {
                let _ = write!(
                    b,
                    "<td><form class=\"inline\" method=\"post\" action=\"/ui/delete\">\
                     <input type=\"hidden\" name=\"repo\" value=\"{}\"><input type=\"hidden\" name=\"tag\" value=\"{}\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <button class=\"danger\" type=\"submit\" title=\"Remove this tag (the manifest stays until GC)\">Delete</button></form></td>",
                    esc(name),
                    esc(&t.tag),
                    esc(d.csrf)
                );
            }
            b.push_str("</tr>");
        }
        b.push_str("</tbody></table>");
    }
    if let Some(next) = &view.next {
        let _ = write!(
            b,
            "<p class=\"pager\"><a href=\"{}\">Next page →</a></p>",
            esc(&url("/ui/repo", &[("name", name), ("last", next)]))
        );
    }
    if let Some(d) = &deletion {
        // Typing the name to confirm stands in for a dialog: the pages run no script.
        let _ = write!(
            b,
            "<h2>Remove repository</h2><form method=\"post\" action=\"/ui/remove\">\
             <p class=\"muted\">Removes every tag, manifest and link of {n}; it leaves the catalog, and the next \
             garbage collection reclaims blobs nothing else uses. Type the name to confirm.</p>\
             <input type=\"hidden\" name=\"repo\" value=\"{n}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"text\" name=\"confirm\" autocomplete=\"off\" placeholder=\"{n}\" required> \
             <button class=\"danger\" type=\"submit\">Remove repository</button></form>",
            esc(d.csrf),
            n = esc(name),
        );
    }
    ctx.page(name, &b)
}

fn stored_badge(item: &Item) -> &'static str {
    if item.stored {
        "<span class=\"badge cached\">stored</span>"
    } else {
        "<span class=\"badge missing\">not stored</span>"
    }
}

pub fn manifest(ctx: &Ctx, view: &ManifestView) -> String {
    let name = &view.repo.name;
    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"muted\"><a href=\"{}\">← {}</a></p><h1>{}@{}</h1><dl class=\"facts\">\
         <dt>Digest</dt><dd><code>{}</code></dd><dt>Media type</dt><dd><code>{}</code></dd>\
         <dt>Manifest size</dt><dd>{}</dd><dt>Stored</dt><dd>{}</dd><dt>Last pulled</dt><dd>{}</dd>",
        esc(&url("/ui/repo", &[("name", name)])),
        esc(name),
        esc(name),
        digest(&view.digest),
        esc(&view.digest.to_string()),
        esc(&view.media_type),
        bytes(view.size),
        time(view.stored_at, ctx.now),
        time(view.last_pulled, ctx.now),
    );
    let config_type = view.config.as_ref().map(|c| c.media_type.as_str());
    if let Some(a) = view.artifact_type.as_deref().filter(|a| Some(*a) != config_type) {
        let _ = write!(b, "<dt>Artifact type</dt><dd><code>{}</code></dd>", esc(a));
    }
    if let Some(s) = &view.subject {
        let _ = write!(
            b,
            "<dt>Subject</dt><dd><a href=\"{}\">{}</a></dd>",
            esc(&url("/ui/manifest", &[("repo", name), ("ref", &s.to_string())])),
            digest(s)
        );
    }
    if view.config.is_some() {
        let _ = write!(b, "<dt>Image size</dt><dd>{}</dd>", bytes(view.image_size()));
    }
    b.push_str("</dl>");
    if !view.platforms.is_empty() {
        let _ = write!(b, "<h2>Platforms ({})</h2>", view.platforms.len());
        b.push_str(
            "<table><thead><tr><th>Platform</th><th>Manifest</th><th>Media type</th>\
             <th class=\"num\">Size</th><th>In store</th></tr></thead><tbody>",
        );
        for p in &view.platforms {
            let shown = if p.stored {
                let link = url("/ui/manifest", &[("repo", name), ("ref", &p.digest.to_string())]);
                format!("<a href=\"{}\">{}</a>", esc(&link), digest(&p.digest))
            } else {
                digest(&p.digest)
            };
            let _ = write!(
                b,
                "<tr><td><b>{}</b></td><td>{shown}</td><td><code>{}</code></td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(p.platform.as_deref().unwrap_or("")),
                esc(&p.media_type),
                bytes(p.size),
                stored_badge(p)
            );
        }
        b.push_str("</tbody></table>");
    }
    if view.config.is_some() || !view.layers.is_empty() {
        let _ = write!(b, "<h2>Layers ({})</h2>", view.layers.len());
        b.push_str(
            "<table><thead><tr><th>#</th><th>Digest</th><th>Media type</th><th class=\"num\">Size</th>\
             <th>In store</th></tr></thead><tbody>",
        );
        let rows = view.config.iter().map(|c| ("config".to_owned(), c));
        let rows = rows.chain(view.layers.iter().enumerate().map(|(i, l)| ((i + 1).to_string(), l)));
        for (label, item) in rows {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td>{}</td></tr>",
                label,
                digest(&item.digest),
                esc(&item.media_type),
                bytes(item.size),
                stored_badge(item)
            );
        }
        b.push_str("</tbody></table>");
    }
    ctx.page(&format!("{name}@{}", view.digest), &b)
}

/// A page that only says something (not found, refused, failed).
pub fn message(ctx: &Ctx, title: &str, text: &str) -> String {
    let body = format!(
        "<h1>{}</h1><p class=\"note err\">{}</p><p><a href=\"/ui\">Back to the repositories</a></p>",
        esc(title),
        esc(text)
    );
    ctx.page(title, &body)
}
