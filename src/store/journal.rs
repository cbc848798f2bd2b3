//! The Journal: one batched, group-commit writer per node.
//!
//! Callers queue a [`WriteOp`] and wait. The writer takes everything waiting (up to
//! `max_batch`; a lone write lingers up to `max_wait` for company), locks the rows the
//! batch touches in a fixed order, plans the batch in memory
//! ([`surge_actors::journal_plan`]), writes the plan with a fixed number of set-based
//! statements, commits once, and only then answers every caller. An acknowledgement
//! therefore always follows a commit.
//!
//! Every answer is the truth about PostgreSQL. A batch that fails before its COMMIT is
//! sent was rolled back: its callers hear `NotCommitted` and undo. A batch whose COMMIT
//! was sent but never answered (the connection dropped, or the deadline passed) may have
//! committed: the Journal looks its transaction id up with `pg_xact_status` on another
//! connection, beside the writer so later batches are not held up, and answers the plan's
//! results if it committed and `NotCommitted` only if it did not. A `503` from a write
//! therefore always means that nothing was committed.

use std::{
    collections::BTreeMap,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context as _;
use deadpool_postgres::{Object, Pool, Transaction};
use surge_actors::{
    campaign::{self, Slot, Window},
    journal_plan::{self, Locked, Plan},
    money::{Currency, Money},
    ports::{BoxFut, Cause, Journal, JournalError, StockLevel, WriteOp, WriteOutcome},
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{campaigns, inventory};

/// Batching settings.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Longest time a lone write, one that finds nothing queued behind it, lingers for
    /// more writes to join its batch.
    pub max_wait: Duration,
    /// Writes waiting beyond this are refused at once (backpressure).
    pub queue: usize,
    /// Lifetime given to this node's lease rows on every write and heartbeat.
    pub lease_ttl: Duration,
    /// Deadline of one batch from BEGIN to the answer to COMMIT.
    pub commit_timeout: Duration,
}

impl JournalConfig {
    /// The settings a node runs its Journal with.
    pub fn from_commerce(c: &crate::config::CommerceConfig) -> Self {
        Self {
            max_batch: c.journal_max_batch,
            max_wait: c.journal_max_wait,
            queue: Self::QUEUE,
            lease_ttl: c.lease_ttl,
            commit_timeout: c.journal_commit_timeout,
        }
    }

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

type Reply = oneshot::Sender<Result<WriteOutcome, JournalError>>;

async fn run(
    mut rx: mpsc::Receiver<Item>,
    pool: Pool,
    node_id: String,
    cfg: JournalConfig,
    listener: StockListener,
) {
    while let Some(items) = gather(&mut rx, cfg.max_batch, cfg.max_wait).await {
        let (ops, replies): (Vec<WriteOp>, Vec<Reply>) =
            items.into_iter().map(|i| (i.op, i.reply)).unzip();
        metrics::histogram!("journal_batch_size").record(ops.len() as f64);
        let started = std::time::Instant::now();
        let outcome = commit(&pool, &node_id, &cfg, &ops).await;
        metrics::histogram!("journal_commit_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok((results, levels)) => {
                metrics::counter!("journal_batches_total", "result" => "committed").increment(1);
                answer(replies, results, levels, &listener);
            }
            Err(CommitError::NotCommitted(err)) => {
                metrics::counter!("journal_batches_total", "result" => "failed").increment(1);
                tracing::error!(
                    error = format!("{err:#}"),
                    writes = ops.len(),
                    "journal batch failed before COMMIT; nothing committed"
                );
                refuse(replies, Cause::new(err));
            }
            Err(CommitError::Unknown(pending)) => {
                metrics::counter!("journal_batches_total", "result" => "unknown").increment(1);
                metrics::counter!("journal_outcomes_total", "outcome" => "unknown").increment(1);
                tracing::warn!(
                    xid = %pending.xid,
                    error = format!("{:#}", pending.cause),
                    writes = ops.len(),
                    "journal COMMIT unanswered; looking up its outcome"
                );
                // Beside the writer: later batches lock the same rows, so they plan
                // against whatever this one turns out to have done.
                actix_web::rt::spawn(settle(
                    pool.clone(),
                    *pending,
                    replies,
                    std::sync::Arc::clone(&listener),
                ));
            }
        }
    }
    tracing::info!("journal stopped");
}

/// The next batch: every write queued, up to `max_batch`; `None` once every handle is
/// gone. Only a write that finds the writer idle and alone lingers, up to `max_wait`,
/// for others to join it. Writes that queued while the last batch committed are a batch
/// already, and lingering would only hold them while PostgreSQL sits idle; under load
/// the commit's own length sets the batch size, and the next batch starts as soon as
/// this one is answered.
async fn gather<T>(
    rx: &mut mpsc::Receiver<T>,
    max_batch: usize,
    max_wait: Duration,
) -> Option<Vec<T>> {
    let mut items = Vec::new();
    if rx.recv_many(&mut items, max_batch).await == 0 {
        return None;
    }
    if items.len() > 1 {
        return Some(items);
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    while items.len() < max_batch {
        let room = max_batch - items.len();
        match tokio::time::timeout_at(deadline, rx.recv_many(&mut items, room)).await {
            Ok(received) if received > 0 => {}
            _ => break,
        }
    }
    Some(items)
}

fn answer(replies: Vec<Reply>, results: Results, levels: Vec<StockLevel>, on: &StockListener) {
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
    if !levels.is_empty() {
        on(levels);
    }
}

fn refuse(replies: Vec<Reply>, cause: Cause) {
    for reply in replies {
        let _ = reply.send(Err(JournalError::NotCommitted(cause.clone())));
    }
}

/// Answers the callers of a batch whose COMMIT went unanswered, once PostgreSQL says
/// what became of it.
async fn settle(pool: Pool, pending: Pending, replies: Vec<Reply>, listener: StockListener) {
    let xid = pending.xid;
    match resolve(&pool, &xid).await {
        None => {
            // Shutdown with PostgreSQL unreachable: no answer is true, so none is given;
            // by now the HTTP server has stopped and no client hears a guess.
            tracing::error!(%xid, "node stopping with a journal COMMIT's outcome unknown");
        }
        Some(Outcome::Committed) => {
            metrics::counter!("journal_outcomes_total", "outcome" => "committed").increment(1);
            tracing::warn!(%xid, "unanswered journal COMMIT had committed; callers get its results");
            answer(replies, pending.results, pending.levels, &listener);
        }
        Some(Outcome::Aborted) => {
            metrics::counter!("journal_outcomes_total", "outcome" => "aborted").increment(1);
            tracing::warn!(%xid, "unanswered journal COMMIT had aborted; nothing committed");
            let cause = pending.cause.context(format!("transaction {xid} aborted"));
            refuse(replies, Cause::new(cause));
        }
    }
}

/// What PostgreSQL reports became of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its writes are durable.
    Committed,
    /// Nothing it wrote survives.
    Aborted,
}

/// First wait between two lookups of an unresolved transaction, doubled up to
/// [`RESOLVE_BACKOFF_MAX`].
const RESOLVE_BACKOFF: Duration = Duration::from_millis(25);
const RESOLVE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Asks PostgreSQL, on a connection of `pool`, whether transaction `xid` committed. It
/// keeps asking, with backoff, while the transaction is still in progress (its backend
/// has not yet noticed its client is gone: bounded by the session limits) or PostgreSQL
/// cannot be reached, because only PostgreSQL knows the answer. `None` only once the
/// pool is closed (the node is stopping).
pub async fn resolve(pool: &Pool, xid: &str) -> Option<Outcome> {
    let mut backoff = RESOLVE_BACKOFF;
    let mut tries = 0_u32;
    while !pool.is_closed() {
        tries += 1;
        match xact_status(pool, xid).await {
            Ok(Some(status)) if status == "committed" => return Some(Outcome::Committed),
            Ok(Some(status)) if status == "aborted" => return Some(Outcome::Aborted),
            Ok(status) => tracing::debug!(xid, ?status, tries, "transaction not resolved yet"),
            Err(err) => tracing::warn!(
                xid,
                tries,
                error = format!("{err:#}"),
                "cannot look up a transaction's outcome yet"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESOLVE_BACKOFF_MAX);
    }
    None
}

async fn xact_status(pool: &Pool, xid: &str) -> anyhow::Result<Option<String>> {
    let client = pool.get().await.context("connection")?;
    let row = client
        .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid])
        .await
        .context("pg_xact_status")?;
    Ok(row.get(0))
}

/// One result per op of a batch.
pub type Results = Vec<Result<WriteOutcome, JournalError>>;

/// Why a batch has no results (yet).
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// It failed before COMMIT was sent, so PostgreSQL rolled it back.
    #[error("journal batch not committed")]
    NotCommitted(#[source] anyhow::Error),
    /// COMMIT was sent and not answered: only [`resolve`] can say what happened.
    #[error("journal batch outcome unknown (transaction {})", .0.xid)]
    Unknown(Box<Pending>),
}

/// A batch whose COMMIT went unanswered, with what to answer if it committed.
#[derive(Debug)]
pub struct Pending {
    /// Its transaction id, for `pg_xact_status`.
    pub xid: String,
    /// The plan's result per op.
    pub results: Results,
    /// SKUs whose sellable count it changed.
    pub levels: Vec<StockLevel>,
    /// What went wrong around COMMIT.
    pub cause: anyhow::Error,
}

/// How far one attempt got, read after it ends or is dropped at the deadline.
#[derive(Default)]
struct Progress {
    xid: OnceLock<String>,
    /// Set just before COMMIT is sent: from then on the outcome is PostgreSQL's to say.
    sent: Mutex<Option<(Results, Vec<StockLevel>)>>,
}

/// Commits one batch in one transaction; returns one result per op and the SKUs whose
/// sellable count changed. The Journal's writer calls it with whatever is queued; the
/// benchmark calls it with one op at a time for the one-transaction-per-write baseline.
/// The whole attempt runs within `cfg.commit_timeout`.
pub async fn commit(
    pool: &Pool,
    node_id: &str,
    cfg: &JournalConfig,
    ops: &[WriteOp],
) -> Result<(Results, Vec<StockLevel>), CommitError> {
    let mut client = pool
        .get()
        .await
        .context("journal connection")
        .map_err(CommitError::NotCommitted)?;
    let progress = Progress::default();
    let attempt = tokio::time::timeout(
        cfg.commit_timeout,
        attempt(&mut client, node_id, cfg, ops, &progress),
    )
    .await;
    let cause = match attempt {
        Ok(Ok(())) => {
            return take_sent(&progress).ok_or_else(|| {
                CommitError::NotCommitted(anyhow::anyhow!("committed without a plan"))
            })
        }
        Ok(Err(err)) => err,
        Err(_) => {
            // The connection may be wedged mid-statement: never hand it out again.
            drop(Object::take(client));
            anyhow::anyhow!("no answer within {:?}", cfg.commit_timeout)
        }
    };
    match (take_sent(&progress), progress.xid.into_inner()) {
        (Some((results, levels)), Some(xid)) => Err(CommitError::Unknown(Box::new(Pending {
            xid,
            results,
            levels,
            cause,
        }))),
        _ => Err(CommitError::NotCommitted(cause)),
    }
}

fn take_sent(progress: &Progress) -> Option<(Results, Vec<StockLevel>)> {
    progress
        .sent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

async fn attempt(
    client: &mut Object,
    node_id: &str,
    cfg: &JournalConfig,
    ops: &[WriteOp],
    progress: &Progress,
) -> anyhow::Result<()> {
    let tx = client.transaction().await.context("begin")?;
    // Pipelined with the lock step: the xid costs no round trip of its own.
    let (xid, locked) = tokio::try_join!(current_xid(&tx), lock(&tx, node_id, cfg, ops))?;
    let _ = progress.xid.set(xid);
    let plan = journal_plan::plan(ops, locked);
    let levels = write(&tx, node_id, cfg, ops, &plan).await?;
    *progress
        .sent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((plan.results, levels));
    tx.commit().await.context("commit")?;
    Ok(())
}

async fn current_xid(tx: &Transaction<'_>) -> anyhow::Result<String> {
    let stmt = tx
        .prepare_cached("SELECT pg_current_xact_id()::text")
        .await?;
    let row = tx.query_one(&stmt, &[]).await.context("reading the xid")?;
    Ok(row.get(0))
}

/// A node whose heartbeat is older than this share of the lease TTL has missed two
/// heartbeats (they run every third of it): its units count as recovering, not live.
const LIVE_SHARE_OF_TTL: f64 = 2.0 / 3.0;

/// Locks the batch's inventory rows (sorted, so batches and the reaper never deadlock)
/// and its carts, and reads the state the plan needs.
async fn lock(
    tx: &Transaction<'_>,
    node_id: &str,
    cfg: &JournalConfig,
    ops: &[WriteOp],
) -> anyhow::Result<Locked> {
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
        // Locked now, in SKU order, as the heartbeat locks them: the UPDATE that moves
        // them later would lock them in whatever order its join runs, and a heartbeat
        // renewing the same rows in between would deadlock with it (a 503 for the batch).
        let stmt = tx
            .prepare_cached(
                "SELECT sku, quantity, epoch FROM stock_leases WHERE node_id = $1 AND sku = ANY($2)
                  ORDER BY sku FOR UPDATE",
            )
            .await?;
        for row in tx
            .query(&stmt, &[&node_id, &skus])
            .await
            .context("reading leases")?
        {
            locked.lease.insert(row.get(0), row.get(1));
            locked.lease_epoch.insert(row.get(0), row.get(2));
        }
        let granted: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Grant { sku, .. } => Some(sku.as_str()),
                _ => None,
            })
            .collect();
        if !granted.is_empty() {
            read_others(tx, node_id, cfg, &granted, &mut locked).await?;
        }
    }
    let priced = journal_plan::priced_skus(ops);
    if !priced.is_empty() {
        // FOR SHARE: a price change waits for this batch, and this batch for a price
        // change in flight, so the price checked is the price as of the commit.
        // (Catalog writes never wait on inventory locks, so the order cannot deadlock.)
        // A campaign SKU is priced, and gated, by its windows at the commit's now(),
        // so the start is one instant for every node whatever their clocks say.
        let stmt = tx.prepare_cached(campaigns::PRICE_READ).await?;
        let mut variants: BTreeMap<String, (i64, Currency, i64, Vec<Slot>)> = BTreeMap::new();
        for row in tx
            .query(&stmt, &[&priced])
            .await
            .context("reading prices")?
        {
            let currency: String = row.get(2);
            let currency = Currency::parse(&currency)
                .with_context(|| format!("variant currency {currency:?}"))?;
            let entry = variants
                .entry(row.get(0))
                .or_insert_with(|| (row.get(1), currency, row.get(3), Vec::new()));
            if let (Some(starts_at_ms), Some(ends_at_ms)) =
                (row.get::<_, Option<i64>>(4), row.get::<_, Option<i64>>(5))
            {
                entry.3.push(Slot {
                    window: Window {
                        starts_at_ms,
                        ends_at_ms,
                    },
                    sale_price_minor: row.get(6),
                });
            }
        }
        for (sku, (regular, currency, now_ms, slots)) in variants {
            match campaign::price_at(regular, &slots, now_ms) {
                Ok(minor) => {
                    locked.prices.insert(sku, Money::new(minor, currency));
                }
                Err(closed) => {
                    locked
                        .prices
                        .insert(sku.clone(), Money::new(regular, currency));
                    locked.closed.insert(sku, closed);
                }
            }
        }
    }
    lock_customers(tx, ops, &mut locked).await?;
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
    let keys = journal_plan::order_keys(ops);
    if !keys.is_empty() {
        // Under the carts' locks: an order of the same session on another node has
        // committed its key by now or waits for this batch.
        let sessions: Vec<&str> = keys.iter().map(|(s, _)| *s).collect();
        let names: Vec<&str> = keys.iter().map(|(_, k)| *k).collect();
        let stmt = tx
            .prepare_cached(
                "SELECT i.session_id, i.key FROM idempotency_keys i
                   JOIN UNNEST($1::text[], $2::text[]) AS t(s, k) ON i.session_id = t.s AND i.key = t.k",
            )
            .await?;
        for row in tx
            .query(&stmt, &[&sessions, &names])
            .await
            .context("reading idempotency keys")?
        {
            locked.used_keys.insert((row.get(0), row.get(1)));
        }
    }
    Ok(locked)
}

/// For a batch with orders of SKUs in a live campaign with a per-customer limit: the
/// campaign of each such SKU, and the units each ordering customer has had of it, their
/// `campaign_customers` rows locked (made first if missing) in key order, so batches on
/// every node queue on one customer and never deadlock.
async fn lock_customers(
    tx: &Transaction<'_>,
    ops: &[WriteOp],
    locked: &mut Locked,
) -> anyhow::Result<()> {
    let ordered = journal_plan::ordered_skus(ops);
    if ordered.is_empty() {
        return Ok(());
    }
    let stmt = tx.prepare_cached(campaigns::LIMIT_READ).await?;
    for row in tx
        .query(&stmt, &[&ordered])
        .await
        .context("reading campaign limits")?
    {
        locked
            .limited
            .insert(row.get(0), (row.get(1), i64::from(row.get::<_, i32>(2))));
    }
    let keys = journal_plan::customer_keys(ops, &locked.limited);
    if keys.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = keys.iter().map(|(c, _)| *c).collect();
    let customers: Vec<&str> = keys.iter().map(|(_, u)| u.as_str()).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO campaign_customers (campaign_id, customer)
             SELECT c, u FROM UNNEST($1::uuid[], $2::text[]) AS t(c, u) ORDER BY c, u
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&stmt, &[&ids, &customers])
        .await
        .context("creating campaign customers")?;
    let stmt = tx
        .prepare_cached(
            "SELECT campaign_id, customer, units FROM campaign_customers
              WHERE (campaign_id, customer) IN (SELECT c, u FROM UNNEST($1::uuid[], $2::text[]) AS t(c, u))
              ORDER BY campaign_id, customer FOR UPDATE",
        )
        .await?;
    for row in tx
        .query(&stmt, &[&ids, &customers])
        .await
        .context("locking campaign customers")?
    {
        locked
            .customer_units
            .insert((row.get(0), row.get(1)), row.get(2));
    }
    Ok(())
}

/// For a batch with grants: what other nodes hold of the granted SKUs, split by
/// whether their heartbeat is fresh, and the epoch for lease rows the batch creates.
/// The lease rows are read under the inventory locks, so the numbers are exact.
async fn read_others(
    tx: &Transaction<'_>,
    node_id: &str,
    cfg: &JournalConfig,
    skus: &[&str],
    locked: &mut Locked,
) -> anyhow::Result<()> {
    let fresh_ms = (cfg.lease_ttl.as_secs_f64() * LIVE_SHARE_OF_TTL * 1000.0) as i64;
    let stmt = tx
        .prepare_cached(
            "SELECT l.sku,
                    COALESCE(SUM(l.quantity) FILTER (WHERE n.heartbeat_at >= now() - $3::bigint * interval '1 millisecond'), 0)::bigint,
                    COALESCE(SUM(l.quantity) FILTER (WHERE n.heartbeat_at IS NULL
                                                        OR n.heartbeat_at < now() - $3::bigint * interval '1 millisecond'), 0)::bigint
               FROM stock_leases l LEFT JOIN nodes n ON n.node_id = l.node_id
              WHERE l.sku = ANY($2) AND l.node_id <> $1 AND l.quantity > 0
              GROUP BY l.sku",
        )
        .await?;
    for row in tx
        .query(&stmt, &[&node_id, &skus, &fresh_ms])
        .await
        .context("reading other nodes' leases")?
    {
        locked.others.insert(row.get(0), (row.get(1), row.get(2)));
    }
    let stmt = tx
        .prepare_cached("SELECT nextval('stock_lease_epoch')")
        .await?;
    locked.new_epoch = tx
        .query_one(&stmt, &[])
        .await
        .context("drawing a lease epoch")?
        .get(0);
    Ok(())
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
                "INSERT INTO stock_leases (node_id, sku, quantity, expires_at, epoch)
                 SELECT $1, sku, q, now() + $4::bigint * interval '1 millisecond', $5
                   FROM UNNEST($2::text[], $3::bigint[]) AS t(sku, q)",
            )
            .await?;
        tx.execute(&stmt, &[&node_id, &skus, &qty, &ttl_ms, &plan.new_epoch])
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
    if !plan.customer_units.is_empty() {
        let ids: Vec<Uuid> = plan.customer_units.keys().map(|(c, _)| *c).collect();
        let customers: Vec<&str> = plan
            .customer_units
            .keys()
            .map(|(_, u)| u.as_str())
            .collect();
        let units: Vec<i64> = plan.customer_units.values().copied().collect();
        let stmt = tx
            .prepare_cached(
                "UPDATE campaign_customers cc SET units = d.n
                   FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS d(c, u, n)
                  WHERE cc.campaign_id = d.c AND cc.customer = d.u",
            )
            .await?;
        tx.execute(&stmt, &[&ids, &customers, &units])
            .await
            .context("counting customers' units")?;
    }
    if !plan.order_units.is_empty() {
        let orders: Vec<Uuid> = plan.order_units.iter().map(|(o, _, _)| *o).collect();
        let ids: Vec<Uuid> = plan.order_units.iter().map(|(_, (c, _), _)| *c).collect();
        let customers: Vec<&str> = plan
            .order_units
            .iter()
            .map(|(_, (_, u), _)| u.as_str())
            .collect();
        let units: Vec<i64> = plan.order_units.iter().map(|(_, _, n)| *n).collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO campaign_order_units (order_id, campaign_id, customer, units)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[])",
            )
            .await?;
        tx.execute(&stmt, &[&orders, &ids, &customers, &units])
            .await
            .context("recording orders' counted units")?;
    }
    // A lease return leaves the sellable count alone, but a node waiting on a recall
    // learns of it from the stock event: publish returned SKUs too.
    let returned =
        |m: &inventory::Moved| plan.inventory.get(&m.sku).is_some_and(|d| d.available > 0);
    Ok(moved
        .iter()
        .filter(|m| m.sellable_changed || returned(m))
        .map(inventory::Moved::level)
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A test that hangs here has a writer lingering where it should not.
    const HANG: Duration = Duration::from_secs(30);
    const HOUR: Duration = Duration::from_secs(3600);

    async fn gathered(
        rx: &mut mpsc::Receiver<u32>,
        max_batch: usize,
        max_wait: Duration,
    ) -> Vec<u32> {
        tokio::time::timeout(HANG, gather(rx, max_batch, max_wait))
            .await
            .unwrap_or_else(|_| panic!("gather still lingering after {HANG:?}"))
            .unwrap_or_default()
    }

    /// Guards against a backlog waiting out the linger while PostgreSQL sits idle: writes
    /// queued behind the first go at once, however long the linger.
    #[actix_web::test]
    async fn a_backlog_is_a_batch_at_once() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..5 {
            tx.try_send(i).unwrap_or_else(|_| unreachable!());
        }
        assert_eq!(
            gathered(&mut rx, 3, HOUR).await,
            vec![0, 1, 2],
            "at most max_batch"
        );
        assert_eq!(
            gathered(&mut rx, 3, HOUR).await,
            vec![3, 4],
            "the rest, without lingering"
        );
    }

    /// Guards against light load committing one write per transaction: a write that finds
    /// the writer alone waits for company, and the batch closes once it is full.
    #[actix_web::test]
    async fn a_lone_write_lingers_for_company() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.try_send(1).unwrap_or_else(|_| unreachable!());
        let later = actix_web::rt::spawn(async move {
            for i in 2..=3 {
                actix_web::rt::task::yield_now().await;
                let _ = tx.send(i).await;
            }
            tx
        });
        assert_eq!(gathered(&mut rx, 3, HOUR).await, vec![1, 2, 3]);
        drop(later.await);
    }

    /// Guards against a lone write waiting for company forever, and against a writer that
    /// outlives its handles.
    #[actix_web::test]
    async fn a_lone_write_goes_after_the_linger_and_the_writer_ends_with_its_handles() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.try_send(7).unwrap_or_else(|_| unreachable!());
        assert_eq!(
            gathered(&mut rx, 512, Duration::from_millis(5)).await,
            vec![7]
        );
        drop(tx);
        assert!(gather(&mut rx, 512, HOUR).await.is_none());
    }
}
