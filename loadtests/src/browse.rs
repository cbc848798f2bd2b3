//! `browse`: list pages (random cursors and searches) and product pages on random
//! slugs; then the same generator against the HTTP ceiling, for a ratio.

use std::sync::Arc;

use serde_json::json;

use crate::{
    catalog, ceiling,
    cli::BrowseArgs,
    harness::Load,
    pages::{self, Plan},
    report::Report,
};

/// Runs `browse` against Surge, then the ceiling, and reports both.
pub async fn run(args: BrowseArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    let bases = c.base_strings()?;
    let cat = catalog::read(&bases[0], c.timeout, 0).await?;
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
    let rss_before = c.server_rss();
    let surge = pages::drive("surge", &Load::start(bases, c), plan.clone()).await?;
    let rss_after = c.server_rss();
    let ceil = ceiling::http_run(plan, cat.product_page_bytes, cat.list_page_bytes, c).await?;
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
    Ok(report.conclude([surge, ceil], c.strict))
}
