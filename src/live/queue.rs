//! The waiting room as a node serves it: joins and standings from the slots stored in
//! PostgreSQL (see `docs/QUEUE.md`), and positions pushed to this node's sockets of the
//! sessions that joined, asked or opened a socket here.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use surge_actors::{
    campaign::{Campaign, State},
    cart_actor::now_ms,
    queue::{Schedule, Standing},
};
use uuid::Uuid;

use super::{hub::Hub, message::ServerMessage};
use crate::{
    catalog::CatalogStore,
    store::{
        queue::{self, Joins},
        DbError,
    },
};

/// How long a campaign's queue counts are reused by join and standing answers: their
/// `waiting` may be this stale (their `position` never is: it is the slot's), and a
/// polling crowd costs the database one read per campaign this often instead of one
/// per poll.
const COUNTS_FRESH_FOR: Duration = Duration::from_millis(250);

/// Where a session stands in a campaign's queue, and how many wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The session's standing.
    pub standing: Standing,
    /// Joiners of the campaign still waiting.
    pub waiting: i64,
}

/// A session's slot as this node knows it, and what it last told the session; kept
/// after admission too, so a later write of the session never locks the counter row.
#[derive(Debug, Clone, Copy)]
struct Watch {
    slot: i64,
    last: Option<(i64, bool)>,
}

/// A campaign's `(joined, next_slot)` and when they were read.
type ReadCounts = (Instant, (i64, i64));

/// The node's waiting room; slots are immutable once handed out, so each is cached.
pub struct WaitingRoom {
    pool: Pool,
    joins: Joins,
    hub: Hub,
    catalog: Arc<CatalogStore>,
    window_ms: i64,
    watched: Mutex<HashMap<(Uuid, String), Watch>>,
    /// Per campaign: when its `(joined, next_slot)` was read, and the values.
    counts: Mutex<HashMap<Uuid, ReadCounts>>,
}

impl WaitingRoom {
    /// A room reading and writing slots through `pool`, giving each admitted session
    /// `window_ms` to reserve.
    pub fn new(pool: Pool, hub: Hub, catalog: Arc<CatalogStore>, window_ms: i64) -> Self {
        Self {
            joins: Joins::spawn(pool.clone()),
            pool,
            hub,
            catalog,
            window_ms,
            watched: Mutex::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// The campaign's admission schedule; `None` when it has no waiting room.
    pub fn schedule(&self, campaign: &Campaign) -> Option<Schedule> {
        campaign.admit_per_second.map(|admit_per_second| Schedule {
            starts_at_ms: campaign.window.starts_at_ms,
            admit_per_second,
            window_ms: self.window_ms,
        })
    }

    fn cached(&self, campaign: Uuid, session: &str) -> Option<i64> {
        self.watched
            .lock()
            .ok()?
            .get(&(campaign, session.to_owned()))
            .map(|w| w.slot)
    }

    /// Forgets what the session was last told of the campaign, so the next push tells
    /// a socket that just opened where it stands, even once admitted; `false` when the
    /// session's slot is not cached.
    fn rewatch(&self, campaign: Uuid, session: &str) -> bool {
        let Ok(mut w) = self.watched.lock() else {
            return false;
        };
        match w.get_mut(&(campaign, session.to_owned())) {
            Some(watch) => {
                watch.last = None;
                true
            }
            None => false,
        }
    }

    fn watch(&self, campaign: Uuid, session: &str, slot: i64) {
        if let Ok(mut w) = self.watched.lock() {
            w.entry((campaign, session.to_owned()))
                .or_insert(Watch { slot, last: None });
        }
    }

    async fn ticket(
        &self,
        schedule: &Schedule,
        campaign: Uuid,
        slot: i64,
    ) -> Result<Ticket, DbError> {
        let (_, next_slot) = self.counts_of(campaign).await?;
        // A slot this node just handed out may be newer than the cached counts.
        let next_slot = next_slot.max(slot + 1);
        let now = now_ms();
        Ok(Ticket {
            standing: schedule.standing(slot, now),
            waiting: schedule.waiting(next_slot, now),
        })
    }

    /// The session's slot, joining it when it has none (a second join keeps the
    /// first slot); `None` when the campaign has no waiting room.
    async fn joined_slot(
        &self,
        campaign: &Campaign,
        session: &str,
    ) -> Result<Option<(Schedule, i64)>, DbError> {
        let Some(schedule) = self.schedule(campaign) else {
            return Ok(None);
        };
        let slot = match self.cached(campaign.id, session) {
            Some(slot) => slot,
            None => self.joins.join(campaign.id, session, &schedule).await?,
        };
        self.watch(campaign.id, session, slot);
        Ok(Some((schedule, slot)))
    }

    /// Joins `session` to the campaign's queue (a second join keeps the first slot);
    /// `None` when the campaign has no waiting room.
    pub async fn join(
        &self,
        campaign: &Campaign,
        session: &str,
    ) -> Result<Option<Ticket>, DbError> {
        match self.joined_slot(campaign, session).await? {
            Some((schedule, slot)) => self.ticket(&schedule, campaign.id, slot).await.map(Some),
            None => Ok(None),
        }
    }

    /// Joins `session` like [`Self::join`] and answers only its standing: once a slot
    /// is cached, no IO at all, so admitted buyers' writes cost the queue nothing.
    pub async fn admission(
        &self,
        campaign: &Campaign,
        session: &str,
    ) -> Result<Option<Standing>, DbError> {
        Ok(self
            .joined_slot(campaign, session)
            .await?
            .map(|(schedule, slot)| schedule.standing(slot, now_ms())))
    }

    /// Where `session` stands without joining; `None` when it has not joined or the
    /// campaign has no waiting room.
    pub async fn standing(
        &self,
        campaign: &Campaign,
        session: &str,
    ) -> Result<Option<Ticket>, DbError> {
        let Some(schedule) = self.schedule(campaign) else {
            return Ok(None);
        };
        let slot = match self.cached(campaign.id, session) {
            Some(slot) => slot,
            None => match queue::slot_of(&self.pool, campaign.id, session).await? {
                Some(slot) => slot,
                None => return Ok(None),
            },
        };
        self.watch(campaign.id, session, slot);
        self.ticket(&schedule, campaign.id, slot).await.map(Some)
    }

    /// Starts pushing `session` its positions in every queue it joined, on any node,
    /// of a campaign not yet ended: called when it opens a socket on this node.
    pub async fn follow(&self, session: &str) -> Result<(), DbError> {
        let catalog = self.catalog.snapshot();
        let now = now_ms();
        let open = catalog
            .campaigns()
            .all()
            .iter()
            .filter(|c| c.admit_per_second.is_some() && c.state_at(now) != State::Ended);
        for campaign in open {
            if self.rewatch(campaign.id, session) {
                continue;
            }
            if let Some(slot) = queue::slot_of(&self.pool, campaign.id, session).await? {
                self.watch(campaign.id, session, slot);
            }
        }
        Ok(())
    }

    /// `(joined, next_slot)` of the campaign, read at most every [`COUNTS_FRESH_FOR`].
    async fn counts_of(&self, campaign: Uuid) -> Result<(i64, i64), DbError> {
        let cached = self
            .counts
            .lock()
            .ok()
            .and_then(|c| c.get(&campaign).copied())
            .filter(|(at, _)| at.elapsed() < COUNTS_FRESH_FOR);
        if let Some((_, counts)) = cached {
            return Ok(counts);
        }
        let counts = queue::counts(&self.pool, campaign).await?;
        if let Ok(mut c) = self.counts.lock() {
            c.insert(campaign, (Instant::now(), counts));
        }
        Ok(counts)
    }

    /// The campaign's waiting and admitted counts now; `None` without a waiting room.
    pub async fn counts(&self, campaign: &Campaign) -> Result<Option<(i64, i64)>, DbError> {
        let Some(schedule) = self.schedule(campaign) else {
            return Ok(None);
        };
        // Read fresh: the campaign view and the report state the counts exactly.
        let (joined, next_slot) = queue::counts(&self.pool, campaign.id).await?;
        let waiting = schedule.waiting(next_slot, now_ms());
        Ok(Some((waiting, joined - waiting)))
    }

    /// Pushes each watched session its position when it moved, and `admitted: true`
    /// once; returns how many messages went out. A campaign's sessions are forgotten
    /// when it ends. Pure arithmetic on cached slots: no IO but the hub.
    pub fn push_positions(&self) -> usize {
        let catalog = self.catalog.snapshot();
        let now = now_ms();
        let mut out = Vec::new();
        if let Ok(mut watched) = self.watched.lock() {
            watched.retain(|(campaign_id, session), watch| {
                let Some(campaign) = catalog.campaigns().get(*campaign_id) else {
                    return false;
                };
                let Some(schedule) = self.schedule(campaign) else {
                    return false;
                };
                if campaign.state_at(now) == State::Ended {
                    return false;
                }
                if watch.last.is_some_and(|(_, admitted)| admitted) {
                    return true;
                }
                let standing = schedule.standing(watch.slot, now);
                let seen = (standing.position, standing.admitted);
                if watch.last != Some(seen) {
                    watch.last = Some(seen);
                    out.push((session.clone(), *campaign_id, seen));
                }
                true
            });
        }
        for (session, campaign_id, (position, admitted)) in &out {
            self.hub.to_session(
                session,
                &ServerMessage::Queue {
                    campaign_id: *campaign_id,
                    position: *position,
                    admitted: *admitted,
                },
            );
        }
        out.len()
    }
}
