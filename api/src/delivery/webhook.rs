//! Webhooks after the Standard Webhooks scheme: the `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` headers, the signature `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
//! under a per-endpoint secret `whsec_<base64 of 32 random bytes>`; and the guard that keeps
//! deliveries away from loopback, private, link-local and metadata addresses.
//!
//! [`verify`] is the receiver's side, exported so that a municipality's Rust receiver (and our
//! tests) check a delivery the same way.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Secrets carry this prefix, as in the Standard Webhooks reference libraries.
const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new secret: the scheme asks for at least 24.
const SECRET_BYTES: usize = 32;

/// A new signing secret.
pub fn new_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        STANDARD.encode(crate::auth::random_bytes::<SECRET_BYTES>())
    )
}

fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .ok()
        .filter(|k| !k.is_empty())
}

fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; new_from_slice fails for none.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The `webhook-signature` header for a body, under each of `secrets` (several during a rotation).
pub fn sign(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|s| secret_key(s))
        .map(|key| {
            format!(
                "v1,{}",
                STANDARD.encode(signature(&key, id, timestamp, body))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the secret is not a base64 key")]
    BadSecret,
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is outside the tolerance (stale or from the future)")]
    OutsideTolerance,
    #[error("no signature matches")]
    NoMatch,
}

/// Checks a delivery: the timestamp within `tolerance` of `now`, and one of the `v1` signatures
/// in `signature_header` made with `secret` over exactly this id, timestamp and body.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let key = secret_key(secret).ok_or(VerifyError::BadSecret)?;
    let timestamp: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = (now.timestamp() - timestamp).unsigned_abs();
    if skew > tolerance.as_secs() {
        return Err(VerifyError::OutsideTolerance);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| VerifyError::BadSecret)?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let matches = signature_header
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|candidate| mac.clone().verify_slice(&candidate).is_ok());
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

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
    /// checked where they are resolved (see [`GuardedResolver`]), on every connection.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, TargetError> {
        let url = reqwest::Url::parse(url).map_err(|e| TargetError::BadUrl(e.to_string()))?;
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

    /// Checks a URL and every address its host resolves to, as registration does.
    pub async fn check_registration(&self, url: &str) -> Result<reqwest::Url, TargetError> {
        let parsed = self.check_url(url)?;
        if let Some(url::Host::Domain(host)) = parsed.host() {
            let port = parsed.port_or_known_default().unwrap_or(443);
            self.resolve(host, port).await?;
        }
        Ok(parsed)
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| TargetError::Unresolved(host.to_owned()))?
            .collect();
        if addrs.is_empty() {
            return Err(TargetError::Unresolved(host.to_owned()));
        }
        if let Some(bad) = addrs.iter().find(|a| !self.permits(a.ip())) {
            return Err(TargetError::Internal(bad.ip()));
        }
        Ok(addrs)
    }
}

/// The HTTP client's resolver: a host name that resolves to any forbidden address is refused
/// before a connection is attempted, so DNS cannot smuggle a delivery inside.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<TargetPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs = policy.resolve(name.as_str(), 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The client deliveries go through: bounded timeouts, no redirects (a redirect could point
/// inside), no proxies from the environment, and the guarded resolver.
pub fn client(
    policy: Arc<TargetPolicy>,
    timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver(policy)))
        .user_agent(concat!("tidemark-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_tampered_one_does_not() {
        let secret = new_secret();
        assert!(secret_key(&secret).unwrap().len() >= 24);
        let now = Utc::now();
        let ts = now.timestamp();
        let header = sign(&[&secret], "evt_1", ts, b"{\"a\":1}");
        let tolerance = Duration::from_secs(300);
        let check = |id: &str, ts: &str, body: &[u8]| {
            verify(&secret, id, ts, &header, body, now, tolerance)
        };
        assert_eq!(check("evt_1", &ts.to_string(), b"{\"a\":1}"), Ok(()));
        assert_eq!(
            check("evt_1", &ts.to_string(), b"{\"a\":2}"),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check("evt_2", &ts.to_string(), b"{\"a\":1}"),
            Err(VerifyError::NoMatch)
        );
        let stale = (ts - 301).to_string();
        assert_eq!(
            verify(
                &secret,
                "evt_1",
                &stale,
                &sign(&[&secret], "evt_1", ts - 301, b"x"),
                b"x",
                now,
                tolerance
            ),
            Err(VerifyError::OutsideTolerance)
        );
        assert_eq!(
            verify(
                &new_secret(),
                "evt_1",
                &ts.to_string(),
                &header,
                b"{\"a\":1}",
                now,
                tolerance
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn during_a_rotation_either_secret_verifies() {
        let (old, new) = (new_secret(), new_secret());
        let now = Utc::now();
        let header = sign(&[&new, &old], "m", now.timestamp(), b"b");
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&old, &new] {
            let ts = now.timestamp().to_string();
            assert_eq!(
                verify(secret, "m", &ts, &header, b"b", now, Duration::from_secs(5)),
                Ok(())
            );
        }
    }

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
