//! The ceilings Surge is compared with: a bare actix-web server that answers static
//! JSON (what HTTP alone costs here), and COPY straight into PostgreSQL (what durable
//! writes alone cost here).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{anyhow, Context as _};
use futures_util::SinkExt as _;
use serde_json::json;

use crate::{
    catalog,
    cli::{CeilingDbArgs, CeilingHttpArgs, CeilingServeArgs, Common},
    db,
    harness::Load,
    pages::{self, Plan},
    report::{Report, Section},
    util::{thousands, Rng},
};

/// Worker threads of the ceiling server (Surge's benchmarks use 2 as well).
pub const CEILING_WORKERS: usize = 2;

/// A JSON object of exactly `bytes` bytes (at least `{"p":""}`).
pub fn json_body(bytes: usize) -> web::Bytes {
    let pad = bytes.saturating_sub(8);
    let mut s = String::with_capacity(bytes.max(8));
    s.push_str("{\"p\":\"");
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    web::Bytes::from(s)
}

/// The bare server, running on its own thread.
pub struct CeilingServer {
    /// Where it listens.
    pub addr: SocketAddr,
    handle: ServerHandle,
    thread: std::thread::JoinHandle<()>,
}

/// What the bare server answers: the list body at `/api/products`, the product body at
/// `/api/products/{slug}`, and the page (if any) everywhere else.
#[derive(Debug, Clone)]
pub struct Bodies {
    /// `GET /api/products/{slug}`.
    pub product: web::Bytes,
    /// `GET /api/products`.
    pub list: web::Bytes,
    /// A storefront page; without one, the product body is answered instead.
    pub page: Option<PageBody>,
}

/// A page with its strong ETag, answered `304` when `If-None-Match` names that tag.
#[derive(Debug, Clone)]
pub struct PageBody {
    /// The page.
    pub body: web::Bytes,
    /// `Content-Type`.
    pub content_type: String,
    /// The ETag, quoted.
    pub etag: String,
}

impl Bodies {
    /// The answer to `req`: as little work as an HTTP server can do for it.
    fn answer(&self, req: &HttpRequest) -> HttpResponse {
        let path = req.path();
        let json = |body: &web::Bytes| {
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body.clone())
        };
        if path == "/api/products" {
            return json(&self.list);
        }
        let page = match &self.page {
            Some(page) if !path.starts_with("/api/products/") => page,
            _ => return json(&self.product),
        };
        let fresh = req
            .headers()
            .get(actix_web::http::header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == page.etag.as_bytes());
        let mut resp = if fresh {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        resp.insert_header((actix_web::http::header::ETAG, page.etag.as_str()));
        if fresh {
            resp.finish()
        } else {
            resp.content_type(page.content_type.as_str())
                .body(page.body.clone())
        }
    }
}

impl CeilingServer {
    /// Starts it on 127.0.0.1 (a free port): list paths (`/api/products`) get
    /// `list_body`, every other path `product_body`.
    pub fn start(product_body: web::Bytes, list_body: web::Bytes) -> anyhow::Result<Self> {
        Self::start_with(Bodies {
            product: product_body,
            list: list_body,
            page: None,
        })
    }

    /// Starts it on 127.0.0.1 (a free port), answering as [`Bodies`] says.
    pub fn start_with(bodies: Bodies) -> anyhow::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ceiling-http".into())
            .spawn(move || {
                let tx_err = tx.clone();
                let result = actix_web::rt::System::new().block_on(async move {
                    let bodies = Arc::new(bodies);
                    let server = HttpServer::new(move || {
                        let bodies = Arc::clone(&bodies);
                        App::new().default_service(web::to(move |req: HttpRequest| {
                            let resp = bodies.answer(&req);
                            async move { resp }
                        }))
                    })
                    .workers(CEILING_WORKERS)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .bind(("127.0.0.1", 0))?;
                    let addr = server
                        .addrs()
                        .first()
                        .copied()
                        .ok_or_else(|| std::io::Error::other("no address bound"))?;
                    let server = server.run();
                    let _ = tx.send(Ok((addr, server.handle())));
                    server.await
                });
                if let Err(e) = result {
                    let _ = tx_err.send(Err(e));
                }
            })
            .context("starting the ceiling server thread")?;
        let (addr, handle) = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the ceiling server did not start"))?
            .context("starting the ceiling server")?;
        Ok(Self {
            addr,
            handle,
            thread,
        })
    }

    /// Its base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and waits for its thread.
    pub async fn stop(self) {
        self.handle.stop(false).await;
        let _ = actix_web::rt::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Starts the ceiling, drives it with the browse generator as the common options say
/// (their URLs aside), stops it.
pub async fn http_run(
    plan: Arc<Plan>,
    product_bytes: usize,
    list_bytes: usize,
    c: &Common,
) -> anyhow::Result<Section> {
    let server = CeilingServer::start(json_body(product_bytes), json_body(list_bytes))?;
    let base = server.base();
    println!(
        "ceiling-http: {base} ({CEILING_WORKERS} workers, bodies {product_bytes} / {list_bytes} bytes) for {:.1} s",
        c.duration.as_secs_f64()
    );
    let section = pages::drive("ceiling-http", &Load::start(vec![base], c), plan).await;
    server.stop().await;
    section
}

/// `ceiling-http` on its own.
pub async fn http_main(args: CeilingHttpArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    let (plan, product, list) = match args.body_bytes {
        Some(n) => (
            Plan {
                slugs: (0..200).map(|i| format!("product-{i}")).collect(),
                cursors: Vec::new(),
                words: vec!["shirt".into()],
                list_percent: args.list_percent,
            },
            n,
            n,
        ),
        None => {
            let cat = catalog::read(&c.base_strings()?[0], c.timeout, 0).await?;
            let (p, l) = (cat.product_page_bytes, cat.list_page_bytes);
            (Plan::new(&cat, args.list_percent), p, l)
        }
    };
    let section = http_run(Arc::new(plan), product, list, c).await?;
    let mut report = Report::new(
        "ceiling-http",
        json!({ "common": c.json(), "product_bytes": product, "list_bytes": list }),
    );
    report.figure_f64("ceiling-http req/s", section.rps(), 0);
    Ok(report.conclude([section], c.strict))
}

/// One `GET` of `url`: status, body and the named header.
async fn fetch_one(
    client: &awc::Client,
    url: &str,
    header: &str,
) -> anyhow::Result<(web::Bytes, Option<String>)> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow!("GET {url}: {e}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "GET {url}: status {}",
        resp.status()
    );
    let value = resp
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .body()
        .limit(crate::http::BODY_LIMIT)
        .await
        .map_err(|e| anyhow!("GET {url}: body: {e}"))?;
    Ok((body, value))
}

/// The bytes `base` answers for a product page, the first list page of 24 and `page`.
async fn bodies_of(
    base: &str,
    slug: Option<&str>,
    page: &str,
    c: &Common,
) -> anyhow::Result<Bodies> {
    let client = crate::http::client(&crate::http::ClientOptions {
        timeout: c.timeout,
        connections: 2,
        source: None,
    });
    let (list, _) = fetch_one(&client, &format!("{base}/api/products?limit=24"), "etag").await?;
    let slug = match slug {
        Some(s) => s.to_owned(),
        None => {
            let v: serde_json::Value = serde_json::from_slice(&list).context("the list page")?;
            v["items"][0]["slug"]
                .as_str()
                .context("the list page has no product")?
                .to_owned()
        }
    };
    let (product, _) = fetch_one(
        &client,
        &format!("{base}/api/products/{}", catalog::encode(&slug)),
        "etag",
    )
    .await?;
    let page_url = format!("{base}{page}");
    let (body, etag) = fetch_one(&client, &page_url, "etag").await?;
    let etag = etag.with_context(|| format!("GET {page_url}: no ETag"))?;
    let (_, content_type) = fetch_one(&client, &page_url, "content-type").await?;
    Ok(Bodies {
        product,
        list,
        page: Some(PageBody {
            body,
            content_type: content_type.unwrap_or_else(|| "text/html; charset=utf-8".into()),
            etag,
        }),
    })
}

/// `ceiling-serve`: the bare server with Surge's own bytes, for `--duration`.
pub async fn serve_main(args: CeilingServeArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    let base = &c.base_strings()?[0];
    let bodies = bodies_of(base, args.slug.as_deref(), &args.page, c).await?;
    let (product, list) = (bodies.product.len(), bodies.list.len());
    let page = bodies.page.as_ref().map_or(0, |p| p.body.len());
    let etag = bodies.page.as_ref().map(|p| p.etag.clone());
    let server = CeilingServer::start_with(bodies)?;
    // The first line is the address alone, for scripts to read.
    println!("{}", server.base());
    println!(
        "ceiling-serve: {CEILING_WORKERS} workers, bodies of {base}: product {product} B, list {list} B, page {} {page} B (ETag {}) for {:.0} s",
        args.page,
        etag.as_deref().unwrap_or("-"),
        c.duration.as_secs_f64()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    actix_web::rt::time::sleep(c.duration).await;
    server.stop().await;
    let mut report = Report::new(
        "ceiling-serve",
        json!({ "common": c.json(), "product_bytes": product, "list_bytes": list, "page_bytes": page }),
    );
    report.figure_int("product bytes", product as u64);
    Ok(report)
}

/// Committed rows per second of COPY into a throwaway table.
#[derive(Debug, Clone, Copy)]
pub struct DbCeiling {
    /// Rows committed.
    pub rows: u64,
    /// COPY statements (transactions) committed.
    pub copies: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl DbCeiling {
    /// Committed rows per second.
    pub fn rows_per_s(&self) -> f64 {
        crate::report::per_second(self.rows, self.elapsed)
    }
}

fn order_rows(rng: &mut Rng, n: usize, buf: &mut Vec<u8>) {
    use std::io::Write as _;
    buf.clear();
    for i in 0..n {
        let order = uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64());
        let session = uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64()).simple();
        // Writing to a Vec cannot fail.
        let _ = writeln!(
            buf,
            "{order}\t{session}\tSKU-{:05}\t{}\t{}\tEUR\tbuyer{i}@loadtest.example\tnode-1",
            rng.below(1300),
            1 + rng.below(3),
            500 + rng.below(20_000)
        );
    }
}

/// Runs COPY batches of `batch_rows` rows over `connections` connections for
/// `duration` into a table of a new schema, then drops the schema.
pub async fn db_run(
    url: &str,
    duration: Duration,
    connections: usize,
    batch_rows: usize,
) -> anyhow::Result<DbCeiling> {
    let schema = format!("lt_ceiling_{}", uuid::Uuid::new_v4().simple());
    let admin = db::connect(url).await?;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.order_rows (
                 order_id UUID NOT NULL, session_id TEXT NOT NULL, sku TEXT NOT NULL,
                 quantity BIGINT NOT NULL, unit_price_minor BIGINT NOT NULL,
                 currency CHAR(3) NOT NULL, email TEXT NOT NULL, node_id TEXT NOT NULL,
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await
        .context("creating the ceiling table")?;
    let result = copy_load(url, &schema, duration, connections, batch_rows).await;
    let dropped = admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .context("dropping the ceiling schema");
    let out = result?;
    dropped?;
    Ok(out)
}

async fn copy_load(
    url: &str,
    schema: &str,
    duration: Duration,
    connections: usize,
    batch_rows: usize,
) -> anyhow::Result<DbCeiling> {
    let rows = Arc::new(AtomicU64::new(0));
    let copies = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let stmt = format!(
        "COPY {schema}.order_rows (order_id, session_id, sku, quantity, unit_price_minor, currency, email, node_id) FROM STDIN"
    );
    let tasks = (0..connections.max(1)).map(|w| {
        let (rows, copies, stmt) = (rows.clone(), copies.clone(), stmt.clone());
        async move {
            let client = db::connect(url).await?;
            let mut rng = Rng::new(w as u64);
            let mut buf = Vec::new();
            for _ in 0..1_000_000u64 {
                if Instant::now() >= deadline {
                    break;
                }
                order_rows(&mut rng, batch_rows.max(1), &mut buf);
                let sink = client.copy_in::<_, std::io::Cursor<Vec<u8>>>(&stmt).await?;
                let mut sink = Box::pin(sink);
                sink.send(std::io::Cursor::new(std::mem::take(&mut buf)))
                    .await?;
                let n = sink.as_mut().finish().await?;
                rows.fetch_add(n, Ordering::Relaxed);
                copies.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });
    for r in futures_util::future::join_all(tasks).await {
        r.context("COPY into the ceiling table")?;
    }
    Ok(DbCeiling {
        rows: rows.load(Ordering::Relaxed),
        copies: copies.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// Adds the COPY ceiling figures and the ratio of `durable_per_s` to it.
pub fn add_db_figures(report: &mut Report, ceiling: &DbCeiling, durable_per_s: f64) {
    report.figure_f64(
        "ceiling-db rows/s (COPY, committed)",
        ceiling.rows_per_s(),
        0,
    );
    report.figure(
        "ceiling-db rows, COPYs",
        json!({ "rows": ceiling.rows, "copies": ceiling.copies }),
        format!(
            "{} rows in {} COPYs",
            thousands(ceiling.rows),
            thousands(ceiling.copies)
        ),
    );
    let ratio = if ceiling.rows_per_s() > 0.0 {
        durable_per_s / ceiling.rows_per_s()
    } else {
        0.0
    };
    report.figure(
        "durable ops/s / ceiling-db rows/s",
        json!((ratio * 10_000.0).round() / 10_000.0),
        format!("{:.2} %", ratio * 100.0),
    );
}

/// `ceiling-db` on its own.
pub async fn db_main(args: CeilingDbArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    println!(
        "ceiling-db: COPY {} rows per transaction over {} connections for {:.1} s",
        args.batch_rows,
        c.concurrency,
        c.duration.as_secs_f64()
    );
    let result = db_run(
        &args.database_url,
        c.duration,
        c.concurrency,
        args.batch_rows,
    )
    .await?;
    let mut report = Report::new(
        "ceiling-db",
        json!({ "common": c.json(), "batch_rows": args.batch_rows }),
    );
    report.figure_f64(
        "ceiling-db rows/s (COPY, committed)",
        result.rows_per_s(),
        0,
    );
    report.figure_int("rows", result.rows);
    report.figure_int("COPY transactions", result.copies);
    report.figure_f64("seconds", result.elapsed.as_secs_f64(), 2);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_asked_size_and_is_json() {
        for n in [8, 100, 1234] {
            let b = json_body(n);
            assert_eq!(b.len(), n);
            assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
        }
    }

    #[test]
    fn the_page_is_revalidated_by_its_exact_etag() {
        let bodies = Bodies {
            product: json_body(10),
            list: json_body(20),
            page: Some(PageBody {
                body: web::Bytes::from_static(b"<html></html>"),
                content_type: "text/html".into(),
                etag: "\"abc\"".into(),
            }),
        };
        let get = |path: &str, inm: Option<&str>| {
            let mut req = actix_web::test::TestRequest::get().uri(path);
            if let Some(tag) = inm {
                req = req.insert_header(("if-none-match", tag));
            }
            bodies.answer(&req.to_http_request())
        };
        assert_eq!(get("/", Some("\"abc\"")).status(), 304);
        assert_eq!(get("/", Some("\"abd\"")).status(), 200);
        assert_eq!(get("/", None).status(), 200);
        assert_eq!(get("/api/products/x", Some("\"abc\"")).status(), 200);
        assert_eq!(get("/api/products", None).status(), 200);
    }

    #[test]
    fn rows_have_eight_columns() {
        let mut buf = Vec::new();
        order_rows(&mut Rng::new(1), 3, &mut buf);
        let text = String::from_utf8(buf).expect("utf8");
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|l| l.split('\t').count() == 8));
    }
}
