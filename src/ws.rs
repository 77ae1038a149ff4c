//! GraphQL over websocket on `/graphql/ws`: the `graphql-transport-ws` protocol (the
//! `graphql-ws` npm client, GraphiQL, Apollo, urql) and the legacy `graphql-ws` protocol
//! (subscriptions-transport-ws).
//!
//! Written here rather than taken from async-graphql-axum so that the protocol's close
//! codes are the documented ones (4401 unauthenticated, 4400 bad message,
//! 4408 init timeout, 4409 duplicate id, 4429 repeated init), and so that each connection
//! has caps, timers and server-sent keep-alives.
//!
//! Limits: connections in total, and connections not yet initialised (over either: HTTP
//! 503 before the upgrade); connections per user (over it: close 1013 "try again later"
//! at `connection_init`); operations per connection and per user (over either: an `error`
//! message). A client that does not send `connection_init` within the init timeout is
//! closed (4408), and nothing is answered before it (not even a `ping`); a peer that
//! answers no ping within the pong timeout is closed (1001); a session ends when its
//! token expires or is revoked (4401). Queries and mutations sent over the socket run under the
//! request timeout like HTTP requests (subscriptions run until stopped).
//!
//! Sending never holds the session up: messages go through a bounded queue to a writer
//! task, and every write (the messages queued, then a flush) must finish within the send
//! timeout. So the timers above run whatever the peer does, and a peer that does not read
//! what it is sent is disconnected when a write times out (no close frame can reach it).
//! Nothing grows meanwhile: results are taken from the operations only while the queue
//! has room (a slow reader of a busy subscription falls behind on the event bus, which
//! ends that subscription with `SUBSCRIPTION_LAGGED`), and the peer's messages are not
//! read while the queue has no room for their answers.

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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamMap;

use crate::app::App;
use crate::auth::{TokenError, Verified, Viewer};
use crate::graphql::document;
use crate::graphql::error::{BAD_USER_INPUT, RATE_LIMITED, server_error, tag_request_errors};
use crate::graphql::loaders::Loaders;
use crate::graphql::{DEADLINE_GRACE, Deadline, RequestDb, ran_out_of_time};
use crate::limits::{UnauthenticatedSlot, UserSlot, WsRefused, WsSlot};

/// Largest message a client may send (a subscribe with its query and variables).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Server keep-alive period (`ping` / `ka`).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Messages queued for the peer at most: one that lets this many pile up is not reading.
const SEND_QUEUE: usize = 64;
/// Places of the queue that results never take, so that the answers of the protocol
/// (acks, pongs, errors, completes) find room unless the peer stopped reading.
const ANSWER_RESERVE: usize = 16;
/// How long a closing session waits for its close frame to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
    // Clients that can set headers (not browsers) may authenticate the upgrade itself:
    // their connection never counts among the unauthenticated ones.
    let upgraded_as = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let verified = match value.to_str() {
                Ok(value) => app.authenticate(value).await,
                Err(_) => Err(TokenError::Invalid("not text".into())),
            };
            match verified {
                Ok(verified) => Some(verified),
                Err(TokenError::Unavailable) => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "1")],
                        "the token cannot be checked right now; try again",
                    )
                        .into_response();
                }
                Err(_) => {
                    return (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
                        "the Authorization header's token is not valid",
                    )
                        .into_response();
                }
            }
        }
    };
    let slots = match upgraded_as {
        Some(_) => app
            .ws_slots
            .open()
            .map(|slot| (slot, None))
            .ok_or(WsRefused::Total),
        None => app
            .ws_slots
            .open_unauthenticated()
            .map(|(slot, waiting)| (slot, Some(waiting))),
    };
    let (slot, waiting) = match slots {
        Ok(slots) => slots,
        Err(why) => {
            let (cap, text) = match why {
                WsRefused::Total => ("total", "too many websocket connections, try again later"),
                WsRefused::Unauthenticated => (
                    "unauthenticated",
                    "too many websocket connections waiting for connection_init, try again later",
                ),
            };
            metrics::counter!("wallet_websocket_refused_total", "cap" => cap).increment(1);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                text,
            )
                .into_response();
        }
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        // Client messages are small; thousands of idle connections should cost little.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| {
            Session::new(app, protocol, slot, waiting, upgraded_as).run(socket)
        })
}

/// How the session ends.
enum End {
    /// With a close frame: code and reason.
    Close(u16, String),
    /// Without one: the peer is gone, or does not read (nothing more can reach it).
    Drop,
}

impl End {
    fn close(code: u16, reason: impl Into<String>) -> Self {
        End::Close(code, reason.into())
    }
}

/// The messages on their way to the peer, written by the session's writer task.
struct Outbox {
    queue: mpsc::Sender<Message>,
}

impl Outbox {
    /// An outbox whose writer is gone: every message is refused.
    fn closed() -> Self {
        let (queue, _) = mpsc::channel(1);
        Outbox { queue }
    }

    /// Queues a message. The session reads from the peer only while the answer to a
    /// message fits, so a full queue here means the peer is not reading.
    fn push(&self, message: Message) -> Result<(), End> {
        match self.queue.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("wallet_websocket_dropped_total", "reason" => "queue_full")
                    .increment(1);
                Err(End::Drop)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(End::Drop),
        }
    }

    fn answer(&self, message: Value) -> Result<(), End> {
        self.push(Message::Text(message.to_string().into()))
    }

    /// Whether a result may be queued (the answers' reserve stays free).
    fn has_room_for_results(&self) -> bool {
        self.queue.capacity() > ANSWER_RESERVE
    }

    /// Whether the answer to one more client message fits (each has at most one).
    fn has_room_for_an_answer(&self) -> bool {
        self.queue.capacity() > 0
    }

    /// Resolves once results may be queued again.
    async fn room_for_results(&self) {
        // The permits go back at once: this only waits for the writer to make room.
        let _ = self.queue.reserve_many(ANSWER_RESERVE + 1).await;
    }
}

/// Writes what the session queues, each batch (the messages queued at the moment, up to
/// the queue's size) written and flushed within `timeout`. Returns when the session has
/// closed the queue and all is written, or at the first write that fails or times out
/// (the peer is gone, or does not read).
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Message>,
    timeout: Duration,
) {
    while let Some(first) = queue.recv().await {
        let batch = async {
            sink.feed(first).await?;
            for _ in 1..SEND_QUEUE {
                match queue.try_recv() {
                    Ok(next) => sink.feed(next).await?,
                    Err(_) => break,
                }
            }
            sink.flush().await
        };
        match tokio::time::timeout(timeout, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                metrics::counter!("wallet_websocket_dropped_total", "reason" => "send_timeout")
                    .increment(1);
                return;
            }
        }
    }
    let _ = tokio::time::timeout(timeout, sink.close()).await;
}

struct Session {
    app: App,
    protocol: Protocol,
    outbox: Outbox,
    /// Set by a successful `connection_init`.
    data: Option<Arc<Data>>,
    /// The caller, from `connection_init` on.
    user: Option<String>,
    /// The token of the upgrade request, when it had one.
    upgraded_as: Option<Verified>,
    /// When the token of `connection_init` expires: the session ends then.
    expires_at: Option<tokio::time::Instant>,
    /// Resolves if that token is revoked: the session ends then.
    revoked: Option<futures_util::future::BoxFuture<'static, ()>>,
    /// Running operations by client id; `None` marks a stream's end.
    operations: StreamMap<String, BoxStream<'static, Option<Response>>>,
    /// This connection's place in the total, held until it closes.
    _slot: WsSlot,
    /// Its place among the connections not yet initialised, until `connection_init`.
    waiting: Option<UnauthenticatedSlot>,
    /// Its place among its user's connections, from `connection_init` on.
    user_slot: Option<UserSlot>,
    /// Since when a ping has gone unanswered (nothing at all heard from the peer).
    unanswered_since: Option<tokio::time::Instant>,
}

impl Session {
    fn new(
        app: App,
        protocol: Protocol,
        slot: WsSlot,
        waiting: Option<UnauthenticatedSlot>,
        upgraded_as: Option<Verified>,
    ) -> Self {
        Session {
            app,
            protocol,
            // Replaced by the writer's queue in `run`.
            outbox: Outbox::closed(),
            data: None,
            user: None,
            upgraded_as,
            expires_at: None,
            revoked: None,
            operations: StreamMap::new(),
            _slot: slot,
            waiting,
            user_slot: None,
            unanswered_since: None,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (sink, mut rx) = socket.split();
        let (queue, queued) = mpsc::channel(SEND_QUEUE);
        self.outbox = Outbox { queue };
        let mut writer: JoinHandle<()> =
            tokio::spawn(write(sink, queued, self.app.ws.send_timeout));
        let init_deadline = tokio::time::sleep(self.app.ws.init_timeout);
        tokio::pin!(init_deadline);
        let pong_timeout = self.app.ws.pong_timeout;
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE.min(pong_timeout));
        keep_alive.tick().await;

        let end = loop {
            let silent_until = self.unanswered_since.map(|since| since + pong_timeout);
            let has_room = self.outbox.has_room_for_results();
            // A peer whose answers have filled the queue is not read from until they
            // are written: it cannot make the server buffer more for it.
            let may_read = self.outbox.has_room_for_an_answer();
            tokio::select! {
                incoming = rx.next(), if may_read => {
                    // Anything from the peer (a pong included) shows it is there.
                    self.unanswered_since = None;
                    match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(end) = self.on_message(text.as_str()).await {
                            break end;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        break End::close(close::BAD_REQUEST, "binary messages are not supported");
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Drop,
                    Some(Ok(_)) => {} // websocket-level ping/pong: answered by axum
                    }
                },
                _ = until(silent_until) => {
                    break End::close(close::GOING_AWAY, "no answer to ping");
                }
                Some((id, item)) = self.operations.next(), if has_room && !self.operations.is_empty() => {
                    if let Err(end) = self.forward(id, item) {
                        break end;
                    }
                }
                () = self.outbox.room_for_results(), if !may_read || (!has_room && !self.operations.is_empty()) => {}
                _ = &mut writer => break End::Drop,
                _ = until(self.expires_at) => {
                    break End::close(close::UNAUTHORIZED, "Unauthorized: the token has expired");
                }
                _ = until_done(&mut self.revoked) => {
                    break End::close(close::UNAUTHORIZED, "Unauthorized: the token has been revoked");
                }
                _ = &mut init_deadline, if self.data.is_none() => {
                    break End::close(close::INIT_TIMEOUT, "Connection initialisation timeout");
                }
                _ = keep_alive.tick(), if self.data.is_some() => {
                    // With the queue this full, the peer reads nothing: the send timeout
                    // ends the session, and a ping would only wait behind.
                    if !self.outbox.has_room_for_results() {
                        continue;
                    }
                    let ping = match self.protocol {
                        Protocol::Transport => json!({"type": "ping"}),
                        Protocol::Legacy => json!({"type": "ka"}),
                    };
                    // The protocol's keep-alive for clients that watch for it, and a
                    // websocket ping that every client answers (browsers and libraries do
                    // it themselves) — which the legacy protocol's `ka` never gets.
                    let sent = self
                        .outbox
                        .answer(ping)
                        .and_then(|()| self.outbox.push(Message::Ping(Default::default())));
                    if let Err(end) = sent {
                        break end;
                    }
                    self.unanswered_since.get_or_insert_with(tokio::time::Instant::now);
                }
            }
        };
        // Whatever happens next, the session's places are given back now.
        let protocol = self.protocol;
        let outbox = std::mem::replace(&mut self.outbox, Outbox::closed());
        drop(self);
        if let End::Close(code, reason) = end {
            if protocol == Protocol::Legacy && code == close::UNAUTHORIZED {
                let error = json!({"type": "connection_error", "payload": {"message": reason}});
                let _ = outbox.answer(error);
            }
            let _ = outbox.push(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            })));
            // The writer writes what is queued, the close last, then closes.
            drop(outbox);
            if tokio::time::timeout(CLOSE_GRACE, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        } else {
            writer.abort();
        }
        // The socket closes when both halves are gone: the writer's, and `rx` here.
        drop(rx);
    }

    /// Queues every result that is ready, while the queue has room for results.
    fn forward(&mut self, id: String, item: Option<Response>) -> Result<(), End> {
        let mut ready = Some((id, item));
        while let Some((id, item)) = ready.take() {
            let frame = self.result_frame(&id, item);
            self.outbox.push(Message::Text(frame.into()))?;
            if !self.outbox.has_room_for_results() {
                break;
            }
            ready = self.operations.next().now_or_never().flatten();
        }
        Ok(())
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

    async fn on_message(&mut self, text: &str) -> Result<(), End> {
        let bad = |why: &str| End::close(close::BAD_REQUEST, why);
        let message: Value =
            serde_json::from_str(text).map_err(|_| bad("Invalid message received"))?;
        let kind = message["type"]
            .as_str()
            .ok_or_else(|| bad("the message has no type"))?;
        let id = message["id"].as_str().map(str::to_owned);
        let initialised = self.data.is_some();
        match (self.protocol, kind) {
            (_, "connection_init") => {
                if initialised {
                    return Err(End::close(
                        close::TOO_MANY_INITS,
                        "Too many initialisation requests",
                    ));
                }
                let upgraded_as = self.upgraded_as.clone();
                let verified =
                    Session::authenticate(&self.app, upgraded_as, &message["payload"]).await?;
                let (viewer, valid_until) = (verified.viewer, verified.valid_until);
                let Some(user_slot) = self.app.ws_slots.for_user(&viewer.user_id) else {
                    return Err(End::close(
                        close::TRY_AGAIN_LATER,
                        format!(
                            "at most {} websocket connections per user",
                            self.app.ws.max_per_user
                        ),
                    ));
                };
                self.user_slot = Some(user_slot);
                self.waiting = None;
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
                self.user = Some(viewer.user_id.clone());
                self.data = Some(Arc::new(self.session_data(viewer)));
                self.outbox.answer(json!({"type": "connection_ack"}))
            }
            // Nothing is answered before `connection_init`: a client that has not
            // authenticated cannot make the server write (and so cannot hold a session by
            // not reading its answers); the init timeout runs meanwhile.
            (Protocol::Transport, "ping") if initialised => {
                self.outbox.answer(json!({"type": "pong"}))
            }
            (Protocol::Transport, "ping" | "pong") => Ok(()),
            (Protocol::Transport, "subscribe") | (Protocol::Legacy, "start") => {
                let id = id.ok_or_else(|| bad("the operation has no id"))?;
                self.start(id, &message["payload"])
            }
            (Protocol::Transport, "complete") | (Protocol::Legacy, "stop") => {
                let id = id.ok_or_else(|| bad("the message has no id"))?;
                let stopped = self.operations.remove(&id).is_some();
                if stopped && self.protocol == Protocol::Legacy {
                    self.outbox.answer(json!({"type": "complete", "id": id}))
                } else {
                    Ok(())
                }
            }
            (Protocol::Legacy, "connection_terminate") => Err(End::close(1000, "terminated")),
            _ => Err(bad(&format!("unexpected message type {kind:?}"))),
        }
    }

    /// The caller: the token of `connection_init` (`{"Authorization": "Bearer …"}`), else
    /// that of the upgrade request. Both given, they must name the same user.
    async fn authenticate(
        app: &App,
        upgraded_as: Option<Verified>,
        payload: &Value,
    ) -> Result<Verified, End> {
        let header = payload.as_object().and_then(|p| {
            p.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| v.as_str())
        });
        let Some(header) = header else {
            return upgraded_as.ok_or_else(|| {
                End::close(
                    close::UNAUTHORIZED,
                    "Unauthorized: connection_init needs an Authorization bearer token",
                )
            });
        };
        let verified = app.authenticate(header).await.map_err(|e| {
            let why = match e {
                TokenError::Expired => "the token has expired",
                TokenError::Invalid(_) => "the token is not valid",
                TokenError::Revoked => "the token has been revoked",
                TokenError::Unavailable => {
                    return End::close(
                        close::TRY_AGAIN_LATER,
                        "the token cannot be checked right now; try again later",
                    );
                }
            };
            // As over HTTP (401): the caller is not identified. 4401 is also what
            // graphql-ws clients treat as final, rather than retrying a bad token.
            End::close(close::UNAUTHORIZED, format!("Unauthorized: {why}"))
        })?;
        if let Some(upgraded) = &upgraded_as
            && upgraded.viewer.user_id != verified.viewer.user_id
        {
            return Err(End::close(
                close::UNAUTHORIZED,
                "Unauthorized: the upgrade and connection_init name different users",
            ));
        }
        Ok(verified)
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

    fn start(&mut self, id: String, payload: &Value) -> Result<(), End> {
        let (Some(data), Some(user)) = (self.data.clone(), self.user.clone()) else {
            return Err(End::close(close::UNAUTHORIZED, "Unauthorized"));
        };
        if self.operations.contains_key(&id) {
            return Err(End::close(
                close::DUPLICATE_ID,
                format!("Subscriber for {id} already exists"),
            ));
        }
        let mut request = operation(payload).map_err(|why| End::close(close::BAD_REQUEST, why))?;
        let max = self.app.ws.max_subscriptions;
        if self.operations.len() >= max {
            let message = format!("at most {max} operations may run at once on one connection");
            return self.refuse(&id, BAD_USER_INPUT, &message);
        }
        let kind = match document::prepare(&mut request, &self.app.limits.document) {
            Ok(measured) => measured.operation,
            Err(refused) => {
                let mut refused = Response::from_errors(vec![refused]);
                tag_request_errors(&mut refused);
                let error = frame("error", &id, Some(&refused.errors));
                return self.outbox.push(Message::Text(error.into()));
            }
        };
        // Counted across the user's connections, for as long as the operation runs.
        let Some(running) = self.app.ws_slots.operation_of(&user) else {
            let max = self.app.ws.max_subscriptions_per_user;
            let message = format!("at most {max} operations may run at once per user");
            return self.refuse(&id, RATE_LIMITED, &message);
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
            // The user's place is given back when the stream is dropped (ended, stopped,
            // or the connection closed).
            .map(move |item| {
                let _running = &running;
                item
            })
            .boxed();
        self.operations.insert(id, results);
        Ok(())
    }

    /// Refuses to start operation `id`: an `error` message, the connection stays open.
    fn refuse(&self, id: &str, code: &str, message: &str) -> Result<(), End> {
        let errors = json!([{ "message": message, "extensions": {"code": code} }]);
        self.outbox
            .answer(json!({"type": "error", "id": id, "payload": errors}))
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
