//! Rate limits on cart and checkout writes (per session and per client IP) and on new
//! sessions (per client IP): keyed token buckets whose maps are bounded, so that an
//! attacker rotating addresses or cookies costs a fixed amount of memory.
//!
//! A bucket that has refilled to its burst is the same as no bucket, so such buckets
//! are dropped first when a map is full; only then do the longest-idle ones go.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, RandomState},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::client_ip::TrustedProxies;

/// A refill rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens a bucket holds (and its start).
    pub burst: u32,
}

impl Rate {
    /// `n` per minute, all of which may come at once.
    pub fn per_minute(n: u32) -> Self {
        Self {
            per_second: f64::from(n) / 60.0,
            burst: n,
        }
    }
}

/// Which limit refused a request: the `limit` label of `rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Cart and checkout writes of one session.
    SessionWrites,
    /// Cart and checkout writes of one client IP, over all its sessions.
    IpWrites,
    /// Sessions created for one client IP.
    NewSessions,
}

impl Limit {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::SessionWrites => "session_writes",
            Self::IpWrites => "ip_writes",
            Self::NewSessions => "new_sessions",
        }
    }
}

/// A refused request: the limit and how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The limit reached.
    pub limit: Limit,
    /// Whole seconds until a token is back (at least 1): the `Retry-After`.
    pub retry_after_secs: u64,
}

/// Validated rate-limit settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Off turns every limit off (tests and load tests driving many buyers from one IP).
    pub enabled: bool,
    /// Writes per session.
    pub session_writes: Rate,
    /// Writes per client IP.
    pub ip_writes: Rate,
    /// New sessions per client IP.
    pub new_sessions: Rate,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key, in shards so that workers rarely contend for one lock.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: Rate,
    per_shard: usize,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// Shards of every map.
    const SHARDS: usize = 16;

    /// Buckets at `rate`, at most about `max_keys` of them.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            per_shard: max_keys.div_ceil(Self::SHARDS).max(8),
            hasher: RandomState::new(),
            shards: (0..Self::SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes one token of `key`'s bucket at `now`, or says how long until there is one.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()];
        let mut map = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let burst = f64::from(self.rate.burst);
        if !map.contains_key(key) && map.len() >= self.per_shard {
            self.prune(&mut map, now);
        }
        let bucket = map.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate.per_second;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }

    /// Makes room in a full shard: drops the buckets that have refilled; if that frees
    /// less than an eighth, drops the longest idle too, so that the cost of the scan is
    /// spread over many inserts.
    fn prune(&self, map: &mut HashMap<K, Bucket>, now: Instant) {
        let burst = f64::from(self.rate.burst);
        let per_second = self.rate.per_second;
        map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second < burst
        });
        let target = self.per_shard - self.per_shard / 8;
        if map.len() > target {
            let mut ages: Vec<(Instant, K)> = map.iter().map(|(k, b)| (b.at, k.clone())).collect();
            let cut = map.len() - target;
            ages.select_nth_unstable_by_key(cut - 1, |(at, _)| *at);
            for (_, key) in &ages[..cut] {
                map.remove(key);
            }
        }
    }

    /// Keys held now (for tests and the bound).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The limits of one node; `None` buckets when limits are off.
#[derive(Debug)]
pub struct RateLimits {
    buckets: Option<Buckets>,
    proxies: TrustedProxies,
}

#[derive(Debug)]
struct Buckets {
    session_writes: KeyedBuckets<String>,
    ip_writes: KeyedBuckets<IpAddr>,
    new_sessions: KeyedBuckets<IpAddr>,
}

impl RateLimits {
    /// Keys each map holds at most: about 10 MB per map at the worst, far more live
    /// shoppers than one node serves at once.
    pub const MAX_KEYS: usize = 100_000;

    /// The limits `cfg` asks for.
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            buckets: cfg.enabled.then(|| Buckets {
                session_writes: KeyedBuckets::new(cfg.session_writes, Self::MAX_KEYS),
                ip_writes: KeyedBuckets::new(cfg.ip_writes, Self::MAX_KEYS),
                new_sessions: KeyedBuckets::new(cfg.new_sessions, Self::MAX_KEYS),
            }),
            proxies: cfg.trusted_proxies.clone(),
        }
    }

    /// Who the limits count a request against.
    pub fn proxies(&self) -> &TrustedProxies {
        &self.proxies
    }

    /// Counts one cart or checkout write of `session` from `ip`. The session is asked
    /// first, so that one session over its limit does not spend its neighbours' share
    /// of a shared IP.
    pub fn write(&self, session: &str, ip: Option<IpAddr>) -> Result<(), Refusal> {
        let Some(b) = &self.buckets else {
            return Ok(());
        };
        let now = Instant::now();
        b.session_writes
            .take(&session.to_owned(), now)
            .map_err(|wait| refused(Limit::SessionWrites, wait, ip))?;
        match ip {
            Some(ip) => b
                .ip_writes
                .take(&ip, now)
                .map_err(|wait| refused(Limit::IpWrites, wait, Some(ip))),
            None => Ok(()),
        }
    }

    /// Counts one session created for `ip`.
    pub fn new_session(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        match (&self.buckets, ip) {
            (Some(b), Some(ip)) => b
                .new_sessions
                .take(&ip, Instant::now())
                .map_err(|wait| refused(Limit::NewSessions, wait, Some(ip))),
            _ => Ok(()),
        }
    }
}

/// Counts and logs a refusal (at debug: under attack there is one per request).
fn refused(limit: Limit, wait: Duration, ip: Option<IpAddr>) -> Refusal {
    metrics::counter!("rate_limited_total", "limit" => limit.label()).increment(1);
    let retry_after_secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    tracing::debug!(
        limit = limit.label(),
        ip = ip.map(tracing::field::display),
        retry_after_secs,
        "rate limited"
    );
    Refusal {
        limit,
        retry_after_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let b = KeyedBuckets::new(rate(2.0, 3), 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.take(&"k", t0).expect("within the burst");
        }
        let wait = b.take(&"k", t0).expect_err("burst spent");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Another key is not affected.
        b.take(&"other", t0).expect("own bucket");
        b.take(&"k", t0 + Duration::from_millis(500))
            .expect("one token back after 1/rate");
        b.take(&"k", t0 + Duration::from_millis(500))
            .expect_err("only one");
        // A long pause refills to the burst, never beyond it.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            b.take(&"k", later).expect("refilled");
        }
        b.take(&"k", later).expect_err("capped at the burst");
    }

    #[test]
    fn rotating_keys_cannot_grow_the_map_beyond_its_bound() {
        let b = KeyedBuckets::new(rate(1.0, 5), 1_000);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            // Every key spends a token, so none is refilled when the map fills.
            let _ = b.take(&i, t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(
            b.len() <= 1_000 + KeyedBuckets::<u32>::SHARDS,
            "{}",
            b.len()
        );
    }

    #[test]
    fn a_busy_key_survives_a_flood_of_new_ones() {
        // The flood must not evict (and so reset) a key that is being limited.
        let b = KeyedBuckets::new(rate(1.0, 1), 160);
        let t0 = Instant::now();
        let at = |i: u32| t0 + Duration::from_micros(u64::from(i));
        b.take(&u32::MAX, t0).expect("first");
        for i in 1..2_000u32 {
            let _ = b.take(&i, at(i));
            if i % 10 == 0 {
                b.take(&u32::MAX, at(i))
                    .expect_err("still limited: its bucket was kept");
            }
        }
    }

    #[test]
    fn off_limits_nothing() {
        let cfg = RateLimitConfig {
            enabled: false,
            session_writes: rate(1.0, 1),
            ip_writes: rate(1.0, 1),
            new_sessions: Rate::per_minute(1),
            trusted_proxies: TrustedProxies::default(),
        };
        let limits = RateLimits::new(&cfg);
        let ip = Some("192.0.2.1".parse().expect("ip"));
        for _ in 0..100 {
            limits.write("s", ip).expect("off");
            limits.new_session(ip).expect("off");
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_from_the_refill() {
        let cfg = RateLimitConfig {
            enabled: true,
            session_writes: rate(1.0, 1),
            ip_writes: rate(1000.0, 1000),
            new_sessions: Rate::per_minute(2),
            trusted_proxies: TrustedProxies::default(),
        };
        let limits = RateLimits::new(&cfg);
        let ip = Some("192.0.2.1".parse().expect("ip"));
        limits.new_session(ip).expect("1");
        limits.new_session(ip).expect("2");
        let r = limits.new_session(ip).expect_err("3");
        assert_eq!(r.limit, Limit::NewSessions);
        assert_eq!(r.retry_after_secs, 30);
        limits.write("s", ip).expect("first");
        let r = limits.write("s", ip).expect_err("second within a second");
        assert_eq!((r.limit, r.retry_after_secs), (Limit::SessionWrites, 1));
    }
}
