//! Level thresholds, rain rules and quality rules over the API; running analytics reload them.

use super::common::{body, REFERENCE_EDITORS};
use crate::auth::Caller;
use crate::http::problem::{ApiError, Result};
use crate::state::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tidemark_model::warning::Severity;
use tidemark_store::keys::Role;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdUpdate {
    /// Flood Alert level, in the sensor's canonical unit.
    pub alert: f64,
    /// Flood Warning level; above `alert`.
    pub warning: f64,
    /// Severe Flood Warning level; above `warning`.
    pub severe: f64,
    /// How long a level must hold before raising (`20m`).
    pub persistence: String,
    /// How many readings at least must show it.
    pub min_readings: i32,
    /// Lowering needs the value below the threshold minus this ...
    pub hysteresis: f64,
    /// ... for this long (`1h`).
    pub hold: String,
    /// Least-squares window of the rate of rise (`1h`).
    pub rate_window: String,
    /// Raise "expected" when the trend reaches the next level this soon (`30m`; `0s` for never).
    pub lead_time: String,
    /// Values outside `[plausible_low, plausible_high]` are flagged and excluded.
    pub plausible_low: f64,
    pub plausible_high: f64,
    /// The smallest deviation the spike test may flag.
    pub spike_floor: f64,
    /// Rising at least this fast (units per hour) raises an expected alert; for falling
    /// thresholds, falling at least this fast.
    pub rate_alert: Option<f64>,
    /// `rising` (the default: a flood) or `falling` (alert > warning > severe: a drought, such
    /// as groundwater sinking). A sensor's direction must be its areas' hazard.
    #[serde(default)]
    pub direction: Option<String>,
}

/// `PUT /api/v1/thresholds/{sensor}`: sets a sensor's flood thresholds; running analytics reload
/// them at once.
#[utoipa::path(put, path = "/api/v1/thresholds/{sensor}", tag = "management", request_body = ThresholdUpdate,
    security(("api_key" = [])), params(("sensor" = String, Path, description = "The sensor's key")),
    responses(
        (status = 204, description = "Stored; analytics use it from their next evaluation"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_threshold(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sensor): Path<String>,
    request: std::result::Result<Json<ThresholdUpdate>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(&[Role::Operator])?;
    let r = body(request)?;
    let duration = |field: &str, text: &str| {
        tidemark_model::duration::parse(text).map_err(|e| ApiError::bad(field, e.to_string()))
    };
    let finite = [
        r.alert,
        r.warning,
        r.severe,
        r.hysteresis,
        r.plausible_low,
        r.plausible_high,
        r.spike_floor,
    ];
    if finite.iter().any(|v| !v.is_finite()) || r.rate_alert.is_some_and(|v| !v.is_finite()) {
        return Err(ApiError::bad("body", "every level must be a finite number"));
    }
    let falling = match r.direction.as_deref() {
        None | Some("rising") => false,
        Some("falling") => true,
        Some(_) => return Err(ApiError::bad("direction", "direction is rising or falling")),
    };
    let rises = r.alert < r.warning && r.warning < r.severe;
    let falls = r.alert > r.warning && r.warning > r.severe;
    if !falling && !rises {
        return Err(ApiError::bad(
            "warning",
            "the levels must rise: alert < warning < severe (or set direction to falling)",
        ));
    }
    if falling && !falls {
        return Err(ApiError::bad(
            "warning",
            "falling levels must fall: alert > warning > severe",
        ));
    }
    if r.plausible_low >= r.plausible_high {
        return Err(ApiError::bad(
            "plausible_low",
            "plausible_low must be below plausible_high",
        ));
    }
    if r.min_readings < 1 || r.hysteresis < 0.0 || r.spike_floor < 0.0 {
        return Err(ApiError::bad(
            "min_readings",
            "min_readings must be at least 1, hysteresis and spike_floor at least 0",
        ));
    }
    if r.rate_alert.is_some_and(|v| v <= 0.0) {
        return Err(ApiError::bad("rate_alert", "rate_alert must be above 0"));
    }
    let rate_window = duration("rate_window", &r.rate_window)?;
    if rate_window.is_zero() {
        return Err(ApiError::bad("rate_window", "rate_window must be positive"));
    }
    if state.store.sensor_quantity(&sensor).await?.is_none() {
        return Err(ApiError::NotFound(format!("sensor {sensor}")));
    }
    let row = tidemark_store::flood::ThresholdRow {
        sensor_key: sensor.clone(),
        alert: r.alert,
        warning: r.warning,
        severe: r.severe,
        persistence: duration("persistence", &r.persistence)?,
        min_readings: r.min_readings,
        hysteresis: r.hysteresis,
        hold: duration("hold", &r.hold)?,
        rate_window,
        lead_time: duration("lead_time", &r.lead_time)?,
        plausible_low: r.plausible_low,
        plausible_high: r.plausible_high,
        spike_floor: r.spike_floor,
        rate_alert: r.rate_alert,
        falling,
    };
    let audit = caller.actor().audit(
        "threshold.put",
        format!("sensor {sensor}"),
        serde_json::json!({
            "alert": r.alert, "warning": r.warning, "severe": r.severe, "persistence": r.persistence,
            "min_readings": r.min_readings, "hysteresis": r.hysteresis, "hold": r.hold,
            "rate_window": r.rate_window, "lead_time": r.lead_time, "plausible_low": r.plausible_low,
            "plausible_high": r.plausible_high, "spike_floor": r.spike_floor, "rate_alert": r.rate_alert,
            "direction": if falling { "falling" } else { "rising" },
        }),
    );
    let mut merged = state.store.flood_setup().await?;
    merged.thresholds.retain(|t| t.sensor_key != sensor);
    merged.thresholds.push(row.clone());
    if let Some(problem) = merged.hazard_problems().into_iter().next() {
        return Err(ApiError::bad("direction", problem));
    }
    let setup = tidemark_store::flood::FloodSetup {
        thresholds: vec![row],
        ..Default::default()
    };
    state
        .store
        .apply_flood_setup_audited(&setup, Some(&audit))
        .await?;
    tracing::info!(%sensor, by = %caller.prefix, "thresholds changed");
    Ok(StatusCode::NO_CONTENT)
}

/// One rain rule: more than `more_than_mm` within `window` raises `severity`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RainRuleBody {
    /// Such as `1h` or `30m`; at most 7 days.
    pub window: String,
    /// Millimetres of rain within the window, more than which the rule fires.
    pub more_than_mm: f64,
    /// alert, warning or severe.
    pub severity: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RainRulesUpdate {
    /// The sensor's rules; an empty list returns it to the default rules (DMI's definitions of
    /// heavy rain and cloudbursts).
    pub rules: Vec<RainRuleBody>,
}

/// A rainfall sensor's configured rain rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct SensorRainRules {
    pub sensor: String,
    pub rules: Vec<RainRuleBody>,
}

/// Most rules one sensor may have.
pub(crate) const MAX_RAIN_RULES: usize = 20;

/// The longest window a rain rule may sum over.
pub(crate) const MAX_RAIN_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// `PUT /api/v1/rain-rules/{sensor}`: replaces a rainfall sensor's rain rules; running analytics
/// reload them at once.
#[utoipa::path(put, path = "/api/v1/rain-rules/{sensor}", tag = "management", request_body = RainRulesUpdate,
    security(("api_key" = [])), params(("sensor" = String, Path, description = "The rainfall sensor's key")),
    responses(
        (status = 204, description = "Stored; analytics use them from their next evaluation"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_rain_rules(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sensor): Path<String>,
    request: std::result::Result<Json<RainRulesUpdate>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(&[Role::Operator])?;
    let update = body(request)?;
    if update.rules.len() > MAX_RAIN_RULES {
        return Err(ApiError::bad(
            "rules",
            format!("at most {MAX_RAIN_RULES} rules per sensor"),
        ));
    }
    let mut rows: Vec<tidemark_store::flood::RainRuleRow> = Vec::new();
    for rule in &update.rules {
        let window = tidemark_model::duration::parse(&rule.window)
            .map_err(|e| ApiError::bad("window", e.to_string()))?;
        if window.is_zero() || window > MAX_RAIN_WINDOW {
            return Err(ApiError::bad(
                "window",
                "a window is longer than zero and at most 7d",
            ));
        }
        if !rule.more_than_mm.is_finite() || rule.more_than_mm <= 0.0 {
            return Err(ApiError::bad(
                "more_than_mm",
                "more_than_mm is a number of millimetres above 0",
            ));
        }
        let severity = Severity::parse(&rule.severity)
            .ok_or_else(|| ApiError::bad("severity", "severity is alert, warning or severe"))?;
        if rows.iter().any(|r| r.window == window) {
            return Err(ApiError::bad(
                "window",
                format!("two rules with the window {}", rule.window),
            ));
        }
        rows.push(tidemark_store::flood::RainRuleRow {
            sensor_key: sensor.clone(),
            window,
            more_than_mm: rule.more_than_mm,
            severity,
        });
    }
    match state.store.sensor_quantity(&sensor).await?.as_deref() {
        None => return Err(ApiError::NotFound(format!("sensor {sensor}"))),
        Some("rainfall") => {}
        Some(other) => {
            return Err(ApiError::bad(
                "sensor",
                format!("rain rules apply to rainfall sensors; {sensor} measures {other}"),
            ))
        }
    }
    let audit = caller.actor().audit(
        "rain_rules.put",
        format!("sensor {sensor}"),
        serde_json::json!({ "rules": update.rules }),
    );
    state
        .store
        .replace_rain_rules(&sensor, &rows, &audit)
        .await?;
    tracing::info!(%sensor, rules = rows.len(), by = %caller.prefix, "rain rules changed");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/rain-rules`: the configured rain rules, by sensor. Rainfall sensors not listed
/// use the default rules (DMI's definitions of heavy rain and cloudbursts).
#[utoipa::path(get, path = "/api/v1/rain-rules", tag = "open data",
    responses((status = 200, description = "Rain rules by sensor", body = Vec<SensorRainRules>)))]
pub async fn rain_rules(State(state): State<ApiState>) -> Result<Response> {
    let setup = state.store.flood_setup().await?;
    let mut out: Vec<SensorRainRules> = Vec::new();
    for rule in setup.rain_rules {
        let body = RainRuleBody {
            window: tidemark_model::duration::format(rule.window),
            more_than_mm: rule.more_than_mm,
            severity: rule.severity.name().to_owned(),
        };
        match out.last_mut() {
            Some(last) if last.sensor == rule.sensor_key => last.rules.push(body),
            _ => out.push(SensorRainRules {
                sensor: rule.sensor_key,
                rules: vec![body],
            }),
        }
    }
    Ok(Json(out).into_response())
}

/// A sensor's data-quality rule, in its canonical unit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QualityRuleBody {
    /// Values outside `[plausible_low, plausible_high]` are flagged out of range.
    pub plausible_low: f64,
    pub plausible_high: f64,
    /// The smallest jump off the neighbouring readings that counts as a spike.
    pub spike_floor: f64,
    /// This many equal consecutive values make a run stuck; 0 (the default) turns the check off.
    #[serde(default)]
    pub stuck_run: i32,
}

/// `PUT /api/v1/quality-rules/{sensor}`: sets the data-quality rule of a sensor outside the flood
/// setup (a meter, a container); running analytics check its whole history again and flag what
/// breaks it.
#[utoipa::path(put, path = "/api/v1/quality-rules/{sensor}", tag = "management", request_body = QualityRuleBody,
    security(("api_key" = [])), params(("sensor" = String, Path, description = "The sensor's key")),
    responses(
        (status = 204, description = "Stored; analytics apply it at once"),
        (status = 400, description = "A bad field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator or utility key", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such sensor", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_quality_rule(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sensor): Path<String>,
    request: std::result::Result<Json<QualityRuleBody>, JsonRejection>,
) -> Result<StatusCode> {
    caller.require(REFERENCE_EDITORS)?;
    let r = body(request)?;
    if !(r.plausible_low.is_finite() && r.plausible_high.is_finite()) {
        return Err(ApiError::bad(
            "plausible_low",
            "the plausible range is two finite numbers",
        ));
    }
    if r.plausible_low >= r.plausible_high {
        return Err(ApiError::bad(
            "plausible_high",
            "plausible_high must be above plausible_low",
        ));
    }
    if !r.spike_floor.is_finite() || r.spike_floor < 0.0 {
        return Err(ApiError::bad(
            "spike_floor",
            "spike_floor is a number from 0",
        ));
    }
    if !(0..=10_000).contains(&r.stuck_run) {
        return Err(ApiError::bad("stuck_run", "stuck_run is 0 (off) to 10000"));
    }
    if state.store.sensor_quantity(&sensor).await?.is_none() {
        return Err(ApiError::NotFound(format!("sensor {sensor}")));
    }
    let audit = caller.actor().audit(
        "quality_rule.put",
        format!("sensor {sensor}"),
        serde_json::to_value(&r).unwrap_or_default(),
    );
    let row = tidemark_store::flood::QualityRuleRow {
        sensor_key: sensor.clone(),
        plausible_low: r.plausible_low,
        plausible_high: r.plausible_high,
        spike_floor: r.spike_floor,
        stuck_run: r.stuck_run,
    };
    state.store.put_quality_rule(&row, &audit).await?;
    tracing::info!(%sensor, by = %caller.prefix, "quality rule changed");
    Ok(StatusCode::NO_CONTENT)
}

/// A sensor's quality rule, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct SensorQualityRule {
    pub sensor: String,
    #[serde(flatten)]
    pub rule: QualityRuleBody,
}

/// `GET /api/v1/quality-rules`: the data-quality rules of sensors outside the flood setup.
#[utoipa::path(get, path = "/api/v1/quality-rules", tag = "open data",
    responses((status = 200, description = "Rules by sensor", body = Vec<SensorQualityRule>)))]
pub async fn quality_rules(State(state): State<ApiState>) -> Result<Response> {
    let rules: Vec<SensorQualityRule> = state
        .store
        .quality_rules()
        .await?
        .into_iter()
        .map(|r| SensorQualityRule {
            sensor: r.sensor_key,
            rule: QualityRuleBody {
                plausible_low: r.plausible_low,
                plausible_high: r.plausible_high,
                spike_floor: r.spike_floor,
                stuck_run: r.stuck_run,
            },
        })
        .collect();
    Ok(Json(rules).into_response())
}
