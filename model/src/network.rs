//! Which network addresses an outbound request (a webhook delivery) may reach: the networks
//! operators name in configuration, and the guard against server-side request forgery that keeps
//! deliveries away from loopback, private, link-local and metadata addresses. Pure: resolving host
//! names is the caller's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 network, `address/prefix-length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Result<Network, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Network { address, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// Addresses a webhook must not reach unless the operator allows them: they lead into the
/// machine or its private network (server-side request forgery).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let segments = v6.segments();
            let first = segments[0];
            // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks).
            if segments[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return internal_v4(Ipv4Addr::from(u128::from(v6) as u32));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || first == 0x2002 // 6to4 2002::/16: an IPv4 address inside
                || (first == 0x0064 && segments[1] == 0xff9b && segments[2..6] == [0; 4]) // NAT64 64:ff9b::/96
                || (first == 0x0064 && segments[1] == 0xff9b && segments[2] == 0x0001) // local NAT64 64:ff9b:1::/48
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) // AWS IPv6 metadata
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, cloud metadata included
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64.0.0/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || a >= 240 // reserved
}

/// Which addresses deliveries may reach.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    /// Internal networks the operator allows anyway (tests on one machine; a municipality's
    /// receiver on the same private network).
    pub allow: Vec<Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the URL is not valid: {0}")]
    BadUrl(String),
    #[error("only http and https URLs can receive webhooks")]
    Scheme,
    #[error("URLs with user names or passwords are not accepted")]
    Credentials,
    #[error(
        "{0} is a loopback, private, link-local or metadata address, which webhooks may not reach"
    )]
    Internal(IpAddr),
    #[error("the host {0} does not resolve")]
    Unresolved(String),
}

impl TargetPolicy {
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allow.iter().any(|n| n.contains(ip))
    }

    /// Checks a URL's shape and, when its host is an address, the address. Host names are
    /// checked where they are resolved, with [`TargetPolicy::check_resolved`].
    pub fn check_url(&self, url: &str) -> Result<url::Url, TargetError> {
        let url = url::Url::parse(url).map_err(|e| TargetError::BadUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetError::Scheme);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(TargetError::BadUrl("the URL has no host".to_owned())),
        };
        if let Some(ip) = ip.filter(|ip| !self.permits(*ip)) {
            return Err(TargetError::Internal(ip));
        }
        Ok(url)
    }

    /// Checks the addresses `host` resolved to: all of them must be permitted, and there must be
    /// at least one. The caller resolves (at registration, and on every connection).
    pub fn check_resolved(&self, host: &str, addrs: &[IpAddr]) -> Result<(), TargetError> {
        if addrs.is_empty() {
            return Err(TargetError::Unresolved(host.to_owned()));
        }
        match addrs.iter().find(|ip| !self.permits(**ip)) {
            Some(bad) => Err(TargetError::Internal(*bad)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let table = [
            ("127.0.0.1", true),
            ("10.0.0.1", true),
            ("172.16.5.4", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("0.0.0.0", true),
            ("::1", true),
            ("fe80::1", true),
            ("fd00:ec2::254", true),
            ("::ffff:10.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b::5db8:d822", true),
            ("64:ff9b:1::1", true),
            ("2002:a00:1::1", true),
            ("2002:5db8:d822::1", true),
            ("fec0::1", true),
            ("fefe::1", true),
            ("::10.0.0.1", true),
            ("::93.184.216.34", false),
            ("64:ff9c::1", false),
            ("93.184.216.34", false),
            ("2001:db8::1", false),
        ];
        for (ip, internal) in table {
            assert_eq!(is_internal(ip.parse().unwrap()), internal, "{ip}");
        }
        let policy = TargetPolicy {
            allow: vec![Network::parse("127.0.0.0/8").unwrap()],
        };
        assert!(policy.permits("127.0.0.2".parse().unwrap()));
        assert!(!policy.permits("10.0.0.1".parse().unwrap()));
        assert!(policy.check_url("http://127.0.0.1:9/x").is_ok());
        assert_eq!(
            policy.check_url("http://169.254.169.254/latest/meta-data"),
            Err(TargetError::Internal("169.254.169.254".parse().unwrap()))
        );
        assert_eq!(
            policy.check_url("http://[::1]:80/"),
            Err(TargetError::Internal("::1".parse().unwrap()))
        );
        assert_eq!(
            policy.check_url("ftp://example.org/"),
            Err(TargetError::Scheme)
        );
        assert_eq!(
            policy.check_url("http://user:pw@example.org/"),
            Err(TargetError::Credentials)
        );
    }

    #[test]
    fn networks_parse_and_contain() {
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(Network::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nonsense").is_err());
    }
}
