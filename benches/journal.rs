//! Committed reservations per second through the Journal (group commit) against one
//! transaction per write, side by side on the same database, and the latency of
//! `PUT /api/cart/items/{sku}` at 256 concurrent sessions.
//!
//! With `SURGE_BENCH_PART=writes` (`make bench-writes`) it measures instead the durable
//! writes of shoppers who reserve one unit and check it out, through HTTP, against the
//! same writes handed straight to a Journal, alternating the two on one database with
//! the same SKUs, concurrency and Journal settings, and prints the ratio, with each
//! side's commits, their mean length and the share of the round the Journal spent
//! committing (the rest it waited for writes). `SURGE_BENCH_LINGER_US` sets both
//! Journals' linger (default 2000, the node's default). The HTTP side's shoppers run on
//! a thread of their own, as a real node's clients run elsewhere; a failed write prints
//! its answer, and fails the run. An untimed warm-up of both sides
//! (`SURGE_BENCH_WARMUP_SECONDS`) comes first, and the database is vacuumed and
//! analyzed, and a checkpoint taken, before each side's turn, so that every turn starts
//! from the same kind of tables.
//!
//! Run: `make bench-journal` (or `cargo bench --bench journal`), with PostgreSQL at
//! `SURGE_BENCH_PG_URL` (default `postgres://postgres@127.0.0.1:5432`). The benchmark
//! works in a database of its own and drops it at the end.

use std::{
    future::Future,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures_util::{stream, StreamExt};
use surge::{
    config::{CommerceConfig, DatabaseConfig, LiveArgs, ServeConfig},
    server::{Application, Drain},
    store::{
        journal::{self, JournalConfig, PgJournal},
        migrate, Db,
    },
};
use surge_actors::{
    money::Currency,
    ports::{Journal, OrderLine, PlaceOrder, SetLine, WriteOp, WriteOutcome},
};
use tokio_postgres::NoTls;
use uuid::Uuid;

const SKUS: usize = 10;
const CONCURRENCY: usize = 256;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    actix_web::rt::spawn(conn);
    Ok(client)
}

fn main() -> anyhow::Result<()> {
    // The node's warnings (a 503's cause) at `SURGE_LOG`, as a node prints them.
    surge::telemetry::init_tracing(surge::config::LogFormat::Human);
    actix_web::rt::System::new().block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let server_url = std::env::var("SURGE_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let writes = env_usize("SURGE_BENCH_WRITES", 20_000);
    let name = format!("surge_bench_{}", Uuid::new_v4().simple());
    let admin = connect(&format!("{server_url}/postgres")).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let url = format!("{server_url}/{name}");
    let result = match std::env::var("SURGE_BENCH_PART").as_deref() {
        Ok("writes") => writes_side_by_side(&url).await,
        _ => bench(&url, writes).await,
    };
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    result
}

fn line(cart_id: Uuid, sku: &str, lease_epoch: Option<i64>) -> WriteOp {
    WriteOp::SetLine(SetLine {
        cart_id,
        version: 0,
        sku: sku.to_owned(),
        quantity: 1,
        prev_quantity: 0,
        lease_epoch,
        expires_at_ms: 4_102_444_800_000,
        unit_price_minor: 1000,
        currency: Currency::parse("EUR").unwrap_or_else(|_| unreachable!()),
        create_for_session: None,
    })
}

async fn carts(
    client: &tokio_postgres::Client,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let n = i64::try_from(n)?;
    let rows = client
        .query(
            "INSERT INTO carts (id, session_id, version)
             SELECT gen_random_uuid(), $1::text || g, 0 FROM generate_series(1, $2::bigint) g RETURNING id",
            &[&prefix, &n],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Migrates the bench database and makes its SKUs, each with ample stock.
async fn seed(client: &mut tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    migrate::run(client).await?;
    let skus: Vec<String> = (0..SKUS).map(|i| format!("BENCH-{i}")).collect();
    for sku in &skus {
        client
            .execute(
                "WITH p AS (INSERT INTO products (slug, name) VALUES (lower($1), $1) RETURNING id),
                      v AS (INSERT INTO variants (sku, product_id, price_minor, currency)
                            SELECT $1, id, 1000, 'EUR' FROM p RETURNING sku)
                 INSERT INTO inventory (sku, total, available) SELECT sku, 10000000, 10000000 FROM v",
                &[sku],
            )
            .await?;
    }
    Ok(skus)
}

async fn bench(url: &str, writes: usize) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    let skus = seed(&mut client).await?;
    let db_cfg = DatabaseConfig {
        primary: tokio_postgres::Config::from_str(url)?,
        replica: None,
        pool_size: 16,
        read_pool_size: 2,
        session: surge::config::defaults::<surge::config::DatabaseArgs>().session(),
        journal_via: None,
        // Clear text, as the baseline's own connections (`NoTls`) are.
        tls: surge::config::DatabaseTls::disabled(),
    };
    let db = Db::with_journal(&db_cfg, 2)?;
    let cfg = JournalConfig::from_commerce(
        &surge::config::defaults::<surge::config::CommerceArgs>().validate(),
    );

    // Leases for both contenders, so that every measured write is a reservation. One
    // batch creates every row of a node, all with the same epoch.
    let mut epochs = Vec::new();
    for node in ["bench-journal", "bench-single"] {
        let grants: Vec<WriteOp> = skus
            .iter()
            .map(|s| WriteOp::Grant {
                sku: s.clone(),
                want: 1_000_000,
            })
            .collect();
        let (results, _) = journal::commit(&db.primary, node, &cfg, &grants).await?;
        epochs.push(match results.first() {
            Some(Ok(WriteOutcome::Granted(g))) => g.epoch,
            _ => None,
        });
    }
    let (journal_epoch, single_epoch) = (epochs[0], epochs[1]);

    // One transaction per write, CONCURRENCY at a time over a 16-connection pool.
    let single_carts = carts(&client, "single-", writes).await?;
    let pool = db.primary.clone();
    let started = Instant::now();
    let failures = stream::iter(single_carts.iter().enumerate())
        .map(|(i, cart)| {
            let (pool, cfg, op) = (
                pool.clone(),
                cfg.clone(),
                line(*cart, &skus[i % SKUS], single_epoch),
            );
            async move {
                journal::commit(&pool, "bench-single", &cfg, &[op])
                    .await
                    .map(|(results, _)| results.first().is_some_and(Result::is_ok))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter(|r| std::future::ready(!matches!(r, Ok(true))))
        .count()
        .await;
    let single = started.elapsed();
    anyhow::ensure!(failures == 0, "{failures} single-transaction writes failed");

    // The Journal: the same writes, group-committed.
    let journal_carts = carts(&client, "journal-", writes).await?;
    let journal: Arc<dyn Journal> = Arc::new(PgJournal::spawn(
        db.journal.clone(),
        "bench-journal".into(),
        cfg.clone(),
        Arc::new(|_| {}),
    ));
    let started = Instant::now();
    let failures = stream::iter(journal_carts.iter().enumerate())
        .map(|(i, cart)| journal.write(line(*cart, &skus[i % SKUS], journal_epoch)))
        .buffer_unordered(CONCURRENCY)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    let grouped = started.elapsed();
    anyhow::ensure!(failures == 0, "{failures} journal writes failed");

    let reserved: i64 = client
        .query_one("SELECT sum(reserved)::bigint FROM inventory", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        reserved == i64::try_from(2 * writes)?,
        "reserved {reserved}, expected {}",
        2 * writes
    );

    let rate = |d: Duration| writes as f64 / d.as_secs_f64();
    println!("\ncommitted reservations, {writes} writes, {CONCURRENCY} in flight, {SKUS} SKUs");
    println!("| writer | seconds | writes/s |");
    println!("|---|---:|---:|");
    println!(
        "| one transaction per write (16 connections) | {:.2} | {:.0} |",
        single.as_secs_f64(),
        rate(single)
    );
    println!(
        "| Journal, group commit (1 connection) | {:.2} | {:.0} |",
        grouped.as_secs_f64(),
        rate(grouped)
    );
    println!("ratio: {:.1}x", rate(grouped) / rate(single));

    http_latency(url).await
}

/// The node both parts of the benchmark serve HTTP with: 2 workers, 2 shards, the
/// Journal's default batching, no rate limits.
fn node_config(url: &str) -> anyhow::Result<ServeConfig> {
    Ok(ServeConfig {
        db: DatabaseConfig {
            primary: tokio_postgres::Config::from_str(url)?,
            replica: None,
            pool_size: 16,
            read_pool_size: 4,
            session: surge::config::defaults::<surge::config::DatabaseArgs>().session(),
            journal_via: None,
            tls: surge::config::DatabaseTls::disabled(),
        },
        bind: "127.0.0.1:0".parse()?,
        metrics_bind: None,
        redis_url: None,
        redis_ca: None,
        node_id: "bench-http".into(),
        admin_token: None,
        session_key: None,
        cookie_secure: false,
        workers: 2,
        body_limit: 16 * 1024,
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(5),
        keep_alive: Some(Duration::from_secs(surge::config::DEFAULT_KEEP_ALIVE_SECS)),
        static_dir: None,
        commerce: CommerceConfig {
            reservation_ttl: Duration::from_secs(900),
            max_line_quantity: 10,
            shards: 2,
            shard_queue: 100_000,
            lease_max_chunk: 1000,
            lease_ttl: Duration::from_secs(15),
            lease_idle: Duration::from_secs(30),
            lease_recall: Duration::from_millis(300),
            reaper_period: Duration::from_secs(5),
            cart_idle: Duration::from_secs(300),
            max_cart_actors: 10_000,
            cart_retention: Duration::from_secs(86_400),
            journal_max_batch: 512,
            journal_max_wait: Duration::from_micros(env_usize("SURGE_BENCH_LINGER_US", 2000) as u64),
            journal_pool_size: 2,
            journal_commit_timeout: Duration::from_secs(5),
            queue_window: Duration::from_secs(120),
        },
        live: surge::config::defaults::<LiveArgs>().validate()?,
        // 256 sessions from one IP measure the write path, not the limits.
        rate_limits: surge::rate_limit::RateLimitConfig {
            enabled: false,
            ..surge::config::defaults::<surge::config::RateLimitArgs>().validate()?
        },
    })
}

async fn http_latency(url: &str) -> anyhow::Result<()> {
    let sessions = 256;
    let seconds = env_usize("SURGE_BENCH_SECONDS", 10) as u64;
    let node = Application::build(node_config(url)?).await?;
    let base = format!("http://{}", node.addr());
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .connector(awc::Connector::new().limit(sessions))
        .finish();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks = (0..sessions).map(|s| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let mut cookie: Option<String> = None;
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut i = 0;
            while Instant::now() < deadline {
                let sku = format!("BENCH-{}", s % SKUS);
                let body = format!("{{\"quantity\":{}}}", 1 + i % 2);
                let mut req = http
                    .put(format!("{base}/api/cart/items/{sku}"))
                    .insert_header(("content-type", "application/json"));
                if let Some(c) = &cookie {
                    req = req.insert_header(("cookie", c.as_str()));
                }
                let t = Instant::now();
                match req.send_body(body).await {
                    Ok(mut resp) => {
                        let _ = resp.body().await;
                        lat.push(t.elapsed());
                        if let Some(c) = resp
                            .headers()
                            .get("set-cookie")
                            .and_then(|v| v.to_str().ok())
                        {
                            cookie = c.split(';').next().map(str::to_owned);
                        }
                        if resp.status().as_u16() != 200 {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        }
    });
    let started = Instant::now();
    let results = futures_util::future::join_all(tasks).await;
    let elapsed = started.elapsed();
    let errors: usize = results.iter().map(|r| r.1).sum();
    let mut lat: Vec<Duration> = results.into_iter().flat_map(|r| r.0).collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!("\nPUT /api/cart/items/{{sku}}, {sessions} sessions, {seconds} s, load generator in the same process");
    println!("| requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {} | {errors} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    node.shutdown(Drain::Immediate).await;
    Ok(())
}

/// What one round of the writes comparison did.
struct Round {
    writes: usize,
    failures: usize,
    elapsed: Duration,
    /// Batches the process's Journals committed over the round, and the writes in them.
    batches: f64,
    batched: f64,
    /// Seconds those batches spent from BEGIN to the COMMIT's answer, together.
    committing: f64,
}

/// `journal_batch_size`'s count and sum, and `journal_commit_seconds`' sum, so far, over
/// every Journal of the process (only one side runs at a time, so a round's difference is
/// that side's).
fn journal_batches() -> (f64, f64, f64) {
    let text = surge::telemetry::metrics_handle().render();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("journal_batch_size_count"),
        value("journal_batch_size_sum"),
        value("journal_commit_seconds_sum"),
    )
}

impl Round {
    /// Runs the shoppers' tasks, each answering (writes, failures), to their end.
    async fn run(tasks: impl IntoIterator<Item = impl Future<Output = (usize, usize)>>) -> Self {
        let before = journal_batches();
        let started = Instant::now();
        let results = futures_util::future::join_all(tasks).await;
        let elapsed = started.elapsed();
        let after = journal_batches();
        Round {
            writes: results.iter().map(|r| r.0).sum(),
            failures: results.iter().map(|r| r.1).sum(),
            elapsed,
            batches: after.0 - before.0,
            batched: after.1 - before.1,
            committing: after.2 - before.2,
        }
    }

    /// Writes per committed batch.
    fn mean_batch(&self) -> f64 {
        if self.batches > 0.0 {
            self.batched / self.batches
        } else {
            0.0
        }
    }

    /// Share of the round the Journal spent committing: what is left, it waited for writes.
    fn busy(&self) -> f64 {
        self.committing / self.elapsed.as_secs_f64()
    }

    fn rate(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

/// The shopper of both sides: reserve one unit of a SKU in a new session's cart, then
/// check the cart out. Two durable writes per cycle.
const EMAIL: &str = "bench@example.com";

/// The Journal side: `SESSIONS` tasks, each a series of shoppers handing the Journal
/// exactly the writes the HTTP side's cart actor hands it (a `SetLine` that creates the
/// cart row with its first line, then the `PlaceOrder` of that line), for `seconds`.
async fn journal_round(
    journal: &Arc<dyn Journal>,
    skus: &[String],
    epochs: &std::collections::HashMap<String, Option<i64>>,
    sessions: usize,
    seconds: u64,
) -> Round {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks = (0..sessions).map(|s| {
        let journal = Arc::clone(journal);
        let sku = skus[s % skus.len()].clone();
        let epoch = epochs.get(&sku).copied().flatten();
        async move {
            let (mut writes, mut failures) = (0, 0);
            let eur = Currency::parse("EUR").unwrap_or_else(|_| unreachable!());
            while Instant::now() < deadline {
                let cart_id = Uuid::new_v4();
                let session = surge_actors::validated::SessionId::random().into_string();
                let WriteOp::SetLine(mut set) = line(cart_id, &sku, epoch) else {
                    unreachable!()
                };
                set.create_for_session = Some(session.clone());
                if journal.write(WriteOp::SetLine(set)).await.is_err() {
                    failures += 1;
                    continue;
                }
                writes += 1;
                let order = WriteOp::PlaceOrder(PlaceOrder {
                    order_id: Uuid::new_v4(),
                    cart_id,
                    version: 1,
                    session_id: session,
                    email: EMAIL.into(),
                    customer: EMAIL.into(),
                    idempotency_key: Uuid::new_v4().to_string(),
                    lines: vec![OrderLine {
                        sku: sku.clone(),
                        quantity: 1,
                        unit_price_minor: 1000,
                    }],
                    total_minor: 1000,
                    currency: eur,
                });
                match journal.write(order).await {
                    Ok(_) => writes += 1,
                    Err(_) => failures += 1,
                }
            }
            (writes, failures)
        }
    });
    Round::run(tasks).await
}

/// Says why a write was not committed: a failure fails the run, and its cause is the
/// first thing to know.
fn refused(what: &str, status: u16, body: &[u8]) {
    eprintln!(
        "{what} answered {status}: {}",
        String::from_utf8_lossy(body)
    );
}

/// The HTTP side: `sessions` tasks, each a series of shoppers (no cookie: a new
/// session) doing `PUT /api/cart/items/{sku}` `{"quantity":1}` and then
/// `POST /api/checkout` with a new `Idempotency-Key`, for `seconds`. A write counts
/// when its answer is the committed one (`200`, `201`).
///
/// The shoppers run on a thread of their own, as the clients of a real node run in other
/// processes: on the bench's main thread they would hold up the node's own tasks there.
async fn http_round(base: &str, skus: &[String], sessions: usize, seconds: u64) -> Round {
    let (done, round) = tokio::sync::oneshot::channel();
    let (base, skus) = (base.to_owned(), skus.to_vec());
    let thread = actix::Arbiter::new();
    thread.spawn_fn(move || {
        actix_web::rt::spawn(async move {
            let _ = done.send(http_shoppers(&base, &skus, sessions, seconds).await);
        });
    });
    let round = round.await;
    thread.stop();
    round.unwrap_or_else(|_| panic!("the shoppers' thread ended without its round"))
}

async fn http_shoppers(base: &str, skus: &[String], sessions: usize, seconds: u64) -> Round {
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .connector(awc::Connector::new().limit(sessions))
        .finish();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let checkout_body = format!("{{\"email\":\"{EMAIL}\"}}");
    let tasks = (0..sessions).map(|s| {
        let http = http.clone();
        let put_url = format!("{base}/api/cart/items/{}", skus[s % skus.len()]);
        let checkout_url = format!("{base}/api/checkout");
        let checkout_body = checkout_body.clone();
        async move {
            let (mut writes, mut failures) = (0, 0);
            while Instant::now() < deadline {
                let put = http
                    .put(&put_url)
                    .insert_header(("content-type", "application/json"))
                    .send_body("{\"quantity\":1}")
                    .await;
                let cookie = match put {
                    Ok(mut resp) if resp.status().as_u16() == 200 => {
                        let _ = resp.body().await;
                        resp.headers()
                            .get("set-cookie")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|c| c.split(';').next())
                            .map(str::to_owned)
                    }
                    Ok(mut resp) => {
                        let body = resp.body().await.unwrap_or_default();
                        refused("PUT", resp.status().as_u16(), &body);
                        None
                    }
                    Err(err) => {
                        eprintln!("PUT failed: {err}");
                        None
                    }
                };
                let Some(cookie) = cookie else {
                    failures += 1;
                    continue;
                };
                writes += 1;
                let order = http
                    .post(&checkout_url)
                    .insert_header(("content-type", "application/json"))
                    .insert_header(("cookie", cookie))
                    .insert_header(("idempotency-key", Uuid::new_v4().to_string()))
                    .send_body(checkout_body.clone())
                    .await;
                match order {
                    Ok(mut resp) => {
                        let body = resp.body().await.unwrap_or_default();
                        if resp.status().as_u16() == 201 {
                            writes += 1;
                        } else {
                            refused("checkout", resp.status().as_u16(), &body);
                            failures += 1;
                        }
                    }
                    Err(err) => {
                        eprintln!("checkout failed: {err}");
                        failures += 1;
                    }
                }
            }
            (writes, failures)
        }
    });
    Round::run(tasks).await
}

/// A lease for the Journal side, renewed before each round: its rows are nobody's
/// heartbeat's, and the reaper may take them while the HTTP side runs.
async fn lease(
    journal: &Arc<dyn Journal>,
    skus: &[String],
) -> anyhow::Result<std::collections::HashMap<String, Option<i64>>> {
    let mut epochs = std::collections::HashMap::new();
    for sku in skus {
        let grant = WriteOp::Grant {
            sku: sku.clone(),
            want: 1_000_000,
        };
        let epoch = match journal.write(grant).await {
            Ok(WriteOutcome::Granted(g)) => g.epoch,
            other => anyhow::bail!("lease for {sku}: {other:?}"),
        };
        epochs.insert(sku.clone(), epoch);
    }
    Ok(epochs)
}

/// Vacuums and analyzes the bench database before each side's turn, untimed, as
/// autovacuum would keep it (a PostgreSQL run with `autovacuum = off`, as some CI
/// images are, never does): otherwise every turn plans against the statistics of the
/// one before, or none, and scans the dead rows of every earlier turn, and a side's
/// rate says more about its place in the run than about the side. Then a checkpoint:
/// a run writes more WAL than `max_wal_size` (1 GB by default) allows between two, and
/// the turn that a checkpoint falls in writes every page it touches whole to the WAL;
/// after a checkpoint each turn starts alike and, at the default sizes, ends before the
/// next one is due.
async fn tidy(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute("VACUUM (ANALYZE)")
        .await
        .context("vacuuming the bench database")?;
    client
        .batch_execute("CHECKPOINT")
        .await
        .context("checkpoint before a turn")
}

/// Reservations plus checkouts through HTTP against the same writes handed straight to
/// a Journal, alternating, `SURGE_BENCH_ROUNDS` rounds of `SURGE_BENCH_SECONDS` each.
async fn writes_side_by_side(url: &str) -> anyhow::Result<()> {
    let sessions = env_usize("SURGE_BENCH_SESSIONS", CONCURRENCY);
    let seconds = env_usize("SURGE_BENCH_SECONDS", 10) as u64;
    let rounds = env_usize("SURGE_BENCH_ROUNDS", 2).max(1);
    let warmup = env_usize("SURGE_BENCH_WARMUP_SECONDS", 2) as u64;
    let mut client = connect(url).await?;
    let skus = seed(&mut client).await?;
    let node_cfg = node_config(url)?;
    let jcfg = JournalConfig::from_commerce(&node_cfg.commerce);
    let db = Db::with_journal(&node_cfg.db, node_cfg.commerce.journal_pool_size)?;
    let journal: Arc<dyn Journal> = Arc::new(PgJournal::spawn(
        db.journal.clone(),
        "bench-journal".into(),
        jcfg.clone(),
        Arc::new(|_| {}),
    ));
    let node = Application::build(node_cfg).await?;
    let base = format!("http://{}", node.addr());

    println!(
        "\nreserve 1 unit + check out, new session per order: {sessions} shoppers at a time, \
         {} SKUs, {rounds} x {seconds} s per side, alternating",
        skus.len()
    );
    println!(
        "journal: max batch {}, max wait {:?}",
        jcfg.max_batch, jcfg.max_wait
    );
    // Untimed: both sides once, so that the first measured round, like every other,
    // starts on tables with rows and statistics, and on a node whose actors and
    // connections are up.
    let epochs = lease(&journal, &skus).await?;
    let j = journal_round(&journal, &skus, &epochs, sessions, warmup).await;
    let h = http_round(&base, &skus, sessions, warmup).await;
    println!(
        "warm-up, untimed: {} + {} writes, {} failures",
        j.writes,
        h.writes,
        j.failures + h.failures
    );
    println!(
        "| round | side | writes | failures | seconds | durable writes/s | commits | writes per commit | ms per commit | Journal committing |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut journal_rates, mut http_rates) = (Vec::new(), Vec::new());
    let mut failed = 0;
    for r in 1..=rounds {
        let epochs = lease(&journal, &skus).await?;
        // ABBA: odd rounds run the Journal first, even rounds HTTP first, so that a
        // drift over the run (tables growing) weighs on both sides alike.
        let (j, h) = if r % 2 == 1 {
            tidy(&client).await?;
            let j = journal_round(&journal, &skus, &epochs, sessions, seconds).await;
            tidy(&client).await?;
            (j, http_round(&base, &skus, sessions, seconds).await)
        } else {
            tidy(&client).await?;
            let h = http_round(&base, &skus, sessions, seconds).await;
            tidy(&client).await?;
            (
                journal_round(&journal, &skus, &epochs, sessions, seconds).await,
                h,
            )
        };
        for (side, round) in [("Journal alone", &j), ("HTTP", &h)] {
            println!(
                "| {r} | {side} | {} | {} | {:.2} | {:.0} | {:.0} | {:.1} | {:.2} | {:.0} % |",
                round.writes,
                round.failures,
                round.elapsed.as_secs_f64(),
                round.rate(),
                round.batches,
                round.mean_batch(),
                1000.0 * round.committing / round.batches.max(1.0),
                100.0 * round.busy()
            );
            failed += round.failures;
        }
        journal_rates.push(j.rate());
        http_rates.push(h.rate());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (jr, hr) = (mean(&journal_rates), mean(&http_rates));
    println!(
        "\nmean: Journal alone {jr:.0}/s, HTTP {hr:.0}/s; HTTP at {:.1} % of the Journal",
        100.0 * hr / jr
    );
    node.shutdown(Drain::Immediate).await;
    let orders: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    println!("orders committed: {orders}");
    anyhow::ensure!(failed == 0, "{failed} writes failed");
    Ok(())
}
