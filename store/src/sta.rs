//! The relations as OGC SensorThings API v1.1 entities, and SensorThings queries compiled to SQL.
//!
//! No second copy of anything: every entity set is a view of the existing relations.
//!
//! | Entity set          | Rows                                      | `@iot.id`             |
//! |---------------------|-------------------------------------------|-----------------------|
//! | Things              | stations                                  | the station's id      |
//! | Locations           | stations (their position)                 | the station's id      |
//! | HistoricalLocations | stations (one each: where it has been)    | the station's id      |
//! | FeaturesOfInterest  | stations (the place observed)             | the station's id      |
//! | Sensors             | devices                                   | the device's id       |
//! | ObservedProperties  | the quantities that stations' sensors measure | the quantity's name |
//! | Datastreams         | sensors at a station                      | the sensor's id       |
//! | Observations        | readings of those sensors                 | `"<sensor id>-<µs since 1970>"` |
//!
//! A sensor without a station has no Thing, so it is not a Datastream here (the open data API
//! still serves it).
//!
//! Every value from the request reaches PostgreSQL as a bound parameter; the SQL text is built only
//! from this module's own fragments. What the compiler cannot express answers as unsupported
//! (HTTP 501), with what it is.

use crate::{Context, Result as StoreResult, Store};
use chrono::{DateTime, Utc};
use std::fmt::Write as _;
use tidemark_model::odata::{Expr, Geometry, Op, OrderBy, QueryError};
use tidemark_model::Quantity;
use tokio_postgres::types::ToSql;

/// An entity type of the sensing part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity {
    Thing,
    Location,
    HistoricalLocation,
    Sensor,
    ObservedProperty,
    Datastream,
    Observation,
    FeatureOfInterest,
}

impl Entity {
    pub const ALL: [Entity; 8] = [
        Entity::Thing,
        Entity::Location,
        Entity::HistoricalLocation,
        Entity::Datastream,
        Entity::Sensor,
        Entity::Observation,
        Entity::ObservedProperty,
        Entity::FeatureOfInterest,
    ];

    /// The entity set's name in URLs.
    pub fn set(self) -> &'static str {
        match self {
            Entity::Thing => "Things",
            Entity::Location => "Locations",
            Entity::HistoricalLocation => "HistoricalLocations",
            Entity::Sensor => "Sensors",
            Entity::ObservedProperty => "ObservedProperties",
            Entity::Datastream => "Datastreams",
            Entity::Observation => "Observations",
            Entity::FeatureOfInterest => "FeaturesOfInterest",
        }
    }

    /// The entity's name as a to-one navigation property.
    pub fn singular(self) -> &'static str {
        match self {
            Entity::Thing => "Thing",
            Entity::Location => "Location",
            Entity::HistoricalLocation => "HistoricalLocation",
            Entity::Sensor => "Sensor",
            Entity::ObservedProperty => "ObservedProperty",
            Entity::Datastream => "Datastream",
            Entity::Observation => "Observation",
            Entity::FeatureOfInterest => "FeatureOfInterest",
        }
    }

    pub fn from_set(name: &str) -> Option<Entity> {
        Entity::ALL.into_iter().find(|e| e.set() == name)
    }

    fn spec(self) -> &'static Spec {
        match self {
            Entity::Thing => &THING,
            Entity::Location => &LOCATION,
            Entity::HistoricalLocation => &HISTORICAL_LOCATION,
            Entity::Sensor => &SENSOR,
            Entity::ObservedProperty => &OBSERVED_PROPERTY,
            Entity::Datastream => &DATASTREAM,
            Entity::Observation => &OBSERVATION,
            Entity::FeatureOfInterest => &FEATURE_OF_INTEREST,
        }
    }

    /// The entity's properties, in the order they are written.
    pub fn properties(self) -> impl Iterator<Item = &'static str> {
        self.spec().props.iter().filter(|p| p.out).map(|p| p.name)
    }

    /// The entity's navigation properties: name, target, and whether it is to-many.
    pub fn navigation(self) -> impl Iterator<Item = (&'static str, Entity, bool)> {
        RELATIONS
            .iter()
            .filter(move |r| r.from == self)
            .map(|r| (r.name(), r.to, r.many))
    }

    /// The navigation property `name` of this entity.
    pub fn navigate(self, name: &str) -> Option<(Entity, bool)> {
        self.navigation()
            .find(|(n, ..)| *n == name)
            .map(|(_, to, many)| (to, many))
    }
}

/// How a property is stored and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Text,
    Time,
    /// JSON built by the database (objects, GeoJSON).
    Json,
    /// A `[start, end]` JSON pair of times, written as an ISO 8601 interval.
    Extent,
    /// Quality flags (a smallint), written as their names.
    Quality,
    /// The time a reading arrived, written as `{"receivedAt": ...}`.
    Received,
    Bool,
    /// A point for geometric comparisons; never written.
    Point,
    Date,
}

struct Prop {
    name: &'static str,
    /// SQL over the entity's alias `{a}`.
    sql: &'static str,
    kind: Kind,
    /// Written in the entity's JSON (false for the filter-only spellings).
    out: bool,
}

const fn p(name: &'static str, sql: &'static str, kind: Kind) -> Prop {
    Prop {
        name,
        sql,
        kind,
        out: true,
    }
}

/// A property only `$filter` and `$orderby` see (`properties/key`, the geometry as a point).
const fn f(name: &'static str, sql: &'static str, kind: Kind) -> Prop {
    Prop {
        name,
        sql,
        kind,
        out: false,
    }
}

struct Spec {
    /// The FROM clause over alias `{a}`.
    from: &'static str,
    /// The id's column (`{a}.id`); Observations have a two-column key instead.
    id: &'static str,
    props: &'static [Prop],
}

const POINT_JSON: &str =
    "json_build_object('type', 'Point', 'coordinates', json_build_array({a}.lon, {a}.lat))";

static THING: Spec = Spec {
    from: "stations {a}",
    id: "{a}.id",
    props: &[
        p("name", "{a}.name", Kind::Text),
        p("description", "replace({a}.kind, '_', ' ') || ' ' || {a}.name", Kind::Text),
        p(
            "properties",
            "json_build_object('key', {a}.key, 'kind', {a}.kind, 'municipality', {a}.municipality_code)",
            Kind::Json,
        ),
        f("properties/key", "{a}.key", Kind::Text),
        f("properties/kind", "{a}.kind", Kind::Text),
        f("properties/municipality", "{a}.municipality_code", Kind::Text),
    ],
};

static LOCATION: Spec = Spec {
    from: "stations {a}",
    id: "{a}.id",
    props: &[
        p("name", "{a}.name", Kind::Text),
        p("description", "'Position of ' || {a}.name", Kind::Text),
        p("encodingType", "'application/geo+json'", Kind::Text),
        p("location", POINT_JSON, Kind::Json),
        f("location", "point({a}.lon, {a}.lat)", Kind::Point),
        f("properties/key", "{a}.key", Kind::Text),
    ],
};

static HISTORICAL_LOCATION: Spec = Spec {
    from: "stations {a}",
    id: "{a}.id",
    props: &[p("time", "{a}.created_at", Kind::Time)],
};

static FEATURE_OF_INTEREST: Spec = Spec {
    from: "stations {a}",
    id: "{a}.id",
    props: &[
        p("name", "{a}.name", Kind::Text),
        p(
            "description",
            "'Waters observed at ' || {a}.name",
            Kind::Text,
        ),
        p("encodingType", "'application/geo+json'", Kind::Text),
        p("feature", POINT_JSON, Kind::Json),
        f("feature", "point({a}.lon, {a}.lat)", Kind::Point),
        f("properties/key", "{a}.key", Kind::Text),
    ],
};

static SENSOR: Spec = Spec {
    from: "devices {a}",
    id: "{a}.id",
    props: &[
        p(
            "name",
            "coalesce(nullif({a}.name, ''), {a}.key)",
            Kind::Text,
        ),
        p("description", "'Device ' || {a}.key", Kind::Text),
        p("encodingType", "'text/plain'", Kind::Text),
        p("metadata", "{a}.key", Kind::Text),
        p(
            "properties",
            "json_build_object('key', {a}.key, 'enabled', {a}.enabled)",
            Kind::Json,
        ),
        f("properties/key", "{a}.key", Kind::Text),
        f("properties/enabled", "{a}.enabled", Kind::Bool),
    ],
};

static OBSERVED_PROPERTY: Spec = Spec {
    from: "(SELECT DISTINCT quantity AS id FROM sensors WHERE station_id IS NOT NULL) {a}",
    id: "{a}.id",
    props: &[
        p("name", "{a}.id", Kind::Text),
        p(
            "definition",
            "'urn:tidemark:quantity:' || {a}.id",
            Kind::Text,
        ),
        p(
            "description",
            "(SELECT q.description FROM {quantities} WHERE q.name = {a}.id)",
            Kind::Text,
        ),
    ],
};

static DATASTREAM: Spec = Spec {
    from: "sensors {a} JOIN stations {a}t ON {a}t.id = {a}.station_id",
    id: "{a}.id",
    props: &[
        p("name", "coalesce(nullif({a}.name, ''), {a}.key)", Kind::Text),
        p("description", "{a}.quantity || ' at ' || {a}t.name", Kind::Text),
        p(
            "unitOfMeasurement",
            "(SELECT json_build_object('name', q.unit_name, 'symbol', q.symbol, 'definition', q.definition) FROM {quantities} WHERE q.name = {a}.quantity)",
            Kind::Json,
        ),
        p(
            "observationType",
            "'http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement'",
            Kind::Text,
        ),
        p(
            "observedArea",
            "json_build_object('type', 'Point', 'coordinates', json_build_array({a}t.lon, {a}t.lat))",
            Kind::Json,
        ),
        p("phenomenonTime", EXTENT, Kind::Extent),
        p("resultTime", EXTENT, Kind::Extent),
        p(
            "properties",
            "json_build_object('key', {a}.key, 'quantity', {a}.quantity, 'expectedIntervalSeconds', extract(epoch FROM {a}.expected_interval))",
            Kind::Json,
        ),
        f("observedArea", "point({a}t.lon, {a}t.lat)", Kind::Point),
        f("properties/key", "{a}.key", Kind::Text),
        f("properties/quantity", "{a}.quantity", Kind::Text),
        f("unitOfMeasurement/symbol", "(SELECT q.symbol FROM {quantities} WHERE q.name = {a}.quantity)", Kind::Text),
    ],
};

const EXTENT: &str =
    "(SELECT json_build_array(min(r.ts), max(r.ts)) FROM readings r WHERE r.sensor_id = {a}.id)";

static OBSERVATION: Spec = Spec {
    from:
        "readings {a} JOIN sensors {a}s ON {a}s.id = {a}.sensor_id AND {a}s.station_id IS NOT NULL",
    id: "",
    props: &[
        p("phenomenonTime", "{a}.ts", Kind::Time),
        p("resultTime", "{a}.ts", Kind::Time),
        p("result", "{a}.value", Kind::Float),
        p("resultQuality", "{a}.quality", Kind::Quality),
        p("parameters", "{a}.received_at", Kind::Received),
        f("parameters/receivedAt", "{a}.received_at", Kind::Time),
    ],
};

/// A navigation property between two entity types.
struct Relation {
    from: Entity,
    to: Entity,
    many: bool,
    /// Joins the parent `{p}` with the child `{c}`.
    join: &'static str,
    /// The child `{c}` of the parent whose id is parameter `{id}`, where that is simpler than a
    /// join (the readings of one sensor: an index range, not a semi-join).
    direct: Option<&'static str>,
}

impl Relation {
    fn name(&self) -> &'static str {
        if self.many {
            self.to.set()
        } else {
            self.to.singular()
        }
    }
}

const fn rel(
    from: Entity,
    to: Entity,
    many: bool,
    join: &'static str,
    direct: Option<&'static str>,
) -> Relation {
    Relation {
        from,
        to,
        many,
        join,
        direct,
    }
}

static RELATIONS: [Relation; 16] = [
    rel(
        Entity::Thing,
        Entity::Location,
        true,
        "{c}.id = {p}.id",
        Some("{c}.id = {id}"),
    ),
    rel(
        Entity::Thing,
        Entity::HistoricalLocation,
        true,
        "{c}.id = {p}.id",
        Some("{c}.id = {id}"),
    ),
    rel(
        Entity::Thing,
        Entity::Datastream,
        true,
        "{c}.station_id = {p}.id",
        Some("{c}.station_id = {id}"),
    ),
    rel(
        Entity::Location,
        Entity::Thing,
        true,
        "{c}.id = {p}.id",
        Some("{c}.id = {id}"),
    ),
    rel(
        Entity::Location,
        Entity::HistoricalLocation,
        true,
        "{c}.id = {p}.id",
        Some("{c}.id = {id}"),
    ),
    rel(
        Entity::HistoricalLocation,
        Entity::Thing,
        false,
        "{c}.id = {p}.id",
        Some("{c}.id = {id}"),
    ),
    rel(
        Entity::HistoricalLocation,
        Entity::Location,
        true,
        "{c}.id = {p}.id",
        Some("{c}.id = {id}"),
    ),
    rel(
        Entity::Sensor,
        Entity::Datastream,
        true,
        "{c}.device_id = {p}.id",
        Some("{c}.device_id = {id}"),
    ),
    rel(
        Entity::ObservedProperty,
        Entity::Datastream,
        true,
        "{c}.quantity = {p}.id",
        Some("{c}.quantity = {id}"),
    ),
    rel(
        Entity::Datastream,
        Entity::Thing,
        false,
        "{c}.id = {p}.station_id",
        None,
    ),
    rel(
        Entity::Datastream,
        Entity::Sensor,
        false,
        "{c}.id = {p}.device_id",
        None,
    ),
    rel(
        Entity::Datastream,
        Entity::ObservedProperty,
        false,
        "{c}.id = {p}.quantity",
        None,
    ),
    rel(
        Entity::Datastream,
        Entity::Observation,
        true,
        "{c}.sensor_id = {p}.id",
        Some("{c}.sensor_id = {id}"),
    ),
    rel(
        Entity::Observation,
        Entity::Datastream,
        false,
        "{c}.id = {p}.sensor_id",
        None,
    ),
    rel(
        Entity::Observation,
        Entity::FeatureOfInterest,
        false,
        "{c}.id = {p}s.station_id",
        None,
    ),
    rel(
        Entity::FeatureOfInterest,
        Entity::Observation,
        true,
        "{c}s.station_id = {p}.id",
        Some("{c}s.station_id = {id}"),
    ),
];

/// An entity's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    Int(i64),
    Text(String),
    /// An observation: its sensor and time.
    Reading(i32, DateTime<Utc>),
}

impl Id {
    /// Parses an id as a URL gives it (`5`, `'sea_level'`, `'7-1697803200000000'`) for `entity`.
    pub fn parse(entity: Entity, text: &str) -> Option<Id> {
        let quoted = text
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .map(|t| t.replace("''", "'"));
        match entity {
            Entity::ObservedProperty => quoted.map(Id::Text),
            Entity::Observation => Id::reading(&quoted.unwrap_or_else(|| text.to_owned())),
            _ => text.parse().ok().map(Id::Int),
        }
    }

    fn reading(text: &str) -> Option<Id> {
        let (sensor, micros) = text.split_once('-')?;
        let ts = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some(Id::Reading(sensor.parse().ok()?, ts))
    }

    /// The id in a URL: `Things(5)`, `ObservedProperties('sea_level')`.
    pub fn url(&self) -> String {
        match self {
            Id::Int(n) => n.to_string(),
            other => format!("'{}'", other.json_text().replace('\'', "''")),
        }
    }

    /// The id's value as text (for JSON, where integers are written as numbers).
    pub fn json_text(&self) -> String {
        match self {
            Id::Int(n) => n.to_string(),
            Id::Text(t) => t.clone(),
            Id::Reading(sensor, ts) => format!("{sensor}-{}", ts.timestamp_micros()),
        }
    }
}

/// One cell of a row, as its property's [`Kind`] says.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Time(DateTime<Utc>),
    Json(serde_json::Value),
    Bool(bool),
    Extent(Option<(DateTime<Utc>, DateTime<Utc>)>),
    Quality(i16),
    Received(DateTime<Utc>),
}

/// An entity as read: its id and the cells of the properties asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRow {
    pub id: Id,
    pub cells: Vec<Cell>,
}

/// Which rows of an entity set a query ranges over.
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    One(Id),
    /// The entities reached from `parent` (with id `id`) through its navigation property `nav`.
    Related {
        parent: Entity,
        id: Id,
        nav: String,
    },
}

/// Where the previous page ended, for keyset paging.
#[derive(Debug, Clone, PartialEq)]
pub enum After {
    Id(Id),
    /// By time then sensor (Observations ordered by `phenomenonTime` or `resultTime`).
    Time(DateTime<Utc>, i32),
}

/// One read of an entity set.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub entity: Entity,
    pub scope: Scope,
    pub filter: Option<&'a Expr>,
    pub orderby: &'a [OrderBy],
    /// The properties to read, in order (names from [`Entity::properties`]).
    pub select: Vec<&'static str>,
    pub limit: i64,
    pub offset: i64,
    pub after: Option<After>,
    /// The longest the read may run in the database (`statement_timeout`).
    pub timeout: Option<std::time::Duration>,
}

impl Query<'_> {
    /// The keyset this query's order allows: `Some(by_time)` when pages can continue from the
    /// last row's key instead of an offset.
    pub fn keyset(&self) -> Option<bool> {
        match self.orderby {
            [] => Some(false),
            [one] if is_id(&one.expr) && !one.descending => Some(false),
            [one] if self.entity == Entity::Observation && is_time(&one.expr) => Some(true),
            _ => None,
        }
    }
}

fn is_id(expr: &Expr) -> bool {
    matches!(expr, Expr::Property(path) if path.len() == 1 && (path[0] == "id" || path[0] == "@iot.id"))
}

fn is_time(expr: &Expr) -> bool {
    matches!(expr, Expr::Property(path) if path.len() == 1 && (path[0] == "phenomenonTime" || path[0] == "resultTime"))
}

/// What went wrong with a SensorThings read.
#[derive(Debug, thiserror::Error)]
pub enum StaError {
    #[error("{0}")]
    Query(QueryError),
    #[error(transparent)]
    Store(#[from] crate::Error),
}

impl From<QueryError> for StaError {
    fn from(error: QueryError) -> StaError {
        StaError::Query(error)
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

/// SQL being built: its text and its parameters.
struct Sql {
    params: Vec<Param>,
    aliases: usize,
}

impl Sql {
    fn new() -> Sql {
        Sql {
            params: Vec::new(),
            aliases: 0,
        }
    }

    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn alias(&mut self) -> String {
        self.aliases += 1;
        format!("e{}", self.aliases)
    }

    fn fill(&self, template: &str, alias: &str) -> String {
        template
            .replace("{quantities}", quantities_sql())
            .replace("{a}", alias)
    }

    /// The condition that `alias` of `entity` has id `id`.
    fn id_is(&mut self, entity: Entity, alias: &str, id: &Id) -> String {
        match (entity, id) {
            (Entity::Observation, Id::Reading(sensor, ts)) => {
                let s = self.bind(*sensor);
                let t = self.bind(*ts);
                format!("({alias}.sensor_id = {s} AND {alias}.ts = {t})")
            }
            (Entity::ObservedProperty, Id::Text(text)) => {
                let t = self.bind(text.clone());
                format!("{alias}.id = {t}")
            }
            (Entity::Observation | Entity::ObservedProperty, _) => "false".to_owned(),
            (_, Id::Int(n)) => match i32::try_from(*n) {
                Ok(n) => {
                    let n = self.bind(n);
                    format!("{alias}.id = {n}")
                }
                Err(_) => "false".to_owned(),
            },
            _ => "false".to_owned(),
        }
    }
}

/// The quantities as a relation of constants: name, description, unit name, symbol, definition.
/// Made once: it depends on nothing but the model.
fn quantities_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(quantities_values)
}

fn quantities_values() -> String {
    let mut values = String::from("(VALUES ");
    for (i, q) in Quantity::ALL.into_iter().enumerate() {
        let unit = q.canonical_unit();
        let (unit_name, qudt) = unit.description();
        let _ = write!(
            values,
            "{}({}, {}, {}, {}, {})",
            if i == 0 { "" } else { ", " },
            literal(q.name()),
            literal(q.description()),
            literal(unit_name),
            literal(unit.symbol()),
            literal(&format!("http://qudt.org/vocab/unit/{qudt}"))
        );
    }
    values.push_str(") AS q(name, description, unit_name, symbol, definition)");
    values
}

/// A constant of this module's own as an SQL string literal (never a value from a request).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

const FILTER: &str = "$filter";
const ORDERBY: &str = "$orderby";

/// A compiled expression: SQL and its kind (`None` for `null`).
struct Typed {
    sql: String,
    kind: Option<Kind>,
}

impl Typed {
    fn new(sql: String, kind: Kind) -> Typed {
        Typed {
            sql,
            kind: Some(kind),
        }
    }
}

fn numeric(kind: Option<Kind>) -> bool {
    matches!(kind, Some(Kind::Int | Kind::Float | Kind::Quality))
}

fn describe(kind: Option<Kind>) -> &'static str {
    match kind {
        None => "null",
        Some(Kind::Int | Kind::Float | Kind::Quality) => "a number",
        Some(Kind::Text) => "a string",
        Some(Kind::Time | Kind::Received) => "a time",
        Some(Kind::Date) => "a date",
        Some(Kind::Bool) => "a boolean",
        Some(Kind::Point) => "a geometry",
        Some(Kind::Json | Kind::Extent) => "a structured value",
    }
}

impl Sql {
    /// Compiles `expr` over `alias` of `entity`.
    fn expr(
        &mut self,
        entity: Entity,
        alias: &str,
        expr: &Expr,
        option: &str,
    ) -> Result<Typed, QueryError> {
        Ok(match expr {
            Expr::Null => Typed {
                sql: "NULL".to_owned(),
                kind: None,
            },
            Expr::Bool(b) => Typed::new(self.bind(*b), Kind::Bool),
            Expr::Number(n) => Typed::new(format!("{}::float8", self.bind(*n)), Kind::Float),
            Expr::Text(t) => Typed::new(format!("{}::text", self.bind(t.clone())), Kind::Text),
            Expr::Time(t) => Typed::new(format!("{}::timestamptz", self.bind(*t)), Kind::Time),
            Expr::Date(d) => Typed::new(format!("{}::date", self.bind(*d)), Kind::Date),
            Expr::Geometry(_) => {
                return Err(QueryError::bad(
                    option,
                    "a geometry can only be an argument of a geo function",
                ))
            }
            Expr::Property(path) => self.property(entity, alias, path, option)?,
            Expr::Not(inner) => {
                let inner = self.boolean(entity, alias, inner, option)?;
                Typed::new(format!("(NOT {inner})"), Kind::Bool)
            }
            Expr::Negate(inner) => {
                let inner = self.expr(entity, alias, inner, option)?;
                if !numeric(inner.kind) {
                    return Err(QueryError::bad(
                        option,
                        format!("cannot negate {}", describe(inner.kind)),
                    ));
                }
                Typed::new(format!("(-({})::float8)", inner.sql), Kind::Float)
            }
            Expr::Binary(op, left, right) => {
                self.binary(entity, alias, *op, left, right, option)?
            }
            Expr::Call(name, args) => self.call(entity, alias, name, args, option)?,
        })
    }

    fn boolean(
        &mut self,
        entity: Entity,
        alias: &str,
        expr: &Expr,
        option: &str,
    ) -> Result<String, QueryError> {
        let typed = self.expr(entity, alias, expr, option)?;
        if typed.kind != Some(Kind::Bool) {
            return Err(QueryError::bad(
                option,
                format!("expected a condition, found {}", describe(typed.kind)),
            ));
        }
        Ok(typed.sql)
    }

    fn property(
        &mut self,
        entity: Entity,
        alias: &str,
        path: &[String],
        option: &str,
    ) -> Result<Typed, QueryError> {
        let Some(first) = path.first() else {
            return Err(QueryError::bad(option, "an empty property"));
        };
        if let Some(relation) = RELATIONS
            .iter()
            .find(|r| r.from == entity && r.name() == first)
        {
            if relation.many {
                return Err(QueryError::unsupported(
                    option,
                    format!("{first} is a to-many navigation property; lambda operators (any, all) are not supported"),
                ));
            }
            if path.len() == 1 {
                return Err(QueryError::bad(
                    option,
                    format!("{first} is an entity, not a value"),
                ));
            }
            let child = self.alias();
            let inner = self.property(relation.to, &child, &path[1..], option)?;
            let from = self.fill(relation.to.spec().from, &child);
            let join = relation.join.replace("{p}", alias).replace("{c}", &child);
            return Ok(Typed {
                sql: format!("(SELECT {} FROM {from} WHERE {join} LIMIT 1)", inner.sql),
                kind: inner.kind,
            });
        }
        let name = path.join("/");
        if name == "id" || name == "@iot.id" {
            return match entity {
                Entity::Observation => Err(QueryError::unsupported(
                    option,
                    "an Observation's id can only be compared for equality with a string ('<sensor>-<microseconds>')",
                )),
                Entity::ObservedProperty => Ok(Typed::new(format!("{alias}.id"), Kind::Text)),
                _ => Ok(Typed::new(format!("{alias}.id::int8"), Kind::Int)),
            };
        }
        let spec = entity.spec();
        // The filter spelling first (a geometry compares as a point, not as its JSON).
        let prop = spec
            .props
            .iter()
            .find(|p| p.name == name && !p.out)
            .or_else(|| spec.props.iter().find(|p| p.name == name))
            .ok_or_else(|| {
                QueryError::bad(
                    option,
                    format!("{} has no property {name}", entity.singular()),
                )
            })?;
        match prop.kind {
            Kind::Json | Kind::Extent => Err(QueryError::unsupported(
                option,
                format!("{name} is a structured value; filter on one of its members"),
            )),
            kind => Ok(Typed::new(self.fill(prop.sql, alias), kind)),
        }
    }

    fn binary(
        &mut self,
        entity: Entity,
        alias: &str,
        op: Op,
        left: &Expr,
        right: &Expr,
        option: &str,
    ) -> Result<Typed, QueryError> {
        // An Observation's id, compared for equality with its text.
        if entity == Entity::Observation && matches!(op, Op::Eq | Op::Ne) {
            if let (Expr::Property(path), Expr::Text(text))
            | (Expr::Text(text), Expr::Property(path)) = (left, right)
            {
                if path.len() == 1 && (path[0] == "id" || path[0] == "@iot.id") {
                    let condition = match Id::reading(text) {
                        Some(id) => self.id_is(entity, alias, &id),
                        None => "false".to_owned(),
                    };
                    let sql = if op == Op::Eq {
                        condition
                    } else {
                        format!("(NOT {condition})")
                    };
                    return Ok(Typed::new(sql, Kind::Bool));
                }
            }
        }
        if matches!(op, Op::And | Op::Or) {
            let l = self.boolean(entity, alias, left, option)?;
            let r = self.boolean(entity, alias, right, option)?;
            let word = if op == Op::And { "AND" } else { "OR" };
            return Ok(Typed::new(format!("({l} {word} {r})"), Kind::Bool));
        }
        let l = self.expr(entity, alias, left, option)?;
        let r = self.expr(entity, alias, right, option)?;
        if op.is_arithmetic() {
            if !numeric(l.kind) || !numeric(r.kind) {
                return Err(QueryError::bad(
                    option,
                    format!(
                        "arithmetic needs numbers, not {} and {}",
                        describe(l.kind),
                        describe(r.kind)
                    ),
                ));
            }
            let sql = match op {
                Op::Add => format!("(({})::float8 + ({})::float8)", l.sql, r.sql),
                Op::Sub => format!("(({})::float8 - ({})::float8)", l.sql, r.sql),
                Op::Mul => format!("(({})::float8 * ({})::float8)", l.sql, r.sql),
                Op::Div => format!("(({})::float8 / ({})::float8)", l.sql, r.sql),
                _ => format!("mod(({})::numeric, ({})::numeric)::float8", l.sql, r.sql),
            };
            return Ok(Typed::new(sql, Kind::Float));
        }
        // A comparison.
        if l.kind.is_none() || r.kind.is_none() {
            let other = if l.kind.is_none() { &r } else { &l };
            return match op {
                Op::Eq => Ok(Typed::new(format!("({} IS NULL)", other.sql), Kind::Bool)),
                Op::Ne => Ok(Typed::new(
                    format!("({} IS NOT NULL)", other.sql),
                    Kind::Bool,
                )),
                _ => Err(QueryError::bad(
                    option,
                    "null can only be compared with eq or ne",
                )),
            };
        }
        let same = |k: Option<Kind>| match k {
            Some(Kind::Int | Kind::Float | Kind::Quality) => 1,
            Some(Kind::Time | Kind::Received) => 2,
            Some(Kind::Text) => 3,
            Some(Kind::Bool) => 4,
            Some(Kind::Date) => 5,
            _ => 0,
        };
        if same(l.kind) == 0 || same(l.kind) != same(r.kind) {
            return Err(QueryError::bad(
                option,
                format!(
                    "cannot compare {} with {}",
                    describe(l.kind),
                    describe(r.kind)
                ),
            ));
        }
        if same(l.kind) == 4 && !matches!(op, Op::Eq | Op::Ne) {
            return Err(QueryError::bad(
                option,
                "booleans can only be compared with eq or ne",
            ));
        }
        let symbol = match op {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            _ => "<=",
        };
        let sql = if same(l.kind) == 3 {
            // Byte order, as OData's string comparison, whatever the database's collation.
            format!("({} COLLATE \"C\" {symbol} {})", l.sql, r.sql)
        } else {
            format!("({} {symbol} {})", l.sql, r.sql)
        };
        Ok(Typed::new(sql, Kind::Bool))
    }

    fn call(
        &mut self,
        entity: Entity,
        alias: &str,
        name: &str,
        args: &[Expr],
        option: &str,
    ) -> Result<Typed, QueryError> {
        let arity = |n: usize| -> Result<(), QueryError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(QueryError::bad(
                    option,
                    format!("{name} takes {n} argument(s), not {}", args.len()),
                ))
            }
        };
        let geo = matches!(
            name,
            "geo.intersects"
                | "st_intersects"
                | "st_within"
                | "st_contains"
                | "st_equals"
                | "st_disjoint"
                | "geo.distance"
                | "st_distance"
        );
        if geo {
            arity(2)?;
            return self.geo(entity, alias, name, &args[0], &args[1], option);
        }
        let mut compiled = Vec::with_capacity(args.len());
        for arg in args {
            compiled.push(self.expr(entity, alias, arg, option)?);
        }
        let want =
            |i: usize, ok: fn(Option<Kind>) -> bool, what: &str| -> Result<String, QueryError> {
                let arg = &compiled[i];
                if ok(arg.kind) {
                    Ok(arg.sql.clone())
                } else {
                    Err(QueryError::bad(
                        option,
                        format!("{name} needs {what}, not {}", describe(arg.kind)),
                    ))
                }
            };
        let text = |k: Option<Kind>| k == Some(Kind::Text);
        let time = |k: Option<Kind>| matches!(k, Some(Kind::Time | Kind::Received));
        let number = numeric;
        let utc = |t: String| format!("({t} AT TIME ZONE 'UTC')");
        Ok(match name {
            "substringof" => {
                arity(2)?;
                Typed::new(
                    format!(
                        "(strpos({}, {}) > 0)",
                        want(1, text, "strings")?,
                        want(0, text, "strings")?
                    ),
                    Kind::Bool,
                )
            }
            "contains" => {
                arity(2)?;
                Typed::new(
                    format!(
                        "(strpos({}, {}) > 0)",
                        want(0, text, "strings")?,
                        want(1, text, "strings")?
                    ),
                    Kind::Bool,
                )
            }
            "startswith" => {
                arity(2)?;
                Typed::new(
                    format!(
                        "starts_with({}, {})",
                        want(0, text, "strings")?,
                        want(1, text, "strings")?
                    ),
                    Kind::Bool,
                )
            }
            "endswith" => {
                arity(2)?;
                let (a, b) = (want(0, text, "strings")?, want(1, text, "strings")?);
                Typed::new(format!("(right({a}, length({b})) = {b})"), Kind::Bool)
            }
            "length" => {
                arity(1)?;
                Typed::new(
                    format!("length({})::int8", want(0, text, "a string")?),
                    Kind::Int,
                )
            }
            "indexof" => {
                arity(2)?;
                Typed::new(
                    format!(
                        "(strpos({}, {}) - 1)::int8",
                        want(0, text, "strings")?,
                        want(1, text, "strings")?
                    ),
                    Kind::Int,
                )
            }
            "substring" => {
                if args.len() == 2 {
                    Typed::new(
                        format!(
                            "substr({}, (({})::int + 1))",
                            want(0, text, "a string")?,
                            want(1, number, "a number")?
                        ),
                        Kind::Text,
                    )
                } else {
                    arity(3)?;
                    Typed::new(
                        format!(
                            "substr({}, (({})::int + 1), greatest(({})::int, 0))",
                            want(0, text, "a string")?,
                            want(1, number, "a number")?,
                            want(2, number, "a number")?
                        ),
                        Kind::Text,
                    )
                }
            }
            "tolower" | "toupper" | "trim" => {
                arity(1)?;
                let function = match name {
                    "tolower" => "lower",
                    "toupper" => "upper",
                    _ => "btrim",
                };
                Typed::new(
                    format!("{function}({})", want(0, text, "a string")?),
                    Kind::Text,
                )
            }
            "concat" => {
                arity(2)?;
                Typed::new(
                    format!(
                        "({} || {})",
                        want(0, text, "strings")?,
                        want(1, text, "strings")?
                    ),
                    Kind::Text,
                )
            }
            "year" | "month" | "day" | "hour" | "minute" => {
                arity(1)?;
                Typed::new(
                    format!(
                        "extract({name} FROM {})::int8",
                        utc(want(0, time, "a time")?)
                    ),
                    Kind::Int,
                )
            }
            "second" => {
                arity(1)?;
                Typed::new(
                    format!(
                        "floor(extract(second FROM {}))::int8",
                        utc(want(0, time, "a time")?)
                    ),
                    Kind::Int,
                )
            }
            "fractionalseconds" => {
                arity(1)?;
                let t = utc(want(0, time, "a time")?);
                Typed::new(
                    format!("(extract(second FROM {t}) - floor(extract(second FROM {t})))::float8"),
                    Kind::Float,
                )
            }
            "date" => {
                arity(1)?;
                Typed::new(
                    format!("{}::date", utc(want(0, time, "a time")?)),
                    Kind::Date,
                )
            }
            "totaloffsetminutes" => {
                arity(1)?;
                want(0, time, "a time")?;
                Typed::new("0::int8".to_owned(), Kind::Int)
            }
            "now" => {
                arity(0)?;
                Typed::new("now()".to_owned(), Kind::Time)
            }
            "mindatetime" => {
                arity(0)?;
                Typed::new("'-infinity'::timestamptz".to_owned(), Kind::Time)
            }
            "maxdatetime" => {
                arity(0)?;
                Typed::new("'infinity'::timestamptz".to_owned(), Kind::Time)
            }
            "round" | "floor" | "ceiling" => {
                arity(1)?;
                let function = if name == "ceiling" { "ceil" } else { name };
                Typed::new(
                    format!("{function}(({})::float8)", want(0, number, "a number")?),
                    Kind::Float,
                )
            }
            "time" => {
                return Err(QueryError::unsupported(
                    option,
                    "the function time() is not supported",
                ))
            }
            other => {
                return Err(QueryError::unsupported(
                    option,
                    format!("the function {other}() is not supported"),
                ))
            }
        })
    }

    /// A geometric function of a point property and a literal: a point lies within a polygon
    /// (edges included), or on a point.
    fn geo(
        &mut self,
        entity: Entity,
        alias: &str,
        name: &str,
        first: &Expr,
        second: &Expr,
        option: &str,
    ) -> Result<Typed, QueryError> {
        let (property, literal, property_first) = match (first, second) {
            (Expr::Geometry(g), other) => (other, g, false),
            (other, Expr::Geometry(g)) => (other, g, true),
            _ => {
                return Err(QueryError::unsupported(
                    option,
                    format!("{name} is supported between a property and a geography'...' literal"),
                ))
            }
        };
        let point = self.expr(entity, alias, property, option)?;
        if point.kind != Some(Kind::Point) {
            return Err(QueryError::bad(
                option,
                format!("{name} needs a geometry, not {}", describe(point.kind)),
            ));
        }
        let p = point.sql;
        match literal {
            Geometry::Point(x, y) => {
                let other = format!(
                    "point({}::float8, {}::float8)",
                    self.bind(*x),
                    self.bind(*y)
                );
                let sql = match name {
                    "geo.distance" | "st_distance" => {
                        return Ok(Typed::new(format!("({p} <-> {other})"), Kind::Float))
                    }
                    "st_disjoint" => format!("(NOT ({p} ~= {other}))"),
                    _ => format!("({p} ~= {other})"),
                };
                Ok(Typed::new(sql, Kind::Bool))
            }
            Geometry::Polygon(ring) => {
                let text = ring
                    .iter()
                    .map(|(x, y)| format!("({x},{y})"))
                    .collect::<Vec<_>>()
                    .join(",");
                let polygon = format!("({}::text)::polygon", self.bind(text));
                let inside = format!("({p} <@ {polygon})");
                let sql = match name {
                    "geo.intersects" | "st_intersects" => inside,
                    "st_within" if property_first => inside,
                    "st_contains" if !property_first => inside,
                    // A point neither contains nor equals a polygon.
                    "st_within" | "st_contains" | "st_equals" => "false".to_owned(),
                    "st_disjoint" => format!("(NOT {inside})"),
                    _ => {
                        return Err(QueryError::unsupported(
                            option,
                            format!("{name} between a point and a polygon is not supported"),
                        ))
                    }
                };
                Ok(Typed::new(sql, Kind::Bool))
            }
            Geometry::Other(kind) => Err(QueryError::unsupported(
                option,
                format!("geometries of type {kind} are not supported (POINT and POLYGON are)"),
            )),
        }
    }

    /// The FROM and WHERE of `query`, over alias `a`.
    fn source(&mut self, query: &Query<'_>, a: &str) -> Result<(String, Vec<String>), QueryError> {
        let entity = query.entity;
        let from = self.fill(entity.spec().from, a);
        let mut conditions = Vec::new();
        match &query.scope {
            Scope::All => {}
            Scope::One(id) => conditions.push(self.id_is(entity, a, id)),
            Scope::Related { parent, id, nav } => {
                let relation = RELATIONS
                    .iter()
                    .find(|r| r.from == *parent && r.name() == nav && r.to == entity)
                    .ok_or_else(|| {
                        QueryError::bad("path", format!("{} has no {nav}", parent.singular()))
                    })?;
                match (&relation.direct, id) {
                    (Some(direct), Id::Int(n)) if *parent != Entity::ObservedProperty => {
                        let n = i32::try_from(*n).unwrap_or(0);
                        let n = self.bind(n);
                        conditions.push(direct.replace("{c}", a).replace("{id}", &n));
                    }
                    (Some(direct), Id::Text(t)) if *parent == Entity::ObservedProperty => {
                        let t = self.bind(t.clone());
                        conditions.push(direct.replace("{c}", a).replace("{id}", &t));
                    }
                    _ => {
                        let p = self.alias();
                        let parent_from = self.fill(parent.spec().from, &p);
                        let is = self.id_is(*parent, &p, id);
                        let join = relation.join.replace("{p}", &p).replace("{c}", a);
                        conditions.push(format!(
                            "EXISTS (SELECT 1 FROM {parent_from} WHERE {is} AND {join})"
                        ));
                    }
                }
            }
        }
        if let Some(filter) = query.filter {
            conditions.push(self.boolean(entity, a, filter, FILTER)?);
        }
        Ok((from, conditions))
    }
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// The SQL of one page of `query`: id columns first, then the selected properties.
fn page_sql(query: &Query<'_>) -> Result<(String, Vec<Param>), QueryError> {
    let mut sql = Sql::new();
    let a = "e0";
    let (from, mut conditions) = sql.source(query, a)?;
    let entity = query.entity;
    let spec = entity.spec();
    let key: Vec<String> = if entity == Entity::Observation {
        vec![format!("{a}.sensor_id"), format!("{a}.ts")]
    } else {
        vec![sql.fill(spec.id, a)]
    };
    let descending = query.orderby.first().is_some_and(|o| o.descending);
    match (&query.after, query.keyset()) {
        (None, _) => {}
        (Some(After::Id(id)), Some(false)) => match (entity, id) {
            (Entity::Observation, Id::Reading(s, t)) => {
                let (s, t) = (sql.bind(*s), sql.bind(*t));
                conditions.push(format!("({a}.sensor_id, {a}.ts) > ({s}, {t})"));
            }
            (Entity::ObservedProperty, Id::Text(t)) => {
                let t = sql.bind(t.clone());
                conditions.push(format!("{a}.id COLLATE \"C\" > {t}"));
            }
            (_, Id::Int(n)) => {
                let n = sql.bind(*n);
                conditions.push(format!("{a}.id > {n}"));
            }
            _ => {
                return Err(QueryError::bad(
                    "$skiptoken",
                    "this token is not one this server gave",
                ))
            }
        },
        (Some(After::Time(t, s)), Some(true)) => {
            let (t, s) = (sql.bind(*t), sql.bind(*s));
            let (strict, loose) = if descending { ("<", "<=") } else { (">", ">=") };
            conditions.push(format!(
                "{a}.ts {loose} {t} AND ({a}.ts {strict} {t} OR {a}.sensor_id {strict} {s})"
            ));
        }
        _ => {
            return Err(QueryError::bad(
                "$skiptoken",
                "this token does not fit the query's $orderby",
            ))
        }
    }
    let mut order = Vec::new();
    for term in query.orderby {
        let dir = if term.descending { "DESC" } else { "ASC" };
        if entity == Entity::Observation && is_time(&term.expr) {
            order.push(format!("{a}.ts {dir}"));
            continue;
        }
        if is_id(&term.expr) {
            // The key itself: an Observation's is its sensor and time.
            let collate = if entity == Entity::ObservedProperty {
                " COLLATE \"C\""
            } else {
                ""
            };
            for column in &key {
                order.push(format!("{column}{collate} {dir}"));
            }
            continue;
        }
        let typed = sql.expr(entity, a, &term.expr, ORDERBY)?;
        if matches!(typed.kind, Some(Kind::Point) | None) {
            return Err(QueryError::bad(
                ORDERBY,
                "cannot order by a geometry or by null",
            ));
        }
        let collate = if typed.kind == Some(Kind::Text) {
            " COLLATE \"C\""
        } else {
            ""
        };
        order.push(format!("{}{collate} {dir}", typed.sql));
    }
    // The key last, so that the order is total and pages neither repeat nor skip a row.
    let key_dir = if query.keyset() == Some(true) && descending {
        "DESC"
    } else {
        "ASC"
    };
    if entity == Entity::Observation && query.keyset() == Some(true) {
        order.push(format!("{a}.sensor_id {key_dir}"));
    } else {
        for column in &key {
            let collate = if entity == Entity::ObservedProperty {
                " COLLATE \"C\""
            } else {
                ""
            };
            order.push(format!("{column}{collate} {key_dir}"));
        }
    }
    let mut columns = key.clone();
    for name in &query.select {
        let prop = spec
            .props
            .iter()
            .find(|p| p.out && p.name == *name)
            .ok_or_else(|| {
                QueryError::bad(
                    "$select",
                    format!("{} has no property {name}", entity.singular()),
                )
            })?;
        columns.push(sql.fill(prop.sql, a));
    }
    let limit = sql.bind(query.limit);
    let offset = sql.bind(query.offset);
    let text = format!(
        "SELECT {} FROM {from}{} ORDER BY {} LIMIT {limit} OFFSET {offset}",
        columns.join(", "),
        where_clause(&conditions),
        order.join(", ")
    );
    Ok((text, sql.params))
}

fn count_sql(query: &Query<'_>) -> Result<(String, Vec<Param>), QueryError> {
    let mut sql = Sql::new();
    let (from, conditions) = sql.source(query, "e0")?;
    Ok((
        format!("SELECT count(*) FROM {from}{}", where_clause(&conditions)),
        sql.params,
    ))
}

/// The first and last times of an extent, as the database writes them.
type Ends = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn cell(row: &tokio_postgres::Row, i: usize, kind: Kind) -> Result<Cell, tokio_postgres::Error> {
    Ok(match kind {
        Kind::Int => row
            .try_get::<_, Option<i64>>(i)?
            .map_or(Cell::Null, Cell::Int),
        Kind::Float => row
            .try_get::<_, Option<f64>>(i)?
            .map_or(Cell::Null, Cell::Float),
        Kind::Text => row
            .try_get::<_, Option<String>>(i)?
            .map_or(Cell::Null, Cell::Text),
        Kind::Time => row
            .try_get::<_, Option<DateTime<Utc>>>(i)?
            .map_or(Cell::Null, Cell::Time),
        Kind::Json => row
            .try_get::<_, Option<serde_json::Value>>(i)?
            .map_or(Cell::Null, Cell::Json),
        Kind::Extent => {
            let pair: Option<Ends> = row
                .try_get::<_, Option<serde_json::Value>>(i)?
                .and_then(|v| serde_json::from_value(v).ok());
            Cell::Extent(match pair {
                Some((Some(start), Some(end))) => Some((start, end)),
                _ => None,
            })
        }
        Kind::Quality => row
            .try_get::<_, Option<i16>>(i)?
            .map_or(Cell::Null, Cell::Quality),
        Kind::Received => row
            .try_get::<_, Option<DateTime<Utc>>>(i)?
            .map_or(Cell::Null, Cell::Received),
        Kind::Bool => row
            .try_get::<_, Option<bool>>(i)?
            .map_or(Cell::Null, Cell::Bool),
        Kind::Point | Kind::Date => Cell::Null,
    })
}

/// Cancels the transaction's statements that run longer than `timeout`.
async fn limit_time(
    tx: &deadpool_postgres::Transaction<'_>,
    timeout: Option<std::time::Duration>,
) -> StoreResult<()> {
    if let Some(timeout) = timeout {
        // A number of this module's own making, never text from the request.
        let millis = timeout.as_millis().max(1);
        tx.batch_execute(&format!("SET LOCAL statement_timeout = {millis}"))
            .await
            .context("limiting a SensorThings read's time")?;
    }
    Ok(())
}

/// Whether `error` is a statement cancelled by its time limit.
pub fn timed_out(error: &crate::Error) -> bool {
    error.sqlstate() == Some("57014")
}

fn params(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// What creating an Observation needs of its Datastream.
#[derive(Debug, Clone, PartialEq)]
pub struct DatastreamTarget {
    pub sensor_id: i32,
    pub sensor: String,
    /// The key of the device the sensor belongs to.
    pub device: String,
    pub quantity: String,
    /// Its station: the Thing, and the Observations' FeatureOfInterest.
    pub station_id: i32,
}

impl Store {
    /// One page of a SensorThings read, from the standby when there is one.
    pub async fn sta_page(&self, query: &Query<'_>) -> Result<Vec<EntityRow>, StaError> {
        let (text, values) = page_sql(query)?;
        let mut client = self.read_client().await?;
        let tx = client
            .transaction()
            .await
            .context("beginning a SensorThings read")?;
        limit_time(&tx, query.timeout).await?;
        // Statements of a few shapes (no filter, paged by key) are kept prepared on the
        // connection, as the open data reads are; a filter's shape is the client's to choose,
        // and keeping every one would grow the cache without bound.
        let rows = if query.filter.is_none() && query.keyset().is_some() {
            let statement = tx
                .prepare_cached(&text)
                .await
                .context("preparing a SensorThings read")?;
            tx.query(&statement, &params(&values)).await
        } else {
            tx.query(&text, &params(&values)).await
        }
        .context("reading SensorThings entities")?;
        tx.commit().await.context("ending a SensorThings read")?;
        let spec = query.entity.spec();
        let kinds: Vec<Kind> = query
            .select
            .iter()
            .filter_map(|name| spec.props.iter().find(|p| p.out && p.name == *name))
            .map(|p| p.kind)
            .collect();
        let offset = if query.entity == Entity::Observation {
            2
        } else {
            1
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = match query.entity {
                Entity::Observation => Id::Reading(
                    row.try_get(0).context("reading an observation's sensor")?,
                    row.try_get(1).context("reading an observation's time")?,
                ),
                Entity::ObservedProperty => Id::Text(row.try_get(0).context("reading an id")?),
                _ => Id::Int(i64::from(
                    row.try_get::<_, i32>(0).context("reading an id")?,
                )),
            };
            let mut cells = Vec::with_capacity(kinds.len());
            for (i, kind) in kinds.iter().enumerate() {
                cells.push(cell(&row, offset + i, *kind).context("reading a property")?);
            }
            out.push(EntityRow { id, cells });
        }
        Ok(out)
    }

    /// How many entities `query` ranges over, without paging.
    pub async fn sta_count(&self, query: &Query<'_>) -> Result<i64, StaError> {
        let (text, values) = count_sql(query)?;
        let mut client = self.read_client().await?;
        let tx = client
            .transaction()
            .await
            .context("beginning a SensorThings count")?;
        limit_time(&tx, query.timeout).await?;
        let row = tx
            .query_one(&text, &params(&values))
            .await
            .context("counting SensorThings entities")?;
        tx.commit().await.context("ending a SensorThings count")?;
        Ok(row.try_get(0).context("reading a count")?)
    }

    /// The Datastream `id` for a new Observation, read from the primary (which the write goes
    /// to); `None` when there is no such Datastream.
    pub async fn sta_datastream(&self, id: i64) -> StoreResult<Option<DatastreamTarget>> {
        let Ok(id) = i32::try_from(id) else {
            return Ok(None);
        };
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT s.id, s.key, d.key, s.quantity, s.station_id FROM sensors s \
                 JOIN devices d ON d.id = s.device_id WHERE s.id = $1 AND s.station_id IS NOT NULL",
                &[&id],
            )
            .await
            .context("looking up a Datastream")?;
        Ok(row.map(|r| DatastreamTarget {
            sensor_id: r.get(0),
            sensor: r.get(1),
            device: r.get(2),
            quantity: r.get(3),
            station_id: r.get(4),
        }))
    }

    /// The stored reading of `sensor_id` at `ts`, `(value, quality, received_at)`, from the
    /// primary.
    pub async fn reading_at(
        &self,
        sensor_id: i32,
        ts: DateTime<Utc>,
    ) -> StoreResult<Option<(f64, i16, DateTime<Utc>)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT value, quality, received_at FROM readings WHERE sensor_id = $1 AND ts = $2",
                &[&sensor_id, &ts],
            )
            .await
            .context("reading one reading")?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Whether the entity exists (for a 404 on a path through it).
    pub async fn sta_exists(&self, entity: Entity, id: &Id) -> StoreResult<bool> {
        let query = Query {
            entity,
            scope: Scope::One(id.clone()),
            filter: None,
            orderby: &[],
            select: Vec::new(),
            limit: 1,
            offset: 0,
            after: None,
            timeout: None,
        };
        match self.sta_page(&query).await {
            Ok(rows) => Ok(!rows.is_empty()),
            Err(StaError::Store(e)) => Err(e),
            Err(StaError::Query(_)) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_model::odata::parse_expr;

    fn sql_of(entity: Entity, filter: &str) -> Result<(String, usize), QueryError> {
        let expr = parse_expr(filter).map_err(|m| QueryError::bad(FILTER, m))?;
        let query = Query {
            entity,
            scope: Scope::All,
            filter: Some(&expr),
            orderby: &[],
            select: entity.properties().collect(),
            limit: 10,
            offset: 0,
            after: None,
            timeout: None,
        };
        page_sql(&query).map(|(text, params)| (text, params.len()))
    }

    #[test]
    fn values_from_the_request_are_bound_never_spliced() {
        let (text, params) = sql_of(
            Entity::Datastream,
            "name eq 'x''; DROP TABLE readings; --' and Thing/name ne 'Robert''); --'",
        )
        .unwrap();
        assert!(!text.contains("DROP"), "{text}");
        assert!(!text.contains("Robert"), "{text}");
        // The two strings, the limit and the offset.
        assert_eq!(params, 4);
    }

    #[test]
    fn what_cannot_be_compiled_is_unsupported_or_bad() {
        let unsupported = |e: Entity, f: &str| sql_of(e, f).unwrap_err().unsupported;
        assert!(unsupported(Entity::Thing, "Datastreams/name eq 'x'"));
        assert!(unsupported(Entity::Thing, "fancy(name) eq 1"));
        assert!(unsupported(
            Entity::Location,
            "st_within(location, geography'LINESTRING(1 2, 3 4)')"
        ));
        assert!(unsupported(Entity::Thing, "properties eq 'x'"));
        assert!(!unsupported(Entity::Thing, "nosuch eq 1"));
        assert!(!unsupported(Entity::Thing, "name gt 1"));
        assert!(!unsupported(Entity::Thing, "name add 1 eq 2"));
        assert!(!unsupported(Entity::Observation, "result"));
        assert!(!unsupported(Entity::Observation, "length(result) eq 1"));
        assert!(sql_of(
            Entity::Observation,
            "result eq null or phenomenonTime ge 2020-01-01T00:00:00Z"
        )
        .is_ok());
        assert!(
            sql_of(
                Entity::Observation,
                "Datastream/Thing/Locations/name eq 'x'"
            )
            .unwrap_err()
            .unsupported
        );
    }

    #[test]
    fn ids_round_trip_through_urls() {
        let id = Id::Reading(
            7,
            DateTime::from_timestamp_micros(1_697_803_200_123_456).unwrap(),
        );
        assert_eq!(id.url(), "'7-1697803200123456'");
        assert_eq!(Id::parse(Entity::Observation, &id.url()), Some(id));
        assert_eq!(Id::parse(Entity::Thing, "12"), Some(Id::Int(12)));
        assert_eq!(Id::parse(Entity::Thing, "'12'"), None);
        assert_eq!(
            Id::parse(Entity::ObservedProperty, "'sea_level'"),
            Some(Id::Text("sea_level".to_owned()))
        );
        assert_eq!(Id::parse(Entity::Observation, "'x-1'"), None);
    }
}
