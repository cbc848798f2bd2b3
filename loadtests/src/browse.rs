//! `browse`: list pages (random cursors and searches) and product pages on random
//! slugs; then the same generator against the HTTP ceiling, for a ratio.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    catalog::{self, encode, Catalog},
    ceiling,
    cli::BrowseArgs,
    harness,
    http::{self, ClientOptions},
    report::{Recorder, Report, Section},
    util::{rss_kib, Rng},
};

/// Label of list-page requests.
pub const LIST: &str = "GET /api/products";
/// Label of product-page requests.
pub const PRODUCT: &str = "GET /api/products/{slug}";

/// What the browse generator picks from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Product slugs.
    pub slugs: Vec<String>,
    /// List cursors.
    pub cursors: Vec<String>,
    /// Search words.
    pub words: Vec<String>,
    /// Percent of list-page requests.
    pub list_percent: u32,
}

impl Plan {
    /// A plan from a fetched catalog.
    pub fn new(cat: &Catalog, list_percent: u32) -> Self {
        Self {
            slugs: cat.slugs.clone(),
            cursors: cat.cursors.clone(),
            words: cat.words.clone(),
            list_percent,
        }
    }

    /// The next request: its label and path.
    pub fn next(&self, rng: &mut Rng) -> (&'static str, String) {
        if self.slugs.is_empty() || rng.percent(self.list_percent) {
            let path = match rng.below(3) {
                0 => match rng.pick(&self.cursors) {
                    Some(c) => format!("/api/products?limit=24&cursor={}", encode(c)),
                    None => "/api/products?limit=24".to_owned(),
                },
                1 => match rng.pick(&self.words) {
                    Some(w) => format!("/api/products?limit=24&q={}", encode(w)),
                    None => "/api/products?limit=24".to_owned(),
                },
                _ => "/api/products?limit=24".to_owned(),
            };
            (LIST, path)
        } else {
            let slug = rng.pick(&self.slugs).map(String::as_str).unwrap_or("");
            (PRODUCT, format!("/api/products/{slug}"))
        }
    }
}

/// Drives `bases` with the browse generator for `duration` at `concurrency`.
pub async fn drive(
    name: &str,
    bases: Vec<String>,
    plan: Arc<Plan>,
    duration: Duration,
    concurrency: usize,
    threads: usize,
    timeout: Duration,
) -> anyhow::Result<Section> {
    let started = Instant::now();
    let deadline = started + duration;
    let recs = harness::run(threads, move |t| {
        let (bases, plan) = (bases.clone(), plan.clone());
        async move {
            let (workers, client) = harness::thread_client(concurrency, threads, t, timeout);
            let tasks = (0..workers).map(|w| {
                let (client, bases, plan) = (client.clone(), bases.clone(), plan.clone());
                let base = harness::base_for(&bases, threads, t, w).to_owned();
                async move {
                    let mut rec = Recorder::default();
                    let mut rng = Rng::new((t * 100_000 + w) as u64);
                    for _ in 0..10_000_000u64 {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let (label, path) = plan.next(&mut rng);
                        match http::get(&client, &format!("{base}{path}")).await {
                            Ok(r) => rec.reply(label, &r, r.status == 200),
                            Err(f) => rec.failure(label, &f),
                        }
                    }
                    rec
                }
            });
            let recs = futures_util::future::join_all(tasks).await;
            Recorder::merged(&recs)
        }
    })
    .await?;
    Ok(Section {
        name: name.to_owned(),
        elapsed: started.elapsed(),
        recorder: Recorder::merged(&recs),
    })
}

/// Runs `browse` against Surge, then the ceiling, and reports both.
pub async fn run(args: BrowseArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    let bases = c.base_strings()?;
    let probe = http::client(&ClientOptions {
        timeout: c.timeout,
        connections: 4,
        source: None,
    });
    let cat = catalog::fetch(&probe, &bases[0], 0).await?;
    let plan = Arc::new(Plan::new(&cat, args.list_percent));
    let mut report = Report::new(
        "browse",
        json!({ "common": c.json(), "list_percent": args.list_percent }),
    );
    println!(
        "browse: {} products, {} list pages; {} at concurrency {} for {:.1} s, then the ceiling",
        cat.slugs.len(),
        cat.cursors.len() + 1,
        bases.join(", "),
        c.concurrency,
        c.duration.as_secs_f64()
    );
    let rss_before = c.server_pid.and_then(|p| rss_kib(p).ok());
    let surge = drive(
        "surge",
        bases.clone(),
        plan.clone(),
        c.duration,
        c.concurrency,
        c.threads,
        c.timeout,
    )
    .await?;
    let rss_after = c.server_pid.and_then(|p| rss_kib(p).ok());
    let ceil = ceiling::http_run(
        plan,
        cat.product_page_bytes,
        cat.list_page_bytes,
        c.duration,
        c.concurrency,
        c.threads,
        c.timeout,
    )
    .await?;
    let ratio = if ceil.rps() > 0.0 {
        surge.rps() / ceil.rps()
    } else {
        0.0
    };
    report.figure_f64("surge req/s", surge.rps(), 0);
    report.figure_f64("ceiling-http req/s", ceil.rps(), 0);
    report.figure(
        "surge / ceiling-http",
        json!((ratio * 1000.0).round() / 1000.0),
        format!("{:.1} %", ratio * 100.0),
    );
    report.figure_int("product page bytes", cat.product_page_bytes as u64);
    report.figure_int("list page bytes", cat.list_page_bytes as u64);
    report.rss(rss_before, rss_after);
    report.notes.push(format!(
        "the ceiling answers every product path with a static {}-byte body and every list path with a static {}-byte body (Surge's sizes), from 2 actix-web workers in this process",
        cat.product_page_bytes, cat.list_page_bytes
    ));
    report.sections.push(surge);
    report.sections.push(ceil);
    report.check_errors(c.strict);
    Ok(report)
}
