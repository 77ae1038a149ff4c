//! HTTP transport: GraphQL over HTTP on `/graphql`, GraphiQL (see [`crate::graphiql`]), health and readiness
//! (websocket subscriptions on `/graphql/ws` are in [`crate::ws`]).
//!
//! Follows the GraphQL-over-HTTP specification: `application/graphql-response+json` and
//! `application/json` responses by content negotiation, 400 for requests that are not
//! well-formed or fail to parse or validate (under the new media type), mutations refused
//! over GET (405), 406/415 for unsupported media types.
//!
//! Request extraction is written here rather than taken from async-graphql-axum's
//! `GraphQLRequest`, because that extractor misses requirements of GraphQL over HTTP:
//! it reads any non-multipart body as JSON whatever its `Content-Type` (no 415), ignores
//! `Accept` (no 406, and always answers one media type), answers a malformed request with
//! a bare 400 whose body is the parse error's debug text rather than a GraphQL response
//! with `errors`, and lets a mutation through on GET. Execution itself is async-graphql's.

use async_graphql::parser::types::OperationType;
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::app::{App, MetricsAccess};
use crate::auth::{TokenError, Viewer};
use crate::events::listener::ListenerState;
use crate::graphql::document::{self, Measured};
use crate::graphql::error::{
    BAD_USER_INPUT, INTERNAL, RATE_LIMITED, UNAUTHENTICATED, UNAVAILABLE, tag_request_errors,
};
use crate::graphql::loaders::Loaders;
use crate::graphql::{DEADLINE_GRACE, Deadline, ExecutionStarted, RequestDb, ran_out_of_time};
use crate::replicas::{Lsn, ReadTarget};

pub const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";
const MAX_BODY_BYTES: usize = 256 * 1024;

pub fn router(app: App) -> Router {
    let mut routes = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/ws", get(crate::ws::handler));
    if app.graphiql {
        routes = routes
            .merge(crate::graphiql::routes())
            .merge(crate::examples::routes());
    }
    routes = routes
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    routes = match &app.metrics {
        MetricsAccess::Open => routes.route("/metrics", get(crate::metrics::render)),
        MetricsAccess::Token(_) => routes.route(
            "/metrics",
            get(crate::metrics::render).route_layer(axum::middleware::from_fn_with_state(
                app.clone(),
                crate::metrics::require_token,
            )),
        ),
        MetricsAccess::Hidden => routes,
    };
    routes
        .with_state(app)
        // Around routing, so that unmatched requests are counted too (under one label).
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request<_>| {
                            let id = req
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                        })
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(|_| {
                    error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        MediaType::Json,
                        INTERNAL,
                        "internal error",
                    )
                }))
                // `/graphql` reads its body itself, up to MAX_BODY_BYTES.
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
}

/// A random (version 4) UUID for each request's `x-request-id`, drawn from the thread's
/// random generator: the operating system's, which tower-http's `MakeRequestUuid` asks
/// for each time, cost a system call per request.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl tower_http::request_id::MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<tower_http::request_id::RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        HeaderValue::from_str(&id.hyphenated().to_string())
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// The answer to a request over the in-flight cap: 503, retry in a second, with a GraphQL
/// error (`RATE_LIMITED`). Nothing was run.
fn busy(media: MediaType) -> Response {
    metrics::counter!("wallet_http_requests_shed_total").increment(1);
    let body = json!({ "errors": [{
        "message": "the server is busy, try again",
        "extensions": { "code": RATE_LIMITED, "retryAfter": 1 },
    }] });
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media.content_type()),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Ready when the database answers through the read pool and the event listener is
/// connected (otherwise subscribers here would wait for events); then one line per chain
/// network. The database and chain checks are shared by callers within a second (see
/// [`crate::readiness`]); the listener's state is read at each call (it costs nothing).
///
/// A network down leaves the service ready (the fiat ledger and every query work; calls
/// that need that chain answer `CHAIN_UNAVAILABLE`), but its line says so; so does the
/// event stream's.
async fn readyz(State(app): State<App>) -> Response {
    let verdict = app.readiness.verdict(&app.state).await;
    if !verdict.database {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response();
    }
    if app.listener.state() != ListenerState::Listening {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "event listener reconnecting",
        )
            .into_response();
    }
    let mut body = String::from("ready\n");
    for line in &verdict.chains {
        body.push_str(line);
        body.push('\n');
    }
    // The stream lagging or its broker away leaves the service ready (money moves; the
    // stream catches up from its position), but the line says so.
    if let Some(stream) = &app.state.stream {
        use std::sync::atomic::Ordering;
        let lag = stream.lag.load(Ordering::Relaxed);
        let health = match stream.healthy.load(Ordering::Relaxed) {
            true => "ok",
            false => "unavailable",
        };
        body.push_str(&format!("stream: {health} (lag {lag} events)\n"));
    }
    // A replica lagging or away leaves the service ready (its queries go to the primary),
    // but its line says so.
    if let Some(replicas) = &app.state.replicas {
        for replica in replicas.members() {
            body.push_str(&format!(
                "replica {}: {}\n",
                replica.label,
                replicas.describe(&replica.status())
            ));
        }
    }
    (StatusCode::OK, body).into_response()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MediaType {
    GraphqlResponseJson,
    Json,
}

impl MediaType {
    fn content_type(self) -> &'static str {
        match self {
            MediaType::GraphqlResponseJson => "application/graphql-response+json; charset=utf-8",
            MediaType::Json => "application/json; charset=utf-8",
        }
    }
}

/// Picks the response media type from `Accept` (highest q wins; the GraphQL media type on
/// a tie). No `Accept` means `application/json`; nothing acceptable means 406.
fn negotiate(headers: &HeaderMap) -> Result<MediaType, Rejection> {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if accept.is_empty() {
        return Ok(MediaType::Json);
    }
    let mut best: Option<(f32, MediaType)> = None;
    for range in accept.iter().flat_map(|h| h.split(',')) {
        let mut parts = range.split(';').map(str::trim);
        let essence = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let media = match essence.as_str() {
            GRAPHQL_RESPONSE_JSON => MediaType::GraphqlResponseJson,
            "application/json" => MediaType::Json,
            // Wildcards come from generic and legacy clients: give them the legacy type.
            "*/*" | "application/*" => MediaType::Json,
            _ => continue,
        };
        if q <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((bq, bm)) => {
                q > bq || (q == bq && media == MediaType::GraphqlResponseJson && bm != media)
            }
        };
        if better {
            best = Some((q, media));
        }
    }
    best.map(|(_, m)| m).ok_or_else(|| {
        Rejection::new(
            StatusCode::NOT_ACCEPTABLE,
            BAD_USER_INPUT,
            "responses are application/graphql-response+json or application/json",
        )
    })
}

/// A request refused before execution; rendered in the negotiated media type.
struct Rejection {
    status: StatusCode,
    code: &'static str,
    message: String,
    header: Option<(header::HeaderName, HeaderValue)>,
}

impl Rejection {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            status,
            code,
            message: message.into(),
            header: None,
        }
    }

    fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.header = Some((name, HeaderValue::from_static(value)));
        self
    }

    fn render(self, media: MediaType) -> Response {
        let mut resp = error_response(self.status, media, self.code, &self.message);
        if let Some((name, value)) = self.header {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

fn error_response(status: StatusCode, media: MediaType, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media.content_type()),
    );
    resp
}

/// The caller named by the Authorization header. No header: anonymous. A header that does
/// not verify, or a revoked token, is refused outright (401) rather than silently treated
/// as anonymous; when revocations cannot be checked, 503.
async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Option<Viewer>, Rejection> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let refuse = |why: &str| {
        Rejection::new(StatusCode::UNAUTHORIZED, UNAUTHENTICATED, why)
            .with_header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")
    };
    let value = value
        .to_str()
        .map_err(|_| refuse("the Authorization header is not valid text"))?;
    match app.authenticate(value).await {
        Ok(verified) => Ok(Some(verified.viewer)),
        Err(TokenError::Expired) => Err(refuse("the token has expired")),
        Err(TokenError::Invalid(why)) => {
            tracing::debug!(%why, "refused a token");
            Err(refuse("the token is not valid"))
        }
        Err(TokenError::Revoked) => Err(refuse("the token has been revoked")),
        Err(TokenError::Unavailable) => Err(Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            UNAVAILABLE,
            "the token cannot be checked right now; try again",
        )
        .with_header(header::RETRY_AFTER, "1")),
    }
}

/// Builds an `async_graphql::Request` from the parameters of a GraphQL-over-HTTP request,
/// checking their types (a malformed request is 400 whatever the media type).
fn graphql_request(
    params: &serde_json::Map<String, Value>,
) -> Result<async_graphql::Request, String> {
    let query = match params.get("query") {
        Some(Value::String(q)) => q.clone(),
        Some(_) => return Err("`query` must be a string".into()),
        None => return Err("the request has no `query`".into()),
    };
    let mut request = async_graphql::Request::new(query);
    match params.get("operationName") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => request = request.operation_name(name.clone()),
        Some(_) => return Err("`operationName` must be a string".into()),
    }
    match params.get("variables") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => {
            request = request.variables(async_graphql::Variables::from_json(v.clone()))
        }
        Some(_) => return Err("`variables` must be an object".into()),
    }
    match params.get("extensions") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err("`extensions` must be an object".into()),
    }
    Ok(request)
}

async fn graphql_post(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let deadline = Deadline(Instant::now() + app.request_timeout);
    let media = match negotiate(&headers) {
        Ok(m) => m,
        Err(rejection) => return rejection.render(MediaType::Json),
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| m.essence_str() == "application/json");
    if !is_json {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            media,
            BAD_USER_INPUT,
            "POST bodies must be application/json",
        );
    }
    let body = match tokio::time::timeout_at(deadline.0, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                media,
                BAD_USER_INPUT,
                &format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                media,
                BAD_USER_INPUT,
                "the body did not arrive in time",
            );
        }
    };
    let params = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                media,
                BAD_USER_INPUT,
                "the body must be a JSON object (batched requests are not supported)",
            );
        }
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                media,
                BAD_USER_INPUT,
                &format!("the body is not valid JSON: {e}"),
            );
        }
    };
    let mut request = match graphql_request(&params) {
        Ok(request) => request,
        Err(why) => return error_response(StatusCode::BAD_REQUEST, media, BAD_USER_INPUT, &why),
    };
    match document::prepare(&mut request, &app.limits.document) {
        Ok(measured) => execute(&app, &headers, request, measured, media, deadline).await,
        Err(refused) => not_executed(refused, media),
    }
}

async fn graphql_get(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let deadline = Deadline(Instant::now() + app.request_timeout);
    let media = match negotiate(&headers) {
        Ok(m) => m,
        Err(rejection) => return rejection.render(MediaType::Json),
    };
    let mut params = serde_json::Map::new();
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes()) {
        let (key, value) = (key.into_owned(), value.into_owned());
        let value = match key.as_str() {
            // These two travel as JSON text inside the query string.
            "variables" | "extensions" => match serde_json::from_str::<Value>(&value) {
                Ok(v) => v,
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        media,
                        BAD_USER_INPUT,
                        &format!("`{key}` must be JSON"),
                    );
                }
            },
            _ => Value::String(value),
        };
        params.insert(key, value);
    }
    let mut request = match graphql_request(&params) {
        Ok(r) => r,
        Err(why) => return error_response(StatusCode::BAD_REQUEST, media, BAD_USER_INPUT, &why),
    };
    let measured = match document::prepare(&mut request, &app.limits.document) {
        Ok(measured) => measured,
        Err(refused) => return not_executed(refused, media),
    };
    if changes_state(&measured) {
        return Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            BAD_USER_INPUT,
            "mutations must be sent with POST",
        )
        .with_header(header::ALLOW, "POST")
        .render(media);
    }
    execute(&app, &headers, request, measured, media, deadline).await
}

/// Whether the operation is a mutation (or subscription): not for GET, and of unknown
/// outcome should it run out of time.
fn changes_state(measured: &Measured) -> bool {
    measured
        .operation
        .is_some_and(|ty| ty != OperationType::Query)
}

/// A request refused before execution (by the document limits).
fn not_executed(refused: async_graphql::ServerError, media: MediaType) -> Response {
    respond(
        async_graphql::Response::from_errors(vec![refused]),
        false,
        media,
    )
}

async fn execute(
    app: &App,
    headers: &HeaderMap,
    request: async_graphql::Request,
    measured: Measured,
    media: MediaType,
    deadline: Deadline,
) -> Response {
    // Counted from here, once the request has arrived: a client trickling its body holds
    // only its own connection (which the connection caps and the deadline bound), not a
    // place that others need. Over the cap the request is refused at once, not queued.
    let Ok(_in_flight) = app.in_flight.clone().try_acquire_owned() else {
        return busy(media);
    };
    let viewer = match authenticate(app, headers).await {
        Ok(v) => v,
        Err(rejection) => return rejection.render(media),
    };
    let started = ExecutionStarted::default();
    let mutation = changes_state(&measured);
    // A query may be served by a replica (one that has replayed the client's token, if it
    // sent one); a mutation reads and writes on the primary.
    let (pool, source) = match (&app.state.replicas, mutation) {
        (Some(replicas), false) => {
            let token = match consistency_token(headers) {
                Ok(token) => token,
                Err(why) => {
                    return error_response(StatusCode::BAD_REQUEST, media, BAD_USER_INPUT, &why);
                }
            };
            let read = replicas.pool_for_read(token);
            match tokio::time::timeout_at(deadline.0, read).await {
                Ok(chosen) => chosen,
                Err(_) => (app.state.reads.clone(), ReadTarget::Primary),
            }
        }
        _ => (app.state.reads.clone(), ReadTarget::Primary),
    };
    let db = RequestDb::new(pool, app.limits.request_connections);
    let request = Loaders::new(&db, true).into_request(request);
    let mut request = request
        .data(started.clone())
        .data(db)
        .data(deadline)
        .data(source);
    if let Some(v) = viewer {
        request = request.data(v);
    }
    let execution = app.schema.execute(request);
    let Ok(response) = tokio::time::timeout_at(deadline.0 + DEADLINE_GRACE, execution).await else {
        // Never a bare timeout: an error the client can act on.
        let mutation = changes_state(&measured);
        let (code, message) = ran_out_of_time(mutation);
        let status = match mutation {
            true => StatusCode::GATEWAY_TIMEOUT,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        let status = if media == MediaType::Json {
            StatusCode::OK
        } else {
            status
        };
        return error_response(status, media, code, message);
    };
    let mut response = response;
    // What a later read presents to see this mutation's writes on a replica.
    let token = match (&app.state.replicas, mutation && started.get()) {
        (Some(_), true) => {
            let position = crate::db::wal_position(&app.state.reads);
            tokio::time::timeout_at(deadline.0 + DEADLINE_GRACE, position)
                .await
                .ok()
                .flatten()
        }
        _ => None,
    };
    if let Some(token) = &token {
        response.extensions.insert(
            "consistencyToken".to_owned(),
            async_graphql::Value::String(token.to_string()),
        );
    }
    let mut resp = respond(response, started.get(), media);
    if let Some(token) = token
        && let Ok(value) = HeaderValue::from_str(&token.to_string())
    {
        resp.headers_mut().insert(CONSISTENCY_TOKEN, value);
    }
    if app.state.replicas.is_some() && !mutation {
        resp.headers_mut()
            .insert(READ_SOURCE, HeaderValue::from_static(source.as_str()));
    }
    resp
}

/// The header a mutation's consistency token comes back in, and a query presents it in.
pub const CONSISTENCY_TOKEN: &str = "wallet-consistency-token";
/// The header saying whether a query was served by a replica or the primary.
pub const READ_SOURCE: &str = "wallet-read-source";

/// The consistency token a request presents, if any.
fn consistency_token(headers: &HeaderMap) -> Result<Option<Lsn>, String> {
    let Some(value) = headers.get(CONSISTENCY_TOKEN) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<Lsn>().ok())
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{CONSISTENCY_TOKEN}: not a consistency token (send back the one a mutation's \
                 response carried, e.g. 0/16B3748)"
            )
        })
}

/// The HTTP response for a GraphQL response; `started`: the operation got past parsing
/// and validation.
fn respond(mut response: async_graphql::Response, started: bool, media: MediaType) -> Response {
    tag_request_errors(&mut response);
    let retry_after = rate_limited(&response);
    let status = if retry_after.is_some() {
        StatusCode::TOO_MANY_REQUESTS
    } else if media == MediaType::GraphqlResponseJson && !started && response.is_err() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    // A request that failed before execution (did not parse or validate, or was refused)
    // has no `data` entry at all; one that ran has `data`, null where it failed.
    let body = if !started && response.is_err() {
        serde_json::to_vec(&RequestError {
            errors: &response.errors,
            extensions: &response.extensions,
        })
    } else {
        serde_json::to_vec(&response)
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "could not serialise a response");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                media,
                INTERNAL,
                "internal error",
            );
        }
    };
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media.content_type()),
    );
    if let Some(seconds) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    resp
}

/// The response to a request that was not executed: errors only.
#[derive(serde::Serialize)]
struct RequestError<'a> {
    errors: &'a [async_graphql::ServerError],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extensions: &'a std::collections::BTreeMap<String, async_graphql::Value>,
}

/// Seconds to wait, when the request was refused by the rate limit (HTTP 429 with
/// `Retry-After`, whatever the media type: the request was not run at all).
fn rate_limited(response: &async_graphql::Response) -> Option<u64> {
    response.errors.iter().find_map(|e| {
        let ext = e.extensions.as_ref()?;
        match ext.get("code") {
            Some(async_graphql::Value::String(code)) if code == RATE_LIMITED => {
                match ext.get("retryAfter") {
                    Some(async_graphql::Value::Number(n)) => n.as_u64(),
                    _ => Some(1),
                }
            }
            _ => None,
        }
    })
}
