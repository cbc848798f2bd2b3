//! The local fan-out: hub shards that know which sockets want which SKU and which
//! sockets belong to which session. Stock values are coalesced: a shard keeps the latest
//! value per SKU and flushes the changed ones at most once per `coalesce` interval, so a
//! socket gets at most one `stock` message per SKU per interval. A change that finds
//! its shard quiet for a whole interval goes out at once ([`Pacer`]); changes that
//! follow within the interval wait for its end. Each message is encoded once and its
//! bytes shared by every recipient. Delivery never waits on a socket: a full socket
//! mailbox drops the message (counted), and a socket that keeps dropping is told to
//! close.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use bytestring::ByteString;
use surge_actors::ports::StockLevel;

use super::message::ServerMessage;

/// A text frame for a socket. Its bytes are shared: a clone per recipient copies
/// nothing, and the socket hands them to its writer as they are.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Push(pub ByteString);

impl Push {
    /// The frame of `message`, encoded once for all its recipients.
    pub fn encode(message: &ServerMessage) -> Option<Self> {
        message.encode().map(|text| Self(text.into()))
    }
}

/// When a shard flushes its coalesced stock: at once for a change that finds the shard
/// quiet for a whole window, otherwise at the end of the window that began with the
/// last flush. Either way flushes are at least a window apart, so a socket gets at most
/// one message per SKU per window; the window only delays changes that follow one
/// another closely, which it merges.
#[derive(Debug, Clone)]
pub struct Pacer {
    window: Duration,
    last: Option<Instant>,
    scheduled: bool,
}

/// What a shard does with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Flush now.
    Now,
    /// Flush after this delay (no flush is scheduled yet).
    After(Duration),
    /// A flush is already scheduled; it will carry the change.
    Scheduled,
}

impl Pacer {
    /// A pacer that keeps flushes `window` apart.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last: None,
            scheduled: false,
        }
    }

    /// A change arrived at `now`.
    pub fn change(&mut self, now: Instant) -> Pace {
        if self.scheduled {
            return Pace::Scheduled;
        }
        let due = self.last.map_or(now, |last| last + self.window);
        match due.checked_duration_since(now) {
            Some(wait) if !wait.is_zero() => {
                self.scheduled = true;
                Pace::After(wait)
            }
            _ => Pace::Now,
        }
    }

    /// The shard flushed at `now`.
    pub fn flushed(&mut self, now: Instant) {
        self.last = Some(now);
        self.scheduled = false;
    }
}

/// Tells a socket to close with a code: 1008 when it cannot keep up, 1001 at shutdown.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Kick {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

/// Identity of a socket within this node.
pub type SocketId = u64;

/// Drops in a row after which a socket is told to close.
const MAX_DROPS: u32 = 64;

struct Socket {
    push: Recipient<Push>,
    kick: Recipient<Kick>,
    drops: u32,
}

/// One shard of the hub.
pub struct HubShard {
    sockets: HashMap<SocketId, Socket>,
    by_sku: HashMap<String, HashSet<SocketId>>,
    by_session: HashMap<String, HashSet<SocketId>>,
    session_of: HashMap<SocketId, String>,
    latest: HashMap<String, (i64, i64)>,
    dirty: HashSet<String>,
    pacer: Pacer,
    /// `ws_messages_sent_total`, looked up once rather than per message.
    sent: metrics::Counter,
}

impl HubShard {
    fn new(coalesce: Duration) -> Self {
        Self {
            sockets: HashMap::new(),
            by_sku: HashMap::new(),
            by_session: HashMap::new(),
            session_of: HashMap::new(),
            latest: HashMap::new(),
            dirty: HashSet::new(),
            pacer: Pacer::new(coalesce),
            sent: metrics::counter!("ws_messages_sent_total"),
        }
    }

    /// Delivers `msg` to each of `ids`, counting the messages sent once.
    fn deliver_all(&mut self, ids: impl IntoIterator<Item = SocketId>, msg: &Push) {
        let sent: u64 = ids
            .into_iter()
            .map(|id| u64::from(self.deliver(id, msg)))
            .sum();
        self.sent.increment(sent);
    }

    /// Whether the socket took the message.
    fn deliver(&mut self, id: SocketId, msg: &Push) -> bool {
        let Some(socket) = self.sockets.get_mut(&id) else {
            return false;
        };
        match socket.push.try_send(msg.clone()) {
            Ok(()) => {
                socket.drops = 0;
                return true;
            }
            Err(SendError::Full(_)) => {
                socket.drops += 1;
                metrics::counter!("ws_messages_dropped_total", "reason" => "slow").increment(1);
                if socket.drops == MAX_DROPS {
                    metrics::counter!("ws_slow_closed_total").increment(1);
                    // do_send: the mailbox is full by definition, and the kick must land.
                    socket.kick.do_send(Kick {
                        code: 1008,
                        reason: "too slow",
                    });
                }
            }
            Err(SendError::Closed(_)) => self.forget(id),
        }
        false
    }

    fn forget(&mut self, id: SocketId) {
        self.sockets.remove(&id);
        self.by_sku.retain(|_, ids| {
            ids.remove(&id);
            !ids.is_empty()
        });
        if let Some(session) = self.session_of.remove(&id) {
            if let Some(ids) = self.by_session.get_mut(&session) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_session.remove(&session);
                }
            }
        }
    }

    fn flush(&mut self) {
        self.pacer.flushed(Instant::now());
        let dirty: Vec<String> = self.dirty.drain().collect();
        for sku in dirty {
            let (Some(ids), Some(&(available, seq))) =
                (self.by_sku.get(&sku), self.latest.get(&sku))
            else {
                continue;
            };
            let Some(msg) = Push::encode(&ServerMessage::Stock {
                sku: sku.clone(),
                available,
                seq,
            }) else {
                continue;
            };
            let ids: Vec<SocketId> = ids.iter().copied().collect();
            self.deliver_all(ids, &msg);
        }
    }

    fn socket(&mut self, id: SocketId, push: Recipient<Push>, kick: Recipient<Kick>) {
        self.sockets.entry(id).or_insert(Socket {
            push,
            kick,
            drops: 0,
        });
    }
}

impl Actor for HubShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(100_000);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Subscribe {
    id: SocketId,
    push: Recipient<Push>,
    kick: Recipient<Kick>,
    skus: Vec<String>,
}

impl Handler<Subscribe> for HubShard {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.socket(msg.id, msg.push, msg.kick);
        for sku in msg.skus {
            self.by_sku.entry(sku).or_default().insert(msg.id);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Unsubscribe {
    id: SocketId,
    skus: Vec<String>,
}

impl Handler<Unsubscribe> for HubShard {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        for sku in msg.skus {
            if let Some(ids) = self.by_sku.get_mut(&sku) {
                ids.remove(&msg.id);
                if ids.is_empty() {
                    self.by_sku.remove(&sku);
                }
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct JoinSession {
    id: SocketId,
    push: Recipient<Push>,
    kick: Recipient<Kick>,
    session: String,
}

impl Handler<JoinSession> for HubShard {
    type Result = ();

    fn handle(&mut self, msg: JoinSession, _: &mut Self::Context) {
        self.socket(msg.id, msg.push, msg.kick);
        self.by_session
            .entry(msg.session.clone())
            .or_default()
            .insert(msg.id);
        self.session_of.insert(msg.id, msg.session);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Leave(SocketId);

impl Handler<Leave> for HubShard {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Self::Context) {
        self.forget(msg.0);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Stock(Vec<StockLevel>);

impl Handler<Stock> for HubShard {
    type Result = ();

    fn handle(&mut self, msg: Stock, ctx: &mut Self::Context) {
        for level in msg.0 {
            let newer = self
                .latest
                .get(&level.sku)
                .is_none_or(|&(_, seq)| level.seq > seq);
            if newer {
                self.latest
                    .insert(level.sku.clone(), (level.available, level.seq));
                if self.by_sku.contains_key(&level.sku) {
                    self.dirty.insert(level.sku);
                }
            }
        }
        if self.dirty.is_empty() {
            return;
        }
        match self.pacer.change(Instant::now()) {
            Pace::Now => self.flush(),
            Pace::After(wait) => {
                ctx.run_later(wait, |act, _| act.flush());
            }
            Pace::Scheduled => {}
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct ToSession {
    session: String,
    msg: Push,
}

impl Handler<ToSession> for HubShard {
    type Result = ();

    fn handle(&mut self, msg: ToSession, _: &mut Self::Context) {
        let ids: Vec<SocketId> = self
            .by_session
            .get(&msg.session)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.deliver_all(ids, &msg.msg);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct ToAll(Push);

impl Handler<ToAll> for HubShard {
    type Result = ();

    fn handle(&mut self, msg: ToAll, _: &mut Self::Context) {
        // Every socket joins exactly one shard's session table: broadcast from there.
        let ids: Vec<SocketId> = self.session_of.keys().copied().collect();
        self.deliver_all(ids, &msg.0);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct KickAll(Kick);

impl Handler<KickAll> for HubShard {
    type Result = ();

    fn handle(&mut self, msg: KickAll, _: &mut Self::Context) {
        for id in self.session_of.keys() {
            if let Some(socket) = self.sockets.get(id) {
                socket.kick.do_send(msg.0);
            }
        }
    }
}

/// The node's hub: shards on their own threads, addressed by SKU or session hash.
#[derive(Clone)]
pub struct Hub {
    shards: Arc<Vec<Addr<HubShard>>>,
    _arbiters: Arc<Vec<Arbiter>>,
}

fn pick<T: Hash + ?Sized>(key: &T, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    usize::try_from(h.finish() % n.max(1) as u64).unwrap_or(0)
}

impl Hub {
    /// Starts `shards` hub shards that flush coalesced stock every `coalesce`.
    pub fn start(shards: usize, coalesce: Duration) -> Self {
        let n = shards.max(1);
        let mut arbiters = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let arbiter = Arbiter::new();
            addrs.push(HubShard::start_in_arbiter(&arbiter.handle(), move |_| {
                HubShard::new(coalesce)
            }));
            arbiters.push(arbiter);
        }
        Self {
            shards: Arc::new(addrs),
            _arbiters: Arc::new(arbiters),
        }
    }

    fn for_key<T: Hash + ?Sized>(&self, key: &T) -> &Addr<HubShard> {
        &self.shards[pick(key, self.shards.len())]
    }

    /// Registers a socket for its session's events and for broadcasts.
    pub fn join(&self, id: SocketId, session: &str, push: Recipient<Push>, kick: Recipient<Kick>) {
        self.for_key(session).do_send(JoinSession {
            id,
            push,
            kick,
            session: session.to_owned(),
        });
    }

    /// Subscribes a socket to stock of `skus`.
    pub fn subscribe(
        &self,
        id: SocketId,
        skus: &[String],
        push: &Recipient<Push>,
        kick: &Recipient<Kick>,
    ) {
        for (shard, skus) in self.group(skus) {
            shard.do_send(Subscribe {
                id,
                push: push.clone(),
                kick: kick.clone(),
                skus,
            });
        }
    }

    /// Unsubscribes a socket from `skus`.
    pub fn unsubscribe(&self, id: SocketId, skus: &[String]) {
        for (shard, skus) in self.group(skus) {
            shard.do_send(Unsubscribe { id, skus });
        }
    }

    /// Forgets a socket everywhere.
    pub fn leave(&self, id: SocketId) {
        for shard in self.shards.iter() {
            shard.do_send(Leave(id));
        }
    }

    /// New stock values (coalesced per SKU before delivery).
    pub fn stock(&self, levels: Vec<StockLevel>) {
        let mut groups: HashMap<usize, Vec<StockLevel>> = HashMap::new();
        for level in levels {
            groups
                .entry(pick(level.sku.as_str(), self.shards.len()))
                .or_default()
                .push(level);
        }
        for (i, levels) in groups {
            self.shards[i].do_send(Stock(levels));
        }
    }

    /// A message for every socket of one session.
    pub fn to_session(&self, session: &str, message: &ServerMessage) {
        let Some(msg) = Push::encode(message) else {
            return;
        };
        self.for_key(session).do_send(ToSession {
            session: session.to_owned(),
            msg,
        });
    }

    /// A message for every socket of this node.
    pub fn to_all(&self, message: &ServerMessage) {
        let Some(msg) = Push::encode(message) else {
            return;
        };
        for shard in self.shards.iter() {
            shard.do_send(ToAll(msg.clone()));
        }
    }

    fn group(&self, skus: &[String]) -> Vec<(&Addr<HubShard>, Vec<String>)> {
        let mut groups: HashMap<usize, Vec<String>> = HashMap::new();
        for sku in skus {
            groups
                .entry(pick(sku.as_str(), self.shards.len()))
                .or_default()
                .push(sku.clone());
        }
        groups
            .into_iter()
            .map(|(i, skus)| (&self.shards[i], skus))
            .collect()
    }

    /// Asks every socket of this node to close with 1001 (going away), at shutdown.
    pub fn close_all(&self) {
        for shard in self.shards.iter() {
            shard.do_send(KickAll(Kick {
                code: 1001,
                reason: "going away",
            }));
        }
    }

    /// Stops the shard threads.
    pub fn stop(&self) {
        for a in self._arbiters.iter() {
            a.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A socket that records what it gets; a `stuck` one never reads its mailbox.
    struct Probe {
        got: Arc<Mutex<Vec<String>>>,
        stuck: bool,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Self::Context) {
            // Like a WsSession: room for a full flush of its subscriptions.
            ctx.set_mailbox_capacity(256);
            if self.stuck {
                // Blocks its own mailbox for the whole test, like a client that never reads.
                ctx.wait(actix::fut::wrap_future(actix_web::rt::time::sleep(
                    Duration::from_secs(30),
                )));
            }
        }
    }

    impl Handler<Push> for Probe {
        type Result = ();
        fn handle(&mut self, msg: Push, _: &mut Self::Context) {
            self.got.lock().expect("lock").push(msg.0.to_string());
        }
    }

    impl Handler<Kick> for Probe {
        type Result = ();
        fn handle(&mut self, _: Kick, _: &mut Self::Context) {}
    }

    fn probe(stuck: bool) -> (Addr<Probe>, Arc<Mutex<Vec<String>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let addr = Probe {
            got: got.clone(),
            stuck,
        }
        .start();
        (addr, got)
    }

    fn level(sku: &str, available: i64, seq: i64) -> StockLevel {
        StockLevel {
            sku: sku.into(),
            available,
            seq,
        }
    }

    #[actix_web::test]
    async fn coalesces_to_the_latest_value_and_drops_stale_ones() {
        let hub = Hub::start(2, Duration::from_millis(50));
        let (addr, got) = probe(false);
        hub.subscribe(
            1,
            &["A".to_owned()],
            &addr.clone().recipient(),
            &addr.recipient(),
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        hub.stock(vec![
            level("A", 5, 1),
            level("A", 4, 2),
            level("A", 3, 3),
            level("A", 9, 1),
        ]);
        actix_web::rt::time::sleep(Duration::from_millis(150)).await;
        let got = got.lock().expect("lock").clone();
        assert_eq!(got.len(), 1, "one message per SKU per interval: {got:?}");
        assert!(
            got[0].contains("\"available\":3") && got[0].contains("\"seq\":3"),
            "{got:?}"
        );
        hub.stop();
    }

    /// Guards the pacing: flushes stay a window apart however changes arrive, and a
    /// change after a quiet window is not held back.
    #[test]
    fn the_pacer_keeps_flushes_a_window_apart_and_lets_a_lone_change_through() {
        let window = Duration::from_millis(100);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut pacer = Pacer::new(window);
        assert_eq!(pacer.change(t0), Pace::Now, "the first change goes at once");
        pacer.flushed(t0);
        assert_eq!(pacer.change(ms(30)), Pace::After(Duration::from_millis(70)));
        assert_eq!(
            pacer.change(ms(60)),
            Pace::Scheduled,
            "one flush carries both"
        );
        pacer.flushed(ms(100));
        assert_eq!(pacer.change(ms(199)), Pace::After(Duration::from_millis(1)));
        pacer.flushed(ms(200));
        assert_eq!(
            pacer.change(ms(300)),
            Pace::Now,
            "a whole window since the last"
        );
        pacer.flushed(ms(300));
        assert_eq!(pacer.change(ms(450)), Pace::Now);
    }

    /// Guards the shared frame: what a socket is handed is the serde encoding of the
    /// message, and every recipient's copy is the same bytes, not a copy of them.
    #[test]
    fn a_push_is_the_encoded_message_and_its_clones_share_the_bytes() {
        let message = ServerMessage::Stock {
            sku: "TEE-M".into(),
            available: 4,
            seq: 17,
        };
        let push = Push::encode(&message).expect("encodes");
        assert_eq!(
            &*push.0,
            serde_json::to_string(&message).expect("JSON").as_str()
        );
        let clone = push.clone();
        assert_eq!(clone.0.as_ptr(), push.0.as_ptr(), "shared, not copied");
    }

    #[actix_web::test]
    async fn a_lone_change_goes_at_once_and_a_close_second_waits_for_the_window() {
        let window = Duration::from_millis(300);
        let hub = Hub::start(1, window);
        let (addr, got) = probe(false);
        hub.subscribe(
            1,
            &["A".to_owned()],
            &addr.clone().recipient(),
            &addr.recipient(),
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        hub.stock(vec![level("A", 5, 1)]);
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(got.lock().expect("lock").len(), 1, "the first went at once");
        hub.stock(vec![level("A", 4, 2)]);
        hub.stock(vec![level("A", 3, 3)]);
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(got.lock().expect("lock").len(), 1, "the next ones wait");
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
        let got = got.lock().expect("lock").clone();
        assert!(t0.elapsed() >= window);
        assert_eq!(got.len(), 2, "one more, at the window's end: {got:?}");
        assert!(got[1].contains("\"seq\":3"), "the latest: {got:?}");
        hub.stop();
    }

    #[actix_web::test]
    async fn a_stuck_socket_never_stalls_the_others() {
        let hub = Hub::start(1, Duration::from_millis(10));
        let (healthy, got) = probe(false);
        let (stuck, stuck_got) = probe(true);
        let skus: Vec<String> = (0..100).map(|i| format!("S{i}")).collect();
        hub.subscribe(1, &skus, &healthy.clone().recipient(), &healthy.recipient());
        hub.subscribe(2, &skus, &stuck.clone().recipient(), &stuck.recipient());
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        // Each round fills the stuck socket's mailbox further; from the third on it drops.
        for round in 1..=5 {
            hub.stock(skus.iter().map(|s| level(s, round, round)).collect());
            actix_web::rt::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(
            got.lock().expect("lock").len(),
            500,
            "the healthy socket got every message"
        );
        assert!(
            stuck_got.lock().expect("lock").is_empty(),
            "the stuck one read nothing"
        );
        hub.stop();
    }
}
