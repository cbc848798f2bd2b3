//! Waiting-room rows: a join hands out the campaign's next slot under its counter row's
//! lock, so slots follow the order joins commit across every node, and survive a
//! restart of any of them. Nothing here needs Redis.

use deadpool_postgres::Pool;
use surge_actors::queue::Schedule;
use uuid::Uuid;

use super::DbError;

/// Joins `session` to the campaign's queue and returns its slot; a session that had
/// joined keeps its first slot. The slot is chosen at the database's clock, the same
/// for every node.
pub async fn join(
    pool: &Pool,
    campaign: Uuid,
    session: &str,
    schedule: &Schedule,
) -> Result<i64, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // The counter row's lock orders concurrent joins, including two of one session.
    let row = tx
        .query_one(
            "INSERT INTO queue_counters (campaign_id) VALUES ($1)
             ON CONFLICT (campaign_id) DO UPDATE SET joined = queue_counters.joined
             RETURNING next_slot, (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[&campaign],
        )
        .await?;
    let (next_slot, now_ms): (i64, i64) = (row.get(0), row.get(1));
    if let Some(existing) = tx
        .query_opt(
            "SELECT slot FROM queue_entries WHERE campaign_id = $1 AND session_id = $2",
            &[&campaign, &session],
        )
        .await?
    {
        return Ok(existing.get(0));
    }
    let slot = schedule.slot_for(next_slot, now_ms);
    tx.execute(
        "INSERT INTO queue_entries (campaign_id, session_id, slot, joined_at)
         VALUES ($1, $2, $3, clock_timestamp())",
        &[&campaign, &session, &slot],
    )
    .await?;
    tx.execute(
        "UPDATE queue_counters SET joined = joined + 1, next_slot = $2 WHERE campaign_id = $1",
        &[&campaign, &(slot + 1)],
    )
    .await?;
    tx.commit().await?;
    Ok(slot)
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
