//! The client address a request is counted against. `X-Forwarded-For` is believed only
//! when it was written by a proxy this node trusts: anyone else can put anything in it,
//! and a limit keyed on a header the client writes limits nothing.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use actix_web::{http::header::HeaderMap, HttpRequest};
use thiserror::Error;

/// A value of the trusted-proxy list that is neither an address nor a CIDR block.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{value:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8, fd00::/8)")]
pub struct BadProxy {
    /// The refused entry.
    pub value: String,
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = BadProxy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadProxy {
            value: s.to_owned(),
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net = IpAddr::from_str(addr).map_err(|_| bad())?.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        Ok(Self { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The proxies whose `X-Forwarded-For` is believed; empty believes none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and CIDR blocks.
    pub fn parse(list: &str) -> Result<Self, BadProxy> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client of a request that reached this node from `peer`: the right-most
    /// `X-Forwarded-For` address that is not a trusted proxy, as long as every hop to
    /// its right is trusted. Entries further left were written by the client and prove
    /// nothing. An entry that is not an address stops the walk at the hop to its right.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }

    /// The client of `req`; `None` when the connection has no peer address.
    pub fn client_of(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        Some(self.client(peer, req.headers()))
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`,
/// `[::1]:80`) as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    IpAddr::from_str(hop)
        .ok()
        .or_else(|| SocketAddr::from_str(hop).ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).expect("header"),
            );
        }
        h
    }

    #[test]
    fn ipv4_ipv6_and_cidr_blocks_parse_and_match() {
        let p = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8,::1").expect("valid");
        assert!(p.contains(ip("10.200.3.4")));
        assert!(!p.contains(ip("11.0.0.1")));
        assert!(p.contains(ip("192.168.1.7")));
        assert!(!p.contains(ip("192.168.1.8")));
        assert!(p.contains(ip("fd12:3456::1")));
        assert!(!p.contains(ip("fe80::1")));
        assert!(p.contains(ip("::1")));
        // An IPv4 peer seen through a dual-stack socket is still that IPv4 peer.
        assert!(p.contains(ip("::ffff:10.1.2.3")));
        let all = TrustedProxies::parse("0.0.0.0/0,::/0").expect("valid");
        assert!(all.contains(ip("8.8.8.8")) && all.contains(ip("2001:db8::1")));
        assert_eq!(
            TrustedProxies::parse("").expect("empty"),
            TrustedProxies::default()
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.1/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "proxy.local",
            "10.0.0",
            "1.2.3.4:80",
        ] {
            let err = TrustedProxies::parse(&format!("127.0.0.1,{bad}")).expect_err(bad);
            assert_eq!(err.value, bad);
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let none = TrustedProxies::default();
        let h = xff(&["203.0.113.9"]);
        assert_eq!(none.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
    }

    #[test]
    fn a_trusted_peer_names_the_right_most_untrusted_hop() {
        let p = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").expect("valid");
        let peer = ip("127.0.0.1");
        // The client forged the left-most entry; the proxies appended the real one.
        let h = xff(&["6.6.6.6, 203.0.113.9, 10.1.1.1"]);
        assert_eq!(p.client(peer, &h), ip("203.0.113.9"));
        // The same chain split over several headers.
        let h = xff(&["6.6.6.6", "203.0.113.9", "10.1.1.1"]);
        assert_eq!(p.client(peer, &h), ip("203.0.113.9"));
        // Ports and IPv6 hops.
        let h = xff(&["[2001:db8::7]:4711"]);
        assert_eq!(p.client(peer, &h), ip("2001:db8::7"));
        let h = xff(&["203.0.113.9:80"]);
        assert_eq!(p.client(peer, &h), ip("203.0.113.9"));
        // No header: the proxy itself.
        assert_eq!(p.client(peer, &HeaderMap::new()), peer);
        // Every hop trusted: the left-most of them.
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(p.client(peer, &h), ip("10.9.9.9"));
        // Garbage stops the walk at the last hop that was believed.
        let h = xff(&["203.0.113.9, unknown, 10.1.1.1"]);
        assert_eq!(p.client(peer, &h), ip("10.1.1.1"));
    }
}
