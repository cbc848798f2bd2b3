//! Connecting the subscribers: spread over load threads, node URLs and source
//! addresses, in batches no faster than the connect rate, with progress lines.

use std::{
    net::IpAddr,
    rc::Rc,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use super::socket::{subscriber, ws_url, Progress, SubRecord};
use crate::{
    cli::FanoutArgs,
    harness::{self, Threads},
    http::{self, ClientOptions},
    util::thousands,
};

/// Everything the subscriber threads need: where to connect, from which addresses,
/// how fast and until when, and where to report progress.
#[derive(Clone)]
pub struct Crowd {
    /// Node URLs; sockets spread over them.
    pub bases: Vec<String>,
    /// The SKU every socket subscribes to.
    pub sku: String,
    /// Local source addresses; sockets spread over them (none: the default one).
    pub sources: Vec<IpAddr>,
    /// Timeout of the HTTP clients.
    pub timeout: Duration,
    /// Sockets in all.
    pub count: usize,
    /// Load threads.
    pub threads: usize,
    /// Most new connections per second.
    pub rate: usize,
    /// Connections opened per batch.
    pub batch: usize,
    /// No new connection after this.
    pub connect_deadline: Instant,
    /// Every socket closes by this.
    pub hard_deadline: Instant,
    /// Where the sockets count themselves.
    pub progress: Arc<Progress>,
    /// Tells the sockets to close.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl Crowd {
    /// Connects the sockets with progress lines and waits for their current values;
    /// returns the threads that hold them and how long connecting took.
    pub async fn connect(self) -> anyhow::Result<(Threads<Vec<SubRecord>>, Duration)> {
        let (progress, count, deadline) =
            (self.progress.clone(), self.count, self.connect_deadline);
        let started = Instant::now();
        let threads = self.spawn()?;
        watch_connections(&progress, count, started, deadline).await;
        let took = started.elapsed();
        settle(&progress).await;
        Ok((threads, took))
    }

    /// Starts the load threads; each connects its share and returns what it saw.
    fn spawn(self) -> anyhow::Result<Threads<Vec<SubRecord>>> {
        let threads = self.threads;
        harness::spawn(threads, move |t| self.clone().connect_share(t))
    }

    /// Thread `t`'s subscribers, in batches no faster than the connect rate.
    async fn connect_share(self, t: usize) -> Vec<SubRecord> {
        let clients: Vec<awc::Client> = if self.sources.is_empty() {
            vec![self.client(None)]
        } else {
            self.sources
                .iter()
                .map(|ip| self.client(Some(*ip)))
                .collect()
        };
        let urls: Vec<Rc<str>> = self.bases.iter().map(|b| Rc::from(ws_url(b))).collect();
        let sku: Rc<str> = Rc::from(self.sku.as_str());
        let mine: Vec<usize> = (t..self.count).step_by(self.threads).collect();
        let per_thread_rate = (self.rate as f64 / self.threads as f64).max(1.0);
        let per_batch = (self.batch / self.threads).max(1);
        let mut handles = Vec::with_capacity(mine.len());
        for chunk in mine.chunks(per_batch) {
            if Instant::now() >= self.connect_deadline || *self.stop.borrow() {
                break;
            }
            let t0 = Instant::now();
            let mut ready = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let (tx, rx) = tokio::sync::oneshot::channel();
                handles.push(actix_web::rt::spawn(subscriber(
                    clients[i % clients.len()].clone(),
                    urls[i % urls.len()].clone(),
                    sku.clone(),
                    self.stop.clone(),
                    self.progress.clone(),
                    Duration::from_secs(15),
                    self.hard_deadline,
                    tx,
                )));
                ready.push(rx);
            }
            futures_util::future::join_all(ready).await;
            let least = Duration::from_secs_f64(chunk.len() as f64 / per_thread_rate);
            if let Some(rest) = least.checked_sub(t0.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        let mut recs = Vec::with_capacity(handles.len());
        for h in handles {
            if let Ok(r) = h.await {
                recs.push(r);
            }
        }
        recs
    }

    fn client(&self, source: Option<IpAddr>) -> awc::Client {
        http::client(&ClientOptions {
            timeout: self.timeout,
            connections: 0,
            source,
        })
    }
}

/// When connecting must stop to leave room for the changes and the grace period.
pub fn connect_deadline(args: &FanoutArgs, started: Instant) -> Instant {
    let changes_budget =
        args.interval * (args.changes as u32 + 2) + args.grace + Duration::from_secs(15);
    (started + args.common.duration)
        .checked_sub(changes_budget)
        .unwrap_or(started)
        .max(started + Duration::from_secs(5))
}

/// Prints progress until every socket connected or failed (or connecting ran out of
/// time).
async fn watch_connections(progress: &Progress, k: usize, since: Instant, deadline: Instant) {
    let mut last_print = Instant::now();
    loop {
        let (conn, failed) = (
            progress.connected.load(Ordering::Relaxed),
            progress.failed.load(Ordering::Relaxed),
        );
        let done = conn + failed >= k;
        if done || last_print.elapsed() >= Duration::from_secs(1) {
            let secs = since.elapsed().as_secs_f64();
            println!(
                "fanout: connected {}/{} (failed {}, subscribed {}) in {:.1} s, {:.0}/s",
                thousands(conn as u64),
                thousands(k as u64),
                thousands(failed as u64),
                thousands(progress.subscribed.load(Ordering::Relaxed) as u64),
                secs,
                conn as f64 / secs.max(0.001)
            );
            last_print = Instant::now();
        }
        if done || Instant::now() >= deadline + Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 15 s) until every connected socket got its current value or closed.
async fn settle(progress: &Progress) {
    let until = Instant::now() + Duration::from_secs(15);
    while progress.subscribed.load(Ordering::Relaxed) + progress.closed.load(Ordering::Relaxed)
        < progress.connected.load(Ordering::Relaxed)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
