//! The cross-node event bus against a real Redis: delivery between two nodes, recovery
//! (resync) after the subscriber connection is killed, and start-up without Redis.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use fred::prelude::{Builder, Client, ClientLike, Config, PubsubInterface, Value};
use fred::types::{ClusterHash, CustomCommand};
use surge::live::bus::{Bus, BusConfig, BusEvent, BusSink, Envelope};

fn redis_url() -> String {
    std::env::var("SURGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Records what the bus hands over.
#[derive(Default)]
struct Collect {
    delivered: Mutex<Vec<Envelope>>,
    resyncs: AtomicUsize,
}

impl Collect {
    fn delivered(&self) -> Vec<Envelope> {
        self.delivered.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl BusSink for Collect {
    fn deliver(&self, envelope: Envelope) {
        if let Ok(mut delivered) = self.delivered.lock() {
            delivered.push(envelope);
        }
    }
    fn resync(&self) {
        self.resyncs.fetch_add(1, Ordering::SeqCst);
    }
}

fn config(redis_url: &str, prefix: &str, node_id: &str) -> BusConfig {
    BusConfig {
        redis_url: Some(redis_url.into()),
        redis_ca: None,
        prefix: prefix.to_owned(),
        node_id: node_id.to_owned(),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        publish_queue: 1_000,
    }
}

/// Node ids unique to the test: tests run in parallel on one Redis, and the resync
/// test kills connections by name.
fn unique(node: &str) -> String {
    format!("{node}-{}", uuid::Uuid::new_v4().simple())
}

fn random_prefix() -> String {
    format!("surge-test-{}", uuid::Uuid::new_v4().simple())
}

async fn start(prefix: &str, node_id: &str) -> (Bus, Arc<Collect>) {
    let sink = Arc::new(Collect::default());
    let bus = Bus::start(config(&redis_url(), prefix, node_id), sink.clone())
        .await
        .expect("bus starts");
    assert!(
        bus.is_connected(),
        "{node_id} subscribed to a running Redis"
    );
    (bus, sink)
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
async fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

async fn raw_client() -> Client {
    let config = Config::from_url(&redis_url()).expect("valid Redis URL");
    let client = Builder::from_config(config).build().expect("client");
    client
        .init()
        .await
        .expect("Redis must be reachable for these tests");
    client
}

fn stock(seq: i64) -> BusEvent {
    BusEvent::Stock {
        sku: "TEE-M".into(),
        available: 10 - seq,
        seq,
    }
}

fn stocks(envelopes: &[Envelope]) -> Vec<BusEvent> {
    envelopes.iter().map(|e| e.event.clone()).collect()
}

#[actix_web::test]
async fn bus_delivers_to_other_nodes_only() {
    let prefix = random_prefix();
    let a_id = unique("a");
    let (a, a_sink) = start(&prefix, &a_id).await;
    let (b, b_sink) = start(&prefix, &unique("b")).await;

    // Garbage on a bus channel is ignored, and does not stop what follows.
    let raw = raw_client().await;
    let _: Value = raw
        .publish(format!("{prefix}:stock"), "not json")
        .await
        .expect("raw publish");

    a.publish(stock(1));
    assert!(
        eventually(Duration::from_secs(1), || !b_sink.delivered().is_empty()).await,
        "b receives a's event within 1 s"
    );
    let got = b_sink.delivered();
    assert_eq!(stocks(&got), vec![stock(1)]);
    assert_eq!(got[0].node_id, a_id);
    assert!(got[0].sent_at_ms > 0);

    b.publish(BusEvent::Catalog { version: 1 });
    assert!(
        eventually(Duration::from_secs(1), || !a_sink.delivered().is_empty()).await,
        "a receives b's event within 1 s"
    );
    // Give a stray self-delivery time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stocks(&a_sink.delivered()),
        vec![BusEvent::Catalog { version: 1 }]
    );
    assert_eq!(stocks(&b_sink.delivered()), vec![stock(1)]);
    assert_eq!(a_sink.resyncs.load(Ordering::SeqCst), 0);
    assert_eq!(b_sink.resyncs.load(Ordering::SeqCst), 0);

    a.stop().await;
    b.stop().await;
    assert!(!a.is_connected());
    let _ = raw.quit().await;
}

/// `id=` of the connection named `name`, from CLIENT LIST.
async fn client_id(raw: &Client, name: &str) -> Option<String> {
    let list: String = raw
        .custom(
            CustomCommand::new_static("CLIENT LIST", ClusterHash::Random, false),
            Vec::<String>::new(),
        )
        .await
        .expect("CLIENT LIST");
    list.lines().find_map(|line| {
        let mut id = None;
        let mut named = false;
        for field in line.split(' ') {
            match field.split_once('=') {
                Some(("id", v)) => id = Some(v.to_owned()),
                Some(("name", v)) => named = v == name,
                _ => {}
            }
        }
        if named {
            id
        } else {
            None
        }
    })
}

#[actix_web::test]
async fn bus_resyncs_after_its_subscriber_is_killed() {
    let prefix = random_prefix();
    let (a, _a_sink) = start(&prefix, &unique("a")).await;
    let b_id = unique("b");
    let (b, b_sink) = start(&prefix, &b_id).await;
    assert_eq!(b.subscriber_name(), format!("surge-sub-{b_id}"));

    let raw = raw_client().await;
    let id = client_id(&raw, &b.subscriber_name())
        .await
        .expect("b's subscriber connection is named in CLIENT LIST");
    let killed: i64 = raw
        .custom(
            CustomCommand::new_static("CLIENT KILL", ClusterHash::Random, false),
            vec!["ID".to_owned(), id.clone()],
        )
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);

    assert!(
        eventually(Duration::from_secs(5), || b_sink
            .resyncs
            .load(Ordering::SeqCst)
            >= 1)
        .await,
        "b resyncs after its subscription comes back"
    );
    assert!(b.is_connected());
    let new_id = client_id(&raw, &b.subscriber_name())
        .await
        .expect("the new connection is named too");
    assert_ne!(new_id, id);

    a.publish(stock(2));
    assert!(
        eventually(Duration::from_secs(2), || !b_sink.delivered().is_empty()).await,
        "b receives a's events again"
    );
    assert_eq!(stocks(&b_sink.delivered()), vec![stock(2)]);

    a.stop().await;
    b.stop().await;
    let _ = raw.quit().await;
}

#[actix_web::test]
async fn bus_starts_without_redis() {
    let sink = Arc::new(Collect::default());
    let started = Instant::now();
    let bus = Bus::start(
        config("redis://127.0.0.1:1", &random_prefix(), "lonely"),
        sink.clone(),
    )
    .await
    .expect("an unreachable Redis does not fail start-up");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "start returned quickly"
    );
    assert!(!bus.is_connected());

    let publishing = Instant::now();
    for seq in 0..5_000 {
        bus.publish(stock(seq));
    }
    assert!(
        publishing.elapsed() < Duration::from_secs(1),
        "publish never waits for Redis"
    );

    let stopping = Instant::now();
    bus.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "stop returned");
    bus.publish(stock(1));
    assert!(!bus.is_connected());
    assert!(sink.delivered().is_empty());
    assert_eq!(sink.resyncs.load(Ordering::SeqCst), 0);
}
