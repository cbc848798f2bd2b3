//! `flash-sale`: a fresh SKU of U units, B buyers each with its own session, C at a
//! time. Each buyer reserves one unit and checks out with an Idempotency-Key, retrying
//! until it has an order or every node answers "sold out". Then the orders are
//! counted on both sides and the stock invariant is checked in PostgreSQL.

use std::{
    rc::Rc,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    admin, ceiling,
    cli::{Common, FlashSaleArgs},
    db, harness,
    http::{self, ClientOptions},
    report::{per_second, Recorder, Report, Section},
    session::Session,
    util::{thousands, Rng},
};

/// Label of reservations.
pub const PUT: &str = "PUT /api/cart/items/{sku}";
/// Label of checkouts.
pub const CHECKOUT: &str = "POST /api/checkout";
/// Histogram of sold-out answers.
pub const SOLD_OUT: &str = "sold-out answer (409, available 0)";

/// Most requests one buyer sends in each phase.
const MAX_ATTEMPTS: u32 = 10_000;

/// What became of a buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ordered,
    SoldOut,
    GaveUp,
    Failed,
}

impl Outcome {
    fn counter(self) -> &'static str {
        match self {
            Outcome::Ordered => "buyers with an order",
            Outcome::SoldOut => "buyers told sold out by every node",
            Outcome::GaveUp => "buyers stopped by the deadline",
            Outcome::Failed => "buyers stopped by an unexpected answer",
        }
    }
}

/// State the buyers share across threads.
struct Shared {
    next: AtomicUsize,
    cookies: Vec<Option<String>>,
    orders: AtomicU64,
    sold_out_at: Mutex<Option<Instant>>,
    /// When the latest successful reservation was sent: a unit was free then, and units
    /// only move from free to reserved to sold in this sale, so it was free before too.
    last_reserved_sent: Mutex<Option<Instant>>,
    /// When each sold-out answer arrived.
    sold_out_answers: Mutex<Vec<Instant>>,
}

impl Shared {
    /// Sold-out answers that arrived before a later request still found a free unit:
    /// false sold-outs, which invariant 6 forbids.
    fn false_sold_outs(&self) -> u64 {
        let Some(last) = self.last_reserved_sent.lock().ok().and_then(|g| *g) else {
            return 0;
        };
        self.sold_out_answers
            .lock()
            .map(|a| a.iter().filter(|at| **at < last).count() as u64)
            .unwrap_or(0)
    }
}

/// What one buyer needs to know.
struct Ctx {
    bases: Vec<Rc<str>>,
    sku: String,
    units: u64,
    deadline: Instant,
    shared: Arc<Shared>,
}

fn pause(attempt: u32, rng: &mut Rng) -> impl std::future::Future<Output = ()> {
    actix_web::rt::time::sleep(harness::backoff(
        attempt,
        Duration::from_millis(5),
        Duration::from_millis(100),
        rng,
    ))
}

async fn buyer(
    i: usize,
    ctx: &Ctx,
    client: &awc::Client,
    rec: &mut Recorder,
    rng: &mut Rng,
) -> Outcome {
    let n = ctx.bases.len();
    let mut node = i % n;
    let cookie = ctx.shared.cookies.get(i).cloned().flatten();
    let mut s = Session::with_cookie(client.clone(), ctx.bases[node].clone(), cookie);
    let key = uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64()).to_string();
    let email = format!("buyer{i}@loadtest.example");
    let mut zero = vec![false; n];
    let mut attempt = 0u32;
    'buyer: loop {
        attempt += 1;
        if attempt > MAX_ATTEMPTS || Instant::now() >= ctx.deadline {
            return Outcome::GaveUp;
        }
        let r = match s.put_item(&ctx.sku, 1).await {
            Ok(r) => r,
            Err(f) => {
                rec.failure(PUT, &f);
                pause(attempt, rng).await;
                continue;
            }
        };
        match r.status {
            200 => {
                rec.reply(PUT, &r, true);
                let sent = Instant::now().checked_sub(r.latency);
                if let (Some(sent), Ok(mut last)) = (sent, ctx.shared.last_reserved_sent.lock()) {
                    *last = Some(last.map_or(sent, |l| l.max(sent)));
                }
            }
            409 if r.is_sold_out() => {
                rec.reply(PUT, &r, true);
                rec.sample(SOLD_OUT, r.latency);
                if let Ok(mut answers) = ctx.shared.sold_out_answers.lock() {
                    answers.push(Instant::now());
                }
                zero[node] = true;
                match (1..=n).map(|k| (node + k) % n).find(|j| !zero[*j]) {
                    None => return Outcome::SoldOut,
                    Some(j) => {
                        node = j;
                        s.set_base(ctx.bases[j].clone());
                        continue;
                    }
                }
            }
            409 | 429 => {
                rec.reply(PUT, &r, true);
                pause(attempt, rng).await;
                continue;
            }
            status if status >= 500 => {
                rec.reply(PUT, &r, false);
                pause(attempt, rng).await;
                continue;
            }
            _ => {
                rec.reply(PUT, &r, false);
                return Outcome::Failed;
            }
        }
        // Reserved: check out with the same key until the answer settles it.
        for c_attempt in 1..=MAX_ATTEMPTS {
            if Instant::now() >= ctx.deadline {
                return Outcome::GaveUp;
            }
            let r = match s.checkout(&key, &email).await {
                Ok(r) => r,
                Err(f) => {
                    // Unknown whether it committed: the same key makes a retry safe.
                    rec.failure(CHECKOUT, &f);
                    pause(c_attempt, rng).await;
                    continue;
                }
            };
            match r.status {
                201 => {
                    rec.reply(CHECKOUT, &r, true);
                    if r.replayed {
                        rec.count("checkouts answered as replays", 1);
                    }
                    let n = ctx.shared.orders.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == ctx.units {
                        if let Ok(mut at) = ctx.shared.sold_out_at.lock() {
                            at.get_or_insert_with(Instant::now);
                        }
                    }
                    return Outcome::Ordered;
                }
                409 => {
                    // reservation_expired or cart_empty: reserve again.
                    rec.reply(CHECKOUT, &r, true);
                    let code = r.error().map(|e| e.code).unwrap_or_default();
                    rec.count(&format!("checkout 409 {code}"), 1);
                    continue 'buyer;
                }
                429 => {
                    rec.reply(CHECKOUT, &r, true);
                    pause(c_attempt, rng).await;
                }
                status if status >= 500 => {
                    rec.reply(CHECKOUT, &r, false);
                    pause(c_attempt, rng).await;
                }
                _ => {
                    rec.reply(CHECKOUT, &r, false);
                    return Outcome::Failed;
                }
            }
        }
        return Outcome::GaveUp;
    }
}

/// Gives every buyer a session and a cart before the sale: `GET /api/cart` on its node.
/// Returns the run (as a report section) and each buyer's cookie.
async fn warm(
    bases: &[String],
    buyers: usize,
    concurrency: usize,
    threads: usize,
    timeout: Duration,
) -> anyhow::Result<(Section, Vec<Option<String>>)> {
    println!("flash-sale: warming {} sessions", thousands(buyers as u64));
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let bases = bases.to_vec();
    let out = harness::run(threads, move |t| {
        let (next, bases) = (next.clone(), bases.clone());
        async move {
            let (workers, client) = harness::thread_client(concurrency, threads, t, timeout);
            let bases: Vec<Rc<str>> = bases.iter().map(|b| Rc::from(b.as_str())).collect();
            let tasks = (0..workers).map(|_| {
                let (next, bases, client) = (next.clone(), bases.clone(), client.clone());
                async move {
                    let mut rec = Recorder::default();
                    let mut cookies = Vec::new();
                    for _ in 0..buyers {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= buyers {
                            break;
                        }
                        let mut s = Session::new(client.clone(), bases[i % bases.len()].clone());
                        for _ in 0..5 {
                            match s.get("/api/cart").await {
                                Ok(r) => {
                                    rec.reply("GET /api/cart", &r, r.status == 200);
                                    if r.status == 200 {
                                        break;
                                    }
                                }
                                Err(f) => rec.failure("GET /api/cart", &f),
                            }
                        }
                        cookies.push((i, s.cookie().map(str::to_owned)));
                    }
                    (rec, cookies)
                }
            });
            futures_util::future::join_all(tasks).await
        }
    })
    .await?;
    let mut cookies = vec![None; buyers];
    let mut recs = Vec::new();
    for (rec, list) in out.into_iter().flatten() {
        for (i, c) in list {
            if let Some(slot) = cookies.get_mut(i) {
                *slot = c;
            }
        }
        recs.push(rec);
    }
    let missing = cookies.iter().filter(|c| c.is_none()).count();
    anyhow::ensure!(
        missing == 0,
        "{missing} buyers got no session cookie in the warm-up"
    );
    Ok((
        Section {
            name: "warm-up".into(),
            elapsed: started.elapsed(),
            recorder: Recorder::merged(&recs),
        },
        cookies,
    ))
}

/// What the sale gave on the client's side.
struct Sold {
    rec: Recorder,
    /// From the first buyer to the last outcome.
    whole: Duration,
    /// Orders the buyers counted.
    orders: u64,
    /// When the last unit sold, from the start.
    sold_out_after: Option<Duration>,
    /// Sold-out answers given while units remained.
    false_sold_outs: u64,
}

impl Sold {
    /// Reservations and checkouts that committed (a replayed checkout is one order).
    fn durable(&self) -> u64 {
        (self.rec.status_count(PUT, 200) + self.rec.status_count(CHECKOUT, 201))
            .saturating_sub(self.rec.counter("checkouts answered as replays"))
    }

    /// Committed operations per second until sold out (or over the whole sale).
    fn durable_per_s(&self) -> f64 {
        per_second(self.durable(), self.sold_out_after.unwrap_or(self.whole))
    }
}

/// Runs `buyers` buyers of `units` units of `sku` over the URLs, `c.concurrency` at a
/// time, until each has an outcome or `--duration` has passed.
async fn sell(
    c: &Common,
    bases: &[String],
    sku: &str,
    buyers: usize,
    units: u64,
    cookies: Vec<Option<String>>,
) -> anyhow::Result<Sold> {
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        cookies,
        orders: AtomicU64::new(0),
        sold_out_at: Mutex::new(None),
        last_reserved_sent: Mutex::new(None),
        sold_out_answers: Mutex::new(Vec::new()),
    });
    let started = Instant::now();
    let deadline = started + c.duration;
    let (threads, concurrency, timeout) = (c.threads, c.concurrency, c.timeout);
    let recs = {
        let (shared, sku, bases) = (shared.clone(), sku.to_owned(), bases.to_vec());
        harness::run(threads, move |t| {
            let (shared, sku, bases) = (shared.clone(), sku.clone(), bases.clone());
            async move {
                let (workers, client) = harness::thread_client(concurrency, threads, t, timeout);
                let ctx = Rc::new(Ctx {
                    bases: bases.iter().map(|b| Rc::from(b.as_str())).collect(),
                    sku,
                    units,
                    deadline,
                    shared,
                });
                let tasks = (0..workers).map(|w| {
                    let (ctx, client) = (ctx.clone(), client.clone());
                    async move {
                        let mut rec = Recorder::default();
                        let mut rng = Rng::new((t * 1_000_000 + w) as u64);
                        for _ in 0..buyers {
                            let i = ctx.shared.next.fetch_add(1, Ordering::SeqCst);
                            if i >= buyers {
                                break;
                            }
                            let outcome = buyer(i, &ctx, &client, &mut rec, &mut rng).await;
                            rec.count(outcome.counter(), 1);
                        }
                        rec
                    }
                });
                let recs = futures_util::future::join_all(tasks).await;
                Recorder::merged(&recs)
            }
        })
        .await?
    };
    let whole = started.elapsed();
    let sold_out_after = shared
        .sold_out_at
        .lock()
        .ok()
        .and_then(|g| *g)
        .map(|at| at.duration_since(started));
    Ok(Sold {
        rec: Recorder::merged(&recs),
        whole,
        orders: shared.orders.load(Ordering::SeqCst),
        sold_out_after,
        false_sold_outs: shared.false_sold_outs(),
    })
}

/// The sale as PostgreSQL sees it.
struct Audit {
    stock: db::Stock,
    violations: Vec<String>,
}

impl Audit {
    async fn read(database_url: &str, sku: &str) -> anyhow::Result<Self> {
        let client = db::connect(database_url).await?;
        Ok(Self {
            stock: db::stock(&client, sku).await?,
            violations: db::violations(&client).await?,
        })
    }

    /// Units sold beyond `units`, by the largest of the three counts.
    fn oversell(&self, orders: u64, units: i64) -> i64 {
        (orders as i64)
            .max(self.stock.sold)
            .max(self.stock.order_line_units)
            - units
    }
}

/// The sale's figures: orders on both sides, over- and undersell, what is left,
/// outcomes, timings and durable throughput.
fn add_figures(report: &mut Report, args: &FlashSaleArgs, sold: &Sold, audit: &Audit) {
    let stock = &audit.stock;
    let oversell = audit.oversell(sold.orders, args.units);
    let undersell = args.units - sold.orders as i64;
    report.figure_int("buyers", args.buyers as u64);
    report.figure_int("units", args.units as u64);
    report.figure_int("orders (client)", sold.orders);
    report.figure_int("orders (database)", stock.orders as u64);
    report.figure_int("units sold (database)", stock.sold.max(0) as u64);
    report.figure_int("oversold units", oversell.max(0) as u64);
    report.figure_int("undersold units", undersell.max(0) as u64);
    report.figure(
        "stock left: available / leased / reserved",
        json!({ "available": stock.available, "leased": stock.leased, "reserved": stock.reserved }),
        format!(
            "{} / {} / {}",
            stock.available, stock.leased, stock.reserved
        ),
    );
    for o in [
        Outcome::Ordered,
        Outcome::SoldOut,
        Outcome::GaveUp,
        Outcome::Failed,
    ] {
        report.figure_int(o.counter(), sold.rec.counter(o.counter()));
    }
    match sold.sold_out_after {
        Some(d) => report.figure_f64("time to sell out (s)", d.as_secs_f64(), 3),
        None => report.figure("time to sell out (s)", json!(null), "not sold out"),
    }
    report.figure_f64("whole sale (s)", sold.whole.as_secs_f64(), 3);
    let so = sold
        .rec
        .hists
        .get(SOLD_OUT)
        .map(|h| h.summary())
        .unwrap_or_default();
    report.figure_f64("sold-out answer p50 (ms)", so.p50, 2);
    report.figure_f64("sold-out answer p99 (ms)", so.p99, 2);
    report.figure_int(
        "false sold-outs (409 while units remained)",
        sold.false_sold_outs,
    );
    report.figure_int("durable reservations + checkouts", sold.durable());
    report.figure_f64("durable ops/s (until sold out)", sold.durable_per_s(), 0);
    report.figure_int("stock invariant violations", audit.violations.len() as u64);
}

/// Oversell, an order count that differs between client and database and any broken
/// invariant fail the sale; undersell fails it with `--strict`, else it is a note.
fn add_failures(report: &mut Report, args: &FlashSaleArgs, sku: &str, sold: &Sold, audit: &Audit) {
    let (stock, orders) = (&audit.stock, sold.orders);
    if audit.oversell(orders, args.units) > 0 {
        report.failures.push(format!(
            "oversell: {} units sold, {} orders (client), {} units in order lines, of {} units",
            stock.sold, orders, stock.order_line_units, args.units
        ));
    }
    if stock.orders as u64 != orders {
        report.failures.push(format!(
            "the client counted {orders} orders, the database has {} for {sku}",
            stock.orders
        ));
    }
    for v in &audit.violations {
        report.failures.push(format!("stock invariant: {v}"));
    }
    if sold.false_sold_outs > 0 {
        report.failures.push(format!(
            "{} sold-out answers arrived while a later buyer still found a free unit",
            sold.false_sold_outs
        ));
    }
    if args.units > orders as i64 {
        let msg = format!(
            "undersell: {orders} orders of {} units while {} units were not sold",
            args.units,
            stock.total - stock.sold
        );
        if args.common.strict {
            report.failures.push(msg);
        } else {
            report.notes.push(msg);
        }
    }
}

/// Runs the sale and its checks.
pub async fn run(args: FlashSaleArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    anyhow::ensure!(args.units > 0, "--units must be positive");
    anyhow::ensure!(c.concurrency > 0, "--concurrency must be positive");
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
        "flash",
        args.units,
    )
    .await?;
    println!(
        "flash-sale: {} buyers, {} units of {}, concurrency {}, over {}",
        thousands(args.buyers as u64),
        thousands(args.units as u64),
        product.sku,
        c.concurrency,
        bases.join(", ")
    );
    let warmed = if args.warm_sessions {
        Some(warm(&bases, args.buyers, c.concurrency, c.threads, c.timeout).await?)
    } else {
        None
    };
    let rss_before = c.server_rss();
    let cookies = warmed.as_ref().map(|w| w.1.clone()).unwrap_or_default();
    let sold = sell(
        c,
        &bases,
        &product.sku,
        args.buyers,
        args.units as u64,
        cookies,
    )
    .await?;
    let rss_after = c.server_rss();
    let audit = Audit::read(&args.database_url, &product.sku).await?;

    let mut report = Report::new(
        "flash-sale",
        json!({
            "common": c.json(),
            "buyers": args.buyers,
            "units": args.units,
            "sku": product.sku,
            "warm_sessions": args.warm_sessions,
        }),
    );
    add_figures(&mut report, &args, &sold, &audit);
    report.rss(rss_before, rss_after);
    add_failures(&mut report, &args, &product.sku, &sold, &audit);
    if !args.ceiling_db_duration.is_zero() {
        let ceil = ceiling::db_run(&args.database_url, args.ceiling_db_duration, 4, 512).await?;
        ceiling::add_db_figures(&mut report, &ceil, sold.durable_per_s());
    }
    let mut sections = Vec::new();
    if let Some((section, _)) = warmed {
        report.notes.push(format!(
            "sessions warmed before the sale: {} buyers got their cookie and cart with GET /api/cart in {:.2} s (not part of the sale's figures)",
            thousands(args.buyers as u64),
            section.elapsed.as_secs_f64()
        ));
        sections.push(section);
    }
    sections.push(Section::new("sale", sold.whole, sold.rec));
    Ok(report.conclude(sections, c.strict))
}
