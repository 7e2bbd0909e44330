//! The map dashboard: `/` is its page and `/dashboard/{file}` its scripts and styles, all built from
//! `dashboard/` by `scripts/dashboard.sh` and embedded in the binary when it is compiled.
//!
//! The page talks only to this server. Its Content-Security-Policy says so to the browser too: no
//! script, style, image, worker or connection from anywhere else.

use crate::http::problem::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; worker-src 'self' blob:; \
    connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// The dashboard's routes (no state of their own; the page calls the API).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route(
            "/dashboard/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        )
}

fn find(name: &str) -> Option<(&'static str, &'static [u8])> {
    assets::ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}

fn asset(name: &str) -> Response {
    if !assets::BUILT {
        return missing();
    }
    let Some((content_type, bytes)) = find(name) else {
        return ApiError::NotFound(format!("dashboard file {name}")).into_response();
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    response
}

/// The answer of a binary built without the dashboard (a check or debug build on a machine
/// without npm).
fn missing() -> Response {
    ApiError::Unavailable(
        "this binary was built without the map dashboard: run `bash scripts/dashboard.sh` and \
         build again",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn a_binary_without_the_dashboard_says_what_to_run() {
        let answer = missing();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn the_page_its_scripts_and_maplibres_worker_are_embedded() {
        let (page_type, page) = find("index.html").unwrap();
        assert!(page_type.starts_with("text/html"));
        let page = std::str::from_utf8(page).unwrap();
        for needed in ["/dashboard/app.js", "/dashboard/app.css"] {
            assert!(page.contains(needed), "the page loads {needed}");
            let name = needed.trim_start_matches("/dashboard/");
            assert!(find(name).is_some(), "{name} is embedded");
        }
        assert!(find("maplibre-gl-worker.mjs").is_some());
        assert_eq!(find("app.js").unwrap().0, "text/javascript; charset=utf-8");
    }

    #[test]
    fn unknown_files_and_paths_outside_the_dashboard_are_not_found() {
        for name in ["nope.js", "../Cargo.toml", "..", "", "index.html/"] {
            assert_eq!(asset(name).status(), StatusCode::NOT_FOUND, "{name}");
        }
        let page = asset("index.html");
        assert_eq!(page.status(), StatusCode::OK);
        let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(policy.contains("connect-src 'self'"), "{policy}");
    }
}
