//! Device credentials over the API: an operator or utility key issues a device's MQTT password
//! (shown once) or registers its client certificate, lists them, and revokes them, each change
//! audited. The broker learns each change before it is recorded (see `broker_admin`).

use super::broker_admin::{AdminError, BrokerAdmin};
use super::common::{body, REFERENCE_EDITORS};
use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tidemark_model::DeviceId;
use tidemark_store::credentials::{CredentialError, CredentialKind, CredentialRow, NewCredential};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeviceCredential {
    /// `password` (Tidemark makes one and shows it once) or `certificate`.
    pub kind: String,
    /// For `certificate`: the device's client certificate (PEM), signed by the CA the broker's
    /// mutual-TLS listener trusts, with the device key as its subject's common name.
    pub certificate: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialBody {
    pub id: i64,
    pub device: String,
    /// `password` or `certificate`.
    pub kind: String,
    /// The MQTT user name: the device key (for a certificate, its common name).
    pub username: String,
    /// The password: only in the answer to its issue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A certificate's SHA-256 fingerprint (hex, of its DER).
    pub fingerprint: Option<String>,
    /// When a certificate stops being valid.
    pub not_after: Option<DateTime<Utc>>,
    pub issued_at: DateTime<Utc>,
    /// The prefix of the key that issued it.
    pub issued_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    /// The credential this one replaced (revoked by its issue), in the answer to its issue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<i64>,
}

fn credential_body(row: CredentialRow) -> CredentialBody {
    CredentialBody {
        id: row.id,
        username: row.device.clone(),
        device: row.device,
        kind: row.kind.name().to_owned(),
        password: None,
        fingerprint: row.fingerprint,
        not_after: row.not_after,
        issued_at: row.issued_at,
        issued_by: row.issued_by,
        revoked_at: row.revoked_at,
        revoked_by: row.revoked_by,
        replaced: None,
    }
}

fn admin(state: &ApiState) -> Result<&BrokerAdmin> {
    state.broker_admin.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "this installation does not manage device credentials (api.device_credentials is \
             off); device logins are configured at the broker"
                .to_owned(),
        )
    })
}

fn device_id(key: &str) -> Result<DeviceId> {
    DeviceId::parse(key).map_err(|e| ApiError::bad("key", format!("device key {key:?}: {e}")))
}

fn broker_failed(error: AdminError) -> ApiError {
    tracing::error!(%error, "the broker did not make a device credential change");
    ApiError::Unavailable("the broker did not confirm the change, so nothing was changed")
}

fn failed(error: CredentialError<AdminError>) -> ApiError {
    match error {
        CredentialError::UnknownDevice(key) => ApiError::NotFound(format!("a device {key}")),
        CredentialError::NotInForce { device, id } => {
            ApiError::NotFound(format!("a credential {id} in force for device {device}"))
        }
        CredentialError::Broker(error) => broker_failed(error),
        CredentialError::Store(error) => error.into(),
    }
}

/// A new password: 24 random bytes, URL-safe base64 (32 characters).
fn new_password() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::auth::random_bytes::<24>())
}

/// Issues a device a password or registers its certificate; the credential in force before is
/// revoked, and a device still connected with it is disconnected.
#[utoipa::path(post, path = "/api/v1/devices/{key}/credentials", tag = "management",
    request_body = NewDeviceCredential, security(("api_key" = [])),
    params(("key" = String, Path, description = "The device's key")),
    responses(
        (status = 201, description = "Issued; a password is shown only now", body = CredentialBody),
        (status = 400, description = "A bad field, or a certificate not for this device", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator or utility key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "This installation does not manage device credentials", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker did not confirm; nothing changed", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn issue_credential(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    request: std::result::Result<Json<NewDeviceCredential>, JsonRejection>,
) -> Result<Response> {
    caller.require(REFERENCE_EDITORS)?;
    let request = body(request)?;
    let device = device_id(&key)?;
    let admin = admin(&state)?;
    let kind = CredentialKind::parse(&request.kind)
        .ok_or_else(|| ApiError::bad("kind", "kind must be password or certificate"))?;
    let (new, password) = match (kind, request.certificate) {
        (CredentialKind::Password, None) => (
            NewCredential {
                kind,
                fingerprint: None,
                not_after: None,
            },
            Some(new_password()),
        ),
        (CredentialKind::Password, Some(_)) => {
            return Err(ApiError::bad(
                "certificate",
                "a certificate goes with kind certificate only",
            ))
        }
        (CredentialKind::Certificate, None) => {
            return Err(ApiError::bad(
                "certificate",
                "kind certificate needs the device's certificate (PEM)",
            ))
        }
        (CredentialKind::Certificate, Some(pem)) => {
            let certificate = tidemark_model::certificate::parse_pem(&pem)
                .map_err(|e| ApiError::bad("certificate", e.to_string()))?;
            if certificate.common_name != key {
                return Err(ApiError::bad(
                    "certificate",
                    format!(
                        "the certificate's common name is {:?}; the broker takes it as the user \
                         name, so it must be the device key {key:?}",
                        certificate.common_name
                    ),
                ));
            }
            if certificate.not_after <= Utc::now() {
                return Err(ApiError::bad(
                    "certificate",
                    format!("the certificate expired at {}", certificate.not_after),
                ));
            }
            let fingerprint = crate::auth::hex(&Sha256::digest(&certificate.der));
            (
                NewCredential {
                    kind,
                    fingerprint: Some(fingerprint),
                    not_after: Some(certificate.not_after),
                },
                None,
            )
        }
    };
    let audit = caller.actor().audit(
        "device.credential.issue",
        format!("device {key}"),
        serde_json::json!({ "kind": kind.name(), "fingerprint": new.fingerprint }),
    );
    let (issued, replaced) = state
        .store
        .issue_device_credential(&key, &new, &audit, || {
            admin.replace(&device, password.as_deref())
        })
        .await
        .map_err(failed)?;
    tracing::info!(device = %key, kind = kind.name(), id = issued.id, by = %caller.prefix,
        "device credential issued");
    let mut answer = credential_body(issued);
    answer.password = password;
    answer.replaced = replaced.map(|r| r.id);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /api/v1/devices/{key}/credentials`: every credential of a device, newest first, without
/// passwords.
#[utoipa::path(get, path = "/api/v1/devices/{key}/credentials", tag = "management",
    security(("api_key" = [])), params(("key" = String, Path, description = "The device's key")),
    responses(
        (status = 200, description = "The device's credentials, in force and revoked", body = Vec<CredentialBody>),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator or utility key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_credentials(
    State(state): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Vec<CredentialBody>>> {
    caller.require(REFERENCE_EDITORS)?;
    device_id(&key)?;
    let rows = state
        .store
        .device_credentials(&key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("a device {key}")))?;
    Ok(Json(rows.into_iter().map(credential_body).collect()))
}

/// `DELETE /api/v1/devices/{key}/credentials/{id}`: revokes a credential in force; the broker
/// refuses the device from now on and disconnects it if it is connected.
#[utoipa::path(delete, path = "/api/v1/devices/{key}/credentials/{id}", tag = "management",
    security(("api_key" = [])),
    params(("key" = String, Path, description = "The device's key"),
           ("id" = i64, Path, description = "The credential's id")),
    responses(
        (status = 200, description = "Revoked", body = CredentialBody),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator or utility key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such credential in force", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "This installation does not manage device credentials", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker did not confirm; nothing changed", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_credential(
    State(state): State<ApiState>,
    caller: Caller,
    Path((key, id)): Path<(String, i64)>,
) -> Result<Json<CredentialBody>> {
    caller.require(REFERENCE_EDITORS)?;
    let device = device_id(&key)?;
    let admin = admin(&state)?;
    let audit = caller.actor().audit(
        "device.credential.revoke",
        format!("device {key}"),
        serde_json::json!({ "credential": id }),
    );
    let revoked = state
        .store
        .revoke_device_credential(&key, id, &audit, || admin.remove(&device))
        .await
        .map_err(failed)?;
    tracing::info!(device = %key, id, by = %caller.prefix, "device credential revoked");
    Ok(Json(credential_body(revoked)))
}
