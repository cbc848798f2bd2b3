//! Runtime configuration from flags and environment variables.
//!
//! Every setting has an environment variable so that a container can be configured
//! without a command line; a bad value stops startup with one line naming the variable.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, FromArgMatches, ValueEnum};
use thiserror::Error;

use crate::secret::Secret;

/// A configuration value that cannot be used, named by its environment variable.
#[derive(Debug, Error)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it and what is expected.
    pub message: String,
}

impl ConfigError {
    fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// How log lines are written: readable for a terminal, JSON for a log pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

/// Database settings shared by every subcommand that talks to PostgreSQL.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Primary PostgreSQL, e.g. postgres://user@host:5432/surge?sslmode=verify-full&sslrootcert=/ca.pem.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,
    /// Optional read replica for catalog reads; defaults to the primary.
    #[arg(
        long,
        env = "DATABASE_READ_URL",
        value_name = "DATABASE_READ_URL",
        hide_env_values = true
    )]
    pub database_read_url: Option<Secret>,
    /// Connections in the primary pool.
    #[arg(long, env = "SURGE_DB_POOL_SIZE", value_name = "SURGE_DB_POOL_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub db_pool_size: u16,
    /// Connections in the read-replica pool.
    #[arg(long, env = "SURGE_DB_READ_POOL_SIZE", value_name = "SURGE_DB_READ_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub db_read_pool_size: u16,
    /// Milliseconds one statement may run before PostgreSQL cancels it.
    #[arg(long, env = "SURGE_DB_STATEMENT_TIMEOUT_MS", value_name = "SURGE_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub db_statement_timeout_ms: u64,
    /// Milliseconds a statement may wait for a lock before it fails.
    #[arg(long, env = "SURGE_DB_LOCK_TIMEOUT_MS", value_name = "SURGE_DB_LOCK_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub db_lock_timeout_ms: u64,
    /// Milliseconds a session may sit idle inside a transaction before PostgreSQL ends it.
    #[arg(long, env = "SURGE_DB_IDLE_IN_TX_TIMEOUT_MS", value_name = "SURGE_DB_IDLE_IN_TX_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub db_idle_in_tx_timeout_ms: u64,
    /// Seconds a connection may be silent before TCP keepalive probes start (both ends).
    #[arg(long, env = "SURGE_DB_KEEPALIVE_SECS", value_name = "SURGE_DB_KEEPALIVE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub db_keepalive_secs: u64,
}

/// Limits every pooled connection sets on its session, so that a frozen, partitioned
/// or slow node cannot hold row locks for longer than a few seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// `statement_timeout`.
    pub statement_timeout: Duration,
    /// `lock_timeout`.
    pub lock_timeout: Duration,
    /// `idle_in_transaction_session_timeout`.
    pub idle_in_tx_timeout: Duration,
    /// TCP keepalive idle time; probes then follow every second, three times.
    pub keepalive: Duration,
}

/// Validated database settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Primary connection settings.
    pub primary: tokio_postgres::Config,
    /// Replica connection settings, when one is configured.
    pub replica: Option<tokio_postgres::Config>,
    /// Primary pool size.
    pub pool_size: usize,
    /// Replica pool size.
    pub read_pool_size: usize,
    /// Session limits of every connection.
    pub session: SessionLimits,
    /// Where the Journal connects instead of the primary (the same server seen through
    /// another address, e.g. a proxy); `None` for the primary.
    pub journal_via: Option<tokio_postgres::Config>,
    /// TLS of the primary and replica links, from the URLs' `sslmode` and `sslrootcert`.
    pub tls: DatabaseTls,
}

/// The TLS settings of each database link; the default is libpq's (`sslmode=prefer`,
/// nothing verified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseTls {
    /// The primary's, which the Journal's and the heartbeat's connections share.
    pub primary: crate::store::tls::PgTls,
    /// The replica's.
    pub replica: crate::store::tls::PgTls,
}

impl DatabaseTls {
    /// Clear text on every link (`sslmode=disable`), for benchmarks and test harnesses
    /// whose baseline or proxy must see the same bytes as before TLS existed.
    pub fn disabled() -> Self {
        let plain = crate::store::tls::PgTls {
            mode: crate::store::tls::SslMode::Disable,
            roots: crate::store::tls::Roots::Unset,
        };
        Self {
            primary: plain.clone(),
            replica: plain,
        }
    }
}

impl DatabaseArgs {
    /// Checks the URLs so that a typo fails at startup, not on the first request.
    pub fn validate(&self) -> Result<DatabaseConfig, ConfigError> {
        let url = self
            .database_url
            .as_ref()
            .map(Secret::expose)
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    "DATABASE_URL",
                    "not set; expected postgres://user@host:port/dbname",
                )
            })?;
        let (primary, primary_tls) = parse_pg_url("DATABASE_URL", url)?;
        let (replica, replica_tls) = match self.database_read_url.as_ref().map(Secret::expose) {
            Some(u) if !u.trim().is_empty() => {
                let (cfg, tls) = parse_pg_url("DATABASE_READ_URL", u)?;
                (Some(cfg), tls)
            }
            _ => (None, primary_tls.clone()),
        };
        Ok(DatabaseConfig {
            primary,
            replica,
            pool_size: usize::from(self.db_pool_size),
            read_pool_size: usize::from(self.db_read_pool_size),
            session: self.session(),
            journal_via: None,
            tls: DatabaseTls {
                primary: primary_tls,
                replica: replica_tls,
            },
        })
    }

    /// The session limits these flags ask for.
    pub fn session(&self) -> SessionLimits {
        SessionLimits {
            statement_timeout: Duration::from_millis(self.db_statement_timeout_ms),
            lock_timeout: Duration::from_millis(self.db_lock_timeout_ms),
            idle_in_tx_timeout: Duration::from_millis(self.db_idle_in_tx_timeout_ms),
            keepalive: Duration::from_secs(self.db_keepalive_secs),
        }
    }
}

/// Parses a PostgreSQL URL, whose TLS options are read here (tokio-postgres knows
/// only some of them); a CA file that cannot be used fails now, not at first connect.
fn parse_pg_url(
    var: &'static str,
    url: &str,
) -> Result<(tokio_postgres::Config, crate::store::tls::PgTls), ConfigError> {
    let (rest, tls) =
        crate::store::tls::split_pg_url(url).map_err(|e| ConfigError::new(var, e.to_string()))?;
    let mut cfg = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| ConfigError::new(var, format!("not a PostgreSQL URL ({e})")))?;
    if cfg.get_dbname().is_none() {
        return Err(ConfigError::new(var, "the URL names no database"));
    }
    cfg.ssl_mode(tls.mode.wire());
    tls.connector()
        .map_err(|e| ConfigError::new(var, e.to_string()))?;
    Ok((cfg, tls))
}

/// The defaults of a group of flags as their clap attributes state them, ignoring the
/// environment: those attributes are the one place a default is written, and tests and
/// tools that need "the defaults" take them from here.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("surge").no_binary_name(true))
        .mut_args(|a| a.env(None::<&str>));
    let matches = command
        .try_get_matches_from(std::iter::empty::<String>())
        .unwrap_or_else(|e| unreachable!("every flag has a default or is optional: {e}"));
    T::from_arg_matches(&matches).unwrap_or_else(|e| unreachable!("defaults convert: {e}"))
}

/// Settings of `surge serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Address and port to listen on.
    #[arg(
        long,
        env = "SURGE_BIND",
        value_name = "SURGE_BIND",
        default_value = "127.0.0.1:8080"
    )]
    pub bind: SocketAddr,
    /// Address and port of a listener of its own for /metrics (which the public listener then no longer serves); unset serves /metrics on SURGE_BIND.
    #[arg(long, env = "SURGE_METRICS_BIND", value_name = "SURGE_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Redis for the cross-node bus; without it the bus runs in-process (one node).
    #[arg(
        long,
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<Secret>,
    /// PEM file of the CA(s) a rediss:// server's certificate must chain to; unset trusts the system's roots.
    #[arg(long, env = "SURGE_REDIS_CA", value_name = "SURGE_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// This node's name in leases and logs; defaults to the hostname.
    #[arg(long, env = "SURGE_NODE_ID", value_name = "SURGE_NODE_ID")]
    pub node_id: Option<String>,
    /// Bearer token of the admin API; unset turns the admin API off.
    #[arg(
        long,
        env = "SURGE_ADMIN_TOKEN",
        value_name = "SURGE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<Secret>,
    /// Comma-separated keys of session cookies (each at least 32 bytes): the first signs, all verify; random per process when unset.
    #[arg(
        long,
        env = "SURGE_SESSION_KEY",
        value_name = "SURGE_SESSION_KEY",
        hide_env_values = true
    )]
    pub session_key: Option<Secret>,
    /// Mark session cookies Secure (set behind HTTPS).
    #[arg(
        long,
        env = "SURGE_COOKIE_SECURE",
        value_name = "SURGE_COOKIE_SECURE",
        default_value_t = false
    )]
    pub cookie_secure: bool,
    /// HTTP worker threads; defaults to the number of cores.
    #[arg(long, env = "SURGE_WORKERS", value_name = "SURGE_WORKERS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
    /// Largest accepted request body in bytes (larger gets 413).
    #[arg(long, env = "SURGE_BODY_LIMIT", value_name = "SURGE_BODY_LIMIT", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(256..=16 * 1024 * 1024))]
    pub body_limit: u32,
    /// Seconds between /readyz turning 503 and the listener closing, so load balancers notice.
    #[arg(
        long,
        env = "SURGE_DRAIN_DELAY_SECS",
        value_name = "SURGE_DRAIN_DELAY_SECS",
        default_value_t = 5
    )]
    pub drain_delay_secs: u64,
    /// Seconds in-flight requests get to finish after the listener closes.
    #[arg(
        long,
        env = "SURGE_SHUTDOWN_GRACE_SECS",
        value_name = "SURGE_SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,
    /// Seconds an idle keep-alive connection stays open. Longer than the idle timeout of
    /// the proxy in front (nginx and ingress-nginx keep upstream connections 60 s), so
    /// that the proxy, not the node, closes an idle one: a node that closes first races
    /// the proxy's next request on that connection, which the proxy answers `502`.
    #[arg(
        long,
        env = "SURGE_KEEP_ALIVE_SECS",
        value_name = "SURGE_KEEP_ALIVE_SECS",
        default_value_t = DEFAULT_KEEP_ALIVE_SECS
    )]
    pub keep_alive_secs: u64,
    /// Directory of the storefront; defaults to the copy built into the binary.
    #[arg(long, env = "SURGE_STATIC_DIR", value_name = "SURGE_STATIC_DIR")]
    pub static_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub commerce: CommerceArgs,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub rate_limits: RateLimitArgs,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Rate limits on cart and checkout writes and on new sessions. The defaults are far
/// above what a shopper does by hand (a few writes a second at most) and leave room for
/// many shoppers behind one carrier-grade NAT or office proxy, while a script hammering
/// checkout or minting sessions is stopped within a second.
#[derive(Debug, Clone, Args)]
pub struct RateLimitArgs {
    /// Rate limits on or off (tests and load tests driving many buyers from one IP turn them off).
    #[arg(long, env = "SURGE_RATE_LIMITS", value_name = "SURGE_RATE_LIMITS",
          value_enum, default_value_t = Switch::On)]
    pub rate_limits: Switch,
    /// Cart and checkout writes per second of one session.
    #[arg(long, env = "SURGE_RATE_SESSION_WRITES", value_name = "SURGE_RATE_SESSION_WRITES", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_session_writes: u32,
    /// Writes one session may make at once above its rate.
    #[arg(long, env = "SURGE_RATE_SESSION_BURST", value_name = "SURGE_RATE_SESSION_BURST", default_value_t = 40,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_session_burst: u32,
    /// Cart and checkout writes per second of one client IP, over all its sessions.
    #[arg(long, env = "SURGE_RATE_IP_WRITES", value_name = "SURGE_RATE_IP_WRITES", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_ip_writes: u32,
    /// Writes one client IP may make at once above its rate.
    #[arg(long, env = "SURGE_RATE_IP_BURST", value_name = "SURGE_RATE_IP_BURST", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_ip_burst: u32,
    /// Sessions created per minute for one client IP (all of them may come at once).
    #[arg(long, env = "SURGE_RATE_NEW_SESSIONS_PER_MIN", value_name = "SURGE_RATE_NEW_SESSIONS_PER_MIN", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_new_sessions_per_min: u32,
    /// Comma-separated IPs or CIDR blocks of proxies whose X-Forwarded-For names the client; empty trusts none.
    #[arg(
        long,
        env = "SURGE_TRUSTED_PROXIES",
        value_name = "SURGE_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: String,
}

impl RateLimitArgs {
    /// Parses the proxy list.
    pub fn validate(&self) -> Result<crate::rate_limit::RateLimitConfig, ConfigError> {
        use crate::rate_limit::{Rate, RateLimitConfig};
        let trusted_proxies = crate::client_ip::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError::new("SURGE_TRUSTED_PROXIES", e.to_string()))?;
        Ok(RateLimitConfig {
            enabled: self.rate_limits == Switch::On,
            session_writes: Rate {
                per_second: f64::from(self.rate_session_writes),
                burst: self.rate_session_burst,
            },
            ip_writes: Rate {
                per_second: f64::from(self.rate_ip_writes),
                burst: self.rate_ip_burst,
            },
            new_sessions: Rate::per_minute(self.rate_new_sessions_per_min),
            trusted_proxies,
        })
    }
}

/// WebSocket, hub and bus settings.
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    /// Largest WebSocket frame in bytes (larger closes with 1009).
    #[arg(long, env = "SURGE_WS_MAX_FRAME", value_name = "SURGE_WS_MAX_FRAME", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(128..=1_048_576))]
    pub ws_max_frame: u32,
    /// Most SKUs one socket may subscribe to (more closes with 1008).
    #[arg(long, env = "SURGE_WS_MAX_SUBSCRIPTIONS", value_name = "SURGE_WS_MAX_SUBSCRIPTIONS", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ws_max_subscriptions: u32,
    /// Sockets one client IP may hold open at once on a node (more are refused with 429).
    #[arg(long, env = "SURGE_WS_MAX_PER_IP", value_name = "SURGE_WS_MAX_PER_IP", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub ws_max_per_ip: u32,
    /// Seconds a connection may leave sent data unacknowledged, or face a closed receive
    /// window, before the kernel drops it (TCP_USER_TIMEOUT): a socket that stops reading
    /// cannot hold the node's memory and its place for ever. 0 keeps the system's default.
    #[arg(long, env = "SURGE_SEND_TIMEOUT_SECS", value_name = "SURGE_SEND_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub send_timeout_secs: u64,
    /// Client messages per second per socket (more closes with 1008).
    #[arg(long, env = "SURGE_WS_RATE", value_name = "SURGE_WS_RATE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ws_rate: u32,
    /// Burst of client messages allowed above the rate.
    #[arg(long, env = "SURGE_WS_BURST", value_name = "SURGE_WS_BURST", default_value_t = 40,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ws_burst: u32,
    /// Comma-separated origins allowed to open sockets (e.g. https://shop.example.com); empty allows the page's own origin (the Host the request names).
    #[arg(
        long,
        env = "SURGE_WS_ALLOWED_ORIGINS",
        value_name = "SURGE_WS_ALLOWED_ORIGINS",
        default_value = ""
    )]
    pub ws_allowed_origins: String,
    /// Seconds between server pings.
    #[arg(long, env = "SURGE_WS_PING_SECS", value_name = "SURGE_WS_PING_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ws_ping_secs: u64,
    /// A socket silent this many seconds is closed.
    #[arg(long, env = "SURGE_WS_TIMEOUT_SECS", value_name = "SURGE_WS_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ws_timeout_secs: u64,
    /// Milliseconds between stock messages for one SKU on one socket (coalescing).
    #[arg(long, env = "SURGE_COALESCE_MS", value_name = "SURGE_COALESCE_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub coalesce_ms: u64,
    /// Hub shards; defaults to the number of cores.
    #[arg(long, env = "SURGE_HUB_SHARDS", value_name = "SURGE_HUB_SHARDS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub hub_shards: Option<u16>,
    /// Seconds between stock and catalog resyncs from PostgreSQL (a safety net for lost bus
    /// messages): stock is reread, the catalog reloaded only if its version moved.
    #[arg(long, env = "SURGE_STOCK_RESYNC_SECS", value_name = "SURGE_STOCK_RESYNC_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stock_resync_secs: u64,
    /// Milliseconds before the bus first retries a lost Redis connection (doubling to 5 s).
    #[arg(long, env = "SURGE_BUS_RECONNECT_MS", value_name = "SURGE_BUS_RECONNECT_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub bus_reconnect_ms: u64,
    /// Prefix of the Redis channels, so several stores can share one Redis.
    #[arg(
        long,
        env = "SURGE_BUS_PREFIX",
        value_name = "SURGE_BUS_PREFIX",
        default_value = "surge"
    )]
    pub bus_prefix: String,
}

/// Validated live settings.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Socket limits.
    pub limits: crate::ws::protocol::WsLimits,
    /// Stock coalescing interval.
    pub coalesce: Duration,
    /// Hub shards.
    pub hub_shards: usize,
    /// Full resync period.
    pub resync: Duration,
    /// Redis channel prefix.
    pub bus_prefix: String,
    /// First reconnect delay of the bus.
    pub bus_reconnect: Duration,
    /// TCP_USER_TIMEOUT of every accepted connection; `None` keeps the system's.
    pub send_timeout: Option<Duration>,
}

impl LiveArgs {
    /// Checks origins and the prefix.
    pub fn validate(&self) -> Result<LiveConfig, ConfigError> {
        let origins: Vec<String> = self
            .ws_allowed_origins
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if let Some(bad) = origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(ConfigError::new(
                "SURGE_WS_ALLOWED_ORIGINS",
                format!("{bad:?} is not an http(s) origin"),
            ));
        }
        if self.bus_prefix.is_empty()
            || !self
                .bus_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::new(
                "SURGE_BUS_PREFIX",
                "use letters, digits, - and _",
            ));
        }
        Ok(LiveConfig {
            limits: crate::ws::protocol::WsLimits {
                max_frame: self.ws_max_frame as usize,
                max_subscriptions: self.ws_max_subscriptions as usize,
                rate: self.ws_rate,
                burst: self.ws_burst.max(1),
                ping_every: Duration::from_secs(self.ws_ping_secs),
                timeout: Duration::from_secs(self.ws_timeout_secs),
                allowed_origins: origins,
                mailbox: crate::ws::protocol::WsLimits::MAILBOX,
                max_per_ip: self.ws_max_per_ip as usize,
            },
            coalesce: Duration::from_millis(self.coalesce_ms),
            hub_shards: self.hub_shards.map(usize::from).unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
            }),
            resync: Duration::from_secs(self.stock_resync_secs),
            bus_prefix: self.bus_prefix.clone(),
            bus_reconnect: Duration::from_millis(self.bus_reconnect_ms),
            send_timeout: (self.send_timeout_secs > 0)
                .then(|| Duration::from_secs(self.send_timeout_secs)),
        })
    }
}

/// Stock, cart and Journal settings.
#[derive(Debug, Clone, Args)]
pub struct CommerceArgs {
    /// Seconds a cart reservation holds its units.
    #[arg(long, env = "SURGE_RESERVATION_TTL_SECS", value_name = "SURGE_RESERVATION_TTL_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub reservation_ttl_secs: u64,
    /// Largest quantity of one cart line.
    #[arg(long, env = "SURGE_MAX_LINE_QUANTITY", value_name = "SURGE_MAX_LINE_QUANTITY", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_line_quantity: u32,
    /// Inventory shard actors on this node; defaults to the number of cores.
    #[arg(long, env = "SURGE_SHARDS", value_name = "SURGE_SHARDS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub shards: Option<u16>,
    /// Requests queued on one shard beyond this are answered 429.
    #[arg(long, env = "SURGE_SHARD_QUEUE", value_name = "SURGE_SHARD_QUEUE", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub shard_queue: u32,
    /// Largest lease chunk a node takes from PostgreSQL at once.
    #[arg(long, env = "SURGE_LEASE_MAX_CHUNK", value_name = "SURGE_LEASE_MAX_CHUNK", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub lease_max_chunk: u32,
    /// Seconds a lease row lives without a heartbeat; a node silent this long is dead.
    #[arg(long, env = "SURGE_LEASE_TTL_SECS", value_name = "SURGE_LEASE_TTL_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl_secs: u64,
    /// Seconds an unused lease stays on this node before it goes back to PostgreSQL.
    #[arg(long, env = "SURGE_LEASE_IDLE_SECS", value_name = "SURGE_LEASE_IDLE_SECS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_idle_secs: u64,
    /// Milliseconds a node short of stock waits for other nodes to return theirs.
    #[arg(long, env = "SURGE_LEASE_RECALL_MS", value_name = "SURGE_LEASE_RECALL_MS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub lease_recall_ms: u64,
    /// Seconds between reaper passes.
    #[arg(long, env = "SURGE_REAPER_PERIOD_SECS", value_name = "SURGE_REAPER_PERIOD_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reaper_period_secs: u64,
    /// Seconds an empty cart's actor lives without a request.
    #[arg(long, env = "SURGE_CART_IDLE_SECS", value_name = "SURGE_CART_IDLE_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub cart_idle_secs: u64,
    /// Most cart actors live at once on a node; past it the least recently used one is
    /// passivated (its cart is in PostgreSQL and comes back on its next request).
    /// A live cart with a line costs about 2.5 KiB: the default bounds them near 130 MiB.
    #[arg(long, env = "SURGE_MAX_CART_ACTORS", value_name = "SURGE_MAX_CART_ACTORS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_cart_actors: u32,
    /// Seconds an empty cart row is kept after its last change before the purge job
    /// deletes it.
    #[arg(long, env = "SURGE_CART_RETENTION_SECS", value_name = "SURGE_CART_RETENTION_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub cart_retention_secs: u64,
    /// Most writes in one Journal transaction.
    #[arg(long, env = "SURGE_JOURNAL_MAX_BATCH", value_name = "SURGE_JOURNAL_MAX_BATCH", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub journal_max_batch: u32,
    /// Milliseconds a lone Journal write (nothing queued behind it) lingers for more.
    #[arg(long, env = "SURGE_JOURNAL_MAX_WAIT_MS", value_name = "SURGE_JOURNAL_MAX_WAIT_MS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub journal_max_wait_ms: u64,
    /// Connections of the Journal's own pool.
    #[arg(long, env = "SURGE_JOURNAL_POOL_SIZE", value_name = "SURGE_JOURNAL_POOL_SIZE", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub journal_pool_size: u16,
    /// Milliseconds a Journal batch may take, COMMIT included, before the Journal gives
    /// up on it (and, if COMMIT was sent, asks PostgreSQL what became of it).
    #[arg(long, env = "SURGE_JOURNAL_COMMIT_TIMEOUT_MS", value_name = "SURGE_JOURNAL_COMMIT_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub journal_commit_timeout_ms: u64,
    /// Seconds an admitted waiting-room session has to reserve before its turn lapses.
    #[arg(long, env = "SURGE_QUEUE_WINDOW_SECS", value_name = "SURGE_QUEUE_WINDOW_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub queue_window_secs: u64,
}

/// Validated stock, cart and Journal settings.
#[derive(Debug, Clone)]
pub struct CommerceConfig {
    /// Reservation lifetime.
    pub reservation_ttl: Duration,
    /// Largest line quantity.
    pub max_line_quantity: i64,
    /// Shard actors.
    pub shards: usize,
    /// Shard queue depth before 429.
    pub shard_queue: usize,
    /// Largest lease chunk.
    pub lease_max_chunk: i64,
    /// Lease lifetime without heartbeat.
    pub lease_ttl: Duration,
    /// Idle lease return.
    pub lease_idle: Duration,
    /// Longest wait for a recall to be answered.
    pub lease_recall: Duration,
    /// Reaper period.
    pub reaper_period: Duration,
    /// Idle cart lifetime.
    pub cart_idle: Duration,
    /// Most live cart actors.
    pub max_cart_actors: usize,
    /// Age after its last change at which an empty cart row is purged.
    pub cart_retention: Duration,
    /// Journal batch size.
    pub journal_max_batch: usize,
    /// Journal linger.
    pub journal_max_wait: Duration,
    /// Journal pool size.
    pub journal_pool_size: usize,
    /// Deadline of one Journal batch.
    pub journal_commit_timeout: Duration,
    /// How long an admitted waiting-room session may reserve.
    pub queue_window: Duration,
}

impl CommerceArgs {
    /// Converts to durations and counts.
    pub fn validate(&self) -> CommerceConfig {
        CommerceConfig {
            reservation_ttl: Duration::from_secs(self.reservation_ttl_secs),
            max_line_quantity: i64::from(self.max_line_quantity),
            shards: self.shards.map(usize::from).unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
            }),
            shard_queue: self.shard_queue as usize,
            lease_max_chunk: i64::from(self.lease_max_chunk),
            lease_ttl: Duration::from_secs(self.lease_ttl_secs),
            lease_idle: Duration::from_secs(self.lease_idle_secs),
            lease_recall: Duration::from_millis(self.lease_recall_ms),
            reaper_period: Duration::from_secs(self.reaper_period_secs),
            cart_idle: Duration::from_secs(self.cart_idle_secs),
            max_cart_actors: self.max_cart_actors as usize,
            cart_retention: Duration::from_secs(self.cart_retention_secs),
            journal_max_batch: self.journal_max_batch as usize,
            journal_max_wait: Duration::from_millis(self.journal_max_wait_ms),
            journal_pool_size: usize::from(self.journal_pool_size),
            journal_commit_timeout: Duration::from_millis(self.journal_commit_timeout_ms),
            queue_window: Duration::from_secs(self.queue_window_secs),
        }
    }
}

impl CommerceConfig {
    /// Each inventory shard's settings.
    pub fn shard(&self) -> surge_actors::shard::ShardConfig {
        use surge_actors::{shard::ShardConfig, stock::LeasePolicy};
        ShardConfig {
            policy: LeasePolicy {
                max_chunk: self.lease_max_chunk,
                spread: LeasePolicy::SPREAD,
            },
            idle_return: self.lease_idle,
            tick: ShardConfig::TICK,
            max_queue: self.shard_queue,
            recall_wait: self.lease_recall,
        }
    }

    /// What one cart may hold. A checkout refuses lines that lapse within a tenth of
    /// the TTL (at most a second), so that an expiry never races a checkout.
    pub fn cart_limits(&self) -> surge_actors::cart::CartLimits {
        use surge_actors::cart::CartLimits;
        let ttl_ms = i64::try_from(self.reservation_ttl.as_millis()).unwrap_or(i64::MAX);
        CartLimits {
            max_line_quantity: self.max_line_quantity,
            max_lines: CartLimits::MAX_LINES,
            reservation_ttl_ms: ttl_ms,
            checkout_margin_ms: (ttl_ms / 10).min(1000),
        }
    }
}

/// Default of `SURGE_KEEP_ALIVE_SECS`: above the 60 s for which nginx and ingress-nginx
/// keep idle upstream connections.
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 75;

/// Validated settings of a serving node.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Database settings.
    pub db: DatabaseConfig,
    /// Listen address.
    pub bind: SocketAddr,
    /// The private listener of /metrics; `None` serves it on `bind`.
    pub metrics_bind: Option<SocketAddr>,
    /// Redis URL for the cross-node bus (it may carry a password).
    pub redis_url: Option<Secret>,
    /// The only CAs trusted for a `rediss://` bus; `None` for the system's roots.
    pub redis_ca: Option<std::path::PathBuf>,
    /// This node's identity.
    pub node_id: String,
    /// Admin bearer token; `None` disables the admin API.
    pub admin_token: Option<Secret>,
    /// Session-cookie keys, comma-separated, the signing key first; `None` means
    /// generate one at startup.
    pub session_key: Option<Secret>,
    /// Whether session cookies are marked Secure.
    pub cookie_secure: bool,
    /// HTTP worker threads.
    pub workers: usize,
    /// Request body limit in bytes.
    pub body_limit: usize,
    /// Time between readiness going false and the listener closing.
    pub drain_delay: Duration,
    /// Time in-flight requests get to finish.
    pub shutdown_grace: Duration,
    /// Idle time after which a keep-alive connection is closed (`None`: never).
    pub keep_alive: Option<Duration>,
    /// Storefront directory override.
    pub static_dir: Option<std::path::PathBuf>,
    /// Stock, cart and Journal settings.
    pub commerce: CommerceConfig,
    /// WebSocket, hub and bus settings.
    pub live: LiveConfig,
    /// Rate limits and the proxies trusted to name the client.
    pub rate_limits: crate::rate_limit::RateLimitConfig,
}

impl ServeArgs {
    /// Validates every setting, naming the first bad variable.
    pub fn validate(&self) -> Result<ServeConfig, ConfigError> {
        let db = self.db.validate()?;
        let redis_url = match self.redis_url.as_ref().map(|u| u.expose().trim()) {
            None | Some("") => None,
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
                Some(Secret::new(u))
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "REDIS_URL",
                    "expected redis://host:port or rediss://host:port",
                ))
            }
        };
        let redis_ca = self.redis_ca.clone();
        if let Some(ca) = &redis_ca {
            let tls = redis_url
                .as_ref()
                .is_some_and(|u| u.expose().starts_with("rediss://"));
            if !tls {
                return Err(ConfigError::new(
                    "SURGE_REDIS_CA",
                    "is set but REDIS_URL is not a rediss:// URL",
                ));
            }
            crate::store::tls::redis_connector(Some(ca))
                .map_err(|e| ConfigError::new("SURGE_REDIS_CA", e.to_string()))?;
        }
        let node_id = match self.node_id.as_deref().map(str::trim) {
            Some("") => return Err(ConfigError::new("SURGE_NODE_ID", "is empty")),
            Some(id) => id.to_owned(),
            None => hostname(),
        };
        if node_id.len() > 128 || node_id.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "SURGE_NODE_ID",
                "must be at most 128 printable characters",
            ));
        }
        let admin_token = match self.admin_token.as_ref().map(Secret::expose) {
            None => None,
            Some(t) if t.len() < 16 => {
                return Err(ConfigError::new(
                    "SURGE_ADMIN_TOKEN",
                    "must be at least 16 characters (or unset to turn the admin API off)",
                ))
            }
            Some(t) => Some(Secret::new(t)),
        };
        let session_key = match self.session_key.as_ref().map(Secret::expose) {
            None => None,
            Some(k) if split_keys(k).any(|k| k.len() < 32) => {
                return Err(ConfigError::new(
                    "SURGE_SESSION_KEY",
                    "every comma-separated key must be at least 32 bytes",
                ))
            }
            Some(k) => Some(Secret::new(k)),
        };
        if self.metrics_bind == Some(self.bind) {
            return Err(ConfigError::new(
                "SURGE_METRICS_BIND",
                "must differ from SURGE_BIND",
            ));
        }
        if let Some(dir) = &self.static_dir {
            if !dir.is_dir() {
                return Err(ConfigError::new(
                    "SURGE_STATIC_DIR",
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        Ok(ServeConfig {
            db,
            bind: self.bind,
            metrics_bind: self.metrics_bind,
            redis_url,
            redis_ca,
            node_id,
            admin_token,
            session_key,
            cookie_secure: self.cookie_secure,
            workers: self.workers.map(usize::from).unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
            }),
            body_limit: self.body_limit as usize,
            drain_delay: Duration::from_secs(self.drain_delay_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            keep_alive: (self.keep_alive_secs > 0)
                .then(|| Duration::from_secs(self.keep_alive_secs)),
            static_dir: self.static_dir.clone(),
            commerce: self.commerce.validate(),
            live: self.live.validate()?,
            rate_limits: self.rate_limits.validate()?,
        })
    }
}

/// The keys of a `SURGE_SESSION_KEY` list, trimmed, in order.
fn split_keys(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim)
}

impl ServeConfig {
    /// The session-cookie keys, the signing key first; empty when none is set.
    pub fn session_keys(&self) -> Vec<Vec<u8>> {
        self.session_key
            .as_ref()
            .map(|list| {
                split_keys(list.expose())
                    .map(|k| k.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The kernel's hostname, which is the pod name under Kubernetes.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "surge-node".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let mut full = vec!["surge"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full)
            .expect("flags parse")
            .serve
            .validate()
    }

    #[test]
    fn missing_database_url_names_the_variable() {
        // Built directly, so that a DATABASE_URL in the environment cannot mask the case.
        let args = DatabaseArgs {
            database_url: None,
            database_read_url: None,
            ..defaults::<DatabaseArgs>()
        };
        let err = args.validate().expect_err("no database");
        assert_eq!(err.var, "DATABASE_URL");
        let err = DatabaseArgs {
            database_url: Some("  ".into()),
            ..args
        }
        .validate()
        .expect_err("blank database");
        assert_eq!(err.var, "DATABASE_URL");
    }

    #[test]
    fn database_url_without_dbname_is_refused() {
        let err = parse(&["--database-url", "postgres://u@h:5432"]).expect_err("no dbname");
        assert_eq!(err.var, "DATABASE_URL");
    }

    #[test]
    fn short_secrets_are_refused() {
        let db = "postgres://u@h:5432/d";
        let err = parse(&["--database-url", db, "--admin-token", "short"]).expect_err("short");
        assert_eq!(err.var, "SURGE_ADMIN_TOKEN");
        let err = parse(&["--database-url", db, "--session-key", "short"]).expect_err("short");
        assert_eq!(err.var, "SURGE_SESSION_KEY");
        let long = "k".repeat(32);
        let err = parse(&[
            "--database-url",
            db,
            "--session-key",
            &format!("{long},short"),
        ])
        .expect_err("a short key in the list");
        assert_eq!(err.var, "SURGE_SESSION_KEY");
        let err = parse(&["--database-url", db, "--session-key", &format!("{long},")])
            .expect_err("an empty key in the list");
        assert_eq!(err.var, "SURGE_SESSION_KEY");
        let err = parse(&["--database-url", db, "--redis-url", "http://x"]).expect_err("scheme");
        assert_eq!(err.var, "REDIS_URL");
    }

    // Guards against the TLS options being dropped on the way from the URL to the
    // pools (tokio-postgres alone refuses verify-* and ignores sslrootcert), and
    // against the replica silently taking the primary's settings when it has its own.
    #[test]
    fn database_urls_carry_their_own_tls_settings() {
        use crate::store::tls::{Roots, SslMode};
        let cfg = parse(&[
            "--database-url",
            "postgres://u@h:5432/d?sslmode=verify-full&sslrootcert=system",
            "--database-read-url",
            "postgres://u@r:5432/d?sslmode=require",
        ])
        .expect("valid");
        assert_eq!(cfg.db.tls.primary.mode, SslMode::VerifyFull);
        assert_eq!(cfg.db.tls.primary.roots, Roots::System);
        assert_eq!(cfg.db.tls.replica.mode, SslMode::Require);
        assert_eq!(
            cfg.db.primary.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let err =
            parse(&["--database-url", "postgres://u@h/d?sslmode=allow"]).expect_err("unknown mode");
        assert_eq!(err.var, "DATABASE_URL");
        assert!(err.message.contains("allow"), "{}", err.message);
        let err = parse(&[
            "--database-url",
            "postgres://u@h/d",
            "--database-read-url",
            "postgres://u@r/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
        ])
        .expect_err("missing CA file");
        assert_eq!(err.var, "DATABASE_READ_URL");
        assert!(
            err.message.contains("/nonexistent/ca.pem"),
            "{}",
            err.message
        );
    }

    // Guards against a Redis CA that is silently unused (a redis:// URL is clear
    // text) or unreadable, and against the URL's password reaching the message.
    #[test]
    fn a_redis_ca_needs_rediss_and_a_readable_file() {
        let db = "postgres://u@h:5432/d";
        let err = parse(&[
            "--database-url",
            db,
            "--redis-url",
            "redis://:hunter2-secret@h:6379",
            "--redis-ca",
            "/nonexistent/ca.pem",
        ])
        .expect_err("CA without TLS");
        assert_eq!(err.var, "SURGE_REDIS_CA");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = parse(&[
            "--database-url",
            db,
            "--redis-url",
            "rediss://:hunter2-secret@h:6380",
            "--redis-ca",
            "/nonexistent/ca.pem",
        ])
        .expect_err("unreadable CA");
        assert_eq!(err.var, "SURGE_REDIS_CA");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let cfg = parse(&["--database-url", db, "--redis-url", "rediss://h:6380"])
            .expect("rediss without a CA uses the system roots");
        assert_eq!(cfg.redis_ca, None);
    }

    #[test]
    fn defaults_are_usable() {
        let cfg = parse(&["--database-url", "postgres://u@h:5432/d"]).expect("valid");
        assert_eq!(cfg.bind.to_string(), "127.0.0.1:8080");
        assert!(cfg.admin_token.is_none());
        assert!(!cfg.node_id.is_empty());
        assert_eq!(cfg.body_limit, 16 * 1024);
        assert!(cfg.rate_limits.enabled, "rate limits are on by default");
        assert_eq!(
            cfg.rate_limits.trusted_proxies,
            crate::client_ip::TrustedProxies::default()
        );
    }

    #[test]
    fn bad_trusted_proxies_are_refused_at_startup() {
        let db = "postgres://u@h:5432/d";
        for bad in ["10.0.0.0/40", "localhost", "10.0.0.1,,fd00::/200"] {
            let err = parse(&["--database-url", db, "--trusted-proxies", bad]).expect_err(bad);
            assert_eq!(err.var, "SURGE_TRUSTED_PROXIES");
        }
        let cfg = parse(&["--database-url", db, "--trusted-proxies", "10.0.0.0/8, ::1"])
            .expect("valid list");
        assert!(cfg
            .rate_limits
            .trusted_proxies
            .contains("10.1.2.3".parse().expect("ip")));
        let cfg = parse(&["--database-url", db, "--rate-limits", "off"]).expect("off");
        assert!(!cfg.rate_limits.enabled);
    }
}
