//! The GraphiQL playground at `/graphiql`. Every file it loads is embedded
//! in the binary (see `build.rs`), so it works with no internet access.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

macro_rules! module_file {
    ($path:literal) => {
        include_bytes!(concat!(env!("PLAYGROUND_MODULES"), "/", $path))
    };
}

/// `(name, content type, bytes)` of every asset.
static ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "react.production.min.js",
        "text/javascript",
        module_file!("react/umd/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript",
        module_file!("react-dom/umd/react-dom.production.min.js"),
    ),
    (
        "graphiql.min.js",
        "text/javascript",
        module_file!("graphiql/dist/index.umd.js"),
    ),
    (
        "graphiql.min.css",
        "text/css",
        module_file!("graphiql/dist/style.css"),
    ),
    (
        "playground.js",
        "text/javascript",
        include_bytes!("../../playground/playground.js"),
    ),
];

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../playground/index.html"))
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
