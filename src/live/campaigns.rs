//! Campaign announcements. Every node tells its own sockets, once per campaign, when a
//! campaign of its catalog snapshot goes live by its clock: nothing crosses the bus, so
//! a node that was away when a campaign started still announces it, and a timer set for
//! the next start makes the message leave at the start instant rather than up to a poll
//! period later.

use std::{collections::HashSet, sync::Arc, sync::Mutex, time::Duration};

use surge_actors::{campaign::State, cart_actor::now_ms};

use super::{hub::Hub, message::ServerMessage};
use crate::{
    catalog::{CatalogStore, StockLevels},
    views::campaign_view,
};

/// Announces each started campaign once to every socket of this node.
pub struct Announcer {
    hub: Hub,
    catalog: Arc<CatalogStore>,
    stock: Arc<StockLevels>,
    announced: Mutex<HashSet<uuid::Uuid>>,
}

impl Announcer {
    /// An announcer that has announced nothing yet.
    pub fn new(hub: Hub, catalog: Arc<CatalogStore>, stock: Arc<StockLevels>) -> Self {
        Self {
            hub,
            catalog,
            stock,
            announced: Mutex::new(HashSet::new()),
        }
    }

    /// Announces the campaigns live now that this node has not announced; returns how
    /// many it announced.
    pub fn announce_started(&self) -> usize {
        let catalog = self.catalog.snapshot();
        let now = now_ms();
        let mut fresh = 0;
        for campaign in catalog.campaigns().all() {
            if campaign.state_at(now) != State::Live {
                continue;
            }
            let new = self
                .announced
                .lock()
                .map(|mut a| a.insert(campaign.id))
                .unwrap_or(false);
            if new {
                fresh += 1;
                let campaign = campaign_view(&catalog, &self.stock, campaign, now);
                self.hub.to_all(&ServerMessage::Campaign { campaign });
            }
        }
        fresh
    }

    /// How long until the next campaign start of the snapshot, if one is due within
    /// `horizon`.
    pub fn next_start_within(&self, horizon: Duration) -> Option<Duration> {
        let now = now_ms();
        let next = self.catalog.snapshot().campaigns().next_start_after(now)?;
        let wait = Duration::from_millis(u64::try_from(next - now).ok()?);
        (wait <= horizon).then_some(wait)
    }
}
