//! The web dashboard (issue 6): a static page at `/` for people supervising a fleet of agents.
//! It shows the leases, the queue and the history live, and gives admins their buttons.
//!
//! The page is plain HTML, CSS and JavaScript embedded in the binary (`src/server/dashboard/`),
//! with no build step and nothing fetched from elsewhere: the machines it runs on may have no
//! internet. It is served without a token, since it holds no data; the page asks for a token,
//! keeps it in the browser's `sessionStorage`, and calls the JSON API with it like any client.
//! What a token may do is still decided by the API, never by the page.
//!
//! Architecture invariant: this module only serves files. It knows no lease, no token and no
//! route of the API; the page learns everything through `/v1/*` (see `docs/dashboard.md`).

use std::sync::LazyLock;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::server::AppState;

/// What the page may load and where it may connect: only this server, no inline script or
/// style, no frames, no forms posting anywhere. The JavaScript sets element styles through the
/// CSSOM (`element.style.width`), which this policy allows.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file and where it is served.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file of the dashboard. The page is at `/`; what it loads is under `/dashboard/`.
const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("dashboard/index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("dashboard/app.js"),
    },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("dashboard/style.css"),
    },
    Asset {
        path: "/dashboard/icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("dashboard/icon.svg"),
    },
];

/// The entity tag of each asset: a hash of its content, so that a browser revalidates cheaply
/// and never keeps a page older than the binary serving it.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("a valid entity tag")
        })
        .collect()
});

/// The dashboard's routes, none of which needs a token; merged into the API's router.
pub(crate) fn router() -> Router<AppState> {
    let mut router = Router::new();
    for (index, asset) in ASSETS.iter().enumerate() {
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move { serve(index, &headers) }),
        );
    }
    router
}

/// Answers one asset, or 304 when the browser already has this version.
fn serve(index: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = ETAGS[index].clone();
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        // Revalidate every time: an upgraded binary serves its own page at once.
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (ETAG, etag.clone()),
        (
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
        ),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    let fresh = request
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_assets_that_are_served() {
        let page = ASSETS[0].body;
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(&format!("\"{}\"", asset.path)),
                "index.html does not load {}",
                asset.path
            );
        }
        // No inline script or style: the content security policy would refuse them.
        assert!(!page.contains("<script>"), "inline script in index.html");
        assert!(!page.contains("<style"), "inline style in index.html");
        assert!(!page.contains("style=\""), "style attribute in index.html");
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
