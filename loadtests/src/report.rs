//! What a run measured and how it is shown: HDR latency histograms, counts by status
//! and error kind per endpoint, named figures, and the Markdown table and JSON report
//! every scenario ends with.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::{
    http::{Failure, Reply},
    util::thousands,
};

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

/// Percentiles of a [`Hist`], in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    /// An empty histogram.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts; failure is impossible.
        Self(
            Histogram::new_with_bounds(1, 600_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid histogram bounds")),
        )
    }

    /// Records one latency (clamped into the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides, so `add` cannot fail; saturate if it ever did.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// The percentiles in milliseconds.
    pub fn summary(&self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: self.0.len(),
            p50: ms(self.0.value_at_quantile(0.50)),
            p90: ms(self.0.value_at_quantile(0.90)),
            p99: ms(self.0.value_at_quantile(0.99)),
            max: ms(self.0.max()),
            mean: self.0.mean() / 1000.0,
        }
    }
}

impl Summary {
    /// As JSON: count and milliseconds.
    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
            "max_ms": round3(self.max),
            "mean_ms": round3(self.mean),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Counts and latencies of one endpoint.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// Latency of every answered request.
    pub hist: Hist,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer, by kind (timeout, connect, ...).
    pub failures: BTreeMap<String, u64>,
    /// Answers the scenario did not expect (counted as errors).
    pub unexpected: u64,
    /// Response body bytes received.
    pub bytes: u64,
}

impl Endpoint {
    /// Answered requests.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Requests without an answer plus unexpected answers.
    pub fn errors(&self) -> u64 {
        self.failures.values().sum::<u64>() + self.unexpected
    }

    /// Answers with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (500..600).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    fn merge(&mut self, other: &Endpoint) {
        self.hist.merge(&other.hist);
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        for (k, n) in &other.failures {
            *self.failures.entry(k.clone()).or_default() += n;
        }
        self.unexpected += other.unexpected;
        self.bytes += other.bytes;
    }
}

/// Everything one worker (or one run, after merging) recorded.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// Per endpoint label, e.g. `GET /api/products`.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Named latency histograms beyond the per-endpoint ones (e.g. sold-out answers).
    pub hists: BTreeMap<String, Hist>,
    /// Named counters (e.g. orders, sold-out buyers).
    pub counters: BTreeMap<String, u64>,
}

impl Recorder {
    /// Records an answer; `expected` says whether the scenario considers it normal.
    pub fn reply(&mut self, endpoint: &str, reply: &Reply, expected: bool) {
        let e = self.endpoint(endpoint);
        e.hist.record(reply.latency);
        *e.statuses.entry(reply.status).or_default() += 1;
        e.bytes += reply.body.len() as u64;
        if !expected {
            e.unexpected += 1;
        }
    }

    /// Records a request that got no answer.
    pub fn failure(&mut self, endpoint: &str, failure: &Failure) {
        *self
            .endpoint(endpoint)
            .failures
            .entry(failure.kind.to_owned())
            .or_default() += 1;
    }

    /// Adds a sample to a named histogram.
    pub fn sample(&mut self, name: &str, d: Duration) {
        self.hists.entry(name.to_owned()).or_default().record(d);
    }

    /// Adds `n` to a named counter.
    pub fn count(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_owned()).or_default() += n;
    }

    /// A named counter (0 when never counted).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    fn endpoint(&mut self, endpoint: &str) -> &mut Endpoint {
        if !self.endpoints.contains_key(endpoint) {
            self.endpoints
                .insert(endpoint.to_owned(), Endpoint::default());
        }
        self.endpoints
            .get_mut(endpoint)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Recorder) {
        for (k, e) in &other.endpoints {
            self.endpoint(k).merge(e);
        }
        for (k, h) in &other.hists {
            self.hists.entry(k.clone()).or_default().merge(h);
        }
        for (k, n) in &other.counters {
            *self.counters.entry(k.clone()).or_default() += n;
        }
    }

    /// Merges many recorders into one.
    pub fn merged<'a>(all: impl IntoIterator<Item = &'a Recorder>) -> Recorder {
        let mut out = Recorder::default();
        for r in all {
            out.merge(r);
        }
        out
    }

    /// All endpoints together.
    pub fn total(&self) -> Endpoint {
        let mut t = Endpoint::default();
        for e in self.endpoints.values() {
            t.merge(e);
        }
        t
    }

    /// Answered requests with a given status over all endpoints.
    pub fn status_count(&self, endpoint: &str, status: u16) -> u64 {
        self.endpoints
            .get(endpoint)
            .and_then(|e| e.statuses.get(&status))
            .copied()
            .unwrap_or(0)
    }
}

/// One measured run inside a report (e.g. Surge, then the ceiling).
#[derive(Debug, Clone)]
pub struct Section {
    /// Short name, e.g. `surge` or `ceiling-http`.
    pub name: String,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// What it recorded.
    pub recorder: Recorder,
}

impl Section {
    /// A run named `name` (e.g. `surge`) that took `elapsed`.
    pub fn new(name: &str, elapsed: Duration, recorder: Recorder) -> Self {
        Self {
            name: name.to_owned(),
            elapsed,
            recorder,
        }
    }

    /// Answered requests per second over the whole run.
    pub fn rps(&self) -> f64 {
        per_second(self.recorder.total().answered(), self.elapsed)
    }
}

/// `n` events over `d`, per second.
pub fn per_second(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// The result of one invocation: sections, named figures, notes and failures.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name, e.g. `flash-sale`.
    pub scenario: String,
    /// Parameters as given.
    pub params: Value,
    /// The measured runs.
    pub sections: Vec<Section>,
    /// Named figures in display order: key, JSON value, display text.
    pub figures: Vec<(String, Value, String)>,
    /// Remarks printed under the tables (limits hit, what was skipped and why).
    pub notes: Vec<String>,
    /// Correctness failures; any makes the process exit 1.
    pub failures: Vec<String>,
}

impl Report {
    /// An empty report for `scenario` with its parameters.
    pub fn new(scenario: &str, params: Value) -> Self {
        Self {
            scenario: scenario.to_owned(),
            params,
            sections: Vec::new(),
            figures: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Adds a figure with its JSON value and display text.
    pub fn figure(&mut self, key: &str, value: Value, display: impl Into<String>) {
        self.figures.push((key.to_owned(), value, display.into()));
    }

    /// Adds an integer figure shown with thousands separators.
    pub fn figure_int(&mut self, key: &str, n: u64) {
        self.figure(key, json!(n), thousands(n));
    }

    /// Adds a float figure shown with `decimals` places.
    pub fn figure_f64(&mut self, key: &str, x: f64, decimals: usize) {
        let shown = if decimals == 0 && x.abs() >= 1000.0 {
            thousands(x.round() as u64)
        } else {
            format!("{x:.decimals$}")
        };
        self.figure(key, json!(round3(x)), shown);
    }

    /// Adds RSS figures for a server process measured before and after.
    pub fn rss(&mut self, before: Option<u64>, after: Option<u64>) {
        if let Some(b) = before {
            self.figure_int("server RSS before (KiB)", b);
        }
        if let Some(a) = after {
            self.figure_int("server RSS after (KiB)", a);
        }
    }

    /// Adds the measured runs and checks their answers: how every scenario ends.
    pub fn conclude(mut self, sections: impl IntoIterator<Item = Section>, strict: bool) -> Self {
        self.sections.extend(sections);
        self.check_errors(strict);
        self
    }

    /// Records a failure for any 5xx answer in any section, and with `strict` also
    /// for requests without an answer and answers the scenario did not expect.
    fn check_errors(&mut self, strict: bool) {
        let mut found = Vec::new();
        for s in &self.sections {
            let t = s.recorder.total();
            let five = t.server_errors();
            if five > 0 {
                found.push(format!(
                    "{}: {} answers with a 5xx status",
                    s.name,
                    thousands(five)
                ));
            }
            if strict && t.errors() > 0 {
                found.push(format!(
                    "{}: {} errors (no answer, or a status the scenario does not expect)",
                    s.name,
                    thousands(t.errors())
                ));
            }
        }
        self.failures.extend(found);
    }

    /// Whether no correctness failure was recorded.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("\n## {}\n", self.scenario));
        if !self.sections.is_empty() {
            out.push_str(
                "\n| run | endpoint | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |\n",
            );
            out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        }
        for s in &self.sections {
            let mut rows: Vec<(String, Endpoint)> = s
                .recorder
                .endpoints
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            if rows.len() > 1 {
                rows.push(("all".to_owned(), s.recorder.total()));
            }
            for (name, e) in rows {
                let sm = e.hist.summary();
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                    s.name,
                    name,
                    thousands(e.answered() + e.failures.values().sum::<u64>()),
                    thousands(e.errors()),
                    thousands(per_second(e.answered(), s.elapsed).round() as u64),
                    sm.p50,
                    sm.p90,
                    sm.p99,
                    sm.max
                ));
            }
        }
        let mut status_rows = Vec::new();
        for s in &self.sections {
            for (name, e) in &s.recorder.endpoints {
                for (st, n) in &e.statuses {
                    status_rows.push(format!(
                        "| {} | {} | {} | {} |",
                        s.name,
                        name,
                        st,
                        thousands(*n)
                    ));
                }
                for (k, n) in &e.failures {
                    status_rows.push(format!(
                        "| {} | {} | no answer: {} | {} |",
                        s.name,
                        name,
                        k,
                        thousands(*n)
                    ));
                }
            }
        }
        if !status_rows.is_empty() {
            out.push_str("\n| run | endpoint | status | count |\n|---|---|---|---:|\n");
            for r in status_rows {
                out.push_str(&r);
                out.push('\n');
            }
        }
        let hists: Vec<_> = self
            .sections
            .iter()
            .flat_map(|s| s.recorder.hists.iter().map(move |(k, h)| (s, k, h)))
            .collect();
        if !hists.is_empty() {
            out.push_str("\n| run | measure | count | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---:|---:|---:|---:|---:|\n");
            for (s, k, h) in hists {
                let sm = h.summary();
                out.push_str(&format!(
                    "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                    s.name,
                    k,
                    thousands(sm.count),
                    sm.p50,
                    sm.p90,
                    sm.p99,
                    sm.max
                ));
            }
        }
        if !self.figures.is_empty() {
            out.push_str("\n| figure | value |\n|---|---:|\n");
            for (k, _, shown) in &self.figures {
                out.push_str(&format!("| {k} | {shown} |\n"));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("\nnote: {n}"));
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        if self.failures.is_empty() {
            out.push_str("\nresult: PASS (correctness checks)\n");
        } else {
            for f in &self.failures {
                out.push_str(&format!("\nFAIL: {f}"));
            }
            out.push_str("\nresult: FAIL\n");
        }
        out
    }

    /// The JSON report.
    pub fn to_json(&self) -> Value {
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|s| {
                let endpoints: serde_json::Map<String, Value> = s
                    .recorder
                    .endpoints
                    .iter()
                    .map(|(k, e)| (k.clone(), endpoint_json(e, s.elapsed)))
                    .collect();
                let hists: serde_json::Map<String, Value> = s
                    .recorder
                    .hists
                    .iter()
                    .map(|(k, h)| (k.clone(), h.summary().to_json()))
                    .collect();
                json!({
                    "name": s.name,
                    "elapsed_s": round3(s.elapsed.as_secs_f64()),
                    "requests_per_s": round3(s.rps()),
                    "total": endpoint_json(&s.recorder.total(), s.elapsed),
                    "endpoints": endpoints,
                    "histograms": hists,
                    "counters": s.recorder.counters,
                })
            })
            .collect();
        let figures: serde_json::Map<String, Value> = self
            .figures
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        json!({
            "scenario": self.scenario,
            "finished_at_unix_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            "params": self.params,
            "sections": sections,
            "figures": figures,
            "notes": self.notes,
            "failures": self.failures,
            "passed": self.passed(),
        })
    }

    /// Prints the tables and writes the JSON report when a path is given.
    pub fn finish(&self, path: Option<&Path>) -> anyhow::Result<()> {
        println!("{}", self.markdown());
        if let Some(path) = path {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let text = serde_json::to_string_pretty(&self.to_json())?;
            std::fs::write(path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            println!("report written to {}", path.display());
        }
        Ok(())
    }
}

fn endpoint_json(e: &Endpoint, elapsed: Duration) -> Value {
    let statuses: serde_json::Map<String, Value> = e
        .statuses
        .iter()
        .map(|(s, n)| (s.to_string(), json!(n)))
        .collect();
    json!({
        "requests": e.answered() + e.failures.values().sum::<u64>(),
        "answered": e.answered(),
        "errors": e.errors(),
        "unexpected_answers": e.unexpected,
        "requests_per_s": round3(per_second(e.answered(), elapsed)),
        "latency": e.hist.summary().to_json(),
        "statuses": statuses,
        "failures": e.failures,
        "bytes": e.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut h = Hist::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50 - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99 - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max - 100.0).abs() < 0.1, "{s:?}");
        let mut other = Hist::new();
        other.record(Duration::from_secs(1));
        h.merge(&other);
        assert_eq!(h.summary().count, 101);
    }

    #[test]
    fn markdown_has_rows_and_verdict() {
        let mut rec = Recorder::default();
        rec.reply(
            "GET /x",
            &Reply {
                status: 200,
                body: Default::default(),
                latency: Duration::from_millis(3),
                set_cookies: Vec::new(),
                replayed: false,
                retry_after: None,
            },
            true,
        );
        let mut r = Report::new("t", json!({}));
        r.sections.push(Section {
            name: "surge".into(),
            elapsed: Duration::from_secs(1),
            recorder: rec,
        });
        r.figure_int("orders", 1000);
        let md = r.markdown();
        assert!(md.contains("| surge | GET /x | 1 | 0 | 1 |"), "{md}");
        assert!(md.contains("| orders | 1,000 |"), "{md}");
        assert!(md.contains("PASS"));
        r.failures.push("oversell".into());
        assert!(r.markdown().contains("FAIL: oversell"));
        assert_eq!(r.to_json()["passed"], json!(false));
    }
}
