//! The storefront's files, prepared once at startup for CDN-friendly serving: every
//! asset gets a content-hashed name and an immutable cache lifetime, and every page is
//! rewritten to point at those names, with an import map so JS modules find each other.
//!
//! Pages share their header and footer through `<!--#include file="partials/…" -->`,
//! resolved here rather than in the browser: a page stays one static, cacheable file
//! that shows its whole frame on first paint and without JavaScript.

use std::{collections::HashMap, path::Path};

use actix_web::{http::header::HeaderValue, web::Bytes};
use sha2::{Digest, Sha256};

/// Where the fragments pages include live; they are never served on their own.
const PARTIALS: &str = "partials/";

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/static_files.rs"));
}

/// One servable file.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Contents.
    pub body: Bytes,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// Strong ETag, quoted; a header value made once, which each answer clones
    /// without copying.
    pub etag: HeaderValue,
    /// Whether the URL names this exact content (hashed name), so it may be cached forever.
    pub immutable: bool,
}

impl Asset {
    fn new(body: Bytes, content_type: &'static str, etag: String, immutable: bool) -> Self {
        // A quoted hex hash: always a valid header value.
        let etag = HeaderValue::from_maybe_shared(Bytes::from(etag))
            .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
        Self {
            body,
            content_type,
            etag,
            immutable,
        }
    }
}

/// The storefront, indexed by URL path (`/static/...`) and by page file name.
#[derive(Debug, Default)]
pub struct Assets {
    by_url: HashMap<String, Asset>,
    pages: HashMap<String, Asset>,
}

impl Assets {
    /// Prepares the files built into the binary.
    pub fn embedded() -> Self {
        Self::build(
            embedded::FILES
                .iter()
                .map(|(p, b)| ((*p).to_owned(), b.to_vec()))
                .collect(),
        )
    }

    /// Prepares the files of a directory (for editing the storefront without a rebuild).
    pub fn from_dir(dir: &Path) -> std::io::Result<Self> {
        let mut files = Vec::new();
        read_dir(dir, dir, &mut files)?;
        Ok(Self::build(files))
    }

    /// Hashes assets, fills in includes and rewrites pages; `files` holds paths
    /// relative to the static root.
    pub fn build(files: Vec<(String, Vec<u8>)>) -> Self {
        let mut by_url = HashMap::new();
        let mut renames: Vec<(String, String)> = Vec::new();
        let mut html = Vec::new();
        let mut partials = HashMap::new();
        for (path, body) in files {
            if path.ends_with(".html") {
                if path.starts_with(PARTIALS) {
                    partials.insert(path, String::from_utf8_lossy(&body).into_owned());
                } else {
                    html.push((path, body));
                }
                continue;
            }
            let hash = short_hash(&body);
            let hashed = hashed_name(&path, &hash);
            let content_type = content_type(&path);
            let body = Bytes::from(body);
            let etag = format!("\"{hash}\"");
            by_url.insert(
                format!("/static/{hashed}"),
                Asset::new(body.clone(), content_type, etag.clone(), true),
            );
            by_url.insert(
                format!("/static/{path}"),
                Asset::new(body, content_type, etag, false),
            );
            renames.push((format!("/static/{path}"), format!("/static/{hashed}")));
        }
        // Longest first, so that no path is rewritten inside a longer one.
        renames.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        let import_map = import_map(&renames);
        let pages = html
            .into_iter()
            .map(|(path, body)| {
                let text = include_partials(&path, &String::from_utf8_lossy(&body), &partials);
                let text = rewrite_page(&text, &renames, &import_map);
                let etag = format!("\"{}\"", short_hash(text.as_bytes()));
                let asset = Asset::new(Bytes::from(text), "text/html; charset=utf-8", etag, false);
                (path, asset)
            })
            .collect();
        Self { by_url, pages }
    }

    /// An asset by its URL path, e.g. `/static/js/app.0123456789ab.js`.
    pub fn get(&self, url_path: &str) -> Option<&Asset> {
        self.by_url.get(url_path)
    }

    /// A page by file name, e.g. `index.html`.
    pub fn page(&self, name: &str) -> Option<&Asset> {
        self.pages.get(name)
    }

    /// The hashed URL of an asset, for tests and templates.
    pub fn hashed_url(&self, path: &str) -> Option<String> {
        let plain = self.by_url.get(&format!("/static/{path}"))?;
        let hash = plain.etag.to_str().ok()?.trim_matches('"');
        Some(format!("/static/{}", hashed_name(path, hash)))
    }
}

fn read_dir(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            read_dir(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push((
                rel.to_string_lossy().replace('\\', "/"),
                std::fs::read(&path)?,
            ));
        }
    }
    Ok(())
}

fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `js/app.js` + `abc` gives `js/app.abc.js`.
fn hashed_name(path: &str, hash: &str) -> String {
    let file_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[file_start..].rfind('.') {
        Some(dot) => {
            let dot = file_start + dot;
            format!("{}.{hash}{}", &path[..dot], &path[dot..])
        }
        None => format!("{path}.{hash}"),
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn import_map(renames: &[(String, String)]) -> String {
    let imports: serde_json::Map<String, serde_json::Value> = renames
        .iter()
        .filter(|(from, _)| from.ends_with(".js"))
        .map(|(from, to)| (from.clone(), serde_json::Value::String(to.clone())))
        .collect();
    let json = serde_json::json!({ "imports": imports }).to_string();
    format!("<script type=\"importmap\">{json}</script>")
}

/// Replaces each `<!--#include file="partials/x.html" current="/path" -->` with that
/// fragment; the fragment's link to `current`, if given, is marked as the current page.
/// An include of an unknown file stays as it is (an HTML comment) and is logged.
fn include_partials(page: &str, text: &str, partials: &HashMap<String, String>) -> String {
    const OPEN: &str = "<!--#include ";
    const CLOSE: &str = "-->";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let Some(len) = rest[start..].find(CLOSE).map(|i| i + CLOSE.len()) else {
            break;
        };
        let directive = &rest[start..start + len];
        out.push_str(&rest[..start]);
        match attribute(directive, "file").and_then(|f| partials.get(f)) {
            Some(fragment) => {
                let fragment = fragment.trim();
                match attribute(directive, "current") {
                    Some(current) => out.push_str(&fragment.replace(
                        &format!("href=\"{current}\""),
                        &format!("href=\"{current}\" aria-current=\"page\""),
                    )),
                    None => out.push_str(fragment),
                }
            }
            None => {
                tracing::warn!(
                    page,
                    directive,
                    "the include names no file of static/partials/"
                );
                out.push_str(directive);
            }
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

/// The value of `name="..."` in an include directive.
fn attribute<'a>(directive: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = directive.find(&key)? + key.len();
    let len = directive[start..].find('"')?;
    Some(&directive[start..start + len])
}

fn rewrite_page(text: &str, renames: &[(String, String)], import_map: &str) -> String {
    let mut out = text.to_owned();
    for (from, to) in renames {
        for quote in ['"', '\''] {
            out = out.replace(
                &format!("{quote}{from}{quote}"),
                &format!("{quote}{to}{quote}"),
            );
        }
    }
    match out.to_ascii_lowercase().find("<head>") {
        Some(i) => out.insert_str(i + "<head>".len(), import_map),
        None => out.insert_str(0, import_map),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Assets {
        Assets::build(vec![
            ("index.html".into(), b"<html><head><link href=\"/static/css/app.css\"><script type=\"module\" src=\"/static/js/app.js\"></script></head></html>".to_vec()),
            ("css/app.css".into(), b"body{}".to_vec()),
            ("js/app.js".into(), b"import './util.js';".to_vec()),
            ("js/util.js".into(), b"export {};".to_vec()),
        ])
    }

    #[test]
    fn pages_point_at_hashed_assets() {
        let assets = sample();
        let page = assets.page("index.html").expect("page");
        let text = std::str::from_utf8(&page.body).expect("utf8");
        let css = assets.hashed_url("css/app.css").expect("css");
        assert!(text.contains(&format!("href=\"{css}\"")), "{text}");
        assert!(!text.contains("\"/static/css/app.css\""));
        assert!(assets.get(&css).expect("hashed").immutable);
        assert!(!assets.get("/static/css/app.css").expect("plain").immutable);
    }

    #[test]
    fn import_map_maps_every_module() {
        let assets = sample();
        let text = String::from_utf8(assets.page("index.html").expect("page").body.to_vec())
            .expect("utf8");
        let start = text.find("<script type=\"importmap\">").expect("map") + 25;
        let end = start + text[start..].find("</script>").expect("end");
        let map: serde_json::Value = serde_json::from_str(&text[start..end]).expect("json");
        let util = assets.hashed_url("js/util.js").expect("util");
        assert_eq!(
            map["imports"]["/static/js/util.js"],
            serde_json::Value::String(util)
        );
        assert!(
            text.find("importmap").expect("map") < text.find("type=\"module\"").expect("module")
        );
    }

    #[test]
    fn hash_follows_content() {
        let a = Assets::build(vec![("a.css".into(), b"x".to_vec())]);
        let b = Assets::build(vec![("a.css".into(), b"y".to_vec())]);
        assert_ne!(a.hashed_url("a.css"), b.hashed_url("a.css"));
        assert_eq!(hashed_name("js/x.min.js", "h"), "js/x.min.h.js");
        assert_eq!(hashed_name("LICENSE", "h"), "LICENSE.h");
    }

    #[test]
    fn embedded_storefront_has_its_pages() {
        let assets = Assets::embedded();
        for page in [
            "index.html",
            "product.html",
            "cart.html",
            "campaign.html",
            "monitor.html",
        ] {
            assert!(assets.page(page).is_some(), "{page} missing");
        }
    }

    fn page_text(assets: &Assets, name: &str) -> String {
        String::from_utf8(assets.page(name).expect("page").body.to_vec()).expect("utf8")
    }

    #[test]
    fn includes_fill_in_fragments_and_mark_the_current_page() {
        let assets = Assets::build(vec![
            (
                "a.html".into(),
                b"<body>\n  <!--#include file=\"partials/nav.html\" -->\n</body>".to_vec(),
            ),
            (
                "b.html".into(),
                b"<body><!--#include file=\"partials/nav.html\" current=\"/b\" --></body>"
                    .to_vec(),
            ),
            (
                "partials/nav.html".into(),
                b"  <nav><a href=\"/a\">A</a><a href=\"/b\">B</a><img src=\"/static/x.svg\"></nav>\n"
                    .to_vec(),
            ),
            ("x.svg".into(), b"<svg/>".to_vec()),
        ]);
        let a = page_text(&assets, "a.html");
        assert!(a.contains("<body>\n  <nav><a href=\"/a\">A</a>"), "{a}");
        assert!(a.contains("</nav>\n</body>"), "{a}");
        assert!(!a.contains("aria-current"), "{a}");
        let svg = assets.hashed_url("x.svg").expect("svg");
        assert!(
            a.contains(&format!("src=\"{svg}\"")),
            "assets in fragments are hashed: {a}"
        );
        let b = page_text(&assets, "b.html");
        assert!(
            b.contains("<a href=\"/b\" aria-current=\"page\">B</a>"),
            "{b}"
        );
        assert!(!b.contains("<a href=\"/a\" aria-current"), "{b}");
        assert!(assets.page("partials/nav.html").is_none());
        assert!(assets.get("/static/partials/nav.html").is_none());
    }

    #[test]
    fn an_unknown_include_stays_a_comment() {
        let assets = Assets::build(vec![(
            "a.html".into(),
            b"<body><!--#include file=\"partials/gone.html\" --></body>".to_vec(),
        )]);
        assert!(page_text(&assets, "a.html")
            .contains("<body><!--#include file=\"partials/gone.html\" --></body>"));
    }

    #[test]
    fn every_storefront_page_has_the_shared_header_and_footer() {
        let assets = Assets::embedded();
        for page in [
            "index.html",
            "product.html",
            "cart.html",
            "campaign.html",
            "monitor.html",
        ] {
            let text = page_text(&assets, page);
            assert!(
                !text.contains("<!--#include"),
                "{page} has an unresolved include"
            );
            assert_eq!(
                text.matches("<header class=\"site-header\">").count(),
                1,
                "{page}"
            );
            assert_eq!(
                text.matches("<footer class=\"site-footer\">").count(),
                1,
                "{page}"
            );
        }
        assert!(page_text(&assets, "cart.html").contains("href=\"/cart\" aria-current=\"page\""));
        assert!(!page_text(&assets, "index.html").contains("aria-current"));
    }
}
