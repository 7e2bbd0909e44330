//! The OGC SensorThings API v1.1, sensing part, under `/sta/v1.1`: for researchers' tools that
//! speak it (FROST clients, QGIS plugins, notebooks). Everything is read only, except that a
//! device's key creates Observations ([`create`]).
//!
//! Entities are views of the existing relations (`tidemark_store::sta` says which); the query
//! options are parsed by `tidemark_model::odata` and compiled to SQL in the store. A malformed
//! query is a 400 naming the option; a well-formed one asking for something not implemented is a
//! 501 naming it.
//!
//! Paging: `$top` (default 100, at most [`MAX_TOP`]; more is cut to it, and `@iot.nextLink`
//! continues). Pages continue from the last row's key (`$skiptoken`) when the order allows it (by
//! id, or Observations by `phenomenonTime` or `resultTime`), so that page 1,000 of a long series
//! costs what page 1 does; other orders continue by `$skip`.

pub mod create;

use crate::http::problem::{ApiError, Result};
use crate::http::{rfc3339, typed};
use crate::state::ApiState;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use chrono::DateTime;
use futures_util::future::BoxFuture;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use tidemark_model::odata::{Expand, QueryError, QueryOptions};
use tidemark_store::sta::{After, Cell, Entity, EntityRow, Id, Query, Scope, StaError};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const PREFIX: &str = "/sta/v1.1";
/// The most entities one page holds.
pub const MAX_TOP: u64 = 10_000;
const DEFAULT_TOP: u64 = 100;
/// The most reads one request's `$expand` may make (one per expanded entity and navigation).
const MAX_READS: usize = 2_000;
/// The most entities one answer may hold, expansions included (the top-level page alone holds at
/// most [`MAX_TOP`]), so that nested expansions cannot build an answer without bound.
const MAX_ENTITIES: usize = 50_000;

/// The conformance classes served.
pub const CONFORMANCE: [&str; 4] = [
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/data-array/data-array",
];

#[derive(OpenApi)]
#[openapi(paths(resource, create::create), tags((name = "sensorthings", description = "OGC SensorThings API v1.1 (sensing, read; data array; creating Observations with a device key)")))]
struct StaDoc;

/// The routes: the landing page (documented with the rest) and every resource path below it.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(StaDoc::openapi())
        .routes(routes!(landing))
        .route(
            "/sta/v1.1/{*path}",
            axum::routing::get(resource).merge(
                axum::routing::post(create::create)
                    .layer(axum::extract::DefaultBodyLimit::max(create::MAX_BODY)),
            ),
        )
}

/// The landing page: the entity sets, and the conformance classes served.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Landing {
    pub value: Vec<EntitySet>,
    #[serde(rename = "serverSettings")]
    pub server_settings: ServerSettings,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EntitySet {
    pub name: &'static str,
    pub url: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ServerSettings {
    pub conformance: Vec<&'static str>,
}

/// `GET /sta/v1.1`: the entity sets and the conformance classes served.
#[utoipa::path(get, path = "/sta/v1.1", tag = "sensorthings",
    responses((status = 200, description = "The entity sets and the conformance classes served", body = Landing)))]
pub async fn landing(State(state): State<ApiState>) -> Response {
    let base = format!("{}{PREFIX}", state.settings.base_url());
    crate::http::json_response(&Landing {
        value: Entity::ALL
            .iter()
            .map(|e| EntitySet {
                name: e.set(),
                url: format!("{base}/{}", e.set()),
            })
            .collect(),
        server_settings: ServerSettings {
            conformance: CONFORMANCE.to_vec(),
        },
    })
}

/// Every SensorThings resource path.
#[utoipa::path(get, path = "/sta/v1.1/{path}", tag = "sensorthings",
    params(("path" = String, Path, description = "A resource path: `Things`, `Things(1)`, `Datastreams(5)/Observations`, `Datastreams(5)/Thing/name/$value`, `Things(1)/Datastreams/$ref`")),
    responses(
        (status = 200, description = "An entity, a collection (`value`, `@iot.count`, `@iot.nextLink`), a property, or association links; Observations also as a data array (`$resultFormat=dataArray`)", body = Object),
        (status = 400, description = "A malformed path or query option, named in `parameter`", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entity", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 501, description = "A query this server does not implement, named in `parameter`", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn resource(
    State(state): State<ApiState>,
    Path(path): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let options = QueryOptions::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(query_error)?;
    let ctx = Ctx::new(&state);
    let target = resolve(&ctx, &path).await?;
    if target.single {
        let mut query_options = QueryOptions {
            top: Some(1),
            skip: None,
            count: None,
            ..options.clone()
        };
        match &target.tail {
            Tail::Property(name, _) => {
                query_options.select = Some(vec![name.clone()]);
                query_options.expand.clear();
            }
            Tail::Ref => {
                query_options.select = Some(vec!["id".to_owned()]);
                query_options.expand.clear();
            }
            Tail::None => {}
        }
        let page = ctx
            .read(target.entity, target.scope.clone(), &query_options, None)
            .await?;
        let Some(row) = page.rows.first() else {
            return Err(ApiError::NotFound(path));
        };
        let body = match &target.tail {
            Tail::Ref => format!(
                "{{\"@iot.selfLink\":{}}}",
                json_string(&ctx.self_link(target.entity, &row.id))
            ),
            Tail::Property(name, raw_value) => {
                let cell = row.cells.first().unwrap_or(&Cell::Null);
                if *raw_value {
                    let text = match cell {
                        Cell::Text(t) => t.clone(),
                        other => cell_json(other),
                    };
                    return Ok(typed("text/plain; charset=utf-8", text));
                }
                format!("{{{}:{}}}", json_string(name), cell_json(cell))
            }
            Tail::None => {
                let selection = Selection::of(target.entity, &options)?;
                let mut out = String::new();
                ctx.write_entity(&mut out, target.entity, row, &selection, &options.expand)
                    .await?;
                out
            }
        };
        return Ok(typed("application/json", body));
    }
    if options
        .result_format
        .as_deref()
        .is_some_and(|f| f != "dataArray" && f != "default")
    {
        return Err(ApiError::bad(
            "$resultFormat",
            "the result formats are default and dataArray",
        ));
    }
    let data_array = options.result_format.as_deref() == Some("dataArray");
    if data_array && target.entity != Entity::Observation {
        return Err(ApiError::bad(
            "$resultFormat",
            "dataArray is for Observations only",
        ));
    }
    let after = options
        .skiptoken
        .as_deref()
        .map(|token| {
            parse_token(token).ok_or_else(|| {
                ApiError::bad("$skiptoken", "this token is not one this server gave")
            })
        })
        .transpose()?;
    let page = ctx
        .read(target.entity, target.scope.clone(), &options, after)
        .await?;
    let next = next_link(
        &format!("{}/{}", ctx.base, path.trim_end_matches('/')),
        &pairs,
        &page,
    );
    let mut out = String::from("{");
    if let Some(count) = page.count {
        let _ = write!(out, "\"@iot.count\":{count},");
    }
    if let Some(next) = &next {
        let _ = write!(out, "\"@iot.nextLink\":{},", json_string(next));
    }
    out.push_str("\"value\":[");
    if target.tail == Tail::Ref {
        for (i, row) in page.rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"@iot.selfLink\":{}}}",
                json_string(&ctx.self_link(target.entity, &row.id))
            );
        }
    } else if data_array {
        write_data_array(&ctx, &mut out, &page.rows, &options)?;
    } else {
        let selection = Selection::of(target.entity, &options)?;
        for (i, row) in page.rows.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            ctx.write_entity(&mut out, target.entity, row, &selection, &options.expand)
                .await?;
        }
    }
    out.push_str("]}");
    Ok(typed("application/json", out))
}

/// The link to the page after `page` of the collection at `url`: the options `given` for it,
/// with `$top` and where the next page starts in place of the given ones.
fn next_link(url: &str, given: &[(String, String)], page: &Page) -> Option<String> {
    let next = page.next.as_ref()?;
    let mut link = format!("{url}?");
    let mut first = true;
    for (name, value) in given {
        if !matches!(name.as_str(), "$skip" | "$skiptoken" | "$top") {
            push_pair(&mut link, &mut first, name, value);
        }
    }
    push_pair(&mut link, &mut first, "$top", &page.top.to_string());
    match next {
        Next::Skip(skip) => push_pair(&mut link, &mut first, "$skip", &skip.to_string()),
        Next::Token(token) => push_pair(&mut link, &mut first, "$skiptoken", token),
    }
    Some(link)
}

fn push_pair(link: &mut String, first: &mut bool, name: &str, value: &str) {
    if !*first {
        link.push('&');
    }
    *first = false;
    link.extend(url::form_urlencoded::byte_serialize(name.as_bytes()));
    link.push('=');
    link.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
}

fn query_error(error: QueryError) -> ApiError {
    if error.unsupported {
        ApiError::NotImplemented {
            parameter: Some(error.option),
            detail: error.message,
        }
    } else {
        ApiError::bad(&error.option, error.message)
    }
}

impl From<StaError> for ApiError {
    fn from(error: StaError) -> ApiError {
        match error {
            StaError::Query(e) => query_error(e),
            StaError::Store(e) if tidemark_store::sta::timed_out(&e) => ApiError::BadRequest {
                parameter: None,
                detail: "this query ran past the time limit of a SensorThings read; narrow it \
                         (a $filter on a Datastream, a time range, or an order by time within one \
                         Datastream)"
                    .to_owned(),
            },
            StaError::Store(e) => e.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tail {
    None,
    /// A property of the entity; `true` for its raw `$value`.
    Property(String, bool),
    Ref,
}

struct Target {
    entity: Entity,
    scope: Scope,
    single: bool,
    tail: Tail,
}

/// `Name` or `Name(id)`.
fn segment(text: &str) -> (&str, Option<&str>) {
    match text.find('(') {
        Some(open) if text.ends_with(')') => (&text[..open], Some(&text[open + 1..text.len() - 1])),
        _ => (text, None),
    }
}

async fn resolve(ctx: &Ctx<'_>, path: &str) -> Result<Target> {
    let not_found = || ApiError::NotFound(format!("{PREFIX}/{path}"));
    let mut segments = path.trim_end_matches('/').split('/');
    let (set, id) = segment(segments.next().unwrap_or_default());
    let entity = Entity::from_set(set).ok_or_else(not_found)?;
    let mut target =
        match id {
            Some(text) => Target {
                entity,
                scope: Scope::One(Id::parse(entity, text).ok_or_else(|| {
                    ApiError::bad("path", format!("{text:?} is not an id of {set}"))
                })?),
                single: true,
                tail: Tail::None,
            },
            None => Target {
                entity,
                scope: Scope::All,
                single: false,
                tail: Tail::None,
            },
        };
    for part in segments {
        match (&target.tail, part) {
            (Tail::None, "$ref") => {
                target.tail = Tail::Ref;
                continue;
            }
            (Tail::Property(name, false), "$value") => {
                target.tail = Tail::Property(name.clone(), true);
                continue;
            }
            (Tail::None, _) => {}
            _ => {
                return Err(ApiError::bad(
                    "path",
                    format!("nothing may follow {part:?}"),
                ))
            }
        }
        if !target.single {
            return Err(ApiError::bad(
                "path",
                format!("{part:?} follows a collection; address one entity first"),
            ));
        }
        let (name, id) = segment(part);
        if let Some((to, many)) = target.entity.navigate(name) {
            if id.is_some() {
                return Err(ApiError::NotImplemented {
                    parameter: Some("path".to_owned()),
                    detail: format!("address the entity as {}(id)", to.set()),
                });
            }
            let parent = ctx.id_of(&target).await?.ok_or_else(not_found)?;
            target = Target {
                entity: to,
                scope: Scope::Related {
                    parent: target.entity,
                    id: parent,
                    nav: name.to_owned(),
                },
                single: !many,
                tail: Tail::None,
            };
        } else if id.is_none() && target.entity.properties().any(|p| p == name) {
            target.tail = Tail::Property(name.to_owned(), false);
        } else {
            return Err(not_found());
        }
    }
    Ok(target)
}

/// Which members an entity's JSON holds.
struct Selection {
    props: Vec<&'static str>,
    id: bool,
    self_link: bool,
    navs: Vec<&'static str>,
}

impl Selection {
    fn of(entity: Entity, options: &QueryOptions) -> Result<Selection> {
        let Some(names) = &options.select else {
            return Ok(Selection {
                props: entity.properties().collect(),
                id: true,
                self_link: true,
                navs: entity.navigation().map(|(n, ..)| n).collect(),
            });
        };
        let mut selection = Selection {
            props: Vec::new(),
            id: false,
            self_link: false,
            navs: Vec::new(),
        };
        for name in names {
            match name.as_str() {
                "id" | "@iot.id" => selection.id = true,
                "@iot.selfLink" => selection.self_link = true,
                other => {
                    if let Some(p) = entity.properties().find(|p| *p == other) {
                        selection.props.push(p);
                    } else if let Some((n, ..)) = entity.navigation().find(|(n, ..)| *n == other) {
                        selection.navs.push(n);
                    } else {
                        return Err(ApiError::bad(
                            "$select",
                            format!("{} has no property {other}", entity.singular()),
                        ));
                    }
                }
            }
        }
        // In the entity's own order, whatever the request's.
        selection.props = entity
            .properties()
            .filter(|p| selection.props.contains(p))
            .collect();
        Ok(selection)
    }
}

/// Where the next page starts.
enum Next {
    Skip(u64),
    Token(String),
}

struct Page {
    rows: Vec<EntityRow>,
    count: Option<i64>,
    next: Option<Next>,
    top: u64,
}

struct Ctx<'a> {
    state: &'a ApiState,
    base: String,
    reads: AtomicUsize,
    entities: AtomicUsize,
}

impl<'a> Ctx<'a> {
    /// A request's context, with nothing read yet.
    fn new(state: &'a ApiState) -> Ctx<'a> {
        Ctx {
            state,
            base: format!("{}{PREFIX}", state.settings.base_url()),
            reads: AtomicUsize::new(0),
            entities: AtomicUsize::new(0),
        }
    }

    fn self_link(&self, entity: Entity, id: &Id) -> String {
        format!("{}/{}({})", self.base, entity.set(), id.url())
    }

    /// The id of the one entity `target` addresses, if it exists.
    async fn id_of(&self, target: &Target) -> Result<Option<Id>> {
        if let Scope::One(id) = &target.scope {
            return Ok(self
                .state
                .store
                .sta_exists(target.entity, id)
                .await?
                .then(|| id.clone()));
        }
        let just_the_id = QueryOptions {
            select: Some(vec!["id".to_owned()]),
            ..QueryOptions::default()
        };
        let page = self
            .read(target.entity, target.scope.clone(), &just_the_id, None)
            .await?;
        Ok(page.rows.into_iter().next().map(|row| row.id))
    }

    /// One page of `entity` in `scope`, with the properties `options` select.
    async fn read(
        &self,
        entity: Entity,
        scope: Scope,
        options: &QueryOptions,
        after: Option<After>,
    ) -> Result<Page> {
        if self.reads.fetch_add(1, Ordering::Relaxed) >= MAX_READS {
            return Err(ApiError::bad(
                "$expand",
                format!("this request would read more than {MAX_READS} times; lower $top inside $expand"),
            ));
        }
        let top = options.top.unwrap_or(DEFAULT_TOP).min(MAX_TOP);
        let skip = if after.is_some() {
            0
        } else {
            options.skip.unwrap_or(0)
        };
        let query = Query {
            entity,
            scope,
            filter: options.filter.as_ref(),
            orderby: &options.orderby,
            select: Selection::of(entity, options)?.props,
            limit: i64::try_from(top + 1).unwrap_or(i64::MAX),
            offset: i64::try_from(skip).map_err(|_| ApiError::bad("$skip", "too large"))?,
            after,
            timeout: Some(self.state.settings.sta_query_timeout),
        };
        let count = if options.count == Some(true) {
            Some(self.state.store.sta_count(&query).await?)
        } else {
            None
        };
        let mut rows = self.state.store.sta_page(&query).await?;
        // `$top=0` asks for no entities (a count, say): there is no next page of nothing.
        let more = top > 0 && rows.len() as u64 > top;
        rows.truncate(usize::try_from(top).unwrap_or(usize::MAX));
        if self.entities.fetch_add(rows.len(), Ordering::Relaxed) + rows.len() > MAX_ENTITIES {
            return Err(ApiError::bad(
                "$expand",
                format!("this answer would hold more than {MAX_ENTITIES} entities; lower $top inside $expand"),
            ));
        }
        let next = match (more, query.keyset(), rows.last()) {
            (false, ..) => None,
            (true, Some(by_time), Some(last)) => Some(Next::Token(token(&last.id, by_time))),
            (true, ..) => Some(Next::Skip(skip + top)),
        };
        Ok(Page {
            rows,
            count,
            next,
            top,
        })
    }

    /// Writes one entity's JSON, with its expansions.
    fn write_entity<'b>(
        &'b self,
        out: &'b mut String,
        entity: Entity,
        row: &'b EntityRow,
        selection: &'b Selection,
        expand: &'b [Expand],
    ) -> BoxFuture<'b, Result<()>> {
        Box::pin(async move {
            let link = self.self_link(entity, &row.id);
            out.push('{');
            let mut first = true;
            // Member names are this module's own identifiers: nothing in them needs escaping.
            let mut key = |out: &mut String, name: &str| {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push('"');
                out.push_str(name);
                out.push_str("\":");
            };
            let mut member = |out: &mut String, name: &str, value: &str| {
                key(out, name);
                out.push_str(value);
            };
            if selection.id {
                let id = match &row.id {
                    Id::Int(n) => n.to_string(),
                    other => json_string(&other.json_text()),
                };
                member(out, "@iot.id", &id);
            }
            if selection.self_link {
                member(out, "@iot.selfLink", &json_string(&link));
            }
            for (name, cell) in selection.props.iter().zip(&row.cells) {
                member(out, name, "");
                write_cell(out, cell);
            }
            for nav in &selection.navs {
                member(
                    out,
                    &format!("{nav}@iot.navigationLink"),
                    &json_string(&format!("{link}/{nav}")),
                );
            }
            for item in merged(expand) {
                let name = item.path[0].as_str();
                let Some((to, many)) = entity.navigate(name) else {
                    return Err(ApiError::bad(
                        "$expand",
                        format!("{} has no navigation property {name}", entity.singular()),
                    ));
                };
                let scope = Scope::Related {
                    parent: entity,
                    id: row.id.clone(),
                    nav: name.to_owned(),
                };
                let page = self.read(to, scope, &item.options, None).await?;
                let child = Selection::of(to, &item.options)?;
                let mut value = String::new();
                if many {
                    value.push('[');
                    for (i, r) in page.rows.iter().enumerate() {
                        if i > 0 {
                            value.push(',');
                        }
                        self.write_entity(&mut value, to, r, &child, &item.options.expand)
                            .await?;
                    }
                    value.push(']');
                    if let Some(count) = page.count {
                        member(out, &format!("{name}@iot.count"), &count.to_string());
                    }
                    if let Some(next) = next_link(&format!("{link}/{name}"), &item.given, &page) {
                        member(out, &format!("{name}@iot.nextLink"), &json_string(&next));
                    }
                    member(out, name, &value);
                } else if let Some(r) = page.rows.first() {
                    self.write_entity(&mut value, to, r, &child, &item.options.expand)
                        .await?;
                    member(out, name, &value);
                }
            }
            out.push('}');
            Ok(())
        })
    }
}

/// `$expand` items with their paths folded: `Datastreams/Observations` is `Datastreams` expanding
/// `Observations`, and two items through one property are one.
fn merged(expand: &[Expand]) -> Vec<Expand> {
    let mut out: Vec<Expand> = Vec::new();
    for item in expand {
        let Some((first, rest)) = item.path.split_first() else {
            continue;
        };
        let nested = (!rest.is_empty()).then(|| Expand {
            path: rest.to_vec(),
            options: item.options.clone(),
            given: item.given.clone(),
        });
        match out.iter_mut().find(|e| e.path[0] == *first) {
            Some(existing) => {
                if let Some(nested) = nested {
                    existing.options.expand.push(nested);
                } else {
                    let expands = std::mem::take(&mut existing.options.expand);
                    existing.options = item.options.clone();
                    existing.options.expand.extend(expands);
                    existing.given = item.given.clone();
                }
            }
            None => out.push(match nested {
                Some(nested) => Expand {
                    path: vec![first.clone()],
                    options: QueryOptions {
                        expand: vec![nested],
                        ..QueryOptions::default()
                    },
                    given: Vec::new(),
                },
                None => item.clone(),
            }),
        }
    }
    out
}

/// The Data Array extension: the page's Observations grouped by Datastream, each a list of
/// component values.
fn write_data_array(
    ctx: &Ctx<'_>,
    out: &mut String,
    rows: &[EntityRow],
    options: &QueryOptions,
) -> Result<()> {
    // Without `$select`, the selection is every property and the id.
    let selection = Selection::of(Entity::Observation, options)?;
    let with_id = selection.id;
    let mut components: Vec<String> = Vec::new();
    if with_id {
        components.push("\"id\"".to_owned());
    }
    components.extend(selection.props.iter().map(|p| json_string(p)));
    let mut start = 0;
    let mut groups = 0;
    while start < rows.len() {
        let sensor = match &rows[start].id {
            Id::Reading(s, _) => *s,
            _ => {
                return Err(ApiError::Internal(
                    "an observation without a reading id".into(),
                ))
            }
        };
        let end = rows[start..]
            .iter()
            .position(|r| !matches!(&r.id, Id::Reading(s, _) if *s == sensor))
            .map_or(rows.len(), |p| start + p);
        if groups > 0 {
            out.push(',');
        }
        groups += 1;
        let _ = write!(
            out,
            "{{\"Datastream@iot.navigationLink\":{},\"components\":[{}],\"dataArray@iot.count\":{},\"dataArray\":[",
            json_string(&format!("{}/Datastreams({sensor})", ctx.base)),
            components.join(","),
            end - start
        );
        for (i, row) in rows[start..end].iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('[');
            let mut first = true;
            if with_id {
                out.push_str(&json_string(&row.id.json_text()));
                first = false;
            }
            for cell in &row.cells {
                if !first {
                    out.push(',');
                }
                first = false;
                write_cell(out, cell);
            }
            out.push(']');
        }
        out.push_str("]}");
        start = end;
    }
    Ok(())
}

/// The `$skiptoken` after `id`: by id (`i`, `s`, `o`) or, for Observations by time, `t`.
fn token(id: &Id, by_time: bool) -> String {
    match (id, by_time) {
        (Id::Reading(sensor, ts), true) => format!("t{}_{sensor}", ts.timestamp_micros()),
        (Id::Reading(sensor, ts), false) => format!("o{sensor}-{}", ts.timestamp_micros()),
        (Id::Int(n), _) => format!("i{n}"),
        (Id::Text(t), _) => format!("s{t}"),
    }
}

fn parse_token(token: &str) -> Option<After> {
    let (kind, rest) = token.split_at_checked(1)?;
    match kind {
        "t" => {
            let (micros, sensor) = rest.split_once('_')?;
            Some(After::Time(
                DateTime::from_timestamp_micros(micros.parse().ok()?)?,
                sensor.parse().ok()?,
            ))
        }
        "o" => Id::parse(Entity::Observation, rest).map(After::Id),
        "i" => rest.parse().ok().map(|n| After::Id(Id::Int(n))),
        "s" => Some(After::Id(Id::Text(rest.to_owned()))),
        _ => None,
    }
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

fn cell_json(cell: &Cell) -> String {
    let mut out = String::new();
    write_cell(&mut out, cell);
    out
}

/// Writes a cell's JSON value.
fn write_cell(out: &mut String, cell: &Cell) {
    let time = |out: &mut String, t: &DateTime<chrono::Utc>| {
        out.push('"');
        out.push_str(&rfc3339(*t));
        out.push('"');
    };
    match cell {
        Cell::Null | Cell::Extent(None) => out.push_str("null"),
        Cell::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Cell::Float(x) => match serde_json::Number::from_f64(*x) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        Cell::Text(t) => out.push_str(&json_string(t)),
        Cell::Time(t) => time(out, t),
        Cell::Json(v) => {
            let _ = write!(out, "{v}");
        }
        Cell::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Cell::Extent(Some((start, end))) => out.push_str(&json_string(&format!(
            "{}/{}",
            rfc3339(*start),
            rfc3339(*end)
        ))),
        Cell::Quality(0) => out.push_str("[\"good\"]"),
        Cell::Quality(q) => out.push_str(
            &serde_json::to_string(&tidemark_model::Quality(*q).names())
                .unwrap_or_else(|_| "[]".to_owned()),
        ),
        Cell::Received(t) => {
            out.push_str("{\"receivedAt\":");
            time(out, t);
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let ts = DateTime::from_timestamp_micros(1_697_803_200_000_001).unwrap();
        assert_eq!(
            parse_token(&token(&Id::Reading(3, ts), true)),
            Some(After::Time(ts, 3))
        );
        assert_eq!(
            parse_token(&token(&Id::Reading(3, ts), false)),
            Some(After::Id(Id::Reading(3, ts)))
        );
        assert_eq!(
            parse_token(&token(&Id::Int(9), false)),
            Some(After::Id(Id::Int(9)))
        );
        assert_eq!(parse_token("x1"), None);
        assert_eq!(parse_token(""), None);
        assert_eq!(parse_token("t12"), None);
    }

    #[test]
    fn expand_paths_fold_into_nested_expands() {
        let options = QueryOptions::parse([(
            "$expand",
            "Datastreams/Observations($top=1),Datastreams($top=2),Locations",
        )])
        .unwrap();
        let folded = merged(&options.expand);
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[0].path, ["Datastreams"]);
        assert_eq!(folded[0].options.top, Some(2));
        assert_eq!(folded[0].options.expand[0].path, ["Observations"]);
        assert_eq!(folded[0].options.expand[0].options.top, Some(1));
        assert_eq!(folded[1].path, ["Locations"]);
    }
}
