//! Campaign announcements. Every node polls PostgreSQL for campaigns that have started
//! and tells its own sockets, once per campaign: nothing crosses the bus, so a node
//! that was away when a campaign started still announces it.

use std::{collections::HashSet, sync::Mutex};

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::{hub::Hub, message::ServerMessage};
use crate::store::campaigns;

/// Announces each started campaign once to every socket of this node.
pub struct Announcer {
    hub: Hub,
    reads: Pool,
    announced: Mutex<HashSet<Uuid>>,
}

impl Announcer {
    /// An announcer that has announced nothing yet.
    pub fn new(hub: Hub, reads: Pool) -> Self {
        Self {
            hub,
            reads,
            announced: Mutex::new(HashSet::new()),
        }
    }

    /// Announces the campaigns live now that this node has not announced; returns how
    /// many it announced.
    pub async fn announce_started(&self) -> anyhow::Result<usize> {
        let client = self.reads.get().await?;
        let mut fresh = 0;
        for campaign in campaigns::live_now(&**client).await? {
            let new = self
                .announced
                .lock()
                .map(|mut a| a.insert(campaign.id))
                .unwrap_or(false);
            if new {
                fresh += 1;
                self.hub.to_all(&ServerMessage::Campaign { campaign });
            }
        }
        Ok(fresh)
    }
}
