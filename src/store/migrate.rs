//! Schema migrations: the numbered SQL files in `migrations/`, embedded at build time
//! and applied by refinery, which records each applied version with its checksum and
//! refuses to run when an applied file was edited afterwards.

use anyhow::Context as _;
use refinery::{Migration, Report, Runner};
use tokio_postgres::Client;

refinery::embed_migrations!("migrations");

/// Advisory-lock key that serialises migrations when several nodes start at once.
const MIGRATION_LOCK: i64 = 0x5375_7267_654d_6967; // "SurgeMig"

/// Months of order partitions kept ready ahead of the current one.
pub const PARTITION_MONTHS_AHEAD: i32 = 3;

/// The migrations built into this binary.
pub fn embedded() -> Vec<Migration> {
    migrations::runner().get_migrations().clone()
}

/// Applies every pending embedded migration, then makes sure order partitions exist.
pub async fn run(client: &mut Client) -> anyhow::Result<Report> {
    run_set(client, &embedded()).await
}

/// Applies `set` under an advisory lock, in one transaction.
pub async fn run_set(client: &mut Client, set: &[Migration]) -> anyhow::Result<Report> {
    // A migration may rightly take longer than a request's statement, and a node that
    // starts beside another waits for its migrations: no session limits meanwhile. RESET
    // puts back the connection's own limits before it returns to its pool.
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .context("lifting the session limits for migrations")?;
    let report = migrate_locked(client, set).await;
    client
        .batch_execute("RESET statement_timeout; RESET lock_timeout")
        .await
        .context("restoring the session limits")?;
    report
}

async fn migrate_locked(client: &mut Client, set: &[Migration]) -> anyhow::Result<Report> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let result = Runner::new(set)
        .set_grouped(true)
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(client)
        .await
        .context("applying migrations");
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .context("releasing the migration lock")?;
    let report = result?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "migration applied");
    }
    ensure_partitions(client).await?;
    Ok(report)
}

/// Creates the monthly order partitions that do not exist yet; returns how many it made.
pub async fn ensure_partitions(client: &Client) -> anyhow::Result<i32> {
    let row = client
        .query_one(
            "SELECT surge_ensure_order_partitions($1)",
            &[&PARTITION_MONTHS_AHEAD],
        )
        .await
        .context("creating order partitions")?;
    let created: i32 = row.get(0);
    if created > 0 {
        tracing::info!(created, "order partitions created");
    }
    Ok(created)
}

/// Whether every embedded migration is recorded as applied.
pub async fn is_current(client: &Client) -> anyhow::Result<bool> {
    let row = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM refinery_schema_history",
            &[],
        )
        .await
        .context("reading refinery_schema_history")?;
    let applied: i32 = row.get(0);
    let latest = embedded().iter().map(|m| m.version()).max().unwrap_or(0);
    Ok(i64::from(applied) >= i64::from(latest))
}
