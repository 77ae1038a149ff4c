//! GraphQL over websocket on `/graphql/ws`: the `graphql-transport-ws` protocol (the
//! `graphql-ws` npm client, GraphiQL, Apollo, urql) and the legacy `graphql-ws` protocol
//! (subscriptions-transport-ws).
//!
//! Written here rather than taken from async-graphql-axum so that the protocol's close
//! codes are the documented ones (4401 unauthenticated, 4400 bad message,
//! 4408 init timeout, 4409 duplicate id, 4429 repeated init), and so that each connection
//! has a cap on concurrent subscriptions and server-sent keep-alives.
//!
//! Limits: connections in total (over it: HTTP 503 before the upgrade) and per user (over
//! it: close 1013 "try again later" at `connection_init`); a peer that answers no ping
//! within the pong timeout is closed (1001); queries and mutations sent over the socket
//! run under the request timeout like HTTP requests (subscriptions run until stopped).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, WebSocketProtocols};
use async_graphql::parser::types::OperationType;
use async_graphql::{Data, Response};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use futures_util::stream::{self, BoxStream, SplitSink, StreamExt};
use futures_util::{FutureExt, SinkExt};
use serde_json::{Value, json};
use tokio_stream::StreamMap;

use crate::app::App;
use crate::auth::{TokenError, Verified, Viewer};
use crate::graphql::document;
use crate::graphql::error::{BAD_USER_INPUT, server_error, tag_request_errors};
use crate::graphql::loaders::Loaders;
use crate::graphql::{DEADLINE_GRACE, Deadline, RequestDb, ran_out_of_time};
use crate::limits::{UserSlot, WsSlot};

/// How long a client has to send `connection_init`.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a client may send (a subscribe with its query and variables).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Server keep-alive period (`ping` / `ka`).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub mod close {
    /// The peer stopped answering pings.
    pub const GOING_AWAY: u16 = 1001;
    /// Too many connections for this user: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const BAD_REQUEST: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const INIT_TIMEOUT: u16 = 4408;
    pub const DUPLICATE_ID: u16 = 4409;
    pub const TOO_MANY_INITS: u16 = 4429;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// `graphql-transport-ws`.
    Transport,
    /// Legacy `graphql-ws` (subscriptions-transport-ws).
    Legacy,
}

pub async fn handler(
    State(app): State<App>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> HttpResponse {
    // The first protocol the client offers that we speak.
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok());
    let protocol = match offered {
        Some(WebSocketProtocols::GraphQLWS) => Protocol::Transport,
        Some(WebSocketProtocols::SubscriptionsTransportWS) => Protocol::Legacy,
        None => {
            return (
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws",
            )
                .into_response();
        }
    };
    let Some(slot) = app.ws_slots.open() else {
        metrics::counter!("wallet_websocket_refused_total").increment(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many websocket connections, try again later",
        )
            .into_response();
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        // Client messages are small; thousands of idle connections should cost little.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| Session::new(app, protocol, slot).run(socket))
}

/// Why the session ends.
struct Close(u16, String);

type Outgoing = SplitSink<WebSocket, Message>;

struct Session {
    app: App,
    protocol: Protocol,
    /// Set by a successful `connection_init`.
    data: Option<Arc<Data>>,
    /// When the token of `connection_init` expires: the session ends then.
    expires_at: Option<tokio::time::Instant>,
    /// Resolves if that token is revoked: the session ends then.
    revoked: Option<futures_util::future::BoxFuture<'static, ()>>,
    /// Running operations by client id; `None` marks a stream's end.
    operations: StreamMap<String, BoxStream<'static, Option<Response>>>,
    /// This connection's place in the total, held until it closes.
    _slot: WsSlot,
    /// Its place among its user's connections, from `connection_init` on.
    user_slot: Option<UserSlot>,
    /// Since when a ping has gone unanswered (nothing at all heard from the peer).
    unanswered_since: Option<tokio::time::Instant>,
}

impl Session {
    fn new(app: App, protocol: Protocol, slot: WsSlot) -> Self {
        Session {
            app,
            protocol,
            data: None,
            expires_at: None,
            revoked: None,
            operations: StreamMap::new(),
            _slot: slot,
            user_slot: None,
            unanswered_since: None,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
        tokio::pin!(init_deadline);
        let pong_timeout = self.app.ws.pong_timeout;
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE.min(pong_timeout));
        keep_alive.tick().await;

        let closing = loop {
            let silent_until = self.unanswered_since.map(|since| since + pong_timeout);
            tokio::select! {
                incoming = rx.next() => {
                    // Anything from the peer (a pong included) shows it is there.
                    self.unanswered_since = None;
                    match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(close) = self.on_message(&mut tx, text.as_str()).await {
                            break Some(close);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break Some(Close(close::BAD_REQUEST, "binary messages are not supported".into()));
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                    Some(Ok(_)) => {} // websocket-level ping/pong: answered by axum
                    }
                },
                _ = until(silent_until) => {
                    break Some(Close(close::GOING_AWAY, "no answer to ping".into()));
                }
                Some((id, item)) = self.operations.next(), if !self.operations.is_empty() => {
                    // Queue every result that is ready, then flush once.
                    let mut ready = Some((id, item));
                    let mut sent = Ok(());
                    while let Some((id, item)) = ready.take() {
                        let frame = self.result_frame(&id, item);
                        sent = tx.feed(Message::Text(frame.into())).await;
                        if sent.is_err() {
                            break;
                        }
                        ready = self.operations.next().now_or_never().flatten();
                    }
                    if sent.and(tx.flush().await).is_err() {
                        break None;
                    }
                }
                _ = until(self.expires_at) => {
                    break Some(Close(close::UNAUTHORIZED, "Unauthorized: the token has expired".into()));
                }
                _ = until_done(&mut self.revoked) => {
                    break Some(Close(close::UNAUTHORIZED, "Unauthorized: the token has been revoked".into()));
                }
                _ = &mut init_deadline, if self.data.is_none() => {
                    break Some(Close(close::INIT_TIMEOUT, "Connection initialisation timeout".into()));
                }
                _ = keep_alive.tick(), if self.data.is_some() => {
                    let ping = match self.protocol {
                        Protocol::Transport => json!({"type": "ping"}),
                        Protocol::Legacy => json!({"type": "ka"}),
                    };
                    // The protocol's keep-alive for clients that watch for it, and a
                    // websocket ping that every client answers (browsers and libraries do
                    // it themselves) — which the legacy protocol's `ka` never gets.
                    let sent = match send(&mut tx, ping).await {
                        Ok(()) => tx.send(Message::Ping(Default::default())).await,
                        Err(e) => Err(e),
                    };
                    if sent.is_err() {
                        break None;
                    }
                    self.unanswered_since.get_or_insert_with(tokio::time::Instant::now);
                }
            }
        };
        if let Some(Close(code, reason)) = closing {
            if self.protocol == Protocol::Legacy && code == close::UNAUTHORIZED {
                let error = json!({"type": "connection_error", "payload": {"message": reason}});
                let _ = send(&mut tx, error).await;
            }
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from(reason),
                })))
                .await;
        }
        let _ = tx.close().await;
    }

    /// The frame for one result of an operation (`None`: it ended). A result with errors
    /// and no data (the operation was refused, or a subscription ended in an error) is sent
    /// as `error` and ends the operation.
    fn result_frame(&mut self, id: &str, item: Option<Response>) -> String {
        let Some(mut response) = item else {
            self.operations.remove(id);
            return frame("complete", id, None::<()>);
        };
        tag_request_errors(&mut response);
        if response.is_err() && response.data == async_graphql::Value::Null {
            self.operations.remove(id);
            return frame("error", id, Some(&response.errors));
        }
        let kind = match self.protocol {
            Protocol::Transport => "next",
            Protocol::Legacy => "data",
        };
        frame(kind, id, Some(&response))
    }

    async fn on_message(&mut self, tx: &mut Outgoing, text: &str) -> Result<(), Close> {
        let bad = |why: &str| Close(close::BAD_REQUEST, why.to_owned());
        let message: Value =
            serde_json::from_str(text).map_err(|_| bad("Invalid message received"))?;
        let kind = message["type"]
            .as_str()
            .ok_or_else(|| bad("the message has no type"))?;
        let id = message["id"].as_str().map(str::to_owned);
        let sent = match (self.protocol, kind) {
            (_, "connection_init") => {
                if self.data.is_some() {
                    return Err(Close(
                        close::TOO_MANY_INITS,
                        "Too many initialisation requests".into(),
                    ));
                }
                let verified = Session::authenticate(&self.app, &message["payload"]).await?;
                let (viewer, valid_until) = (verified.viewer, verified.valid_until);
                let Some(user_slot) = self.app.ws_slots.for_user(&viewer.user_id) else {
                    return Err(Close(
                        close::TRY_AGAIN_LATER,
                        format!(
                            "at most {} websocket connections per user",
                            self.app.ws.max_per_user
                        ),
                    ));
                };
                self.user_slot = Some(user_slot);
                let left = valid_until.saturating_sub(jsonwebtoken::get_current_timestamp());
                self.expires_at = Some(tokio::time::Instant::now() + Duration::from_secs(left));
                self.revoked = Some(
                    self.app
                        .state
                        .revocations
                        .clone()
                        .until_revoked(viewer.user_id.clone(), verified.issued_at)
                        .boxed(),
                );
                self.data = Some(Arc::new(self.session_data(viewer)));
                send(tx, json!({"type": "connection_ack"})).await
            }
            (Protocol::Transport, "ping") => send(tx, json!({"type": "pong"})).await,
            (Protocol::Transport, "pong") => Ok(()),
            (Protocol::Transport, "subscribe") | (Protocol::Legacy, "start") => {
                let id = id.ok_or_else(|| bad("the operation has no id"))?;
                self.start(tx, id, &message["payload"]).await?
            }
            (Protocol::Transport, "complete") | (Protocol::Legacy, "stop") => {
                let id = id.ok_or_else(|| bad("the message has no id"))?;
                let stopped = self.operations.remove(&id).is_some();
                if stopped && self.protocol == Protocol::Legacy {
                    send(tx, json!({"type": "complete", "id": id})).await
                } else {
                    Ok(())
                }
            }
            (Protocol::Legacy, "connection_terminate") => {
                return Err(Close(1000, "terminated".into()));
            }
            _ => return Err(bad(&format!("unexpected message type {kind:?}"))),
        };
        // A failed send means the peer is gone; the read side will notice.
        let _ = sent;
        Ok(())
    }

    /// The token of `connection_init` (`{"Authorization": "Bearer …"}`).
    async fn authenticate(app: &App, payload: &Value) -> Result<Verified, Close> {
        let header = payload.as_object().and_then(|p| {
            p.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| v.as_str())
        });
        let Some(header) = header else {
            return Err(Close(
                close::UNAUTHORIZED,
                "Unauthorized: connection_init needs an Authorization bearer token".into(),
            ));
        };
        app.authenticate(header).await.map_err(|e| {
            let why = match e {
                TokenError::Expired => "the token has expired",
                TokenError::Invalid(_) => "the token is not valid",
                TokenError::Revoked => "the token has been revoked",
                TokenError::Unavailable => {
                    return Close(
                        close::TRY_AGAIN_LATER,
                        "the token cannot be checked right now; try again later".into(),
                    );
                }
            };
            // As over HTTP (401): the caller is not identified. 4401 is also what
            // graphql-ws clients treat as final, rather than retrying a bad token.
            Close(close::UNAUTHORIZED, format!("Unauthorized: {why}"))
        })
    }

    fn session_data(&self, viewer: Viewer) -> Data {
        // All operations of one connection share one connection budget.
        let db = RequestDb::new(
            self.app.state.reads.clone(),
            self.app.limits.request_connections,
        );
        let mut data = Data::default();
        // A connection lives long: never serve a row from an earlier event's cache.
        Loaders::new(&db, false).into_data(&mut data);
        data.insert(db);
        data.insert(viewer);
        data
    }

    async fn start(
        &mut self,
        tx: &mut Outgoing,
        id: String,
        payload: &Value,
    ) -> Result<Result<(), axum::Error>, Close> {
        let Some(data) = self.data.clone() else {
            return Err(Close(close::UNAUTHORIZED, "Unauthorized".into()));
        };
        if self.operations.contains_key(&id) {
            return Err(Close(
                close::DUPLICATE_ID,
                format!("Subscriber for {id} already exists"),
            ));
        }
        let mut request = operation(payload).map_err(|why| Close(close::BAD_REQUEST, why))?;
        let max = self.app.ws.max_subscriptions;
        if self.operations.len() >= max {
            let errors = json!([{
                "message": format!("at most {max} operations may run at once on one connection"),
                "extensions": {"code": BAD_USER_INPUT},
            }]);
            return Ok(send(tx, json!({"type": "error", "id": id, "payload": errors})).await);
        }
        let kind = match document::prepare(&mut request, &self.app.limits.document) {
            Ok(measured) => measured.operation,
            Err(refused) => {
                let mut refused = Response::from_errors(vec![refused]);
                tag_request_errors(&mut refused);
                let error = frame("error", &id, Some(&refused.errors));
                return Ok(tx.send(Message::Text(error.into())).await);
            }
        };
        // Queries and mutations get the request timeout, as over HTTP; a subscription runs
        // until the client stops it.
        let deadline = (kind != Some(OperationType::Subscription))
            .then(|| tokio::time::Instant::now() + self.app.request_timeout);
        if let Some(deadline) = deadline {
            request = request.data(Deadline(deadline));
        }
        let results = self
            .app
            .schema
            .execute_stream_with_session_data(request, data);
        let results = match deadline {
            Some(deadline) => cut_off(
                results,
                deadline + DEADLINE_GRACE,
                kind == Some(OperationType::Mutation),
            ),
            None => results,
        };
        let results = results
            .map(Some)
            .chain(stream::once(async { None }))
            .boxed();
        self.operations.insert(id, results);
        Ok(Ok(()))
    }
}

/// The GraphQL request in a `subscribe`/`start` payload.
fn operation(payload: &Value) -> Result<async_graphql::Request, String> {
    let query = payload["query"]
        .as_str()
        .ok_or("the operation has no query")?;
    let mut request = async_graphql::Request::new(query);
    if let Some(name) = payload["operationName"].as_str() {
        request = request.operation_name(name);
    }
    match &payload["variables"] {
        Value::Null => {}
        v @ Value::Object(_) => {
            request = request.variables(async_graphql::Variables::from_json(v.clone()))
        }
        _ => return Err("variables must be an object".into()),
    }
    Ok(request)
}

/// The results of an operation until `at`; then an error saying it ran out of time, and
/// the end.
fn cut_off(
    results: BoxStream<'static, Response>,
    at: tokio::time::Instant,
    mutation: bool,
) -> BoxStream<'static, Response> {
    stream::unfold(Some(results), move |results| async move {
        let mut results = results?;
        match tokio::time::timeout_at(at, results.next()).await {
            Ok(Some(response)) => Some((response, Some(results))),
            Ok(None) => None,
            Err(_) => {
                let (code, message) = ran_out_of_time(mutation);
                let response = Response::from_errors(vec![server_error(code, message)]);
                Some((response, None))
            }
        }
    })
    .boxed()
}

/// Resolves when `future` does, never without one.
async fn until_done(future: &mut Option<futures_util::future::BoxFuture<'static, ()>>) {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A protocol message serialised in one pass (results are the hot path of fan-out).
fn frame<P: serde::Serialize>(kind: &str, id: &str, payload: Option<P>) -> String {
    #[derive(serde::Serialize)]
    struct Frame<'a, P> {
        #[serde(rename = "type")]
        kind: &'a str,
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<P>,
    }
    serde_json::to_string(&Frame { kind, id, payload }).unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not serialise a websocket message");
        format!(r#"{{"type":"error","id":{id:?},"payload":[{{"message":"internal error","extensions":{{"code":"INTERNAL"}}}}]}}"#)
    })
}

async fn send(tx: &mut Outgoing, message: Value) -> Result<(), axum::Error> {
    tx.send(Message::Text(message.to_string().into())).await
}
