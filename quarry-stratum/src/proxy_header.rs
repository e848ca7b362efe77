//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms) that a load balancer puts
//! before a connection's first byte, naming the client it accepted. Parsed with the `ppp`
//! crate; this module only bounds it and turns it into the client's address.
//!
//! Sans-IO: feed the bytes read so far, get "need more", the header's length and client, or
//! why it is not a header.

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};

/// Longest header accepted. v2 allows 64 KiB of TLVs; load balancers send well under 1 KiB.
pub const MAX_HEADER_LEN: usize = 4096;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Not enough bytes yet.
    NeedMore,
    /// A complete header of `len` bytes; `client` is the address it names (`None` for v1
    /// UNKNOWN, a v2 LOCAL command such as a health check, or a non-IP family).
    Complete {
        /// Bytes the header takes; the protocol starts after them.
        len: usize,
        /// The client behind the proxy.
        client: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a malformed one.
    Invalid(String),
}

/// v1: `PROXY ...\r\n`, at most 107 bytes in all.
const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX_LEN: usize = 107;
/// v2: this signature, then version/command, family/protocol and a big-endian length.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;

/// Parses the start of `buf`. The header's extent is found here (the v1 line's CRLF, the v2
/// length field), so `ppp` always sees exactly one whole header.
pub fn parse(buf: &[u8]) -> ProxyHeader {
    let is_prefix = |sig: &[u8]| buf.len() < sig.len() && sig.starts_with(buf);
    if is_prefix(V1_PREFIX) || is_prefix(V2_SIGNATURE) {
        return ProxyHeader::NeedMore;
    }
    if buf.starts_with(V1_PREFIX) {
        let window = &buf[..buf.len().min(V1_MAX_LEN)];
        let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
            return match buf.len() < V1_MAX_LEN {
                true => ProxyHeader::NeedMore,
                false => ProxyHeader::Invalid("PROXY v1 line longer than 107 bytes".into()),
            };
        };
        let line = &buf[..end + 2];
        return match v1::Header::try_from(line) {
            Ok(header) => ProxyHeader::Complete {
                len: line.len(),
                client: match header.addresses {
                    v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    v1::Addresses::Unknown => None,
                },
            },
            Err(e) => ProxyHeader::Invalid(format!("PROXY v1: {e}")),
        };
    }
    if buf.starts_with(V2_SIGNATURE) {
        let Some(length) = buf.get(14..16) else {
            return ProxyHeader::NeedMore;
        };
        let len = V2_FIXED_LEN + usize::from(u16::from_be_bytes([length[0], length[1]]));
        if len > MAX_HEADER_LEN {
            return ProxyHeader::Invalid(format!(
                "PROXY v2 header of {len} bytes (at most {MAX_HEADER_LEN})"
            ));
        }
        let Some(whole) = buf.get(..len) else {
            return ProxyHeader::NeedMore;
        };
        return match v2::Header::try_from(whole) {
            Ok(header) => ProxyHeader::Complete {
                len,
                client: match (header.command, header.addresses) {
                    (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    _ => None,
                },
            },
            Err(e) => ProxyHeader::Invalid(format!("PROXY v2: {e}")),
        };
    }
    ProxyHeader::Invalid("no PROXY protocol header".into())
}

/// Address ranges whose connections carry a PROXY header (`10.0.0.0/8`, `192.0.2.7`,
/// `2001:db8::/32`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses CIDR ranges or single addresses.
    ///
    /// # Errors
    /// A range that is not an address with an optional prefix length that fits it.
    pub fn parse<S: AsRef<str>>(ranges: &[S]) -> Result<TrustedProxies, String> {
        let mut out = Vec::new();
        for range in ranges {
            let range = range.as_ref().trim();
            let (address, prefix) = match range.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (range, None),
            };
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("'{range}' is not an address or CIDR range"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("'{range}': prefix length must be 0..={max}"))?,
                None => max,
            };
            out.push((address, prefix));
        }
        Ok(TrustedProxies(out))
    }

    /// Whether `ip` is in one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(net, prefix)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }

    /// True when no range is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers_name_the_client_and_their_length() {
        let line = b"PROXY TCP4 203.0.113.9 192.0.2.1 51234 3333\r\n";
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"{\"id\":1}\n");
        assert_eq!(
            parse(&bytes),
            ProxyHeader::Complete {
                len: line.len(),
                client: Some("203.0.113.9:51234".parse().expect("address")),
            }
        );
        for cut in 1..line.len() {
            assert_eq!(parse(&line[..cut]), ProxyHeader::NeedMore, "{cut} bytes");
        }
        assert!(matches!(
            parse(b"PROXY UNKNOWN\r\n"),
            ProxyHeader::Complete { client: None, .. }
        ));
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 3333\r\n";
        assert_eq!(
            parse(v6),
            ProxyHeader::Complete {
                len: v6.len(),
                client: Some("[2001:db8::1]:4000".parse().expect("address")),
            }
        );
    }

    #[test]
    fn v2_headers_name_the_client_and_local_is_a_health_check() {
        let client: SocketAddr = "198.51.100.4:40000".parse().expect("address");
        let server: SocketAddr = "192.0.2.1:3333".parse().expect("address");
        let header = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, server),
        )
        .write_tlv(v2::Type::NoOp, b"padding")
        .and_then(v2::Builder::build)
        .expect("header");
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"rest");
        assert_eq!(
            parse(&bytes),
            ProxyHeader::Complete {
                len: header.len(),
                client: Some(client),
            }
        );
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), ProxyHeader::NeedMore, "{cut} bytes");
        }
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .expect("header");
        assert!(matches!(
            parse(&local),
            ProxyHeader::Complete { client: None, .. }
        ));
    }

    #[test]
    fn anything_else_is_refused_and_the_search_is_bounded() {
        assert!(matches!(
            parse(b"{\"id\":1,\"method\":\"mining.subscribe\"}\n"),
            ProxyHeader::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense\r\n"),
            ProxyHeader::Invalid(_)
        ));
        // A v2 signature announcing more TLV bytes than the bound.
        let mut huge = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
        huge.extend_from_slice(&u16::MAX.to_be_bytes());
        huge.resize(MAX_HEADER_LEN + 10, 0);
        assert!(matches!(parse(&huge), ProxyHeader::Invalid(_)));
    }

    #[test]
    fn trusted_ranges() {
        let trusted =
            TrustedProxies::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).expect("parse");
        assert!(trusted.contains("10.1.2.3".parse().expect("ip")));
        assert!(!trusted.contains("11.0.0.1".parse().expect("ip")));
        assert!(trusted.contains("192.0.2.7".parse().expect("ip")));
        assert!(!trusted.contains("192.0.2.8".parse().expect("ip")));
        assert!(trusted.contains("2001:db8:1::5".parse().expect("ip")));
        assert!(trusted.contains("::ffff:10.0.0.1".parse().expect("ip")));
        assert!(TrustedProxies::parse(&["0.0.0.0/0"])
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(&["example.com"]).is_err());
    }
}
