//! `wallet watch`: runs one GraphQL operation over the service's websocket
//! (`graphql-transport-ws`, as GraphiQL and the npm clients speak it) and prints each
//! result as one JSON line — the way to follow a subscription from a shell, without Node
//! or a websocket tool.
//!
//! Exit status: 0 when the server completes the operation (or the user presses Ctrl-C,
//! which stops the subscription first); 1 when the connection is refused or closed, or
//! the operation fails (its errors are printed to stderr).
//!
//! The token comes from `WALLET_TOKEN` or a file, never from the command line (which any
//! local user can read in `ps`). What the server sends is printed with control and
//! bidirectional-override characters escaped (`\u001b`): a payload or a close reason
//! cannot move the cursor, recolour or rewrite the terminal.

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The only operation id this client uses.
const ID: &str = "1";

/// What to watch and where.
pub struct Watch {
    /// `ws://host:port/graphql/ws`.
    pub url: String,
    /// A bearer token, with or without its `Bearer ` prefix.
    pub token: String,
    /// The GraphQL document (a subscription, or a query or mutation: one result).
    pub query: String,
    /// Its variables, a JSON object.
    pub variables: Option<Value>,
}

/// Runs `watch` until the server completes it, Ctrl-C, or a failure; each `next` payload
/// is written to `out` as one line of JSON.
pub async fn run(watch: Watch, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let mut request = watch
        .url
        .as_str()
        .into_client_request()
        .with_context(|| format!("{} is not a websocket URL", watch.url))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("connecting to {}", watch.url))?;

    let token = watch.token.trim();
    let bearer = if token.starts_with("Bearer ") {
        token.to_owned()
    } else {
        format!("Bearer {token}")
    };
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {"Authorization": bearer}}),
    )
    .await?;
    let mut subscribed = false;
    let mut payload = json!({ "query": watch.query });
    if let Some(variables) = watch.variables {
        payload["variables"] = variables;
    }

    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = &mut interrupted => {
                // Stop the subscription before leaving, so the server frees it at once.
                let _ = send(&mut socket, json!({"type": "complete", "id": ID})).await;
                let _ = socket.close(None).await;
                return Ok(());
            }
        };
        let text = match message {
            None => bail!("the server closed the connection"),
            Some(Err(e)) => return Err(e).context("reading from the websocket"),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(Some(frame)))) => bail!(
                "the server closed the connection: {} {}",
                u16::from(frame.code),
                printable(&frame.reason)
            ),
            Some(Ok(Message::Close(None))) => bail!("the server closed the connection"),
            Some(Ok(_)) => continue,
        };
        let message: ServerMessage = serde_json::from_str(&text).with_context(|| {
            format!(
                "the server sent a message that is not graphql-transport-ws: {}",
                printable(&text)
            )
        })?;
        let payload_text = printable(message.payload.as_ref().map_or("null", |p| p.get()));
        match message.kind.as_str() {
            "connection_ack" if !subscribed => {
                send(
                    &mut socket,
                    json!({"type": "subscribe", "id": ID, "payload": payload}),
                )
                .await?;
                subscribed = true;
            }
            "ping" => send(&mut socket, json!({"type": "pong"})).await?,
            "next" => {
                // As the server wrote it: its fields stay in the query's order.
                writeln!(out, "{payload_text}")?;
                out.flush()?;
            }
            "error" => bail!("the operation failed: {payload_text}"),
            "complete" => {
                let _ = socket.close(None).await;
                return Ok(());
            }
            _ => {}
        }
    }
}

/// `text` with every character that could drive a terminal escaped as JSON does it
/// (`\u001b`): control characters (C0, DEL, C1) and the bidirectional overrides and
/// isolates. JSON text stays valid JSON with the same meaning.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A message from the server; the payload is kept as the server's text.
#[derive(serde::Deserialize)]
struct ServerMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
}

async fn send<S>(socket: &mut S, message: Value) -> anyhow::Result<()>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    socket
        .send(Message::text(message.to_string()))
        .await
        .context("writing to the websocket")
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn terminal_controls_are_escaped_and_json_stays_json() {
        assert_eq!(printable("plain \"text\" é"), "plain \"text\" é");
        let hostile = "a\u{1b}[2Jb\u{9b}31mc\u{7f}d\u{202e}e\nf";
        let shown = printable(hostile);
        assert_eq!(shown, "a\\u001b[2Jb\\u009b31mc\\u007fd\\u202ee\\u000af");
        assert!(!shown.chars().any(|c| c.is_control()));
        let json = serde_json::json!({"description": hostile}).to_string();
        let back: serde_json::Value = serde_json::from_str(&printable(&json)).unwrap();
        assert_eq!(back["description"], hostile);
    }
}
