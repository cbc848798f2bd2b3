//! The Journal: one batched, group-commit writer per node.
//!
//! Callers queue a [`WriteOp`] and wait. The writer takes everything waiting (up to
//! `max_batch`, lingering up to `max_wait` for more), locks the rows the batch touches
//! in a fixed order, plans the batch in memory ([`surge_actors::journal_plan`]),
//! writes the plan with a fixed number of set-based statements, commits once, and only
//! then answers every caller. An acknowledgement therefore always follows a commit.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Pool, Transaction};
use surge_actors::{
    journal_plan::{self, Locked, Plan},
    money::{Currency, Money},
    ports::{BoxFut, Cause, Journal, JournalError, StockLevel, WriteOp, WriteOutcome},
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::inventory;

/// Batching settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Longest time a batch lingers for more writes after the first.
    pub max_wait: Duration,
    /// Writes waiting beyond this are refused at once (backpressure).
    pub queue: usize,
    /// Lifetime given to this node's lease rows on every write and heartbeat.
    pub lease_ttl: Duration,
}

impl JournalConfig {
    /// Writes waiting beyond this are refused at once: a bound on memory, far above
    /// what a node queues at its peak.
    pub const QUEUE: usize = 65_536;
}

struct Item {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, JournalError>>,
}

/// Called after each commit with the SKUs whose sellable count changed.
pub type StockListener = std::sync::Arc<dyn Fn(Vec<StockLevel>) + Send + Sync>;

/// Handle to the node's Journal; cheap to clone.
#[derive(Clone)]
pub struct PgJournal {
    tx: mpsc::Sender<Item>,
    capacity: usize,
}

impl Journal for PgJournal {
    fn write(&self, op: WriteOp) -> BoxFut<Result<WriteOutcome, JournalError>> {
        let (reply, answer) = oneshot::channel();
        let queued = self.tx.try_send(Item { op, reply });
        metrics::gauge!("journal_queue_depth").set((self.capacity - self.tx.capacity()) as f64);
        Box::pin(async move {
            match queued {
                Ok(()) => answer.await.unwrap_or(Err(JournalError::Stopped)),
                Err(mpsc::error::TrySendError::Full(_)) => Err(JournalError::QueueFull),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(JournalError::Stopped),
            }
        })
    }
}

impl PgJournal {
    /// Starts the writer on the current runtime; it ends when every handle is dropped.
    pub fn spawn(pool: Pool, node_id: String, cfg: JournalConfig, listener: StockListener) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue);
        let capacity = cfg.queue;
        actix_web::rt::spawn(run(rx, pool, node_id, cfg, listener));
        Self { tx, capacity }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Item>,
    pool: Pool,
    node_id: String,
    cfg: JournalConfig,
    listener: StockListener,
) {
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        let deadline = tokio::time::Instant::now() + cfg.max_wait;
        while items.len() < cfg.max_batch {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(item)) => items.push(item),
                    _ => break,
                },
            }
        }
        let (ops, replies): (Vec<WriteOp>, Vec<_>) =
            items.into_iter().map(|i| (i.op, i.reply)).unzip();
        metrics::histogram!("journal_batch_size").record(ops.len() as f64);
        let started = std::time::Instant::now();
        let outcome = commit(&pool, &node_id, &cfg, &ops).await;
        metrics::histogram!("journal_commit_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok((results, levels)) => {
                metrics::counter!("journal_batches_total", "result" => "committed").increment(1);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                if !levels.is_empty() {
                    listener(levels);
                }
            }
            Err(err) => {
                metrics::counter!("journal_batches_total", "result" => "failed").increment(1);
                tracing::error!(
                    error = format!("{err:#}"),
                    writes = ops.len(),
                    "journal batch failed; nothing committed"
                );
                let cause = Cause::new(err);
                for reply in replies {
                    let _ = reply.send(Err(JournalError::NotCommitted(cause.clone())));
                }
            }
        }
    }
    tracing::info!("journal stopped");
}

/// One result per op of a batch.
pub type Results = Vec<Result<WriteOutcome, JournalError>>;

/// Commits one batch in one transaction; returns one result per op and the SKUs whose
/// sellable count changed. The Journal's writer calls it with whatever is queued; the
/// benchmark calls it with one op at a time for the one-transaction-per-write baseline.
pub async fn commit(
    pool: &Pool,
    node_id: &str,
    cfg: &JournalConfig,
    ops: &[WriteOp],
) -> anyhow::Result<(Results, Vec<StockLevel>)> {
    let mut client = pool.get().await.context("journal connection")?;
    let tx = client.transaction().await.context("begin")?;
    let locked = lock(&tx, node_id, ops).await?;
    let plan = journal_plan::plan(ops, locked);
    let levels = write(&tx, node_id, cfg, ops, &plan).await?;
    tx.commit().await.context("commit")?;
    Ok((plan.results, levels))
}

/// Locks the batch's inventory rows (sorted, so batches and the reaper never deadlock)
/// and its carts, and reads the state the plan needs.
async fn lock(tx: &Transaction<'_>, node_id: &str, ops: &[WriteOp]) -> anyhow::Result<Locked> {
    let skus = journal_plan::skus(ops);
    let carts = journal_plan::carts(ops);
    let mut locked = Locked::default();
    if !skus.is_empty() {
        let stmt = tx
            .prepare_cached(
                "SELECT sku, available FROM inventory WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
            )
            .await?;
        for row in tx
            .query(&stmt, &[&skus])
            .await
            .context("locking inventory")?
        {
            locked.available.insert(row.get(0), row.get(1));
        }
        let stmt = tx
            .prepare_cached(
                "SELECT sku, quantity FROM stock_leases WHERE node_id = $1 AND sku = ANY($2)",
            )
            .await?;
        for row in tx
            .query(&stmt, &[&node_id, &skus])
            .await
            .context("reading leases")?
        {
            locked.lease.insert(row.get(0), row.get(1));
        }
    }
    let priced = journal_plan::priced_skus(ops);
    if !priced.is_empty() {
        // FOR SHARE: a price change waits for this batch, and this batch for a price
        // change in flight, so the price checked is the price as of the commit.
        // (Catalog writes never wait on inventory locks, so the order cannot deadlock.)
        let stmt = tx
            .prepare_cached(
                "SELECT sku, price_minor, currency FROM variants
                  WHERE sku = ANY($1) AND active ORDER BY sku FOR SHARE",
            )
            .await?;
        for row in tx
            .query(&stmt, &[&priced])
            .await
            .context("reading prices")?
        {
            let currency: String = row.get(2);
            let currency = Currency::parse(&currency)
                .with_context(|| format!("variant currency {currency:?}"))?;
            locked
                .prices
                .insert(row.get(0), Money::new(row.get(1), currency));
        }
    }
    let new_carts: Vec<(Uuid, &str)> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::SetLine(l) => l.create_for_session.as_deref().map(|s| (l.cart_id, s)),
            _ => None,
        })
        .collect();
    if !new_carts.is_empty() {
        // First writes of new sessions. A session whose cart another node made first
        // keeps that one: this cart id is then missing below and its write is stale.
        let ids: Vec<Uuid> = new_carts.iter().map(|(id, _)| *id).collect();
        let sessions: Vec<&str> = new_carts.iter().map(|(_, s)| *s).collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO carts (id, session_id, owner_node)
                 SELECT id, s, $3 FROM UNNEST($1::uuid[], $2::text[]) AS t(id, s)
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(&stmt, &[&ids, &sessions, &node_id])
            .await
            .context("creating carts")?;
    }
    if !carts.is_empty() {
        let stmt = tx
            .prepare_cached(
                "SELECT id, version FROM carts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .await?;
        for row in tx.query(&stmt, &[&carts]).await.context("locking carts")? {
            locked.carts.insert(row.get(0), row.get(1));
        }
        let stmt = tx
            .prepare_cached(
                "SELECT cart_id, sku, quantity FROM reservations WHERE cart_id = ANY($1)",
            )
            .await?;
        for row in tx
            .query(&stmt, &[&carts])
            .await
            .context("reading reservations")?
        {
            locked
                .reservations
                .insert((row.get(0), row.get(1)), row.get(2));
        }
    }
    Ok(locked)
}

async fn write(
    tx: &Transaction<'_>,
    node_id: &str,
    cfg: &JournalConfig,
    ops: &[WriteOp],
    plan: &Plan,
) -> anyhow::Result<Vec<StockLevel>> {
    let moved = inventory::apply(&**tx, &plan.inventory)
        .await
        .context("moving stock")?;
    let ttl_ms = i64::try_from(cfg.lease_ttl.as_millis()).unwrap_or(i64::MAX);
    // Existing rows are updated by delta; new rows (only ever created by a grant, so
    // never negative) are inserted. An INSERT ... ON CONFLICT would check the CHECK
    // constraint against the delta itself and refuse a negative one.
    type Rows<'a> = Vec<(&'a String, &'a i64)>;
    let (existing, new): (Rows<'_>, Rows<'_>) = plan
        .lease
        .iter()
        .filter(|(_, q)| **q != 0)
        .partition(|(sku, _)| plan.lease_rows.contains(*sku));
    if !existing.is_empty() {
        let skus: Vec<&str> = existing.iter().map(|(s, _)| s.as_str()).collect();
        let qty: Vec<i64> = existing.iter().map(|(_, q)| **q).collect();
        let stmt = tx
            .prepare_cached(
                "UPDATE stock_leases l
                    SET quantity = l.quantity + d.q, expires_at = now() + $4::bigint * interval '1 millisecond'
                   FROM UNNEST($2::text[], $3::bigint[]) AS d(sku, q)
                  WHERE l.node_id = $1 AND l.sku = d.sku",
            )
            .await?;
        tx.execute(&stmt, &[&node_id, &skus, &qty, &ttl_ms])
            .await
            .context("moving leases")?;
    }
    if !new.is_empty() {
        let skus: Vec<&str> = new.iter().map(|(s, _)| s.as_str()).collect();
        let qty: Vec<i64> = new.iter().map(|(_, q)| **q).collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO stock_leases (node_id, sku, quantity, expires_at)
                 SELECT $1, sku, q, now() + $4::bigint * interval '1 millisecond'
                   FROM UNNEST($2::text[], $3::bigint[]) AS t(sku, q)",
            )
            .await?;
        tx.execute(&stmt, &[&node_id, &skus, &qty, &ttl_ms])
            .await
            .context("creating leases")?;
    }
    let (gone, kept): (Vec<_>, Vec<_>) =
        plan.reservations.iter().partition(|(_, row)| row.is_none());
    if !gone.is_empty() {
        let carts: Vec<Uuid> = gone.iter().map(|((c, _), _)| *c).collect();
        let skus: Vec<&str> = gone.iter().map(|((_, s), _)| s.as_str()).collect();
        let stmt = tx
            .prepare_cached(
                "DELETE FROM reservations r USING UNNEST($1::uuid[], $2::text[]) AS d(cart_id, sku)
                  WHERE r.cart_id = d.cart_id AND r.sku = d.sku",
            )
            .await?;
        tx.execute(&stmt, &[&carts, &skus])
            .await
            .context("deleting reservations")?;
    }
    let kept: Vec<_> = kept
        .into_iter()
        .filter_map(|(k, row)| row.as_ref().map(|r| (k, r)))
        .collect();
    if !kept.is_empty() {
        let carts: Vec<Uuid> = kept.iter().map(|((c, _), _)| *c).collect();
        let skus: Vec<&str> = kept.iter().map(|((_, s), _)| s.as_str()).collect();
        let qty: Vec<i64> = kept.iter().map(|(_, r)| r.quantity).collect();
        let exp: Vec<i64> = kept.iter().map(|(_, r)| r.expires_at_ms).collect();
        let price: Vec<i64> = kept.iter().map(|(_, r)| r.unit_price_minor).collect();
        let cur: Vec<&str> = kept.iter().map(|(_, r)| r.currency.as_str()).collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO reservations (cart_id, sku, quantity, node_id, expires_at, unit_price_minor, currency)
                 SELECT c, s, q, $1, to_timestamp(e / 1000.0), p, cur
                   FROM UNNEST($2::uuid[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[])
                        AS t(c, s, q, e, p, cur)
                 ON CONFLICT (cart_id, sku) DO UPDATE
                    SET quantity = EXCLUDED.quantity, node_id = EXCLUDED.node_id, expires_at = EXCLUDED.expires_at,
                        unit_price_minor = EXCLUDED.unit_price_minor, currency = EXCLUDED.currency",
            )
            .await?;
        tx.execute(&stmt, &[&node_id, &carts, &skus, &qty, &exp, &price, &cur])
            .await
            .context("writing reservations")?;
    }
    if !plan.cart_versions.is_empty() {
        let ids: Vec<Uuid> = plan.cart_versions.keys().copied().collect();
        let versions: Vec<i64> = plan.cart_versions.values().copied().collect();
        let stmt = tx
            .prepare_cached(
                "UPDATE carts c SET version = d.v, updated_at = now()
                   FROM UNNEST($1::uuid[], $2::bigint[]) AS d(id, v) WHERE c.id = d.id",
            )
            .await?;
        tx.execute(&stmt, &[&ids, &versions])
            .await
            .context("bumping carts")?;
    }
    if !plan.orders.is_empty() {
        write_orders(tx, node_id, ops, &plan.orders).await?;
    }
    Ok(inventory::changed_levels(&moved))
}

async fn write_orders(
    tx: &Transaction<'_>,
    node_id: &str,
    ops: &[WriteOp],
    indices: &[usize],
) -> anyhow::Result<()> {
    let orders: Vec<&surge_actors::ports::PlaceOrder> = indices
        .iter()
        .filter_map(|&i| match &ops[i] {
            WriteOp::PlaceOrder(o) => Some(o),
            _ => None,
        })
        .collect();
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let sessions: Vec<&str> = orders.iter().map(|o| o.session_id.as_str()).collect();
    let emails: Vec<&str> = orders.iter().map(|o| o.email.as_str()).collect();
    let totals: Vec<i64> = orders.iter().map(|o| o.total_minor).collect();
    let currencies: Vec<&str> = orders.iter().map(|o| o.currency.as_str()).collect();
    let keys: Vec<&str> = orders.iter().map(|o| o.idempotency_key.as_str()).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO orders (id, created_at, session_id, email, status, total_minor, currency, node_id)
             SELECT id, now(), s, e, 'placed', t, c, $1
               FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[]) AS o(id, s, e, t, c)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[&node_id, &ids, &sessions, &emails, &totals, &currencies],
    )
    .await
    .context("inserting orders")?;
    let mut line_order = Vec::new();
    let mut line_sku = Vec::new();
    let mut line_qty = Vec::new();
    let mut line_price = Vec::new();
    let mut line_cur = Vec::new();
    for o in &orders {
        for l in &o.lines {
            line_order.push(o.order_id);
            line_sku.push(l.sku.as_str());
            line_qty.push(l.quantity);
            line_price.push(l.unit_price_minor);
            line_cur.push(o.currency.as_str());
        }
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO order_lines (order_id, created_at, sku, quantity, unit_price_minor, currency)
             SELECT o, now(), s, q, p, c
               FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[]) AS l(o, s, q, p, c)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[&line_order, &line_sku, &line_qty, &line_price, &line_cur],
    )
    .await
    .context("inserting order lines")?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys (session_id, key, order_id)
             SELECT s, k, o FROM UNNEST($1::text[], $2::text[], $3::uuid[]) AS t(s, k, o)
             ON CONFLICT (session_id, key) DO NOTHING",
        )
        .await?;
    tx.execute(&stmt, &[&sessions, &keys, &ids])
        .await
        .context("recording idempotency keys")?;
    Ok(())
}
