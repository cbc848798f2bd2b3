//! `fanout`: K WebSocket subscribers to one SKU, spread over the node URLs (and over
//! local source addresses, when ephemeral ports would run out), then N stock changes
//! from one driver session. For every (change, subscriber) pair: receive time minus the
//! time the change's HTTP answer arrived. Also the server's RSS per socket.

mod crowd;
mod driver;
mod limits;
mod socket;
mod tally;

use std::{
    net::IpAddr,
    rc::Rc,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use serde_json::json;

use self::{
    crowd::{connect_deadline, Crowd},
    driver::Driver,
    limits::fit_subscribers,
    socket::{Observer, Progress, SubRecord},
    tally::{Memory, Outcome, Tally},
};
use crate::{
    admin,
    cli::FanoutArgs,
    http::{self, ClientOptions},
    report::{Recorder, Report, Section},
    session::Session,
    util::{loopback_sources, rss_kib, thousands},
};

/// Histogram of delivery latencies.
pub const DELIVERY: &str = "stock delivery (receive - change ack)";
/// Histogram of connect + upgrade + first frame times.
pub const CONNECT: &str = "ws connect (TCP + upgrade)";

/// Stock of the fan-out SKU: far more than the changes use.
const STOCK: i64 = 1_000_000;

/// Runs the fan-out measurement.
pub async fn run(args: FanoutArgs) -> anyhow::Result<Report> {
    let c = args.common.clone();
    let bases = c.base_strings()?;
    let sources: Vec<IpAddr> = loopback_sources(&args.source_ips.join(","))?;
    let started = Instant::now();
    let hard_deadline = started + c.duration + Duration::from_secs(10);
    let mut report = Report::new(
        "fanout",
        json!({
            "common": c.json(),
            "subscribers_requested": args.subscribers,
            "changes": args.changes,
            "interval_ms": args.interval.as_millis() as u64,
            "source_ips": args.source_ips,
            "connect_rate": args.connect_rate,
            "connect_batch": args.connect_batch,
        }),
    );
    let k = fit_subscribers(&args, bases.len(), sources.len(), &mut report)?;

    let main_client = http::client(&ClientOptions {
        timeout: c.timeout,
        connections: 8,
        source: None,
    });
    let product =
        admin::fresh_visible(&main_client, &bases, &args.admin_token, "fanout", STOCK).await?;
    let observer = Observer::start(&main_client, &bases[0], &product.sku, hard_deadline).await?;
    let session = Session::new(main_client.clone(), Rc::from(bases[0].as_str()));
    let mut driver = Driver::new(session, observer, &product.sku).await?;
    println!(
        "fanout: {} subscribers to {} over {} ({} source address(es)), {} changes",
        thousands(k as u64),
        product.sku,
        bases.join(", "),
        sources.len().max(1),
        args.changes
    );

    let mut memory = Memory {
        server_before: c.server_rss(),
        own_before: rss_kib(std::process::id()).ok(),
        ..Memory::default()
    };
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let threads = c.threads.max(1);
    let (crowd, connect_time) = Crowd {
        bases: bases.clone(),
        sku: product.sku.clone(),
        sources,
        timeout: c.timeout,
        count: k,
        threads,
        rate: args.connect_rate.max(1),
        batch: args.connect_batch.max(1),
        connect_deadline: connect_deadline(&args, started),
        hard_deadline,
        progress: progress.clone(),
        stop: stop_rx,
    }
    .connect()
    .await?;
    // Let the server settle its allocations before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    memory.server_connected = c.server_rss();
    memory.own_connected = rss_kib(std::process::id()).ok();
    let subscribed_before = progress.subscribed.load(Ordering::Relaxed);

    let (interval, coalesce) = driver.interval(&args, &progress);
    println!(
        "fanout: {} changes, one every {} ms (server coalescing {} ms)",
        args.changes,
        interval.as_millis(),
        coalesce
    );
    let mut rec = Recorder::default();
    let cpu_before = (
        c.server_pid.and_then(tally::cpu_secs),
        tally::cpu_secs(std::process::id()),
    );
    let changes = driver
        .change(
            args.changes,
            interval,
            started + c.duration,
            &mut rec,
            &mut report,
        )
        .await;
    tokio::time::sleep(args.grace).await;
    memory.server_after = c.server_rss();
    let since = |before: Option<f64>, now: Option<f64>| Some(now? - before?);
    memory.server_cpu = since(cpu_before.0, c.server_pid.and_then(tally::cpu_secs));
    memory.own_cpu = since(cpu_before.1, tally::cpu_secs(std::process::id()));
    let _ = stop_tx.send(true);
    driver.stop_observing();
    let subs: Vec<SubRecord> = crowd.join().await?.into_iter().flatten().collect();
    driver.release(&mut rec).await;

    let tally = Tally::new(&subs, &changes);
    rec.hists.insert(DELIVERY.into(), tally.delivery.clone());
    rec.hists.insert(CONNECT.into(), tally.connect.clone());
    let outcome = Outcome {
        attempted: k,
        subscribed_before,
        connect_time,
        changes: changes.len(),
        tally,
        memory,
    };
    outcome.add_figures(&args, &mut report);
    report.notes.push(format!(
        "latency = when a subscriber read the stock message minus when the driver's PUT answer arrived; subscribers share {threads} load thread(s), so reading {} sockets adds client-side queueing",
        thousands(outcome.tally.subscribed)
    ));
    if c.strict {
        outcome.add_failures(&args, &mut report);
    }
    Ok(report.conclude([Section::new("surge", started.elapsed(), rec)], c.strict))
}
