//! `cart`: sessions adding, changing and removing lines over random demo SKUs with
//! stock. Every `200` is a committed write, so this measures durable operations per
//! second, compared with the COPY ceiling of the same PostgreSQL.

use std::{sync::Arc, time::Duration};

use serde_json::json;

use crate::{
    catalog, ceiling,
    cli::CartArgs,
    harness::{self, Load, Slot, Worker},
    http::Reply,
    report::{per_second, Recorder, Report, Section},
    session::Session,
    util::Rng,
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
    /// A shopper with a fresh session and an empty cart at the slot's node.
    pub fn new(slot: Slot) -> Self {
        Self {
            session: Session::new(slot.client, slot.base),
            lines: Vec::new(),
        }
    }

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

/// A worker that changes its cart and starts a new session every `per_session` steps.
struct CartWorker {
    shopper: Shopper,
    skus: Arc<Vec<(String, i64)>>,
    per_session: usize,
    ops: usize,
}

impl Worker for CartWorker {
    async fn step(&mut self, rec: &mut Recorder, rng: &mut Rng) {
        if self.ops >= self.per_session {
            self.shopper.empty(rec).await;
            self.shopper.session.reset();
            self.ops = 0;
        }
        if self.ops == 0 {
            rec.count("sessions", 1);
        }
        self.shopper.step(&self.skus, rec, rng).await;
        self.ops += 1;
    }

    async fn finish(&mut self, rec: &mut Recorder) {
        self.shopper.empty(rec).await;
    }
}

/// Runs the cart scenario (and the COPY ceiling when a database URL is given).
pub async fn run(args: CartArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    let bases = c.base_strings()?;
    let cat = catalog::read(&bases[0], c.timeout, 20).await?;
    println!(
        "cart: {} SKUs with stock; {} sessions at a time over {} for {:.1} s",
        cat.skus.len(),
        c.concurrency,
        bases.join(", "),
        c.duration.as_secs_f64()
    );
    let skus = Arc::new(cat.skus);
    let per_session = args.ops_per_session.max(1);
    let rss_before = c.server_rss();
    let load = Load::start(bases, c);
    let (rec, load_end) = harness::timed(&load, move |slot| CartWorker {
        shopper: Shopper::new(slot),
        skus: skus.clone(),
        per_session,
        ops: 0,
    })
    .await?;
    let rss_after = c.server_rss();
    let elapsed = load_end.duration_since(load.started);
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
    Ok(report.conclude([Section::new("surge", elapsed, rec)], c.strict))
}
