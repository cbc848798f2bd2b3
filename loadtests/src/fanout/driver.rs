//! The stock changes: one session changes the fan-out SKU's stock at a steady pace, and
//! its observer socket learns the `seq` each change got.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::socket::{Delivery, Observer, Progress};
use crate::{
    cli::FanoutArgs,
    report::{Recorder, Report},
    session::Session,
};

/// Label of the driver's changes.
pub const PUT: &str = "PUT /api/cart/items/{sku} (driver)";

/// A change the driver made.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// The `available` it should show.
    pub expected: i64,
    /// When its HTTP answer arrived.
    pub ack: Instant,
    /// Its `seq`, when the observer saw it.
    pub seq: Option<u64>,
}

/// The driver: one session changing the fan-out SKU's stock, and the observer socket
/// that learns each change's `seq`.
pub struct Driver {
    /// The session that changes the stock.
    session: Session,
    /// The socket that sees each change.
    observer: Observer,
    /// The fan-out SKU.
    sku: String,
    /// The value the observer saw first.
    first: Delivery,
}

impl Driver {
    /// The driver of `sku` once its observer has seen the current value (up to 10 s).
    pub async fn new(session: Session, observer: Observer, sku: &str) -> anyhow::Result<Self> {
        let first = observer
            .wait_for(Duration::from_secs(10), |_| true)
            .await
            .ok_or_else(|| anyhow::anyhow!("the observer socket got no stock message for {sku}"))?;
        Ok(Self {
            session,
            observer,
            sku: sku.to_owned(),
            first,
        })
    }

    /// Closes the observer socket.
    pub fn stop_observing(&self) {
        self.observer.stop();
    }

    /// At least `--interval` and the server's coalescing interval + 50 ms between changes.
    pub fn interval(&self, args: &FanoutArgs, progress: &Progress) -> (Duration, u64) {
        let coalesce = self
            .observer
            .coalesce_ms()
            .or(Some(progress.coalesce_ms.load(Ordering::Relaxed)).filter(|m| *m > 0))
            .unwrap_or(100);
        (
            args.interval.max(Duration::from_millis(coalesce + 50)),
            coalesce,
        )
    }

    /// Makes `changes` changes (quantity 1 and 2 alternately), `interval` apart, until
    /// `until`; returns each with the time its HTTP answer arrived and its `seq`.
    pub async fn change(
        &mut self,
        changes: usize,
        interval: Duration,
        until: Instant,
        rec: &mut Recorder,
        report: &mut Report,
    ) -> Vec<Change> {
        let a0 = self.first.available;
        let mut made: Vec<Change> = Vec::new();
        let mut last_seq = self.first.seq;
        for n in 0..changes {
            if Instant::now() >= until {
                report
                    .notes
                    .push(format!("the run's deadline stopped the changes after {n}"));
                break;
            }
            let q = if n % 2 == 0 { 1 } else { 2 };
            let reply = match self.session.put_item(&self.sku, q).await {
                Ok(r) => r,
                Err(f) => {
                    rec.failure(PUT, &f);
                    continue;
                }
            };
            let ack = Instant::now();
            rec.reply(PUT, &reply, reply.status == 200);
            if reply.status != 200 {
                tokio::time::sleep(interval).await;
                continue;
            }
            let expected = a0 - q;
            let seen = self
                .observer
                .wait_for(interval.max(Duration::from_secs(2)), |d| {
                    d.seq > last_seq && d.available == expected
                })
                .await;
            if let Some(d) = seen {
                last_seq = d.seq;
            }
            made.push(Change {
                expected,
                ack,
                seq: seen.map(|d| d.seq),
            });
            if let Some(rest) = (ack + interval).checked_duration_since(Instant::now()) {
                tokio::time::sleep(rest).await;
            }
        }
        made
    }

    /// Gives the units back.
    pub async fn release(&mut self, rec: &mut Recorder) {
        if let Ok(r) = self.session.delete_item(&self.sku).await {
            rec.reply("DELETE /api/cart/items/{sku} (driver)", &r, r.status == 200);
        }
    }
}
