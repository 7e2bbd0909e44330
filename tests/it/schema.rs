//! Answers checked against the API's own OpenAPI document: an answer must have every field its
//! documented schema requires, no field the schema does not declare, and values of the declared
//! types, all the way down. So a handler cannot drift from the type utoipa documents.
//!
//! The checker reads the subset of JSON Schema that utoipa writes: `$ref`, `type` (one or a list
//! with `null`), `properties`, `required`, `additionalProperties`, `items`, `allOf`, `oneOf` and
//! `anyOf`. A schema without `type` (a free JSON value) accepts anything.

use serde_json::Value;

/// Checks `body`, the answer of `media` type (`application/json`, `application/geo+json`) with
/// `status` to `method` on the documented `template` path, against the schema `doc` gives for it.
pub fn check(
    doc: &Value,
    method: &str,
    template: &str,
    status: u16,
    media: &str,
    body: &Value,
) -> Result<(), String> {
    let operation = &doc["paths"][template][method.to_lowercase()];
    if operation.is_null() {
        return Err(format!("{method} {template} is not documented"));
    }
    let response = &operation["responses"][status.to_string()];
    let schema = &response["content"][media]["schema"];
    if schema.is_null() {
        return Err(format!(
            "{method} {template} documents no {media} schema for {status}"
        ));
    }
    Checker { doc }.value(schema, body, "$")
}

/// Checks a successful JSON or GeoJSON answer of the API to `method` on `path` (with or without
/// its query) against the API's own document; fails the test with every detail.
pub fn assert_documented(method: &str, path: &str, status: u16, content_type: &str, body: &Value) {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !(200..300).contains(&status)
        || !["application/json", "application/geo+json"].contains(&media)
    {
        return;
    }
    let doc = &*DOCUMENT;
    let template =
        documented_path(doc, path).unwrap_or_else(|| panic!("{path} matches no documented path"));
    if let Err(problem) = check(doc, method, &template, status, media, body) {
        panic!("{method} {template} answered what its schema does not say: {problem}\n{body}");
    }
}

/// The API's OpenAPI document, as it serves it.
pub static DOCUMENT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    serde_json::to_value(tidemark_api::openapi::document()).expect("the document is JSON")
});

/// The documented path template `path` (with or without a query) is an instance of: a literal
/// segment matches itself, a `{parameter}` any one segment; literal matches win.
pub fn documented_path(doc: &Value, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &String)> = None;
    for template in doc["paths"].as_object()?.keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literal = 0;
        let fits = parts.iter().zip(&segments).all(|(part, segment)| {
            if part.starts_with('{') && part.ends_with('}') {
                true
            } else {
                literal += 1;
                part == segment
            }
        });
        if fits && best.is_none_or(|(n, _)| literal > n) {
            best = Some((literal, template));
        }
    }
    best.map(|(_, template)| template.clone())
}

struct Checker<'a> {
    doc: &'a Value,
}

impl<'a> Checker<'a> {
    fn resolve(&self, schema: &'a Value) -> Result<&'a Value, String> {
        match schema["$ref"].as_str() {
            Some(reference) => {
                let name = reference
                    .strip_prefix("#/components/schemas/")
                    .ok_or_else(|| format!("a reference outside the components: {reference}"))?;
                let target = &self.doc["components"]["schemas"][name];
                if target.is_null() {
                    return Err(format!("{reference} is not in the document"));
                }
                self.resolve(target)
            }
            None => Ok(schema),
        }
    }

    fn value(&self, schema: &'a Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        if let Some(parts) = schema["allOf"].as_array() {
            // The properties of all parts together: each part checks its own, and a field is
            // declared when any part declares it.
            for part in parts {
                self.value_with(part, value, at, Some(parts))?;
            }
            return Ok(());
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema[key].as_array() {
                let problems: Vec<String> = options
                    .iter()
                    .filter_map(|option| self.value(option, value, at).err())
                    .collect();
                if problems.len() == options.len() {
                    return Err(format!(
                        "{at}: matches none of {key}: {}",
                        problems.join("; ")
                    ));
                }
                return Ok(());
            }
        }
        self.value_with(schema, value, at, None)
    }

    fn value_with(
        &self,
        schema: &'a Value,
        value: &Value,
        at: &str,
        siblings: Option<&'a Vec<Value>>,
    ) -> Result<(), String> {
        let schema = self.resolve(schema)?;
        if schema.get("allOf").is_some()
            || schema.get("oneOf").is_some()
            || schema.get("anyOf").is_some()
        {
            return self.value(schema, value, at);
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return Ok(()),
        };
        let fits = |t: &str| match (t, value) {
            ("null", Value::Null) => true,
            ("boolean", Value::Bool(_)) => true,
            ("string", Value::String(_)) => true,
            ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
            ("number", Value::Number(_)) => true,
            ("array", Value::Array(_)) => true,
            ("object", Value::Object(_)) => true,
            _ => false,
        };
        if !types.iter().any(|t| fits(t)) {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.value(&schema["items"], item, &format!("{at}[{i}]"))?;
                }
            }
            Value::Object(fields) => {
                let properties = schema["properties"].as_object();
                for required in schema["required"].as_array().into_iter().flatten() {
                    let name = required.as_str().unwrap_or_default();
                    if !fields.contains_key(name) {
                        return Err(format!("{at}: the required field {name} is missing"));
                    }
                }
                for (name, field) in fields {
                    let path = format!("{at}.{name}");
                    match properties.and_then(|p| p.get(name)) {
                        Some(declared) => self.value(declared, field, &path)?,
                        None if self.declared_by(siblings, name)? => {}
                        None => match &schema["additionalProperties"] {
                            Value::Bool(true) => {}
                            Value::Object(_) => {
                                self.value(&schema["additionalProperties"], field, &path)?
                            }
                            _ if properties.is_none() => {}
                            _ => {
                                return Err(format!("{path}: a field the schema does not declare"))
                            }
                        },
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether another part of the same `allOf` declares `name`.
    fn declared_by(&self, siblings: Option<&'a Vec<Value>>, name: &str) -> Result<bool, String> {
        for part in siblings.into_iter().flatten() {
            let part = self.resolve(part)?;
            if part["properties"].get(name).is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/X"}}}}}}}},
            "components": {"schemas": {
                "X": {"type": "object", "required": ["id", "items"], "properties": {
                    "id": {"type": "integer"},
                    "note": {"type": ["string", "null"]},
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Y"}},
                }},
                "Y": {"allOf": [
                    {"type": "object", "required": ["a"], "properties": {"a": {"type": "number"}}},
                    {"type": "object", "properties": {"b": {"type": "boolean"}}},
                ]},
            }},
        })
    }

    #[test]
    fn the_checker_finds_missing_undeclared_and_mistyped_fields() {
        let doc = doc();
        let ok = json!({"id": 1, "note": null, "items": [{"a": 1.5, "b": true}]});
        let check = |path: &str, status: u16, body: &Value| {
            check(&doc, "GET", path, status, "application/json", body)
        };
        assert_eq!(check("/x", 200, &ok), Ok(()));
        for bad in [
            json!({"items": []}),
            json!({"id": 1, "items": [], "extra": 2}),
            json!({"id": "1", "items": []}),
            json!({"id": 1, "items": [{"b": true}]}),
            json!({"id": 1, "items": [{"a": 1, "c": 0}]}),
            json!({"id": 1.5, "items": []}),
        ] {
            assert!(check("/x", 200, &bad).is_err(), "{bad}");
        }
        assert!(check("/y", 200, &ok).is_err());
        assert!(check("/x", 201, &ok).is_err());
        assert_eq!(documented_path(&doc, "/x?a=1").as_deref(), Some("/x"));
    }
}
