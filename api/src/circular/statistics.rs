//! Recycling statistics per period and material, and Sankey flows.

use super::records::{filter, FlowQuery};
use crate::http::problem::{ApiError, Result};
use crate::http::{csv_response, format, json_response, parse_query, Format};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{Datelike, NaiveDate};
use std::collections::BTreeMap;
use tidemark_model::waste::{self, FlowRecord, Treatment, TreatmentSplit};

pub(crate) fn period_of(date: NaiveDate, period: &str) -> String {
    match period {
        "month" => format!("{}-{:02}", date.year(), date.month()),
        "quarter" => format!("{}-Q{}", date.year(), (date.month() - 1) / 3 + 1),
        _ => date.year().to_string(),
    }
}

pub(crate) fn split_body(split: &TreatmentSplit) -> serde_json::Value {
    let tonnes: serde_json::Map<String, serde_json::Value> = Treatment::ALL
        .iter()
        .map(|t| {
            (
                t.name().to_owned(),
                serde_json::json!(split.tonnes.get(t).copied().unwrap_or(0.0)),
            )
        })
        .collect();
    serde_json::json!({
        "generated_tonnes": split.generated(),
        "treatment_tonnes": tonnes,
        "recycling_rate": split.recycling_rate(),
    })
}

pub(crate) fn records(rows: &[tidemark_store::circular::FlowRow]) -> Vec<(NaiveDate, FlowRecord)> {
    rows.iter()
        .filter_map(|r| {
            Some((
                r.flow.period_from,
                FlowRecord {
                    municipality: r.flow.municipality.clone(),
                    waste_code: r.flow.waste_code.clone(),
                    tonnes: r.flow.tonnes,
                    treatment: Treatment::parse(&r.flow.treatment)?,
                },
            ))
        })
        .collect()
}

/// `GET /api/v1/circular/statistics`: per municipality and period, the tonnes by treatment, the
/// recycling rate (prepared for reuse plus recycled, over generated) and the same by fraction,
/// oldest period first, so the trend reads down the list. As CSV, one row per municipality and
/// period (`waste_code` empty) followed by one per fraction.
#[utoipa::path(get, path = "/api/v1/circular/statistics", tag = "circular", params(FlowQuery),
    responses(
        (status = 200, description = "Statistics by municipality and period", content(("application/json"), ("text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn statistics(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<FlowQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    let period = query.period.as_deref().unwrap_or("year");
    if !["year", "quarter", "month"].contains(&period) {
        return Err(ApiError::bad("period", "period is year, quarter or month"));
    }
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state.store.material_flows(&filter(&query)?).await?;
    let populations = state.store.populations().await?;
    let mut groups: BTreeMap<(String, String), Vec<FlowRecord>> = BTreeMap::new();
    for (first_day, record) in records(&rows) {
        groups
            .entry((period_of(first_day, period), record.municipality.clone()))
            .or_default()
            .push(record);
    }
    let items: Vec<serde_json::Value> = groups
        .iter()
        .map(|((period, municipality), records)| {
            let mut by_code: BTreeMap<&str, Vec<&FlowRecord>> = BTreeMap::new();
            for r in records {
                by_code.entry(r.waste_code.as_str()).or_default().push(r);
            }
            let split = TreatmentSplit::of(records.iter());
            let mut body = split_body(&split);
            body["period"] = serde_json::json!(period);
            body["municipality"] = serde_json::json!(municipality);
            let population = populations.get(municipality).copied();
            body["population"] = serde_json::json!(population);
            body["kg_per_capita"] = serde_json::json!(population
                .and_then(|p| u64::try_from(p).ok())
                .and_then(|p| split.per_capita_kg(p)));
            body["fractions"] = by_code
                .into_iter()
                .map(|(code, rs)| {
                    let mut f = split_body(&TreatmentSplit::of(rs));
                    f["waste_code"] = serde_json::json!(code);
                    f["waste_name"] = serde_json::json!(waste::lookup(code).map(|w| w.name));
                    f
                })
                .collect();
            body
        })
        .collect();
    // The trend: each period's recycling rate against the same municipality's previous period.
    let mut previous: BTreeMap<String, f64> = BTreeMap::new();
    let mut items = items;
    for item in &mut items {
        let municipality = item["municipality"].as_str().unwrap_or_default().to_owned();
        let rate = item["recycling_rate"].as_f64();
        item["recycling_rate_change"] = serde_json::json!(rate
            .zip(previous.get(&municipality))
            .map(|(now, before)| now - before));
        if let Some(rate) = rate {
            previous.insert(municipality, rate);
        }
    }
    if format == Format::Csv {
        return Ok(statistics_csv(&items));
    }
    Ok(json_response(
        &serde_json::json!({ "period": period, "statistics": items }),
    ))
}

/// The statistics as a table: a municipality's period, then its fractions.
pub(crate) fn statistics_csv(items: &[serde_json::Value]) -> Response {
    let mut header = vec![
        "period",
        "municipality",
        "waste_code",
        "waste_name",
        "generated_tonnes",
    ];
    header.extend(Treatment::ALL.iter().map(|t| t.name()));
    header.extend([
        "recycling_rate",
        "recycling_rate_change",
        "population",
        "kg_per_capita",
    ]);
    // Numbers as the other tables write them (100, not 100.0).
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        other => other.to_string(),
    };
    let row = |item: &serde_json::Value, total: &serde_json::Value| {
        let mut row = vec![
            text(&total["period"]),
            text(&total["municipality"]),
            text(&item["waste_code"]),
            text(&item["waste_name"]),
            text(&item["generated_tonnes"]),
        ];
        row.extend(
            Treatment::ALL
                .iter()
                .map(|t| text(&item["treatment_tonnes"][t.name()])),
        );
        row.push(text(&item["recycling_rate"]));
        // The trend and the per-capita figures belong to the municipality's whole period.
        let whole = std::ptr::eq(item, total);
        for field in ["recycling_rate_change", "population", "kg_per_capita"] {
            row.push(if whole {
                text(&total[field])
            } else {
                String::new()
            });
        }
        row
    };
    let rows = items.iter().flat_map(|total| {
        std::iter::once(row(total, total)).chain(
            total["fractions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |fraction| row(fraction, total)),
        )
    });
    csv_response(&header, rows)
}

/// `GET /api/v1/circular/flows`: tonnes from municipality to fraction to treatment, as the nodes
/// and links of a Sankey diagram (as CSV, the links: source, target, tonnes).
#[utoipa::path(get, path = "/api/v1/circular/flows", tag = "circular", params(FlowQuery),
    responses(
        (status = 200, description = "Sankey nodes and links", content(("application/json"), ("text/csv"))),
        (status = 400, description = "A bad parameter", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn sankey(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: std::result::Result<Query<FlowQuery>, QueryRejection>,
) -> Result<Response> {
    let query = parse_query(query)?;
    if query.period.is_some() {
        return Err(ApiError::bad(
            "period",
            "flows take municipality, waste_code, from and to",
        ));
    }
    let format = format(query.format.as_deref(), &headers, false)?;
    let rows = state.store.material_flows(&filter(&query)?).await?;
    let records: Vec<FlowRecord> = records(&rows).into_iter().map(|(_, r)| r).collect();
    let links = waste::sankey(&records);
    if format == Format::Csv {
        return Ok(csv_response(
            &["source", "target", "tonnes"],
            links
                .iter()
                .map(|l| vec![l.source.clone(), l.target.clone(), l.tonnes.to_string()]),
        ));
    }
    let mut nodes: Vec<&str> = links
        .iter()
        .flat_map(|l| [l.source.as_str(), l.target.as_str()])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    Ok(json_response(&serde_json::json!({
        "nodes": nodes,
        "links": links.iter().map(|l| serde_json::json!({
            "source": l.source, "target": l.target, "tonnes": l.tonnes,
        })).collect::<Vec<_>>(),
    })))
}
