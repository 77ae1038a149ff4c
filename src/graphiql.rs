//! The GraphQL playground on `/`: GraphiQL, served entirely by the service.
//!
//! Its scripts and styles (GraphiQL's browser bundle, React and ReactDOM production
//! builds) are pinned files in `assets/graphiql/`, fetched by `scripts/vendor-graphiql.sh`
//! and embedded in the binary, so the page works on a machine without internet access and
//! makes no request to any other host (its Content-Security-Policy says so to the
//! browser). Asset paths carry their package's version, so they can be cached for a year.
//! The page runs no inline script (its setup is `/assets/wallet/graphiql.js`), so its
//! Content-Security-Policy allows scripts from this origin only and connections to this
//! origin only (`'self'` covers its websocket).
//!
//! Queries and mutations go to `/graphql`, subscriptions to `/graphql/ws`
//! (graphql-transport-ws). The headers typed in GraphiQL's Headers tab travel with every
//! HTTP request and, as the `connection_init` payload, with the websocket: a JSON object
//! such as `{"Authorization": "Bearer …"}` authenticates both.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The pinned versions (the same as in `scripts/vendor-graphiql.sh`).
pub const GRAPHIQL_VERSION: &str = "4.1.2";
pub const REACT_VERSION: &str = "18.3.1";

/// One embedded file: where it is served under `/assets/`, and what it is.
struct Asset {
    package: &'static str,
    version: &'static str,
    file: &'static str,
    /// Its name in `assets/graphiql/` (and in `SHA256SUMS` there, which a test checks).
    #[cfg_attr(not(test), allow(dead_code))]
    source: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

const ASSETS: &[Asset] = &[
    Asset {
        package: "react",
        version: REACT_VERSION,
        file: "react.production.min.js",
        source: "react.production.min.js",
        content_type: JS,
        body: include_bytes!("../assets/graphiql/react.production.min.js"),
    },
    Asset {
        package: "react-dom",
        version: REACT_VERSION,
        file: "react-dom.production.min.js",
        source: "react-dom.production.min.js",
        content_type: JS,
        body: include_bytes!("../assets/graphiql/react-dom.production.min.js"),
    },
    Asset {
        package: "graphiql",
        version: GRAPHIQL_VERSION,
        file: "graphiql.min.js",
        source: "graphiql.min.js",
        content_type: JS,
        body: include_bytes!("../assets/graphiql/graphiql.min.js"),
    },
    Asset {
        package: "graphiql",
        version: GRAPHIQL_VERSION,
        file: "graphiql.min.css",
        source: "graphiql.min.css",
        content_type: CSS,
        body: include_bytes!("../assets/graphiql/graphiql.min.css"),
    },
    Asset {
        package: "graphiql",
        version: GRAPHIQL_VERSION,
        file: "LICENSE",
        source: "LICENSE.graphiql",
        content_type: TEXT,
        body: include_bytes!("../assets/graphiql/LICENSE.graphiql"),
    },
    Asset {
        package: "react",
        version: REACT_VERSION,
        file: "LICENSE",
        source: "LICENSE.react",
        content_type: TEXT,
        body: include_bytes!("../assets/graphiql/LICENSE.react"),
    },
];

impl Asset {
    /// `/assets/<package>-<version>/<file>`.
    fn path(&self) -> String {
        format!("/assets/{}-{}/{}", self.package, self.version, self.file)
    }
}

fn asset(package: &str, file: &str) -> String {
    ASSETS
        .iter()
        .find(|a| a.package == package && a.file == file)
        .map(Asset::path)
        .unwrap_or_default()
}

/// Nothing but this origin (and its websocket: `'self'` matches `ws:`/`wss:` to the same
/// host) for scripts, styles, fonts, images and connections; no inline script. GraphiQL
/// sets inline styles on its elements, which style-src allows.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Where the page's own script is served (not a vendored asset: it changes with the
/// service, so it is not cached for long).
const SETUP_PATH: &str = "/assets/wallet/graphiql.js";

const DEFAULT_QUERY: &str = "# The Wallet API.
# Put a token in the Headers tab below:
#   {\"Authorization\": \"Bearer <token>\"}
# (the demo tokens the server printed, or
# `cargo run -- token --sub alice` in the
# repository, `wallet token --sub alice` when
# installed, prints one). It is sent with every request
# and opens the subscriptions' websocket.

{
  currencies { code name kind network enabled }
}
";

fn page() -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Wallet API · GraphiQL</title>
  <link rel="stylesheet" href="{css}">
  <style>body {{ margin: 0; height: 100vh; }} #graphiql {{ height: 100vh; }}</style>
</head>
<body>
  <div id="graphiql">Loading GraphiQL…</div>
  <script src="{react}"></script>
  <script src="{react_dom}"></script>
  <script src="{graphiql}"></script>
  <script src="{SETUP_PATH}"></script>
</body>
</html>
"#,
        css = asset("graphiql", "graphiql.min.css"),
        react = asset("react", "react.production.min.js"),
        react_dom = asset("react-dom", "react-dom.production.min.js"),
        graphiql = asset("graphiql", "graphiql.min.js"),
    )
}

/// The page's setup: GraphiQL on `/graphql` and `/graphql/ws`, with the Headers tab's
/// headers on every request and in the websocket's `connection_init`.
fn setup_script() -> String {
    let default_query = serde_json::to_string(DEFAULT_QUERY).unwrap_or_default();
    format!(
        r#"const url = new URL("/graphql", location.href).href;
const subscriptionUrl = url.replace(/^http/, "ws") + "/ws";
// One fetcher per set of headers: the websocket's connection_init carries them, and
// a websocket is authenticated once, when it opens.
const fetchers = new Map();
function fetcher(params, options) {{
  const headers = (options && options.headers) || {{}};
  const key = JSON.stringify(headers);
  let f = fetchers.get(key);
  if (!f) {{
    f = GraphiQL.createFetcher({{ url, subscriptionUrl, headers, wsConnectionParams: headers }});
    fetchers.set(key, f);
  }}
  return f(params, options);
}}
ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {{
    fetcher,
    defaultQuery: {default_query},
    defaultEditorToolsVisibility: "headers",
    isHeadersEditorEnabled: true,
  }})
);
"#
    )
}

/// `/` (the page) and `/assets/…` (its files).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(serve_page))
        .route(SETUP_PATH, get(serve_setup))
        .route("/assets/{dir}/{file}", get(serve_asset))
}

async fn serve_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page(),
    )
        .into_response()
}

async fn serve_setup() -> Response {
    (
        [
            (header::CONTENT_TYPE, JS),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        setup_script(),
    )
        .into_response()
}

async fn serve_asset(Path((dir, file)): Path<(String, String)>) -> Response {
    let Some(found) = ASSETS
        .iter()
        .find(|a| format!("{}-{}", a.package, a.version) == dir && a.file == file)
    else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(found.content_type),
            ),
            // The path names the version: the bytes behind it never change.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        found.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendoring_script_pins_the_versions_served() {
        let script = include_str!("../scripts/vendor-graphiql.sh");
        assert!(script.contains(&format!("GRAPHIQL_VERSION={GRAPHIQL_VERSION}\n")));
        assert!(script.contains(&format!("REACT_VERSION={REACT_VERSION}\n")));
    }

    /// The embedded files are byte for byte those whose sums are committed (the
    /// vendoring script records them).
    #[test]
    fn the_embedded_files_match_their_recorded_sums() {
        use sha2::Digest as _;
        let sums = include_str!("../assets/graphiql/SHA256SUMS");
        assert_eq!(sums.lines().count(), ASSETS.len());
        for asset in ASSETS {
            let line = sums
                .lines()
                .find(|l| l.ends_with(&format!("  {}", asset.source)))
                .unwrap_or_else(|| panic!("{} has no recorded sum", asset.source));
            let digest = sha2::Sha256::digest(asset.body);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                &line[..64],
                hex,
                "{} differs from its recorded sum",
                asset.source
            );
        }
    }

    #[test]
    fn the_page_runs_no_inline_script() {
        let page = page();
        assert_eq!(
            page.matches("<script").count(),
            page.matches("<script src=").count()
        );
        let scripts = CONTENT_SECURITY_POLICY
            .split(';')
            .find(|d| d.trim().starts_with("script-src"))
            .unwrap();
        assert_eq!(scripts.trim(), "script-src 'self'");
    }

    #[test]
    fn the_page_names_only_embedded_files() {
        let page = page();
        for a in ASSETS.iter().filter(|a| a.file != "LICENSE") {
            assert!(page.contains(&format!("\"{}\"", a.path())), "{}", a.path());
        }
        for attribute in ["src=\"", "href=\""] {
            for (at, _) in page.match_indices(attribute) {
                let value = &page[at + attribute.len()..];
                assert!(value.starts_with("/assets/"), "{}", &value[..40]);
            }
        }
    }
}
