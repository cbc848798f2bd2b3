//! Small helpers: duration parsing, a fast non-cryptographic random generator, the
//! loopback-only guard, and what `/proc` tells about a process (RSS, open-file limit).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{bail, Context as _};

/// Parses `10`, `10s`, `500ms`, `2m` or `1h` into a duration (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0 to 24h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// xorshift64*: fast, good enough to pick SKUs and jitter, not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the OS (through a v4 UUID), mixed with `salt`.
    pub fn new(salt: u64) -> Self {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0 ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }

    /// A random element, if any.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// Checks that `url` is `http://` to an address in 127.0.0.0/8, `localhost` or `[::1]`,
/// and returns it without a trailing slash. The instrument sends nothing anywhere else.
pub fn loopback_base_url(url: &str) -> anyhow::Result<String> {
    let uri: awc::http::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url}: only http:// base URLs are supported");
    }
    let host = uri.host().with_context(|| format!("{url}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().map(is_loopback).unwrap_or(false);
    if !ok {
        bail!("{url}: the load generator only sends traffic to 127.0.0.0/8, localhost or [::1]");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Parses a comma-separated list of source addresses; each must be in 127.0.0.0/8.
pub fn loopback_sources(list: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: Ipv4Addr = part
            .parse()
            .with_context(|| format!("{part:?} is not an IPv4 address"))?;
        if ip.octets()[0] != 127 {
            bail!("source address {ip} is not in 127.0.0.0/8");
        }
        out.push(IpAddr::V4(ip));
    }
    Ok(out)
}

/// Resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the server pid right?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The soft and hard open-file limits of a process (`self` or a pid), from `/proc`.
pub fn open_file_limits(pid: Option<u32>) -> anyhow::Result<(u64, u64)> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/limits"),
        None => "/proc/self/limits".to_owned(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .with_context(|| format!("no 'Max open files' in {path}"))?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| {
            if w == "unlimited" {
                Some(u64::MAX)
            } else {
                w.parse().ok()
            }
        })
        .collect();
    match nums.as_slice() {
        [soft, hard, ..] => Ok((*soft, *hard)),
        _ => bail!("cannot read the open-file limits from {path}"),
    }
}

/// Formats an integer with thousands separators.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn only_loopback() {
        assert!(loopback_base_url("http://127.0.0.1:8080/").is_ok());
        assert!(loopback_base_url("http://127.3.0.9:1").is_ok());
        assert!(loopback_base_url("http://localhost:8080").is_ok());
        assert!(loopback_base_url("http://[::1]:8080").is_ok());
        assert!(loopback_base_url("http://10.0.0.1:8080").is_err());
        assert!(loopback_base_url("http://example.com").is_err());
        assert!(loopback_base_url("https://127.0.0.1").is_err());
        assert!(loopback_sources("127.0.0.2,127.0.0.3").is_ok());
        assert!(loopback_sources("192.168.1.1").is_err());
    }

    #[test]
    fn separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn rng_in_range() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
        }
        assert_eq!(r.below(0), 0);
    }
}
