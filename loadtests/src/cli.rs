//! Command-line arguments of `surge-loadtest`.

use std::{path::PathBuf, rc::Rc, time::Duration};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::util::{loopback_base_url, parse_duration, rss_kib};

/// Load-test instrument for Surge. Every scenario prints Markdown tables, writes a JSON
/// report with `--report`, and exits 1 when a correctness check fails (any 5xx; more
/// with `--strict`). Traffic goes only to 127.0.0.0/8.
#[derive(Debug, Parser)]
#[command(name = "surge-loadtest", version, about)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Product list pages and product pages, then the same generator against the HTTP
    /// ceiling; prints Surge's req/s as a ratio of the ceiling's.
    Browse(BrowseArgs),
    /// Sessions adding, changing and removing cart lines over demo SKUs with stock.
    Cart(CartArgs),
    /// A fresh SKU of `--units` units and `--buyers` buyers: exact orders, no oversell.
    FlashSale(FlashSaleArgs),
    /// WebSocket subscribers to one SKU, then stock changes: delivery latency, RSS.
    Fanout(FanoutArgs),
    /// A campaign with a waiting room and a per-customer limit: buyers join before the
    /// start, wait their turn, buy one unit each; spread, fairness, exactness.
    Campaign(CampaignArgs),
    /// A blend of browsing, cart changes and checkouts.
    Mixed(MixedArgs),
    /// A bare actix-web server (2 workers) answering static JSON, driven like `browse`.
    CeilingHttp(CeilingHttpArgs),
    /// COPY of order-like rows into PostgreSQL: committed rows per second.
    CeilingDb(CeilingDbArgs),
    /// Only serves the bare actix-web server (2 workers), with the very bytes `--url`
    /// answers for a product, the list of 24 and a storefront page (and its `304`), for
    /// `--duration`; prints its address. For external load generators such as wrk.
    CeilingServe(CeilingServeArgs),
}

impl Command {
    /// The options every scenario takes.
    pub fn common(&self) -> &Common {
        match self {
            Command::Browse(a) => &a.common,
            Command::Cart(a) => &a.common,
            Command::FlashSale(a) => &a.common,
            Command::Fanout(a) => &a.common,
            Command::Campaign(a) => &a.common,
            Command::Mixed(a) => &a.common,
            Command::CeilingHttp(a) => &a.common,
            Command::CeilingDb(a) => &a.common,
            Command::CeilingServe(a) => &a.common,
        }
    }
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Base URL of a Surge node; repeat (or separate with commas) for several nodes.
    /// Sessions are spread over them round-robin. Only 127.0.0.0/8 is accepted.
    #[arg(
        long = "url",
        env = "SURGE_LT_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,
    /// How long to generate load (10s, 500ms, 2m). For flash-sale and fanout: the
    /// deadline of the whole sale / run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests (sessions, buyers) in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// PID of the server process: its RSS (VmRSS) is reported before and after.
    #[arg(long, env = "SURGE_LT_SERVER_PID")]
    pub server_pid: Option<u32>,
    /// Load-generator threads, each with its own event loop and connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timeout of one request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Also fail on transport errors and unexpected statuses (for CI smoke runs).
    #[arg(long)]
    pub strict: bool,
}

impl Common {
    /// The base URLs, checked to be loopback, without trailing slashes.
    pub fn bases(&self) -> anyhow::Result<Vec<Rc<str>>> {
        anyhow::ensure!(!self.urls.is_empty(), "give at least one --url");
        self.urls
            .iter()
            .map(|u| loopback_base_url(u).map(Rc::from))
            .collect()
    }

    /// The base URLs as plain strings (to move into threads).
    pub fn base_strings(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.bases()?.iter().map(|b| b.to_string()).collect())
    }

    /// The server's RSS in KiB now, when `--server-pid` names a readable process.
    pub fn server_rss(&self) -> Option<u64> {
        self.server_pid.and_then(|p| rss_kib(p).ok())
    }

    /// The parameters for the JSON report.
    pub fn json(&self) -> Value {
        json!({
            "urls": self.urls,
            "duration_s": self.duration.as_secs_f64(),
            "concurrency": self.concurrency,
            "threads": self.threads,
            "timeout_s": self.timeout.as_secs_f64(),
            "server_pid": self.server_pid,
            "strict": self.strict,
        })
    }
}

/// `browse` options.
#[derive(Debug, Clone, Args)]
pub struct BrowseArgs {
    /// Common options.
    #[command(flatten)]
    pub common: Common,
    /// Percent of requests that are list pages (the rest are product pages).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub list_percent: u32,
}

/// `cart` options.
#[derive(Debug, Clone, Args)]
pub struct CartArgs {
    /// Common options.
    #[command(flatten)]
    pub common: Common,
    /// Cart operations per session before it empties its cart and starts a new one.
    #[arg(long, default_value_t = 20)]
    pub ops_per_session: usize,
    /// PostgreSQL for the COPY ceiling (skipped when unset).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// How long the COPY ceiling runs after the cart run (0 skips it).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub ceiling_db_duration: Duration,
}

/// `flash-sale` options.
#[derive(Debug, Clone, Args)]
pub struct FlashSaleArgs {
    /// Common options (`--duration` is the sale's deadline).
    #[command(flatten)]
    pub common: Common,
    /// Buyers, each with its own session.
    #[arg(long, default_value_t = 1000)]
    pub buyers: usize,
    /// Units of the new SKU.
    #[arg(long, default_value_t = 100)]
    pub units: i64,
    /// Bearer token of the admin API.
    #[arg(long, env = "SURGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// PostgreSQL of the nodes, for the stock invariant check.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// How long the COPY ceiling runs after the sale (0 skips it).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub ceiling_db_duration: Duration,
    /// Give every buyer its session and cart before the sale (`GET /api/cart`), as
    /// shoppers who were already on the site; the sale then measures stock decisions
    /// rather than cart creation.
    #[arg(long)]
    pub warm_sessions: bool,
}

/// `fanout` options.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Common options (`--duration` bounds the whole run; `--concurrency` is unused).
    #[command(flatten)]
    pub common: Common,
    /// WebSocket subscribers, spread over the `--url`s.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Stock changes to deliver.
    #[arg(long, default_value_t = 10)]
    pub changes: usize,
    /// Least time between two changes (at least the server's coalescing interval).
    #[arg(long, default_value = "150ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Source addresses for client sockets, e.g. 127.0.0.2,127.0.0.3 (each gives
    /// another ~28,000 ephemeral ports).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<String>,
    /// Most new connections per second.
    #[arg(long, default_value_t = 2000)]
    pub connect_rate: usize,
    /// Connections opened per batch.
    #[arg(long, default_value_t = 500)]
    pub connect_batch: usize,
    /// Bearer token of the admin API.
    #[arg(long, env = "SURGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Run fewer subscribers when the open-file limits cannot hold `--subscribers`
    /// (the report says how many and why) instead of refusing to start.
    #[arg(long)]
    pub fit_fd_limit: bool,
    /// How long to wait for late deliveries after the last change.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub grace: Duration,
}

/// `campaign` options.
#[derive(Debug, Clone, Args)]
pub struct CampaignArgs {
    /// Common options (`--duration`: the deadline of the sale, from the start;
    /// `--concurrency`: joins in flight).
    #[command(flatten)]
    pub common: Common,
    /// Buyers, each with its own session, all joining the queue before the start.
    #[arg(long, default_value_t = 20_000)]
    pub buyers: usize,
    /// Units of the campaign's only SKU.
    #[arg(long, default_value_t = 1_000)]
    pub units: i64,
    /// Sessions the waiting room admits per second.
    #[arg(long, default_value_t = 500)]
    pub admit_per_second: i64,
    /// Units one customer (normalized email) may buy.
    #[arg(long, default_value_t = 1)]
    pub per_customer_limit: i64,
    /// Percent of buyers whose email is a case or `+tag` variant of another buyer's.
    #[arg(long, default_value_t = 5.0)]
    pub shared_email_percent: f64,
    /// Buyers that wait on a WebSocket for their `queue` push (the rest poll); one
    /// socket each, so the open-file limit bounds it.
    #[arg(long, default_value_t = 2_000)]
    pub socket_sample: usize,
    /// HTTP connections the waiting buyers share (a crowd has one each; the open-file
    /// limit, shared with the sockets, bounds them here).
    #[arg(long, default_value_t = 512)]
    pub connections: usize,
    /// Least time between the last join and the start.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub lead: Duration,
    /// When the campaign starts, from its creation; by default `--lead` plus an
    /// allowance for the joins (`--join-rate`). The run fails if the joins are not done
    /// `--lead` before it.
    #[arg(long, value_parser = parse_duration)]
    pub starts_in: Option<Duration>,
    /// Joins per second the default `--starts-in` plans for.
    #[arg(long, default_value_t = 100)]
    pub join_rate: u64,
    /// Longest pause of a polling buyer between two looks at its place.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub poll_max: Duration,
    /// How long past its due time a socket buyer waits for its push before polling.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub socket_grace: Duration,
    /// Bearer token of the admin API.
    #[arg(long, env = "SURGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// PostgreSQL of the nodes, for the audit after the sale.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

impl CampaignArgs {
    /// When the campaign starts, from its creation.
    pub fn starts_in(&self) -> Duration {
        self.starts_in.unwrap_or_else(|| {
            let joins = self.buyers as f64 / self.join_rate.max(1) as f64;
            self.lead + Duration::from_secs_f64(joins + 1.0)
        })
    }
}

/// `mixed` options.
#[derive(Debug, Clone, Args)]
pub struct MixedArgs {
    /// Common options.
    #[command(flatten)]
    pub common: Common,
    /// Weight of browsing requests.
    #[arg(long, default_value_t = 70)]
    pub browse: u32,
    /// Weight of cart changes.
    #[arg(long, default_value_t = 20)]
    pub cart: u32,
    /// Weight of checkouts (reserve one unit, then check out).
    #[arg(long, default_value_t = 10)]
    pub checkout: u32,
}

/// `ceiling-http` options.
#[derive(Debug, Clone, Args)]
pub struct CeilingHttpArgs {
    /// Common options (`--url` is fetched once for body sizes and slugs).
    #[command(flatten)]
    pub common: Common,
    /// Body size of every answer; by default the sizes of Surge's own product page and
    /// list page, fetched from `--url`.
    #[arg(long)]
    pub body_bytes: Option<usize>,
    /// Percent of requests that are list pages (as in `browse`).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub list_percent: u32,
}

/// `ceiling-serve` options.
#[derive(Debug, Clone, Args)]
pub struct CeilingServeArgs {
    /// Common options (`--url` is fetched once for the bodies; `--duration` is how long
    /// to serve).
    #[command(flatten)]
    pub common: Common,
    /// The product whose page is served; by default the first of the list.
    #[arg(long)]
    pub slug: Option<String>,
    /// The storefront page served at every path outside `/api/products`.
    #[arg(long, default_value = "/")]
    pub page: String,
}

/// `ceiling-db` options.
#[derive(Debug, Clone, Args)]
pub struct CeilingDbArgs {
    /// Common options (`--concurrency` is the number of COPY connections).
    #[command(flatten)]
    pub common: Common,
    /// PostgreSQL to write to (a throwaway schema is created and dropped).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Rows per COPY; each COPY is one committed transaction.
    #[arg(long, default_value_t = 512)]
    pub batch_rows: usize,
}
