//! Waiting-room rows: a join hands out the campaign's next slot under its counter row's
//! lock, so slots follow the order joins commit across every node, and survive a
//! restart of any of them. Nothing here needs Redis.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use deadpool_postgres::Pool;
use surge_actors::queue::Schedule;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::DbError;

/// Most joins one transaction takes: enough that a crowd arriving in the same second
/// costs a few commits, few enough that one batch's statements stay small.
const MAX_BATCH: usize = 512;

/// Joins waiting for the batcher; beyond this a join waits to be queued (backpressure
/// instead of unbounded memory).
const QUEUED_JOINS: usize = 8_192;

/// One join waiting for its slot.
struct JoinRequest {
    campaign: Uuid,
    session: String,
    schedule: Schedule,
    reply: oneshot::Sender<Result<i64, Arc<DbError>>>,
}

/// Hands out waiting-room slots in batches. A join takes the campaign's counter row
/// lock, so one join per transaction caps a campaign at one join per commit (tens a
/// second); here every join that arrives while a batch commits goes into the next one,
/// in arrival order, so the crowd before a start costs a few commits a second and holds
/// one connection, as the Journal does for reservations.
#[derive(Clone)]
pub struct Joins {
    tx: mpsc::Sender<JoinRequest>,
}

impl Joins {
    /// Starts the batcher on `pool`; it ends when the last handle is dropped.
    pub fn spawn(pool: Pool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED_JOINS);
        tokio::spawn(run_joins(pool, rx));
        Self { tx }
    }

    /// Joins `session` to the campaign's queue and returns its slot; a session that had
    /// joined keeps its first slot. The slot is chosen at the database's clock, the same
    /// for every node.
    pub async fn join(
        &self,
        campaign: Uuid,
        session: &str,
        schedule: &Schedule,
    ) -> Result<i64, DbError> {
        let (reply, answer) = oneshot::channel();
        let request = JoinRequest {
            campaign,
            session: session.to_owned(),
            schedule: *schedule,
            reply,
        };
        let stopped = || DbError::Pool(deadpool_postgres::PoolError::Closed);
        self.tx.send(request).await.map_err(|_| stopped())?;
        match answer.await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(e)) => Err(DbError::Shared(e)),
            Err(_) => Err(stopped()),
        }
    }
}

async fn run_joins(pool: Pool, mut rx: mpsc::Receiver<JoinRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let size = batch.len();
        metrics::histogram!("queue_join_batch_size").record(size as f64);
        match commit_joins(&pool, &batch).await {
            Ok(slots) => {
                for (request, slot) in batch.drain(..).zip(slots) {
                    let _ = request.reply.send(Ok(slot));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, joins = size, "a batch of queue joins failed; each is answered 503");
                let e = Arc::new(e);
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(Arc::clone(&e)));
                }
            }
        }
    }
}

/// Stores a batch of joins in one transaction and returns each request's slot, in
/// request order. Campaigns' counter rows are locked in id order, so two nodes'
/// batches never deadlock; under a campaign's lock the sessions already in its queue
/// keep their slots and the rest take the next ones in arrival order.
async fn commit_joins(pool: &Pool, batch: &[JoinRequest]) -> Result<Vec<i64>, DbError> {
    let mut by_campaign: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
    for (i, r) in batch.iter().enumerate() {
        by_campaign.entry(r.campaign).or_default().push(i);
    }
    let mut slots = vec![0; batch.len()];
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    for (campaign, indices) in &by_campaign {
        // The counter row's lock orders this batch after every earlier join.
        let row = tx
            .query_one(
                "INSERT INTO queue_counters (campaign_id) VALUES ($1)
                 ON CONFLICT (campaign_id) DO UPDATE SET joined = queue_counters.joined
                 RETURNING next_slot, (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[campaign],
            )
            .await?;
        let (next_slot, now_ms): (i64, i64) = (row.get(0), row.get(1));
        let sessions: Vec<&str> = indices.iter().map(|&i| batch[i].session.as_str()).collect();
        let existing: HashMap<String, i64> = tx
            .query(
                "SELECT session_id, slot FROM queue_entries
                  WHERE campaign_id = $1 AND session_id = ANY($2)",
                &[campaign, &sessions],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let schedule = batch[indices[0]].schedule;
        let assigned = schedule.assign(next_slot, now_ms, &sessions, |s| existing.get(s).copied());
        for (&i, slot) in indices.iter().zip(&assigned.slots) {
            slots[i] = *slot;
        }
        if assigned.new_sessions.is_empty() {
            continue;
        }
        let new_slots: Vec<i64> = assigned
            .new_sessions
            .iter()
            .map(|(_, slot)| *slot)
            .collect();
        let new_sessions: Vec<&str> = assigned.new_sessions.iter().map(|(s, _)| *s).collect();
        tx.execute(
            "INSERT INTO queue_entries (campaign_id, session_id, slot, joined_at)
             SELECT $1, s, k, clock_timestamp() FROM UNNEST($2::text[], $3::bigint[]) AS t(s, k)",
            &[campaign, &new_sessions, &new_slots],
        )
        .await?;
        let joined = i64::try_from(new_sessions.len()).unwrap_or(i64::MAX);
        tx.execute(
            "UPDATE queue_counters SET joined = joined + $2, next_slot = $3 WHERE campaign_id = $1",
            &[campaign, &joined, &assigned.next_slot],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(slots)
}

/// The slot of `session` in the campaign's queue, if it joined.
pub async fn slot_of(pool: &Pool, campaign: Uuid, session: &str) -> Result<Option<i64>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT slot FROM queue_entries WHERE campaign_id = $1 AND session_id = $2",
            &[&campaign, &session],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// How many joined the campaign's queue, and its first free slot.
pub async fn counts(pool: &Pool, campaign: Uuid) -> Result<(i64, i64), DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT joined, next_slot FROM queue_counters WHERE campaign_id = $1",
            &[&campaign],
        )
        .await?;
    Ok(row.map_or((0, 0), |r| (r.get(0), r.get(1))))
}
