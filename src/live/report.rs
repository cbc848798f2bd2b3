//! Campaign reports for merchants: the node's refusal counts (kept in memory, written
//! as deltas), its open sockets, the report itself, and the sockets that monitor a
//! campaign, which get one report per campaign per tick however many watch it.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use actix::Recipient;
use deadpool_postgres::Pool;
use surge_actors::{campaign::Campaign, cart_actor::now_ms, refusals::RefusalTally};
use uuid::Uuid;

use super::{
    hub::{Push, SocketId},
    message::ServerMessage,
    queue::WaitingRoom,
};
use crate::{
    catalog::{CatalogStore, StockLevels},
    store::{reports, DbError},
    views::{CampaignReport, QueueReport},
};

/// Most campaigns one node reports on per tick; more watched ones wait their turn
/// (a bound on the tick's database work whatever the sockets ask).
const MAX_MONITORED: usize = 64;

/// What the reports of a node are made from.
pub struct ReportDeps {
    /// Where sales, refusals and the queue are read and refusals written.
    pub pool: Pool,
    /// The in-memory catalog: campaigns, currencies.
    pub catalog: Arc<CatalogStore>,
    /// This node's sellable units per SKU.
    pub stock: Arc<StockLevels>,
    /// The waiting rooms' schedules.
    pub queue: Arc<WaitingRoom>,
    /// This node's id, the key of its refusal rows.
    pub node_id: String,
    /// A node whose heartbeat is older than this is not live (the lease TTL).
    pub live_within: Duration,
}

/// The node's campaign reports; shared by the HTTP layer, the socket and the jobs.
pub struct CampaignReports {
    deps: ReportDeps,
    tally: Mutex<RefusalTally>,
    sockets: AtomicI64,
    monitors: Mutex<HashMap<Uuid, HashMap<SocketId, Recipient<Push>>>>,
}

impl CampaignReports {
    /// Reports over `deps`, with nothing counted yet.
    pub fn new(deps: ReportDeps) -> Self {
        Self {
            deps,
            tally: Mutex::new(RefusalTally::default()),
            sockets: AtomicI64::new(0),
            monitors: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a refused write of `sku` with `code` against the SKU's campaign, if it
    /// is in one; `false` when it is not.
    pub fn refused_sku(&self, sku: &str, code: &'static str) -> bool {
        let campaign = self
            .deps
            .catalog
            .snapshot()
            .campaigns()
            .refused_by(sku, now_ms())
            .map(|c| c.id);
        campaign.is_some_and(|id| self.refused(id, code))
    }

    /// Counts one refusal of `code` for each distinct campaign of `skus`.
    pub fn refused_skus(&self, skus: &[String], code: &'static str) {
        let now = now_ms();
        let catalog = self.deps.catalog.snapshot();
        let mut campaigns: Vec<Uuid> = skus
            .iter()
            .filter_map(|sku| catalog.campaigns().refused_by(sku, now).map(|c| c.id))
            .collect();
        campaigns.sort_unstable();
        campaigns.dedup();
        for id in campaigns {
            self.refused(id, code);
        }
    }

    /// Counts a refusal of `code` for `campaign` (one the catalog knows).
    pub fn refused(&self, campaign: Uuid, code: &'static str) -> bool {
        if self
            .deps
            .catalog
            .snapshot()
            .campaigns()
            .get(campaign)
            .is_none()
        {
            return false;
        }
        metrics::counter!("surge_campaign_refusals_total", "code" => code).increment(1);
        if let Ok(mut t) = self.tally.lock() {
            t.record(campaign, code);
        }
        true
    }

    /// Writes the refusals counted since the last flush; on failure they stay for the
    /// next one.
    pub async fn flush_refusals(&self) -> Result<usize, DbError> {
        let deltas = match self.tally.lock() {
            Ok(mut t) => t.take(),
            Err(_) => return Ok(0),
        };
        let n = deltas.len();
        if let Err(e) = reports::flush_refusals(&self.deps.pool, &self.deps.node_id, &deltas).await
        {
            if let Ok(mut t) = self.tally.lock() {
                t.restore(deltas);
            }
            return Err(e);
        }
        Ok(n)
    }

    /// A socket opened on this node.
    pub fn socket_opened(&self) {
        self.sockets.fetch_add(1, Ordering::Relaxed);
    }

    /// A socket of this node closed; it stops monitoring too.
    pub fn socket_closed(&self, id: SocketId) {
        self.sockets.fetch_sub(1, Ordering::Relaxed);
        self.unwatch(id);
    }

    /// This node's open sockets.
    pub fn sockets(&self) -> i64 {
        self.sockets.load(Ordering::Relaxed).max(0)
    }

    /// The report of `campaign` now.
    pub async fn report(&self, campaign: &Campaign) -> Result<CampaignReport, DbError> {
        let n = reports::campaign_numbers(&self.deps.pool, campaign, self.deps.live_within).await?;
        let now = now_ms();
        let catalog = self.deps.catalog.snapshot();
        let units_left: i64 = campaign
            .skus
            .iter()
            .map(|(sku, _)| self.deps.stock.get(sku).max(0))
            .sum();
        let currency = campaign
            .skus
            .iter()
            .find_map(|(sku, _)| catalog.variant(sku))
            .map(|(_, v)| v.currency.clone())
            .unwrap_or_default();
        let queue = self.deps.queue.schedule(campaign).map(|schedule| {
            let stats = schedule.stats(&n.joiners, now);
            QueueReport {
                joined: n.joined,
                admitted: stats.admitted,
                waiting: stats.waiting,
                abandoned: stats.abandoned,
                wait_p50_ms: stats.wait_p50_ms,
                wait_p99_ms: stats.wait_p99_ms,
            }
        });
        Ok(CampaignReport {
            campaign_id: campaign.id,
            name: campaign.name.clone(),
            state: campaign.state_at(now),
            starts_at_ms: campaign.window.starts_at_ms,
            ends_at_ms: campaign.window.ends_at_ms,
            server_time_ms: now,
            units_sold: n.units_sold,
            units_left,
            orders: n.orders,
            revenue_minor: n.revenue_minor,
            currency,
            sold_out_at_ms: if units_left == 0 {
                n.last_sale_ms
            } else {
                None
            },
            refusals: n.refusals,
            // This node's own count is current; the others' are as of their heartbeat.
            sockets: n.sockets.max(self.sockets()),
            queue,
        })
    }

    /// Starts sending socket `id` the reports of `campaign`.
    pub fn watch(&self, campaign: Uuid, id: SocketId, push: Recipient<Push>) {
        if let Ok(mut m) = self.monitors.lock() {
            m.entry(campaign).or_default().insert(id, push);
        }
    }

    /// Stops sending socket `id` reports of any campaign.
    pub fn unwatch(&self, id: SocketId) {
        if let Ok(mut m) = self.monitors.lock() {
            m.retain(|_, sockets| {
                sockets.remove(&id);
                !sockets.is_empty()
            });
        }
    }

    /// Campaigns watched now.
    pub fn watched(&self) -> usize {
        self.monitors.lock().map_or(0, |m| m.len())
    }

    /// One tick of the monitors: one report per watched campaign, encoded once and
    /// pushed to each socket watching it; returns how many reports were made. Nothing
    /// is read when nobody watches.
    pub async fn push_reports(&self) -> usize {
        let ids: Vec<Uuid> = match self.monitors.lock() {
            Ok(m) => m.keys().copied().take(MAX_MONITORED).collect(),
            Err(_) => return 0,
        };
        let mut made = 0;
        for id in ids {
            let Some(campaign) = self.deps.catalog.snapshot().campaigns().get(id).cloned() else {
                continue;
            };
            let report = match self.report(&campaign).await {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(error = %err, campaign = %id, "campaign report failed");
                    continue;
                }
            };
            made += 1;
            let Some(text) = (ServerMessage::CampaignReport {
                report: Box::new(report),
            })
            .encode() else {
                continue;
            };
            let push = Push(text.into());
            let sockets: Vec<Recipient<Push>> = match self.monitors.lock() {
                Ok(m) => m
                    .get(&id)
                    .map(|s| s.values().cloned().collect())
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            for socket in sockets {
                // A full mailbox skips this tick's report; the next one supersedes it.
                let _ = socket.try_send(push.clone());
            }
        }
        made
    }
}
