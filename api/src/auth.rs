//! API keys: made here, stored only as a SHA-256 hash, looked up by their public prefix, checked
//! in constant time, and refused when expired or revoked.
//!
//! A key reads `tmk_<prefix>_<secret>`: the prefix (12 hex digits) names the key in lists and logs;
//! the secret (32 random bytes, base64url) is what proves it. Clients send it as
//! `Authorization: Bearer <key>`, or as the password of `Basic` credentials.

use crate::http::problem::{ApiError, Result};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use base64::Engine;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tidemark_store::audit::Audit;
use tidemark_store::keys::{ApiKeyRow, NewApiKey, Role};
use tidemark_store::Store;

/// Random bytes from the operating system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
    bytes
}

/// `bytes` as lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits a key into its prefix, or `None` when it is not shaped like one of ours.
fn prefix_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("tmk_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 12 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some(prefix)
}

/// Who acts, for the audit log: a key's prefix and role, or the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    pub name: String,
    pub role: String,
}

impl Actor {
    /// An operator at the command line (`tidemark keys`).
    pub fn cli() -> Actor {
        Actor {
            name: "cli".to_owned(),
            role: Role::Operator.name().to_owned(),
        }
    }

    /// An audit entry of this actor's.
    pub fn audit(&self, action: &'static str, target: String, detail: serde_json::Value) -> Audit {
        Audit {
            actor: self.name.clone(),
            role: self.role.clone(),
            action,
            target,
            detail,
        }
    }
}

/// What a key acts for besides its role: a municipality key's municipality, a producer key's
/// forecast source, a device key's device.
#[derive(Debug, Clone, Default)]
pub struct KeyScope {
    pub municipality: Option<String>,
    pub source: Option<String>,
    pub device: Option<String>,
}

impl KeyScope {
    /// The first field given for a role that does not take it, or missing for the role that
    /// needs it, with that role: each of the three belongs to exactly one role.
    pub fn mismatch(&self, role: Role) -> Option<(&'static str, Role)> {
        [
            (
                "municipality",
                Role::Municipality,
                self.municipality.is_some(),
            ),
            ("source", Role::Producer, self.source.is_some()),
            ("device", Role::Device, self.device.is_some()),
        ]
        .into_iter()
        .find(|(_, owner, given)| (role == *owner) != *given)
        .map(|(field, owner, _)| (field, owner))
    }
}

/// Makes a key and stores its hash (with an audit entry by `actor`); returns the key (to show
/// once) and the stored row.
pub async fn create_key(
    store: &Store,
    role: Role,
    municipality: Option<String>,
    label: String,
    expires_at: Option<DateTime<Utc>>,
    actor: &Actor,
) -> tidemark_store::Result<(String, ApiKeyRow)> {
    let scope = KeyScope {
        municipality,
        ..KeyScope::default()
    };
    create_scoped_key(store, role, scope, label, expires_at, actor).await
}

/// [`create_key`] with the scope a municipality, producer or device key needs; `role` and
/// `scope` must go together ([`KeyScope::mismatch`]), as the database also checks.
pub async fn create_scoped_key(
    store: &Store,
    role: Role,
    scope: KeyScope,
    label: String,
    expires_at: Option<DateTime<Utc>>,
    actor: &Actor,
) -> tidemark_store::Result<(String, ApiKeyRow)> {
    let prefix = hex(&random_bytes::<6>());
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let key = format!("tmk_{prefix}_{secret}");
    let audit = actor.audit(
        "key.create",
        format!("key {prefix}"),
        serde_json::json!({
            "role": role.name(), "municipality": scope.municipality, "source": scope.source,
            "device": scope.device, "label": label, "expires_at": expires_at,
        }),
    );
    let row = store
        .create_api_key(
            &NewApiKey {
                prefix,
                hash: hash(&key),
                role,
                municipality: scope.municipality,
                source: scope.source,
                device: scope.device,
                label,
                expires_at,
            },
            &audit,
        )
        .await?;
    Ok((key, row))
}

/// Who is calling, from a valid key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: i64,
    pub prefix: String,
    pub role: Role,
    pub municipality: Option<String>,
    /// The forecast source a producer key posts for.
    pub source: Option<String>,
    /// The device a device key posts for.
    pub device: Option<String>,
}

impl Caller {
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.prefix.clone(),
            role: self.role.name().to_owned(),
        }
    }

    /// Refuses a caller whose role is not among `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<()> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let allowed: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        Err(ApiError::Forbidden(format!(
            "this needs a key with the role {}; this key's role is {}",
            allowed.join(" or "),
            self.role.name()
        )))
    }
}

/// Checks a presented key against the store.
pub async fn authenticate(store: &Store, presented: &str, now: DateTime<Utc>) -> Result<Caller> {
    let invalid = ApiError::Unauthenticated("the API key is not valid");
    let Some(prefix) = prefix_of(presented) else {
        return Err(invalid);
    };
    let Some(row) = store.api_key(prefix).await? else {
        return Err(invalid);
    };
    if !constant_time_eq(&row.hash, &hash(presented)) {
        return Err(invalid);
    }
    if row.revoked_at.is_some() {
        return Err(ApiError::Unauthenticated("the API key has been revoked"));
    }
    if row.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::Unauthenticated("the API key has expired"));
    }
    Ok(Caller {
        key_id: row.id,
        prefix: row.prefix,
        role: row.role,
        municipality: row.municipality,
        source: row.source,
        device: row.device,
    })
}

/// A caller is checked against the store of whatever state the router has.
impl<S> FromRequestParts<S> for Caller
where
    Store: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or(
            ApiError::Unauthenticated("send an API key as `Authorization: Bearer <key>`"),
        )?;
        const SHAPE: &str =
            "the Authorization header must read `Bearer <key>` (or Basic, the key as password)";
        let presented = header
            .to_str()
            .ok()
            .and_then(presented_key)
            .ok_or(ApiError::Unauthenticated(SHAPE))?;
        authenticate(&Store::from_ref(state), &presented, Utc::now()).await
    }
}

/// The key in an `Authorization` header: `Bearer <key>`, or `Basic` credentials whose password
/// is the key (the user name is not looked at), for tools that only speak Basic, as many
/// SensorThings clients do.
pub(crate) fn presented_key(header: &str) -> Option<String> {
    if let Some(key) = header.strip_prefix("Bearer ") {
        return Some(key.trim().to_owned());
    }
    let encoded = header.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let credentials = String::from_utf8(decoded).ok()?;
    let (_, password) = credentials.split_once(':')?;
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_have_a_prefix() {
        assert_eq!(prefix_of("tmk_0123456789ab_secret"), Some("0123456789ab"));
        for bad in [
            "",
            "tmk_",
            "tmk_0123456789ab_",
            "tmk_0123456789a_secret",
            "tmk_0123456789xz_secret",
            "abc_0123456789ab_secret",
            "tmk_0123456789ab",
        ] {
            assert_eq!(prefix_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_key_is_read_from_bearer_or_basic_credentials() {
        let key = "tmk_0123456789ab_secret";
        assert_eq!(
            presented_key(&format!("Bearer {key}")).as_deref(),
            Some(key)
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("gauge-7:{key}"));
        assert_eq!(
            presented_key(&format!("Basic {basic}")).as_deref(),
            Some(key)
        );
        let no_password = base64::engine::general_purpose::STANDARD.encode("gauge-7");
        for bad in [
            key.to_owned(),
            format!("Basic {no_password}"),
            "Basic not base64!".to_owned(),
            format!("Digest {key}"),
        ] {
            assert_eq!(presented_key(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
