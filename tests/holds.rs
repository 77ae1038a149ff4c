//! Fiat holds and credit limits: an authorization reserves without posting, captures settle
//! it as journal rows that name it, a void or an expiry gives the rest back exactly once,
//! every mutation is idempotent, and a credit limit lets a balance go negative without
//! ever letting the wallet spend more than it may — also under races between processes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, SecondsFormat, Utc};
use common::process::{ServerProcess, post};
use common::{Fleet, Options, TestApp, TestDb, error_code, gql_to, wait_until};
use futures_util::future::join_all;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use wallet::auth::{Role, TokenKeys};

/// `$head { <every field of a hold> }`, closed with `$close`.
macro_rules! with_hold {
    ($head:literal, $close:literal) => {
        concat!(
            $head,
            " { id status amount captured remaining released expiresAt description reference
                metadata wallet { id } to { id }
                captures { id type amount balanceBefore balanceAfter idempotencyKey settlesHold { id } }
                events { kind amount released actor transaction { id } } } ",
            $close
        )
    };
}

const AUTHORIZE: &str = with_hold!(
    "mutation($in: AuthorizeHoldInput!) { authorizeHold(input: $in)",
    "}"
);
const CAPTURE: &str = with_hold!(
    "mutation($in: CaptureHoldInput!) { captureHold(input: $in)",
    "}"
);
const VOID: &str = with_hold!("mutation($in: VoidHoldInput!) { voidHold(input: $in)", "}");
const HOLD: &str = with_hold!("query($id: ID!) { node(id: $id) { ... on Hold", "} }");
const SET_LIMIT: &str = "mutation($in: SetCreditLimitInput!) { setCreditLimit(input: $in) {
  id balance creditLimit availableBalance } }";
const MONEY: &str = "query($w: ID!) { wallet(id: $w) {
  balance heldBalance availableBalance lockedBalance creditLimit } }";
const ROWS: &str = "query($w: ID!) { wallet(id: $w) { transactions(first: 100) { edges { node {
  id type amount balanceBefore balanceAfter idempotencyKey settlesHold { id } } } } } }";
const HOLDS: &str = "query($w: ID!, $s: HoldStatus, $after: String) { wallet(id: $w) {
  holds(first: 100, after: $after, status: $s) { pageInfo { hasNextPage endCursor }
    edges { node { id status amount captured remaining released } } } } }";
const CHANGES: &str = "query($w: ID!) { wallet(id: $w) { creditLimit
  creditLimitChanges(first: 10) { edges { node { previousLimit limit reason changedBy } } } } }";
const TRANSFER: &str = "mutation($from: ID!, $to: ID!, $a: Decimal!, $k: String!) {
  transfer(input: {fromWalletId: $from, toWalletId: $to, amount: $a, idempotencyKey: $k}) { id } }";
/// The fields of a journal row compared whole (its id and key checked apart).
const ROW: [&str; 5] = [
    "type",
    "amount",
    "balanceBefore",
    "balanceAfter",
    "settlesHold",
];

async fn authorize(r: &Router, token: &str, input: Value) -> Value {
    gql_to(r, Some(token), AUTHORIZE, json!({ "in": input })).await
}

async fn capture(r: &Router, token: &str, hold: &str, amount: Option<&str>, key: &str) -> Value {
    let input = json!({"holdId": hold, "amount": amount, "idempotencyKey": key});
    gql_to(r, Some(token), CAPTURE, json!({ "in": input })).await
}

async fn capture_final(r: &Router, token: &str, hold: &str, amount: &str, key: &str) -> Value {
    let input = json!({"holdId": hold, "amount": amount, "idempotencyKey": key, "final": true});
    gql_to(r, Some(token), CAPTURE, json!({ "in": input })).await
}

async fn void(r: &Router, token: &str, hold: &str, key: &str) -> Value {
    let input = json!({"holdId": hold, "idempotencyKey": key});
    gql_to(r, Some(token), VOID, json!({ "in": input })).await
}

/// The tests that run three service instances take turns: together they could take every
/// connection a default Postgres allows (100).
static THREE_INSTANCES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Three service instances on one database, with small pools: three processes with the
/// suite's usual pools could take every connection a default Postgres allows.
async fn fleet() -> Arc<Fleet> {
    let small = || Options {
        pool_size: 8,
        ..Options::default()
    };
    let t = TestApp::with(small()).await;
    let mut nodes = vec![(t.app.clone(), t.router.clone())];
    for _ in 0..2 {
        nodes.push(t.sibling_with(small()).await);
    }
    Arc::new(Fleet {
        t,
        nodes,
        turn: None,
    })
}

/// A service instance whose expiry worker runs every 200 ms.
async fn expiring() -> TestApp {
    TestApp::with(Options {
        hold_expiry_poll: Some(Duration::from_millis(200)),
        ..Options::default()
    })
    .await
}

/// An authorization that must be granted; returns the hold's id.
async fn held(r: &Router, token: &str, input: Value) -> String {
    id_of(&hold(&authorize(r, token, input).await, "authorizeHold"))
}

/// A capture that must succeed; returns the hold.
async fn captured(r: &Router, token: &str, id: &str, amount: Option<&str>, key: &str) -> Value {
    hold(&capture(r, token, id, amount, key).await, "captureHold")
}

/// A void that must succeed; returns the hold.
async fn voided(r: &Router, token: &str, id: &str, key: &str) -> Value {
    hold(&void(r, token, id, key).await, "voidHold")
}

/// The input of an authorization of `amount` on `wallet`.
fn ask(wallet: &str, amount: &str, key: &str) -> Value {
    json!({"walletId": wallet, "amount": amount, "idempotencyKey": key})
}

async fn set_limit(t: &TestApp, w: &str, limit: &str, key: &str, reason: &str) -> Value {
    let input = json!({"walletId": w, "limit": limit, "idempotencyKey": key, "reason": reason});
    t.gql(Some(&t.operator()), SET_LIMIT, json!({ "in": input }))
        .await
}

/// The hold a successful answer carries.
fn hold(body: &Value, field: &str) -> Value {
    assert!(body.get("errors").is_none(), "unexpected errors: {body}");
    body["data"][field].clone()
}

fn refused(body: &Value, code: &str) {
    assert_eq!(error_code(body), code, "{body}");
}

fn id_of(hold: &Value) -> String {
    hold["id"].as_str().expect("a hold id").to_owned()
}

/// A hold as the operator reads it now.
async fn hold_state(t: &TestApp, id: &str) -> Value {
    t.ok(&t.operator(), HOLD, json!({ "id": id })).await["node"].clone()
}

fn pick(v: &Value, keys: &[&str]) -> Value {
    Value::Object(
        keys.iter()
            .map(|k| (k.to_string(), v[*k].clone()))
            .collect(),
    )
}

/// Status, amount, captured, remaining and released of a hold.
fn state(h: &Value) -> Value {
    pick(
        h,
        &["status", "amount", "captured", "remaining", "released"],
    )
}

fn st(status: &str, amount: &str, captured: &str, remaining: &str, released: &str) -> Value {
    json!({"status": status, "amount": amount, "captured": captured,
           "remaining": remaining, "released": released})
}

/// A journal row's `ROW` fields.
fn row(kind: &str, amount: &str, before: &str, after: &str, hold: &str) -> Value {
    json!({"type": kind, "amount": amount, "balanceBefore": before, "balanceAfter": after,
           "settlesHold": {"id": hold}})
}

fn kinds(h: &Value) -> Vec<String> {
    let events = h["events"].as_array().expect("events");
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("a decimal, got {v}"))
        .parse()
        .unwrap()
}

fn cents(n: i64) -> Decimal {
    Decimal::new(n, 2)
}

fn rfc(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn in_secs(secs: i64) -> String {
    rfc(Utc::now() + chrono::Duration::seconds(secs))
}

async fn joined<T>(tasks: impl Iterator<Item = JoinHandle<T>>) -> Vec<T> {
    join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

async fn money(t: &TestApp, w: &str) -> Value {
    t.ok(&t.operator(), MONEY, json!({ "w": w })).await["wallet"].clone()
}

/// Balance, held and available balance of a wallet, as the operator reads them.
async fn assert_money(t: &TestApp, w: &str, balance: &str, held: &str, available: &str) {
    let m = money(t, w).await;
    assert_eq!(
        pick(&m, &["balance", "heldBalance", "availableBalance"]),
        json!({"balance": balance, "heldBalance": held, "availableBalance": available}),
        "wallet {w}"
    );
}

/// The wallet's journal, oldest first.
async fn rows(t: &TestApp, w: &str) -> Vec<Value> {
    let data = t.ok(&t.operator(), ROWS, json!({ "w": w })).await;
    let edges = data["wallet"]["transactions"]["edges"].as_array().unwrap();
    edges.iter().map(|e| e["node"].clone()).collect()
}

/// Every hold of a wallet (of `status`, when given), oldest first (like every list).
async fn holds(t: &TestApp, w: &str, status: Option<&str>) -> Vec<Value> {
    let (mut out, mut after) = (Vec::new(), None::<String>);
    loop {
        let vars = json!({"w": w, "s": status, "after": after});
        let data = t.ok(&t.operator(), HOLDS, vars).await;
        let conn = &data["wallet"]["holds"];
        let edges = conn["edges"].as_array().unwrap();
        out.extend(edges.iter().map(|e| e["node"].clone()));
        if !conn["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            return out;
        }
        after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
}

/// What must hold whatever raced: the held balance is what the active holds still
/// reserve, the available balance is the formula's and not negative, the balance is not
/// below minus the credit limit, the chain holds and the books balance. Returns
/// (balance, held).
async fn assert_consistent(t: &TestApp, w: &str) -> (Decimal, Decimal) {
    let m = money(t, w).await;
    let (balance, held) = (dec(&m["balance"]), dec(&m["heldBalance"]));
    let (available, locked, limit) = (
        dec(&m["availableBalance"]),
        dec(&m["lockedBalance"]),
        dec(&m["creditLimit"]),
    );
    let active = holds(t, w, Some("ACTIVE")).await;
    let reserved: Decimal = active.iter().map(|h| dec(&h["remaining"])).sum();
    assert_eq!(
        held, reserved,
        "heldBalance = remaining of ACTIVE holds: {m}"
    );
    assert_eq!(available, balance + limit - held - locked, "{m}");
    assert!(available >= Decimal::ZERO, "{m}");
    assert!(balance >= -limit, "{m}");
    t.assert_chain(w).await;
    t.assert_balanced().await;
    (balance, held)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_reserves_and_captures_settle_it() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "100.00", "fund").await;
    let (alice, r) = (t.user("alice"), &t.router);
    let mut input = ask(&w, "40.00", "h-1");
    input["description"] = json!("order 1");
    input["reference"] = json!("ref-1");
    input["metadata"] = json!({"order": "1"});
    let h = hold(&authorize(r, &alice, input).await, "authorizeHold");
    let id = id_of(&h);
    assert_eq!(state(&h), st("ACTIVE", "40.00", "0.00", "40.00", "0.00"));
    assert_eq!(
        pick(
            &h,
            &["description", "reference", "metadata", "captures", "to"]
        ),
        json!({"description": "order 1", "reference": "ref-1", "metadata": {"order": "1"},
               "captures": [], "to": null})
    );
    assert_eq!(h["wallet"]["id"], w.as_str());
    assert_eq!(
        h["events"],
        json!([{"kind": "AUTHORIZED", "amount": "40.00", "released": "0.00",
                "actor": "alice", "transaction": null}])
    );
    // The default expiry is a week ahead.
    let expires: DateTime<Utc> = h["expiresAt"].as_str().unwrap().parse().unwrap();
    let off = expires - (Utc::now() + chrono::Duration::days(7));
    assert!(off.num_seconds().abs() < 120, "expiresAt {expires}");
    // Reserved, not moved: no journal row, no posting.
    assert_money(&t, &w, "100.00", "40.00", "60.00").await;
    assert_eq!(rows(&t, &w).await.len(), 1, "only the deposit");
    assert_eq!(t.assert_balanced().await["USD"].2["bank"], "-100.00");
    // The owner reads her hold too.
    let own = t.ok(&alice, HOLD, json!({ "id": id })).await;
    assert_eq!(own["node"], h);

    // A partial capture: one WITHDRAW that names the hold.
    let h = captured(r, &alice, &id, Some("15.00"), "c-1").await;
    assert_eq!(state(&h), st("ACTIVE", "40.00", "15.00", "25.00", "0.00"));
    let first = h["captures"][0].clone();
    assert_eq!(h["captures"].as_array().unwrap().len(), 1);
    assert_eq!(
        pick(&first, &ROW),
        row("WITHDRAW", "15.00", "100.00", "85.00", &id)
    );
    assert_eq!(first["idempotencyKey"], "c-1");
    assert_eq!(kinds(&h), ["AUTHORIZED", "CAPTURED"]);
    assert_eq!(
        h["events"][1],
        json!({"kind": "CAPTURED", "amount": "15.00", "released": "0.00", "actor": "alice",
               "transaction": {"id": first["id"]}})
    );
    assert_money(&t, &w, "85.00", "25.00", "60.00").await;
    let journal = rows(&t, &w).await;
    assert_eq!(journal.len(), 2);
    assert_eq!(journal[1], first, "the journal row is the capture");

    // The rest (no amount: all that remains): CAPTURED.
    let h = captured(r, &alice, &id, None, "c-2").await;
    assert_eq!(state(&h), st("CAPTURED", "40.00", "40.00", "0.00", "0.00"));
    assert_eq!(h["captures"][0], first, "captures oldest first");
    assert_eq!(
        pick(&h["captures"][1], &ROW),
        row("WITHDRAW", "25.00", "85.00", "60.00", &id)
    );
    assert_eq!(kinds(&h), ["AUTHORIZED", "CAPTURED", "CAPTURED"]);
    assert_money(&t, &w, "60.00", "0.00", "60.00").await;

    // Nothing more to capture.
    let body = capture(r, &alice, &id, Some("1.00"), "c-3").await;
    refused(&body, "HOLD_NOT_ACTIVE");
    assert_eq!(hold_state(&t, &id).await, h, "a refusal changes nothing");
    assert_money(&t, &w, "60.00", "0.00", "60.00").await;
    assert_eq!(holds(&t, &w, Some("CAPTURED")).await.len(), 1);
    assert!(holds(&t, &w, Some("ACTIVE")).await.is_empty());
    assert_eq!(t.assert_chain(&w).await, 3);
    assert_eq!(t.assert_balanced().await["USD"].2["bank"], "-60.00");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_final_capture_or_a_void_releases_the_rest() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "100.00", "fund").await;
    let (alice, r) = (t.user("alice"), &t.router);

    // A final capture takes 20 of 50 and gives 30 back.
    let a = held(r, &alice, ask(&w, "50.00", "h-a")).await;
    let h = hold(
        &capture_final(r, &alice, &a, "20.00", "c-a").await,
        "captureHold",
    );
    assert_eq!(state(&h), st("CAPTURED", "50.00", "20.00", "0.00", "30.00"));
    assert_eq!(
        pick(&h["events"][1], &["kind", "amount", "released"]),
        json!({"kind": "CAPTURED", "amount": "20.00", "released": "30.00"})
    );
    assert_money(&t, &w, "80.00", "0.00", "80.00").await;
    refused(&void(r, &alice, &a, "v-a").await, "HOLD_NOT_ACTIVE");

    // A void after a partial capture gives the remainder back and posts nothing.
    let b = held(r, &alice, ask(&w, "30.00", "h-b")).await;
    captured(r, &alice, &b, Some("10.00"), "c-b1").await;
    assert_money(&t, &w, "70.00", "20.00", "50.00").await;
    let h = voided(r, &alice, &b, "v-b").await;
    assert_eq!(state(&h), st("VOIDED", "30.00", "10.00", "0.00", "20.00"));
    assert_eq!(kinds(&h), ["AUTHORIZED", "CAPTURED", "VOIDED"]);
    assert_eq!(
        pick(&h["events"][2], &["released", "transaction", "actor"]),
        json!({"released": "20.00", "transaction": null, "actor": "alice"})
    );
    assert_money(&t, &w, "70.00", "0.00", "70.00").await;
    for body in [
        capture(r, &alice, &b, Some("1.00"), "c-b2").await,
        capture_final(r, &alice, &b, "1.00", "c-b3").await,
        void(r, &alice, &b, "v-b2").await,
    ] {
        refused(&body, "HOLD_NOT_ACTIVE");
    }
    assert_eq!(hold_state(&t, &b).await, h);

    // More than remains: HOLD_EXCEEDED, nothing changed; exactly what remains is fine.
    let c = held(r, &alice, ask(&w, "25.00", "h-c")).await;
    let before = hold_state(&t, &c).await;
    assert_eq!(
        state(&before),
        st("ACTIVE", "25.00", "0.00", "25.00", "0.00")
    );
    let body = capture(r, &alice, &c, Some("25.01"), "c-c1").await;
    refused(&body, "HOLD_EXCEEDED");
    assert_eq!(hold_state(&t, &c).await, before);
    assert_money(&t, &w, "70.00", "25.00", "45.00").await;
    let h = captured(r, &alice, &c, Some("25.00"), "c-c2").await;
    assert_eq!(state(&h), st("CAPTURED", "25.00", "25.00", "0.00", "0.00"));
    assert_money(&t, &w, "45.00", "0.00", "45.00").await;
    assert_eq!(t.assert_chain(&w).await, 4);
    assert_eq!(t.assert_balanced().await["USD"].2["bank"], "-45.00");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_transfer_is_captured_as_a_transfer() {
    let t = TestApp::new().await;
    let a = t.create_wallet("alice", "USD").await;
    let b = t.create_wallet("bob", "USD").await;
    t.deposit(&a, "100.00", "fund").await;
    let (alice, r) = (t.user("alice"), &t.router);
    let mut input = ask(&a, "30.00", "e-1");
    input["toWalletId"] = json!(b);
    let id = held(r, &alice, input).await;
    let h = hold_state(&t, &id).await;
    assert_eq!((&h["wallet"]["id"], &h["to"]["id"]), (&json!(a), &json!(b)));
    assert_money(&t, &a, "100.00", "30.00", "70.00").await;
    assert_money(&t, &b, "0.00", "0.00", "0.00").await;

    let h = captured(r, &alice, &id, Some("10.00"), "e-c1").await;
    assert_eq!(state(&h), st("ACTIVE", "30.00", "10.00", "20.00", "0.00"));
    assert_eq!(
        pick(&h["captures"][0], &ROW),
        row("TRANSFER_OUT", "10.00", "100.00", "90.00", &id)
    );
    let bobs = rows(&t, &b).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        pick(&bobs[0], &ROW),
        row("TRANSFER_IN", "10.00", "0.00", "10.00", &id)
    );
    assert_money(&t, &b, "10.00", "0.00", "10.00").await;

    let h = captured(r, &alice, &id, None, "e-c2").await;
    assert_eq!(state(&h), st("CAPTURED", "30.00", "30.00", "0.00", "0.00"));
    assert_eq!(
        pick(&h["captures"][1], &ROW),
        row("TRANSFER_OUT", "20.00", "90.00", "70.00", &id)
    );
    assert_money(&t, &a, "70.00", "0.00", "70.00").await;
    assert_money(&t, &b, "30.00", "0.00", "30.00").await;

    // A voided held transfer moves nothing to the target.
    let mut input = ask(&a, "20.00", "e-2");
    input["toWalletId"] = json!(b);
    let id2 = held(r, &alice, input).await;
    voided(r, &alice, &id2, "e-v").await;
    assert_money(&t, &a, "70.00", "0.00", "70.00").await;
    assert_money(&t, &b, "30.00", "0.00", "30.00").await;
    let trial = t.assert_balanced().await;
    assert_eq!(trial["USD"].2["bank"], "-100.00", "transfers post nothing");
    assert_eq!(t.assert_chain(&a).await, 3);
    assert_eq!(t.assert_chain(&b).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn replays_return_the_original_and_conflicts_are_refused() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let bw = t.create_wallet("bob", "USD").await;
    t.deposit(&w, "100.00", "fund").await;
    t.deposit(&bw, "5.00", "fund").await;
    let (alice, r) = (t.user("alice"), &t.router);

    // authorizeHold, without expiresAt: a replay keeps the original's default expiry.
    let mut input = ask(&w, "10.00", "k-1");
    input["metadata"] = json!({"a": "1"});
    let first = hold(&authorize(r, &alice, input.clone()).await, "authorizeHold");
    let h1 = id_of(&first);
    let again = hold(&authorize(r, &alice, input.clone()).await, "authorizeHold");
    assert_eq!(again, first, "a replay returns the same hold");
    for (field, value) in [
        ("amount", json!("11.00")),
        ("metadata", json!({"a": "2"})),
        ("toWalletId", json!(bw)),
        ("expiresAt", json!(in_secs(3600))),
    ] {
        let mut conflicting = input.clone();
        conflicting[field] = value;
        let body = authorize(r, &alice, conflicting).await;
        assert_eq!(error_code(&body), "IDEMPOTENCY_CONFLICT", "{field}: {body}");
    }
    assert_eq!(holds(&t, &w, None).await.len(), 1);
    assert_money(&t, &w, "100.00", "10.00", "90.00").await;
    // The same key on another wallet is another hold.
    let other = held(r, &t.operator(), ask(&bw, "1.00", "k-1")).await;
    assert_ne!(other, h1);

    // captureHold.
    let once = captured(r, &alice, &h1, Some("3.00"), "c-1").await;
    let replay = captured(r, &alice, &h1, Some("3.00"), "c-1").await;
    assert_eq!(replay, once, "no second capture");
    let body = capture(r, &alice, &h1, Some("4.00"), "c-1").await;
    refused(&body, "IDEMPOTENCY_CONFLICT");
    // A capture's key is its journal row's: an earlier withdrawal's key conflicts.
    assert!(t.withdraw(&alice, &w, "1.00", "wd-1").await["errors"].is_null());
    let body = capture(r, &alice, &h1, Some("1.00"), "wd-1").await;
    refused(&body, "IDEMPOTENCY_CONFLICT");
    assert_eq!(hold_state(&t, &h1).await, once);
    assert_money(&t, &w, "96.00", "7.00", "89.00").await;

    // A replay of the capture that completed a hold returns it, not HOLD_NOT_ACTIVE.
    let h2 = held(r, &alice, ask(&w, "5.00", "k-2")).await;
    let all = captured(r, &alice, &h2, None, "c-all").await;
    assert_eq!(state(&all), st("CAPTURED", "5.00", "5.00", "0.00", "0.00"));
    assert_eq!(captured(r, &alice, &h2, None, "c-all").await, all);
    assert_money(&t, &w, "91.00", "7.00", "84.00").await;

    // voidHold: a replay returns the voided hold; the key is the hold's own.
    let gone = voided(r, &alice, &h1, "v-1").await;
    assert_eq!(state(&gone), st("VOIDED", "10.00", "3.00", "0.00", "7.00"));
    let replay = voided(r, &alice, &h1, "v-1").await;
    assert_eq!(replay, gone);
    assert_eq!(kinds(&replay), ["AUTHORIZED", "CAPTURED", "VOIDED"]);
    assert_money(&t, &w, "91.00", "0.00", "91.00").await;
    let h3 = held(r, &alice, ask(&w, "2.00", "k-3")).await;
    let v3 = voided(r, &alice, &h3, "v-1").await;
    assert_eq!(state(&v3), st("VOIDED", "2.00", "0.00", "0.00", "2.00"));
    assert_money(&t, &w, "91.00", "0.00", "91.00").await;

    // setCreditLimit.
    let set = set_limit(&t, &w, "50.00", "cl-1", "approved").await;
    assert_eq!(
        set["data"]["setCreditLimit"]["creditLimit"], "50.00",
        "{set}"
    );
    let replay = set_limit(&t, &w, "50.00", "cl-1", "approved").await;
    assert_eq!(replay["data"], set["data"], "{replay}");
    for (limit, reason) in [("60.00", "approved"), ("50.00", "another reason")] {
        let body = set_limit(&t, &w, limit, "cl-1", reason).await;
        refused(&body, "IDEMPOTENCY_CONFLICT");
    }
    let changes = t.ok(&t.operator(), CHANGES, json!({ "w": w })).await;
    assert_eq!(changes["wallet"]["creditLimit"], "50.00");
    let edges = changes["wallet"]["creditLimitChanges"]["edges"].as_array();
    assert_eq!(edges.unwrap().len(), 1, "one change: {changes}");
    assert_money(&t, &w, "91.00", "0.00", "141.00").await;
    assert_eq!(t.assert_chain(&w).await, 4);
    t.assert_balanced().await;
    let listed: Vec<String> = holds(&t, &w, None).await.iter().map(id_of).collect();
    assert_eq!(listed, [h1, h2, h3], "Wallet.holds lists oldest first");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_and_reserve_nothing() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let eur = t.create_wallet("alice", "EUR").await;
    let btc = t.create_wallet("alice", "BTC").await;
    t.deposit(&w, "50.00", "fund").await;
    let (alice, r) = (t.user("alice"), &t.router);
    let ahead = |days: i64| json!(rfc(Utc::now() + chrono::Duration::days(days)));
    let cases = [
        ("0.00", None, "INVALID_AMOUNT"),
        ("-5.00", None, "INVALID_AMOUNT"),
        ("1.001", None, "INVALID_AMOUNT"),
        (
            "1.00",
            Some(("expiresAt", json!(in_secs(-60)))),
            "BAD_USER_INPUT",
        ),
        ("1.00", Some(("expiresAt", ahead(31))), "BAD_USER_INPUT"),
        (
            "1.00",
            Some(("toWalletId", json!(eur))),
            "CURRENCY_MISMATCH",
        ),
        (
            "0.1",
            Some(("walletId", json!(btc))),
            "CURRENCY_NOT_SUPPORTED",
        ),
        ("50.01", None, "INSUFFICIENT_FUNDS"),
    ];
    for (i, (amount, extra, code)) in cases.into_iter().enumerate() {
        let mut input = ask(&w, amount, &format!("bad-{i}"));
        if let Some((field, value)) = extra {
            input[field] = value;
        }
        let body = authorize(r, &alice, input.clone()).await;
        assert_eq!(error_code(&body), code, "{input}: {body}");
    }
    for wallet in [&w, &eur, &btc] {
        assert!(holds(&t, wallet, None).await.is_empty(), "nothing reserved");
    }
    assert_money(&t, &w, "50.00", "0.00", "50.00").await;
    assert_eq!(money(&t, &eur).await["heldBalance"], "0.00");

    // Everything, 29 days ahead, is fine; then nothing more may be reserved or withdrawn.
    let mut input = ask(&w, "50.00", "all");
    input["expiresAt"] = ahead(29);
    let id = held(r, &alice, input).await;
    let body = authorize(r, &alice, ask(&w, "0.01", "one-more")).await;
    refused(&body, "INSUFFICIENT_FUNDS");
    let body = t.withdraw(&alice, &w, "0.01", "wd").await;
    refused(&body, "INSUFFICIENT_FUNDS");
    assert_money(&t, &w, "50.00", "50.00", "0.00").await;
    voided(r, &alice, &id, "v").await;
    assert_money(&t, &w, "50.00", "0.00", "50.00").await;

    // Credit limits.
    for (wallet, limit, reason, code) in [
        (&w, "-1.00", "bad", "INVALID_AMOUNT"),
        (&w, "10.00", "  ", "BAD_USER_INPUT"),
        (&w, "10.00", "", "BAD_USER_INPUT"),
        (&btc, "1", "crypto", "CURRENCY_NOT_SUPPORTED"),
    ] {
        let body = set_limit(&t, wallet, limit, &format!("cl-{code}-{limit}"), reason).await;
        assert_eq!(error_code(&body), code, "{limit} {reason:?}: {body}");
    }
    let changes = t.ok(&t.operator(), CHANGES, json!({ "w": w })).await;
    assert_eq!(changes["wallet"]["creditLimit"], "0.00");
    assert_eq!(changes["wallet"]["creditLimitChanges"]["edges"], json!([]));
    assert_eq!(t.assert_chain(&w).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_are_their_owners_and_credit_is_the_operators() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.create_wallet("bob", "USD").await;
    t.deposit(&w, "20.00", "fund").await;
    let (alice, bob, r) = (t.user("alice"), t.user("bob"), &t.router);
    let id = held(r, &alice, ask(&w, "5.00", "h")).await;

    refused(&authorize(r, &bob, ask(&w, "5.00", "h")).await, "NOT_FOUND");
    let body = capture(r, &bob, &id, Some("1.00"), "steal").await;
    refused(&body, "NOT_FOUND");
    refused(&void(r, &bob, &id, "spoil").await, "NOT_FOUND");
    let body = t.gql(Some(&bob), HOLD, json!({ "id": id })).await;
    assert!(
        body["data"]["node"].is_null() && body.get("errors").is_none(),
        "{body}"
    );
    let body = t.gql(Some(&bob), HOLDS, json!({ "w": w })).await;
    refused(&body, "NOT_FOUND");
    let body = set_limit(&t, &w, "10.00", "x", "x").await;
    assert!(body.get("errors").is_none(), "operators may: {body}");
    let input = json!({"walletId": w, "limit": "1000.00", "idempotencyKey": "mine",
                       "reason": "please"});
    let body = t.gql(Some(&alice), SET_LIMIT, json!({ "in": input })).await;
    refused(&body, "FORBIDDEN");

    // The operator acts on any hold.
    let h = captured(r, &t.operator(), &id, Some("1.00"), "op-c").await;
    assert_eq!(h["events"][1]["actor"], "back-office");
    assert_money(&t, &w, "19.00", "4.00", "25.00").await;
    assert_eq!(money(&t, &w).await["creditLimit"], "10.00");
}

/// 50 captures of 3.00 race on a hold of 100.00 through three processes: 33 fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_captures_take_exactly_the_hold() {
    let _turn = THREE_INSTANCES.acquire().await.unwrap();
    let f = fleet().await;
    let t = &f.t;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "150.00", "fund").await;
    let alice = t.user("alice");
    let id = held(&t.router, &alice, ask(&w, "100.00", "big")).await;
    let results = joined((0..50).map(|i| {
        let (f, id, alice) = (f.clone(), id.clone(), alice.clone());
        tokio::spawn(async move {
            capture(f.router(i), &alice, &id, Some("3.00"), &format!("cc-{i}")).await
        })
    }))
    .await;
    let ok = results.iter().filter(|b| b.get("errors").is_none()).count();
    for body in results.iter().filter(|b| b.get("errors").is_some()) {
        refused(body, "HOLD_EXCEEDED");
    }
    assert_eq!(ok, 33, "exactly what the hold covers");
    let h = hold_state(t, &id).await;
    assert_eq!(state(&h), st("ACTIVE", "100.00", "99.00", "1.00", "0.00"));
    let captures = h["captures"].as_array().unwrap();
    assert_eq!(captures.len(), 33);
    assert!(
        captures
            .iter()
            .all(|c| c["settlesHold"]["id"] == id.as_str())
    );
    assert_eq!(kinds(&h).iter().filter(|k| *k == "CAPTURED").count(), 33);
    assert_money(t, &w, "51.00", "1.00", "50.00").await;
    let h = captured(&t.router, &alice, &id, None, "rest").await;
    assert_eq!(
        state(&h),
        st("CAPTURED", "100.00", "100.00", "0.00", "0.00")
    );
    assert_money(t, &w, "50.00", "0.00", "50.00").await;
    assert_eq!(t.assert_chain(&w).await, 35);
    t.assert_balanced().await;
}

/// A capture and a void of one hold race through two processes: exactly one order won.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_racing_a_void_has_one_outcome() {
    let _turn = THREE_INSTANCES.acquire().await.unwrap();
    let f = fleet().await;
    let t = &f.t;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "100.00", "fund").await;
    let alice = t.user("alice");
    let mut balance = cents(10000);
    for round in 0..12usize {
        let input = ask(&w, "10.00", &format!("h-{round}"));
        let id = held(f.router(round), &alice, input).await;
        // Even rounds capture part of the hold, odd rounds all of it.
        let amount = (round % 2 == 0).then_some("4.00");
        let (ck, vk) = (format!("c-{round}"), format!("v-{round}"));
        let (c, v) = tokio::join!(
            capture(f.router(round + 1), &alice, &id, amount, &ck),
            void(f.router(round + 2), &alice, &id, &vk),
        );
        let h = hold_state(t, &id).await;
        let took = c.get("errors").is_none();
        if !took {
            refused(&c, "HOLD_NOT_ACTIVE");
        }
        match (amount, took) {
            (Some(_), true) => {
                assert!(v.get("errors").is_none(), "{v}");
                assert_eq!(state(&h), st("VOIDED", "10.00", "4.00", "0.00", "6.00"));
                balance -= cents(400);
            }
            (None, true) => {
                refused(&v, "HOLD_NOT_ACTIVE");
                assert_eq!(state(&h), st("CAPTURED", "10.00", "10.00", "0.00", "0.00"));
                balance -= cents(1000);
            }
            (_, false) => {
                assert!(v.get("errors").is_none(), "{v}");
                assert_eq!(state(&h), st("VOIDED", "10.00", "0.00", "0.00", "10.00"));
                assert_eq!(h["captures"], json!([]));
            }
        }
        let m = money(t, &w).await;
        assert_eq!(dec(&m["balance"]), balance, "round {round}: {m}");
        assert_eq!(m["heldBalance"], "0.00");
        assert_eq!(m["availableBalance"], m["balance"]);
    }
    assert_consistent(t, &w).await;
}

/// Captures sent around the moment holds expire: each happened before the expiry (which
/// then released the rest) or was refused, and none sent after the expiry passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_racing_the_expiry_has_one_outcome() {
    let t = Arc::new(expiring().await);
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "200.00", "fund").await;
    let alice = t.user("alice");
    let expiry = Utc::now() + chrono::Duration::seconds(4);
    let offsets = [-800i64, -400, -150, -50, -20, 0, 20, 50, 100, 200, 400, 800];
    let mut ids = Vec::new();
    for i in 0..offsets.len() {
        let mut input = ask(&w, "10.00", &format!("h-{i}"));
        input["expiresAt"] = json!(rfc(expiry));
        ids.push(held(&t.router, &alice, input).await);
    }
    let results = joined(ids.iter().zip(offsets).map(|(id, offset)| {
        let (t, id, alice) = (t.clone(), id.clone(), alice.clone());
        tokio::spawn(async move {
            let at = expiry + chrono::Duration::milliseconds(offset);
            tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await;
            let key = format!("c{offset}");
            capture(&t.router, &alice, &id, Some("4.00"), &key).await
        })
    }))
    .await;
    for id in &ids {
        wait_until("every hold expired", Duration::from_secs(10), || async {
            hold_state(&t, id).await["status"] != "ACTIVE"
        })
        .await;
    }
    let mut took = 0;
    for ((id, offset), body) in ids.iter().zip(offsets).zip(&results) {
        let h = hold_state(&t, id).await;
        if body.get("errors").is_none() {
            assert!(offset < 20, "captured {offset} ms after the expiry: {body}");
            assert_eq!(state(&h), st("EXPIRED", "10.00", "4.00", "0.00", "6.00"));
            assert_eq!(kinds(&h), ["AUTHORIZED", "CAPTURED", "EXPIRED"]);
            took += 1;
        } else {
            assert_eq!(error_code(body), "HOLD_NOT_ACTIVE", "{offset} ms: {body}");
            assert_eq!(state(&h), st("EXPIRED", "10.00", "0.00", "0.00", "10.00"));
            assert_eq!(kinds(&h), ["AUTHORIZED", "EXPIRED"]);
        }
    }
    let (balance, held) = assert_consistent(&t, &w).await;
    assert_eq!((balance, held), (cents(20000 - 400 * took), Decimal::ZERO));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credit_limit_lets_the_balance_go_negative_and_no_further() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let bob = t.create_wallet("bob", "USD").await;
    let (alice, r) = (t.user("alice"), &t.router);
    let trial = |customers: &'static str, bank: &'static str| {
        let t = &t;
        async move {
            let trial = t.assert_balanced().await;
            assert_eq!(trial["USD"].0, customers, "{trial:?}");
            assert_eq!(trial["USD"].2["bank"], bank, "{trial:?}");
        }
    };
    let set = set_limit(&t, &w, "100.00", "cl-1", "approved line").await;
    assert_eq!(
        set["data"]["setCreditLimit"],
        json!({"id": w, "balance": "0.00", "creditLimit": "100.00", "availableBalance": "100.00"})
    );
    let body = t.withdraw(&alice, &w, "60.00", "wd-1").await;
    assert_eq!(body["data"]["withdraw"]["balanceAfter"], "-60.00", "{body}");
    assert_money(&t, &w, "-60.00", "0.00", "40.00").await;
    trial("-60.00", "60.00").await;

    let body = authorize(r, &alice, ask(&w, "50.00", "h-1")).await;
    refused(&body, "INSUFFICIENT_FUNDS");
    let id = held(r, &alice, ask(&w, "40.00", "h-2")).await;
    assert_money(&t, &w, "-60.00", "40.00", "0.00").await;

    // Lowering the limit below what is used is allowed; then no new debit passes.
    let set = set_limit(&t, &w, "20.00", "cl-2", "risk review").await;
    assert_eq!(
        set["data"]["setCreditLimit"]["creditLimit"], "20.00",
        "{set}"
    );
    assert_money(&t, &w, "-60.00", "40.00", "-80.00").await;
    let transfer = json!({"from": w, "to": bob, "a": "1.00", "k": "tr-1"});
    for body in [
        t.withdraw(&alice, &w, "1.00", "wd-2").await,
        authorize(r, &alice, ask(&w, "1.00", "h-3")).await,
        t.gql(Some(&alice), TRANSFER, transfer).await,
    ] {
        refused(&body, "INSUFFICIENT_FUNDS");
    }
    // What was reserved is still captured.
    let h = captured(r, &alice, &id, None, "c-1").await;
    assert_eq!(state(&h), st("CAPTURED", "40.00", "40.00", "0.00", "0.00"));
    assert_eq!(
        pick(&h["captures"][0], &ROW),
        row("WITHDRAW", "40.00", "-60.00", "-100.00", &id)
    );
    assert_money(&t, &w, "-100.00", "0.00", "-80.00").await;
    trial("-100.00", "100.00").await;

    // Deposits still work, and once the balance recovers debits pass again.
    let body = t.deposit(&w, "150.00", "dep-1").await;
    assert_eq!(body["data"]["deposit"]["balanceAfter"], "50.00", "{body}");
    assert_money(&t, &w, "50.00", "0.00", "70.00").await;
    assert!(t.withdraw(&alice, &w, "1.00", "wd-3").await["errors"].is_null());
    assert_money(&t, &w, "49.00", "0.00", "69.00").await;
    trial("49.00", "-49.00").await;

    let changes = t.ok(&t.operator(), CHANGES, json!({ "w": w })).await;
    assert_eq!(
        changes["wallet"]["creditLimitChanges"]["edges"],
        json!([
            {"node": {"previousLimit": "0.00", "limit": "100.00", "reason": "approved line",
                      "changedBy": "back-office"}},
            {"node": {"previousLimit": "100.00", "limit": "20.00", "reason": "risk review",
                      "changedBy": "back-office"}},
        ])
    );
    assert_eq!(t.assert_chain(&w).await, 4);
}

/// Authorizations, withdrawals, captures and voids race on one wallet with a credit limit
/// through three processes: the wallet never spends more than balance plus limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_and_withdrawals_racing_respect_the_credit_limit() {
    let _turn = THREE_INSTANCES.acquire().await.unwrap();
    let f = fleet().await;
    let t = &f.t;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "50.00", "fund").await;
    let set = set_limit(t, &w, "50.00", "cl", "line").await;
    assert!(set.get("errors").is_none(), "{set}");
    let alice = t.user("alice");

    // Round 1: 30 holds of 5.00 and 30 withdrawals of 3.00 for 100.00 available.
    let results = joined((0..60).map(|i| {
        let (f, w, alice) = (f.clone(), w.clone(), alice.clone());
        tokio::spawn(async move {
            if i % 2 == 0 {
                authorize(f.router(i), &alice, ask(&w, "5.00", &format!("h-{i}"))).await
            } else {
                f.withdraw(i, &alice, &w, "3.00", &format!("w-{i}")).await
            }
        })
    }))
    .await;
    let mut held_ids = Vec::new();
    let (mut withdrawn, mut hold_refused, mut withdraw_refused) = (0, false, false);
    for (i, body) in results.iter().enumerate() {
        match (body.get("errors").is_none(), i % 2 == 0) {
            (true, true) => held_ids.push(id_of(&body["data"]["authorizeHold"])),
            (true, false) => withdrawn += 1,
            (false, is_hold) => {
                refused(body, "INSUFFICIENT_FUNDS");
                hold_refused |= is_hold;
                withdraw_refused |= !is_hold;
            }
        }
    }
    let (balance, held) = assert_consistent(t, &w).await;
    assert_eq!(balance, cents(5000 - 300 * withdrawn));
    assert_eq!(held, cents(500 * held_ids.len() as i64));
    // Refusals were genuine: what they asked for was not available then, nor later.
    let available = balance + cents(5000) - held;
    assert!(!hold_refused || available < cents(500), "{available}");
    assert!(!withdraw_refused || available < cents(300), "{available}");
    assert!(
        hold_refused || withdraw_refused,
        "the race must run out of credit"
    );

    // Round 2: each hold captured in part, captured finally or voided, while more
    // withdrawals and holds race for what that gives back.
    let n = held_ids.len();
    let results = joined((0..n + 30).map(|i| {
        let (f, w, alice) = (f.clone(), w.clone(), alice.clone());
        let id = held_ids.get(i).cloned();
        tokio::spawn(async move {
            let r = f.router(i);
            match (id, i % 3) {
                (Some(id), 0) => capture(r, &alice, &id, Some("2.00"), &format!("c-{i}")).await,
                (Some(id), 1) => capture_final(r, &alice, &id, "1.00", &format!("f-{i}")).await,
                (Some(id), _) => void(r, &alice, &id, &format!("v-{i}")).await,
                (None, 0) => authorize(r, &alice, ask(&w, "4.00", &format!("h2-{i}"))).await,
                (None, _) => f.withdraw(i, &alice, &w, "3.00", &format!("w2-{i}")).await,
            }
        })
    }))
    .await;
    let (mut new_holds, mut spent) = (0, Decimal::ZERO);
    for (i, body) in results.iter().enumerate() {
        if i < n {
            assert!(
                body.get("errors").is_none(),
                "reserved funds settle: {body}"
            );
            spent += cents([200, 100, 0][i % 3]);
        } else if body.get("errors").is_some() {
            refused(body, "INSUFFICIENT_FUNDS");
        } else if i % 3 == 0 {
            new_holds += 1;
        } else {
            spent += cents(300);
        }
    }
    let partial = (0..n).filter(|i| i % 3 == 0).count() as i64;
    let (after, held) = assert_consistent(t, &w).await;
    assert_eq!(after, balance - spent);
    assert_eq!(held, cents(300 * partial + 400 * new_holds));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_hold_gives_its_rest_back_once() {
    let t = expiring().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "20.00", "fund").await;
    let (alice, r) = (t.user("alice"), &t.router);
    let mut input = ask(&w, "8.00", "soon");
    input["expiresAt"] = json!(in_secs(2));
    let id = held(r, &alice, input).await;
    captured(r, &alice, &id, Some("3.00"), "c").await;
    assert_money(&t, &w, "17.00", "5.00", "12.00").await;
    wait_until("the hold expires", Duration::from_secs(10), || async {
        hold_state(&t, &id).await["status"] == "EXPIRED"
    })
    .await;
    let h = hold_state(&t, &id).await;
    assert_eq!(state(&h), st("EXPIRED", "8.00", "3.00", "0.00", "5.00"));
    assert_eq!(kinds(&h), ["AUTHORIZED", "CAPTURED", "EXPIRED"]);
    assert_eq!(
        pick(&h["events"][2], &["released", "transaction"]),
        json!({"released": "5.00", "transaction": null})
    );
    assert_money(&t, &w, "17.00", "0.00", "17.00").await;
    let body = capture(r, &alice, &id, Some("1.00"), "late").await;
    refused(&body, "HOLD_NOT_ACTIVE");
    refused(&void(r, &alice, &id, "late-void").await, "HOLD_NOT_ACTIVE");
    // Later passes of the worker release nothing more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(hold_state(&t, &id).await, h);
    assert_money(&t, &w, "17.00", "0.00", "17.00").await;
    assert_eq!(t.assert_chain(&w).await, 2);
}

/// The expiry is kept in the database: a hold whose process was killed before it expired
/// is expired by the next process.
#[tokio::test(flavor = "multi_thread")]
async fn a_hold_expires_after_a_restart() {
    let db = TestDb::new().await;
    let keys = TokenKeys::new(common::JWT_SECRET.as_bytes());
    let hour = Duration::from_secs(3600);
    let op = keys.mint("back-office", Role::Operator, hour).unwrap();
    let alice = keys.mint("alice", Role::User, hour).unwrap();
    let http = reqwest::Client::new();
    let call = |base: &str, token: &str, query: &'static str, vars: Value| {
        let (http, base, token) = (http.clone(), base.to_owned(), token.to_owned());
        async move {
            let body = post(&http, &base, &token, query, vars).await.unwrap();
            assert!(body.get("errors").is_none(), "{body}");
            body["data"].clone()
        }
    };
    let mut server = ServerProcess::start(&db.url).await;
    let create = "mutation { createWallet(input: {currency: \"USD\"}) { id } }";
    let created = call(&server.base, &alice, create, json!({})).await;
    let w = created["createWallet"]["id"].as_str().unwrap().to_owned();
    let deposit = json!({"w": w, "a": "20.00", "k": "fund"});
    call(&server.base, &op, common::DEPOSIT, deposit).await;
    let expiry = Utc::now() + chrono::Duration::seconds(3);
    let mut input = ask(&w, "6.00", "h");
    input["expiresAt"] = json!(rfc(expiry));
    let h = call(&server.base, &alice, AUTHORIZE, json!({ "in": input })).await;
    let id = id_of(&h["authorizeHold"]);
    assert_eq!(h["authorizeHold"]["status"], "ACTIVE");
    server.kill();
    // Down until well past the expiry: only the next process can expire it.
    let down = expiry + chrono::Duration::milliseconds(1500) - Utc::now();
    tokio::time::sleep(down.to_std().unwrap_or_default()).await;
    let server = ServerProcess::start(&db.url).await;
    let read = || call(&server.base, &op, HOLD, json!({ "id": id }));
    wait_until("the hold expires", Duration::from_secs(15), || async {
        read().await["node"]["status"] == "EXPIRED"
    })
    .await;
    let h = read().await["node"].clone();
    assert_eq!(state(&h), st("EXPIRED", "6.00", "0.00", "0.00", "6.00"));
    assert_eq!(kinds(&h), ["AUTHORIZED", "EXPIRED"]);
    let m = call(&server.base, &op, MONEY, json!({ "w": w })).await;
    assert_eq!(
        pick(
            &m["wallet"],
            &["balance", "heldBalance", "availableBalance"]
        ),
        json!({"balance": "20.00", "heldBalance": "0.00", "availableBalance": "20.00"})
    );
}

/// Reconciliation counts a capture like any withdrawal, holds that moved nothing not at
/// all, and a negative balance like any other.
#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_counts_captures_and_negative_balances() {
    const RECONCILE: &str = "mutation($w: ID!, $b: Decimal!) { reconcileWallet(input: {
      walletId: $w, startTime: \"2000-01-01T00:00:00Z\", endTime: \"2100-01-01T00:00:00Z\",
      externalBalance: $b}) { status systemBalance difference } }";
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let (alice, r) = (t.user("alice"), &t.router);
    t.deposit(&w, "30.00", "fund").await;
    set_limit(&t, &w, "50.00", "cl", "line").await;
    let id = held(r, &alice, ask(&w, "70.00", "h")).await;
    captured(r, &alice, &id, Some("45.50"), "c").await;
    // A second hold, still active: reserved, not moved.
    held(r, &alice, ask(&w, "4.00", "h-2")).await;
    let reconcile = |external: &'static str| {
        let t = &t;
        let w = w.clone();
        async move {
            t.ok(&t.operator(), RECONCILE, json!({"w": w, "b": external}))
                .await["reconcileWallet"]
                .clone()
        }
    };
    assert_eq!(
        reconcile("-15.50").await,
        json!({"status": "MATCHED", "systemBalance": "-15.50", "difference": "0.00"})
    );
    assert_eq!(reconcile("30.00").await["status"], "MISMATCH");
    t.assert_balanced().await;
}

/// Authorisations, captures and withdrawals race on one wallet with a credit limit through
/// three `wallet serve` processes on one database, each group-committing on its own: the
/// wallet never spends beyond its balance and credit, its held balance is exactly what its
/// active holds still reserve, and every acknowledged request happened once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_server_processes_never_spend_beyond_the_credit_limit() {
    let db = TestDb::new().await;
    let keys = TokenKeys::new(common::JWT_SECRET.as_bytes());
    let hour = Duration::from_secs(3600);
    let op = keys.mint("back-office", Role::Operator, hour).unwrap();
    let alice = keys.mint("alice", Role::User, hour).unwrap();
    let small = [
        ("WALLET_DB_POOL_SIZE", "6"),
        ("WALLET_DB_READ_POOL_SIZE", "2"),
    ];
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(ServerProcess::start_with(&db.url, &small).await);
    }
    let bases: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.base.clone()).collect());
    let http = reqwest::Client::new();
    let call = |i: usize, token: &str, query: &'static str, vars: Value| {
        let (http, base, token) = (http.clone(), bases[i % 3].clone(), token.to_owned());
        async move { post(&http, &base, &token, query, vars).await.unwrap() }
    };
    let create = "mutation { createWallet(input: {currency: \"USD\"}) { id } }";
    let w = call(0, &alice, create, json!({})).await["data"]["createWallet"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        1,
        &op,
        common::DEPOSIT,
        json!({"w": w, "a": "50.00", "k": "fund"}),
    )
    .await;
    let limit = json!({"in": {"walletId": w, "limit": "50.00", "idempotencyKey": "cl",
                              "reason": "line"}});
    assert!(call(2, &op, SET_LIMIT, limit).await.get("errors").is_none());

    // 40 holds of 4.00 and 40 withdrawals of 3.00 for 100.00 available.
    let answers = join_all((0..80).map(|i| {
        let (w, alice) = (w.clone(), alice.clone());
        let call = &call;
        async move {
            if i % 2 == 0 {
                let input = ask(&w, "4.00", &format!("h-{i}"));
                call(i, &alice, AUTHORIZE, json!({ "in": input })).await
            } else {
                let vars = json!({"w": w, "a": "3.00", "k": format!("w-{i}")});
                call(i, &alice, common::WITHDRAW, vars).await
            }
        }
    }))
    .await;
    let mut holds = Vec::new();
    let mut withdrawn = 0i64;
    for (i, body) in answers.iter().enumerate() {
        if body.get("errors").is_some() {
            refused(body, "INSUFFICIENT_FUNDS");
        } else if i % 2 == 0 {
            holds.push(id_of(&body["data"]["authorizeHold"]));
        } else {
            withdrawn += 1;
        }
    }
    assert!(
        holds.len() as i64 * 4 + withdrawn * 3 <= 100,
        "{holds:?} {withdrawn}"
    );
    // Capture each hold whole through another process than the one that made it, while
    // more withdrawals race for nothing.
    let answers = join_all(holds.iter().enumerate().map(|(i, id)| {
        let (alice, id) = (alice.clone(), id.clone());
        let call = &call;
        async move {
            let input = json!({"holdId": id, "idempotencyKey": format!("c-{i}")});
            call(i + 1, &alice, CAPTURE, json!({ "in": input })).await
        }
    }))
    .await;
    for body in &answers {
        assert_eq!(body["data"]["captureHold"]["status"], "CAPTURED", "{body}");
    }
    let pg = db.client().await;
    let row = pg
        .query_one(
            "SELECT balance::text, held_balance::text, credit_limit::text,
                    (SELECT count(*) FROM transactions t WHERE t.wallet_id = w.id
                        AND t.settles_hold_id IS NOT NULL),
                    (SELECT count(*) FROM holds h WHERE h.wallet_id = w.id
                        AND h.status = 'CAPTURED')
               FROM wallets w WHERE w.id = $1",
            &[&common::db_id(&w)],
        )
        .await
        .unwrap();
    let figure = |i: usize| row.get::<_, String>(i).parse::<Decimal>().unwrap();
    let spent = Decimal::from(4 * holds.len() as i64 + 3 * withdrawn);
    assert_eq!(figure(0), Decimal::from(50) - spent);
    assert!(figure(0) >= -figure(2), "never below the credit limit");
    assert_eq!(
        figure(1),
        Decimal::ZERO,
        "nothing held once every hold is captured"
    );
    assert_eq!(
        row.get::<_, i64>(3),
        holds.len() as i64,
        "one row per capture"
    );
    assert_eq!(row.get::<_, i64>(4), holds.len() as i64);
    drop(servers);
}

/// A capture behind a hold locked elsewhere (another session holds its row `FOR UPDATE`
/// past the request's deadline) is answered by the deadline with a refusal that did
/// nothing, and the same key afterwards captures once.
#[tokio::test(flavor = "multi_thread")]
async fn a_capture_behind_a_locked_hold_is_answered_truthfully() {
    let t = TestApp::with(Options {
        request_timeout: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "20.00", "fund").await;
    let (alice, r) = (t.user("alice"), &t.router);
    let id = held(r, &alice, ask(&w, "10.00", "h")).await;
    let mut holder = t.db.client().await;
    let lock = holder.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM holds WHERE id = $1 FOR UPDATE",
        &[&common::db_id(&id)],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let body = capture(r, &alice, &id, Some("4.00"), "c").await;
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "answered by the deadline: {:?}",
        started.elapsed()
    );
    refused(&body, "UNAVAILABLE");
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.rollback().await.unwrap();
    assert_money(&t, &w, "20.00", "10.00", "10.00").await;
    assert_eq!(kinds(&hold_state(&t, &id).await), ["AUTHORIZED"]);
    let h = captured(r, &alice, &id, Some("4.00"), "c").await;
    assert_eq!(state(&h), st("ACTIVE", "10.00", "4.00", "6.00", "0.00"));
    assert_money(&t, &w, "16.00", "6.00", "10.00").await;
    assert_eq!(t.assert_chain(&w).await, 2);
}
