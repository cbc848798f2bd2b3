//! Real `surge` processes behind a real nginx, as a Kubernetes ingress spreads them:
//! nodes join in the middle of a sale and leave again with SIGTERM, as an autoscaler adds
//! and removes pods. Guards against stock stranded by scaling: buyers refused while
//! units remain, and leases left behind when the sale stops.

use std::{
    process::{Child, Command, Stdio},
    rc::Rc,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::{
    common::{assert_stock_sound, buckets, db_with_sku, redis_url, shared_client, Buyer},
    nodes::{free_port, Node},
};

/// A private nginx in front of `ports`; stopped when dropped.
struct Nginx {
    child: Child,
    base: String,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| (*p).to_owned())
        .unwrap_or_else(|| {
            panic!("nginx is not installed; `make test` installs it (scripts/test-tools.sh)")
        })
}

impl Nginx {
    /// Round-robin over `ports`, with ingress-nginx's default retry policy (`error
    /// timeout`): a node that refuses connections is skipped for a second.
    async fn start(ports: &[u16]) -> Self {
        let dir = std::env::temp_dir().join(format!("surge-nginx-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
        let port = free_port();
        let upstreams: String = ports
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
            .collect();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/cb;\n    proxy_temp_path {d}/px;\n\
                 fastcgi_temp_path {d}/fc;\n    uwsgi_temp_path {d}/uw;\n    scgi_temp_path {d}/sc;\n\
                 upstream surge {{\n{upstreams}        keepalive 64;\n    }}\n\
                 server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
                 proxy_pass http://surge;\n            proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n            proxy_next_upstream error timeout;\n\
                 }}\n    }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new(nginx_binary())
            .args(["-p", &d.to_string(), "-c", &conf_path.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: TempDir(dir),
        };
        let http = awc::Client::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while http
            .get(format!("{}/healthz", nginx.base))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(Instant::now() < deadline, "nginx never answered");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        nginx
    }
}

impl Drop for Nginx {
    /// SIGTERM, so that the master stops its workers (a SIGKILL of the master would
    /// leave them running); SIGKILL only if it has not exited after two seconds.
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What ended one buyer's attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ordered,
    /// A 409 on the PUT: refused while units remained (buyers are fewer than units).
    Refused(String),
    GaveUp(String),
}

/// One buyer: reserve one unit, then check out. A 5xx, a 502 from nginx or a transport
/// error says nothing was committed or the answer was lost, so it is retried (a PUT of a
/// quantity and a checkout under one Idempotency-Key are safe to repeat); a 409 is
/// never retried.
async fn buy(base: &str, sku: &str, i: usize) -> Outcome {
    let mut buyer = Buyer::new(base, shared_client());
    let key = format!("cluster-{i}");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut reserved = false;
    loop {
        if Instant::now() > deadline {
            return Outcome::GaveUp(format!("reserved {reserved}"));
        }
        let (status, body) = if reserved {
            buyer.checkout(&key).await
        } else {
            buyer.set(sku, 1).await
        };
        match (reserved, status) {
            (false, 200) => reserved = true,
            (true, 201) => return Outcome::Ordered,
            (false, 409) => return Outcome::Refused(body.to_string()),
            // The reservation lapsed or the cart moved: reserve again.
            (true, 409) => reserved = false,
            (_, 0 | 429 | 500..=599) => {
                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            }
            (_, other) => return Outcome::GaveUp(format!("{other}: {body}")),
        }
    }
}

#[actix_web::test]
async fn nodes_joining_and_leaving_mid_sale_strand_no_stock() {
    const SKU: &str = "SCALE-1";
    const UNITS: i64 = 400;
    const BUYERS: usize = 380;
    const CONCURRENCY: usize = 40;
    let db = db_with_sku(SKU, UNITS).await;
    let redis = redis_url();
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let env: Vec<(&str, &str)> = vec![
        ("REDIS_URL", redis.as_str()),
        ("SURGE_BUS_PREFIX", prefix.as_str()),
        ("SURGE_LEASE_TTL_SECS", "3"),
        ("SURGE_LEASE_IDLE_SECS", "1"),
        ("SURGE_REAPER_PERIOD_SECS", "1"),
        ("SURGE_DRAIN_DELAY_SECS", "1"),
        ("SURGE_SHUTDOWN_GRACE_SECS", "10"),
    ];
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports[..3].iter().enumerate() {
        nodes.push(Node::start_on(*port, &db.url, &format!("base-{i}"), &env).await);
    }
    let nginx = Nginx::start(&ports).await;

    let next = Rc::new(AtomicUsize::new(0));
    let done = Rc::new(AtomicUsize::new(0));
    let workers = (0..CONCURRENCY).map(|_| {
        let (next, done, base) = (next.clone(), done.clone(), nginx.base.clone());
        actix_web::rt::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= BUYERS {
                    return outcomes;
                }
                outcomes.push(buy(&base, SKU, i).await);
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    });
    let workers: Vec<_> = workers.collect();

    // A third of the way in, three nodes join; at two thirds they leave with SIGTERM.
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while done.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(BUYERS / 3).await;
    let mut joiners = Vec::new();
    for (i, port) in ports[3..].iter().enumerate() {
        joiners.push(Node::start_on(*port, &db.url, &format!("scale-{i}"), &env).await);
    }
    wait_for(2 * BUYERS / 3).await;
    for node in &mut joiners {
        node.terminate().await;
    }

    let mut outcomes = Vec::new();
    for w in workers {
        outcomes.extend(w.await.expect("buyer task"));
    }
    let ordered = outcomes.iter().filter(|o| **o == Outcome::Ordered).count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Refused(_)))
        .collect();
    let gave_up: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::GaveUp(_)))
        .collect();
    assert!(
        refused.is_empty(),
        "{} buyers were refused while units remained (first: {:?})",
        refused.len(),
        refused.first()
    );
    assert!(gave_up.is_empty(), "buyers gave up: {gave_up:?}");
    assert_eq!(ordered, BUYERS, "every buyer has an order");

    // Once the sale stops, no stock stays leased: the leaving nodes returned theirs,
    // and the remaining nodes give idle leases back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (total, available, leased, reserved, sold) = buckets(&db, SKU).await;
        if leased == 0 {
            assert_eq!((total, sold, reserved), (UNITS, BUYERS as i64, 0));
            assert_eq!(available, UNITS - BUYERS as i64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{leased} units still leased 10 s after the sale"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert_stock_sound(&db).await;
    drop(nginx);
    drop(nodes);
}
