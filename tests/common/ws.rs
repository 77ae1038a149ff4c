//! A small websocket GraphQL client that drives the protocols message by message, so tests
//! see exactly what the server sends (acks, pings, close codes).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TRANSPORT_WS: &str = "graphql-transport-ws";
pub const LEGACY_WS: &str = "graphql-ws";

/// What the server did next.
#[derive(Debug)]
pub enum Event {
    Message(Value),
    Closed(u16, String),
}

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str, protocol: &str) -> WsClient {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket handshake");
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            protocol,
            "the server must accept the offered protocol"
        );
        WsClient { stream }
    }

    /// Connects with graphql-transport-ws and completes `connection_init` as `token`.
    pub async fn authenticated(url: &str, token: &str) -> WsClient {
        let mut client = WsClient::connect(url, TRANSPORT_WS).await;
        client.init(Some(token)).await;
        match client.next().await {
            Event::Message(m) if m["type"] == "connection_ack" => client,
            other => panic!("expected connection_ack, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: Value) {
        self.stream
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn init(&mut self, token: Option<&str>) {
        let payload = match token {
            Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
            None => json!({}),
        };
        self.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({ "id": id, "type": "subscribe",
                          "payload": { "query": query, "variables": variables } }))
            .await;
    }

    /// The next protocol message or the close, skipping keep-alives; fails after 5 s.
    pub async fn next(&mut self) -> Event {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("the server sent nothing within 5 s")
    }

    pub async fn next_within(&mut self, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    match value["type"].as_str() {
                        Some("ping") => self.send(json!({ "type": "pong" })).await,
                        Some("ka") => {}
                        _ => return Some(Event::Message(value)),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Some(Event::Closed(code, reason));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(Event::Closed(1006, String::new())),
            }
        }
    }

    /// The next `next` (or legacy `data`) payload for operation `id`; panics on anything
    /// else.
    pub async fn data(&mut self, id: &str) -> Value {
        match self.next().await {
            Event::Message(m) if (m["type"] == "next" || m["type"] == "data") && m["id"] == id => {
                assert!(m["payload"].get("errors").is_none(), "errors in {m}");
                m["payload"]["data"].clone()
            }
            other => panic!("expected data for {id}, got {other:?}"),
        }
    }

    /// The next message must be a close frame; returns its code.
    pub async fn closed(&mut self) -> (u16, String) {
        match self.next().await {
            Event::Closed(code, reason) => (code, reason),
            other => panic!("expected the server to close, got {other:?}"),
        }
    }
}
