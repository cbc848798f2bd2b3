//! `campaign`: a flash-sale campaign with a waiting room and a per-customer limit.
//! B buyers, each with its own session, join the queue before the start (some share
//! an email under another spelling); a sample waits on a WebSocket for its
//! `admitted: true` push, the rest poll their place; each admitted buyer reserves one
//! unit and checks out. Then PostgreSQL is audited: oversold, undersold, customers past
//! the limit. Reports how admissions spread around the start, how fair they were, how
//! late the pushes came, and when the sale sold out.

mod buyer;
mod tally;

use std::{
    cell::RefCell,
    collections::BTreeMap,
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use self::{
    buyer::{now_ms, Ctx, Shared, REFUSED},
    tally::{customer, limit_violations, undersold, Emails, Outcome, Queue, Record},
};
use crate::{
    admin,
    cli::CampaignArgs,
    db, harness,
    http::{self, ClientOptions},
    report::{Recorder, Report, Section},
    util::{thousands, Rng},
};

/// What the buyers brought back.
struct Run {
    records: Vec<Record>,
    rec: Recorder,
    whole: Duration,
    sold_out_ms: Option<f64>,
    orders: u64,
}

/// Which buyers hold a socket: `sample` of them, evenly spread over the join order.
fn socket_buyer(i: usize, buyers: usize, sample: usize) -> bool {
    if sample == 0 {
        return false;
    }
    let stride = (buyers / sample).max(1);
    i.is_multiple_of(stride) && i / stride < sample
}

/// Joins every buyer (`--concurrency` at a time), then lets each wait for its turn
/// and buy, until all have an outcome or the deadline passes.
async fn sell(
    args: &CampaignArgs,
    bases: &[String],
    sku: &str,
    campaign: &admin::TestCampaign,
    emails: Arc<Emails>,
) -> anyhow::Result<Run> {
    let c = &args.common;
    let (threads, concurrency, timeout) = (c.threads.max(1), c.concurrency, c.timeout);
    let connections = args.connections.max(concurrency);
    let (buyers, sample) = (args.buyers, args.socket_sample.min(args.buyers));
    let until_start =
        Duration::from_millis((campaign.starts_at_ms as f64 - now_ms()).max(0.0) as u64);
    let started = Instant::now();
    let deadline = started + until_start + c.duration;
    let shared = Arc::new(Shared::default());
    let next = Arc::new(AtomicUsize::new(0));
    let joined = Arc::new(AtomicUsize::new(0));
    let (campaign_id, starts_at_ms) = (campaign.id.clone(), campaign.starts_at_ms);
    let (rate, units, poll_max, grace) = (
        args.admit_per_second,
        args.units as u64,
        args.poll_max,
        args.socket_grace,
    );
    let (sku, bases) = (sku.to_owned(), bases.to_vec());
    let results = {
        let shared = shared.clone();
        harness::run(threads, move |t| {
            let (shared, next, joined, emails) =
                (shared.clone(), next.clone(), joined.clone(), emails.clone());
            let (bases, sku, campaign_id) = (bases.clone(), sku.clone(), campaign_id.clone());
            async move {
                let workers = harness::share(concurrency, threads, t);
                // Buyers pause between polls: idle connections must not outlive the
                // server's keep-alive.
                let client = http::client_keeping(
                    &ClientOptions {
                        timeout,
                        connections: harness::share(connections, threads, t).max(1),
                        source: None,
                    },
                    Duration::from_secs(3),
                );
                let ws_client = http::client(&ClientOptions {
                    timeout,
                    connections: 0,
                    source: None,
                });
                let ctx = Rc::new(Ctx {
                    bases: bases.iter().map(|b| Rc::from(b.as_str())).collect(),
                    campaign_id,
                    sku,
                    starts_at_ms,
                    rate,
                    units,
                    deadline,
                    poll_max,
                    socket_grace: grace,
                    timeout,
                    shared,
                });
                let waiting = Rc::new(RefCell::new(Vec::new()));
                let never_joined = Rc::new(RefCell::new(Vec::new()));
                let joins = (0..workers.max(1)).map(|w| {
                    let (ctx, client, ws_client) = (ctx.clone(), client.clone(), ws_client.clone());
                    let (next, joined, emails) = (next.clone(), joined.clone(), emails.clone());
                    let (waiting, never_joined) = (waiting.clone(), never_joined.clone());
                    async move {
                        let mut rec = Recorder::default();
                        let mut rng = Rng::new((t * 1_000_000 + w) as u64);
                        for _ in 0..buyers {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= buyers {
                                break;
                            }
                            let socket = socket_buyer(i, buyers, sample);
                            let (s, r) =
                                buyer::join(i, socket, &ctx, &client, &mut rec, &mut rng).await;
                            if joined.fetch_add(1, Ordering::SeqCst) + 1 == buyers {
                                println!(
                                    "campaign: every buyer joined; the start is in {:.2} s",
                                    (starts_at_ms as f64 - now_ms()) / 1000.0
                                );
                            }
                            if r.join_position.is_none() {
                                never_joined.borrow_mut().push(r);
                                continue;
                            }
                            let email = emails.of[i].clone();
                            let task = buyer::wait_and_buy(
                                s,
                                socket.then(|| ws_client.clone()),
                                r,
                                email,
                                ctx.clone(),
                                Recorder::default(),
                                Rng::new((t * 1_000_000 + i) as u64 ^ 0x5eed),
                            );
                            waiting.borrow_mut().push(actix_web::rt::spawn(task));
                        }
                        rec
                    }
                });
                let mut recs = futures_util::future::join_all(joins).await;
                let handles = std::mem::take(&mut *waiting.borrow_mut());
                let mut records = std::mem::take(&mut *never_joined.borrow_mut());
                for out in futures_util::future::join_all(handles).await {
                    match out {
                        Ok((r, rec)) => {
                            records.push(r);
                            recs.push(rec);
                        }
                        Err(_) => {
                            let mut rec = Recorder::default();
                            rec.count("buyer tasks that panicked", 1);
                            recs.push(rec);
                        }
                    }
                }
                (records, Recorder::merged(&recs))
            }
        })
        .await?
    };
    let whole = started.elapsed();
    let mut records = Vec::with_capacity(buyers);
    let mut recs = Vec::new();
    for (r, rec) in results {
        records.extend(r);
        recs.push(rec);
    }
    records.sort_by_key(|r| r.buyer);
    // The stored slots are the join order; the answers only tell it before the start.
    let client = db::connect(&args.database_url).await?;
    let slots = db::queue_slots(&client, &campaign.id).await?;
    for r in &mut records {
        r.slot = r.session.as_ref().and_then(|s| slots.get(s)).copied();
    }
    let sold_out_ms = shared.sold_out_ms.lock().ok().and_then(|g| *g);
    Ok(Run {
        records,
        rec: Recorder::merged(&recs),
        whole,
        sold_out_ms,
        orders: shared.orders.load(Ordering::SeqCst),
    })
}

/// The sale as PostgreSQL sees it after the run.
struct Audit {
    stock: db::Stock,
    violations: Vec<String>,
    over_limit: Vec<(String, i64)>,
    customers_with_orders: Vec<String>,
    order_span_ms: Option<(f64, f64)>,
}

impl Audit {
    async fn read(url: &str, sku: &str, limit: i64) -> anyhow::Result<Self> {
        let client = db::connect(url).await?;
        let by_email = db::units_by_email(&client, sku).await?;
        Ok(Self {
            stock: db::stock(&client, sku).await?,
            violations: db::violations(&client).await?,
            over_limit: limit_violations(&by_email, limit),
            customers_with_orders: by_email.iter().map(|(e, _)| customer(e)).collect(),
            order_span_ms: db::order_span_ms(&client, sku).await?,
        })
    }

    /// Units sold beyond `units`, by the largest of the three counts.
    fn oversold(&self, orders: u64, units: i64) -> i64 {
        ((orders as i64)
            .max(self.stock.sold)
            .max(self.stock.order_line_units)
            - units)
            .max(0)
    }
}

fn ms_figure(report: &mut Report, key: &str, ms: Option<f64>) {
    match ms {
        Some(ms) => report.figure_f64(key, ms / 1000.0, 3),
        None => report.figure(key, Value::Null, "-"),
    }
}

/// Every figure and failure of the run.
fn conclude(
    args: &CampaignArgs,
    sku: &str,
    campaign: &admin::TestCampaign,
    emails: &Emails,
    run: Run,
    audit: &Audit,
) -> Report {
    let c = &args.common;
    let start = campaign.starts_at_ms as f64;
    let q = Queue::new(&run.records, campaign.starts_at_ms, args.admit_per_second);
    let mut report = Report::new(
        "campaign",
        json!({
            "common": c.json(),
            "buyers": args.buyers,
            "units": args.units,
            "admit_per_second": args.admit_per_second,
            "per_customer_limit": args.per_customer_limit,
            "shared_email_percent": args.shared_email_percent,
            "socket_sample": args.socket_sample.min(args.buyers),
            "connections": args.connections,
            "join_rate": args.join_rate,
            "lead_s": args.lead.as_secs_f64(),
            "starts_in_s": args.starts_in().as_secs_f64(),
            "sku": sku,
            "campaign_id": campaign.id,
            "starts_at_ms": campaign.starts_at_ms,
        }),
    );
    let mut failures: Vec<String> = Vec::new();
    let mut strict_failures: Vec<String> = Vec::new();

    // Setup and joins.
    report.figure_int("buyers", args.buyers as u64);
    report.figure_int("units", args.units as u64);
    report.figure_int("admitted per second", args.admit_per_second as u64);
    report.figure_int("buyers sharing a customer's email", emails.shared as u64);
    let customers = emails.customers();
    report.figure_int("customers (normalized emails)", customers as u64);
    report.figure_int("buyers joined", q.joined as u64);
    let unstored = run
        .records
        .iter()
        .filter(|r| r.join_position.is_some() && r.slot.is_none())
        .count();
    if unstored > 0 {
        failures.push(format!(
            "{unstored} buyers were answered a place that PostgreSQL does not hold"
        ));
    }
    let joins: Vec<&Record> = run.records.iter().filter(|r| r.slot.is_some()).collect();
    let first_join = joins
        .iter()
        .map(|r| r.join_sent_ms)
        .fold(f64::INFINITY, f64::min);
    let last_join = joins
        .iter()
        .map(|r| r.join_answered_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    if !joins.is_empty() {
        let span = (last_join - first_join).max(1.0);
        report.figure_f64("joins per second", joins.len() as f64 * 1000.0 / span, 0);
        report.figure_f64(
            "lead: last join to the start (s)",
            (start - last_join) / 1000.0,
            3,
        );
        if last_join + args.lead.as_millis() as f64 > start {
            strict_failures.push(format!(
                "the joins ended {:.2} s before the start, less than --lead {:.2} s (the joins took {:.1} s; give a later --starts-in or a lower --join-rate)",
                (start - last_join) / 1000.0,
                args.lead.as_secs_f64(),
                span / 1000.0
            ));
        }
    }
    if q.joined < args.buyers {
        strict_failures.push(format!(
            "{} of {} buyers got no place in the queue",
            args.buyers - q.joined,
            args.buyers
        ));
    }
    if q.late_sockets > 0 {
        strict_failures.push(format!(
            "{} sockets opened only after their buyer's turn came (the pushes they missed are not counted)",
            q.late_sockets
        ));
    }

    // The queue: places, spread, fairness, pushes.
    report.figure_int("duplicate slots", q.duplicate_slots as u64);
    report.figure_int("missing slots", q.missing_slots as u64);
    report.figure_int(
        "join answers that differ from the stored slot",
        q.position_mismatches as u64,
    );
    report.figure_int("join order inversions", q.join_order_inversions as u64);
    report.figure(
        "scheduled admission - start: first / p50 / p99 / last",
        q.scheduled.to_json(),
        q.scheduled.shown(),
    );
    report.figure(
        "observed admission - start: first / p50 / p99 / last",
        q.observed.to_json(),
        q.observed.shown(),
    );
    report.figure(
        "observed - scheduled, socket buyers",
        q.lag_socket.to_json(),
        q.lag_socket.shown(),
    );
    report.figure(
        "observed - scheduled, polling buyers",
        q.lag_poll.to_json(),
        q.lag_poll.shown(),
    );
    report.figure_int("admissions seen before their time", q.early as u64);
    report.figure(
        "fairness: admitted out of join order (observed)",
        json!({"buyers": q.out_of_order, "fraction": q.fraction(q.out_of_order)}),
        format!(
            "{} ({:.4})",
            thousands(q.out_of_order as u64),
            q.fraction(q.out_of_order)
        ),
    );
    report.figure(
        "fairness: out of join order by > 250 ms (observed)",
        json!({"buyers": q.out_of_order_beyond_tolerance, "fraction": q.fraction(q.out_of_order_beyond_tolerance)}),
        format!(
            "{} ({:.4})",
            thousands(q.out_of_order_beyond_tolerance as u64),
            q.fraction(q.out_of_order_beyond_tolerance)
        ),
    );
    report.figure_int(
        "fairness: told to wait after a later joiner was admitted",
        q.overtaken as u64,
    );
    report.figure(
        "admitted push - scheduled: first / p50 / p99 / last",
        q.admitted_push.to_json(),
        q.admitted_push.shown(),
    );
    report.figure_f64("queue push delivery p99 (ms)", q.admitted_push.p99, 1);
    report.figure(
        "position push - due: first / p50 / p99 / last",
        q.position_push.to_json(),
        format!(
            "{} ({} pushes)",
            q.position_push.shown(),
            thousands(q.position_push.count as u64)
        ),
    );
    report.figure_int(
        "socket buyers without an admitted push",
        q.missing_pushes as u64,
    );
    report.figure_int(
        "position pushes before their time",
        q.early_position_pushes as u64,
    );
    if q.duplicate_slots > 0 {
        failures.push(format!(
            "{} buyers share a slot with another",
            q.duplicate_slots
        ));
    }
    for (n, what) in [
        (q.missing_slots, "slots below the last one joined before the start were given to nobody"),
        (q.position_mismatches, "joins before the start were answered a position other than their stored slot"),
        (q.join_order_inversions, "buyers got an earlier slot than a buyer whose join had completed before theirs was sent"),
        (q.early, "buyers were seen admitted before their scheduled time"),
        (q.overtaken, "buyers were told to wait after a later joiner had been admitted"),
        (q.missing_pushes, "socket buyers never got their admitted push"),
        (q.early_position_pushes, "position pushes arrived before the position was true"),
    ] {
        if n > 0 {
            strict_failures.push(format!("{n} {what}"));
        }
    }

    // Outcomes and the sale.
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &run.records {
        *outcomes.entry(r.outcome.label()).or_default() += 1;
    }
    for o in Outcome::ALL {
        report.figure_int(o.label(), outcomes.get(o.label()).copied().unwrap_or(0));
    }
    for o in [Outcome::Lapsed, Outcome::GaveUp, Outcome::Failed] {
        let n = outcomes.get(o.label()).copied().unwrap_or(0);
        if n > 0 {
            strict_failures.push(format!("{n} {}", o.label()));
        }
    }
    ms_figure(
        &mut report,
        "start to sold out, client (s)",
        run.sold_out_ms.map(|t| t - start),
    );
    ms_figure(
        &mut report,
        "start to last order, database (s)",
        audit.order_span_ms.map(|(_, last)| last - start),
    );
    ms_figure(
        &mut report,
        "start to first order, database (s)",
        audit.order_span_ms.map(|(first, _)| first - start),
    );
    report.figure_f64("whole run, joins included (s)", run.whole.as_secs_f64(), 3);

    // The audit.
    let stock = &audit.stock;
    let oversold = audit.oversold(run.orders, args.units);
    let refused: Vec<String> = run
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::SoldOut)
        .map(|r| customer(&emails.of[r.buyer]))
        .collect();
    let under = undersold(
        args.units,
        stock.sold,
        &refused,
        &audit.customers_with_orders,
    );
    report.figure_int("orders (client)", run.orders);
    report.figure_int("orders (database)", stock.orders as u64);
    report.figure_int("units sold (database)", stock.sold.max(0) as u64);
    report.figure_int("oversold units", oversold as u64);
    report.figure_int("undersold units", under as u64);
    report.figure_int("customers over the limit", audit.over_limit.len() as u64);
    report.figure(
        "stock left: available / leased / reserved",
        json!({ "available": stock.available, "leased": stock.leased, "reserved": stock.reserved }),
        format!(
            "{} / {} / {}",
            stock.available, stock.leased, stock.reserved
        ),
    );
    report.figure_int("stock invariant violations", audit.violations.len() as u64);
    if oversold > 0 {
        failures.push(format!(
            "oversold: {} units sold, {} in order lines, {} orders (client), of {} units",
            stock.sold, stock.order_line_units, run.orders, args.units
        ));
    }
    if stock.orders as u64 != run.orders {
        failures.push(format!(
            "the client counted {} orders, the database has {} for {sku}",
            run.orders, stock.orders
        ));
    }
    for (who, units) in audit.over_limit.iter().take(10) {
        failures.push(format!(
            "customer {who} bought {units} units, past the limit of {}",
            args.per_customer_limit
        ));
    }
    for v in &audit.violations {
        failures.push(format!("stock invariant: {v}"));
    }
    if under > 0 {
        strict_failures.push(format!(
            "undersold: {under} units left unsold while a buyer who could have bought was told sold out"
        ));
    }
    let expected_orders = (customers as i64 * args.per_customer_limit).min(args.units);
    if under == 0 && stock.sold < expected_orders {
        report.notes.push(format!(
            "{} of {} units sold, and no eligible buyer was told sold out",
            stock.sold, args.units
        ));
    }

    // Refusals (4xx) and failures (5xx) by code, and requests without an answer.
    let refusals: BTreeMap<String, u64> = run
        .rec
        .counters
        .iter()
        .filter_map(|(k, n)| k.strip_prefix(REFUSED).map(|k| (k.to_owned(), *n)))
        .collect();
    let shown = refusals
        .iter()
        .map(|(k, n)| format!("{k}: {}", thousands(*n)))
        .collect::<Vec<_>>()
        .join("; ");
    report.figure(
        "error answers by endpoint, status and code",
        json!(refusals),
        if shown.is_empty() { "-".into() } else { shown },
    );
    let total = run.rec.total();
    report.figure_int("5xx answers", total.server_errors());
    report.figure_int(
        "requests without an answer",
        total.failures.values().sum::<u64>(),
    );
    let panicked = run.rec.counter("buyer tasks that panicked");
    if panicked > 0 {
        failures.push(format!("{panicked} buyer tasks panicked"));
    }

    report.failures.extend(failures);
    if c.strict {
        report.failures.extend(strict_failures);
    } else {
        report.notes.extend(strict_failures);
    }
    report.conclude([Section::new("campaign", run.whole, run.rec)], c.strict)
}

/// Runs the campaign and its audit.
pub async fn run(args: CampaignArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    anyhow::ensure!(args.buyers > 0, "--buyers must be positive");
    anyhow::ensure!(args.units > 0, "--units must be positive");
    anyhow::ensure!(
        args.admit_per_second > 0,
        "--admit-per-second must be positive"
    );
    anyhow::ensure!(
        args.per_customer_limit > 0,
        "--per-customer-limit must be positive"
    );
    anyhow::ensure!(c.concurrency > 0, "--concurrency must be positive");
    anyhow::ensure!(
        (0.0..=50.0).contains(&args.shared_email_percent),
        "--shared-email-percent must be from 0 to 50"
    );
    let admissions = Duration::from_secs_f64(args.buyers as f64 / args.admit_per_second as f64);
    anyhow::ensure!(
        c.duration > admissions + Duration::from_secs(2),
        "--duration {:.0} s cannot hold the admissions: {} buyers at {}/s take {:.1} s",
        c.duration.as_secs_f64(),
        args.buyers,
        args.admit_per_second,
        admissions.as_secs_f64()
    );
    db::check_local(&args.database_url)?;
    let bases = c.base_strings()?;
    let admin_client = http::client(&ClientOptions {
        timeout: c.timeout,
        connections: 8,
        source: None,
    });
    let product = admin::fresh_visible(
        &admin_client,
        &bases,
        &args.admin_token,
        "campaign",
        args.units,
    )
    .await?;
    let starts_at_ms = (now_ms() + args.starts_in().as_secs_f64() * 1000.0) as i64;
    let ends_at_ms = starts_at_ms + (c.duration + Duration::from_secs(600)).as_millis() as i64;
    let body = json!({
        "name": format!("Load test {}", product.sku),
        "skus": [product.sku],
        "starts_at_ms": starts_at_ms,
        "ends_at_ms": ends_at_ms,
        "per_customer_limit": args.per_customer_limit,
        "queue": {"admit_per_second": args.admit_per_second},
    });
    let campaign = admin::campaign_visible(&admin_client, &bases, &args.admin_token, &body).await?;
    let emails = Arc::new(Emails::new(
        args.buyers,
        args.shared_email_percent,
        &mut Rng::new(args.buyers as u64),
    ));
    println!(
        "campaign: {} buyers ({} sharing an email, {} on sockets), {} units of {}, {}/s, starting in {:.1} s, over {}",
        thousands(args.buyers as u64),
        thousands(emails.shared as u64),
        thousands(args.socket_sample.min(args.buyers) as u64),
        thousands(args.units as u64),
        product.sku,
        args.admit_per_second,
        (campaign.starts_at_ms as f64 - now_ms()) / 1000.0,
        bases.join(", ")
    );
    let rss_before = c.server_rss();
    let run = sell(&args, &bases, &product.sku, &campaign, emails.clone()).await?;
    let rss_after = c.server_rss();
    let audit = Audit::read(&args.database_url, &product.sku, args.per_customer_limit).await?;
    let mut report = conclude(&args, &product.sku, &campaign, &emails, run, &audit);
    report.rss(rss_before, rss_after);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::socket_buyer;

    #[test]
    fn the_socket_sample_has_its_size_and_spreads_over_the_buyers() {
        // Guards against a sample larger than asked (the open-file limit) or bunched
        // at the front of the queue.
        for (buyers, sample) in [(20_000, 2_000), (300, 30), (10, 0), (5, 9), (2_001, 2_000)] {
            let chosen: Vec<usize> = (0..buyers)
                .filter(|i| socket_buyer(*i, buyers, sample))
                .collect();
            assert_eq!(chosen.len(), sample.min(buyers), "{buyers}/{sample}");
            if sample > 1 && sample < buyers / 2 {
                assert!(
                    *chosen.last().unwrap_or(&0) >= buyers / 2,
                    "{buyers}/{sample}"
                );
            }
        }
    }
}
