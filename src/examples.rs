//! The example web client (`examples/web-client/`), served at `/examples/web-client/`
//! next to GraphiQL: a page a frontend developer can open and copy — sign in with a
//! token, wallets, a wallet's transactions page by page, live updates through a
//! subscription. Plain files with no dependencies; embedded so the binary serves them
//! from any working directory.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the example is served.
pub const PATH: &str = "/examples/web-client/";

/// The page may talk to this origin only, and runs no inline script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files that change with the binary: revalidated on each load.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/examples/web-client",
            get(|| async { Redirect::permanent(PATH) }),
        )
        .route(
            PATH,
            get(|| async {
                file(
                    "text/html; charset=utf-8",
                    include_str!("../examples/web-client/index.html"),
                )
            }),
        )
        .route(
            "/examples/web-client/app.js",
            get(|| async {
                file(
                    "text/javascript; charset=utf-8",
                    include_str!("../examples/web-client/app.js"),
                )
            }),
        )
        .route(
            "/examples/web-client/style.css",
            get(|| async {
                file(
                    "text/css; charset=utf-8",
                    include_str!("../examples/web-client/style.css"),
                )
            }),
        )
}
