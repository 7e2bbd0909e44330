//! Webhooks after the Standard Webhooks scheme: the `webhook-id`, `webhook-timestamp` and
//! `webhook-signature` headers, the signature `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
//! under a per-endpoint secret `whsec_<base64 of 32 random bytes>`; and the guard that keeps
//! deliveries away from loopback, private, link-local and metadata addresses wherever a host name
//! is resolved (the rules themselves are `tidemark_model::network`).
//!
//! [`verify`] is the receiver's side, exported so that a municipality's Rust receiver (and our
//! tests) check a delivery the same way.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidemark_model::network::{TargetError, TargetPolicy};
use tidemark_store::webhooks::SECRET_PREFIX;

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

/// Resolves `host` and checks every address it resolves to against `policy`.
pub async fn resolve(
    policy: &TargetPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| TargetError::Unresolved(host.to_owned()))?
        .collect();
    let ips: Vec<std::net::IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    policy.check_resolved(host, &ips)?;
    Ok(addrs)
}

/// The HTTP client's resolver: a host name that resolves to any forbidden address is refused
/// before a connection is attempted, so DNS cannot smuggle a delivery inside.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<TargetPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs = resolve(&policy, name.as_str(), 0).await?;
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
    use tidemark_store::webhooks::new_secret;

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
}
