//! Connections cannot hold the server's places without making progress, against the real
//! `wallet` binary: connections that never send a request (nothing at all, or only an
//! HTTP/2 preface), idle keep-alive connections over HTTP/1 and HTTP/2, the cap on
//! requests executing at once, websockets that do not authenticate or do not read, the
//! per-user cap on websocket operations; and `/readyz` and `/metrics` cost nothing an
//! anonymous caller can multiply.
//!
//! Attacking sockets bind other loopback addresses (all of 127/8 is loopback on Linux), so
//! that the per-address connection cap does not refuse them before what a test checks.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::ws::{Event, TRANSPORT_WS, WsClient};
use common::{JWT_SECRET, TestApp, TestDb, wait_until};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wallet::auth::{Role, TokenKeys};

/// The HTTP/2 client preface: the magic string, then an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn addr_of(server: &ServerProcess) -> SocketAddr {
    server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address")
}

/// The `n`th attacking address: 127.0.0.2, 127.0.0.3, …
fn attacker(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        0,
        2 + u8::try_from(n).expect("few attacking addresses"),
    )
}

async fn connect_from(source: Ipv4Addr, to: SocketAddr, receive_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// `count` connections spread over `addresses` source addresses, each sending `opening`
/// and then nothing.
async fn open_many(
    to: SocketAddr,
    count: usize,
    addresses: usize,
    opening: &[u8],
) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        let mut socket = connect_from(attacker(i % addresses), to, None).await;
        if !opening.is_empty() {
            socket.write_all(opening).await.unwrap();
        }
        sockets.push(socket);
    }
    sockets
}

/// Whether the server closes `socket` (end of stream or reset) within `limit`; whatever
/// it sends first (a 503, HTTP/2 settings) is read and ignored.
async fn closed_within(mut socket: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A client with no connection reuse: every request opens a connection of its own.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn tokens() -> TokenKeys {
    TokenKeys::new(JWT_SECRET.as_bytes())
}

fn user_token(sub: &str) -> String {
    tokens()
        .mint(sub, Role::User, Duration::from_secs(600))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_send_no_request_are_closed_and_others_are_served() {
    let db = TestDb::new().await;
    // Long enough that the attack is all open before its first sockets time out: opening
    // 1,100 sockets one after another took over 2 s on a busy 2-core machine.
    let first_request = Duration::from_secs(8);
    let server = ServerProcess::start_with(
        &db.url,
        &[
            ("WALLET_HTTP_FIRST_REQUEST_TIMEOUT_SECS", "8"),
            ("WALLET_HTTP_MAX_CONNECTIONS_PER_IP", "128"),
        ],
    )
    .await;
    let addr = addr_of(&server);
    let healthz = format!("{}/healthz", server.base);
    let http = fresh_client();
    for (what, opening) in [("silent", &b""[..]), ("HTTP/2 preface only", H2_PREFACE)] {
        // More than the 1,024 connections the server admits at once, from 11 addresses
        // (100 each, within the per-address cap).
        let attack = open_many(addr, 1100, 11, opening).await;
        let opened = Instant::now();
        // The cap is full: a client is refused for now…
        let refused = http.get(&healthz).send().await;
        assert!(
            refused.as_ref().map_or(true, |r| r.status() == 503),
            "{what}: expected a refusal while the attackers hold every place: {refused:?}"
        );
        // …and served as soon as the attackers' time to send a request is up.
        wait_until(
            &format!("a client is served despite {what} connections"),
            first_request + Duration::from_secs(1),
            || async {
                http.get(&healthz)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
        eprintln!("{what}: served {:?} after the attack", opened.elapsed());
        // The server closed every attacking connection.
        let closed = futures_util::future::join_all(
            attack
                .into_iter()
                .map(|socket| closed_within(socket, first_request + Duration::from_secs(3))),
        )
        .await;
        let still_open = closed.iter().filter(|c| !**c).count();
        assert_eq!(still_open, 0, "{what}: connections left open by the server");
    }
    assert!(
        server
            .metric("wallet_http_first_request_timeouts_total")
            .await
            >= 2048.0
    );
    assert!(server.metric("wallet_http_connections_refused_total").await >= 152.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_per_address_cap_are_refused() {
    let db = TestDb::new().await;
    let server = ServerProcess::start_with(
        &db.url,
        &[
            ("WALLET_HTTP_MAX_CONNECTIONS_PER_IP", "4"),
            ("WALLET_HTTP_FIRST_REQUEST_TIMEOUT_SECS", "30"),
            ("WALLET_HTTP_HEADER_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let addr = addr_of(&server);
    let held = open_many(addr, 4, 1, b"").await;
    // A fifth from the same address: 503, closed.
    let mut over = connect_from(attacker(0), addr, None).await;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_string(&mut answer))
        .await
        .expect("the refused connection is closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    // Another address is not affected.
    let mut other = connect_from(attacker(1), addr, None).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A place given back is free again.
    drop(held);
    wait_until(
        "the address's places are free",
        Duration::from_secs(5),
        || async {
            let mut again = connect_from(attacker(0), addr, None).await;
            let _ = again
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut answer = String::new();
            let _ = again.read_to_string(&mut answer).await;
            answer.starts_with("HTTP/1.1 200")
        },
    )
    .await;
    assert!(server.metric("wallet_http_connections_refused_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_over_http1_and_http2() {
    let db = TestDb::new().await;
    let server =
        ServerProcess::start_with(&db.url, &[("WALLET_HTTP_HEADER_TIMEOUT_SECS", "2")]).await;
    let addr = addr_of(&server);

    // HTTP/1.1: a keep-alive connection idle after its request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    assert!(closed_within(idle, Duration::from_secs(5)).await);
    let after = answered.elapsed();
    assert!(
        (Duration::from_millis(1500)..Duration::from_millis(3500)).contains(&after),
        "HTTP/1 idle connection closed after {after:?}"
    );

    // HTTP/2 (clear text, prior knowledge): at most 16 streams at once, and closed once no
    // stream has been open for the same time.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = axum::http::Request::get(format!("{}/healthz", server.base))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    assert_eq!(client.current_max_send_streams(), 16);
    let answered = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the idle HTTP/2 connection is closed");
    let after = answered.elapsed();
    assert!(
        ended.unwrap().is_ok(),
        "a graceful close (GOAWAY), not an error"
    );
    assert!(
        (Duration::from_millis(1500)..Duration::from_millis(3500)).contains(&after),
        "HTTP/2 idle connection closed after {after:?}"
    );
    // Every place is given back (the scrape's own connection is the one open).
    wait_until(
        "the connections are closed",
        Duration::from_secs(5),
        || async { server.metric("wallet_http_connections").await == 1.0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_the_in_flight_cap_are_refused_and_the_service_recovers() {
    let t = TestApp::new().await;
    let server = ServerProcess::start_with(
        &t.db.url,
        &[
            ("WALLET_HTTP_MAX_IN_FLIGHT", "2"),
            ("WALLET_REQUEST_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let operator = t.operator();
    let http = reqwest::Client::new();
    // Two slow requests: each waits on a table lock held here.
    let mut holder = t.db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE reconciliations IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let slow = "{ reconciliations(first: 1) { edges { node { id } } } }";
    let slow_requests: Vec<_> = (0..2)
        .map(|_| {
            let (http, base, operator) = (http.clone(), server.base.clone(), operator.clone());
            tokio::spawn(async move {
                common::process::post(&http, &base, &operator, slow, json!({})).await
            })
        })
        .collect();
    common::wait_for_lock_waiters(&t, 2).await;

    // A third: refused at once, nothing run.
    for accept in ["application/json", "application/graphql-response+json"] {
        let started = Instant::now();
        let refused = http
            .post(format!("{}/graphql", server.base))
            .bearer_auth(&operator)
            .header("accept", accept)
            .json(&json!({"query": "{ currencies { code } }"}))
            .send()
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert!(
            refused.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(accept)
        );
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
        assert_eq!(body["errors"][0]["extensions"]["retryAfter"], 1);
        assert!(body.get("data").is_none(), "{body}");
    }
    // Health checks are not counted.
    for path in ["/healthz", "/readyz"] {
        let status = http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path}");
    }

    // The slow ones go through once the lock is gone, and so does everything after.
    tx.rollback().await.unwrap();
    for request in slow_requests {
        let body = request.await.unwrap().unwrap();
        assert!(body["errors"].is_null(), "{body}");
    }
    let body = common::process::post(
        &http,
        &server.base,
        &operator,
        "{ currencies { code } }",
        json!({}),
    )
    .await
    .unwrap();
    assert!(body["data"]["currencies"].is_array(), "{body}");
    assert_eq!(server.metric("wallet_http_requests_shed_total").await, 2.0);
    assert_eq!(server.metric("wallet_http_requests_in_flight").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn invented_methods_and_paths_do_not_grow_the_metrics() {
    let db = TestDb::new().await;
    let server = ServerProcess::start(&db.url).await;
    let http = reqwest::Client::new();
    for i in 0..200 {
        let method = reqwest::Method::from_bytes(format!("AAAA{i}").as_bytes()).unwrap();
        let path = if i % 2 == 0 {
            "/healthz".to_owned()
        } else {
            format!("/nowhere-{i}")
        };
        let response = http
            .request(method, format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let text = server.metrics().await;
    assert!(!text.contains("AAAA"), "an invented method became a label");
    assert!(!text.contains("nowhere"), "an invented path became a label");
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wallet_http_requests_total{"))
        .collect();
    let label = |line: &str, name: &str| -> String {
        let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        line[start..][..line[start..].find('"').unwrap()].to_owned()
    };
    let methods: std::collections::BTreeSet<String> =
        series.iter().map(|l| label(l, "method")).collect();
    let routes: std::collections::BTreeSet<String> =
        series.iter().map(|l| label(l, "route")).collect();
    assert!(
        methods
            .iter()
            .all(|m| ["GET", "POST", "OTHER"].contains(&m.as_str())),
        "{methods:?}"
    );
    assert!(methods.contains("OTHER"), "{methods:?}");
    assert!(
        routes.contains("/healthz") && routes.contains("unmatched"),
        "{routes:?}"
    );
    assert!(series.len() <= 8, "{series:#?}");
    // 100 invented methods on /healthz, 100 on unmatched paths: two series.
    let count = |route: &str| -> f64 {
        series
            .iter()
            .filter(|l| label(l, "method") == "OTHER" && label(l, "route") == route)
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!((count("/healthz"), count("unmatched")), (100.0, 100.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_is_checked_at_most_once_a_second_through_the_money_pool() {
    let t = TestApp::new().await;
    let readyz = || async {
        let response = tower::ServiceExt::oneshot(
            t.router.clone(),
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    // What one check costs, in statements.
    tokio::time::sleep(wallet::readiness::FRESH_FOR).await;
    let before = t.app.state.queries.get();
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready\nbitcoin: ok (height"), "{body}");
    let per_check = t.app.state.queries.get() - before;
    assert!(per_check >= 1, "the check asks the database");

    // 600 hits, 200 at once, over about two seconds.
    let before = t.app.state.queries.get();
    let started = Instant::now();
    for _ in 0..3 {
        let answers = futures_util::future::join_all((0..200).map(|_| readyz())).await;
        assert!(answers.iter().all(|(status, _)| *status == 200));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let seconds = started.elapsed().as_secs_f64().ceil() as u64;
    let checks = (t.app.state.queries.get() - before) / per_check;
    eprintln!(
        "600 /readyz hits in {:?}: {checks} checks",
        started.elapsed()
    );
    assert!(checks <= seconds + 1, "{checks} checks in {seconds} s");

    // Every read connection taken: readiness does not need one (it checks what money
    // movements use).
    let mut held = Vec::new();
    for _ in 0..t.app.state.reads.status().max_size {
        held.push(t.app.state.reads.get().await.unwrap());
    }
    tokio::time::sleep(wallet::readiness::FRESH_FOR).await;
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    held.clear();
    // Every money-movement connection taken: no movement could commit, so not ready,
    // with nothing said but that.
    let mut held = Vec::new();
    for _ in 0..t.app.state.pool.status().max_size {
        held.push(t.app.state.pool.get().await.unwrap());
    }
    tokio::time::sleep(wallet::readiness::FRESH_FOR).await;
    let (status, body) = readyz().await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "database unavailable")
    );
    // Given back: ready again (the probe left waiting for a connection completes).
    held.clear();
    tokio::time::sleep(wallet::readiness::FRESH_FOR).await;
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
}

/// A websocket offering graphql-transport-ws over `stream`, optionally with a bearer
/// token on the upgrade request.
async fn websocket_over(
    stream: TcpStream,
    url: &str,
    token: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", TRANSPORT_WS.parse().unwrap());
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
}

async fn send_json(ws: &mut WebSocketStream<TcpStream>, message: Value) {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next text message, skipping the server's keep-alives.
async fn next_json(ws: &mut WebSocketStream<TcpStream>) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["type"] != "ping" {
                return value;
            }
        }
    }
}

/// A subscription whose every event is about 20 KB (one field under 450 aliases): 300
/// of them are more than the kernel buffers between the server and its peer can hold.
fn fat_subscription() -> String {
    let fields: Vec<String> = (0..450).map(|i| format!("a{i}: id")).collect();
    format!(
        "subscription {{ transactionUpdated {{ {} }} }}",
        fields.join(" ")
    )
}

/// Waits until the server has `count` live subscriptions (events committed from then on
/// reach them).
async fn subscriptions(server: &ServerProcess, count: usize) {
    wait_until(
        &format!("{count} subscriptions"),
        Duration::from_secs(5),
        || async { server.metric("wallet_subscriptions").await == count as f64 },
    )
    .await;
}

/// Deposits `count` movements to `wallet`, 20 at a time.
async fn deposits(t: &TestApp, wallet: &str, count: usize, prefix: &str) {
    for batch in 0..count.div_ceil(20) {
        let sends = (batch * 20..((batch + 1) * 20).min(count))
            .map(|i| async move { t.deposit(wallet, "1.00", &format!("{prefix}-{i}")).await });
        for body in futures_util::future::join_all(sends).await {
            assert!(body["errors"].is_null(), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_flooding_pings_before_connection_init_gets_nothing_and_is_closed() {
    let db = TestDb::new().await;
    let server = ServerProcess::start_with(&db.url, &[("WALLET_WS_INIT_TIMEOUT_SECS", "2")]).await;
    let addr = addr_of(&server);
    let url = server.websocket();
    let stream = connect_from(attacker(0), addr, Some(4096)).await;
    let mut ws = websocket_over(stream, &url, None).await.unwrap();
    let opened = Instant::now();
    assert_eq!(server.metric("wallet_websocket_unauthenticated").await, 1.0);
    // Pings as fast as they go, nothing read, for as long as the server takes them.
    let ping = Message::Text(json!({"type": "ping"}).to_string().into());
    let mut sent = 0usize;
    while opened.elapsed() < Duration::from_secs(6) {
        if ws.send(ping.clone()).await.is_err() {
            break;
        }
        sent += 1;
    }
    let flooded_for = opened.elapsed();
    eprintln!("{sent} pings sent in {flooded_for:?}");
    wait_until(
        "the websocket is closed",
        Duration::from_secs(2),
        || async { server.metric("wallet_websocket_connections").await == 0.0 },
    )
    .await;
    assert!(
        flooded_for < Duration::from_secs(4),
        "the server took pings for {flooded_for:?} (init timeout 2 s)"
    );
    assert_eq!(server.metric("wallet_websocket_unauthenticated").await, 0.0);
    // Not one pong: whatever arrived before the end is the close alone.
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        match frame {
            Message::Close(Some(close)) => assert_eq!(u16::from(close.code), 4408),
            Message::Close(None) => {}
            other => panic!("answered before connection_init: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_flooding_pings_without_reading_is_disconnected() {
    let db = TestDb::new().await;
    let server = ServerProcess::start_with(&db.url, &[("WALLET_WS_SEND_TIMEOUT_SECS", "2")]).await;
    let addr = addr_of(&server);
    let stream = connect_from(attacker(0), addr, Some(4096)).await;
    let mut ws = websocket_over(stream, &server.websocket(), None)
        .await
        .unwrap();
    send_json(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", user_token("alice"))}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    let started = Instant::now();
    let ping = Message::Text(json!({"type": "ping"}).to_string().into());
    while started.elapsed() < Duration::from_secs(15) {
        if ws.send(ping.clone()).await.is_err() {
            break;
        }
    }
    wait_until(
        "the websocket is closed",
        Duration::from_secs(3),
        || async { server.metric("wallet_websocket_connections").await == 0.0 },
    )
    .await;
    let after = started.elapsed();
    eprintln!("the pinging reader was disconnected after {after:?}");
    assert!(after < Duration::from_secs(8), "{after:?}");
    assert!(server.metric("wallet_websocket_dropped_total").await >= 1.0);
    // Alice may connect again at once.
    let _again = WsClient::authenticated(&server.websocket(), &user_token("alice")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_websockets_have_their_own_cap() {
    let db = TestDb::new().await;
    let server = ServerProcess::start_with(
        &db.url,
        &[
            ("WALLET_WS_MAX_UNAUTHENTICATED", "3"),
            ("WALLET_WS_INIT_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    let url = server.websocket();
    let addr = addr_of(&server);
    let mut waiting = Vec::new();
    for i in 0..3 {
        let stream = connect_from(attacker(i), addr, None).await;
        waiting.push(websocket_over(stream, &url, None).await.unwrap());
    }
    // A fourth that has yet to authenticate: 503 before the upgrade.
    let stream = connect_from(attacker(3), addr, None).await;
    match websocket_over(stream, &url, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503 before the upgrade, got {other:?}"),
    }
    // One authenticated on its upgrade is admitted, and serves.
    let stream = connect_from(attacker(3), addr, None).await;
    let mut alice = websocket_over(stream, &url, Some(&user_token("alice")))
        .await
        .unwrap();
    send_json(
        &mut alice,
        json!({"type": "connection_init", "payload": {}}),
    )
    .await;
    assert_eq!(next_json(&mut alice).await["type"], "connection_ack");
    send_json(
        &mut alice,
        json!({"id": "q", "type": "subscribe", "payload": {"query": "{ viewer { userId } }"}}),
    )
    .await;
    let answer = next_json(&mut alice).await;
    assert_eq!(
        answer["payload"]["data"]["viewer"]["userId"], "alice",
        "{answer}"
    );
    // A bad token on the upgrade: 401, not a socket.
    let stream = connect_from(attacker(3), addr, None).await;
    match websocket_over(stream, &url, Some("not-a-token")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // One of the waiting ones authenticates: its place among the unauthenticated is free.
    send_json(
        &mut waiting[0],
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {}", user_token("bob"))}}),
    )
    .await;
    assert_eq!(next_json(&mut waiting[0]).await["type"], "connection_ack");
    assert_eq!(server.metric("wallet_websocket_unauthenticated").await, 2.0);
    let _another = WsClient::authenticated(&url, &user_token("carol")).await;
    assert_eq!(server.metric("wallet_websocket_connections").await, 5.0);
    assert!(server.metric("wallet_websocket_refused_total").await >= 1.0);
}

/// A subscriber that completed the handshake and `connection_init`, subscribed to large
/// events, and reads nothing more; its receive buffer is small, so the server's writes
/// block soon.
async fn stuck_subscriber(server: &ServerProcess, token: &str) -> WebSocketStream<TcpStream> {
    let stream = connect_from(attacker(0), addr_of(server), Some(4096)).await;
    let mut ws = websocket_over(stream, &server.websocket(), None)
        .await
        .unwrap();
    send_json(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    send_json(
        &mut ws,
        json!({"id": "tx", "type": "subscribe", "payload": {"query": fat_subscription()}}),
    )
    .await;
    subscriptions(server, 1).await;
    ws
}

/// Reads what the server had sent before it closed: the `next` messages.
async fn delivered(mut ws: WebSocketStream<TcpStream>) -> usize {
    let mut count = 0;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Text(text) = frame
            && text.as_str().contains(r#""type":"next""#)
        {
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_stops_reading_is_disconnected_and_its_places_freed() {
    let t = TestApp::new().await;
    let server = ServerProcess::start_with(
        &t.db.url,
        &[
            ("WALLET_WS_SEND_TIMEOUT_SECS", "2"),
            ("WALLET_WS_MAX_PER_USER", "1"),
        ],
    )
    .await;
    let wallet = t.create_wallet("alice", "USD").await;
    let connections_before = server.metric("wallet_http_connections").await;
    let stuck = stuck_subscriber(&server, &user_token("alice")).await;
    assert_eq!(server.metric("wallet_websocket_connections").await, 1.0);
    // Alice's one connection is taken.
    let mut second = WsClient::connect(&server.websocket(), TRANSPORT_WS).await;
    second.init(Some(&user_token("alice"))).await;
    assert_eq!(second.closed().await.0, 1013);
    drop(second);

    let started = Instant::now();
    deposits(&t, &wallet, 300, "stuck").await;
    wait_until(
        "the subscriber that does not read is disconnected",
        Duration::from_secs(10),
        || async { server.metric("wallet_websocket_connections").await == 0.0 },
    )
    .await;
    eprintln!(
        "disconnected {:?} after the events began",
        started.elapsed()
    );
    assert!(
        server.metric("wallet_websocket_dropped_total").await >= 1.0,
        "dropped as a reader too slow"
    );
    // Its connection's place is given back too (the scrape's own is the one more).
    wait_until(
        "its connection is released",
        Duration::from_secs(5),
        || async { server.metric("wallet_http_connections").await <= connections_before },
    )
    .await;
    let received = delivered(stuck).await;
    assert!(
        received < 300,
        "all {received} events reached it: nothing blocked"
    );
    // Alice connects again, and gets her events.
    let mut again = WsClient::authenticated(&server.websocket(), &user_token("alice")).await;
    again
        .subscribe(
            "tx",
            "subscription { transactionUpdated { idempotencyKey } }",
            json!({}),
        )
        .await;
    subscriptions(&server, 1).await;
    t.deposit(&wallet, "1.00", "after").await;
    assert_eq!(
        again.data("tx").await["transactionUpdated"]["idempotencyKey"],
        "after"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_expiry_closes_a_subscriber_whose_sends_are_blocked() {
    let t = TestApp::new().await;
    // Writes could wait two minutes: only the token's expiry can end this session.
    let server =
        ServerProcess::start_with(&t.db.url, &[("WALLET_WS_SEND_TIMEOUT_SECS", "120")]).await;
    let wallet = t.create_wallet("alice", "USD").await;
    // Valid for about 8 s (3 s, plus the 5 s leeway).
    let exp = jsonwebtoken::get_current_timestamp() + 3;
    let token = common::raw_token(
        JWT_SECRET,
        json!({"sub": "alice", "role": "user", "exp": exp, "iat": exp - 60}),
    );
    let stuck = stuck_subscriber(&server, &token).await;
    deposits(&t, &wallet, 300, "expiring").await;
    let expires = exp + 5;
    assert!(
        jsonwebtoken::get_current_timestamp() < expires,
        "the events took too long to block the writer before the expiry"
    );
    wait_until(
        "the session ends at its token's expiry",
        Duration::from_secs(expires - jsonwebtoken::get_current_timestamp() + 3),
        || async { server.metric("wallet_websocket_connections").await == 0.0 },
    )
    .await;
    let late = jsonwebtoken::get_current_timestamp().saturating_sub(expires);
    assert!(late <= 2, "closed {late} s after the expiry");
    assert_eq!(
        server.metric("wallet_websocket_dropped_total").await,
        0.0,
        "ended by the expiry, not as a slow reader"
    );
    let received = delivered(stuck).await;
    assert!(
        received < 300,
        "all {received} events reached it: its sends were not blocked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_are_capped_per_user_across_connections() {
    let t = TestApp::new().await;
    let server = ServerProcess::start_with(
        &t.db.url,
        &[
            ("WALLET_WS_MAX_SUBSCRIPTIONS", "2"),
            ("WALLET_WS_MAX_SUBSCRIPTIONS_PER_USER", "3"),
        ],
    )
    .await;
    let url = server.websocket();
    let wallet = t.create_wallet("alice", "USD").await;
    let sub = "subscription { transactionUpdated { idempotencyKey } }";
    let mut first = WsClient::authenticated(&url, &user_token("alice")).await;
    let mut second = WsClient::authenticated(&url, &user_token("alice")).await;
    first.subscribe("a", sub, json!({})).await;
    first.subscribe("b", sub, json!({})).await;
    subscriptions(&server, 2).await;
    second.subscribe("c", sub, json!({})).await;
    subscriptions(&server, 3).await;
    // The fourth of alice's: refused, on whichever connection.
    second.subscribe("d", sub, json!({})).await;
    match second.next().await {
        Event::Message(m) if m["type"] == "error" && m["id"] == "d" => {
            assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{m}");
        }
        other => panic!("expected an error for d, got {other:?}"),
    }
    // Bob is not affected.
    let mut bob = WsClient::authenticated(&url, &user_token("bob")).await;
    bob.subscribe("x", sub, json!({})).await;
    // Every running one delivers.
    subscriptions(&server, 4).await;
    t.deposit(&wallet, "1.00", "capped-1").await;
    let mut got = std::collections::BTreeMap::new();
    for on_first in [true, true, false] {
        let client = if on_first { &mut first } else { &mut second };
        match client.next().await {
            Event::Message(m) if m["type"] == "next" => {
                let hash = m["payload"]["data"]["transactionUpdated"]["idempotencyKey"].clone();
                got.insert(m["id"].as_str().unwrap().to_owned(), hash);
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        [("a", "capped-1"), ("b", "capped-1"), ("c", "capped-1")]
            .map(|(id, hash)| (id.to_owned(), json!(hash)))
            .into()
    );
    // One stopped: alice may start another.
    first.send(json!({"id": "a", "type": "complete"})).await;
    subscriptions(&server, 3).await;
    second.subscribe("d", sub, json!({})).await;
    subscriptions(&server, 4).await;
    t.deposit(&wallet, "1.00", "capped-2").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        match second.next().await {
            Event::Message(m) if m["type"] == "next" => {
                assert_eq!(
                    m["payload"]["data"]["transactionUpdated"]["idempotencyKey"],
                    "capped-2"
                );
                ids.push(m["id"].as_str().unwrap().to_owned());
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
    ids.sort();
    assert_eq!(ids, ["c", "d"]);
    // A connection closed gives its operations back.
    drop(first);
    subscriptions(&server, 3).await;
    let mut third = WsClient::authenticated(&url, &user_token("alice")).await;
    third.subscribe("e", sub, json!({})).await;
    assert!(
        third
            .next_within(Duration::from_millis(500))
            .await
            .is_none(),
        "not refused"
    );
}
