//! The monitoring that ships in `k8s/monitoring/` (Grafana dashboard, PrometheusRule
//! alerts, the prometheus-adapter rule behind the HPA) names only metrics, and labels,
//! that a live node exports on `/metrics`.
//!
//! Nothing registers metric names ahead of use: a series appears on its first update.
//! So the test first makes two nodes produce every series the monitoring reads (a
//! socket, reservations, a refusal, an order, bus traffic, a shed write, a rate-limited
//! write), then reads the exposition of one of them. The recorder is process-wide, so
//! that exposition also holds what the other node recorded.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::common::{
    make_sku, redis_url, test_commerce, test_live, test_rate_limits, ws_connect, ws_send, ws_wait,
    Buyer, Options, TestApp,
};

/// Series that Surge does not export but the monitoring rightly reads: kube-state-metrics
/// (the Deployment, and the stock-check CronJob and its Jobs). Anything else must come
/// from a node's `/metrics`.
const EXTERNAL: &[&str] = &[
    "kube_deployment_status_replicas_available",
    "kube_job_status_failed",
    "kube_cronjob_status_last_schedule_time",
];

/// Labels that Prometheus attaches when it scrapes a pod (the PodMonitor's target
/// labels), so a matcher on them is valid although `/metrics` does not carry them.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "container",
    "endpoint",
    "job",
    "instance",
];

/// PromQL words that look like metric names but are not.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Aggregation operators, which may be followed by `by (...)` before their arguments.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names, not of expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// One vector selector of an expression: the metric and the label names it matches on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    metric: String,
    labels: Vec<String>,
}

/// The vector selectors of a PromQL expression (function names, keywords, label lists,
/// strings, durations and numbers are skipped). Grafana's `$variables` may stand in
/// label values and range durations, where they are skipped with them.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<Selector> = Vec::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // The index just past the bracket that closes the one at `open`.
    let close = |open: usize, left: char, right: char| {
        let mut depth = 0;
        let mut j = open;
        while j < chars.len() {
            let c = chars[j];
            if c == '"' || c == '\'' || c == '`' {
                j += 1;
                while j < chars.len() && chars[j] != c {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
            } else if c == left {
                depth += 1;
            } else if c == right {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        panic!("unbalanced {left}{right} in {expr:?}");
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let end = close_quote(&chars, i, expr);
            i = end;
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c == '{' {
            // A selector with no metric name before it (`{__name__=...}`) is not used here.
            panic!("a selector without a metric name in {expr:?}");
        } else if c.is_ascii_digit() || c == '.' || c == '$' {
            // Numbers, durations (`5m`) and Grafana variables outside brackets.
            i += 1;
            while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if next < chars.len() && chars[next] == '(' {
                    i = close(next, '(', ')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) {
                // An operator word.
            } else if (next < chars.len() && chars[next] == '(')
                || AGGREGATIONS.contains(&lower.as_str())
            {
                // A function or an aggregation (`sum by (x) (...)` too): its arguments
                // are scanned in turn.
            } else {
                let mut labels = Vec::new();
                if next < chars.len() && chars[next] == '{' {
                    let end = close(next, '{', '}');
                    let inner: String = chars[next + 1..end - 1].iter().collect();
                    labels = matcher_labels(&inner, expr);
                    i = end;
                }
                out.push(Selector {
                    metric: word,
                    labels,
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The index just past the string literal that opens at `open`.
fn close_quote(chars: &[char], open: usize, expr: &str) -> usize {
    let quote = chars[open];
    let mut j = open + 1;
    while j < chars.len() {
        if chars[j] == '\\' {
            j += 2;
            continue;
        }
        if chars[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    panic!("unterminated string in {expr:?}");
}

/// The label names of the matchers inside `{...}`.
fn matcher_labels(inner: &str, expr: &str) -> Vec<String> {
    let chars: Vec<char> = inner.chars().collect();
    let mut labels = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        assert!(i > start, "a matcher without a label name in {expr:?}");
        labels.push(chars[start..i].iter().collect());
        while i < chars.len() && matches!(chars[i], ' ' | '=' | '!' | '~') {
            i += 1;
        }
        assert!(
            i < chars.len() && matches!(chars[i], '"' | '\'' | '`'),
            "a matcher without a quoted value in {expr:?}"
        );
        i = close_quote(&chars, i, expr);
    }
    labels
}

/// The expressions of a YAML file, given the key that holds them (`expr`,
/// `seriesQuery`): inline values, quoted or not, and block scalars (`|`, `>-`) read as
/// the more deeply indented lines below their key. Good enough for the files here,
/// which a YAML parser reads the same way (scripts/check-k8s.sh validates them).
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let prefix = format!("{key}:");
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(rest) = trimmed.strip_prefix(&prefix) else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" "));
        } else if let Some(v) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            out.push(v.replace("''", "'"));
        } else if let Some(v) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            out.push(v.replace("\\\"", "\""));
        } else {
            out.push(rest.to_owned());
        }
    }
    out
}

/// Every PromQL expression of the Grafana dashboard: panel targets (rows may nest
/// panels) and the templating queries (`label_values(selector, label)`: the selector).
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn panels(list: &serde_json::Value, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| {
                    panic!("a target of panel {:?} has no expr", panel["title"])
                });
                out.push(expr.to_owned());
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap_or_else(|| panic!("variable {:?} has no query", var["name"]));
        let args = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected variable query {query:?}"));
        let (selector, _label) = args
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("label_values without a label: {query:?}"));
        out.push(selector.trim().to_owned());
    }
    out
}

/// Sample names of the Prometheus text exposition, with their label names, and the
/// families' declared types (`# TYPE name histogram`).
fn exposition(text: &str) -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                families.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = samples.entry(name.to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let end = line.rfind('}').expect("a closed label set");
            for l in matcher_labels(&line[name_end + 1..end], line) {
                labels.insert(l);
            }
        }
    }
    (samples, families)
}

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

async fn scrape(app: &TestApp) -> String {
    let mut resp = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.body().limit(16 << 20).await.expect("metrics body");
    String::from_utf8(body.to_vec()).expect("utf-8 exposition")
}

/// Guards against a dashboard panel, an alert or the HPA's adapter rule that reads a
/// metric or label the server does not export (a renamed metric, a typo, `_bucket` of
/// a summary): such a panel stays empty and such an alert never fires, silently.
#[actix_web::test]
async fn monitoring_reads_only_what_a_node_exports() {
    // Node A sells; node B, on the same database and Redis bus, sheds every cart write
    // (shard queue of 0) and enforces the rate limits.
    let live = test_live();
    let a = TestApp::spawn(Options {
        seed_demo: false,
        live: live.clone(),
        redis_url: Some(redis_url()),
        ..Options::default()
    })
    .await;
    let b = TestApp::spawn(Options {
        seed_demo: false,
        database_url: Some(a.db.url.clone()),
        live,
        redis_url: Some(redis_url()),
        commerce: surge::config::CommerceConfig {
            shard_queue: 0,
            ..test_commerce()
        },
        // Five writes per client IP, then 429 rate_limited: whatever the session.
        rate_limits: surge::rate_limit::RateLimitConfig {
            ip_writes: surge::rate_limit::Rate {
                per_second: 0.001,
                burst: 5,
            },
            ..test_rate_limits(true)
        },
        ..Options::default()
    })
    .await;
    make_sku(&a, "DASH-1", 5).await;

    let mut socket = ws_connect(&a.base, None).await;
    ws_send(&mut socket, r#"{"op":"subscribe","skus":["DASH-1"]}"#).await;

    let mut buyer = Buyer::new(&a.base, a.http.clone());
    let (status, body) = buyer.set("DASH-1", 2).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = buyer.set("DASH-1", 6).await;
    assert_eq!(status, 409, "more than the stock is refused: {body}");
    let (status, body) = buyer.checkout("dash-order-1").await;
    assert_eq!(status, 201, "{body}");
    assert!(
        ws_wait(&mut socket, Duration::from_secs(5), |m| m["type"]
            == "stock")
        .await
        .is_some(),
        "the subscribed socket hears the stock change"
    );

    // B: the first writes are shed (429 busy) until the IP's burst is spent, then rate
    // limited (429 rate_limited).
    let mut shed = Buyer::new(&b.base, b.http.clone());
    let mut codes = BTreeSet::new();
    for _ in 0..8 {
        let (status, body) = shed.set("DASH-1", 1).await;
        assert_eq!(status, 429, "{body}");
        codes.insert(
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        codes.contains("busy") && codes.contains("rate_limited"),
        "both refusals happened: {codes:?}"
    );

    // B hears A's stock changes over Redis; the bus delivers asynchronously, so wait for
    // it (bounded: a bus that never delivers fails here, with this message).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&b).await;
        if text.lines().any(|l| l.starts_with("bus_received_total")) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "node B received nothing over the Redis bus within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (samples, families) = exposition(&text);

    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("k8s/monitoring/grafana-dashboard.json"))
            .expect("the dashboard is JSON");
    let adapter = repo_file("k8s/monitoring/prometheus-adapter.yaml");
    let sources: Vec<(&str, Vec<String>)> = vec![
        ("grafana-dashboard.json", dashboard_exprs(&dashboard)),
        (
            "prometheusrule.yaml",
            yaml_values(&repo_file("k8s/monitoring/prometheusrule.yaml"), "expr"),
        ),
        (
            "prometheus-adapter.yaml",
            yaml_values(&adapter, "seriesQuery"),
        ),
    ];

    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    for (file, exprs) in &sources {
        assert!(!exprs.is_empty(), "{file}: no expressions found");
        for expr in exprs {
            let found = selectors(expr);
            assert!(!found.is_empty(), "{file}: no metric in {expr:?}");
            for sel in found {
                if EXTERNAL.contains(&sel.metric.as_str()) {
                    continue;
                }
                checked.insert(sel.metric.clone());
                let Some(labels) = samples.get(&sel.metric) else {
                    problems.push(format!("{file}: `{}` is not exported ({expr})", sel.metric));
                    continue;
                };
                // `_bucket` exists only for histograms; `_sum`/`_count` for histograms and
                // summaries. The exposition's sample names already say which exist, and
                // this names the family's type when one is misread.
                if let Some(family) = sel.metric.strip_suffix("_bucket") {
                    let kind = families.get(family).map(String::as_str);
                    if kind != Some("histogram") {
                        problems.push(format!("{file}: `{family}` is a {kind:?}, not a histogram"));
                    }
                }
                for label in &sel.labels {
                    if label != "le"
                        && !TARGET_LABELS.contains(&label.as_str())
                        && !labels.contains(label)
                    {
                        problems.push(format!(
                            "{file}: `{}` has no label `{label}` (it has {labels:?})",
                            sel.metric
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The adapter serves the metric under the name the HPA asks for.
    assert!(
        adapter.contains("as: \"ws_open_sockets\""),
        "the adapter rule names its metric ws_open_sockets"
    );
    for metric in [
        "ws_open_sockets",
        "journal_commit_seconds_bucket",
        "shard_shed_total",
        "bus_connected",
        "db_pool_waiting",
    ] {
        assert!(checked.contains(metric), "the monitoring reads {metric}");
    }
    drop(socket);
    b.stop().await;
    a.stop().await;
}

#[test]
fn selectors_skip_functions_keywords_label_lists_and_durations() {
    // Guards the extractor itself: a name it missed would escape the check above.
    let found = selectors(
        r#"histogram_quantile(0.99, sum by (pod, le) (rate(journal_commit_seconds_bucket{namespace="$ns", pod=~"a{1}"}[$__rate_interval]))) > 0.25 and on (pod) bus_connected == 0 or vector(0)"#,
    );
    assert_eq!(
        found,
        vec![
            Selector {
                metric: "journal_commit_seconds_bucket".into(),
                labels: vec!["namespace".into(), "pod".into()],
            },
            Selector {
                metric: "bus_connected".into(),
                labels: vec![],
            },
        ]
    );
    let rules = "  - alert: X\n    expr: |\n      sum(rate(a_total[5m]))\n        / sum(rate(b_total[5m]))\n    for: 5m\n  - expr: 'c{x=\"1\"}'\n";
    assert_eq!(
        yaml_values(rules, "expr"),
        vec![
            "sum(rate(a_total[5m])) / sum(rate(b_total[5m]))".to_owned(),
            "c{x=\"1\"}".to_owned()
        ]
    );
}
