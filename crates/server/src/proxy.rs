//! `--trusted-proxy`: believe `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`
//! only from the proxies named. Any client can send those headers, so by default pyfcgi passes
//! them to the app as plain `HTTP_X_FORWARDED_*` values and changes nothing; when the web
//! server's `REMOTE_ADDR` (the peer that connected to it) is a trusted proxy, the request's
//! `REMOTE_ADDR`, scheme and `HTTP_HOST` are taken from the headers instead, the way that
//! proxy set them.
//!
//! `X-Forwarded-For` is read from the right: the nearest hop is the trusted proxy's own
//! entry, and the first address that is not a trusted proxy is the client. Entries to its
//! left were written by the client and are ignored. `X-Original-URL` is never applied.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use pyfcgi_proto::Params;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `--trusted-proxy` entry that is neither an address nor a CIDR network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or network (like 10.0.0.1, 10.0.0.0/8, ::1 or fd00::/8)")]
pub struct BadProxy(pub String);

impl FromStr for TrustedProxies {
    type Err = BadProxy;

    /// Comma-separated addresses and networks.
    fn from_str(s: &str) -> Result<Self, BadProxy> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => part
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| BadProxy(part.to_owned()))?,
            };
            nets.push(net);
        }
        if nets.is_empty() {
            return Err(BadProxy(s.to_owned()));
        }
        Ok(Self(nets))
    }
}

impl TrustedProxies {
    /// Adds the entries of `other`.
    pub fn extend(&mut self, other: &Self) {
        self.0.extend(other.0.iter().copied());
    }

    /// Whether `addr` (an IP, with an IPv4-mapped IPv6 address taken as IPv4) is trusted.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        self.0.iter().any(|n| n.contains(&addr))
    }

    fn contains_str(&self, s: &str) -> bool {
        parse_addr(s).is_some_and(|a| self.contains(a))
    }

    /// The params with the forwarding headers applied, or `None` when the peer is not trusted
    /// or sent none of them.
    pub fn rewrite(&self, params: &Params) -> Option<Params> {
        let peer = params.get_str("REMOTE_ADDR")?;
        if !self.contains_str(peer) {
            return None;
        }
        let values = |name: &[u8]| -> Vec<String> {
            params
                .iter()
                .filter(|(n, _)| *n == name)
                .flat_map(|(_, v)| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .collect::<Vec<_>>()
                })
                .filter(|s| !s.is_empty())
                .collect()
        };
        let forwarded_for = values(b"HTTP_X_FORWARDED_FOR");
        let client = forwarded_for
            .iter()
            .rev()
            .find(|a| !self.contains_str(a))
            .or_else(|| forwarded_for.first())
            .and_then(|a| parse_addr(a));
        let proto = values(b"HTTP_X_FORWARDED_PROTO")
            .pop()
            .map(|p| p.to_ascii_lowercase())
            .filter(|p| p == "http" || p == "https");
        let host = values(b"HTTP_X_FORWARDED_HOST")
            .pop()
            .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()));
        if client.is_none() && proto.is_none() && host.is_none() {
            return None;
        }
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(params.len() + 2);
        for (n, v) in params.iter() {
            let replaced = match n {
                b"REMOTE_ADDR" | b"REMOTE_PORT" => client.is_some(),
                b"HTTPS" | b"REQUEST_SCHEME" => proto.is_some(),
                b"HTTP_HOST" => host.is_some(),
                _ => false,
            };
            if !replaced {
                out.push((n.to_vec(), v.to_vec()));
            }
        }
        if let Some(c) = client {
            out.push((b"REMOTE_ADDR".to_vec(), c.to_string().into_bytes()));
        }
        if let Some(p) = proto {
            if p == "https" {
                out.push((b"HTTPS".to_vec(), b"on".to_vec()));
            }
            out.push((b"REQUEST_SCHEME".to_vec(), p.into_bytes()));
        }
        if let Some(h) = host {
            out.push((b"HTTP_HOST".to_vec(), h.into_bytes()));
        }
        Params::from_pairs(out).ok()
    }
}

/// `1.2.3.4`, `::1`, `[::1]`, `1.2.3.4:5678` or `[::1]:5678`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|a| a.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))).unwrap()
    }

    #[test]
    fn entries_parse_and_match() {
        let t: TrustedProxies = "127.0.0.1, 10.0.0.0/8,::1".parse().unwrap();
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(t.contains("10.2.3.4".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("::ffff:10.0.0.9".parse().unwrap()));
        assert!(!t.contains("192.0.2.1".parse().unwrap()));
        for bad in ["", "localhost", "10.0.0.0/33", "1.2.3"] {
            assert!(bad.parse::<TrustedProxies>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_untrusted_peer_changes_nothing() {
        let t: TrustedProxies = "10.0.0.1".parse().unwrap();
        let p = params(&[
            ("REMOTE_ADDR", "192.0.2.9"),
            ("HTTP_X_FORWARDED_FOR", "1.1.1.1"),
            ("HTTP_X_FORWARDED_PROTO", "https"),
        ]);
        assert_eq!(t.rewrite(&p), None);
    }

    #[test]
    fn a_trusted_peer_gives_the_client_scheme_and_host() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let p = params(&[
            ("REMOTE_ADDR", "10.0.0.1"),
            ("REMOTE_PORT", "4444"),
            ("HTTP_HOST", "backend:8080"),
            // The client forged the first entry; 10.0.0.7 is a second trusted hop.
            ("HTTP_X_FORWARDED_FOR", "6.6.6.6, 203.0.113.5"),
            ("HTTP_X_FORWARDED_FOR", "10.0.0.7"),
            ("HTTP_X_FORWARDED_PROTO", "https"),
            ("HTTP_X_FORWARDED_HOST", "www.example.com"),
        ]);
        let r = t.rewrite(&p).unwrap();
        assert_eq!(r.get_str("REMOTE_ADDR"), Some("203.0.113.5"));
        assert_eq!(r.get(b"REMOTE_PORT"), None);
        assert_eq!(r.get_str("HTTPS"), Some("on"));
        assert_eq!(r.get_str("REQUEST_SCHEME"), Some("https"));
        assert_eq!(r.get_str("HTTP_HOST"), Some("www.example.com"));
        // Garbage in the headers is ignored, not applied.
        let p = params(&[
            ("REMOTE_ADDR", "10.0.0.1"),
            ("HTTP_X_FORWARDED_FOR", "not-an-ip"),
            ("HTTP_X_FORWARDED_PROTO", "gopher"),
        ]);
        assert_eq!(t.rewrite(&p), None);
    }
}
