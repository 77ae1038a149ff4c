//! Webhooks end to end: real service instances (in-process apps and `wallet serve`
//! processes) on a real database deliver the event feed to a real HTTP receiver
//! (`tests/node/webhook-receiver.mjs`, which verifies every signature with the reference
//! Standard Webhooks library). Each delivery is compared with `Query.events`: every event,
//! in feed order, signed, retried with the documented backoff, never lost — also when the
//! receiver is down, answers 4xx, fails until the endpoint is disabled, or when the
//! process sending is killed mid-attempt.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, Utc};
use common::process::{ServerProcess, post};
use common::receiver::{Receiver, Record, new_secret};
use common::{DEPOSIT, JWT_SECRET, Options, TestApp, TestDb, WITHDRAW, error_code, gql_to};
use serde_json::{Value, json};
use wallet::auth::{Role, TokenKeys, TokenPolicy};
use wallet::events::webhook::WebhookConfig;

const ALL_TYPES: [&str; 10] = [
    "TRANSACTION_CREATED",
    "TRANSACTION_UPDATED",
    "WALLET_UPDATED",
    "HOLD_AUTHORIZED",
    "HOLD_CAPTURED",
    "HOLD_VOIDED",
    "HOLD_EXPIRED",
    "RECONCILIATION_RECORDED",
    "BALANCE_ALERT",
    "WEBHOOK_ENDPOINT_DISABLED",
];

const CREATE: &str = "mutation($in: CreateWebhookEndpointInput!) {
  createWebhookEndpoint(input: $in) {
    id url eventTypes walletIds description status disabledReason secret position
    failingSince createdAt } }";
const ENDPOINTS: &str = "{ webhookEndpoints {
  id url eventTypes walletIds description status disabledReason secret position
  failingSince createdAt } }";
const ROTATE: &str = "mutation($id: ID!) { rotateWebhookSecret(id: $id) { id secret status } }";
const ENABLE: &str =
    "mutation($id: ID!) { enableWebhookEndpoint(id: $id) { id status disabledReason secret } }";
const DELIVERY_FIELDS: &str = "id eventId sequence eventType status attemptCount nextAttemptAt
  lastResponseCode lastError body redeliveryOf createdAt completedAt
  attempts { attemptedAt latencyMs responseCode error succeeded }";
const REDELIVER: &str = "mutation($id: ID!) { redeliverWebhook(deliveryId: $id) {
  id eventId sequence eventType status attemptCount body redeliveryOf } }";
const EVENTS: &str = "query($after: String, $types: [EventType!], $w: ID) {
  events(after: $after, first: 100, types: $types, walletId: $w) {
    position head pageInfo { hasNextPage }
    nodes { id sequence type wallet { id } transaction { id walletId }
            webhookEndpoint { id url reason } } } }";
const TRANSFER: &str = "mutation($from: ID!, $to: ID!, $a: Decimal!, $k: String!) {
  transfer(input: {fromWalletId: $from, toWalletId: $to, amount: $a, idempotencyKey: $k}) { id } }";

/// Strong secret for the production process (as `openssl rand -hex 32` makes).
const STRONG_SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Short timings: retries after 200 ms, 400 ms, 800 ms, … up to 2 s.
fn fast(disable_after: Duration) -> WebhookConfig {
    WebhookConfig {
        retry_base: Duration::from_millis(200),
        retry_max: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        lease: Duration::from_secs(2),
        poll: Duration::from_millis(100),
        disable_after,
        ..WebhookConfig::default()
    }
}

/// A service instance that sends webhooks, with a small pool.
async fn sending_app(disable_after: Duration) -> TestApp {
    TestApp::with(Options {
        pool_size: 4,
        webhooks: Some(fast(disable_after)),
        ..Options::default()
    })
    .await
}

/// Where GraphQL goes: an in-process router or a `wallet serve` process.
#[derive(Clone)]
enum Api {
    App(Router),
    Http(reqwest::Client, String),
}

impl Api {
    fn http(base: &str) -> Api {
        Api::Http(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base.to_owned(),
        )
    }

    async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        match self {
            Api::App(router) => gql_to(router, Some(token), query, variables).await,
            Api::Http(http, base) => post(http, base, token, query, variables)
                .await
                .unwrap_or_else(|e| panic!("{base}: no answer: {e}")),
        }
    }

    /// Expects success; returns `data`.
    async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let body = self.gql(token, query, variables).await;
        assert!(
            body.get("errors").is_none(),
            "unexpected errors for {query}: {body}"
        );
        body["data"].clone()
    }

    async fn create_endpoint(
        &self,
        op: &str,
        url: &str,
        types: &[&str],
        wallets: Option<&[&str]>,
    ) -> Value {
        let data = self
            .ok(
                op,
                CREATE,
                json!({"in": {"url": url, "eventTypes": types, "walletIds": wallets,
                              "description": "test receiver"}}),
            )
            .await;
        let endpoint = data["createWebhookEndpoint"].clone();
        assert_eq!(endpoint["status"], "ENABLED", "{endpoint}");
        assert!(
            endpoint["secret"]
                .as_str()
                .is_some_and(|s| s.starts_with("whsec_")),
            "the create answer shows the secret: {endpoint}"
        );
        endpoint
    }

    async fn endpoints(&self, op: &str) -> Vec<Value> {
        self.ok(op, ENDPOINTS, json!({})).await["webhookEndpoints"]
            .as_array()
            .unwrap()
            .clone()
    }

    async fn endpoint(&self, op: &str, id: &str) -> Value {
        self.endpoints(op)
            .await
            .into_iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("endpoint {id} is listed"))
    }

    /// Every delivery of an endpoint, oldest first, with its attempts.
    async fn deliveries(&self, op: &str, endpoint: &str) -> Vec<Value> {
        let query = format!(
            "query($e: ID!, $after: String) {{ webhookDeliveries(endpointId: $e, first: 100,
               after: $after) {{ pageInfo {{ hasNextPage endCursor }} nodes {{ {DELIVERY_FIELDS} }} }} }}"
        );
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let data = self
                .ok(op, &query, json!({"e": endpoint, "after": after}))
                .await;
            let conn = &data["webhookDeliveries"];
            out.extend(conn["nodes"].as_array().unwrap().iter().cloned());
            if !conn["pageInfo"]["hasNextPage"].as_bool().unwrap() {
                return out;
            }
            after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
        }
    }

    /// The endpoint's deliveries once there are `n` and none is pending (the receiver logs
    /// a delivery before it answers, and the sender records it after the answer).
    async fn completed(&self, op: &str, endpoint: &str, n: usize) -> Vec<Value> {
        let mut last = Vec::new();
        let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let deliveries = self.deliveries(op, endpoint).await;
            if deliveries.len() == n && deliveries.iter().all(|d| d["status"] != "PENDING") {
                return deliveries;
            }
            if tokio::time::Instant::now() > give_up {
                panic!("the {n} deliveries never completed: {last:#?}");
            }
            last = deliveries;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every event after `after` (a sequence), of `types` (all when None) and `wallet`,
    /// in feed order, read page by page through `Query.events`.
    async fn feed(
        &self,
        op: &str,
        after: &str,
        types: Option<&[&str]>,
        wallet: Option<&str>,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = after.to_owned();
        loop {
            let data = self
                .ok(
                    op,
                    EVENTS,
                    json!({"after": after, "types": types, "w": wallet}),
                )
                .await;
            let conn = &data["events"];
            out.extend(conn["nodes"].as_array().unwrap().iter().cloned());
            if !conn["pageInfo"]["hasNextPage"].as_bool().unwrap() {
                return out;
            }
            after = conn["position"].as_str().unwrap().to_owned();
        }
    }

    /// Waits until every event written so far is numbered (the feed's head is the number
    /// of events stored: the sequence is gap-free from 1).
    async fn settle(&self, op: &str, pg: &tokio_postgres::Client) {
        let limit = Duration::from_secs(20);
        let give_up = tokio::time::Instant::now() + limit;
        loop {
            let stored: i64 = pg
                .query_one("SELECT count(*) FROM events", &[])
                .await
                .unwrap()
                .get(0);
            let data = self
                .ok(op, "{ events(first: 1) { head } }", json!({}))
                .await;
            let head: i64 = data["events"]["head"].as_str().unwrap().parse().unwrap();
            if head == stored {
                return;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "the feed's head ({head}) never reached the {stored} events stored"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create_wallet(&self, user_token: &str) -> String {
        self.ok(
            user_token,
            "mutation { createWallet(input: {currency: \"USD\"}) { id } }",
            json!({}),
        )
        .await["createWallet"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn deposit(&self, op: &str, wallet: &str, amount: &str, key: &str) {
        self.ok(op, DEPOSIT, json!({"w": wallet, "a": amount, "k": key}))
            .await;
    }

    async fn withdraw(&self, token: &str, wallet: &str, amount: &str, key: &str) {
        self.ok(token, WITHDRAW, json!({"w": wallet, "a": amount, "k": key}))
            .await;
    }

    async fn transfer(&self, token: &str, from: &str, to: &str, amount: &str, key: &str) {
        self.ok(
            token,
            TRANSFER,
            json!({"from": from, "to": to, "a": amount, "k": key}),
        )
        .await;
    }
}

/// Calls `check` every 50 ms until it gives something; panics with `what` after `limit`.
async fn poll<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn count_of(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind).count()
}

fn success(r: &Record) -> bool {
    (200..300).contains(&r.status)
}

/// The first receipt of each webhook-id, in arrival order.
fn first_receipts(records: &[Record]) -> Vec<&Record> {
    let mut seen = HashSet::new();
    records
        .iter()
        .filter(|r| seen.insert(r.id.clone()))
        .collect()
}

/// Whether every id of `expected` was received and answered with a 2xx.
fn has_all(records: &[Record], expected: &[String]) -> bool {
    let ok: HashSet<&str> = records
        .iter()
        .filter(|r| success(r))
        .map(|r| r.id.as_str())
        .collect();
    expected.iter().all(|id| ok.contains(id.as_str()))
}

/// Waits until the receiver has answered every event of `feed` with a 2xx; returns its
/// records.
async fn wait_delivered(receiver: &Receiver, feed: &[Value], limit: Duration) -> Vec<Record> {
    let expected = ids(feed);
    receiver
        .wait_for(|records| has_all(records, &expected), limit)
        .await
}

/// Checks what a receiver got against the feed: every record verified by the reference
/// library and consistent (webhook-id = data.id; a repeated id carries the identical
/// body); the first receipts are exactly the feed's events, in feed order, with their
/// sequence, type, wallet and journal row; each was answered 2xx at some point.
fn check_against_feed(records: &[Record], feed: &[Value]) {
    for r in records {
        assert!(r.verified, "the signature verifies: {r:#?}");
        assert_eq!(
            r.body["data"]["id"], r.id,
            "webhook-id is the event id: {r:#?}"
        );
        assert_eq!(r.body["type"], r.body["data"]["type"], "{r:#?}");
    }
    let mut bodies: HashMap<&str, &Value> = HashMap::new();
    for r in records {
        let first = *bodies.entry(r.id.as_str()).or_insert(&r.body);
        assert_eq!(
            first, &r.body,
            "every delivery of event {} carries the identical body",
            r.id
        );
    }
    let firsts = first_receipts(records);
    let got: Vec<&str> = firsts.iter().map(|r| r.id.as_str()).collect();
    let want = ids(feed);
    if got != want {
        let got_set: HashSet<&str> = got.iter().copied().collect();
        let want_set: HashSet<&str> = want.iter().map(String::as_str).collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|i| !got_set.contains(i.as_str()))
            .collect();
        let extra: Vec<_> = got.iter().filter(|i| !want_set.contains(*i)).collect();
        panic!(
            "the receiver's first receipts are not the feed in order:\n missing {missing:?}\n \
             not in the feed {extra:?}\n received ({}) {got:?}\n feed ({}) {want:?}",
            got.len(),
            want.len()
        );
    }
    let mut previous = 0i64;
    for (r, event) in firsts.iter().zip(feed) {
        let data = &r.body["data"];
        assert_eq!(data["sequence"], event["sequence"], "sequence of {}", r.id);
        assert_eq!(data["type"], event["type"], "type of {}", r.id);
        if !event["wallet"].is_null() {
            assert_eq!(
                data["wallet"]["id"], event["wallet"]["id"],
                "wallet of {}",
                r.id
            );
        }
        if !event["transaction"].is_null() {
            assert_eq!(
                data["transaction"]["id"], event["transaction"]["id"],
                "journal row of {}",
                r.id
            );
            assert_eq!(
                data["transaction"]["wallet"], event["transaction"]["walletId"],
                "journal row's wallet of {}",
                r.id
            );
        }
        if !event["webhookEndpoint"].is_null() {
            assert_eq!(
                data["webhookEndpoint"], event["webhookEndpoint"],
                "{}",
                r.id
            );
        }
        let sequence: i64 = data["sequence"].as_str().unwrap().parse().unwrap();
        assert!(
            sequence > previous,
            "first receipts in strictly increasing sequence: {sequence} after {previous}"
        );
        previous = sequence;
    }
    assert!(
        has_all(records, &want),
        "every event was answered 2xx at least once"
    );
}

fn at(attempt: &Value) -> DateTime<Utc> {
    attempt["attemptedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("attemptedAt of {attempt}: {e}"))
}

fn millis(from: &Value, to: &Value) -> i64 {
    (at(to) - at(from)).num_milliseconds()
}

/// The gap after the n-th failed attempt (n ≥ 1) is the backoff min(200 ms·2^(n−1), 2 s)
/// plus up to a quarter more (and scheduling slack).
fn check_backoff(attempts: &[Value]) {
    const SLACK_MS: f64 = 300.0;
    let gaps: Vec<i64> = attempts.windows(2).map(|w| millis(&w[0], &w[1])).collect();
    eprintln!("gaps between attempts (ms): {gaps:?}");
    for n in 1..attempts.len() {
        let failed = &attempts[n - 1];
        assert_eq!(
            failed["succeeded"], false,
            "only the last attempt succeeds: {attempts:#?}"
        );
        let wait = (200.0 * 2f64.powi(n as i32 - 1)).min(2000.0);
        let gap = (at(&attempts[n]) - at(failed)).num_microseconds().unwrap() as f64 / 1000.0;
        assert!(
            gap >= wait - 2.0 && gap <= wait * 1.25 + SLACK_MS,
            "gap after failed attempt {n} is {gap:.1} ms; expected {wait} ms to {} ms \
             (+{SLACK_MS} ms slack): {attempts:#?}",
            wait * 1.25
        );
    }
}

/// Three funded USD wallets (a user has one per currency): alice's w1, carol's w2, bob's
/// w3, funded before the test's endpoints exist.
struct Wallets {
    alice: String,
    carol: String,
    w1: String,
    w2: String,
    w3: String,
}

async fn wallets(api: &Api, op: &str, keys: &TokenKeys) -> Wallets {
    let alice = keys
        .mint("alice", Role::User, Duration::from_secs(600))
        .unwrap();
    let bob = keys
        .mint("bob", Role::User, Duration::from_secs(600))
        .unwrap();
    let carol = keys
        .mint("carol", Role::User, Duration::from_secs(600))
        .unwrap();
    let w = Wallets {
        w1: api.create_wallet(&alice).await,
        w2: api.create_wallet(&carol).await,
        w3: api.create_wallet(&bob).await,
        alice,
        carol,
    };
    assert!(w.w1 != w.w2 && w.w2 != w.w3 && w.w1 != w.w3);
    for (i, wallet) in [&w.w1, &w.w2, &w.w3].into_iter().enumerate() {
        api.deposit(op, wallet, "1000.00", &format!("fund-{i}"))
            .await;
    }
    w
}

/// `n` deposits to w1, one after another (each one journal row).
async fn deposits(api: &Api, op: &str, w: &Wallets, n: usize, tag: &str) {
    for i in 0..n {
        api.deposit(op, &w.w1, "5.00", &format!("{tag}-{i}")).await;
    }
}

fn dev_keys() -> TokenKeys {
    TokenKeys::new(JWT_SECRET.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_ordered_and_complete() {
    let t = sending_app(Duration::from_secs(600)).await;
    let api = Api::App(t.router.clone());
    let op = t.operator();
    let pg = t.db.client().await;
    let w = wallets(&api, &op, &dev_keys()).await;
    // Nothing from before the endpoints exist may reach the receivers unverified.
    api.settle(&op, &pg).await;

    let all = Receiver::start(&new_secret()).await;
    let one = Receiver::start(&new_secret()).await;
    let a = api
        .create_endpoint(&op, &all.url("/all"), &ALL_TYPES, None)
        .await;
    let b = api
        .create_endpoint(
            &op,
            &one.url("/one"),
            &["TRANSACTION_CREATED"],
            Some(&[w.w1.as_str()]),
        )
        .await;
    all.set_secret(a["secret"].as_str().unwrap()).await;
    one.set_secret(b["secret"].as_str().unwrap()).await;
    assert_ne!(a["secret"], b["secret"]);
    assert_eq!(b["walletIds"], json!([w.w1]));
    assert!(a["walletIds"].is_null());

    // The secret is shown in the create answer only.
    let listed = api.endpoints(&op).await;
    assert_eq!(listed.len(), 2, "{listed:#?}");
    for e in &listed {
        assert!(e["secret"].is_null(), "secret shown again: {e}");
    }
    let listed_a = api.endpoint(&op, a["id"].as_str().unwrap()).await;
    let mut types: Vec<&str> = listed_a["eventTypes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    types.sort_unstable();
    let mut all_types = ALL_TYPES.to_vec();
    all_types.sort_unstable();
    assert_eq!(types, all_types);
    let listed_b = api.endpoint(&op, b["id"].as_str().unwrap()).await;
    assert_eq!(listed_b["eventTypes"], json!(["TRANSACTION_CREATED"]));
    assert_eq!(listed_b["walletIds"], json!([w.w1]));

    // 30 movements: 42 journal rows, 18 of them on w1.
    let started = std::time::Instant::now();
    let (mut rows, mut w1_rows) = (0, 0);
    for i in 0..30 {
        let key = format!("m-{i}");
        match i % 5 {
            0 => {
                api.deposit(&op, &w.w1, "10.00", &key).await;
                (rows, w1_rows) = (rows + 1, w1_rows + 1);
            }
            1 => {
                api.deposit(&op, &w.w3, "7.50", &key).await;
                rows += 1;
            }
            2 => {
                api.withdraw(&w.carol, &w.w2, "1.25", &key).await;
                rows += 1;
            }
            3 => {
                api.transfer(&w.alice, &w.w1, &w.w3, "2.00", &key).await;
                (rows, w1_rows) = (rows + 2, w1_rows + 1);
            }
            _ => {
                api.transfer(&w.alice, &w.w1, &w.w2, "3.00", &key).await;
                (rows, w1_rows) = (rows + 2, w1_rows + 1);
            }
        }
    }
    api.settle(&op, &pg).await;
    let feed_a = api
        .feed(&op, a["position"].as_str().unwrap(), None, None)
        .await;
    assert_eq!(
        count_of(&feed_a, "TRANSACTION_CREATED"),
        rows,
        "{feed_a:#?}"
    );
    assert!(count_of(&feed_a, "WALLET_UPDATED") >= 30, "{feed_a:#?}");
    let records = wait_delivered(&all, &feed_a, Duration::from_secs(30)).await;
    eprintln!(
        "{} events delivered to the all-types endpoint {:?} after the movements began",
        feed_a.len(),
        started.elapsed()
    );
    check_against_feed(&records, &feed_a);
    assert_eq!(
        records.len(),
        feed_a.len(),
        "a receiver that always answers 204 gets each event once"
    );
    for r in &records {
        assert_eq!(r.path, "/all");
        assert_eq!(r.status, 204);
        let sent: i64 = r.timestamp.parse().expect("webhook-timestamp in seconds");
        assert!(
            (sent * 1000 - r.received_at_ms).abs() < 5_000,
            "webhook-timestamp is the attempt's time: {r:#?}"
        );
        assert_eq!(
            r.signature.split(' ').count(),
            1,
            "one secret, one signature"
        );
        assert!(r.signature.starts_with("v1,"), "{}", r.signature);
    }
    // The deliveries as the API shows them: one per event, in feed order, one attempt each.
    let deliveries = api
        .completed(&op, a["id"].as_str().unwrap(), feed_a.len())
        .await;
    for (d, (event, r)) in deliveries.iter().zip(feed_a.iter().zip(&records)) {
        assert_eq!(d["eventId"], event["id"]);
        assert_eq!(d["sequence"], event["sequence"]);
        assert_eq!(d["eventType"], event["type"]);
        assert_eq!(d["status"], "SUCCEEDED", "{d}");
        assert_eq!(d["attemptCount"], 1, "{d}");
        assert_eq!(d["lastResponseCode"], 204, "{d}");
        assert!(
            d["nextAttemptAt"].is_null() && !d["completedAt"].is_null(),
            "{d}"
        );
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{d}");
        assert_eq!(attempts[0]["responseCode"], 204);
        assert_eq!(attempts[0]["succeeded"], true);
        let body: Value = serde_json::from_str(d["body"].as_str().unwrap()).unwrap();
        assert_eq!(body, r.body, "the body recorded is the body sent");
    }

    // The filtered endpoint: w1's journal rows only.
    let feed_b = api
        .feed(
            &op,
            b["position"].as_str().unwrap(),
            Some(&["TRANSACTION_CREATED"]),
            Some(&w.w1),
        )
        .await;
    assert_eq!(feed_b.len(), w1_rows, "{feed_b:#?}");
    let records_b = wait_delivered(&one, &feed_b, Duration::from_secs(20)).await;
    check_against_feed(&records_b, &feed_b);
    for r in &records_b {
        assert_eq!(r.body["type"], "TRANSACTION_CREATED", "{r:#?}");
        assert_eq!(r.body["data"]["wallet"]["id"], w.w1.as_str(), "{r:#?}");
        assert_eq!(r.body["data"]["transaction"]["wallet"], w.w1.as_str());
    }
    // Nothing else arrives later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(one.records().len(), records_b.len(), "{:#?}", one.records());
    assert_eq!(all.records().len(), records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_back_gets_everything_with_spaced_retries() {
    let t = sending_app(Duration::from_secs(600)).await;
    let api = Api::App(t.router.clone());
    let op = t.operator();
    let pg = t.db.client().await;
    let w = wallets(&api, &op, &dev_keys()).await;
    api.settle(&op, &pg).await;
    let mut receiver = Receiver::start(&new_secret()).await;
    let endpoint = api
        .create_endpoint(&op, &receiver.url("/down"), &ALL_TYPES, None)
        .await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    receiver
        .set_secret(endpoint["secret"].as_str().unwrap())
        .await;

    // 1. The receiver answers 503: the oldest delivery is retried with backoff, and holds
    //    the others back.
    receiver.set_mode("fail", None).await;
    deposits(&api, &op, &w, 4, "fail").await;
    let head = poll(
        "the oldest delivery failed 5 times",
        Duration::from_secs(20),
        || async {
            let deliveries = api.deliveries(&op, &id).await;
            deliveries
                .first()
                .filter(|d| d["attemptCount"].as_i64().unwrap() >= 5)
                .cloned()
        },
    )
    .await;
    let head_id = head["eventId"].as_str().unwrap().to_owned();
    let seen = receiver.records();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| r.id == head_id && r.status == 503),
        "while the oldest delivery fails, nothing after it is sent: {seen:#?}"
    );
    receiver.set_mode("ok", None).await;
    api.settle(&op, &pg).await;
    let phase1 = api
        .feed(&op, endpoint["position"].as_str().unwrap(), None, None)
        .await;
    assert_eq!(count_of(&phase1, "TRANSACTION_CREATED"), 4);
    wait_delivered(&receiver, &phase1, Duration::from_secs(20)).await;

    // 2. The receiver is gone (connection refused).
    receiver.stop().await;
    let phase1_end = phase1.last().unwrap()["sequence"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    deposits(&api, &op, &w, 4, "refused").await;
    let refused_head = poll(
        "the oldest delivery after the receiver stopped failed 4 times",
        Duration::from_secs(20),
        || async {
            let deliveries = api.deliveries(&op, &id).await;
            deliveries
                .into_iter()
                .find(|d| d["sequence"].as_str().unwrap().parse::<i64>().unwrap() > phase1_end)
                .filter(|d| d["attemptCount"].as_i64().unwrap() >= 4)
        },
    )
    .await;
    receiver.start_again().await;
    api.settle(&op, &pg).await;
    let feed = api
        .feed(&op, endpoint["position"].as_str().unwrap(), None, None)
        .await;
    assert_eq!(count_of(&feed, "TRANSACTION_CREATED"), 8);
    let records = wait_delivered(&receiver, &feed, Duration::from_secs(20)).await;
    check_against_feed(&records, &feed);

    let deliveries = api.completed(&op, &id, feed.len()).await;
    assert!(
        deliveries.iter().all(|d| d["status"] == "SUCCEEDED"),
        "{deliveries:#?}"
    );
    // The 503s: every attempt recorded (and seen by the receiver), spaced by the backoff.
    let d503 = deliveries.iter().find(|d| d["id"] == head["id"]).unwrap();
    let attempts = d503["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 6, "{d503:#}");
    assert_eq!(d503["attemptCount"], attempts.len());
    for a in &attempts[..attempts.len() - 1] {
        assert_eq!(a["responseCode"], 503, "{a}");
        assert_eq!(a["succeeded"], false, "{a}");
        assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{a}");
    }
    let last = attempts.last().unwrap();
    assert_eq!(
        (&last["responseCode"], &last["succeeded"]),
        (&json!(204), &json!(true))
    );
    check_backoff(attempts);
    let received: Vec<u16> = records
        .iter()
        .filter(|r| r.id == head_id)
        .map(|r| r.status)
        .collect();
    let mut expected = vec![503; attempts.len() - 1];
    expected.push(204);
    assert_eq!(received, expected, "the receiver saw every attempt");

    // Connection refused: no answer, an error; spaced by the backoff too.
    let dref = deliveries
        .iter()
        .find(|d| d["id"] == refused_head["id"])
        .unwrap();
    let attempts = dref["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 5, "{dref:#}");
    for a in &attempts[..attempts.len() - 1] {
        assert!(a["responseCode"].is_null(), "no answer: {a}");
        assert!(
            a["error"].as_str().is_some_and(|e| !e.is_empty()),
            "the error is recorded: {a}"
        );
    }
    assert_eq!(attempts.last().unwrap()["succeeded"], true);
    check_backoff(attempts);
    let refused_id = dref["eventId"].as_str().unwrap();
    assert_eq!(
        records.iter().filter(|r| r.id == refused_id).count(),
        1,
        "only the attempt after the restart reached the receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_not_retried_and_redelivery_works() {
    let t = sending_app(Duration::from_secs(600)).await;
    let api = Api::App(t.router.clone());
    let op = t.operator();
    let pg = t.db.client().await;
    let w = wallets(&api, &op, &dev_keys()).await;
    api.settle(&op, &pg).await;
    let receiver = Receiver::start_with(&new_secret(), "gone", None).await;
    let endpoint = api
        .create_endpoint(&op, &receiver.url("/gone"), &["TRANSACTION_CREATED"], None)
        .await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    receiver
        .set_secret(endpoint["secret"].as_str().unwrap())
        .await;

    deposits(&api, &op, &w, 3, "gone").await;
    common::wait_until(
        "three deliveries FAILED",
        Duration::from_secs(15),
        || async {
            let d = api.deliveries(&op, &id).await;
            d.len() == 3 && d.iter().all(|d| d["status"] == "FAILED")
        },
    )
    .await;
    // Time for a retry (200–250 ms) to happen, if one were wrongly scheduled.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let feed = api
        .feed(
            &op,
            endpoint["position"].as_str().unwrap(),
            Some(&["TRANSACTION_CREATED"]),
            None,
        )
        .await;
    assert_eq!(feed.len(), 3);
    let deliveries = api.deliveries(&op, &id).await;
    assert_eq!(deliveries.len(), 3);
    for (d, event) in deliveries.iter().zip(&feed) {
        assert_eq!(d["eventId"], event["id"]);
        assert_eq!(d["status"], "FAILED", "{d}");
        assert_eq!(d["attemptCount"], 1, "{d}");
        assert_eq!(d["lastResponseCode"], 410, "{d}");
        assert!(d["nextAttemptAt"].is_null(), "{d}");
        assert!(!d["completedAt"].is_null(), "{d}");
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{d}");
        assert_eq!(attempts[0]["responseCode"], 410);
        assert_eq!(attempts[0]["succeeded"], false);
    }
    let records = receiver.records();
    let got: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, ids(&feed), "each sent once, in order, not retried");
    assert!(records.iter().all(|r| r.status == 410 && r.verified));

    // Back to ok: a redelivery sends the same event (same id, identical body) again.
    receiver.set_mode("ok", None).await;
    let original = &deliveries[0];
    let redelivery =
        api.ok(&op, REDELIVER, json!({"id": original["id"]})).await["redeliverWebhook"].clone();
    assert_ne!(redelivery["id"], original["id"]);
    assert_eq!(redelivery["redeliveryOf"], original["id"]);
    assert_eq!(redelivery["eventId"], original["eventId"]);
    assert_eq!(redelivery["sequence"], original["sequence"]);
    assert_eq!(redelivery["body"], original["body"]);
    let event_id = original["eventId"].as_str().unwrap().to_owned();
    let records = receiver
        .wait_for(
            |rs| rs.iter().any(|r| r.id == event_id && success(r)),
            Duration::from_secs(10),
        )
        .await;
    let copies: Vec<&Record> = records.iter().filter(|r| r.id == event_id).collect();
    assert_eq!(copies.len(), 2, "{copies:#?}");
    assert_eq!(copies[0].body, copies[1].body, "identical body");
    assert!(
        copies[1].verified && copies[1].status == 204,
        "{:#?}",
        copies[1]
    );
    let sent: Value = serde_json::from_str(original["body"].as_str().unwrap()).unwrap();
    assert_eq!(copies[1].body, sent);

    // Deliveries go on as usual afterwards.
    deposits(&api, &op, &w, 1, "after").await;
    api.settle(&op, &pg).await;
    let feed = api
        .feed(
            &op,
            endpoint["position"].as_str().unwrap(),
            Some(&["TRANSACTION_CREATED"]),
            None,
        )
        .await;
    assert_eq!(feed.len(), 4);
    let last_id = feed[3]["id"].as_str().unwrap().to_owned();
    let records = receiver
        .wait_for(
            |rs| rs.iter().any(|r| r.id == last_id && success(r)),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(records.len(), 5, "{records:#?}");
    let deliveries = api.completed(&op, &id, 5).await;
    let again = deliveries
        .iter()
        .find(|d| d["id"] == redelivery["id"])
        .unwrap();
    assert_eq!(again["status"], "SUCCEEDED", "{again}");
    assert_eq!(again["attemptCount"], 1, "{again}");
    assert_eq!(again["redeliveryOf"], original["id"]);
    assert_eq!(again["lastResponseCode"], 204);
    let first = deliveries
        .iter()
        .find(|d| d["id"] == original["id"])
        .unwrap();
    assert_eq!(first["status"], "FAILED", "the original stays as it was");
    assert_eq!(first["attemptCount"], 1);
    let newest = deliveries.iter().find(|d| d["eventId"] == last_id).unwrap();
    assert_eq!(newest["status"], "SUCCEEDED");
    assert!(newest["redeliveryOf"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_too_long_is_disabled_with_an_event() {
    let t = sending_app(Duration::from_secs(2)).await;
    let api = Api::App(t.router.clone());
    let op = t.operator();
    let pg = t.db.client().await;
    let w = wallets(&api, &op, &dev_keys()).await;
    api.settle(&op, &pg).await;
    let receiver = Receiver::start_with(&new_secret(), "fail", Some(500)).await;
    let endpoint = api
        .create_endpoint(&op, &receiver.url("/failing"), &ALL_TYPES, None)
        .await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    receiver
        .set_secret(endpoint["secret"].as_str().unwrap())
        .await;

    deposits(&api, &op, &w, 2, "before").await;
    let disabled = poll(
        "the endpoint is disabled",
        Duration::from_secs(20),
        || async { Some(api.endpoint(&op, &id).await).filter(|e| e["status"] == "DISABLED") },
    )
    .await;
    assert_eq!(disabled["disabledReason"], "FAILING", "{disabled}");
    assert!(disabled["secret"].is_null());

    // Disabled at the first failure after 2 s of failing, not before.
    let deliveries = api.deliveries(&op, &id).await;
    let head = &deliveries[0];
    assert_eq!(head["status"], "PENDING", "{head}");
    let attempts = head["attempts"].as_array().unwrap();
    assert!(
        attempts.iter().all(|a| a["responseCode"] == 500),
        "{head:#}"
    );
    let span = millis(&attempts[0], attempts.last().unwrap());
    assert!(
        span >= 1_900,
        "disabled after failing for {span} ms: {head:#}"
    );
    let before_last = millis(&attempts[0], &attempts[attempts.len() - 2]);
    assert!(
        before_last < 2_300,
        "an attempt {before_last} ms into the failure should have disabled it: {head:#}"
    );
    check_backoff(attempts);
    assert!(
        deliveries[1..].iter().all(|d| d["attemptCount"] == 0),
        "the later deliveries were held back: {deliveries:#?}"
    );

    // The feed says so.
    let notes = poll(
        "a WEBHOOK_ENDPOINT_DISABLED event",
        Duration::from_secs(10),
        || async {
            Some(
                api.feed(&op, "0", Some(&["WEBHOOK_ENDPOINT_DISABLED"]), None)
                    .await,
            )
            .filter(|notes| !notes.is_empty())
        },
    )
    .await;
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(
        notes[0]["webhookEndpoint"],
        json!({"id": id, "url": receiver.url("/failing"), "reason": "FAILING"})
    );
    assert!(notes[0]["wallet"].is_null());

    // Nothing is sent while disabled, also for new events.
    let sent = receiver.records().len();
    assert_eq!(sent, attempts.len(), "the receiver saw each attempt");
    deposits(&api, &op, &w, 2, "while-disabled").await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        receiver.records().len(),
        sent,
        "nothing sent while disabled"
    );

    // Enabled again, with the receiver back: everything arrives, nothing lost.
    receiver.set_mode("ok", None).await;
    let enabled = api.ok(&op, ENABLE, json!({"id": id})).await["enableWebhookEndpoint"].clone();
    assert_eq!(enabled["status"], "ENABLED");
    assert!(enabled["disabledReason"].is_null());
    api.settle(&op, &pg).await;
    let feed = api
        .feed(&op, endpoint["position"].as_str().unwrap(), None, None)
        .await;
    assert_eq!(count_of(&feed, "TRANSACTION_CREATED"), 4);
    assert_eq!(count_of(&feed, "WEBHOOK_ENDPOINT_DISABLED"), 1);
    let records = wait_delivered(&receiver, &feed, Duration::from_secs(20)).await;
    check_against_feed(&records, &feed);
    let deliveries = api.completed(&op, &id, feed.len()).await;
    assert!(
        deliveries.iter().all(|d| d["status"] == "SUCCEEDED"),
        "{deliveries:#?}"
    );
    let now = api.endpoint(&op, &id).await;
    assert_eq!(now["status"], "ENABLED");
    assert!(now["failingSince"].is_null(), "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_minus_9_mid_delivery_loses_nothing() {
    let db = TestDb::new().await;
    let env = [
        ("WALLET_WEBHOOK_LEASE_MS", "2000"),
        ("WALLET_WEBHOOK_RETRY_BASE_MS", "200"),
        ("WALLET_WEBHOOK_RETRY_MAX_MS", "2000"),
        ("WALLET_WEBHOOK_TIMEOUT_MS", "1000"),
        ("WALLET_DB_POOL_SIZE", "4"),
        ("WALLET_DB_READ_POOL_SIZE", "2"),
    ];
    let mut first = Some(ServerProcess::start_with(&db.url, &env).await);
    let mut second = Some(ServerProcess::start_with(&db.url, &env).await);
    let keys = dev_keys();
    let op = keys
        .mint("back-office", Role::Operator, Duration::from_secs(600))
        .unwrap();
    let pg = db.client().await;
    let api = Api::http(&first.as_ref().unwrap().base);
    let w = wallets(&api, &op, &keys).await;
    api.settle(&op, &pg).await;
    let receiver = Receiver::start(&new_secret()).await;
    let endpoint = api
        .create_endpoint(&op, &receiver.url("/kill"), &ALL_TYPES, None)
        .await;
    let endpoint_db_id = common::db_id(endpoint["id"].as_str().unwrap());
    receiver
        .set_secret(endpoint["secret"].as_str().unwrap())
        .await;

    // Movements keep coming, through both processes (the survivor only after the kill).
    let bases = Arc::new(Mutex::new(vec![
        first.as_ref().unwrap().base.clone(),
        second.as_ref().unwrap().base.clone(),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (bases, stop, op) = (bases.clone(), stop.clone(), op.clone());
        let (w1, w3, alice) = (w.w1.clone(), w.w3.clone(), w.alice.clone());
        async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut n = 0usize;
            let mut acknowledged = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let base = {
                    let list = bases.lock().unwrap();
                    list[n % list.len()].clone()
                };
                let (token, query, vars) = match n % 4 {
                    3 => (
                        &alice,
                        WITHDRAW,
                        json!({"w": w1, "a": "0.10", "k": format!("w-{n}")}),
                    ),
                    k => (
                        &op,
                        DEPOSIT,
                        json!({"w": if k % 2 == 0 { &w1 } else { &w3 }, "a": "1.00",
                               "k": format!("d-{n}")}),
                    ),
                };
                if let Ok(body) = post(&http, &base, token, query, vars).await
                    && body.get("errors").is_none()
                {
                    acknowledged += 1;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            acknowledged
        }
    });

    receiver
        .wait_for(
            |rs| rs.iter().filter(|r| success(r)).count() >= 10,
            Duration::from_secs(20),
        )
        .await;
    // The receiver stops answering: the process sending is mid-attempt.
    receiver.set_mode("hang", None).await;
    let records = receiver
        .wait_for(
            |rs| rs.iter().any(|r| r.status == 0),
            Duration::from_secs(20),
        )
        .await;
    let hung_id = records.iter().find(|r| r.status == 0).unwrap().id.clone();
    let owner: Option<String> = pg
        .query_one(
            "SELECT lease_owner FROM webhook_endpoints WHERE id = $1",
            &[&endpoint_db_id],
        )
        .await
        .unwrap()
        .get(0);
    let owner = owner.expect("the process sending holds the lease");
    let pid: u32 = owner
        .split('-')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a lease owner named after its pid: {owner}"));
    let pids = [
        first.as_ref().unwrap().pid(),
        second.as_ref().unwrap().pid(),
    ];
    let (mut victim, survivor) = if pid == pids[0] {
        (first.take().unwrap(), second.take().unwrap())
    } else {
        assert_eq!(pid, pids[1], "the lease owner {owner} is one of {pids:?}");
        (second.take().unwrap(), first.take().unwrap())
    };
    *bases.lock().unwrap() = vec![survivor.base.clone()];
    victim.kill();
    let killed_at_ms = Utc::now().timestamp_millis();
    eprintln!("killed process {pid} (lease owner {owner}) while it sent {hung_id}");
    receiver.set_mode("ok", None).await;

    // The survivor takes the endpoint over once the lease runs out; movements go on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = load.await.unwrap();
    let api = Api::http(&survivor.base);
    api.settle(&op, &pg).await;
    let feed = api
        .feed(&op, endpoint["position"].as_str().unwrap(), None, None)
        .await;
    assert!(
        count_of(&feed, "TRANSACTION_CREATED") >= acknowledged,
        "{acknowledged} movements acknowledged, {} journal rows in the feed",
        count_of(&feed, "TRANSACTION_CREATED")
    );
    let records = wait_delivered(&receiver, &feed, Duration::from_secs(40)).await;
    let duplicates = records.len() - first_receipts(&records).len();
    eprintln!(
        "{acknowledged} movements acknowledged; {} events delivered in {} requests \
         ({duplicates} repeated)",
        feed.len(),
        records.len()
    );
    check_against_feed(&records, &feed);
    // The attempt the killed process was making was made again, with the same id.
    let hung: Vec<&Record> = records.iter().filter(|r| r.id == hung_id).collect();
    assert!(
        hung.iter()
            .any(|r| success(r) && r.received_at_ms >= killed_at_ms),
        "the in-flight event was delivered after the kill: {hung:#?}"
    );
    let owner_now: Option<String> = pg
        .query_one(
            "SELECT lease_owner FROM webhook_endpoints WHERE id = $1",
            &[&endpoint_db_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        owner_now
            .as_deref()
            .is_none_or(|o| o.starts_with(&format!("{}-", survivor.pid()))),
        "the killed process holds nothing: {owner_now:?}"
    );
    let deliveries = api
        .completed(&op, endpoint["id"].as_str().unwrap(), feed.len())
        .await;
    assert!(
        deliveries.iter().all(|d| d["status"] == "SUCCEEDED"),
        "{deliveries:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_keeps_receivers_verifying() {
    let t = sending_app(Duration::from_secs(600)).await;
    let api = Api::App(t.router.clone());
    let op = t.operator();
    let pg = t.db.client().await;
    let w = wallets(&api, &op, &dev_keys()).await;
    api.settle(&op, &pg).await;
    let receiver = Receiver::start(&new_secret()).await;
    let endpoint = api
        .create_endpoint(
            &op,
            &receiver.url("/rotate"),
            &["TRANSACTION_CREATED"],
            None,
        )
        .await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    let old = endpoint["secret"].as_str().unwrap().to_owned();
    receiver.set_secret(&old).await;

    // The n-th delivery (1-based) once it has been answered.
    let nth = |n: usize| {
        let receiver = &receiver;
        async move {
            let records = receiver
                .wait_for(|rs| rs.len() >= n, Duration::from_secs(10))
                .await;
            assert_eq!(records.len(), n, "{records:#?}");
            records[n - 1].clone()
        }
    };
    deposits(&api, &op, &w, 1, "one").await;
    let r = nth(1).await;
    assert!(r.verified && r.status == 204, "{r:#?}");
    assert_eq!(r.signature.split(' ').count(), 1, "{}", r.signature);

    let rotated = api.ok(&op, ROTATE, json!({"id": id})).await["rotateWebhookSecret"].clone();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_"), "{rotated}");
    assert_ne!(new, old);
    assert!(api.endpoint(&op, &id).await["secret"].is_null());

    // Signed with both secrets: a receiver with only the new one verifies…
    receiver.set_secret(&new).await;
    deposits(&api, &op, &w, 1, "two").await;
    let r = nth(2).await;
    assert!(r.verified && r.status == 204, "with the new secret: {r:#?}");
    let signatures: Vec<&str> = r.signature.split(' ').collect();
    assert_eq!(signatures.len(), 2, "{}", r.signature);
    assert!(
        signatures.iter().all(|s| s.starts_with("v1,")),
        "{}",
        r.signature
    );
    assert_ne!(signatures[0], signatures[1]);

    // …and so does one with only the old one (during the overlap).
    receiver.set_secret(&old).await;
    deposits(&api, &op, &w, 1, "three").await;
    let r = nth(3).await;
    assert!(r.verified && r.status == 204, "with the old secret: {r:#?}");
    assert_eq!(r.signature.split(' ').count(), 2, "{}", r.signature);

    // A secret that is neither does not verify (the receiver answers 401: not retried).
    receiver.set_secret(&new_secret()).await;
    deposits(&api, &op, &w, 1, "four").await;
    let r = nth(4).await;
    assert!(!r.verified && r.status == 401, "{r:#?}");
    common::wait_until(
        "the unverifiable delivery is FAILED",
        Duration::from_secs(10),
        || async {
            let d = api.deliveries(&op, &id).await;
            d.len() == 4 && d[3]["status"] == "FAILED"
        },
    )
    .await;
    let d = api.deliveries(&op, &id).await;
    assert_eq!(d[3]["lastResponseCode"], 401);
    assert!(d[..3].iter().all(|d| d["status"] == "SUCCEEDED"), "{d:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_manage_webhooks_and_bad_urls_are_refused() {
    let t = TestApp::with(Options {
        pool_size: 4,
        ..Options::default()
    })
    .await;
    let api = Api::App(t.router.clone());
    let op = t.operator();
    let user = t.user("alice");
    let existing = api
        .create_endpoint(
            &op,
            "http://127.0.0.1:9/hook",
            &["TRANSACTION_CREATED"],
            None,
        )
        .await;
    let eid = existing["id"].as_str().unwrap();
    let create = |url: &str, types: Value| json!({"in": {"url": url, "eventTypes": types}});

    // Users: FORBIDDEN, whatever they ask.
    let deliveries = format!(
        "query($e: ID!) {{ webhookDeliveries(endpointId: $e) {{ nodes {{ {DELIVERY_FIELDS} }} }} }}"
    );
    let asks: Vec<(&str, Value)> = vec![
        (
            CREATE,
            create("http://127.0.0.1:9/mine", json!(["TRANSACTION_CREATED"])),
        ),
        (ENDPOINTS, json!({})),
        (&deliveries, json!({"e": eid})),
        (ROTATE, json!({"id": eid})),
        (ENABLE, json!({"id": eid})),
        (
            "mutation($id: ID!) { disableWebhookEndpoint(id: $id) { id } }",
            json!({"id": eid}),
        ),
    ];
    for (query, vars) in asks {
        let body = api.gql(&user, query, vars).await;
        assert_eq!(error_code(&body), "FORBIDDEN", "{query}: {body}");
        assert!(
            !body.to_string().contains("whsec_"),
            "no secret leaks: {body}"
        );
    }

    // Operators: malformed URLs are refused.
    for (url, types) in [
        ("ftp://example.com/hook", json!(["TRANSACTION_CREATED"])),
        ("not a url", json!(["TRANSACTION_CREATED"])),
        (
            "https://user:pass@example.com/hook",
            json!(["TRANSACTION_CREATED"]),
        ),
        ("https://example.com/hook", json!([])),
    ] {
        let body = api.gql(&op, CREATE, create(url, types.clone())).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{url} {types}: {body}");
    }
    let listed = api.endpoints(&op).await;
    assert_eq!(
        listed.len(),
        1,
        "nothing registered by a refusal: {listed:#?}"
    );
    assert_eq!(
        listed[0]["status"], "ENABLED",
        "the user's disable did nothing"
    );

    // Production rules: https to public addresses only.
    let production = ServerProcess::start_with(
        &t.db.url,
        &[
            ("WALLET_ENV", "production"),
            ("WALLET_JWT_SECRET", STRONG_SECRET),
            ("WALLET_DB_POOL_SIZE", "4"),
            ("WALLET_DB_READ_POOL_SIZE", "2"),
        ],
    )
    .await;
    let prod_op = TokenKeys::with_keys(STRONG_SECRET.as_bytes(), &[], TokenPolicy::production())
        .mint("back-office", Role::Operator, Duration::from_secs(600))
        .unwrap();
    let prod = Api::http(&production.base);
    for url in [
        "http://example.com/x",
        "https://127.0.0.1/x",
        "https://10.0.0.1/x",
        "https://169.254.169.254/",
        "https://localhost/x",
        "https://[::1]/x",
        "https://192.168.1.10/x",
    ] {
        let body = prod
            .gql(
                &prod_op,
                CREATE,
                create(url, json!(["TRANSACTION_CREATED"])),
            )
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{url}: {body}");
    }
    let accepted = prod
        .create_endpoint(
            &prod_op,
            "https://hooks.example.com/x",
            &["TRANSACTION_CREATED"],
            None,
        )
        .await;
    assert_eq!(accepted["url"], "https://hooks.example.com/x");
    // A development token means nothing to the production process.
    let body = prod.gql(&op, ENDPOINTS, json!({})).await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");
    assert_eq!(prod.endpoints(&prod_op).await.len(), 2);
}
