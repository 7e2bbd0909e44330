//! Who receives an area's warnings: the municipalities whose boundary intersects the area's
//! polygon; for an area outside every boundary (a coastal gauge just off a generalised coastline, a
//! gauge across the border), the nearest municipality within a configured distance.

use geo::{Contains, Coord, Intersects, LineString, Point, Polygon};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{0}")]
    Invalid(String),
}

/// The municipality layer: code to name and polygons.
#[derive(Debug, Clone, Default)]
pub struct Municipalities {
    pub by_code: BTreeMap<String, (String, Vec<Polygon<f64>>)>,
}

fn ring(value: &serde_json::Value) -> Option<LineString<f64>> {
    let points = value.as_array()?;
    let coords: Option<Vec<Coord<f64>>> = points
        .iter()
        .map(|p| {
            let p = p.as_array()?;
            Some(Coord {
                x: p.first()?.as_f64()?,
                y: p.get(1)?.as_f64()?,
            })
        })
        .collect();
    let coords = coords?;
    (coords.len() >= 4).then(|| LineString::from(coords))
}

/// A GeoJSON Polygon's coordinates (exterior ring, then holes).
pub fn polygon(coordinates: &serde_json::Value) -> Option<Polygon<f64>> {
    let rings = coordinates.as_array()?;
    let exterior = ring(rings.first()?)?;
    let holes: Option<Vec<LineString<f64>>> = rings[1..].iter().map(ring).collect();
    Some(Polygon::new(exterior, holes?))
}

/// A polygon as GeoJSON Polygon geometry.
pub fn polygon_json(polygon: &Polygon<f64>) -> serde_json::Value {
    let ring = |r: &LineString<f64>| -> Vec<[f64; 2]> { r.coords().map(|c| [c.x, c.y]).collect() };
    let mut rings = vec![ring(polygon.exterior())];
    rings.extend(polygon.interiors().iter().map(ring));
    serde_json::json!({ "type": "Polygon", "coordinates": rings })
}

impl Municipalities {
    /// Reads a FeatureCollection of Polygon or MultiPolygon features with `KOMKODE` and `KOMNAVN`
    /// properties (the Danish municipality layer); islands may be separate features of one code.
    pub fn from_geojson(text: &str) -> Result<Municipalities, GeoError> {
        let document: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| GeoError::Invalid(format!("not GeoJSON: {e}")))?;
        let features = document["features"]
            .as_array()
            .ok_or_else(|| GeoError::Invalid("no features".into()))?;
        let mut layer = Municipalities::default();
        for (index, feature) in features.iter().enumerate() {
            let bad = |what: &str| GeoError::Invalid(format!("feature {index}: {what}"));
            let code = feature["properties"]["KOMKODE"]
                .as_str()
                .ok_or_else(|| bad("no KOMKODE"))?;
            let name = feature["properties"]["KOMNAVN"].as_str().unwrap_or(code);
            let geometry = &feature["geometry"];
            let polygons: Vec<Polygon<f64>> = match geometry["type"].as_str() {
                Some("Polygon") => {
                    vec![polygon(&geometry["coordinates"]).ok_or_else(|| bad("bad polygon"))?]
                }
                Some("MultiPolygon") => geometry["coordinates"]
                    .as_array()
                    .ok_or_else(|| bad("bad multipolygon"))?
                    .iter()
                    .map(|p| polygon(p).ok_or_else(|| bad("bad polygon in multipolygon")))
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad("geometry is neither Polygon nor MultiPolygon")),
            };
            layer
                .by_code
                .entry(code.to_owned())
                .or_insert_with(|| (name.to_owned(), Vec::new()))
                .1
                .extend(polygons);
        }
        Ok(layer)
    }

    /// A municipality's boundary as a GeoJSON MultiPolygon.
    pub fn boundary_json(&self, code: &str) -> Option<serde_json::Value> {
        let (_, polygons) = self.by_code.get(code)?;
        let coordinates: Vec<serde_json::Value> = polygons
            .iter()
            .map(|p| polygon_json(p)["coordinates"].clone())
            .collect();
        Some(serde_json::json!({ "type": "MultiPolygon", "coordinates": coordinates }))
    }

    /// The codes of the municipalities that receive warnings for `area`.
    pub fn for_area(&self, area: &Polygon<f64>, nearest_within_km: f64) -> Vec<String> {
        let intersecting: Vec<String> = self
            .by_code
            .iter()
            .filter(|(_, (_, polygons))| polygons.iter().any(|p| p.intersects(area)))
            .map(|(code, _)| code.clone())
            .collect();
        if !intersecting.is_empty() {
            return intersecting;
        }
        let nearest = self
            .by_code
            .iter()
            .map(|(code, (_, polygons))| {
                let km = area
                    .exterior()
                    .points()
                    .flat_map(|point| polygons.iter().map(move |p| distance_km(point, p)))
                    .fold(f64::INFINITY, f64::min);
                (code, km)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match nearest {
            Some((code, km)) if km <= nearest_within_km => vec![code.clone()],
            _ => Vec::new(),
        }
    }

    /// The codes for a point station: the municipality containing it, else the nearest within reach.
    pub fn for_point(&self, point: Point<f64>, nearest_within_km: f64) -> Vec<String> {
        if let Some((code, _)) = self
            .by_code
            .iter()
            .find(|(_, (_, polygons))| polygons.iter().any(|p| p.contains(&point)))
        {
            return vec![code.clone()];
        }
        let square = Polygon::new(
            LineString::from(vec![point.0, point.0, point.0, point.0]),
            vec![],
        );
        self.for_area(&square, nearest_within_km)
    }
}

/// Distance in km from a point to a polygon's boundary, on a local equirectangular projection
/// (accurate to well under a percent over the tens of kilometres this rule considers).
fn distance_km(point: Point<f64>, polygon: &Polygon<f64>) -> f64 {
    const KM_PER_DEGREE: f64 = 111.195;
    let scale_x = point.y().to_radians().cos() * KM_PER_DEGREE;
    let project = |c: Coord<f64>| {
        (
            (c.x - point.x()) * scale_x,
            (c.y - point.y()) * KM_PER_DEGREE,
        )
    };
    polygon
        .exterior()
        .lines()
        .map(|line| {
            let (ax, ay) = project(line.start);
            let (bx, by) = project(line.end);
            let (dx, dy) = (bx - ax, by - ay);
            let length2 = dx * dx + dy * dy;
            let t = if length2 > 0.0 {
                ((-ax * dx - ay * dy) / length2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (px, py) = (ax + t * dx, ay + t * dy);
            (px * px + py * py).sqrt()
        })
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(lon: f64, lat: f64, size: f64) -> Polygon<f64> {
        polygon(&serde_json::json!([[
            [lon, lat],
            [lon + size, lat],
            [lon + size, lat + size],
            [lon, lat + size],
            [lon, lat]
        ]]))
        .unwrap()
    }

    #[test]
    fn intersecting_then_nearest() {
        let mut layer = Municipalities::default();
        layer
            .by_code
            .insert("0001".into(), ("West".into(), vec![square(9.0, 55.0, 1.0)]));
        layer.by_code.insert(
            "0002".into(),
            ("East".into(), vec![square(10.0, 55.0, 1.0)]),
        );
        // Straddling the shared edge: both.
        assert_eq!(
            layer.for_area(&square(9.9, 55.4, 0.2), 10.0),
            ["0001", "0002"]
        );
        // Inside one.
        assert_eq!(layer.for_point(Point::new(9.5, 55.5), 10.0), ["0001"]);
        // South of both, 0.05 degrees (about 5.6 km) below West only.
        assert_eq!(layer.for_point(Point::new(9.5, 54.95), 10.0), ["0001"]);
        assert!(layer.for_point(Point::new(9.5, 54.95), 5.0).is_empty());
    }
}
