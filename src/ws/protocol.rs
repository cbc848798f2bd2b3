//! The live protocol's messages and limits, without IO (see docs/PROTOCOL.md).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Deserialize;

use surge_actors::validated::Sku;

use crate::live::message::{ErrorCode, ServerMessage, Welcome};

/// What [`Sku::parse`] accepts, as a regular expression for clients (the browser
/// filters SKUs with it before subscribing); a test holds the two together.
pub const SKU_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Receive stock of these SKUs.
    Subscribe {
        /// SKUs.
        skus: Vec<String>,
    },
    /// Stop receiving stock of these SKUs.
    Unsubscribe {
        /// SKUs.
        skus: Vec<String>,
    },
    /// Receive the campaign's report about once a second: the merchant's monitor. The
    /// admin token travels in the frame, so it never lands in a URL or an access log.
    Monitor {
        /// The campaign.
        campaign_id: uuid::Uuid,
        /// The admin token.
        token: String,
    },
    /// Stop receiving the campaign's report.
    Unmonitor {
        /// The campaign.
        campaign_id: uuid::Uuid,
    },
}

/// Why a client message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a message of the protocol (the socket stays open).
    Invalid(String),
}

/// Parses and validates one text frame.
pub fn parse(text: &str) -> Result<ClientMessage, Refusal> {
    let msg: ClientMessage =
        serde_json::from_str(text).map_err(|e| Refusal::Invalid(e.to_string()))?;
    if let ClientMessage::Subscribe { skus } | ClientMessage::Unsubscribe { skus } = &msg {
        if let Some(bad) = skus.iter().find(|s| Sku::parse(s).is_err()) {
            return Err(Refusal::Invalid(format!("{bad:?} is not a SKU")));
        }
    }
    Ok(msg)
}

/// The `error` answer to a `monitor` op with a wrong token.
pub fn unauthorized() -> ServerMessage {
    ServerMessage::Error {
        code: ErrorCode::Unauthorized,
        message: "the token is not the admin token".into(),
    }
}

/// The `error` answer to a `monitor` op for a campaign this node does not know.
pub fn unknown_campaign() -> ServerMessage {
    ServerMessage::Error {
        code: ErrorCode::NotFound,
        message: "no such campaign".into(),
    }
}

/// The `error` message sent for a refused frame.
pub fn error_message(refusal: &Refusal) -> ServerMessage {
    let Refusal::Invalid(detail) = refusal;
    ServerMessage::Error {
        code: ErrorCode::InvalidMessage,
        message: detail.clone(),
    }
}

/// The `welcome` message: the limits a client must keep to, from the server's own
/// settings, so that no client copies them.
pub fn welcome(limits: &WsLimits, coalesce_ms: u64) -> ServerMessage {
    ServerMessage::Welcome(Welcome {
        max_subscriptions: limits.max_subscriptions,
        coalesce_ms,
        max_frame: limits.max_frame,
        rate: limits.rate,
        burst: limits.burst,
        sku_pattern: SKU_PATTERN.to_owned(),
    })
}

/// A token bucket: `rate` messages per second with bursts up to `burst`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token; `false` when the client is over its rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Socket limits.
#[derive(Debug, Clone)]
pub struct WsLimits {
    /// Largest frame in bytes (larger closes with 1009).
    pub max_frame: usize,
    /// Most SKUs one socket may subscribe to (more closes with 1008).
    pub max_subscriptions: usize,
    /// Messages per second (more closes with 1008).
    pub rate: u32,
    /// Burst allowance.
    pub burst: u32,
    /// Ping interval.
    pub ping_every: Duration,
    /// A socket silent this long is closed.
    pub timeout: Duration,
    /// Messages queued for one socket before new ones are dropped.
    pub mailbox: usize,
    /// Origins allowed to open sockets; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Sockets one client IP may hold open at once on a node (more are refused 429).
    pub max_per_ip: usize,
}

/// Open sockets per client IP, so that one client cannot hold a node's sockets (and
/// their memory) without bound. A socket holds a [`SocketSlot`] for its life; the slot
/// gives its place back when dropped, whichever way the socket ends.
#[derive(Debug, Clone, Default)]
pub struct SocketsPerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One socket's place in its client IP's count.
#[derive(Debug)]
pub struct SocketSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl SocketsPerIp {
    /// A place for one more socket of `ip`, or `None` when it holds `max` already.
    pub fn acquire(&self, ip: IpAddr, max: usize) -> Option<SocketSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(SocketSlot {
            ip,
            open: Arc::clone(&self.open),
        })
    }

    /// Sockets `ip` holds open now.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // An IP with no socket costs no entry.
                open.remove(&self.ip);
            }
        }
    }
}

impl WsLimits {
    /// Messages queued for one socket before new ones are dropped: a socket that does
    /// not read is let go rather than allowed to grow the server's memory.
    pub const MAILBOX: usize = 256;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_ops_and_refuses_the_rest() {
        assert_eq!(
            parse(r#"{"op":"subscribe","skus":["A-1","B"]}"#),
            Ok(ClientMessage::Subscribe {
                skus: vec!["A-1".into(), "B".into()]
            })
        );
        assert!(matches!(
            parse(r#"{"op":"unsubscribe","skus":[]}"#),
            Ok(ClientMessage::Unsubscribe { .. })
        ));
        for bad in [
            "",
            "{",
            "[]",
            r#"{"op":"shout"}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"subscribe","skus":["a b"]}"#,
            r#"{"op":"subscribe","skus":[],"x":1}"#,
            r#"{"op":"monitor","campaign_id":"nope","token":"t"}"#,
            r#"{"op":"monitor","campaign_id":"00000000-0000-0000-0000-000000000001"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(error_message(&Refusal::Invalid("x".into()))
            .encode()
            .is_some_and(|text| text.contains("invalid_message")));
    }

    #[test]
    fn parses_the_monitor_ops() {
        // Guards against a monitor op that loses its token or campaign in parsing.
        let id = uuid::Uuid::from_u128(1);
        assert_eq!(
            parse(&format!(
                r#"{{"op":"monitor","campaign_id":"{id}","token":"s3cret"}}"#
            )),
            Ok(ClientMessage::Monitor {
                campaign_id: id,
                token: "s3cret".into()
            })
        );
        assert_eq!(
            parse(&format!(r#"{{"op":"unmonitor","campaign_id":"{id}"}}"#)),
            Ok(ClientMessage::Unmonitor { campaign_id: id })
        );
        assert!(unauthorized()
            .encode()
            .is_some_and(|text| text.contains(r#""code":"unauthorized""#)));
    }

    #[test]
    fn the_sku_pattern_accepts_exactly_the_valid_skus() {
        let pattern = regex_lite::Regex::new(SKU_PATTERN).expect("a valid pattern");
        let mut candidates: Vec<String> = [
            "",
            "A",
            "a-1",
            "TEE-M.blue_2",
            "-A",
            ".A",
            "_A",
            "A B",
            "A\n",
            "é",
            "A/B",
            "A+B",
            "9",
            "A-",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        candidates.extend(["A".repeat(63), "A".repeat(64), "A".repeat(65)]);
        // Every ASCII character, first and later in a SKU.
        for b in 0u8..128 {
            let c = char::from(b);
            candidates.push(format!("{c}A"));
            candidates.push(format!("A{c}"));
        }
        for sku in &candidates {
            assert_eq!(pattern.is_match(sku), Sku::parse(sku).is_ok(), "{sku:?}");
        }
    }

    /// Guards against a client IP passing its cap, against a closed socket keeping its
    /// place, and against the map keeping an entry for every IP ever seen.
    #[test]
    fn sockets_per_ip_are_capped_and_given_back() {
        let sockets = SocketsPerIp::default();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = sockets.acquire(a, 2).expect("first");
        let second = sockets.acquire(a, 2).expect("second");
        assert!(sockets.acquire(a, 2).is_none(), "a third is over the cap");
        assert!(
            sockets.acquire(b, 2).is_some(),
            "another IP has its own count"
        );
        drop(first);
        assert_eq!(sockets.open(a), 1);
        let third = sockets
            .acquire(a, 2)
            .expect("a closed socket's place is free again");
        drop((second, third));
        assert!(sockets.acquire(a, 0).is_none());
        assert!(
            sockets.open.lock().expect("lock").is_empty(),
            "no entry is left for IPs without sockets"
        );
    }

    #[test]
    fn welcome_carries_the_configured_limits() {
        let limits = WsLimits {
            max_frame: 1024,
            max_subscriptions: 5,
            rate: 7,
            burst: 9,
            ping_every: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            mailbox: WsLimits::MAILBOX,
            allowed_origins: Vec::new(),
            max_per_ip: 8,
        };
        let json = serde_json::to_value(welcome(&limits, 250)).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"type": "welcome", "max_subscriptions": 5, "coalesce_ms": 250,
                "max_frame": 1024, "rate": 7, "burst": 9, "sku_pattern": SKU_PATTERN})
        );
    }

    #[test]
    fn rate_limit_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(10, 5, t0);
        assert_eq!((0..5).filter(|_| rl.allow(t0)).count(), 5);
        assert!(!rl.allow(t0));
        assert!(
            rl.allow(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!rl.allow(t0 + Duration::from_millis(100)));
    }
}
