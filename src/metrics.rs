//! Prometheus metrics on `/metrics`: request counts and latencies by route, and
//! gauges read from the running service when scraped.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::app::App;
use crate::events::listener::ListenerState;

/// The process-wide recorder (one per process, however many app instances it runs).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours stays unused.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Counts and times every request by method, route and status. Each label has a fixed
/// set of values whatever clients send (a label value per invented method or path would
/// be a new series each, kept for the life of the process): the method is `GET`, `POST`
/// or `OTHER`, the route the matched route's pattern or `unmatched`.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        _ => "OTHER",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("wallet_http_requests_total", &labels).increment(1);
    metrics::histogram!("wallet_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Lets through only requests bearing the metrics token (`WALLET_METRICS_TOKEN`).
pub async fn require_token(State(app): State<App>, request: Request, next: Next) -> Response {
    use secrecy::ExposeSecret;
    let crate::app::MetricsAccess::Token(token) = &app.metrics else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if same_secret(presented.as_bytes(), token.expose_secret().as_bytes()) {
        next.run(request).await
    } else {
        (
            axum::http::StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            "metrics need Authorization: Bearer <WALLET_METRICS_TOKEN>\n",
        )
            .into_response()
    }
}

/// Compares without stopping at the first difference (no timing hint of a prefix).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A router serving only `/metrics`, for a separate listen address.
pub fn router(app: App) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(render))
        .with_state(app)
}

/// `GET /metrics`: the Prometheus text format.
pub async fn render(State(app): State<App>) -> impl IntoResponse {
    let handle = handle();
    let pool = app.state.pool.status();
    metrics::gauge!("wallet_db_pool_size").set(pool.size as f64);
    metrics::gauge!("wallet_db_pool_available").set(pool.available as f64);
    metrics::gauge!("wallet_db_pool_waiting").set(pool.waiting as f64);
    metrics::gauge!("wallet_db_statements").set(app.state.queries.get() as f64);
    metrics::gauge!("wallet_subscriptions").set(app.state.events.subscriber_count() as f64);
    metrics::gauge!("wallet_websocket_connections").set(app.ws_slots.open_count(&app.ws) as f64);
    metrics::gauge!("wallet_websocket_unauthenticated")
        .set(app.ws_slots.unauthenticated_count(&app.ws) as f64);
    let executing = app.http.max_in_flight.max(1) - app.in_flight.available_permits();
    metrics::gauge!("wallet_http_requests_in_flight").set(executing as f64);
    let reads = app.state.reads.status();
    metrics::gauge!("wallet_db_read_pool_size").set(reads.size as f64);
    metrics::gauge!("wallet_db_read_pool_available").set(reads.available as f64);
    let batches = app.state.committer.stats();
    for (name, value) in [
        ("wallet_group_commit_batches", &batches.batches),
        ("wallet_group_commit_movements", &batches.movements),
        ("wallet_group_commit_fallbacks", &batches.fallbacks),
        ("wallet_group_commit_rerun", &batches.rerun),
        ("wallet_group_commit_withdrawn", &batches.withdrawn),
    ] {
        metrics::gauge!(name).set(value.load(std::sync::atomic::Ordering::Relaxed) as f64);
    }
    let listening = app.listener.state() == ListenerState::Listening;
    metrics::gauge!("wallet_event_listener_connected").set(if listening { 1.0 } else { 0.0 });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}
