//! Cross-node event bus: tells the other Surge nodes what changed here.
//!
//! Redis pub/sub carries the events. It is fire-and-forget: whatever is published
//! while a subscriber is disconnected is lost, so events carry absolute values (never
//! deltas) and, after every gap, the [`BusSink`] is told to resynchronise from
//! PostgreSQL. Correctness never depends on Redis: when it is down, nodes keep
//! serving and only the cross-node freshness suffers.
//!
//! Each node holds exactly two Redis connections, one per half of the bus: the
//! [`Publisher`] (named `surge-pub-{node_id}` in `CLIENT LIST`) and the [`Subscriber`]
//! (`surge-sub-{node_id}`). They start separately because what publishes (carts, the
//! Journal) must exist before what reacts to other nodes' events, which needs them.
//! Without a Redis URL the bus is in-process: publishing only counts.
//!
//! Metrics: counters `bus_published_total`, `bus_received_total`,
//! `bus_dropped_total{reason=queue_full|disconnected|error}`, `bus_invalid_total`,
//! `bus_lagged_total`, `bus_resyncs_total`; histogram `bus_lag_seconds`; gauge
//! `bus_connected`.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fred::{
    clients::SubscriberClient,
    prelude::{
        Builder, Client, ClientLike, Config, EventInterface, Options, PubsubInterface,
        ReconnectPolicy, Server, Value,
    },
    types::{config::TlsConnector, ClusterHash, CustomCommand, Message},
};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{
        broadcast::{self, error::RecvError},
        mpsc, watch,
    },
    task::AbortHandle,
};

use super::message::ServerMessage;

/// Event kinds, in the order of [`BusEvent`]; one Redis channel each.
const KINDS: [&str; 5] = ["stock", "catalog", "session", "takeover", "recall"];

/// How long `start` waits for both connections to come up (or to fail once) before
/// leaving the rest to the background tasks.
const INITIAL_WAIT: Duration = Duration::from_secs(1);
/// Time limit on each command we send (SETNAME, SUBSCRIBE, PUBLISH, PING).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Time limit on QUIT when stopping.
const QUIT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the subscriber connection is pinged, to notice half-open TCP connections
/// (a silent subscriber would otherwise miss events without ever resynchronising).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// Capacity of fred's broadcast channels (its default of 32 lags under bursts).
const BROADCAST_CAPACITY: usize = 4096;

/// What travels between nodes. Values are absolute (never deltas), because Redis
/// pub/sub drops what is published while a subscriber is away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusEvent {
    /// Units of `sku` now available; `seq` orders updates so that a stale one can be
    /// recognised and ignored.
    Stock {
        /// The SKU whose stock changed.
        sku: String,
        /// Units available now (absolute, not a delta).
        available: i64,
        /// Monotonic sequence number of this stock value.
        seq: i64,
    },
    /// The catalog changed; receivers behind `version` reload it (it is too big to
    /// ship in an event).
    Catalog {
        /// `catalog_version` after the change; 0 from a sender that does not say,
        /// which receivers answer by reading the version themselves.
        #[serde(default)]
        version: i64,
    },
    /// A message for a shopper session's sockets, so that the node holding them can
    /// push it.
    Session {
        /// The session concerned.
        session_id: String,
        /// The message, carrying full state (absolute).
        payload: ServerMessage,
    },
    /// A node is short of `sku` while others hold free units of it: every other node
    /// returns its free units of that SKU to PostgreSQL now (see docs/LEASES.md).
    Recall {
        /// The SKU wanted.
        sku: String,
        /// Units the asking node is missing.
        want: i64,
    },
    /// `node_id` now owns `session_id` at cart `version`; another node holding an older
    /// copy must let it go. The version orders takeovers, so a late one cannot evict a
    /// newer owner.
    Takeover {
        /// The session taken over.
        session_id: String,
        /// The node that owns it from now on.
        node_id: String,
        /// The cart's version as claimed (every claim raises it).
        version: i64,
    },
}

impl BusEvent {
    /// The kind tag, which is also the last part of the channel name.
    fn kind(&self) -> &'static str {
        match self {
            BusEvent::Stock { .. } => KINDS[0],
            BusEvent::Catalog { .. } => KINDS[1],
            BusEvent::Session { .. } => KINDS[2],
            BusEvent::Takeover { .. } => KINDS[3],
            BusEvent::Recall { .. } => KINDS[4],
        }
    }
}

/// An event plus who sent it and when, so that a node can drop its own events and
/// measure how late the others' arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The publishing node (events from this node are not delivered back to it).
    pub node_id: String,
    /// Publication time, unix milliseconds (feeds `bus_lag_seconds`).
    pub sent_at_ms: i64,
    /// The event itself.
    pub event: BusEvent,
}

/// Receives events from other nodes. Called from the bus's background task: keep both
/// methods quick and non-blocking (hand the work over to an actor or a task).
pub trait BusSink: Send + Sync + 'static {
    /// An event published by another node (never this node's own).
    fn deliver(&self, envelope: Envelope);
    /// The subscription was (re)established after a gap, or messages were dropped
    /// locally: messages may have been lost, the sink must resynchronise from
    /// PostgreSQL.
    fn resync(&self);
}

/// Settings of the bus, so that each node can point at its Redis and name itself.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Redis URL; `None` => in-process bus (single node): publish only counts, nothing
    /// leaves the process. A `rediss://` URL is spoken over TLS, the certificate and
    /// its host name checked.
    pub redis_url: Option<crate::secret::Secret>,
    /// The only CAs a `rediss://` server's certificate may chain to (a PEM file);
    /// `None` trusts the system's roots.
    pub redis_ca: Option<std::path::PathBuf>,
    /// Channel prefix, e.g. "surge", so that several deployments can share a Redis;
    /// tests use a random one.
    pub prefix: String,
    /// This node's id, stamped on every envelope so that the node ignores its own.
    pub node_id: String,
    /// Reconnect backoff start (default 100 ms).
    pub reconnect_min: Duration,
    /// Reconnect backoff cap (default 5 s).
    pub reconnect_max: Duration,
    /// Bound of the queue of outgoing events (default 10 000); when full, events are
    /// dropped and counted, so that a slow Redis never slows the callers.
    pub publish_queue: usize,
}

impl BusConfig {
    /// Longest wait between two reconnection attempts.
    pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
    /// Outgoing events queued before new ones are dropped and counted.
    pub const PUBLISH_QUEUE: usize = 10_000;

    /// The bus of a serving node.
    pub fn for_node(cfg: &crate::config::ServeConfig) -> Self {
        Self {
            redis_url: cfg.redis_url.clone(),
            redis_ca: cfg.redis_ca.clone(),
            prefix: cfg.live.bus_prefix.clone(),
            node_id: cfg.node_id.clone(),
            reconnect_min: cfg.live.bus_reconnect,
            reconnect_max: Self::RECONNECT_MAX.max(cfg.live.bus_reconnect),
            publish_queue: Self::PUBLISH_QUEUE,
        }
    }

    /// An in-process bus (one node), for tests and tools.
    pub fn in_process(node_id: impl Into<String>) -> Self {
        Self {
            redis_url: None,
            redis_ca: None,
            prefix: "surge".into(),
            node_id: node_id.into(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Self::RECONNECT_MAX,
            publish_queue: Self::PUBLISH_QUEUE,
        }
    }
}

/// Sends this node's events to the other nodes; cheap to clone. It exists before the
/// [`Subscriber`], so that whatever publishes (carts, the Journal) can be built before
/// what reacts to the other nodes' events (which needs those carts).
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    node_id: String,
    /// `None` for the in-process bus.
    redis: Option<RedisPublisher>,
}

struct RedisPublisher {
    tx: mpsc::Sender<Envelope>,
    client: Client,
    state: Arc<PublisherState>,
    tasks: Tasks,
}

/// What the publisher's background tasks share.
struct PublisherState {
    stopping: AtomicBool,
    /// A connection is up (fred's state lags behind a lost one).
    up: AtomicBool,
    /// Outcome of the first connection attempt, for `start` to wait on.
    initial: watch::Sender<Initial>,
}

/// Hands the other nodes' events to a [`BusSink`]; owns the node's one subscriber
/// connection. Cheap to clone.
#[derive(Clone)]
pub struct Subscriber {
    inner: Arc<SubscriberInner>,
}

struct SubscriberInner {
    node_id: String,
    name: String,
    /// `None` for the in-process bus.
    redis: Option<RedisSubscriber>,
}

struct RedisSubscriber {
    client: SubscriberClient,
    state: Arc<SubscriberState>,
    tasks: Tasks,
}

/// What the subscriber's background tasks share.
struct SubscriberState {
    /// SUBSCRIBE succeeded on the current connection.
    subscribed: AtomicBool,
    /// Some subscription has succeeded since start.
    ever_subscribed: AtomicBool,
    /// `start` has returned: a first subscription after this point follows a gap.
    start_returned: AtomicBool,
    stopping: AtomicBool,
    /// Connection trouble was already logged at warn level (avoid one line per retry).
    warned: AtomicBool,
    /// Outcome of the first connection attempt, for `start` to wait on.
    initial: watch::Sender<Initial>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Initial {
    Pending,
    Up,
    Failed,
}

impl SubscriberState {
    fn set_subscribed(&self, up: bool) {
        self.subscribed.store(up, Ordering::SeqCst);
        metrics::gauge!("bus_connected").set(if up { 1.0 } else { 0.0 });
    }
}

/// Our loops and fred's connection task, aborted on stop or drop.
struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    fn new(tasks: Vec<AbortHandle>) -> Self {
        Self(Mutex::new(tasks))
    }

    fn abort(&self) {
        let tasks = match self.0.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for task in tasks {
            task.abort();
        }
    }
}

/// Waits at most [`INITIAL_WAIT`] for the first connection attempt; whether it came up.
async fn first_connection(mut initial: watch::Receiver<Initial>) -> bool {
    let outcome = tokio::time::timeout(INITIAL_WAIT, async {
        initial
            .wait_for(|s| *s != Initial::Pending)
            .await
            .map(|s| *s)
    })
    .await;
    matches!(outcome, Ok(Ok(Initial::Up)))
}

fn not_reachable_yet(cfg: &BusConfig, url: &str, what: &str) {
    tracing::warn!(
        node_id = %cfg.node_id,
        redis = %redact(url),
        "event bus: Redis is not reachable yet for the {what}; retrying in the background, \
         other nodes' events will not flow until then"
    );
}

impl Publisher {
    /// Connects the publisher connection (Redis) or builds the in-process one. Must be
    /// called inside a tokio runtime that lives as long as the bus. It waits at most
    /// about a second for Redis, so that a publish right after `start` is not dropped,
    /// and never fails start-up when Redis is down (it keeps retrying in the
    /// background). Only an invalid Redis URL is an error.
    pub async fn start(cfg: &BusConfig) -> anyhow::Result<Publisher> {
        let Some(url) = cfg.redis_url.as_ref().map(crate::secret::Secret::expose) else {
            return Ok(Publisher {
                inner: Arc::new(PublisherInner {
                    node_id: cfg.node_id.clone(),
                    redis: None,
                }),
            });
        };
        let client = builder(url, cfg)?
            .build()
            .map_err(|e| anyhow::anyhow!("invalid bus Redis URL {}: {e}", redact(url)))?;
        let (initial, initial_rx) = watch::channel(Initial::Pending);
        let state = Arc::new(PublisherState {
            stopping: AtomicBool::new(false),
            up: AtomicBool::new(false),
            initial,
        });
        let (tx, rx) = mpsc::channel(cfg.publish_queue.max(1));
        let name = format!("surge-pub-{}", sanitize(&cfg.node_id));
        // The event streams must exist before connecting, or the first events are missed.
        let tasks = vec![
            tokio::spawn(publisher_loop(
                client.clone(),
                client.reconnect_rx(),
                client.error_rx(),
                name,
                state.clone(),
            ))
            .abort_handle(),
            tokio::spawn(publish_loop(
                client.clone(),
                rx,
                cfg.prefix.clone(),
                state.clone(),
            ))
            .abort_handle(),
            // fred's connection task retries forever (until QUIT, or until aborted).
            client.connect().abort_handle(),
        ];
        if !first_connection(initial_rx).await {
            not_reachable_yet(cfg, url, "publisher");
        }
        Ok(Publisher {
            inner: Arc::new(PublisherInner {
                node_id: cfg.node_id.clone(),
                redis: Some(RedisPublisher {
                    tx,
                    client,
                    state,
                    tasks: Tasks::new(tasks),
                }),
            }),
        })
    }

    /// Non-blocking: queues the event for other nodes (wraps it in an Envelope with
    /// this node id and now as unix ms). Never blocks the caller, never errors; when
    /// Redis is down or the queue is full the event is dropped and counted.
    pub fn publish(&self, event: BusEvent) {
        let Some(redis) = &self.inner.redis else {
            metrics::counter!("bus_published_total").increment(1);
            return;
        };
        if redis.state.stopping.load(Ordering::SeqCst) {
            dropped("disconnected");
            return;
        }
        let envelope = Envelope {
            node_id: self.inner.node_id.clone(),
            sent_at_ms: now_ms(),
            event,
        };
        match redis.tx.try_send(envelope) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => dropped("queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => dropped("disconnected"),
        }
    }

    /// Stops the background tasks and quits the connection. Idempotent; publishing
    /// afterwards only counts drops.
    pub async fn stop(&self) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        if redis.state.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        quit(&redis.client, "publisher").await;
        redis.tasks.abort();
    }
}

impl Subscriber {
    /// Subscribes to every channel (Redis), handing the other nodes' events to `sink`,
    /// or builds the in-process bus, which hears nothing. Must be called inside a tokio
    /// runtime that lives as long as the bus. With Redis it does NOT fail startup when
    /// Redis is down: it waits at most about a second, logs a warning and keeps
    /// retrying in the background (correctness never depends on Redis). It calls
    /// `sink.resync()` after every successful (re)subscription except the first one
    /// made before `start` returned; a first subscription made later (Redis was down
    /// at startup) follows a gap and resyncs too. Only an invalid Redis URL is an
    /// error.
    pub async fn start(cfg: &BusConfig, sink: Arc<dyn BusSink>) -> anyhow::Result<Subscriber> {
        let name = format!("surge-sub-{}", sanitize(&cfg.node_id));
        let Some(url) = cfg.redis_url.as_ref().map(crate::secret::Secret::expose) else {
            tracing::info!(node_id = %cfg.node_id, "event bus is in-process (no Redis URL)");
            metrics::gauge!("bus_connected").set(1.0);
            return Ok(Subscriber {
                inner: Arc::new(SubscriberInner {
                    node_id: cfg.node_id.clone(),
                    name,
                    redis: None,
                }),
            });
        };
        let client = builder(url, cfg)?
            .build_subscriber_client()
            .map_err(|e| anyhow::anyhow!("invalid bus Redis URL {}: {e}", redact(url)))?;
        let (initial, initial_rx) = watch::channel(Initial::Pending);
        let state = Arc::new(SubscriberState {
            subscribed: AtomicBool::new(false),
            ever_subscribed: AtomicBool::new(false),
            start_returned: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            initial,
        });
        state.set_subscribed(false);
        let channels: Vec<String> = KINDS.iter().map(|k| channel_name(&cfg.prefix, k)).collect();
        // The event streams must exist before connecting, or the first events are missed.
        let tasks = vec![
            tokio::spawn(receive_loop(
                client.message_rx(),
                cfg.prefix.clone(),
                cfg.node_id.clone(),
                sink.clone(),
            ))
            .abort_handle(),
            tokio::spawn(connection_loop(
                client.clone(),
                client.reconnect_rx(),
                client.error_rx(),
                name.clone(),
                channels,
                state.clone(),
                sink,
            ))
            .abort_handle(),
            tokio::spawn(heartbeat(client.clone(), state.clone())).abort_handle(),
            // fred's connection task retries forever (until QUIT, or until aborted).
            client.connect().abort_handle(),
        ];
        let up = first_connection(initial_rx).await;
        state.start_returned.store(true, Ordering::SeqCst);
        if up {
            tracing::info!(node_id = %cfg.node_id, "event bus subscribed to Redis");
        } else {
            not_reachable_yet(cfg, url, "subscriber");
        }
        Ok(Subscriber {
            inner: Arc::new(SubscriberInner {
                node_id: cfg.node_id.clone(),
                name,
                redis: Some(RedisSubscriber {
                    client,
                    state,
                    tasks: Tasks::new(tasks),
                }),
            }),
        })
    }

    /// Whether the connection is currently up and subscribed (for /readyz-like
    /// reporting and tests). The in-process bus is always connected.
    pub fn is_connected(&self) -> bool {
        match &self.inner.redis {
            None => true,
            Some(redis) => {
                redis.state.subscribed.load(Ordering::SeqCst) && redis.client.is_connected()
            }
        }
    }

    /// Name of this node's subscriber connection in Redis (CLIENT SETNAME),
    /// "surge-sub-<node_id>" with the node id reduced to `[A-Za-z0-9_-]`, so operators
    /// and tests can find it in CLIENT LIST.
    pub fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// Stops the background tasks and quits the connection. Idempotent.
    pub async fn stop(&self) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        if redis.state.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // A polite QUIT where the connection is up (on a client that never connected,
        // QUIT would wait for a connection); then every task, fred's included, is aborted.
        quit(&redis.client, "subscriber").await;
        redis.tasks.abort();
        redis.state.set_subscribed(false);
    }
}

/// A node's two halves of the bus, for stopping them together and for tools and tests
/// that have their sink at hand when they start.
#[derive(Clone)]
pub struct Bus {
    publisher: Publisher,
    subscriber: Subscriber,
}

impl Bus {
    /// Starts both halves at once (see [`Publisher::start`] and [`Subscriber::start`]).
    pub async fn start(cfg: BusConfig, sink: Arc<dyn BusSink>) -> anyhow::Result<Bus> {
        let (publisher, subscriber) =
            tokio::try_join!(Publisher::start(&cfg), Subscriber::start(&cfg, sink))?;
        Ok(Self::new(publisher, subscriber))
    }

    /// Pairs halves started separately (a node starts its subscriber last).
    pub fn new(publisher: Publisher, subscriber: Subscriber) -> Self {
        Self {
            publisher,
            subscriber,
        }
    }

    /// See [`Publisher::publish`].
    pub fn publish(&self, event: BusEvent) {
        self.publisher.publish(event);
    }

    /// See [`Subscriber::is_connected`].
    pub fn is_connected(&self) -> bool {
        self.subscriber.is_connected()
    }

    /// See [`Subscriber::name`].
    pub fn subscriber_name(&self) -> String {
        self.subscriber.name()
    }

    /// Stops both halves, so that a node shuts down cleanly. Idempotent.
    pub async fn stop(&self) {
        self.subscriber.stop().await;
        self.publisher.stop().await;
        tracing::info!(node_id = %self.subscriber.inner.node_id, "event bus stopped");
    }
}

impl Drop for RedisPublisher {
    /// The last handle is gone without `stop`: do not leave tasks and connections behind.
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.tasks.abort();
    }
}

impl Drop for RedisSubscriber {
    /// The last handle is gone without `stop`: do not leave tasks and connections behind.
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.tasks.abort();
    }
}

/// `{prefix}:{kind}`: one channel per event kind, so that Redis (and `redis-cli
/// MONITOR`) shows the traffic by kind.
fn channel_name(prefix: &str, kind: &str) -> String {
    format!("{prefix}:{kind}")
}

/// Keeps `[A-Za-z0-9_-]` and replaces the rest with `_` (client names cannot hold
/// spaces, and odd characters make CLIENT LIST hard to read).
fn sanitize(node_id: &str) -> String {
    node_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn dropped(reason: &'static str) {
    metrics::counter!("bus_dropped_total", "reason" => reason).increment(1);
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Options of PUBLISH: a time limit, and no waiting for a reconnection.
fn publish_options() -> Options {
    Options {
        timeout: Some(COMMAND_TIMEOUT),
        fail_fast: true,
        ..Default::default()
    }
}

/// Options of the commands sent when a connection comes up, and of the heartbeat: a
/// time limit, and never a retry on a later connection (where a SUBSCRIBE replayed
/// before CLIENT SETNAME would make the name fail). Not fail-fast: fred announces a new
/// connection slightly before it marks itself connected.
fn setup_options() -> Options {
    Options {
        timeout: Some(COMMAND_TIMEOUT),
        max_attempts: Some(1),
        ..Default::default()
    }
}

/// A client builder for `url` with the bus's reconnect policy, time limits and, for
/// `rediss://`, TLS (the stack of [`crate::store::tls`], shared with PostgreSQL).
fn builder(url: &str, cfg: &BusConfig) -> anyhow::Result<Builder> {
    let mut config = Config::from_url(url)
        .map_err(|e| anyhow::anyhow!("invalid bus Redis URL {}: {e}", redact(url)))?;
    if config.tls.is_some() {
        let connector = crate::store::tls::redis_connector(cfg.redis_ca.as_deref())
            .map_err(|e| anyhow::anyhow!("SURGE_REDIS_CA: {e}"))?;
        config.tls = Some(TlsConnector::from(connector).into());
    } else if cfg.redis_ca.is_some() {
        anyhow::bail!("SURGE_REDIS_CA is set but the bus Redis URL is not rediss://");
    }
    // Retry the first connection too, in the background, instead of failing start-up.
    config.fail_fast = false;
    let min = millis_u32(cfg.reconnect_min).max(1);
    let max = millis_u32(cfg.reconnect_max).max(min);
    // max_attempts 0 = forever; base 2 doubles the delay from `min` up to `max`.
    let policy = ReconnectPolicy::new_exponential(0, min, max, 2);
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(policy)
        .with_connection_config(|c| {
            c.connection_timeout = COMMAND_TIMEOUT;
            c.internal_command_timeout = COMMAND_TIMEOUT;
        })
        .with_performance_config(|p| {
            p.broadcast_channel_capacity = BROADCAST_CAPACITY;
        });
    Ok(builder)
}

/// QUIT with a short time limit, if connected.
async fn quit(client: &impl ClientLike, what: &str) {
    if !client.is_connected() {
        return;
    }
    match tokio::time::timeout(QUIT_TIMEOUT, client.quit()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "event bus: {what} QUIT failed"),
        Err(_) => tracing::debug!("event bus: {what} QUIT timed out"),
    }
}

/// Follows the subscriber's connections. On every new one: name it, subscribe, then
/// resync after a gap (fred's `manage_subscriptions` is not used: the resync must
/// come after the SUBSCRIBE, and CLIENT SETNAME before it). On every connection error:
/// mark the bus disconnected at once (fred's own state still reads "connected" while
/// it waits out the reconnect delay).
async fn connection_loop(
    subscriber: SubscriberClient,
    mut reconnects: broadcast::Receiver<Server>,
    mut errors: broadcast::Receiver<(fred::error::Error, Option<Server>)>,
    name: String,
    channels: Vec<String>,
    state: Arc<SubscriberState>,
    sink: Arc<dyn BusSink>,
) {
    let opts = setup_options();
    loop {
        // Errors first: a connection's error is always broadcast before the next
        // connection's reconnect event.
        let reconnected = tokio::select! {
            biased;
            error = errors.recv() => match error {
                Ok((error, _)) => {
                    on_connection_error(&state, &error);
                    false
                }
                Err(RecvError::Lagged(_)) => false,
                Err(RecvError::Closed) => return,
            },
            event = reconnects.recv() => match event {
                // Lagged: only the latest connection matters, and it needs subscribing.
                Ok(_) | Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
        };
        if !reconnected {
            continue;
        }
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        state.set_subscribed(false);
        // A fresh RESP2 connection accepts CLIENT SETNAME only before SUBSCRIBE.
        let setname: Result<Value, _> = subscriber
            .with_options(&opts)
            .custom(client_setname(), vec![name.clone()])
            .await;
        if let Err(e) = setname {
            tracing::warn!(error = %e, "event bus: CLIENT SETNAME {name} failed");
        }
        match subscriber
            .with_options(&opts)
            .subscribe(channels.clone())
            .await
        {
            Ok(()) => {
                state.set_subscribed(true);
                state.warned.store(false, Ordering::SeqCst);
                // Decided before waking `start` (which then sets `start_returned`).
                let gap = state.ever_subscribed.swap(true, Ordering::SeqCst)
                    || state.start_returned.load(Ordering::SeqCst);
                state.initial.send_replace(Initial::Up);
                if gap {
                    tracing::info!(%name, "event bus resubscribed after a gap; resynchronising");
                    metrics::counter!("bus_resyncs_total").increment(1);
                    sink.resync();
                } else {
                    tracing::debug!(%name, "event bus subscribed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "event bus: SUBSCRIBE failed; reconnecting");
                if subscriber.is_connected() && !state.stopping.load(Ordering::SeqCst) {
                    // A new connection brings a new reconnect event, hence a new attempt.
                    tokio::time::sleep(COMMAND_TIMEOUT / 3).await;
                    if let Err(e) = subscriber.force_reconnection().await {
                        tracing::debug!(error = %e, "event bus: forced reconnection failed");
                    }
                }
            }
        }
    }
}

/// fred reports on its error stream only connection failures (lost connections and
/// failed connection attempts), never a failed command.
fn on_connection_error(state: &SubscriberState, error: &fred::error::Error) {
    if state.stopping.load(Ordering::SeqCst) {
        return;
    }
    state.set_subscribed(false);
    if *state.initial.borrow() == Initial::Pending {
        state.initial.send_replace(Initial::Failed);
    }
    if !state.warned.swap(true, Ordering::SeqCst) {
        tracing::warn!(error = %error, "event bus: Redis subscriber connection lost; reconnecting");
    } else {
        tracing::debug!(error = %error, "event bus: Redis still unreachable");
    }
}

/// Follows the publisher's connections: names each new one (for operators) and
/// tracks whether one is up, so that PUBLISH is not attempted (and does not wait)
/// while fred waits out a reconnect delay.
async fn publisher_loop(
    publisher: Client,
    mut reconnects: broadcast::Receiver<Server>,
    mut errors: broadcast::Receiver<(fred::error::Error, Option<Server>)>,
    name: String,
    state: Arc<PublisherState>,
) {
    let opts = setup_options();
    loop {
        tokio::select! {
            biased;
            error = errors.recv() => match error {
                Ok((error, _)) => {
                    if *state.initial.borrow() == Initial::Pending {
                        state.initial.send_replace(Initial::Failed);
                    }
                    if state.up.swap(false, Ordering::SeqCst) {
                        tracing::warn!(error = %error, "event bus: Redis publisher connection lost");
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            event = reconnects.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let result: Result<Value, _> = publisher
                        .with_options(&opts)
                        .custom(client_setname(), vec![name.clone()])
                        .await;
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "event bus: CLIENT SETNAME {name} failed");
                    }
                    state.up.store(true, Ordering::SeqCst);
                    state.initial.send_replace(Initial::Up);
                    tracing::debug!(%name, "event bus publisher connected");
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

fn client_setname() -> CustomCommand {
    CustomCommand::new_static("CLIENT SETNAME", ClusterHash::Random, false)
}

/// Pings the subscriber connection now and then: a half-open connection reports
/// nothing, and its silence would cost events without a resync. A failed ping forces a
/// reconnection (then a resubscription and a resync).
async fn heartbeat(subscriber: SubscriberClient, state: Arc<SubscriberState>) {
    let opts = setup_options();
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        if !state.subscribed.load(Ordering::SeqCst) || !subscriber.is_connected() {
            continue;
        }
        let ping: Result<Value, _> = subscriber.with_options(&opts).ping(None).await;
        if let Err(e) = ping {
            if state.stopping.load(Ordering::SeqCst) {
                return;
            }
            tracing::warn!(error = %e, "event bus: subscriber ping failed; reconnecting");
            state.set_subscribed(false);
            if let Err(e) = subscriber.force_reconnection().await {
                tracing::debug!(error = %e, "event bus: forced reconnection failed");
            }
        }
    }
}

/// Sends queued envelopes in order, one PUBLISH at a time.
async fn publish_loop(
    publisher: Client,
    mut rx: mpsc::Receiver<Envelope>,
    prefix: String,
    state: Arc<PublisherState>,
) {
    let opts = publish_options();
    while let Some(envelope) = rx.recv().await {
        if !state.up.load(Ordering::SeqCst) {
            tracing::debug!(
                kind = envelope.event.kind(),
                "event bus: publisher down; event dropped"
            );
            dropped("disconnected");
            continue;
        }
        let channel = channel_name(&prefix, envelope.event.kind());
        let body = match serde_json::to_string(&envelope) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "event bus: cannot serialise an envelope");
                dropped("error");
                continue;
            }
        };
        let sent: Result<Value, _> = publisher.with_options(&opts).publish(channel, body).await;
        match sent {
            Ok(_) => metrics::counter!("bus_published_total").increment(1),
            Err(e) if !state.up.load(Ordering::SeqCst) => {
                tracing::debug!(error = %e, "event bus: PUBLISH lost with the connection");
                dropped("disconnected");
            }
            Err(e) => {
                tracing::warn!(error = %e, "event bus: PUBLISH failed");
                dropped("error");
            }
        }
    }
}

/// Reads fred's message stream until QUIT closes it.
async fn receive_loop(
    mut messages: broadcast::Receiver<Message>,
    prefix: String,
    node_id: String,
    sink: Arc<dyn BusSink>,
) {
    loop {
        match messages.recv().await {
            Ok(message) => receive(&message, &prefix, &node_id, sink.as_ref()),
            Err(RecvError::Lagged(n)) => {
                // fred's broadcast channel overflowed: those messages are gone.
                tracing::warn!(missed = n, "event bus: receiver lagged; resynchronising");
                metrics::counter!("bus_lagged_total").increment(n);
                metrics::counter!("bus_resyncs_total").increment(1);
                sink.resync();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Why a received message was not delivered.
#[derive(Debug, PartialEq)]
enum Rejected {
    Invalid,
    Own,
}

/// Parses a message received on `channel`; `Own` for this node's own envelopes.
fn parse(channel: &str, body: &[u8], prefix: &str, node_id: &str) -> Result<Envelope, Rejected> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|_| Rejected::Invalid)?;
    if channel != channel_name(prefix, envelope.event.kind()) {
        return Err(Rejected::Invalid);
    }
    if envelope.node_id == node_id {
        return Err(Rejected::Own);
    }
    Ok(envelope)
}

fn receive(message: &Message, prefix: &str, node_id: &str, sink: &dyn BusSink) {
    let Some(body) = message.value.as_bytes() else {
        metrics::counter!("bus_invalid_total").increment(1);
        return;
    };
    match parse(&message.channel, body, prefix, node_id) {
        Ok(envelope) => {
            let lag_ms = now_ms().saturating_sub(envelope.sent_at_ms).max(0);
            metrics::histogram!("bus_lag_seconds").record(lag_ms as f64 / 1000.0);
            metrics::counter!("bus_received_total").increment(1);
            sink.deliver(envelope);
        }
        Err(Rejected::Own) => {}
        Err(Rejected::Invalid) => {
            tracing::debug!(channel = %message.channel, "event bus: ignoring a malformed message");
            metrics::counter!("bus_invalid_total").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<BusEvent> {
        vec![
            BusEvent::Stock {
                sku: "TEE-M".into(),
                available: 7,
                seq: 42,
            },
            BusEvent::Catalog { version: 3 },
            BusEvent::Session {
                session_id: "s1".into(),
                payload: ServerMessage::ReservationExpired {
                    sku: "TEE-M".into(),
                    quantity: 2,
                },
            },
            BusEvent::Takeover {
                session_id: "s1".into(),
                node_id: "b".into(),
                version: 3,
            },
            BusEvent::Recall {
                sku: "TEE-M".into(),
                want: 3,
            },
        ]
    }

    #[test]
    fn envelopes_round_trip_through_json() {
        for event in samples() {
            let envelope = Envelope {
                node_id: "a".into(),
                sent_at_ms: 1_700_000_000_123,
                event,
            };
            let json = serde_json::to_string(&envelope).expect("serialises");
            let back: Envelope = serde_json::from_str(&json).expect("parses");
            assert_eq!(back, envelope);
        }
    }

    #[test]
    fn wire_format_is_tagged_by_kind() {
        let json = serde_json::to_value(Envelope {
            node_id: "a".into(),
            sent_at_ms: 5,
            event: BusEvent::Stock {
                sku: "X".into(),
                available: 1,
                seq: 2,
            },
        })
        .expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"node_id": "a", "sent_at_ms": 5,
                "event": {"kind": "stock", "sku": "X", "available": 1, "seq": 2}})
        );
        let catalog = serde_json::to_value(BusEvent::Catalog { version: 3 }).expect("serialises");
        assert_eq!(
            catalog,
            serde_json::json!({"kind": "catalog", "version": 3})
        );
        // A node that does not send the version is still heard (and answered by a read).
        let bare: BusEvent =
            serde_json::from_value(serde_json::json!({"kind": "catalog"})).expect("parses");
        assert_eq!(bare, BusEvent::Catalog { version: 0 });
        // A session's message travels as the socket will show it.
        let session = serde_json::to_value(BusEvent::Session {
            session_id: "s1".into(),
            payload: ServerMessage::ReservationExpired {
                sku: "X".into(),
                quantity: 2,
            },
        })
        .expect("serialises");
        assert_eq!(
            session,
            serde_json::json!({"kind": "session", "session_id": "s1",
                "payload": {"type": "reservation_expired", "sku": "X", "quantity": 2}})
        );
    }

    #[test]
    fn each_kind_has_its_channel() {
        let channels: Vec<String> = samples()
            .iter()
            .map(|e| channel_name("surge", e.kind()))
            .collect();
        assert_eq!(
            channels,
            [
                "surge:stock",
                "surge:catalog",
                "surge:session",
                "surge:takeover",
                "surge:recall",
            ]
        );
        // The channel's last part is the serde tag, so both always agree.
        for event in samples() {
            let json = serde_json::to_value(&event).expect("serialises");
            assert_eq!(json["kind"], event.kind());
        }
    }

    #[test]
    fn parse_filters_own_malformed_and_misrouted_messages() {
        let envelope = Envelope {
            node_id: "a".into(),
            sent_at_ms: 1,
            event: BusEvent::Catalog { version: 1 },
        };
        let body = serde_json::to_vec(&envelope).expect("serialises");
        assert_eq!(parse("p:catalog", &body, "p", "b"), Ok(envelope));
        assert_eq!(parse("p:catalog", &body, "p", "a"), Err(Rejected::Own));
        assert_eq!(parse("p:stock", &body, "p", "b"), Err(Rejected::Invalid));
        assert_eq!(
            parse("p:catalog", b"{nope", "p", "b"),
            Err(Rejected::Invalid)
        );
        assert_eq!(
            parse(
                "p:catalog",
                br#"{"node_id":"a","sent_at_ms":1,"event":{"kind":"boom"}}"#,
                "p",
                "b"
            ),
            Err(Rejected::Invalid)
        );
    }

    #[test]
    fn node_ids_are_sanitised_for_client_names() {
        assert_eq!(sanitize("node-1_a"), "node-1_a");
        assert_eq!(sanitize("host.example:80 x"), "host_example_80_x");
        assert_eq!(sanitize("né"), "n_");
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://:secret@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[actix_web::test]
    async fn in_process_bus_only_counts() {
        struct Nothing;
        impl BusSink for Nothing {
            fn deliver(&self, _: Envelope) {
                panic!("nothing should be delivered");
            }
            fn resync(&self) {
                panic!("nothing to resync");
            }
        }
        let bus = Bus::start(BusConfig::in_process("solo node"), Arc::new(Nothing))
            .await
            .expect("in-process bus starts");
        bus.publish(BusEvent::Catalog { version: 1 });
        assert!(bus.is_connected());
        assert_eq!(bus.subscriber_name(), "surge-sub-solo_node");
        bus.stop().await;
    }
}
