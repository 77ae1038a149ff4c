//! Live subscriptions over a real websocket: the outbox → NOTIFY → listener → bus path,
//! several server instances on one database, listener reconnection, and access control.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::ws::{Event, LEGACY_WS, TRANSPORT_WS, WsClient};
use common::{TestApp, error_code, serve, wait_until};
use futures_util::StreamExt;
use serde_json::{Value, json};
use wallet::app::{App, AppState};
use wallet::auth::{Role, Viewer};
use wallet::events::listener::ListenerState;
use wallet::events::{EventBus, Notice, Payload};
use wallet::ledger::Scope;

const TX_SUB: &str = "subscription($w: ID) { transactionUpdated(walletId: $w) {
  id type amount balanceBefore balanceAfter status idempotencyKey wallet { id balance } } }";
const WALLET_SUB: &str =
    "subscription($w: ID!) { walletUpdated(walletId: $w) { id balance availableBalance } }";
const REC_SUB: &str = "subscription($w: ID) { reconciliationCompleted(walletId: $w) {
  status systemBalance externalBalance difference wallet { id } } }";

/// Waits until `app` has at least `n` live subscriptions: from then on, events reach them.
async fn subscribed(app: &App, n: usize) {
    wait_until(
        "the subscriptions start",
        Duration::from_secs(10),
        || async { app.state.events.subscriber_count() >= n },
    )
    .await;
}

/// The next `n` data messages, grouped by operation id.
async fn collect(client: &mut WsClient, n: usize) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for _ in 0..n {
        match client.next().await {
            Event::Message(m) if m["type"] == "next" => out
                .entry(m["id"].as_str().unwrap().to_owned())
                .or_default()
                .push(m["payload"]["data"].clone()),
            other => panic!("expected data, got {other:?}"),
        }
    }
    out
}

/// A new wallet of `owner`, with its owner subscribed to its transactions ("tx") and its
/// balances ("w").
async fn watch_new_wallet(t: &TestApp, owner: &str) -> (String, WsClient) {
    let url = t.serve().await;
    let wallet = t.create_wallet(owner, "USD").await;
    let mut ws = WsClient::authenticated(&url, &t.user(owner)).await;
    ws.subscribe("tx", TX_SUB, json!({ "w": wallet })).await;
    ws.subscribe("w", WALLET_SUB, json!({ "w": wallet })).await;
    subscribed(&t.app, 2).await;
    (wallet, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposit_and_withdraw_push_transaction_and_wallet_events() {
    let t = TestApp::new().await;
    let (wallet, mut ws) = watch_new_wallet(&t, "alice").await;
    let alice = t.user("alice");

    t.deposit(&wallet, "100.00", "dep-1").await;
    let got = collect(&mut ws, 2).await;
    let tx = &got["tx"][0]["transactionUpdated"];
    assert_eq!(tx["type"], "DEPOSIT");
    assert_eq!(tx["amount"], "100.00");
    assert_eq!(tx["balanceBefore"], "0.00");
    assert_eq!(tx["balanceAfter"], "100.00");
    assert_eq!(tx["status"], "COMPLETED");
    assert_eq!(tx["idempotencyKey"], "dep-1");
    assert_eq!(tx["wallet"]["id"], wallet.as_str());
    let w = &got["w"][0]["walletUpdated"];
    assert_eq!(w["id"], wallet.as_str());
    assert_eq!(w["balance"], "100.00");
    assert_eq!(w["availableBalance"], "100.00");

    let body = t.withdraw(&alice, &wallet, "30.25", "wd-1").await;
    assert!(body.get("errors").is_none(), "{body}");
    let got = collect(&mut ws, 2).await;
    let tx = &got["tx"][0]["transactionUpdated"];
    assert_eq!(tx["type"], "WITHDRAW");
    assert_eq!(tx["amount"], "30.25");
    assert_eq!(tx["balanceAfter"], "69.75");
    assert_eq!(got["w"][0]["walletUpdated"]["balance"], "69.75");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_carries_the_balance_its_change_produced() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let wallet = t.create_wallet("alice", "USD").await;
    let mut ws = WsClient::authenticated(&url, &t.user("alice")).await;
    ws.subscribe("w", WALLET_SUB, json!({ "w": wallet })).await;
    subscribed(&t.app, 1).await;
    // Back to back, faster than the listener wakes up: still one event per change, each
    // with its own balance, in order.
    for i in 1..=5 {
        t.deposit(&wallet, "1.00", &format!("dep-{i}")).await;
    }
    for i in 1..=5 {
        let w = ws.data("w").await;
        assert_eq!(w["walletUpdated"]["balance"], format!("{i}.00"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_pushes_reconciliation_completed() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "10.00", "dep-1").await;
    let mut ws = WsClient::authenticated(&url, &t.operator()).await;
    ws.subscribe("r", REC_SUB, json!({})).await;
    subscribed(&t.app, 1).await;
    t.ok(
        &t.operator(),
        "mutation($w: ID!) { reconcileWallet(input: {walletId: $w, startTime: \"2020-01-01T00:00:00Z\",
           endTime: \"2099-01-01T00:00:00Z\", externalBalance: \"10.00\"}) { id } }",
        json!({ "w": wallet }),
    )
    .await;
    let r = &ws.data("r").await["reconciliationCompleted"];
    assert_eq!(r["status"], "MATCHED");
    assert_eq!(r["systemBalance"], "10.00");
    assert_eq!(r["difference"], "0.00");
    assert_eq!(r["wallet"]["id"], wallet.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_mutation_produces_no_event() {
    let t = TestApp::new().await;
    let (wallet, mut ws) = watch_new_wallet(&t, "alice").await;
    let alice = t.user("alice");
    t.deposit(&wallet, "5.00", "dep-1").await;
    collect(&mut ws, 2).await;

    let refused = t.withdraw(&alice, &wallet, "6.00", "wd-too-much").await;
    assert_eq!(error_code(&refused), "INSUFFICIENT_FUNDS");
    let replayed_conflict = t.deposit(&wallet, "9.00", "dep-1").await;
    assert_eq!(error_code(&replayed_conflict), "IDEMPOTENCY_CONFLICT");
    // The next events are those of this deposit: nothing came from the refused requests.
    t.deposit(&wallet, "1.00", "dep-2").await;
    let got = collect(&mut ws, 2).await;
    assert_eq!(
        got["tx"][0]["transactionUpdated"]["idempotencyKey"],
        "dep-2"
    );
    assert_eq!(got["w"][0]["walletUpdated"]["balance"], "6.00");
    assert!(
        ws.next_within(Duration::from_millis(300)).await.is_none(),
        "no further events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_reach_subscribers_of_another_instance() {
    let t = TestApp::new().await;
    let wallet = t.create_wallet("alice", "USD").await;
    // A second "process": its own pool, listener and bus, on the same database.
    let (other, other_router) = t.sibling().await;
    let url = serve(other_router).await;
    let mut ws = WsClient::authenticated(&url, &t.user("alice")).await;
    ws.subscribe("tx", TX_SUB, json!({ "w": wallet })).await;
    subscribed(&other, 1).await;

    // (How fast: the fan-out benchmark measures it.)
    for i in 1..=3 {
        t.deposit(&wallet, "2.50", &format!("dep-{i}")).await;
        assert_eq!(
            ws.data("tx").await["transactionUpdated"]["idempotencyKey"],
            format!("dep-{i}")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_and_catches_up() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let wallet = t.create_wallet("alice", "USD").await;
    let mut ws = WsClient::authenticated(&url, &t.user("alice")).await;
    ws.subscribe("tx", TX_SUB, json!({ "w": wallet })).await;
    subscribed(&t.app, 1).await;

    let pg = t.db.client().await;
    let listener_pid = "SELECT pid FROM pg_stat_activity
                        WHERE application_name = $1 AND datname = current_database()";
    let name = wallet::events::listener::APPLICATION_NAME;
    let old: i32 = pg.query_one(listener_pid, &[&name]).await.unwrap().get(0);
    // Keep the listener out: no new session may connect to this database for now (the
    // pool's sessions are already open), then end the listener's session.
    let admin = common::admin_client().await;
    let allow = |yes: bool| format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {yes}", t.db.name);
    admin.batch_execute(&allow(false)).await.unwrap();
    let killed: bool = pg
        .query_one("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let listener = t.app.listener.clone();
    wait_until("the listener notices", Duration::from_secs(10), || async {
        listener.state() != ListenerState::Listening
    })
    .await;
    // Committed while the listener is down: its NOTIFYs reach nobody.
    for i in 1..=3 {
        t.deposit(&wallet, "1.00", &format!("while-down-{i}")).await;
    }
    assert_ne!(
        listener.state(),
        ListenerState::Listening,
        "the deposits were committed while the listener was away"
    );
    // Not ready meanwhile: subscribers here would wait for events.
    let (status, _, _) = t
        .send(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
    admin.batch_execute(&allow(true)).await.unwrap();
    for i in 1..=3 {
        let tx = ws.data("tx").await;
        assert_eq!(
            tx["transactionUpdated"]["idempotencyKey"],
            format!("while-down-{i}")
        );
    }
    let new: i32 = pg.query_one(listener_pid, &[&name]).await.unwrap().get(0);
    assert_ne!(old, new, "a new listening connection");
    // And live delivery works again on the new connection.
    t.deposit(&wallet, "1.00", "after").await;
    assert_eq!(
        ws.data("tx").await["transactionUpdated"]["idempotencyKey"],
        "after"
    );
}

#[tokio::test]
async fn connection_init_without_a_valid_token_is_refused() {
    let t = TestApp::new().await;
    let url = t.serve().await;

    let mut ws = WsClient::connect(&url, TRANSPORT_WS).await;
    ws.init(None).await;
    assert_eq!(ws.closed().await.0, 4401);

    let mut ws = WsClient::connect(&url, TRANSPORT_WS).await;
    let forged = common::raw_token(
        "not-the-secret-not-the-secret-xx",
        json!({"sub": "alice", "role": "operator", "exp": jsonwebtoken::get_current_timestamp() + 600}),
    );
    ws.init(Some(&forged)).await;
    assert_eq!(ws.closed().await.0, 4401);

    let expired = common::raw_token(
        common::JWT_SECRET,
        json!({"sub": "alice", "role": "user", "exp": jsonwebtoken::get_current_timestamp() - 120}),
    );
    let mut ws = WsClient::connect(&url, TRANSPORT_WS).await;
    ws.init(Some(&expired)).await;
    assert_eq!(ws.closed().await.0, 4401);

    // Subscribing before the handshake.
    let mut ws = WsClient::connect(&url, TRANSPORT_WS).await;
    ws.subscribe("1", TX_SUB, json!({})).await;
    assert_eq!(ws.closed().await.0, 4401);
}

#[tokio::test]
async fn the_session_ends_when_its_token_expires() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    // Expired 3 s ago but inside the 5 s leeway: accepted, for about 2 more seconds.
    let exp = jsonwebtoken::get_current_timestamp() - 3;
    let token = common::raw_token(
        common::JWT_SECRET,
        json!({"sub": "alice", "role": "user", "exp": exp, "iat": exp - 60}),
    );
    let mut ws = WsClient::authenticated(&url, &token).await;
    ws.subscribe("tx", TX_SUB, json!({})).await;
    let started = std::time::Instant::now();
    match ws.next_within(Duration::from_secs(5)).await {
        Some(Event::Closed(code, reason)) => {
            assert_eq!(code, 4401);
            assert!(reason.contains("expired"), "{reason}");
        }
        other => panic!("expected the session to end, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_only_see_their_own_wallets_events() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let alices = t.create_wallet("alice", "USD").await;
    let bobs = t.create_wallet("bob", "USD").await;
    let mut alice = WsClient::authenticated(&url, &t.user("alice")).await;

    // Bob's wallet by id: NOT_FOUND, as for queries.
    alice.subscribe("b", TX_SUB, json!({ "w": bobs })).await;
    alice
        .subscribe("bw", WALLET_SUB, json!({ "w": bobs }))
        .await;
    for _ in 0..2 {
        match alice.next().await {
            Event::Message(m) if m["type"] == "error" => {
                assert_eq!(m["payload"][0]["extensions"]["code"], "NOT_FOUND", "{m}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    // Without a filter: only her own.
    alice.subscribe("all", TX_SUB, json!({})).await;
    let mut operator = WsClient::authenticated(&url, &t.operator()).await;
    operator.subscribe("all", TX_SUB, json!({})).await;
    subscribed(&t.app, 2).await;
    t.deposit(&bobs, "7.00", "bob-dep").await;
    t.deposit(&alices, "3.00", "alice-dep").await;
    let first = alice.data("all").await;
    assert_eq!(first["transactionUpdated"]["idempotencyKey"], "alice-dep");
    assert!(
        alice
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    // The operator sees both.
    let seen: Vec<Value> = vec![
        operator.data("all").await["transactionUpdated"]["idempotencyKey"].clone(),
        operator.data("all").await["transactionUpdated"]["idempotencyKey"].clone(),
    ];
    assert_eq!(seen, vec![json!("bob-dep"), json!("alice-dep")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_graphql_ws_protocol() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let wallet = t.create_wallet("alice", "USD").await;
    let mut ws = WsClient::connect(&url, LEGACY_WS).await;
    ws.init(Some(&t.user("alice"))).await;
    match ws.next().await {
        Event::Message(m) => assert_eq!(m["type"], "connection_ack"),
        other => panic!("{other:?}"),
    }
    ws.send(json!({ "id": "1", "type": "start",
                    "payload": { "query": TX_SUB, "variables": { "w": wallet } } }))
        .await;
    subscribed(&t.app, 1).await;
    t.deposit(&wallet, "4.00", "dep-1").await;
    assert_eq!(ws.data("1").await["transactionUpdated"]["amount"], "4.00");
    ws.send(json!({ "id": "1", "type": "stop" })).await;
    match ws.next().await {
        Event::Message(m) => assert_eq!(
            (m["type"].as_str(), m["id"].as_str()),
            (Some("complete"), Some("1"))
        ),
        other => panic!("{other:?}"),
    }

    // A refused init: connection_error, then the close.
    let mut ws = WsClient::connect(&url, LEGACY_WS).await;
    ws.init(None).await;
    match ws.next().await {
        Event::Message(m) => assert_eq!(m["type"], "connection_error"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ws.closed().await.0, 4401);
}

#[tokio::test]
async fn protocol_violations_close_with_their_codes() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let token = t.user("alice");

    let mut ws = WsClient::authenticated(&url, &token).await;
    ws.subscribe("1", TX_SUB, json!({})).await;
    ws.subscribe("1", TX_SUB, json!({})).await;
    assert_eq!(ws.closed().await.0, 4409, "duplicate operation id");

    let mut ws = WsClient::authenticated(&url, &token).await;
    ws.init(Some(&token)).await;
    assert_eq!(ws.closed().await.0, 4429, "second connection_init");

    let mut ws = WsClient::authenticated(&url, &token).await;
    ws.send(json!("not a message")).await;
    assert_eq!(ws.closed().await.0, 4400);

    // Pings are answered.
    let mut ws = WsClient::authenticated(&url, &token).await;
    ws.send(json!({ "type": "ping" })).await;
    match ws.next().await {
        Event::Message(m) => assert_eq!(m["type"], "pong"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn concurrent_subscriptions_per_connection_are_capped() {
    let t = TestApp::new().await; // 8 per connection in tests
    let url = t.serve().await;
    let mut ws = WsClient::authenticated(&url, &t.user("alice")).await;
    for i in 0..8 {
        ws.subscribe(&i.to_string(), TX_SUB, json!({})).await;
    }
    subscribed(&t.app, 8).await;
    ws.subscribe("one-too-many", TX_SUB, json!({})).await;
    match ws.next().await {
        Event::Message(m) => {
            assert_eq!(m["type"], "error");
            assert_eq!(m["id"], "one-too-many");
            assert_eq!(m["payload"][0]["extensions"]["code"], "BAD_USER_INPUT");
        }
        other => panic!("{other:?}"),
    }
    // Completing one frees a slot.
    ws.send(json!({ "id": "0", "type": "complete" })).await;
    ws.subscribe("again", TX_SUB, json!({})).await;
    let wallet = t.create_wallet("alice", "USD").await;
    subscribed(&t.app, 8).await;
    t.deposit(&wallet, "1.00", "dep").await;
    let got = collect(&mut ws, 8).await;
    assert!(
        got.contains_key("again") && !got.contains_key("0"),
        "{got:?}"
    );
}

#[tokio::test]
async fn the_websocket_needs_a_graphql_subprotocol() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        refused.is_err(),
        "a handshake without a protocol is refused"
    );
}

/// An event of a transaction that commits after a newer one is neither lost nor skipped:
/// numbering (and so delivery) waits for it, and it keeps its place (its id was drawn
/// first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_transaction_committing_late_is_not_skipped() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let x = t.create_wallet("alice", "USD").await;
    let y = t.create_wallet("bob", "USD").await;
    let mut ws = WsClient::authenticated(&url, &t.operator()).await;
    ws.subscribe("all", TX_SUB, json!({})).await;
    subscribed(&t.app, 1).await;
    t.deposit(&x, "1.00", "dep-x").await;
    assert_eq!(
        ws.data("all").await["transactionUpdated"]["idempotencyKey"],
        "dep-x"
    );

    // An open transaction (older id) records an event and stays open...
    let mut pg = t.db.client().await;
    let slow = pg.transaction().await.unwrap();
    slow.execute(
        "INSERT INTO events (topic, type, subject_id, wallet_id, user_id)
         SELECT 'TRANSACTION', 'TRANSACTION_UPDATED', id, wallet_id, 'alice'
           FROM transactions WHERE tx_hash = 'dep-x'",
        &[],
    )
    .await
    .unwrap();
    // ...while a newer one commits: its event waits rather than overtaking.
    t.deposit(&y, "2.00", "dep-y").await;
    assert!(
        ws.next_within(Duration::from_millis(400)).await.is_none(),
        "held back behind the open transaction"
    );
    slow.commit().await.unwrap();
    assert_eq!(
        ws.data("all").await["transactionUpdated"]["idempotencyKey"],
        "dep-x"
    );
    assert_eq!(
        ws.data("all").await["transactionUpdated"]["idempotencyKey"],
        "dep-y"
    );
}

/// A schema over the test's database whose bus holds only `capacity` events, to make a
/// subscriber fall behind deterministically.
fn schema_with_small_bus(t: &TestApp, capacity: usize) -> (wallet::graphql::AppSchema, EventBus) {
    let bus = EventBus::new(capacity);
    let state = AppState {
        events: bus.clone(),
        ..t.app.state.clone()
    };
    (
        wallet::graphql::build_schema(state, Default::default(), None, true),
        bus,
    )
}

async fn flood(t: &TestApp, bus: &EventBus, topic_wallet: &str, n: usize) {
    let pg = t.db.client().await;
    let row = pg
        .query_one("SELECT id, user_id FROM wallets ORDER BY id LIMIT 1", &[])
        .await
        .unwrap();
    let (wallet_id, user_id): (i64, String) = (row.get(0), row.get(1));
    let mut conn = t.app.state.pool.get().await.unwrap();
    let w = wallet::ledger::wallet::find_wallet(&mut conn, &Scope::All, wallet_id)
        .await
        .unwrap();
    let entry = wallet::ledger::journal::find_transaction(
        &mut conn,
        &Scope::All,
        pg.query_one("SELECT max(id) FROM transactions", &[])
            .await
            .unwrap()
            .get(0),
    )
    .await
    .unwrap();
    for i in 0..n {
        let payload = if topic_wallet == "wallet" {
            let mut w = w.clone();
            w.balance = rust_decimal::Decimal::new(i as i64, 2);
            Payload::Wallet(w)
        } else {
            Payload::Transaction(Box::new(entry.clone()))
        };
        bus.publish(Notice {
            id: i as i64,
            sequence: i as i64 + 1,
            kind: match topic_wallet {
                "wallet" => wallet::events::EventType::WalletUpdated,
                _ => wallet::events::EventType::TransactionUpdated,
            },
            occurred_at: chrono::Utc::now(),
            wallet_id: Some(wallet_id),
            user_id: Some(user_id.clone()),
            payload,
        });
    }
}

/// Polls a subscription until it is registered on the bus (it yields nothing before).
async fn started(
    stream: &mut (impl futures_util::Stream<Item = async_graphql::Response> + Unpin),
    bus: &EventBus,
) {
    let registered = async {
        while bus.subscriber_count() == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        _ = stream.next() => panic!("nothing was published yet"),
        () = registered => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("the subscription never started"),
    }
    assert_eq!(bus.subscriber_count(), 1);
}

async fn pending_or_next(
    stream: &mut (impl futures_util::Stream<Item = async_graphql::Response> + Unpin),
) -> Option<async_graphql::Response> {
    tokio::select! {
        r = stream.next() => r,
        _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("stream is pending"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_transaction_subscriber_gets_an_error_and_the_stream_ends() {
    let t = TestApp::new().await;
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "1.00", "dep").await;
    let (schema, bus) = schema_with_small_bus(&t, 4);
    let request = async_graphql::Request::new(
        "subscription { transactionUpdated { idempotencyKey } }",
    )
    .data(Viewer {
        user_id: "alice".into(),
        role: Role::User,
    });
    let mut stream = schema.execute_stream(request);
    // Let the subscription start; it has nothing to yield yet.
    started(&mut stream, &bus).await;
    // The subscriber does not read while 10 events arrive: the bus keeps only 4.
    flood(&t, &bus, "transaction", 10).await;
    let lagged = pending_or_next(&mut stream).await.unwrap();
    let error = &lagged.errors[0];
    let code = error
        .extensions
        .as_ref()
        .and_then(|e| e.get("code"))
        .cloned();
    assert_eq!(
        code,
        Some(async_graphql::Value::from("SUBSCRIPTION_LAGGED"))
    );
    assert!(
        error.message.contains("6 event(s) were dropped"),
        "{}",
        error.message
    );
    assert!(
        pending_or_next(&mut stream).await.is_none(),
        "the stream ends"
    );
    // Publishing never blocked, and the dropped subscriber is gone.
    assert_eq!(bus.subscriber_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_wallet_subscriber_skips_to_the_current_state() {
    let t = TestApp::new().await;
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "42.00", "dep").await;
    let (schema, bus) = schema_with_small_bus(&t, 4);
    let request = async_graphql::Request::new(
        "subscription($w: ID!) { walletUpdated(walletId: $w) { balance } }",
    )
    .variables(async_graphql::Variables::from_json(json!({ "w": wallet })))
    .data(Viewer {
        user_id: "alice".into(),
        role: Role::User,
    });
    let mut stream = schema.execute_stream(request);
    started(&mut stream, &bus).await;
    flood(&t, &bus, "wallet", 10).await;
    // The current wallet (from the database), then the events still buffered.
    let first = pending_or_next(&mut stream).await.unwrap();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(
        first.data.into_json().unwrap()["walletUpdated"]["balance"],
        "42.00"
    );
    for cents in 6..10 {
        let next = pending_or_next(&mut stream).await.unwrap();
        let balance = next.data.into_json().unwrap()["walletUpdated"]["balance"].clone();
        assert_eq!(balance, rust_decimal::Decimal::new(cents, 2).to_string());
    }
}

/// Transaction ids are cluster-wide, but a long write transaction in another database
/// cannot write to this outbox: it must not hold events back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_in_another_database_does_not_delay_events() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let wallet = t.create_wallet("alice", "USD").await;
    let mut ws = WsClient::authenticated(&url, &t.user("alice")).await;
    ws.subscribe("tx", TX_SUB, json!({ "w": wallet })).await;
    subscribed(&t.app, 1).await;

    let next_door = common::TestDb::new().await;
    let mut pg = next_door.client().await;
    let long = pg.transaction().await.unwrap();
    long.execute("CREATE TABLE busy (x int)", &[])
        .await
        .unwrap();
    let xid: i64 = long
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0);
    assert!(xid > 0, "the open transaction holds an xid");

    t.deposit(&wallet, "1.00", "while-next-door-is-busy").await;
    // Delivered while the other database's transaction is still open.
    assert_eq!(
        ws.data("tx").await["transactionUpdated"]["idempotencyKey"],
        "while-next-door-is-busy"
    );
    long.rollback().await.unwrap();
}

/// A chain deposit found by the watcher: its hold is pushed when seen, again with each
/// confirmation 1..6, and the credit when it reaches the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_progress_of_a_deposit_is_pushed_block_by_block() {
    const CHAIN_SUB: &str = "subscription($w: ID) { transactionUpdated(walletId: $w) {
      type idempotencyKey isHold status confirmations requiredConfirmations balanceAfter } }";
    let t = TestApp::new().await;
    let url = t.serve().await;
    let alice = t.user("alice");
    let created = t
        .ok(
            &alice,
            "mutation { createWallet(input: {currency: \"BTC\"}) { id address } }",
            json!({}),
        )
        .await;
    let wallet = created["createWallet"]["id"].as_str().unwrap().to_owned();
    let address = created["createWallet"]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = WsClient::authenticated(&url, &alice).await;
    ws.subscribe("tx", CHAIN_SUB, json!({ "w": wallet })).await;
    subscribed(&t.app, 1).await;

    let transfer = t
        .ok(
            &t.operator(),
            "mutation($to: String!) { simulateIncomingTransfer(input:
               {network: \"bitcoin\", toAddress: $to, amount: \"0.5\"}) { txHash } }",
            json!({ "to": address }),
        )
        .await;
    let hash = transfer["simulateIncomingTransfer"]["txHash"].clone();
    let worker = t.app.chain_worker().unwrap();
    let mine = async || {
        t.ok(
            &t.operator(),
            "mutation { mineBlocks(input: {network: \"bitcoin\", count: 1}) }",
            json!({}),
        )
        .await;
        worker.pass().await.unwrap();
    };

    worker.pass().await.unwrap();
    let seen = &ws.data("tx").await["transactionUpdated"];
    assert_eq!(seen["idempotencyKey"], hash);
    assert_eq!(
        (
            seen["isHold"].as_bool(),
            seen["status"].as_str(),
            seen["confirmations"].as_i64()
        ),
        (Some(true), Some("PENDING"), Some(0))
    );
    assert_eq!(seen["requiredConfirmations"], 6);
    for confirmations in 1..=5 {
        mine().await;
        let update = &ws.data("tx").await["transactionUpdated"];
        assert_eq!(
            (update["status"].as_str(), update["confirmations"].as_i64()),
            (Some("PENDING"), Some(confirmations)),
            "{update}"
        );
    }
    mine().await;
    let credit = ws.data("tx").await["transactionUpdated"].clone();
    assert_eq!(
        (
            credit["isHold"].as_bool(),
            credit["type"].as_str(),
            credit["status"].as_str()
        ),
        (Some(false), Some("DEPOSIT"), Some("COMPLETED"))
    );
    assert_eq!(credit["balanceAfter"], "0.50000000");
    let completed = ws.data("tx").await["transactionUpdated"].clone();
    assert_eq!(
        (
            completed["isHold"].as_bool(),
            completed["status"].as_str(),
            completed["confirmations"].as_i64()
        ),
        (Some(true), Some("COMPLETED"), Some(6))
    );
    // Nothing more for this deposit.
    mine().await;
    assert!(ws.next_within(Duration::from_millis(300)).await.is_none());
}

/// Movements committed concurrently through two processes: every subscriber, on either
/// process, receives every one exactly once, and each wallet's in the order its balance
/// changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_subscriber_gets_every_event_once_and_in_order_from_two_processes() {
    let options = common::Options {
        pool_size: 20,
        ..common::Options::default()
    };
    let t = TestApp::with(options.clone()).await;
    let (other, other_router) = t.sibling_with(options).await;
    let urls = [t.serve().await, serve(other_router.clone()).await];
    let routers = [t.router.clone(), other_router];
    let mut wallets = Vec::new();
    for user in ["a", "b", "c"] {
        wallets.push(t.create_wallet(user, "USD").await);
    }
    const SUB: &str = "subscription { transactionUpdated { idempotencyKey walletId balanceBefore balanceAfter } }";
    let mut subscribers = Vec::new();
    for url in urls.iter().chain(urls.iter()) {
        let mut ws = WsClient::authenticated(url, &t.operator()).await;
        ws.subscribe("tx", SUB, json!({})).await;
        subscribers.push(ws);
    }
    subscribed(&t.app, 2).await;
    subscribed(&other, 2).await;

    const MOVEMENTS: usize = 120;
    let operator = t.operator();
    let sends = (0..MOVEMENTS).map(|i| {
        let (router, wallet, operator) = (&routers[i % 2], &wallets[i % 3], &operator);
        async move {
            let body = common::gql_to(
                router,
                Some(operator),
                common::DEPOSIT,
                json!({"w": wallet, "a": format!("{}.00", 1 + i % 5), "k": format!("m-{i}")}),
            )
            .await;
            assert!(body.get("errors").is_none(), "{body}");
        }
    });
    futures_util::future::join_all(sends).await;

    let expected: std::collections::BTreeSet<String> =
        (0..MOVEMENTS).map(|i| format!("m-{i}")).collect();
    for (n, ws) in subscribers.iter_mut().enumerate() {
        let mut received = Vec::new();
        let mut last_balance: HashMap<String, rust_decimal::Decimal> = HashMap::new();
        while received.len() < MOVEMENTS {
            let event = ws.data("tx").await["transactionUpdated"].clone();
            let wallet = event["walletId"].as_str().unwrap().to_owned();
            let dec = |k: &str| {
                event[k]
                    .as_str()
                    .unwrap()
                    .parse::<rust_decimal::Decimal>()
                    .unwrap()
            };
            let previous = last_balance.get(&wallet).copied().unwrap_or_default();
            assert_eq!(
                dec("balanceBefore"),
                previous,
                "subscriber {n}: out of order: {event}"
            );
            last_balance.insert(wallet, dec("balanceAfter"));
            received.push(event["idempotencyKey"].as_str().unwrap().to_owned());
        }
        let distinct: std::collections::BTreeSet<String> = received.iter().cloned().collect();
        assert_eq!(distinct.len(), MOVEMENTS, "subscriber {n}: a duplicate");
        assert_eq!(distinct, expected, "subscriber {n}");
        // And nothing more.
        assert!(
            ws.next_within(Duration::from_millis(300)).await.is_none(),
            "subscriber {n}: an extra event"
        );
    }
}

/// A hold's owner sees each step of the hold (`holdUpdated`) and each change of the
/// available balance (`walletUpdated`): authorising and voiding move the held balance
/// only, a capture the balance too. Another user sees nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_push_hold_and_wallet_events_to_their_owner_only() {
    const HOLD_SUB: &str = "subscription($w: ID) { holdUpdated(walletId: $w) {
      id status amount captured remaining wallet { id } } }";
    const BALANCES: &str = "subscription($w: ID!) { walletUpdated(walletId: $w) {
      balance heldBalance availableBalance } }";
    let t = TestApp::new().await;
    let url = t.serve().await;
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "50.00", "fund").await;
    let mut ws = WsClient::authenticated(&url, &t.user("alice")).await;
    ws.subscribe("h", HOLD_SUB, json!({ "w": wallet })).await;
    ws.subscribe("w", BALANCES, json!({ "w": wallet })).await;
    let mut bob = WsClient::authenticated(&url, &t.user("bob")).await;
    bob.subscribe("h", HOLD_SUB, json!({ "w": null })).await;
    subscribed(&t.app, 3).await;

    let alice = t.user("alice");
    let hold = t
        .ok(
            &alice,
            "mutation($w: ID!) { authorizeHold(input: {walletId: $w, amount: \"20.00\",
               idempotencyKey: \"h-1\"}) { id } }",
            json!({ "w": wallet }),
        )
        .await["authorizeHold"]["id"]
        .clone();
    let got = collect(&mut ws, 2).await;
    let h = &got["h"][0]["holdUpdated"];
    assert_eq!(h["id"], hold);
    assert_eq!(h["status"], "ACTIVE");
    assert_eq!(h["remaining"], "20.00");
    assert_eq!(h["wallet"]["id"], wallet.as_str());
    assert_eq!(
        got["w"][0]["walletUpdated"],
        json!({"balance": "50.00", "heldBalance": "20.00", "availableBalance": "30.00"})
    );

    t.ok(
        &alice,
        "mutation($h: ID!) { captureHold(input: {holdId: $h, amount: \"5.00\",
           idempotencyKey: \"c-1\"}) { id } }",
        json!({ "h": hold }),
    )
    .await;
    let got = collect(&mut ws, 2).await;
    let h = &got["h"][0]["holdUpdated"];
    assert_eq!(
        (&h["captured"], &h["remaining"]),
        (&json!("5.00"), &json!("15.00"))
    );
    assert_eq!(
        got["w"][0]["walletUpdated"],
        json!({"balance": "45.00", "heldBalance": "15.00", "availableBalance": "30.00"})
    );

    t.ok(
        &alice,
        "mutation($h: ID!) { voidHold(input: {holdId: $h, idempotencyKey: \"v-1\"}) { id } }",
        json!({ "h": hold }),
    )
    .await;
    let got = collect(&mut ws, 2).await;
    assert_eq!(got["h"][0]["holdUpdated"]["status"], "VOIDED");
    assert_eq!(
        got["w"][0]["walletUpdated"],
        json!({"balance": "45.00", "heldBalance": "0.00", "availableBalance": "45.00"})
    );
    assert!(
        bob.next_within(Duration::from_millis(500)).await.is_none(),
        "another user's subscription sees nothing of alice's hold"
    );
}
