//! The admin console at `/console/`: plain HTML, CSS and JavaScript modules
//! from `playground/console`, embedded in the binary. Every page address
//! gets the same `index.html` (the console routes in the browser); files
//! are under `/console/assets/`.
//!
//! Every answer carries a Content-Security-Policy that allows only the
//! server's own scripts, styles and connections: no inline script, no
//! `eval`, nothing from elsewhere.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use crate::app::AppState;

/// `connect-src 'self'` covers the page's own `ws:`/`wss:` origin too
/// (CSP level 3, as every current browser implements it).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

macro_rules! console_file {
    ($path:literal, $type:literal) => {
        (
            $path,
            $type,
            include_bytes!(concat!("../../playground/console/", $path)).as_slice(),
        )
    };
}

/// `(path under assets/, content type, bytes)` of every file.
static FILES: &[(&str, &str, &[u8])] = &[
    console_file!("index.html", "text/html; charset=utf-8"),
    console_file!("console.css", "text/css; charset=utf-8"),
    console_file!("icon.svg", "image/svg+xml"),
    console_file!("api.js", "text/javascript; charset=utf-8"),
    console_file!("app.js", "text/javascript; charset=utf-8"),
    console_file!("dom.js", "text/javascript; charset=utf-8"),
    console_file!("format.js", "text/javascript; charset=utf-8"),
    console_file!("session.js", "text/javascript; charset=utf-8"),
    console_file!("pages/home.js", "text/javascript; charset=utf-8"),
    console_file!("pages/instances.js", "text/javascript; charset=utf-8"),
    console_file!("pages/requests.js", "text/javascript; charset=utf-8"),
    console_file!("pages/signin.js", "text/javascript; charset=utf-8"),
    console_file!("pages/stats.js", "text/javascript; charset=utf-8"),
];

/// A strong validator per file, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(_, _, bytes)| {
            let digest = Sha256::digest(bytes);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

/// `/` and `/console` lead to the console's front page.
pub async fn to_console() -> Redirect {
    Redirect::to("/console/")
}

/// Any page address: the console's single HTML page. It says whether the
/// playground is served, so the console links to it only then.
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.config.graphql.playground {
        return serve(0, &headers);
    }
    let html = String::from_utf8_lossy(FILES[0].2)
        .replace(r#"data-playground="on""#, r#"data-playground="off""#);
    let mut response = ([(header::CONTENT_TYPE, FILES[0].1)], html).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure(h);
    response
}

pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match FILES.iter().position(|(name, _, _)| *name == path) {
        // index.html is a page, not an asset.
        Some(i) if i > 0 => serve(i, &headers),
        _ => {
            let mut response = StatusCode::NOT_FOUND.into_response();
            secure(response.headers_mut());
            response
        }
    }
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let (_, content_type, bytes) = FILES[i];
    let etag = &ETAGS[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
    };
    let h = response.headers_mut();
    // Revalidated on every load: a new server version is picked up at once,
    // and an unchanged file costs a 304.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, value);
    }
    secure(h);
    response
}

fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in the console's folder is embedded, and nothing else.
    #[test]
    fn every_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playground/console");
        let mut on_disk = Vec::new();
        let mut folders = vec![root.clone()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).expect("console folder") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    let relative = path.strip_prefix(&root).expect("inside");
                    on_disk.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(n, _, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    /// No inline script or style would pass the policy, so none may exist.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(FILES[0].2).expect("utf-8");
        for forbidden in [
            "<script>",
            "<style",
            " style=",
            " onclick=",
            " onload=",
            "javascript:",
        ] {
            assert!(!html.contains(forbidden), "index.html holds {forbidden:?}");
        }
        assert!(html.contains(r#"<script type="module" src="/console/assets/app.js">"#));
        assert!(
            html.contains(r#"data-playground="on""#),
            "the page handler rewrites it"
        );
    }
}
