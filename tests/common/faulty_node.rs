//! A JSON-RPC proxy in front of a real node that fails chosen methods on demand: how a
//! test injects a node error into one kind of call of a pass, every other call answered
//! by the node itself. A failed call gets a JSON-RPC error (the node answered, wrongly),
//! not a broken connection, so the service keeps the node in use and the next call goes
//! through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// Failing methods, each with the first parameters its calls still get answered for.
type Failing = Arc<Mutex<BTreeMap<String, Vec<Value>>>>;

#[derive(Clone)]
struct Proxy {
    target: String,
    failing: Failing,
    http: reqwest::Client,
}

pub struct FaultyNode {
    pub url: String,
    failing: Failing,
    server: tokio::task::JoinHandle<()>,
}

impl FaultyNode {
    /// A proxy to the node at `target` (`http://…`), failing nothing yet.
    pub async fn start(target: &str) -> FaultyNode {
        let failing = Failing::default();
        let proxy = Proxy {
            target: target.to_owned(),
            failing: failing.clone(),
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new()
            .route("/", axum::routing::post(forward))
            .with_state(proxy);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultyNode {
            url,
            failing,
            server,
        }
    }

    /// Calls of `method` fail from now on.
    pub fn fail(&self, method: &str) {
        self.fail_except(method, &[]);
    }

    /// Calls of `method` fail from now on, except those whose first parameter is one of
    /// `answered`.
    pub fn fail_except(&self, method: &str, answered: &[Value]) {
        self.failing
            .lock()
            .unwrap()
            .insert(method.to_owned(), answered.to_vec());
    }

    /// Every call goes through again.
    pub fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }
}

impl Drop for FaultyNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(State(proxy): State<Proxy>, body: Bytes) -> impl IntoResponse {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fails = |call: &Value| {
        let failing = proxy.failing.lock().unwrap();
        call["method"]
            .as_str()
            .and_then(|m| failing.get(m))
            .is_some_and(|answered| !answered.contains(&call["params"][0]))
    };
    let injected = |call: &Value| {
        json!({"jsonrpc": "2.0", "id": call["id"].clone(),
               "error": {"code": -32000, "message": "injected fault"}})
    };
    let answer = match &request {
        Value::Array(calls) if calls.iter().any(fails) => {
            Some(Value::Array(calls.iter().map(injected).collect()))
        }
        call @ Value::Object(_) if fails(call) => Some(injected(call)),
        _ => None,
    };
    let text = match answer {
        Some(answer) => answer.to_string(),
        None => match proxy
            .http
            .post(&proxy.target)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => json!({"jsonrpc": "2.0", "id": request["id"].clone(),
                             "error": {"code": -32000, "message": e.to_string()}})
            .to_string(),
        },
    };
    ([(CONTENT_TYPE, "application/json")], text)
}
