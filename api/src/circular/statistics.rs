//! Recycling statistics per period and material, and Sankey flows.

use super::records::{filter, FlowQuery};
use crate::http::problem::{ApiError, Result};
use crate::http::{csv_response, format, json_response, optional, parse_query, Format};
use crate::state::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{Datelike, NaiveDate};
use serde::Serialize;
use std::collections::BTreeMap;
use tidemark_model::waste::{self, FlowRecord, Treatment, TreatmentSplit};
use utoipa::ToSchema;

pub(crate) fn period_of(date: NaiveDate, period: &str) -> String {
    match period {
        "month" => format!("{}-{:02}", date.year(), date.month()),
        "quarter" => format!("{}-Q{}", date.year(), (date.month() - 1) / 3 + 1),
        _ => date.year().to_string(),
    }
}

/// Tonnes by treatment and the recycling rate of a municipality's period, or of one fraction.
#[derive(Debug, Serialize, ToSchema)]
pub struct SplitBody {
    pub generated_tonnes: f64,
    /// Tonnes by treatment (every treatment, 0 where none).
    pub treatment_tonnes: BTreeMap<&'static str, f64>,
    /// Prepared for reuse plus recycled, over generated; none when nothing was generated.
    pub recycling_rate: Option<f64>,
}

pub(crate) fn split_body(split: &TreatmentSplit) -> SplitBody {
    SplitBody {
        generated_tonnes: split.generated(),
        treatment_tonnes: Treatment::ALL
            .iter()
            .map(|t| (t.name(), split.tonnes.get(t).copied().unwrap_or(0.0)))
            .collect(),
        recycling_rate: split.recycling_rate(),
    }
}

/// `GET /api/v1/circular/statistics`
#[derive(Debug, Serialize, ToSchema)]
pub struct StatisticsBody {
    /// year, quarter or month.
    pub period: String,
    /// Oldest period first.
    pub statistics: Vec<PeriodStatistics>,
}

/// A municipality's period.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodStatistics {
    /// `2025`, `2025-Q3` or `2025-07`.
    pub period: String,
    pub municipality: String,
    #[serde(flatten)]
    pub split: SplitBody,
    /// The change of the recycling rate since the municipality's previous period.
    pub recycling_rate_change: Option<f64>,
    pub population: Option<i32>,
    pub kg_per_capita: Option<f64>,
    pub fractions: Vec<FractionStatistics>,
}

/// One waste fraction of a municipality's period.
#[derive(Debug, Serialize, ToSchema)]
pub struct FractionStatistics {
    pub waste_code: String,
    pub waste_name: Option<&'static str>,
    #[serde(flatten)]
    pub split: SplitBody,
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
        (status = 200, description = "Statistics by municipality and period", content((StatisticsBody = "application/json"), (String = "text/csv"))),
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
    let mut items: Vec<PeriodStatistics> = groups
        .iter()
        .map(|((period, municipality), records)| {
            let mut by_code: BTreeMap<&str, Vec<&FlowRecord>> = BTreeMap::new();
            for r in records {
                by_code.entry(r.waste_code.as_str()).or_default().push(r);
            }
            let split = TreatmentSplit::of(records.iter());
            let population = populations.get(municipality).copied();
            PeriodStatistics {
                period: period.clone(),
                municipality: municipality.clone(),
                kg_per_capita: population
                    .and_then(|p| u64::try_from(p).ok())
                    .and_then(|p| split.per_capita_kg(p)),
                split: split_body(&split),
                recycling_rate_change: None,
                population,
                fractions: by_code
                    .into_iter()
                    .map(|(code, rs)| FractionStatistics {
                        waste_code: code.to_owned(),
                        waste_name: waste::lookup(code).map(|w| w.name),
                        split: split_body(&TreatmentSplit::of(rs)),
                    })
                    .collect(),
            }
        })
        .collect();
    // The trend: each period's recycling rate against the same municipality's previous period.
    let mut previous: BTreeMap<String, f64> = BTreeMap::new();
    for item in &mut items {
        let rate = item.split.recycling_rate;
        item.recycling_rate_change = rate
            .zip(previous.get(&item.municipality))
            .map(|(now, before)| now - before);
        if let Some(rate) = rate {
            previous.insert(item.municipality.clone(), rate);
        }
    }
    if format == Format::Csv {
        return Ok(statistics_csv(&items));
    }
    Ok(json_response(&StatisticsBody {
        period: period.to_owned(),
        statistics: items,
    }))
}

/// The statistics as a table: a municipality's period, then its fractions. The trend and the
/// per-capita figures belong to the municipality's whole period, and are empty on its fractions.
pub(crate) fn statistics_csv(items: &[PeriodStatistics]) -> Response {
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
    // Numbers as the other tables write them (100, not 100.0), absent ones empty.
    let row = |item: &PeriodStatistics, fraction: Option<&FractionStatistics>| {
        let split = fraction.map_or(&item.split, |f| &f.split);
        let mut row = vec![
            item.period.clone(),
            item.municipality.clone(),
            optional(fraction.map(|f| &f.waste_code)),
            optional(fraction.and_then(|f| f.waste_name)),
            split.generated_tonnes.to_string(),
        ];
        row.extend(
            Treatment::ALL
                .iter()
                .map(|t| optional(split.treatment_tonnes.get(t.name()))),
        );
        row.push(optional(split.recycling_rate));
        if fraction.is_none() {
            row.extend([
                optional(item.recycling_rate_change),
                optional(item.population),
                optional(item.kg_per_capita),
            ]);
        } else {
            row.extend([String::new(), String::new(), String::new()]);
        }
        row
    };
    let rows = items.iter().flat_map(|item| {
        std::iter::once(row(item, None))
            .chain(item.fractions.iter().map(move |f| row(item, Some(f))))
    });
    csv_response(&header, rows)
}

/// `GET /api/v1/circular/flows`: tonnes from municipality to fraction to treatment, as the nodes
/// and links of a Sankey diagram (as CSV, the links: source, target, tonnes).
#[utoipa::path(get, path = "/api/v1/circular/flows", tag = "circular", params(FlowQuery),
    responses(
        (status = 200, description = "Sankey nodes and links", content((SankeyBody = "application/json"), (String = "text/csv"))),
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
    let mut nodes: Vec<String> = links
        .iter()
        .flat_map(|l| [l.source.clone(), l.target.clone()])
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    Ok(json_response(&SankeyBody {
        nodes,
        links: links
            .into_iter()
            .map(|l| SankeyLink {
                source: l.source,
                target: l.target,
                tonnes: l.tonnes,
            })
            .collect(),
    }))
}

/// The nodes and links of a Sankey diagram: municipality to fraction to treatment.
#[derive(Debug, Serialize, ToSchema)]
pub struct SankeyBody {
    /// Every node's name, sorted.
    pub nodes: Vec<String>,
    pub links: Vec<SankeyLink>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SankeyLink {
    pub source: String,
    pub target: String,
    pub tonnes: f64,
}
