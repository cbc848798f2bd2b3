//! Pages and assets: content types, ETags, cache lifetimes and compression.

use awc::http::header;

use crate::common::TestApp;

fn header_of(resp: &awc::ClientResponse<impl Sized>, name: header::HeaderName) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The `/static/...` URLs a page loads through `src` and `href` attributes.
fn asset_urls(html: &str) -> Vec<String> {
    ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| {
            html.match_indices(attr)
                .map(move |(i, _)| &html[i + attr.len()..])
        })
        .filter_map(|rest| rest.split('"').next())
        .filter(|url| url.starts_with("/static/"))
        .map(str::to_owned)
        .collect()
}

#[actix_web::test]
async fn pages_revalidate_and_assets_are_immutable() {
    let app = TestApp::empty().await;
    for page in [
        "/",
        "/products/anything",
        "/cart",
        "/admin/campaigns/anything/monitor",
    ] {
        let mut resp = app.http.get(app.url(page)).send().await.expect("page");
        assert_eq!(resp.status().as_u16(), 200, "{page}");
        assert_eq!(
            header_of(&resp, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&resp, header::CACHE_CONTROL), "no-cache");
        let etag = header_of(&resp, header::ETAG);
        assert!(etag.starts_with('"'), "{page} etag {etag:?}");
        let html = String::from_utf8(resp.body().await.expect("body").to_vec()).expect("utf8");
        assert!(
            html.contains("<script type=\"importmap\">"),
            "{page} has an import map"
        );

        let again = app
            .http
            .get(app.url(page))
            .insert_header((header::IF_NONE_MATCH, etag.as_str()))
            .send()
            .await
            .expect("revalidate");
        assert_eq!(again.status().as_u16(), 304, "{page} revalidates");

        let urls = asset_urls(&html);
        assert!(
            urls.iter().any(|u| u.ends_with(".css")),
            "{page} links a stylesheet"
        );
        assert!(
            urls.iter().any(|u| u.ends_with(".js")),
            "{page} loads a module"
        );
        for url in urls {
            let file = url.rsplit('/').next().unwrap_or_default();
            let parts: Vec<&str> = file.split('.').collect();
            assert!(
                parts.len() >= 3 && parts[parts.len() - 2].len() == 12,
                "{url} is content-hashed"
            );
            let resp = app.http.get(app.url(&url)).send().await.expect("asset");
            assert_eq!(resp.status().as_u16(), 200, "{url}");
            assert_eq!(
                header_of(&resp, header::CACHE_CONTROL),
                "public, max-age=31536000, immutable"
            );
            let expected = if url.ends_with(".css") {
                "text/css; charset=utf-8"
            } else if url.ends_with(".js") {
                "text/javascript; charset=utf-8"
            } else {
                "image/svg+xml"
            };
            assert_eq!(header_of(&resp, header::CONTENT_TYPE), expected, "{url}");
            assert!(
                !header_of(&resp, header::ETAG).is_empty(),
                "{url} has an ETag"
            );
        }
    }
    app.stop().await;
}

#[actix_web::test]
async fn assets_are_compressed_when_asked() {
    let app = TestApp::empty().await;
    let resp = app
        .http
        .get(app.url("/"))
        .insert_header((header::ACCEPT_ENCODING, "gzip"))
        .no_decompress()
        .send()
        .await
        .expect("page");
    assert_eq!(header_of(&resp, header::CONTENT_ENCODING), "gzip");
    let plain = app
        .http
        .get(app.url("/static/css/app.css"))
        .insert_header((header::ACCEPT_ENCODING, "identity"))
        .no_decompress()
        .send()
        .await
        .expect("asset");
    assert_eq!(plain.status().as_u16(), 200);
    assert_eq!(
        header_of(&plain, header::CACHE_CONTROL),
        "no-cache",
        "unhashed names revalidate"
    );
    assert!(header_of(&plain, header::CONTENT_ENCODING).is_empty());
    let (status, _) = app.get_json("/static/nope.js").await;
    assert_eq!(status, 404);
    app.stop().await;
}
