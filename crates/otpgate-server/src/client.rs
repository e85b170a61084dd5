//! Who the client is: the TCP peer's address, or, when the peer is one of
//! the configured trusted proxies (`http.trusted_proxies`), the address that
//! proxy reports in `X-Forwarded-For` or `Forwarded` (`http.client_ip_header`).
//! A header from any other peer is ignored: anyone can write one.
//!
//! The header's entries are read right to left (each proxy appends the
//! address it saw), skipping trusted proxies: the first untrusted address is
//! the client. An entry that cannot be read ends the walk at the last
//! trusted hop, which is then the client, so a mangled header can never
//! make up an address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::limits::ClientKey;

/// Which header a trusted proxy reports the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
}

/// The trusted proxies and the header they set.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub trusted: Vec<IpNet>,
    pub header: ForwardedHeader,
}

impl ProxyConfig {
    /// # Errors
    /// A sentence naming the setting when an entry or the header name is
    /// not understood.
    pub fn parse(trusted: &[String], header: &str) -> Result<Self, String> {
        let header = match header.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            other => {
                return Err(format!(
                    "http.client_ip_header must be \"x-forwarded-for\" or \"forwarded\", not {other:?}"
                ));
            }
        };
        let trusted = trusted
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "http.trusted_proxies: {s:?} is neither an address nor a CIDR block"
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { trusted, header })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.trusted.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        // Several header lines are one list, in order.
        let mut entries: Vec<&str> = Vec::new();
        for v in headers.get_all(name) {
            let Ok(v) = v.to_str() else { return peer };
            entries.extend(v.split(','));
        }
        let mut client = peer;
        for entry in entries.iter().rev() {
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_node(entry),
                ForwardedHeader::Forwarded => forwarded_for(entry).and_then(parse_node),
            };
            let Some(ip) = parsed else { return client };
            client = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The `for=` value of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v)
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `"[::1]:80"`,
/// `::1`. Obfuscated identifiers (`unknown`, `_hidden`) are not addresses.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// The client address and its throttling key, put into each request's
/// extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    pub key: ClientKey,
}

impl Client {
    pub fn new(ip: IpAddr) -> Self {
        Self {
            ip,
            key: ClientKey::new(ip),
        }
    }
}

/// The client as the server resolved it; without one (a router called
/// in-process), the TCP peer, else the unspecified address.
impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Client>() {
            return Ok(*c);
        }
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(Client::new(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn cfg(trusted: &[&str], header: &str) -> ProxyConfig {
        let t: Vec<String> = trusted.iter().map(|s| (*s).to_owned()).collect();
        ProxyConfig::parse(&t, header).expect("valid")
    }

    fn headers(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peers_header_is_ignored() {
        let c = cfg(&["10.0.0.0/8"], "x-forwarded-for");
        let h = headers("x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(c.client_ip(ip("192.0.2.9"), &h), ip("192.0.2.9"));
        let none = cfg(&[], "x-forwarded-for");
        assert_eq!(none.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let c = cfg(&["10.0.0.0/8", "127.0.0.1"], "x-forwarded-for");
        let h = headers("x-forwarded-for", &["6.6.6.6, 1.2.3.4", "10.1.1.1"]);
        assert_eq!(c.client_ip(ip("127.0.0.1"), &h), ip("1.2.3.4"));
        let h = headers("x-forwarded-for", &["10.2.2.2"]);
        assert_eq!(c.client_ip(ip("127.0.0.1"), &h), ip("10.2.2.2"));
        let h = headers("x-forwarded-for", &["1.2.3.4, garbage"]);
        assert_eq!(c.client_ip(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        assert_eq!(
            c.client_ip(ip("::ffff:127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn forwarded_is_read_when_configured() {
        let c = cfg(&["127.0.0.1"], "Forwarded");
        let h = headers(
            "forwarded",
            &["for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https"],
        );
        assert_eq!(c.client_ip(ip("127.0.0.1"), &h), ip("2001:db8::1"));
        let h = headers("forwarded", &["for=unknown"]);
        assert_eq!(c.client_ip(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        let xff = headers("x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(c.client_ip(ip("127.0.0.1"), &xff), ip("127.0.0.1"));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = ProxyConfig::parse(&["nope".into()], "x-forwarded-for").unwrap_err();
        assert!(e.contains("http.trusted_proxies"), "{e}");
        let e = ProxyConfig::parse(&[], "x-real-ip").unwrap_err();
        assert!(e.contains("http.client_ip_header"), "{e}");
    }
}
