//! Which peers are trusted proxies (`trusted_proxies`, `ui_trusted_proxies`), and
//! who the client is behind them (issue 24).
//!
//! Decision: `X-Forwarded-For` is believed only from a trusted peer, and then read
//! from the right: the client is the right-most address that is not itself a
//! trusted proxy. The left part of the header is whatever the client sent, so
//! taking the left-most address would let anyone choose their own address (and
//! with it a fresh rate-limit bucket per request).

use std::net::IpAddr;

use ipnet::IpNet;

/// A list of networks whose peers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// These networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    /// Whether no proxy is trusted (then every header naming a client is ignored).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `peer` is a trusted proxy. An IPv4-mapped IPv6 peer counts as its
    /// IPv4 address.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.nets.iter().any(|n| n.contains(&peer))
    }

    /// The client of a request from `peer` carrying these `X-Forwarded-For` values
    /// (every header line, in order): `peer` itself unless it is trusted; else the
    /// right-most forwarded address that is not a trusted proxy (or, when all are,
    /// the left-most). A value that does not parse stops the walk there.
    pub fn client<'a>(&self, peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a str>) -> IpAddr {
        if !self.trusts(peer) {
            return canonical(peer);
        }
        let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect();
        let mut client = canonical(peer);
        for hop in hops.iter().rev() {
            let Some(addr) = parse_hop(hop) else { break };
            client = addr;
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]:80` or `::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(a) = hop.parse::<IpAddr>() {
        return Some(canonical(a));
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| canonical(s.ip()))
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_read_only_from_a_trusted_peer_and_from_the_right() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()]);
        // an untrusted peer names itself, whatever it sends
        assert_eq!(t.client(ip("203.0.113.9"), ["1.1.1.1"]), ip("203.0.113.9"));
        // a trusted ingress: the address it saw
        assert_eq!(t.client(ip("10.0.0.2"), ["198.51.100.7"]), ip("198.51.100.7"));
        // the client's own made-up left part is not believed
        assert_eq!(t.client(ip("10.0.0.2"), ["6.6.6.6, 198.51.100.7"]), ip("198.51.100.7"));
        // through two proxies, over two header lines
        assert_eq!(t.client(ip("127.0.0.1"), ["198.51.100.7", "10.0.0.3"]), ip("198.51.100.7"));
        // no header, or garbage: the proxy itself
        assert_eq!(t.client(ip("10.0.0.2"), []), ip("10.0.0.2"));
        assert_eq!(t.client(ip("10.0.0.2"), ["unknown"]), ip("10.0.0.2"));
        assert!(t.trusts(ip("::ffff:10.1.2.3")));
        assert!(!TrustedProxies::default().trusts(ip("127.0.0.1")));
    }
}
