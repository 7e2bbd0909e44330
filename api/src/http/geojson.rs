//! GeoJSON answers (RFC 7946, `application/geo+json`): one Feature per thing that has a place,
//! whose properties are the thing's JSON body without the fields the geometry carries, and a
//! FeatureCollection for a list.

use super::typed;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of GeoJSON.
pub const GEOJSON: &str = "application/geo+json";

/// A GeoJSON Feature.
#[derive(Debug, Serialize, ToSchema)]
pub struct Feature {
    /// Always `Feature`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// The thing's key.
    pub id: String,
    /// A GeoJSON geometry (Point, Polygon or MultiPolygon); null when it has none.
    pub geometry: serde_json::Value,
    /// The thing's JSON body, without the fields the geometry carries.
    pub properties: serde_json::Value,
}

/// A GeoJSON FeatureCollection.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureCollection {
    /// Always `FeatureCollection`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    pub features: Vec<Feature>,
}

impl Feature {
    /// The Feature of `body` (any typed answer), placed by `geometry`, with `without` taken out
    /// of its properties.
    pub fn of(
        id: &str,
        geometry: serde_json::Value,
        body: &impl Serialize,
        without: &[&str],
    ) -> Feature {
        let mut properties = serde_json::to_value(body).unwrap_or_default();
        if let Some(fields) = properties.as_object_mut() {
            for field in without {
                fields.remove(*field);
            }
        }
        Feature {
            kind: "Feature",
            id: id.to_owned(),
            geometry,
            properties,
        }
    }

    pub fn response(&self) -> Response {
        geojson(self)
    }
}

/// A GeoJSON Point at a longitude and latitude in degrees.
pub fn point(lon: f64, lat: f64) -> serde_json::Value {
    serde_json::json!({ "type": "Point", "coordinates": [lon, lat] })
}

impl FromIterator<Feature> for FeatureCollection {
    fn from_iter<I: IntoIterator<Item = Feature>>(features: I) -> FeatureCollection {
        FeatureCollection {
            kind: "FeatureCollection",
            features: features.into_iter().collect(),
        }
    }
}

impl FeatureCollection {
    pub fn response(&self) -> Response {
        geojson(self)
    }
}

fn geojson(value: &impl Serialize) -> Response {
    typed(GEOJSON, serde_json::to_vec(value).unwrap_or_default())
}
