//! Canonical host and authority parsing: one parse for CONNECT targets, SNI, Host and
//! `:authority`, so that all of them can be compared byte for byte.
//!
//! Canonical form: lower-case, no trailing dot, IPv6 in brackets, explicit port. Anything a
//! resolver could read in more than one way (`127.1`, `0x7f.0.0.1`, zone ids, empty labels) is
//! refused rather than repaired.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name accepted (RFC 1035).
const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Why a host or authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("the host is longer than 253 characters")]
    TooLong,
    #[error("the host has an empty label or a label over 63 characters")]
    BadLabel,
    #[error("the host contains a character not allowed in a host name")]
    BadCharacter,
    #[error("the host looks like an IPv4 address but is not written as four decimal numbers")]
    AmbiguousIpv4,
    #[error("the IPv6 address is malformed")]
    BadIpv6,
    #[error("the port is missing")]
    MissingPort,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
}

/// A canonical `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    /// Lower-case host name, dotted-quad IPv4, or IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

impl Authority {
    /// Parses `host:port`, `[v6]:port`, or (when `default_port` is given) a bare host.
    pub fn parse(input: &str, default_port: Option<u16>) -> Result<Authority, HostError> {
        let (host_part, port_part) = split_host_port(input)?;
        let port = match port_part {
            Some(p) => parse_port(p)?,
            None => default_port.ok_or(HostError::MissingPort)?,
        };
        let host = if let Some(inner) = host_part.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(HostError::BadIpv6)?;
            let ip: Ipv6Addr = inner.parse().map_err(|_| HostError::BadIpv6)?;
            ip.to_string()
        } else {
            canonical_host(host_part)?
        };
        Ok(Authority { host, port })
    }

    /// The host as written in a URI (IPv6 in brackets).
    pub fn uri_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// Whether the host is an IP literal (v4 or v6) rather than a name.
    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uri_host(), self.port)
    }
}

fn split_host_port(input: &str) -> Result<(&str, Option<&str>), HostError> {
    if input.is_empty() {
        return Err(HostError::Empty);
    }
    if input.starts_with('[') {
        return match input.find(']') {
            Some(end) if end + 1 == input.len() => Ok((input, None)),
            Some(end) => match input[end + 1..].strip_prefix(':') {
                Some(port) => Ok((&input[..=end], Some(port))),
                None => Err(HostError::BadIpv6),
            },
            None => Err(HostError::BadIpv6),
        };
    }
    match input.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Err(HostError::BadIpv6),
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((input, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, HostError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadPort);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::BadPort),
        Ok(n) => Ok(n),
    }
}

/// Canonicalises a host name or IPv4 literal (no port, no brackets).
pub fn canonical_host(input: &str) -> Result<String, HostError> {
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(HostError::Empty);
    }
    if trimmed.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    let host = trimmed.to_ascii_lowercase();
    for label in host.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(HostError::BadLabel);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HostError::BadCharacter);
        }
    }
    if looks_numeric(&host) {
        let ip: Ipv4Addr = host.parse().map_err(|_| HostError::AmbiguousIpv4)?;
        let canonical = ip.to_string();
        if canonical != host {
            return Err(HostError::AmbiguousIpv4);
        }
    }
    Ok(host)
}

/// A name whose last label is a number (decimal or 0x-hex) is read as IPv4 by resolvers.
fn looks_numeric(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    match last.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => last.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str, d: Option<u16>) -> String {
        Authority::parse(s, d).unwrap().to_string()
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(ok("API.GitHub.com.:443", None), "api.github.com:443");
        assert_eq!(ok("api.github.com", Some(443)), "api.github.com:443");
        assert_eq!(ok("[::1]:8080", None), "[::1]:8080");
        assert_eq!(ok("[0:0::1]", Some(80)), "[::1]:80");
        assert_eq!(ok("127.0.0.1:9", None), "127.0.0.1:9");
        assert_eq!(ok("my_host-1.internal:1", None), "my_host-1.internal:1");
    }

    #[test]
    fn odd_hosts_are_refused() {
        for bad in [
            "",
            ":443",
            "a..b:443",
            ".:443",
            "a b:443",
            "a/b:443",
            "a%2eb:443",
            "127.1:443",
            "0x7f.0.0.1:443",
            "2130706433:443",
            "127.000.0.1:443",
            "[::1:443",
            "[::1]x:443",
            "[fe80::1%eth0]:443",
            "::1:443",
            "host:0",
            "host:65536",
            "host:+1",
            "host:",
            "host:443:443",
            "h\u{e9}.com:443",
        ] {
            assert!(
                Authority::parse(bad, Some(443)).is_err(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            Authority::parse("host", None),
            Err(HostError::MissingPort),
            "CONNECT targets need a port"
        );
        let long = format!("{}.com", "a".repeat(64));
        assert_eq!(canonical_host(&long), Err(HostError::BadLabel));
        let too_long = ["abc"; 70].join(".");
        assert_eq!(canonical_host(&too_long), Err(HostError::TooLong));
    }

    #[test]
    fn numeric_labels_inside_names_are_fine() {
        assert_eq!(
            canonical_host("1.2.example.com").unwrap(),
            "1.2.example.com"
        );
        assert_eq!(canonical_host("v1.example.a0").unwrap(), "v1.example.a0");
    }
}
