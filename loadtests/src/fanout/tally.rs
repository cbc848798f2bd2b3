//! What the subscribers saw, matched to the changes by `seq`, and the figures and
//! failures the report shows for it.

use std::{collections::BTreeMap, time::Duration};

use serde_json::json;

use super::{driver::Change, socket::SubRecord};
use crate::{
    cli::FanoutArgs,
    report::{Hist, Report},
    util::thousands,
};

/// The subscribers' records matched against the changes.
#[derive(Debug, Default)]
pub struct Tally {
    /// Sockets that connected.
    pub connected: u64,
    /// Sockets that got the current value.
    pub subscribed: u64,
    /// Connect + upgrade times.
    pub connect: Hist,
    /// Why sockets did not connect, counted.
    pub failures: BTreeMap<String, u64>,
    /// Why sockets closed early, counted.
    pub closed_early: BTreeMap<String, u64>,
    /// Receive time minus the change's HTTP answer.
    pub delivery: Hist,
    /// Changes the observer did not see.
    pub unobserved: u64,
    /// Deliveries matched to a change.
    pub delivered: u64,
    /// (socket, change) pairs without a delivery.
    pub missing: u64,
    /// Deliveries read before the change's HTTP answer.
    pub early: u64,
    /// Deliveries with another value than the change's.
    pub wrong: u64,
}

impl Tally {
    /// Matches every subscribed socket's deliveries to the changes by `seq`: the first
    /// delivery at or after a change's `seq` and before the next change's is its own.
    pub fn new(subs: &[SubRecord], changes: &[Change]) -> Self {
        let mut t = Tally::default();
        let known: Vec<(usize, u64)> = changes
            .iter()
            .enumerate()
            .filter_map(|(i, ch)| ch.seq.map(|s| (i, s)))
            .collect();
        t.unobserved = (changes.len() - known.len()) as u64;
        for s in subs {
            if let Some(d) = s.connect {
                t.connected += 1;
                t.connect.record(d);
            }
            if let Some(f) = &s.failure {
                *t.failures.entry(f.clone()).or_default() += 1;
            }
            if let Some(f) = &s.closed_early {
                *t.closed_early.entry(f.clone()).or_default() += 1;
            }
        }
        for s in subs.iter().filter(|s| s.subscribed) {
            t.subscribed += 1;
            for (j, (ci, seq)) in known.iter().enumerate() {
                let upper = known.get(j + 1).map(|(_, s)| *s).unwrap_or(u64::MAX);
                let ch = &changes[*ci];
                match s.deliveries.iter().find(|d| d.seq >= *seq && d.seq < upper) {
                    Some(d) => {
                        t.delivered += 1;
                        if d.at < ch.ack {
                            t.early += 1;
                        }
                        if d.available != ch.expected {
                            t.wrong += 1;
                        }
                        t.delivery.record(d.at.saturating_duration_since(ch.ack));
                    }
                    None => t.missing += 1,
                }
            }
            t.missing += t.unobserved;
        }
        t
    }
}

/// RSS samples of the server and of this process, before the sockets and with them open.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// The server before the sockets.
    pub server_before: Option<u64>,
    /// The server with the sockets open.
    pub server_connected: Option<u64>,
    /// The server after the changes.
    pub server_after: Option<u64>,
    /// This process before the sockets.
    pub own_before: Option<u64>,
    /// This process with the sockets open.
    pub own_connected: Option<u64>,
    /// CPU seconds (user + system) the server spent over the changes and the grace period.
    pub server_cpu: Option<f64>,
    /// CPU seconds this process spent over the same span.
    pub own_cpu: Option<f64>,
}

/// CPU seconds (user + system) process `pid` has used so far, from /proc; unlike a
/// latency, this barely moves with what else the machine is running.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields, in USER_HZ (100 on Linux).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The growth from `before` to `after` (KiB) per socket, as a figure.
fn per_socket_figure(
    report: &mut Report,
    key: &str,
    before: Option<u64>,
    after: Option<u64>,
    sockets: u64,
) {
    if let (Some(b), Some(a)) = (before, after) {
        if sockets > 0 {
            let per = (a.saturating_sub(b) as f64 * 1024.0) / sockets as f64;
            report.figure(
                key,
                json!(per.round()),
                format!(
                    "{} ({:.1} KiB)",
                    thousands(per.round() as u64),
                    per / 1024.0
                ),
            );
        }
    }
}

/// What the run measured, for the report.
pub struct Outcome {
    /// Sockets tried.
    pub attempted: usize,
    /// Sockets with their current value when the changes began.
    pub subscribed_before: usize,
    /// How long connecting took.
    pub connect_time: Duration,
    /// Changes made.
    pub changes: usize,
    /// The deliveries matched to the changes.
    pub tally: Tally,
    /// RSS samples.
    pub memory: Memory,
}

impl Outcome {
    /// The figures, in the report's order.
    pub fn add_figures(&self, args: &FanoutArgs, report: &mut Report) {
        let t = &self.tally;
        report.figure_int("subscribers requested", args.subscribers as u64);
        report.figure_int("subscribers attempted", self.attempted as u64);
        report.figure_int("sockets connected", t.connected);
        report.figure_int("sockets subscribed (got the current value)", t.subscribed);
        report.figure_int(
            "sockets subscribed before the changes",
            self.subscribed_before as u64,
        );
        report.figure_int("connect failures", t.failures.values().sum());
        for (kind, n) in &t.failures {
            report.figure_int(&format!("connect failure: {kind}"), *n);
        }
        for (kind, n) in &t.closed_early {
            report.figure_int(&format!("closed early: {kind}"), *n);
        }
        report.figure_f64("connect phase (s)", self.connect_time.as_secs_f64(), 2);
        report.figure_f64(
            "connect rate (sockets/s)",
            t.connected as f64 / self.connect_time.as_secs_f64().max(0.001),
            0,
        );
        report.figure_int("changes made", self.changes as u64);
        report.figure_int("changes the observer did not see", t.unobserved);
        report.figure_int("deliveries expected", t.subscribed * self.changes as u64);
        report.figure_int("deliveries received", t.delivered);
        report.figure_int("deliveries missing", t.missing);
        report.figure_int(
            "deliveries before the HTTP answer (counted as 0 ms)",
            t.early,
        );
        report.figure_int("deliveries with an unexpected value", t.wrong);
        let sm = t.delivery.summary();
        report.figure(
            "delivery p50 / p90 / p99 / max (ms)",
            json!({ "p50": sm.p50, "p90": sm.p90, "p99": sm.p99, "max": sm.max }),
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1}",
                sm.p50, sm.p90, sm.p99, sm.max
            ),
        );
        let m = self.memory;
        report.rss(m.server_before, m.server_after);
        if let Some(kib) = m.server_connected {
            report.figure_int("server RSS with sockets open (KiB)", kib);
        }
        per_socket_figure(
            report,
            "server RSS per socket (bytes)",
            m.server_before,
            m.server_connected,
            t.connected,
        );
        for (key, cpu) in [
            ("server CPU per delivery (us)", m.server_cpu),
            ("load generator CPU per delivery (us)", m.own_cpu),
        ] {
            if let (Some(secs), true) = (cpu, t.delivered > 0) {
                report.figure_f64(key, secs * 1e6 / t.delivered as f64, 1);
            }
        }
        per_socket_figure(
            report,
            "load generator RSS per socket (bytes)",
            m.own_before,
            m.own_connected,
            t.connected,
        );
    }

    /// With `--strict`: every delivery made, with the right value, every socket
    /// connected, every change made.
    pub fn add_failures(&self, args: &FanoutArgs, report: &mut Report) {
        let t = &self.tally;
        if t.missing > 0 {
            report
                .failures
                .push(format!("{} deliveries missing", t.missing));
        }
        if t.wrong > 0 {
            report
                .failures
                .push(format!("{} deliveries with an unexpected value", t.wrong));
        }
        let k = self.attempted as u64;
        if t.connected < k {
            report.failures.push(format!(
                "{} of {k} sockets did not connect",
                k - t.connected
            ));
        }
        if self.changes < args.changes {
            report.failures.push(format!(
                "{} of {} changes were not made",
                args.changes - self.changes,
                args.changes
            ));
        }
    }
}
