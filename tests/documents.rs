//! Hostile GraphQL documents against the real binary: values nested past what the
//! parser's stack survives, fragments that expand exponentially or in a cycle, huge nested
//! selections, deeply nested variables — over POST, GET and the websocket. Each is refused
//! with `BAD_USER_INPUT` (or by the transport's own size limit) within a second, the
//! process stays up, and deposits running meanwhile are not held up.

mod common;

use std::time::{Duration, Instant};

use common::TestDb;
use common::process::{ServerProcess, post};
use common::ws::{Event, WsClient};
use serde_json::{Value, json};
use wallet::auth::{Role, TokenKeys};

fn token(sub: &str, role: Role) -> String {
    TokenKeys::new(common::JWT_SECRET.as_bytes())
        .mint(sub, role, Duration::from_secs(3600))
        .unwrap()
}

/// `{__typename @include(if: [[[…]]])}`-like documents, `depth` deep, in each place a
/// value may stand.
fn nested_values(depth: usize) -> Vec<(&'static str, String)> {
    let list = format!("{}true{}", "[".repeat(depth), "]".repeat(depth));
    let object = format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth));
    vec![
        (
            "a list in a directive argument",
            format!("{{ __typename @include(if: {list}) }}"),
        ),
        (
            "an object in an argument",
            format!("{{ wallet(id: {object}) {{ id }} }}"),
        ),
        (
            "a list in an argument",
            format!("{{ wallet(id: {list}) {{ id }} }}"),
        ),
        (
            "a list as a variable's default",
            format!("query($v: Boolean = {list}) {{ __typename @include(if: $v) }}"),
        ),
        (
            "an object as a variable's default",
            format!("query($v: ID = {object}) {{ wallet(id: $v) {{ id }} }}"),
        ),
    ]
}

/// `fragment F0 { ...F1 ...F1 ...F1 }` … 30 deep: 1.4 KB that expands to 3³⁰ selections.
fn fragment_explosion() -> String {
    let mut doc = String::from("query { ...F0 }");
    for i in 0..29 {
        let next = i + 1;
        doc.push_str(&format!(
            " fragment F{i} on Query {{ ...F{next} ...F{next} ...F{next} }}"
        ));
    }
    doc.push_str(" fragment F29 on Query { __typename }");
    doc
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<none>")
}

async fn post_raw(http: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    let resp = http
        .post(format!("{base}/graphql"))
        .json(&body)
        .send()
        .await
        .expect("the server answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get_raw(http: &reqwest::Client, base: &str, query: &str) -> (u16, Value) {
    let resp = http
        .get(format!("{base}/graphql"))
        .query(&[("query", query)])
        .send()
        .await
        .expect("the server answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A GET too long for an HTTP client library's URI type, written on a raw socket: the
/// status the server answered, if it answered before closing.
async fn get_oversized(base: &str, query: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let target: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", query)
        .finish();
    let head = format!("GET /graphql?{target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    // The server may stop reading (and close) before the whole head is written.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = vec![0; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&answer[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

async fn alive(http: &reqwest::Client, base: &str) {
    let (status, body) = post_raw(http, base, json!({"query": "{ __typename }"})).await;
    assert_eq!(
        (status, &body["data"]["__typename"]),
        (200, &json!("Query"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn values_nested_past_the_parsers_stack_are_refused_on_every_transport() {
    let db = TestDb::new().await;
    let server = ServerProcess::start(&db.url).await;
    let http = reqwest::Client::new();
    let user = token("alice", Role::User);
    let mut ws = WsClient::authenticated(&server.websocket(), &user).await;
    for depth in [2_000, 100_000] {
        for (what, doc) in nested_values(depth) {
            let started = Instant::now();
            let (status, body) = post_raw(&http, &server.base, json!({"query": doc})).await;
            assert_eq!(
                code(&body),
                "BAD_USER_INPUT",
                "POST {what} {depth}: {status} {body}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "POST {what} {depth}"
            );

            // GET carries the document in the URL: a 100,000-deep one is over what the
            // server reads of a request head, refused there; the process stays up.
            if depth == 2_000 {
                let (status, body) = get_raw(&http, &server.base, &doc).await;
                assert_eq!(code(&body), "BAD_USER_INPUT", "GET {what}: {status} {body}");
            } else {
                let status = get_oversized(&server.base, &doc).await;
                assert!(
                    status.is_none_or(|s| s >= 400),
                    "GET {what} {depth}: {status:?}"
                );
            }

            if doc.len() < 60_000 {
                ws.subscribe("q", &doc, json!({})).await;
                match ws.next().await {
                    Event::Message(m) => {
                        assert_eq!(m["type"], "error", "ws {what}: {m}");
                        assert_eq!(
                            m["payload"][0]["extensions"]["code"], "BAD_USER_INPUT",
                            "ws {what}: {m}"
                        );
                    }
                    other => panic!("ws {what}: {other:?}"),
                }
            }
        }
        alive(&http, &server.base).await;
    }
    // A websocket message over the transport's size limit closes that socket (1009), and
    // only that socket.
    let (_, doc) = nested_values(100_000).remove(0);
    let mut big = WsClient::authenticated(&server.websocket(), &user).await;
    big.subscribe("q", &doc, json!({})).await;
    assert!(matches!(big.next().await, Event::Closed(_, _)));
    ws.subscribe("still", "{ __typename }", json!({})).await;
    assert_eq!(ws.data("still").await["__typename"], "Query");
    alive(&http, &server.base).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expensive_documents_are_refused_quickly_while_deposits_go_on() {
    let db = TestDb::new().await;
    let server = ServerProcess::start(&db.url).await;
    let http = reqwest::Client::new();
    let operator = token("back-office", Role::Operator);
    let user = token("alice", Role::User);
    let created = post(
        &http,
        &server.base,
        &user,
        "mutation { createWallet(input: {currency: \"USD\"}) { id } }",
        json!({}),
    )
    .await
    .unwrap();
    let wallet = created["data"]["createWallet"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Written by hand: serde_json would not build a value this deep.
    let deep_json = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let levels = 23_000; // 11 bytes a level: just under the 256 KiB body limit
    let nested_selection = format!("{}{}", "{ wallets ".repeat(levels), "}".repeat(levels));
    let attacks: Vec<(&str, String)> = vec![
        (
            "fragment explosion",
            json!({"query": fragment_explosion()}).to_string(),
        ),
        (
            "fragment cycle",
            json!({"query": "{ ...A } fragment A on Query { __typename ...B } \
                            fragment B on Query { ...A }"})
            .to_string(),
        ),
        (
            "256 KiB nested selection",
            json!({"query": nested_selection}).to_string(),
        ),
        (
            "10,000-deep JSON in variables",
            format!(
                r#"{{"query": "query($v: ID) {{ wallet(id: $v) {{ id }} }}", "variables": {{"v": {deep_json}}}}}"#
            ),
        ),
    ];

    // Deposits run throughout, one after another, each timed.
    let depositing = {
        let (http, base, wallet, operator) = (
            http.clone(),
            server.base.clone(),
            wallet.clone(),
            operator.clone(),
        );
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let until = Instant::now() + Duration::from_secs(6);
            let mut n = 0;
            while Instant::now() < until {
                let started = Instant::now();
                let body = post(
                    &http,
                    &base,
                    &operator,
                    common::DEPOSIT,
                    json!({"w": wallet, "a": "1.00", "k": format!("d-{n}")}),
                )
                .await
                .expect("the server answers deposits");
                assert!(body.get("errors").is_none(), "{body}");
                latencies.push(started.elapsed());
                n += 1;
            }
            latencies
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each attack from four clients at once (two would take both worker threads if they
    // pinned one each), over and over while the deposits go on.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for (what, body) in &attacks {
            let sends = (0..4).map(|_| {
                let http = http.clone();
                let base = server.base.clone();
                let body = body.clone();
                async move {
                    let started = Instant::now();
                    let resp = http
                        .post(format!("{base}/graphql"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .expect("the server answers");
                    let status = resp.status().as_u16();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    (started.elapsed(), status, body)
                }
            });
            for (took, status, body) in futures_util::future::join_all(sends).await {
                assert_eq!(code(&body), "BAD_USER_INPUT", "{what}: {status} {body}");
                assert!(took < Duration::from_secs(1), "{what} took {took:?}");
            }
        }
    }
    let mut latencies = depositing.await.unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        latencies.len() > 20,
        "only {} deposits in 6 s",
        latencies.len()
    );
    assert!(
        p99 < Duration::from_secs(1),
        "deposit p99 {p99:?} under attack"
    );
    alive(&http, &server.base).await;
}
