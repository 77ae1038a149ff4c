//! Abuse limits: operation shape, the connection budget of one request, slow and idle
//! clients, connection and websocket caps, mutation rates, simulator access, key scope.
//! Each limit answers clearly, changes nothing, and leaves everyone else's requests alone.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::ws::{Event, TRANSPORT_WS, WsClient};
use common::{Options, TestApp, error_code, send_to, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wallet::graphql::Limits;
use wallet::limits::{HttpLimits, RateLimits, WsLimits};

#[tokio::test(flavor = "multi_thread")]
async fn users_cannot_run_the_simulator() {
    let t = TestApp::new().await;
    let (_, address) = t.funded_btc("alice", "0.10000000").await;
    let pg = t.db.client().await;
    let transfers = async || -> i64 {
        pg.query_one("SELECT count(*) FROM sim_transfers", &[])
            .await
            .unwrap()
            .get(0)
    };
    let height = async || -> i64 {
        pg.query_one(
            "SELECT height FROM sim_chains WHERE network = 'bitcoin'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    let (before, at) = (transfers().await, height().await);
    let alice = t.user("alice");
    let body = t
        .gql(
            Some(&alice),
            common::INCOMING,
            json!({"n": "bitcoin", "to": address, "a": "5"}),
        )
        .await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");
    let body = t
        .gql(Some(&alice), common::MINE, json!({"n": "bitcoin", "c": 6}))
        .await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");
    assert_eq!((transfers().await, height().await), (before, at));
}

#[tokio::test(flavor = "multi_thread")]
async fn crypto_without_a_chain_backend_is_not_offered() {
    let t = TestApp::with(Options {
        simulated_chain: false,
        ..Options::default()
    })
    .await;
    let body = t
        .gql(
            Some(&t.user("alice")),
            common::CREATE_CRYPTO,
            json!({"c": "BTC"}),
        )
        .await;
    assert_eq!(error_code(&body), "CURRENCY_NOT_SUPPORTED", "{body}");
    let currencies = t
        .ok(
            &t.user("alice"),
            "{ currencies { code enabled } }",
            json!({}),
        )
        .await["currencies"]
        .clone();
    let enabled = |code: &str| {
        currencies
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["code"] == code)
            .map(|c| c["enabled"].clone())
    };
    assert_eq!(enabled("BTC"), Some(json!(false)));
    assert_eq!(enabled("ETH"), Some(json!(false)));
    assert_eq!(enabled("USD"), Some(json!(true)));
    // Fiat is untouched.
    let usd = t.create_wallet("alice", "USD").await;
    t.deposit(&usd, "1.00", "fiat-1").await;
    assert_eq!(t.balance(&usd).await, "1.00");
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_are_scoped_to_the_wallet() {
    let t = TestApp::new().await;
    let alice = t.create_wallet("alice", "USD").await;
    let bob = t.create_wallet("bob", "USD").await;
    let key = "BANK-REF-2026-0001";
    let bobs = t.deposit(&bob, "25.00", key).await["data"]["deposit"].clone();
    assert_eq!(bobs["balanceAfter"], "25.00");

    // Alice, with an empty wallet, learns nothing of bob's key.
    let body = t.withdraw(&t.user("alice"), &alice, "1.00", key).await;
    assert_eq!(error_code(&body), "INSUFFICIENT_FUNDS", "{body}");
    // Nor does a key alice used first block the back office's deposit to her.
    let alices = t.deposit(&alice, "5.00", key).await["data"]["deposit"].clone();
    assert_ne!(alices["id"], bobs["id"]);
    assert_eq!(alices["balanceAfter"], "5.00");

    // Within a wallet the rules are as before: the same request is a replay, another is a
    // conflict; and each wallet's key names its own movement.
    let again = t.deposit(&alice, "5.00", key).await["data"]["deposit"].clone();
    assert_eq!(again, alices);
    let body = t.deposit(&alice, "6.00", key).await;
    assert_eq!(error_code(&body), "IDEMPOTENCY_CONFLICT", "{body}");
    let body = t.withdraw(&t.user("alice"), &alice, "1.00", key).await;
    assert_eq!(error_code(&body), "IDEMPOTENCY_CONFLICT", "{body}");
    for (wallet, expected) in [(&alice, &alices), (&bob, &bobs)] {
        let found = t
            .ok(
                &t.operator(),
                common::BY_KEY,
                json!({"w": wallet, "k": key}),
            )
            .await;
        assert_eq!(found["transactionByKey"]["id"], expected["id"]);
    }

    // Races: one key sent at once to eight wallets makes eight movements; sent eight times
    // at once to one wallet, one.
    let mut wallets = Vec::new();
    for i in 0..8 {
        wallets.push(t.create_wallet(&format!("racer{i}"), "USD").await);
    }
    let across = futures_util::future::join_all(
        wallets
            .iter()
            .map(|w| async { t.deposit(w, "1.00", "RACE").await }),
    )
    .await;
    let ids: std::collections::HashSet<Value> = across
        .iter()
        .map(|b| b["data"]["deposit"]["id"].clone())
        .collect();
    assert_eq!(ids.len(), 8, "{across:?}");
    let within = futures_util::future::join_all(
        (0..8).map(|_| async { t.deposit(&wallets[0], "1.00", "RACE-2").await }),
    )
    .await;
    let ids: std::collections::HashSet<Value> = within
        .iter()
        .map(|b| b["data"]["deposit"]["id"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "{within:?}");
    assert_eq!(t.balance(&wallets[0]).await, "2.00");
    for w in wallets.iter().chain([&alice, &bob]) {
        t.assert_chain(w).await;
    }
}

fn aliases(n: usize, field: &str) -> String {
    let fields: Vec<String> = (0..n).map(|i| format!("a{i}: {field}")).collect();
    format!("{{ {} }}", fields.join(" "))
}

#[tokio::test(flavor = "multi_thread")]
async fn operation_shape_is_limited() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let op = t.operator();
    let node = format!("node(id: \"{w}\") {{ id }}");

    // 100 aliased lookups: refused before any runs.
    let before = t.app.state.queries.get();
    let body = t.gql(Some(&op), &aliases(100, &node), json!({})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("root fields")
    );
    // 2,500 of them are more text than a document may have.
    let body = t.gql(Some(&op), &aliases(2500, &node), json!({})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("bytes")
    );
    assert_eq!(t.app.state.queries.get(), before, "nothing ran");
    // At the limit: served.
    let body = t.ok(&op, &aliases(20, &node), json!({})).await;
    assert_eq!(body["a19"]["id"], w.as_str());

    // Too many fields in all, within the root limit.
    let wide = format!("{{ wallet(id: \"{w}\") {{ {} }} }}", "id ".repeat(600));
    let body = t.gql(Some(&op), &wide, json!({})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("fields")
    );
    // The same through a fragment spread: counted where it is spread.
    let spread = format!(
        "{{ {} }} fragment F on Query {{ wallet(id: \"{w}\") {{ {} }} }}",
        "...F ".repeat(10),
        "id ".repeat(60)
    );
    let body = t.gql(Some(&op), &spread, json!({})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");

    // Directives on one field.
    let directives = format!(
        "{{ wallet(id: \"{w}\") {{ id {} }} }}",
        "@include(if: true) ".repeat(5)
    );
    let body = t.gql(Some(&op), &directives, json!({})).await;
    assert!(body["errors"].is_array(), "{body}");
    assert!(body["data"].is_null(), "{body}");
}

/// One request holds at most its budget of connections whatever its shape; queries use
/// their own pool, so even floods of them never delay a deposit.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_queries_stays_within_its_connection_budget() {
    let t = TestApp::with(Options {
        limits: Limits {
            request_connections: 2,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let w = t.create_wallet("alice", "USD").await;
    t.ok(
        &t.operator(),
        "mutation($w: ID!) { reconcileWallet(input: {walletId: $w, startTime: \"2000-01-01T00:00:00Z\", endTime: \"2100-01-01T00:00:00Z\", externalBalance: \"0.00\"}) { id } }",
        json!({"w": w}),
    )
    .await;
    // Every resolver of the flood blocks on a table lock held here, so each one holding a
    // connection shows as a lock waiter.
    let mut holder = t.db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE reconciliations IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let flood = aliases(20, "reconciliations(first: 1) { edges { node { id } } }");
    let floods: Vec<_> = (0..3)
        .map(|_| {
            let (router, op, flood) = (t.router.clone(), t.operator(), flood.clone());
            tokio::spawn(async move { common::gql_to(&router, Some(&op), &flood, json!({})).await })
        })
        .collect();
    // Three requests of twenty root fields: two connections each, not sixty.
    common::wait_for_lock_waiters(&t, 6).await;

    // Meanwhile deposits go on at their usual pace.
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let body = t.deposit(&w, "1.00", &format!("during-flood-{i}")).await;
        assert!(body["errors"].is_null(), "{body}");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest deposit {slowest:?}"
    );
    let pg = t.db.client().await;
    assert_eq!(common::lock_waiters(&pg, &t.db.name).await, 6);

    tx.rollback().await.unwrap();
    for flood in floods {
        let body = flood.await.unwrap();
        assert!(body["errors"].is_null(), "{body}");
        assert_eq!(body["data"]["a19"]["edges"].as_array().unwrap().len(), 1);
    }
    assert_eq!(t.balance(&w).await, "20.00");
}

/// `settles` and `settlements` are batched: the statements of a page do not grow with it.
#[tokio::test(flavor = "multi_thread")]
async fn settlements_of_a_page_are_batched() {
    let t = TestApp::new().await;
    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        t.funded_btc(user, "0.10000000").await;
    }
    let query = "query($n: Int!) { transactions(first: $n) {
        edges { node { id isHold settles { id } settlements { id amount } } } } }";
    let mut costs = Vec::new();
    for n in [2, 12] {
        let before = t.app.state.queries.get();
        let data = t.ok(&t.operator(), query, json!({"n": n})).await;
        costs.push(t.app.state.queries.get() - before);
        let edges = data["transactions"]["edges"].as_array().unwrap().clone();
        assert_eq!(edges.len(), n);
        for e in &edges {
            let node = &e["node"];
            if node["isHold"] == true {
                assert_eq!(node["settlements"].as_array().unwrap().len(), 1, "{node}");
            } else {
                assert!(node["settles"]["id"].is_string(), "{node}");
            }
        }
    }
    // The page, the holds, the settlements: each with the pool's connection check.
    assert!(costs.iter().all(|&c| c <= 6), "statements: {costs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_are_cut_off() {
    let t = TestApp::new().await;
    let addr = common::serve_with(
        t.router.clone(),
        HttpLimits {
            header_timeout: Duration::from_secs(1),
            max_connections: 64,
            ..HttpLimits::default()
        },
    )
    .await;

    // Slow-loris: one header byte every 300 ms never completes a request.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut closed_after = None;
    for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .cycle()
        .take(40)
    {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow.write_all(&[*byte]).await.is_err() || closed(&mut slow).await {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the trickling connection was never closed");
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");

    // An idle keep-alive connection is closed after the same time.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the idle connection was never closed");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Whether the peer has closed the connection (without waiting for it to).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        // A response (408/400) before the close also ends the request.
        Ok(Ok(_)) => true,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_refused() {
    let t = TestApp::new().await;
    let addr = common::serve_with(
        t.router.clone(),
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 3,
            ..HttpLimits::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(c); // kept alive
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    let mut answer = String::new();
    over.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    // A held connection still works; one closed frees its place.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = held[0].read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(held.pop());
    let base = format!("http://{addr}");
    wait_until("a place frees up", Duration::from_secs(5), || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_are_capped_in_total_and_per_user() {
    let t = TestApp::with(Options {
        ws: WsLimits {
            max_connections: 2,
            max_per_user: 1,
            ..WsLimits::default()
        },
        ..Options::default()
    })
    .await;
    let url = t.serve().await;
    let alice = WsClient::authenticated(&url, &t.user("alice")).await;
    // Alice's second connection: refused at connection_init, try again later.
    let mut second = WsClient::connect(&url, TRANSPORT_WS).await;
    second.init(Some(&t.user("alice"))).await;
    let (code, reason) = second.closed().await;
    assert_eq!(code, 1013, "{reason}");
    // Its place in the total is given back when its session ends.
    wait_until(
        "the refused connection is released",
        Duration::from_secs(5),
        || async { t.app.ws_slots.open_count(&t.app.ws) == 1 },
    )
    .await;
    let _bob = WsClient::authenticated(&url, &t.user("bob")).await;
    // Two open: a third is refused before the upgrade.
    let refused = reqwest::Client::new()
        .get(url.replace("ws://", "http://"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", TRANSPORT_WS)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    // Alice leaves: she may connect again.
    drop(alice);
    wait_until(
        "alice's connection is released",
        Duration::from_secs(5),
        || async { t.app.ws_slots.open_count(&t.app.ws) == 1 },
    )
    .await;
    let _again = WsClient::authenticated(&url, &t.user("alice")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_that_stops_answering_pings_is_closed() {
    let t = TestApp::with(Options {
        ws: WsLimits {
            pong_timeout: Duration::from_secs(2),
            ..WsLimits::default()
        },
        ..Options::default()
    })
    .await;
    let url = t.serve().await;
    let mut answering = WsClient::authenticated(&url, &t.user("bob")).await;
    let mut silent = WsClient::authenticated(&url, &t.user("alice")).await;
    // Bob reads (and so answers pings) for 6 s; alice reads nothing meanwhile.
    assert!(
        answering
            .next_within(Duration::from_secs(6))
            .await
            .is_none()
    );
    match silent.next_within(Duration::from_secs(2)).await {
        Some(Event::Closed(code, _)) => assert!(code == 1001 || code == 1006, "{code}"),
        other => panic!("expected the silent connection closed, got {other:?}"),
    }
    assert_eq!(t.app.ws_slots.open_count(&t.app.ws), 1);
}

/// A query sent over a websocket runs under the request timeout, like one over HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn queries_over_a_websocket_time_out() {
    let t = TestApp::with(Options {
        request_timeout: Duration::from_secs(1),
        pool_size: 1,
        ..Options::default()
    })
    .await;
    let url = t.serve().await;
    let mut ws = WsClient::authenticated(&url, &t.user("alice")).await;
    // The read pool's only connection is taken: the query waits for it.
    let held = t.app.state.reads.get().await.unwrap();
    let started = Instant::now();
    ws.subscribe(
        "q",
        "{ viewer { wallets(first: 1) { edges { node { id } } } } }",
        json!({}),
    )
    .await;
    match ws.next().await {
        Event::Message(m) if m["type"] == "error" || m["type"] == "next" => {
            let errors = if m["type"] == "error" {
                m["payload"].clone()
            } else {
                m["payload"]["errors"].clone()
            };
            assert_eq!(errors[0]["extensions"]["code"], "UNAVAILABLE", "{m}");
        }
        other => panic!("expected a timeout error, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    drop(held);
    // The connection is still usable.
    ws.subscribe("q2", "{ currencies { code } }", json!({}))
        .await;
    assert!(ws.data("q2").await["currencies"].is_array());
}

#[tokio::test(flavor = "multi_thread")]
async fn mutations_are_rate_limited_per_user() {
    let t = TestApp::with(Options {
        rates: RateLimits {
            user_per_sec: 1,
            user_burst: 3,
            operator_per_sec: 0,
            ..RateLimits::default()
        },
        ..Options::default()
    })
    .await;
    let bob = t.create_wallet("bob", "USD").await;
    let started = Instant::now();
    let alice = t.create_wallet("alice", "USD").await;
    for i in 0..3 {
        t.deposit(&alice, "10.00", &format!("fund-{i}")).await;
    }
    let token = t.user("alice");
    // Creating the wallet took one of alice's three; eight withdrawals at once.
    let sends = (0..8).map(|i| {
        let body = json!({
            "query": common::WITHDRAW,
            "variables": {"w": alice, "a": "1.00", "k": format!("w-{i}")},
        });
        let request = Request::post("/graphql")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        let router = t.router.clone();
        async move { (i, send_to(&router, request).await) }
    });
    let answers = futures_util::future::join_all(sends).await;
    // One more every second since the start, on top of the burst.
    let allowed = 2 + started.elapsed().as_secs() as usize + 1;
    let mut passed = 0;
    let mut retry = 0;
    for (i, (status, headers, body)) in &answers {
        if *status == StatusCode::OK {
            assert!(body["errors"].is_null(), "{body}");
            passed += 1;
            continue;
        }
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(error_code(body), "RATE_LIMITED");
        retry = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        // Nothing was done.
        let found = t
            .ok(
                &t.operator(),
                common::BY_KEY,
                json!({"w": alice, "k": format!("w-{i}")}),
            )
            .await;
        assert!(found["transactionByKey"].is_null());
    }
    assert!(
        (2..=allowed).contains(&passed),
        "{passed} passed, {allowed} allowed"
    );
    assert!(passed < 8, "some were limited");
    assert_eq!(
        t.balance(&alice)
            .await
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        rust_decimal::Decimal::from(30 - passed as i64)
    );
    // Others are not slowed: bob, and the back office (no limit in this test).
    let body = t.withdraw(&t.user("bob"), &bob, "1.00", "b-1").await;
    assert_eq!(error_code(&body), "INSUFFICIENT_FUNDS");
    for i in 0..20 {
        t.deposit(&bob, "1.00", &format!("b-fund-{i}")).await;
    }
    assert_eq!(t.balance(&bob).await, "20.00");
    // Queries are not counted.
    for _ in 0..10 {
        t.ok(&token, "{ viewer { userId } }", json!({})).await;
    }
    // After the wait, alice may go on.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let body = t.withdraw(&token, &alice, "1.00", "w-later").await;
    assert!(body["errors"].is_null(), "{body}");
}

/// Reads spend their cost (complexity) from a budget per caller: a user who pages hard
/// is told to wait, others are not, and the budget refills.
#[tokio::test(flavor = "multi_thread")]
async fn the_cost_of_queries_is_budgeted_per_user() {
    let t = TestApp::with(Options {
        rates: RateLimits {
            user_per_sec: 0,
            user_query_cost_per_sec: 500,
            user_query_cost_burst: 5_000,
            ..RateLimits::default()
        },
        ..Options::default()
    })
    .await;
    t.create_wallet("alice", "USD").await;
    t.create_wallet("bob", "USD").await;
    let alice = t.user("alice");
    // A page of 100 wallets with a few fields costs hundreds; the burst is 5,000.
    let costly = "{ wallets(first: 100) { edges { node { id balance availableBalance \
                  currency userId createdAt } } } }";
    let query = |token: &str| {
        Request::post("/graphql")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(json!({ "query": costly }).to_string()))
            .unwrap()
    };
    let mut served = 0;
    let retry = loop {
        let (status, headers, body) = send_to(&t.router, query(&alice)).await;
        if status == StatusCode::OK {
            assert!(body["errors"].is_null(), "{body}");
            served += 1;
            assert!(served < 100, "never limited");
            continue;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(error_code(&body), "RATE_LIMITED");
        assert!(body["data"].is_null(), "nothing ran: {body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=10).contains(&retry), "{retry}");
        break retry;
    };
    assert!(served >= 2, "the burst serves several pages ({served})");
    // Bob's budget is his own.
    let (status, _, body) = send_to(&t.router, query(&t.user("bob"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The budget refills.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, body) = send_to(&t.router, query(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn graphiql_introspection_and_metrics_can_be_closed() {
    let t = TestApp::with(Options {
        graphiql: false,
        metrics: wallet::app::MetricsAccess::Token(
            "metrics-token-of-at-least-16".to_owned().into(),
        ),
        ..Options::default()
    })
    .await;
    let get = |path: &str, token: Option<&str>| {
        let mut req = Request::get(path);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(Body::empty()).unwrap()
    };
    for closed in ["/", "/assets/graphiql-4.1.2/graphiql.min.js"] {
        let (status, _, _) = send_to(&t.router, get(closed, None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{closed}");
    }
    // Introspection answers nothing.
    let body = t
        .ok(
            &t.user("alice"),
            "{ __schema { types { name } } __type(name: \"Wallet\") { name } }",
            json!({}),
        )
        .await;
    assert!(
        body["__schema"].is_null() && body["__type"].is_null(),
        "{body}"
    );
    let (status, _, _) = send_to(&t.router, get("/metrics", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send_to(
        &t.router,
        get("/metrics", Some("wrong-token-of-some-length")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send_to(
        &t.router,
        get("/metrics", Some("metrics-token-of-at-least-16")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
