//! `cart`: sessions adding, changing and removing lines over random demo SKUs with
//! stock. Every `200` is a committed write, so this measures durable operations per
//! second, compared with the COPY ceiling of the same PostgreSQL.

use std::{
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    catalog, ceiling,
    cli::CartArgs,
    harness,
    http::{self, ClientOptions, Reply},
    report::{per_second, Recorder, Report, Section},
    session::Session,
    util::{rss_kib, Rng},
};

/// Label of line changes.
pub const PUT: &str = "PUT /api/cart/items/{sku}";
/// Label of line removals.
pub const DELETE: &str = "DELETE /api/cart/items/{sku}";
/// Label of the removals that empty carts at the end.
pub const CLEANUP: &str = "DELETE (cleanup)";

/// Most lines a session keeps.
const MAX_LINES: usize = 3;

/// Whether a cart answer is one the scenario expects: success, not enough stock, or
/// load shedding.
pub fn expected(r: &Reply) -> bool {
    matches!(r.status, 200 | 409 | 429)
}

/// A session's cart as the client believes it is.
pub struct Shopper {
    /// The session.
    pub session: Session,
    /// SKU and quantity of each line.
    pub lines: Vec<(String, i64)>,
}

impl Shopper {
    /// One random cart operation: add a line, change a quantity, or remove a line.
    pub async fn step(&mut self, skus: &[(String, i64)], rec: &mut Recorder, rng: &mut Rng) {
        let add = self.lines.is_empty() || (self.lines.len() < MAX_LINES && rng.percent(40));
        if add {
            let Some((sku, _)) = (0..5)
                .filter_map(|_| rng.pick(skus))
                .find(|(s, _)| !self.lines.iter().any(|(l, _)| l == s))
            else {
                return;
            };
            let q = 1 + rng.below(2) as i64;
            match self.session.put_item(sku, q).await {
                Ok(r) => {
                    rec.reply(PUT, &r, expected(&r));
                    if r.status == 200 {
                        self.lines.push((sku.clone(), q));
                    }
                }
                Err(f) => rec.failure(PUT, &f),
            }
        } else if rng.percent(60) {
            let i = rng.below(self.lines.len());
            let (sku, old) = self.lines[i].clone();
            let mut q = 1 + rng.below(3) as i64;
            if q == old {
                q = q % 3 + 1;
            }
            match self.session.put_item(&sku, q).await {
                Ok(r) => {
                    rec.reply(PUT, &r, expected(&r));
                    if r.status == 200 {
                        self.lines[i].1 = q;
                    }
                }
                Err(f) => rec.failure(PUT, &f),
            }
        } else {
            let i = rng.below(self.lines.len());
            let sku = self.lines[i].0.clone();
            match self.session.delete_item(&sku).await {
                Ok(r) => {
                    rec.reply(DELETE, &r, r.status == 200 || r.status == 429);
                    if r.status == 200 {
                        self.lines.remove(i);
                    }
                }
                Err(f) => rec.failure(DELETE, &f),
            }
        }
    }

    /// Removes every line (releasing the units), a bounded number of tries each.
    pub async fn empty(&mut self, rec: &mut Recorder) {
        for (sku, _) in std::mem::take(&mut self.lines) {
            for _ in 0..3 {
                match self.session.delete_item(&sku).await {
                    Ok(r) => {
                        rec.reply(CLEANUP, &r, r.status == 200 || r.status == 429);
                        if r.status == 200 {
                            break;
                        }
                    }
                    Err(f) => rec.failure(CLEANUP, &f),
                }
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Runs the cart scenario (and the COPY ceiling when a database URL is given).
pub async fn run(args: CartArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    let bases = c.base_strings()?;
    let probe = http::client(&ClientOptions {
        timeout: c.timeout,
        connections: 4,
        source: None,
    });
    let cat = catalog::fetch(&probe, &bases[0], 20).await?;
    anyhow::ensure!(
        !cat.skus.is_empty(),
        "no SKU with 20+ units in stock at {}",
        bases[0]
    );
    println!(
        "cart: {} SKUs with stock; {} sessions at a time over {} for {:.1} s",
        cat.skus.len(),
        c.concurrency,
        bases.join(", "),
        c.duration.as_secs_f64()
    );
    let skus = Arc::new(cat.skus);
    let rss_before = c.server_pid.and_then(|p| rss_kib(p).ok());
    let started = Instant::now();
    let deadline = started + c.duration;
    let (threads, concurrency, timeout, per_session) = (
        c.threads,
        c.concurrency,
        c.timeout,
        args.ops_per_session.max(1),
    );
    let results = harness::run(threads, move |t| {
        let (skus, bases) = (skus.clone(), bases.clone());
        async move {
            let (workers, client) = harness::thread_client(concurrency, threads, t, timeout);
            let tasks = (0..workers).map(|w| {
                let skus = skus.clone();
                let base: Rc<str> = Rc::from(harness::base_for(&bases, threads, t, w));
                let client = client.clone();
                async move {
                    let mut rec = Recorder::default();
                    let mut rng = Rng::new((t * 100_000 + w) as u64);
                    let mut shopper = Shopper {
                        session: Session::new(client, base),
                        lines: Vec::new(),
                    };
                    let mut ops = 0;
                    rec.count("sessions", 1);
                    for _ in 0..10_000_000u64 {
                        if Instant::now() >= deadline {
                            break;
                        }
                        if ops >= per_session {
                            shopper.empty(&mut rec).await;
                            shopper.session.reset();
                            rec.count("sessions", 1);
                            ops = 0;
                        }
                        shopper.step(&skus, &mut rec, &mut rng).await;
                        ops += 1;
                    }
                    let ended = Instant::now();
                    shopper.empty(&mut rec).await;
                    (rec, ended)
                }
            });
            futures_util::future::join_all(tasks).await
        }
    })
    .await?;
    let rss_after = c.server_pid.and_then(|p| rss_kib(p).ok());
    let (rec, load_end) = harness::merge_timed(results, deadline);
    let elapsed = load_end.duration_since(started);
    let durable = rec.status_count(PUT, 200) + rec.status_count(DELETE, 200);
    let durable_per_s = per_second(durable, elapsed);

    let mut report = Report::new(
        "cart",
        json!({ "common": c.json(), "ops_per_session": args.ops_per_session }),
    );
    report.figure_int("sessions", rec.counter("sessions"));
    report.figure_int("durable cart writes (200)", durable);
    report.figure_f64("durable cart writes/s", durable_per_s, 0);
    report.rss(rss_before, rss_after);
    if let Some(url) = args.database_url.as_deref() {
        if !args.ceiling_db_duration.is_zero() {
            let ceil = ceiling::db_run(url, args.ceiling_db_duration, 4, 512).await?;
            ceiling::add_db_figures(&mut report, &ceil, durable_per_s);
        }
    } else {
        report
            .notes
            .push("no --database-url / DATABASE_URL: the COPY ceiling was skipped".into());
    }
    report.notes.push(format!(
        "req/s and durable writes/s are over the {:.1} s of load; the `{CLEANUP}` rows are the carts emptied afterwards",
        elapsed.as_secs_f64()
    ));
    report.sections.push(Section {
        name: "surge".into(),
        elapsed,
        recorder: rec,
    });
    report.check_errors(c.strict);
    Ok(report)
}
