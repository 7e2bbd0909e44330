//! Creating Observations: `POST /sta/v1.1/Observations` (or `Datastreams(id)/Observations`) with a
//! device's key.
//!
//! A posted Observation is a reading of its Datastream's sensor, and goes the way an MQTT reading
//! of the same device goes: the same checks (the sensor is the device's, the unit is the sensor's
//! canonical one, the value is within the quantity's physical range, the time within ingest's
//! bounds), the same write (exactly once: posting it again finds it stored; another value at the
//! same time is a conflict), and whatever is refused is kept in `rejected_messages` with the
//! request's body, as a refused MQTT message is.

use super::{Ctx, Selection, Target, PREFIX};
use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::http::typed;
use crate::state::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SubsecRound, Utc};
use tidemark_model::odata::QueryOptions;
use tidemark_model::validate::{self, RejectReason, SensorSpec};
use tidemark_model::wire::WireReading;
use tidemark_model::{DeviceId, Quality, Quantity, SensorKey};
use tidemark_store::keys::Role;
use tidemark_store::readings::{Batch, MessageRef, Origin, ReadingRow, Refusal};
use tidemark_store::sta::{Cell, Entity, EntityRow, Id, Scope};

/// The largest body a create takes: one Observation is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// The reason code of a posted Observation that asks for something this server does not store
/// (answered 501).
pub const UNSUPPORTED: &str = "unsupported";

/// An Observation as posted, before it is checked against its Datastream.
#[derive(Debug, Clone, PartialEq)]
pub struct Posted {
    pub datastream: i64,
    /// `None`: the time of receipt, as the standard says.
    pub phenomenon_time: Option<DateTime<Utc>>,
    pub result: f64,
    pub quality: Quality,
    /// The `@iot.id` of a FeatureOfInterest it names, if any.
    pub feature_of_interest: Option<i64>,
}

/// Why a posted Observation is refused: a reason code, as ingest stores them, and the answer.
#[derive(Debug)]
pub struct Refused {
    pub code: &'static str,
    pub status: StatusCode,
    pub member: Option<&'static str>,
    pub detail: String,
}

impl Refused {
    fn malformed(member: &'static str, detail: impl Into<String>) -> Refused {
        Refused {
            code: "malformed",
            status: StatusCode::BAD_REQUEST,
            member: Some(member),
            detail: detail.into(),
        }
    }

    fn unsupported(member: &'static str, detail: impl Into<String>) -> Refused {
        Refused {
            code: UNSUPPORTED,
            status: StatusCode::NOT_IMPLEMENTED,
            member: Some(member),
            detail: detail.into(),
        }
    }

    fn of(reason: RejectReason) -> Refused {
        let (status, member) = match reason {
            RejectReason::UnknownDevice(_) | RejectReason::WrongDevice { .. } => {
                (StatusCode::FORBIDDEN, None)
            }
            RejectReason::InFuture { .. } | RejectReason::TooOld { .. } => {
                (StatusCode::BAD_REQUEST, Some("phenomenonTime"))
            }
            _ => (StatusCode::BAD_REQUEST, Some("result")),
        };
        Refused {
            code: reason.code(),
            status,
            member,
            detail: reason.to_string(),
        }
    }

    fn into_error(self) -> ApiError {
        let parameter = self.member.map(str::to_owned);
        match self.status {
            StatusCode::NOT_IMPLEMENTED => ApiError::NotImplemented {
                parameter,
                detail: self.detail,
            },
            StatusCode::FORBIDDEN => ApiError::Forbidden(self.detail),
            StatusCode::CONFLICT => ApiError::Conflict(self.detail),
            _ => ApiError::BadRequest {
                parameter,
                detail: self.detail,
            },
        }
    }
}

/// Reads a posted Observation. `path_datastream` is the Datastream the path names
/// (`Datastreams(5)/Observations`), which the body may leave out.
pub fn decode(body: &[u8], path_datastream: Option<i64>) -> Result<Posted, Refused> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refused::malformed("body", format!("the body is not JSON: {e}")))?;
    let serde_json::Value::Object(members) = value else {
        return Err(Refused::malformed(
            "body",
            "the body must be one Observation, a JSON object",
        ));
    };
    let mut phenomenon_time = None;
    let mut quality = Quality::GOOD;
    let mut feature_of_interest = None;
    let mut datastream = None;
    let mut result = None;
    let mut result_time = None;
    for (name, value) in &members {
        if value.is_null() {
            continue;
        }
        match name.as_str() {
            "phenomenonTime" => phenomenon_time = Some(time(value, "phenomenonTime")?),
            "resultTime" => result_time = Some(time(value, "resultTime")?),
            "result" => {
                result = Some(value.as_f64().ok_or_else(|| {
                    Refused::malformed("result", "result must be a number (a measurement)")
                })?)
            }
            "resultQuality" => quality = quality_of(value)?,
            "Datastream" => datastream = Some(link(value, "Datastream")?),
            "FeatureOfInterest" => feature_of_interest = Some(link(value, "FeatureOfInterest")?),
            "parameters" if value.as_object().is_some_and(|o| o.is_empty()) => {}
            "parameters" => {
                return Err(Refused::unsupported(
                    "parameters",
                    "parameters are not stored; leave them out",
                ))
            }
            "validTime" => {
                return Err(Refused::unsupported(
                    "validTime",
                    "validTime is not stored; leave it out",
                ))
            }
            "MultiDatastream" => {
                return Err(Refused::unsupported(
                    "MultiDatastream",
                    "there are no MultiDatastreams here; link a Datastream",
                ))
            }
            "@iot.id" | "@iot.selfLink" => {
                return Err(Refused::malformed(
                    "@iot.id",
                    "an Observation's id is given by the server (its Datastream and time); \
                     leave @iot.id out",
                ))
            }
            other => {
                return Err(Refused::malformed(
                    "body",
                    format!("an Observation has no member {other:?}"),
                ))
            }
        }
    }
    let result = result.ok_or_else(|| Refused::malformed("result", "result is missing"))?;
    if let Some(result_time) = result_time {
        if phenomenon_time != Some(result_time) {
            return Err(Refused::unsupported(
                "resultTime",
                "an Observation here has one time: give resultTime equal to phenomenonTime, \
                 or leave it out",
            ));
        }
    }
    let datastream = match (datastream, path_datastream) {
        (Some(given), Some(path)) if given != path => {
            return Err(Refused::malformed(
                "Datastream",
                format!("the path names Datastream {path}, the body Datastream {given}"),
            ))
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            return Err(Refused::malformed(
                "Datastream",
                "link the Observation's Datastream: \"Datastream\": {\"@iot.id\": <id>}",
            ))
        }
    };
    Ok(Posted {
        datastream,
        phenomenon_time,
        result,
        quality,
        feature_of_interest,
    })
}

fn time(value: &serde_json::Value, member: &'static str) -> Result<DateTime<Utc>, Refused> {
    let text = value
        .as_str()
        .ok_or_else(|| Refused::malformed(member, format!("{member} must be a time (RFC 3339)")))?;
    if text.contains('/') {
        return Err(Refused::unsupported(
            member,
            format!("{member} here is an instant, not an interval"),
        ));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Refused::malformed(member, format!("{member} {text:?} is not a time: {e}")))
}

/// A device's own quality flags, as one name or a list of names.
fn quality_of(value: &serde_json::Value) -> Result<Quality, Refused> {
    let bad = || {
        Refused::malformed(
            "resultQuality",
            "resultQuality is good, suspect or bad (or device_suspect, device_bad), or a list of them",
        )
    };
    let names: Vec<&str> = match value {
        serde_json::Value::String(name) => vec![name.as_str()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    names.into_iter().try_fold(Quality::GOOD, |q, name| {
        Ok(match name {
            "good" => q,
            "suspect" | "device_suspect" => q.with(Quality::DEVICE_SUSPECT),
            "bad" | "device_bad" => q.with(Quality::DEVICE_BAD),
            _ => return Err(bad()),
        })
    })
}

/// The `@iot.id` of a linked entity. A link without one would create the entity (a deep insert),
/// which this server does not do.
fn link(value: &serde_json::Value, member: &'static str) -> Result<i64, Refused> {
    let serde_json::Value::Object(entity) = value else {
        return Err(Refused::malformed(
            member,
            format!("{member} must be an entity: {{\"@iot.id\": <id>}}"),
        ));
    };
    match entity.get("@iot.id") {
        Some(id) => id
            .as_i64()
            .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| Refused::malformed(member, format!("{member}'s @iot.id is not an id"))),
        None => Err(Refused::unsupported(
            member,
            format!(
                "link an existing {member} by its @iot.id; this server creates only Observations"
            ),
        )),
    }
}

/// `POST /sta/v1.1/Observations` and `POST /sta/v1.1/Datastreams({id})/Observations`.
#[utoipa::path(post, path = "/sta/v1.1/{path}", tag = "sensorthings",
    params(("path" = String, Path, description = "`Observations`, or `Datastreams(5)/Observations`")),
    request_body(content = Object, description = "One Observation: `result` (a number in the Datastream's unit), `phenomenonTime` (RFC 3339; the time of receipt if left out), optionally `resultTime` (equal to `phenomenonTime`), `resultQuality` (good, suspect or bad), and `Datastream`: {\"@iot.id\": id} unless the path names it", content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Stored; `Location` is the new Observation's address", body = Object),
        (status = 200, description = "The same Observation was stored before; `Location` is its address", body = Object),
        (status = 400, description = "Refused (kept with the device's rejections); `parameter` names the member", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a device key, or the Datastream is not the key's device's", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such Datastream in the path", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another value of this Datastream at this time is stored", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A body over 64 KiB", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 501, description = "Creating other entities, or a member this server does not store", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<ApiState>,
    Path(path): Path<String>,
    caller: Caller,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    caller.require(&[Role::Device])?;
    let device = caller
        .device
        .clone()
        .ok_or_else(|| ApiError::Forbidden("this device key names no device".into()))?;
    let ctx = Ctx::new(&state);
    let path_datastream = match super::resolve(&ctx, &path).await? {
        Target {
            entity: Entity::Observation,
            scope: Scope::All,
            single: false,
            tail: super::Tail::None,
        } => None,
        Target {
            entity: Entity::Observation,
            scope:
                Scope::Related {
                    parent: Entity::Datastream,
                    id: Id::Int(id),
                    ..
                },
            single: false,
            tail: super::Tail::None,
        } => Some(id),
        _ => {
            return Err(ApiError::NotImplemented {
                parameter: Some("path".to_owned()),
                detail: format!(
                    "only Observations are created here: POST to {PREFIX}/Observations or \
                     {PREFIX}/Datastreams(id)/Observations"
                ),
            })
        }
    };
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(MAX_BODY),
        _ => ApiError::bad("body", e.body_text()),
    })?;
    // Times as the database keeps them, to the microsecond, so that the answer is what a read
    // gives.
    let received_at = Utc::now().trunc_subsecs(6);
    let topic = format!("{PREFIX}/{path}");
    let message = MessageRef {
        received_at,
        topic: &topic,
        device: Some(&device),
        payload: &body,
    };
    let checked = check(&state, &device, &body, path_datastream, received_at).await?;
    let row = match checked {
        Ok(accepted) => accepted,
        Err(refused) => {
            keep(&state, message, refused.code, &refused.detail).await?;
            return Err(refused.into_error());
        }
    };
    let outcome = state
        .store
        .write(
            Batch {
                messages: &[message],
                readings: std::slice::from_ref(&row),
                origins: &[Origin {
                    message: 0,
                    entry: 0,
                }],
                refusals: &[],
                forecasts: &[],
                forecast_messages: &[],
            },
            received_at,
        )
        .await?;
    let status = if outcome.stored == 1 {
        StatusCode::CREATED
    } else if outcome.duplicates == 1 {
        StatusCode::OK
    } else {
        // A Datastream's id is its sensor's.
        return Err(ApiError::Conflict(format!(
            "Datastream {} has another result at {}; the refusal is kept",
            row.sensor_id,
            row.ts.to_rfc3339()
        )));
    };
    let (value, quality, received_at) = match status {
        StatusCode::CREATED => (row.value, row.quality, received_at),
        _ => state
            .store
            .reading_at(row.sensor_id, row.ts)
            .await?
            .ok_or_else(|| ApiError::Internal("a duplicate reading is not stored".into()))?,
    };
    let id = Id::Reading(row.sensor_id, row.ts);
    let entity = EntityRow {
        id: id.clone(),
        cells: Entity::Observation
            .properties()
            .map(|name| match name {
                "phenomenonTime" | "resultTime" => Cell::Time(row.ts),
                "result" => Cell::Float(value),
                "resultQuality" => Cell::Quality(quality),
                _ => Cell::Received(received_at),
            })
            .collect(),
    };
    let options = QueryOptions::default();
    let selection = Selection::of(Entity::Observation, &options)?;
    let mut out = String::new();
    ctx.write_entity(&mut out, Entity::Observation, &entity, &selection, &[])
        .await?;
    let location = ctx.self_link(Entity::Observation, &id);
    let mut response = typed("application/json", out);
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// The reading a posted Observation is, or why it is refused.
async fn check(
    state: &ApiState,
    device: &str,
    body: &[u8],
    path_datastream: Option<i64>,
    received_at: DateTime<Utc>,
) -> Result<Result<ReadingRow, Refused>> {
    let device_id = match (
        state.store.device_enabled(device).await?,
        DeviceId::parse(device),
    ) {
        (Some(true), Ok(id)) => id,
        _ => {
            return Ok(Err(Refused {
                code: "unknown_device",
                status: StatusCode::FORBIDDEN,
                member: None,
                detail: format!("device {device} is not registered or not enabled"),
            }))
        }
    };
    let posted = match decode(body, path_datastream) {
        Ok(posted) => posted,
        Err(refused) => return Ok(Err(refused)),
    };
    let unknown = || Refused {
        code: "unknown_sensor",
        status: StatusCode::BAD_REQUEST,
        member: Some("Datastream"),
        detail: format!("there is no Datastream {}", posted.datastream),
    };
    let Some(target) = state.store.sta_datastream(posted.datastream).await? else {
        return Ok(Err(unknown()));
    };
    let (Ok(sensor), Ok(owner), Ok(quantity)) = (
        SensorKey::parse(&target.sensor),
        DeviceId::parse(&target.device),
        Quantity::parse(&target.quantity),
    ) else {
        return Ok(Err(unknown()));
    };
    if posted
        .feature_of_interest
        .is_some_and(|id| id != i64::from(target.station_id))
    {
        return Ok(Err(Refused::unsupported(
            "FeatureOfInterest",
            format!(
                "the FeatureOfInterest of Datastream {}'s Observations is {}, its station",
                posted.datastream, target.station_id
            ),
        )));
    }
    let wire = WireReading {
        sensor,
        ts: posted
            .phenomenon_time
            .map_or(received_at, |t| t.trunc_subsecs(6)),
        value: posted.result,
        unit: quantity.canonical_unit(),
        quality: posted.quality,
    };
    let spec = SensorSpec {
        device: owner,
        quantity,
    };
    Ok(validate::validate(
        wire,
        &device_id,
        Some(&spec),
        received_at,
        state.settings.time_rules,
    )
    .map(|reading| ReadingRow {
        sensor_id: target.sensor_id,
        ts: reading.ts,
        value: reading.value,
        quality: reading.quality.0,
    })
    .map_err(Refused::of))
}

/// Keeps a refused request with the device's rejections.
async fn keep(
    state: &ApiState,
    message: MessageRef<'_>,
    code: &'static str,
    reason: &str,
) -> Result<()> {
    state
        .store
        .write(
            Batch {
                messages: &[message],
                readings: &[],
                origins: &[],
                refusals: &[Refusal {
                    message: 0,
                    entry: None,
                    reason_code: code,
                    reason: reason.to_owned(),
                }],
                forecasts: &[],
                forecast_messages: &[],
            },
            message.received_at,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(body: &str, path: Option<i64>) -> Result<Posted, (&'static str, StatusCode)> {
        decode(body.as_bytes(), path).map_err(|r| (r.code, r.status))
    }

    #[test]
    fn an_observation_links_its_datastream_by_body_or_path() {
        let posted = decoded(
            r#"{"phenomenonTime": "2024-01-02T03:04:05+01:00", "result": 1.5,
                "resultTime": "2024-01-02T02:04:05Z", "Datastream": {"@iot.id": 7, "name": "x"},
                "resultQuality": ["suspect"], "parameters": {}, "validTime": null}"#,
            None,
        )
        .unwrap();
        assert_eq!(posted.datastream, 7);
        assert_eq!(
            posted.phenomenon_time,
            Some("2024-01-02T02:04:05Z".parse().unwrap())
        );
        assert_eq!(posted.result, 1.5);
        assert_eq!(posted.quality, Quality::DEVICE_SUSPECT);
        let posted = decoded(r#"{"result": -2}"#, Some(9)).unwrap();
        assert_eq!((posted.datastream, posted.phenomenon_time), (9, None));
        assert_eq!(posted.quality, Quality::GOOD);
        assert_eq!(
            decoded(r#"{"result": 1, "Datastream": {"@iot.id": "9"}}"#, Some(9))
                .unwrap()
                .datastream,
            9
        );
        assert_eq!(
            decoded(
                r#"{"result": 1, "resultQuality": "bad", "Datastream": {"@iot.id": 1}}"#,
                None
            )
            .unwrap()
            .quality,
            Quality::DEVICE_BAD
        );
    }

    #[test]
    fn what_cannot_be_stored_as_given_is_refused_with_its_reason() {
        let malformed = ("malformed", StatusCode::BAD_REQUEST);
        let unsupported = (UNSUPPORTED, StatusCode::NOT_IMPLEMENTED);
        let ds = r#""Datastream": {"@iot.id": 1}"#;
        for (body, path, expected) in [
            ("not json".to_owned(), None, malformed),
            ("[1]".to_owned(), None, malformed),
            (format!(r#"{{{ds}}}"#), None, malformed),
            (format!(r#"{{"result": "high", {ds}}}"#), None, malformed),
            (r#"{"result": 1}"#.to_owned(), None, malformed),
            (
                r#"{"result": 1, "Datastream": {"@iot.id": 2}}"#.to_owned(),
                Some(3),
                malformed,
            ),
            (
                r#"{"result": 1, "Datastream": 2}"#.to_owned(),
                None,
                malformed,
            ),
            (
                r#"{"result": 1, "Datastream": {"@iot.id": 1.5}}"#.to_owned(),
                None,
                malformed,
            ),
            (
                format!(r#"{{"result": 1, "phenomenonTime": "yesterday", {ds}}}"#),
                None,
                malformed,
            ),
            (
                format!(r#"{{"result": 1, "resultQuality": "great", {ds}}}"#),
                None,
                malformed,
            ),
            (
                format!(r#"{{"result": 1, "resultQuality": "spike", {ds}}}"#),
                None,
                malformed,
            ),
            (
                format!(r#"{{"result": 1, "@iot.id": 5, {ds}}}"#),
                None,
                malformed,
            ),
            (
                format!(r#"{{"result": 1, "colour": "red", {ds}}}"#),
                None,
                malformed,
            ),
            (
                format!(
                    r#"{{"result": 1, "phenomenonTime": "2024-01-01T00:00:00Z/2024-01-02T00:00:00Z", {ds}}}"#
                ),
                None,
                unsupported,
            ),
            (
                format!(
                    r#"{{"result": 1, "phenomenonTime": "2024-01-01T00:00:00Z", "resultTime": "2024-01-01T00:00:01Z", {ds}}}"#
                ),
                None,
                unsupported,
            ),
            (
                format!(r#"{{"result": 1, "resultTime": "2024-01-01T00:00:01Z", {ds}}}"#),
                None,
                unsupported,
            ),
            (
                format!(r#"{{"result": 1, "parameters": {{"a": 1}}, {ds}}}"#),
                None,
                unsupported,
            ),
            (
                format!(r#"{{"result": 1, "validTime": "2024-01-01T00:00:00Z", {ds}}}"#),
                None,
                unsupported,
            ),
            (
                r#"{"result": 1, "Datastream": {"name": "new"}}"#.to_owned(),
                None,
                unsupported,
            ),
            (
                r#"{"result": 1, "MultiDatastream": {"@iot.id": 1}}"#.to_owned(),
                None,
                unsupported,
            ),
            (
                format!(r#"{{"result": 1, "FeatureOfInterest": {{"name": "x"}}, {ds}}}"#),
                None,
                unsupported,
            ),
        ] {
            assert_eq!(decoded(&body, path).unwrap_err(), expected, "{body}");
        }
    }
}
