//! The node's background jobs, in one place: each runs on a period in a `JoinSet`, and
//! one cancellation token stops them all. A job stops only between runs, never in the
//! middle of one (a reaper transaction always finishes or rolls back by itself).

use std::{future::Future, sync::Arc, time::Duration};

use actix_web::web;
use tokio::{task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use surge_actors::{cart_actor::CartEvents as _, shard::Restocked};

use crate::{
    config::ServeConfig,
    live::campaigns::Announcer,
    state::AppState,
    store::{
        leases::{self, Scope},
        migrate, purge, reports,
    },
};

/// How often order partitions are topped up.
const PARTITION_PERIOD: Duration = Duration::from_secs(6 * 3600);
/// How often started campaigns are looked for.
const CAMPAIGN_PERIOD: Duration = Duration::from_secs(1);

/// How often queued sessions' positions are pushed: often enough that an admission
/// reaches the socket well within its reserve window, and a position visibly falls.
const QUEUE_PUSH_PERIOD: Duration = Duration::from_millis(200);
/// How often refusal counts are written and monitored campaigns reported: the report
/// a merchant watches trails the shoppers by about this much.
const REPORT_PERIOD: Duration = Duration::from_secs(1);
/// How often the purge of empty carts, old idempotency keys and gone nodes runs.
const PURGE_PERIOD: Duration = Duration::from_secs(60);
/// Rows one purge statement deletes at most: short statements, short locks.
const PURGE_BATCH: i64 = 1000;
/// Statements one purge run makes at most per table, so a backlog drains over several
/// runs instead of holding a connection for long.
const PURGE_MAX_BATCHES: usize = 20;

/// No job runs more often than this, whatever its configuration says.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// When a job first runs.
#[derive(Debug, Clone, Copy)]
pub enum First {
    /// At once, then every period.
    Now,
    /// One period from now (startup already did this run's work).
    AfterPeriod,
}

/// Periodic jobs that stop together.
pub struct Jobs {
    set: JoinSet<()>,
    cancel: CancellationToken,
}

impl Default for Jobs {
    fn default() -> Self {
        Self::new()
    }
}

impl Jobs {
    /// No jobs yet.
    pub fn new() -> Self {
        Self {
            set: JoinSet::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// Runs `job` every `period` (at least [`MIN_PERIOD`]) until [`Jobs::stop`], logging
    /// its failures; a run that overruns delays the next rather than piling up.
    pub fn every<F, Fut>(&mut self, name: &'static str, period: Duration, first: First, job: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        let period = period.max(MIN_PERIOD);
        let start = match first {
            First::Now => Instant::now(),
            First::AfterPeriod => Instant::now() + period,
        };
        self.set.spawn(async move {
            let mut tick = tokio::time::interval_at(start, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // Never cancelled mid-run: `stop` waits for the run to end.
                if let Err(err) = job().await {
                    tracing::warn!(
                        task = name,
                        error = format!("{err:#}"),
                        "background task failed"
                    );
                }
            }
            tracing::debug!(task = name, "background task stopped");
        });
    }

    /// Asks every job to stop after its current run and waits up to `within` for them;
    /// one still running then (stuck on an unreachable database) is aborted.
    pub async fn stop(mut self, within: Duration) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(within, async {
            while self.set.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = self.set.len(),
                "background tasks did not stop in time; aborting them"
            );
            self.set.shutdown().await;
        }
    }
}

/// Runs `batch` until it deletes fewer than [`PURGE_BATCH`] rows (or
/// [`PURGE_MAX_BATCHES`] times); returns the rows deleted.
async fn drain<F, Fut>(mut batch: F) -> anyhow::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, crate::store::DbError>>,
{
    let mut total = 0;
    for _ in 0..PURGE_MAX_BATCHES {
        let n = batch().await?;
        total += n;
        if n < PURGE_BATCH.unsigned_abs() {
            break;
        }
    }
    Ok(total)
}

/// One purge run: empty carts older than `cart_age`, idempotency keys past their
/// retention, and the rows of nodes gone (holding no lease) for
/// [`purge::GONE_NODE_AGE`]. Safe on every node at once.
pub async fn purge_once(
    pool: &deadpool_postgres::Pool,
    cart_age: Duration,
) -> anyhow::Result<(u64, u64, u64)> {
    let client = pool.get().await?;
    let carts = drain(|| purge::empty_carts(&client, cart_age, PURGE_BATCH)).await?;
    let keys = drain(|| purge::idempotency_keys(&client, PURGE_BATCH)).await?;
    let nodes = drain(|| purge::gone_nodes(&client, purge::GONE_NODE_AGE, PURGE_BATCH)).await?;
    for (table, n) in [
        ("carts", carts),
        ("idempotency_keys", keys),
        ("nodes", nodes),
    ] {
        metrics::counter!("purged_rows_total", "table" => table).increment(n);
    }
    if carts + keys + nodes > 0 {
        tracing::debug!(carts, keys, nodes, "purged");
    }
    Ok((carts, keys, nodes))
}

/// Starts the node's jobs: order partitions, the lease heartbeat, the reaper of dead
/// nodes' leases and lapsed reservations, the purge of what anonymous and departed
/// traffic leaves, campaign announcements, queue positions, refusal counts and campaign
/// monitors, and the stock and catalog resync (which reloads the catalog only when its version
/// moved, or a reload is owed).
pub fn spawn(cfg: &ServeConfig, state: &web::Data<AppState>) -> Jobs {
    let mut jobs = Jobs::new();
    let primary = state.db.primary.clone();
    let ttl = cfg.commerce.lease_ttl;

    jobs.every("partitions", PARTITION_PERIOD, First::AfterPeriod, {
        let primary = primary.clone();
        move || {
            let primary = primary.clone();
            async move {
                let client = primary.get().await?;
                migrate::ensure_partitions(&client).await.map(|_| ())
            }
        }
    });

    // On its own connection: a busy request pool must never delay it past the TTL.
    jobs.every("heartbeat", ttl / 3, First::Now, {
        let (pool, node, shards, open) = (
            state.db.heartbeat.clone(),
            cfg.node_id.clone(),
            state.shards.clone(),
            Arc::clone(&state.reports),
        );
        move || {
            let (pool, node, shards) = (pool.clone(), node.clone(), shards.clone());
            let sockets = Arc::clone(&open);
            async move {
                let read_at = std::time::Instant::now();
                let client = pool.get().await?;
                let rows = leases::heartbeat(&client, &node, ttl).await?;
                shards.fence(rows, read_at);
                reports::record_sockets(&client, &node, sockets.sockets()).await?;
                Ok(())
            }
        }
    });

    let reaper_period = cfg.commerce.reaper_period;
    jobs.every("reaper", reaper_period, First::Now, {
        let (primary, live, shards) = (primary.clone(), state.live.clone(), state.shards.clone());
        let grace = leases::reservation_grace(reaper_period);
        move || {
            let (primary, live, shards) = (primary.clone(), live.clone(), shards.clone());
            async move {
                let mut client = primary.get().await?;
                let reaped = leases::reap(&mut client, Scope::Dead { grace }).await?;
                drop(client);
                for (sku, available) in reaped.available {
                    shards
                        .for_sku(&sku)
                        .addr()
                        .do_send(Restocked { sku, available });
                }
                live.stock_changed(reaped.levels);
                for lapsed in reaped.lapsed {
                    live.reservation_expired(&lapsed.session_id, &lapsed.sku, lapsed.quantity);
                }
                Ok(())
            }
        }
    });

    jobs.every("purge", PURGE_PERIOD, First::AfterPeriod, {
        let (primary, age) = (primary.clone(), cfg.commerce.cart_retention);
        move || {
            let primary = primary.clone();
            async move { purge_once(&primary, age).await.map(|_| ()) }
        }
    });

    // Each run announces what has started, then waits for a start due before the next
    // run, so the message leaves at the start instant.
    jobs.every("campaigns", CAMPAIGN_PERIOD, First::Now, {
        let announcer = Arc::new(Announcer::new(
            state.live.hub().clone(),
            state.catalog.clone(),
            state.stock.clone(),
        ));
        let cancel = jobs.cancel.clone();
        move || {
            let announcer = Arc::clone(&announcer);
            let cancel = cancel.clone();
            async move {
                announcer.announce_started();
                if let Some(wait) = announcer.next_start_within(CAMPAIGN_PERIOD) {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = tokio::time::sleep(wait) => {
                            announcer.announce_started();
                        }
                    }
                }
                Ok(())
            }
        }
    });

    jobs.every("queue positions", QUEUE_PUSH_PERIOD, First::Now, {
        let queue = Arc::clone(&state.queue);
        move || {
            let queue = Arc::clone(&queue);
            async move {
                queue.push_positions();
                Ok(())
            }
        }
    });

    // The shutdown path flushes once more after the jobs stop (`Node::shutdown`).
    jobs.every("campaign refusals", REPORT_PERIOD, First::AfterPeriod, {
        let reports = Arc::clone(&state.reports);
        move || {
            let reports = Arc::clone(&reports);
            async move {
                reports
                    .flush_refusals()
                    .await
                    .map(|_| ())
                    .map_err(Into::into)
            }
        }
    });

    // One report per watched campaign per tick, whatever the number of monitors.
    jobs.every("campaign monitors", REPORT_PERIOD, First::AfterPeriod, {
        let reports = Arc::clone(&state.reports);
        move || {
            let reports = Arc::clone(&reports);
            async move {
                reports.push_reports().await;
                Ok(())
            }
        }
    });

    jobs.every("stock and catalog resync", cfg.live.resync, First::Now, {
        let live = state.live.clone();
        move || {
            let live = live.clone();
            async move { live.resync().await.map(|_| ()) }
        }
    });

    jobs
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[actix_web::test]
    async fn a_job_finishes_its_run_before_it_stops() {
        let runs = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let mut jobs = Jobs::new();
        jobs.every("slow", Duration::from_millis(50), First::Now, {
            let (runs, finished) = (Arc::clone(&runs), Arc::clone(&finished));
            move || {
                let (runs, finished) = (Arc::clone(&runs), Arc::clone(&finished));
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        jobs.stop(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "stopped between runs");
        assert_eq!(
            finished.load(Ordering::SeqCst),
            1,
            "the run in progress finished"
        );
    }

    #[actix_web::test]
    async fn a_delayed_job_waits_one_period_and_a_stuck_one_is_aborted() {
        let runs = Arc::new(AtomicUsize::new(0));
        let mut jobs = Jobs::new();
        jobs.every("later", Duration::from_millis(300), First::AfterPeriod, {
            let runs = Arc::clone(&runs);
            move || {
                let runs = Arc::clone(&runs);
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        });
        jobs.every("stuck", Duration::from_millis(50), First::Now, || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "not before one period");
        let stopping = std::time::Instant::now();
        jobs.stop(Duration::from_millis(200)).await;
        assert!(
            stopping.elapsed() < Duration::from_secs(2),
            "the bound holds"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }
}
