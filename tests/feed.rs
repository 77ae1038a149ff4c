//! The durable event feed: `Query.events` and the resumable `events` subscription read one
//! gap-free sequence in commit order, whichever process serves them; a subscriber far
//! behind catches up from the table; expired positions are refused with the oldest kept;
//! balance alerts fire once per crossing; users see only their own wallets' events.
//!
//! Every check is made against the database itself (the journal, the outbox), never
//! against hard-coded figures for what a concurrent load did.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use chrono::Utc;
use common::process::{ServerProcess, post};
use common::ws::{Event, WsClient};
use common::{DEPOSIT, Options, TestApp, TestDb, WITHDRAW, db_id, error_code, gql_to};
use futures_util::future::join_all;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use wallet::auth::{Role, TokenKeys};

/// The tests that run three `wallet serve` processes take turns: at most three server
/// processes at once (a default Postgres allows 100 connections, and the machine may have
/// two cores).
static THREE_PROCESSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Small pools: three processes and the in-process apps of the other tests share one
/// Postgres. No webhook worker: these tests are about the feed.
const PROCESS_ENV: &[(&str, &str)] = &[
    ("WALLET_DB_POOL_SIZE", "4"),
    ("WALLET_DB_READ_POOL_SIZE", "2"),
    ("WALLET_WEBHOOKS", "false"),
];

const EVENTS: &str = "query($after: String, $first: Int, $w: ID, $types: [EventType!]) {
  events(after: $after, first: $first, walletId: $w, types: $types) {
    position head pageInfo { hasNextPage hasPreviousPage }
    edges { cursor node { id sequence type
      wallet { id balance availableBalance }
      transaction { id type balanceAfter }
      alert { alert direction threshold availableBalance } } } } }";

const FEED_SUB: &str = "subscription($after: String, $w: ID, $types: [EventType!]) {
  events(after: $after, walletId: $w, types: $types) { sequence type wallet { id balance } } }";

const TRANSFER: &str = "mutation($from: ID!, $to: ID!, $a: Decimal!, $k: String!) {
  transfer(input: {fromWalletId: $from, toWalletId: $to, amount: $a, idempotencyKey: $k}) { id } }";

const CREATE_ALERT: &str = "mutation($w: ID!, $below: Decimal, $above: Decimal) {
  createBalanceAlert(input: {walletId: $w, below: $below, above: $above}) {
    id below above wallet { id } } }";

const DELETE_ALERT: &str = "mutation($id: ID!) { deleteBalanceAlert(id: $id) { id } }";

const ALERTS_OF: &str = "query($w: ID!) { wallet(id: $w) { balanceAlerts { id below above } } }";

// --- Talking to a server (a process over HTTP, or an in-process router) ---

#[derive(Clone)]
enum Api {
    Http(reqwest::Client, String),
    Router(Router),
}

impl Api {
    fn http(base: &str) -> Api {
        Api::Http(reqwest::Client::new(), base.to_owned())
    }

    async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        match self {
            Api::Http(http, base) => post(http, base, token, query, variables)
                .await
                .unwrap_or_else(|e| panic!("{base} did not answer: {e}")),
            Api::Router(router) => gql_to(router, Some(token), query, variables).await,
        }
    }

    async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let body = self.gql(token, query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }
}

/// One page of `Query.events`.
struct Page {
    events: Vec<Value>,
    position: i64,
    head: i64,
    has_next: bool,
}

fn number(v: &Value) -> i64 {
    v.as_str()
        .unwrap_or_else(|| panic!("a string, got {v}"))
        .parse()
        .unwrap_or_else(|_| panic!("a number, got {v}"))
}

fn seq(event: &Value) -> i64 {
    number(&event["sequence"])
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("a decimal string, got {v}"))
        .parse()
        .unwrap()
}

/// Reads one page; `Err` with the whole answer when it has errors.
async fn page(
    api: &Api,
    token: &str,
    after: Option<&str>,
    first: i64,
    wallet: Option<&str>,
    types: Option<&[&str]>,
) -> Result<Page, Value> {
    let body = api
        .gql(
            token,
            EVENTS,
            json!({"after": after, "first": first, "w": wallet, "types": types}),
        )
        .await;
    if body.get("errors").is_some() {
        return Err(body);
    }
    let conn = &body["data"]["events"];
    let events: Vec<Value> = conn["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| {
            assert_eq!(
                edge["cursor"], edge["node"]["sequence"],
                "an edge's cursor is its event's sequence"
            );
            edge["node"].clone()
        })
        .collect();
    let position = number(&conn["position"]);
    let head = number(&conn["head"]);
    let has_next = conn["pageInfo"]["hasNextPage"].as_bool().unwrap();
    assert_eq!(
        has_next,
        position < head,
        "hasNextPage = position < head: {conn}"
    );
    assert!(events.len() as i64 <= first, "at most `first` events");
    if let Some(last) = events.last() {
        assert!(
            seq(last) <= position,
            "the position is not before the last event"
        );
    }
    Ok(Page {
        events,
        position,
        head,
        has_next,
    })
}

/// Pages through the feed from `after` (`first` at a time) until no next page, each page
/// from the next of `apis` in turn; returns every event and the last page's head.
async fn read_all(
    apis: &[Api],
    token: &str,
    after: Option<&str>,
    first: i64,
    wallet: Option<&str>,
    types: Option<&[&str]>,
) -> (Vec<Value>, i64) {
    let mut events = Vec::new();
    let mut after = after.map(str::to_owned);
    let mut previous = after.as_deref().map_or(-1, |a| a.parse::<i64>().unwrap());
    for turn in 0.. {
        let api = &apis[turn % apis.len()];
        let p = page(api, token, after.as_deref(), first, wallet, types)
            .await
            .unwrap_or_else(|body| panic!("events(after: {after:?}): {body}"));
        events.extend(p.events);
        if !p.has_next {
            return (events, p.head);
        }
        assert!(
            p.position > previous,
            "the position advances: {previous} then {}",
            p.position
        );
        previous = p.position;
        after = Some(p.position.to_string());
    }
    unreachable!()
}

/// The feed's head as `Query.events` reports it.
async fn head(api: &Api, token: &str) -> i64 {
    let data = api
        .ok(token, "{ events(first: 1) { head } }", json!({}))
        .await;
    number(&data["events"]["head"])
}

/// Where the feed stands once its numbering has caught up with the outbox.
struct Settled {
    /// The head `Query.events` reports.
    head: i64,
    /// Events in the outbox (nothing pruned: each should have a sequence).
    stored: i64,
    /// The stored events no run numbers, described (empty when there are none).
    skipped: String,
}

/// Waits until the sequencer has numbered up to the newest event stored (the last run
/// ends at the outbox's highest id) and `Query.events` reports that head.
async fn settled(api: &Api, token: &str, pg: &tokio_postgres::Client) -> Settled {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let row = pg
            .query_one(
                "SELECT (SELECT COALESCE(max(id), 0) FROM events),
                        (SELECT count(*) FROM events),
                        (SELECT COALESCE(max(last_event_id), 0) FROM event_runs),
                        (SELECT COALESCE(max(first_sequence + last_event_id - first_event_id), 0)
                           FROM event_runs)",
                &[],
            )
            .await
            .unwrap();
        let (newest, stored, numbered_to, last): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if numbered_to >= newest {
            let head = head(api, token).await;
            if head == last {
                assert!(
                    head <= stored,
                    "the head {head} is beyond the {stored} events stored"
                );
                let skipped = match head == stored {
                    true => String::new(),
                    false => unnumbered(pg).await,
                };
                return Settled {
                    head,
                    stored,
                    skipped,
                };
            }
        }
        if Instant::now() > give_up {
            panic!(
                "the feed did not number up to the newest event within 10 s: {}",
                unnumbered(pg).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`settled`], and every event stored is in the feed; returns the head.
async fn settle(api: &Api, token: &str, pg: &tokio_postgres::Client) -> i64 {
    let s = settled(api, token, pg).await;
    assert_eq!(
        s.head, s.stored,
        "every committed event has a sequence: {}",
        s.skipped
    );
    s.head
}

/// What the outbox holds that no run numbers, and the runs: for a failure's message.
async fn unnumbered(pg: &tokio_postgres::Client) -> String {
    let rows = pg
        .query(
            "SELECT e.id, e.type, e.created_at::text,
                    (SELECT max(last_event_id) FROM event_runs) AS numbered_to
               FROM events e
              WHERE NOT EXISTS (SELECT 1 FROM event_runs r
                                 WHERE e.id BETWEEN r.first_event_id AND r.last_event_id)
              ORDER BY e.id",
            &[],
        )
        .await
        .unwrap();
    let events: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "event id {} {} created {} (numbered up to id {:?})",
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, Option<i64>>(3)
            )
        })
        .collect();
    let runs: Vec<String> = pg
        .query(
            "SELECT first_sequence, first_event_id, last_event_id, sequenced_at::text
               FROM event_runs ORDER BY first_sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "seq {} = ids {}..={} at {}",
                r.get::<_, i64>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
                r.get::<_, String>(3)
            )
        })
        .collect();
    format!("not numbered: {events:?}; runs: {runs:?}")
}

/// The next event of subscription `id`; fails on anything else (an error, a completion,
/// a close) or when none comes within `limit`.
async fn next_event(ws: &mut WsClient, id: &str, limit: Duration) -> Value {
    match ws.next_within(limit).await {
        Some(Event::Message(m)) if m["type"] == "next" && m["id"] == id => {
            assert!(m["payload"].get("errors").is_none(), "errors in {m}");
            m["payload"]["data"]["events"].clone()
        }
        Some(other) => panic!("expected an event of {id}, got {other:?}"),
        None => panic!("no event of {id} within {limit:?}"),
    }
}

/// The `error` message that refuses subscription `id`: its first error.
async fn refusal(ws: &mut WsClient, id: &str) -> Value {
    match ws.next().await {
        Event::Message(m) if m["type"] == "error" && m["id"] == id => m["payload"][0].clone(),
        other => panic!("expected an error for {id}, got {other:?}"),
    }
}

fn app_options() -> Options {
    Options {
        pool_size: 4,
        ..Options::default()
    }
}

// --- Three processes and a load of movements ---

/// Three `wallet serve` processes on one fresh database, with wallets owned by a few
/// users, each funded.
struct Fleet {
    /// Killed before the database is dropped (fields drop in this order).
    servers: Vec<ServerProcess>,
    apis: Vec<Api>,
    pg: tokio_postgres::Client,
    op: String,
    /// user → token
    tokens: HashMap<String, String>,
    /// (global id, owner)
    wallets: Vec<(String, String)>,
    _db: TestDb,
}

async fn fleet(wallets: usize) -> Fleet {
    let db = TestDb::new().await;
    let servers: Vec<ServerProcess> =
        join_all((0..3).map(|_| ServerProcess::start_with(&db.url, PROCESS_ENV))).await;
    let apis: Vec<Api> = servers.iter().map(|s| Api::http(&s.base)).collect();
    let keys = TokenKeys::new(common::JWT_SECRET.as_bytes());
    let hour = Duration::from_secs(3600);
    let op = keys.mint("back-office", Role::Operator, hour).unwrap();
    // One owner per wallet: a user has one wallet per currency.
    let users: Vec<String> = (0..wallets).map(|i| format!("user-{i}")).collect();
    let tokens: HashMap<String, String> = users
        .iter()
        .map(|u| (u.clone(), keys.mint(u, Role::User, hour).unwrap()))
        .collect();
    let mut owned = Vec::new();
    for (i, owner) in users.iter().enumerate() {
        let data = apis[i % 3]
            .ok(
                &tokens[owner],
                "mutation { createWallet(input: {currency: \"USD\"}) { id } }",
                json!({}),
            )
            .await;
        let id = data["createWallet"]["id"].as_str().unwrap().to_owned();
        apis[(i + 1) % 3]
            .ok(
                &op,
                DEPOSIT,
                json!({"w": id, "a": "20.00", "k": format!("fund-{i}")}),
            )
            .await;
        owned.push((id, owner.to_owned()));
    }
    let mut distinct: Vec<&String> = owned.iter().map(|(id, _)| id).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), wallets, "one wallet each");
    Fleet {
        pg: db.client().await,
        _db: db,
        servers,
        apis,
        op,
        tokens,
        wallets: owned,
    }
}

/// What the clients of a load were told.
#[derive(Debug, Default)]
struct Tally {
    committed: usize,
    refused: BTreeMap<String, usize>,
}

/// Clients sending deposits, withdrawals and transfers over the fleet's wallets, spread
/// over its processes, one request after another each, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(f: &Fleet, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let bases: Arc<Vec<String>> = Arc::new(f.servers.iter().map(|s| s.base.clone()).collect());
        let wallets = Arc::new(f.wallets.clone());
        let tokens = Arc::new(f.tokens.clone());
        let tasks = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let (bases, wallets, tokens, op) =
                    (bases.clone(), wallets.clone(), tokens.clone(), f.op.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut tally = Tally::default();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let base = &bases[(c + n) % bases.len()];
                        let (wallet, owner) = &wallets[(c * 7 + n) % wallets.len()];
                        let (to, _) = &wallets[(c * 7 + n + 1 + c % 2) % wallets.len()];
                        let cents = (c * 31 + n * 17) % 100;
                        let key = format!("load-{c}-{n}");
                        let (token, query, vars, field) = match (c + n) % 4 {
                            0 | 1 => (
                                &op,
                                DEPOSIT,
                                json!({"w": wallet, "a": format!("{}.{cents:02}", 1 + n % 5), "k": key}),
                                "deposit",
                            ),
                            2 => (
                                &tokens[owner],
                                WITHDRAW,
                                json!({"w": wallet, "a": format!("{}.{cents:02}", 1 + n % 9), "k": key}),
                                "withdraw",
                            ),
                            _ => (
                                &tokens[owner],
                                TRANSFER,
                                json!({"from": wallet, "to": to,
                                       "a": format!("{}.{cents:02}", 1 + n % 7), "k": key}),
                                "transfer",
                            ),
                        };
                        let body = post(&http, base, token, query, vars)
                            .await
                            .unwrap_or_else(|e| panic!("{base} did not answer: {e}"));
                        match body["errors"][0]["extensions"]["code"].as_str() {
                            Some(code) => *tally.refused.entry(code.to_owned()).or_default() += 1,
                            None => {
                                assert!(body["data"][field]["id"].is_string(), "{body}");
                                tally.committed += 1;
                            }
                        }
                        n += 1;
                    }
                    tally
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut sum = Tally::default();
        for task in self.tasks {
            let t = task.await.expect("a load client");
            sum.committed += t.committed;
            for (code, n) in t.refused {
                *sum.refused.entry(code).or_default() += n;
            }
        }
        sum
    }
}

/// Per wallet (database id): its journal rows' (id, balance after), in id order. Checks
/// first that the journal itself is one chain per wallet in id order (each row starts
/// where the previous ended), so that a failure below is the feed's.
async fn journal(pg: &tokio_postgres::Client) -> HashMap<i64, Vec<(i64, Decimal)>> {
    let rows = pg
        .query(
            "SELECT id, wallet_id, balance_before::text, balance_after::text
               FROM transactions ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut out: HashMap<i64, Vec<(i64, Decimal)>> = HashMap::new();
    for r in rows {
        let (id, wallet): (i64, i64) = (r.get(0), r.get(1));
        let before: Decimal = r.get::<_, String>(2).parse().unwrap();
        let after: Decimal = r.get::<_, String>(3).parse().unwrap();
        let chain = out.entry(wallet).or_default();
        let previous = chain.last().map_or(Decimal::ZERO, |(_, b)| *b);
        assert_eq!(
            before, previous,
            "the journal of wallet {wallet} is not one chain in id order at row {id}"
        );
        chain.push((id, after));
    }
    out
}

/// 1. Movements race through three processes; afterwards the feed, paged through from
///    every process in turn, is exactly 1..N, names every journal row once, and each
///    wallet's balances in it follow its journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_is_gap_free_and_in_commit_order_across_processes() {
    let _turn = THREE_PROCESSES.acquire().await.unwrap();
    let started = Instant::now();
    let f = fleet(6).await;
    let load = Load::start(&f, 8);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let tally = load.stop().await;
    assert!(
        tally.committed >= 50,
        "the load committed too little to test anything: {tally:?}"
    );
    for code in tally.refused.keys() {
        assert_eq!(
            code, "INSUFFICIENT_FUNDS",
            "only refusals of money: {tally:?}"
        );
    }
    let settled = settled(&f.apis[0], &f.op, &f.pg).await;
    let n = settled.head;
    let (events, last_head) = read_all(&f.apis, &f.op, Some("0"), 100, None, None).await;
    assert_eq!(last_head, n);

    // Gap-free, no repeat, from 1.
    let sequences: Vec<i64> = events.iter().map(seq).collect();
    assert_eq!(
        sequences.len() as i64,
        n,
        "one event per sequence up to the head"
    );
    assert!(
        sequences.iter().copied().eq(1..=n),
        "sequences must be exactly 1..={n}"
    );

    // Every event the movements committed is in it: none was passed over by the numbering
    // (which would leave it out of the feed for good).
    assert_eq!(
        n, settled.stored,
        "every committed event has a sequence: {}",
        settled.skipped
    );

    // Every journal row has exactly one TRANSACTION_CREATED event, and only they do.
    let journal = journal(&f.pg).await;
    let rows: usize = journal.values().map(Vec::len).sum();
    let mut created: HashMap<i64, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "TRANSACTION_CREATED") {
        *created
            .entry(db_id(e["transaction"]["id"].as_str().unwrap()))
            .or_default() += 1;
    }
    for chain in journal.values() {
        for (id, _) in chain {
            assert_eq!(
                created.get(id).copied().unwrap_or(0),
                1,
                "TRANSACTION_CREATED events naming journal row {id}; {}",
                settled.skipped
            );
        }
    }
    assert_eq!(
        created.len(),
        rows,
        "TRANSACTION_CREATED events name journal rows only"
    );

    // Per wallet, in feed order: each WALLET_UPDATED balance is a balance the journal
    // reached, never earlier in the journal than the previous one (nor than a row whose
    // TRANSACTION_CREATED came before it); and a row's TRANSACTION_CREATED comes after the
    // WALLET_UPDATED of the change that produced its balance.
    let mut at: HashMap<i64, (usize, Option<Decimal>)> = HashMap::new();
    let mut floor: HashMap<i64, usize> = HashMap::new();
    let mut updates = 0;
    // Per wallet, its events so far, for the failure messages.
    let mut seen: HashMap<i64, Vec<String>> = HashMap::new();
    for e in &events {
        let wallet = db_id(e["wallet"]["id"].as_str().unwrap());
        let chain = &journal[&wallet];
        let history = seen.entry(wallet).or_default();
        history.push(match e["type"].as_str().unwrap() {
            "TRANSACTION_CREATED" => format!(
                "{} row {} (after {})",
                seq(e),
                db_id(e["transaction"]["id"].as_str().unwrap()),
                e["transaction"]["balanceAfter"].as_str().unwrap()
            ),
            kind => format!("{} {kind} {}", seq(e), e["wallet"]["balance"]),
        });
        let story = || {
            format!(
                "wallet {wallet}'s journal (row, balance after): {:?}; its events so far: \
                 {:?}; {}",
                chain
                    .iter()
                    .map(|(id, b)| format!("{id} {b}"))
                    .collect::<Vec<_>>(),
                history,
                settled.skipped
            )
        };
        let find =
            |from: usize, balance: Decimal| (from..chain.len()).find(|&k| chain[k].1 == balance);
        match e["type"].as_str().unwrap() {
            "WALLET_UPDATED" => {
                updates += 1;
                let balance = dec(&e["wallet"]["balance"]);
                let (index, _) = at.get(&wallet).copied().unwrap_or((0, None));
                let from = index.max(floor.get(&wallet).copied().unwrap_or(0));
                let Some(k) = find(from, balance) else {
                    panic!(
                        "event {}: WALLET_UPDATED of wallet {wallet} with balance {balance}, \
                         which its journal does not reach at or after row #{from}; {}",
                        seq(e),
                        story()
                    )
                };
                at.insert(wallet, (k, Some(balance)));
            }
            "TRANSACTION_CREATED" => {
                let id = db_id(e["transaction"]["id"].as_str().unwrap());
                let k = chain.iter().position(|(r, _)| *r == id).unwrap();
                assert_eq!(dec(&e["transaction"]["balanceAfter"]), chain[k].1);
                let (index, last) = at.get(&wallet).copied().unwrap_or((0, None));
                let Some(balance) = last else {
                    panic!(
                        "event {}: TRANSACTION_CREATED of row {id} before any WALLET_UPDATED \
                         of wallet {wallet}; {}",
                        seq(e),
                        story()
                    )
                };
                let Some(reached) = find(index.max(k), balance) else {
                    panic!(
                        "event {}: TRANSACTION_CREATED of row {id} (journal #{k} of wallet \
                         {wallet}) before the WALLET_UPDATED of its change (the last one \
                         seen has balance {balance}); {}",
                        seq(e),
                        story()
                    )
                };
                at.insert(wallet, (reached, last));
                let lowest = floor.entry(wallet).or_default();
                *lowest = (*lowest).max(k);
            }
            other => panic!("event {}: unexpected type {other} under this load", seq(e)),
        }
    }
    // Each wallet's last WALLET_UPDATED is its balance now, the end of its journal.
    for (wallet, chain) in &journal {
        let (_, last) = at[wallet];
        assert_eq!(
            last,
            Some(chain.last().unwrap().1),
            "wallet {wallet}: the last WALLET_UPDATED is where its journal ends; {}",
            settled.skipped
        );
    }
    println!(
        "feed across 3 processes: {} movements committed, refused {:?}, {rows} journal rows, \
         {n} events ({updates} WALLET_UPDATED), {:.1?} in all",
        tally.committed,
        tally.refused,
        started.elapsed()
    );
}

/// 2. A subscriber on process 1 drops its socket mid-stream and resumes on process 2 with
///    `after:` the last sequence it received: together it gets every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resumes_after_disconnect_without_gap_or_repeat() {
    let _turn = THREE_PROCESSES.acquire().await.unwrap();
    let f = fleet(5).await;
    let load = Load::start(&f, 8);
    let started = Instant::now();
    let wait = Duration::from_secs(15);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut ws = WsClient::authenticated(&f.servers[0].websocket(), &f.op).await;
    ws.subscribe("feed", FEED_SUB, json!({"after": "0"})).await;
    let first = next_event(&mut ws, "feed", wait).await;
    assert_eq!(
        first["sequence"], "1",
        "after: \"0\" replays from the first event"
    );
    let mut got = vec![seq(&first)];
    while started.elapsed() < Duration::from_secs(2) {
        got.push(seq(&next_event(&mut ws, "feed", wait).await));
    }
    // Gone without a word, in the middle of the stream.
    drop(ws);
    let seam = *got.last().unwrap();
    let first_leg = got.len();

    let mut ws = WsClient::authenticated(&f.servers[1].websocket(), &f.op).await;
    ws.subscribe("feed", FEED_SUB, json!({"after": seam.to_string()}))
        .await;
    let resumed = next_event(&mut ws, "feed", wait).await;
    assert_eq!(
        seq(&resumed),
        seam + 1,
        "the resumed subscription starts after {seam}"
    );
    got.push(seq(&resumed));
    while started.elapsed() < Duration::from_secs(4) {
        got.push(seq(&next_event(&mut ws, "feed", wait).await));
    }
    let tally = load.stop().await;
    let settled = settled(&f.apis[2], &f.op, &f.pg).await;
    let head = settled.head;
    while *got.last().unwrap() < head {
        got.push(seq(&next_event(&mut ws, "feed", wait).await));
    }
    assert!(
        ws.next_within(Duration::from_millis(500)).await.is_none(),
        "nothing after the head"
    );
    assert!(
        tally.committed >= 50,
        "the load committed too little: {tally:?}"
    );
    assert!(
        got.len() > first_leg + 1,
        "the second subscription received events"
    );
    let seen = got.len();
    if let Some(bad) = got.windows(2).find(|w| w[1] != w[0] + 1) {
        panic!(
            "not contiguous: {} then {} (seam after {seam}, head {head})",
            bad[0], bad[1]
        );
    }
    assert_eq!(got, (1..=head).collect::<Vec<_>>());
    println!(
        "resumed subscription: {first_leg} events from process 1 (to {seam}), {} from \
         process 2 (to {head}); {} movements committed",
        seen - first_leg,
        tally.committed
    );
    // And what it got is everything committed (no event left out of the sequence).
    assert_eq!(
        head, settled.stored,
        "every committed event has a sequence: {}",
        settled.skipped
    );
}

/// 3. A subscriber 100,000 events behind reads the backlog from the table and goes on live
///    without a gap, while deposits keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_100000_events_behind_catches_up() {
    const BACKLOG: i64 = 100_000;
    let t = TestApp::with(app_options()).await;
    let url = t.serve().await;
    let w = t.create_wallet("alice", "USD").await;
    let api = Api::Router(t.router.clone());
    let op = t.operator();
    let pg = t.db.client().await;
    // The outbox rows are written directly: what is tested is the catch-up machinery
    // (numbering a large backlog, paging it from the table, handing over to the live bus),
    // and 100,000 real movements would take minutes. Each row is a WALLET_UPDATED whose
    // recorded balance is its place in the backlog, so the payloads can be checked too.
    let inserted = pg
        .execute(
            "INSERT INTO events (topic, type, subject_id, wallet_id, user_id, balance,
                                 locked_balance, held_balance, credit_limit)
             SELECT 'WALLET', 'WALLET_UPDATED', $1, $1, 'alice', g, 0, 0, 0
               FROM generate_series(1, 100000) g",
            &[&db_id(&w)],
        )
        .await
        .unwrap();
    assert_eq!(inserted as i64, BACKLOG);
    // The service's listener numbers them.
    let numbered = Instant::now();
    common::wait_until(
        "the backlog is numbered",
        Duration::from_secs(60),
        || async { head(&api, &op).await >= BACKLOG },
    )
    .await;
    assert_eq!(head(&api, &op).await, BACKLOG);
    let numbering = numbered.elapsed();

    // Deposits keep arriving while the subscriber catches up.
    let stop = Arc::new(AtomicBool::new(false));
    let deposits = Arc::new(AtomicUsize::new(0));
    let mut depositor = {
        let (stop, deposits, router, wallet) =
            (stop.clone(), deposits.clone(), t.router.clone(), w.clone());
        let op = op.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let vars = json!({"w": wallet, "a": "1.00", "k": format!("live-{i}")});
                let body = gql_to(&router, Some(&op), DEPOSIT, vars).await;
                assert!(body.get("errors").is_none(), "{body}");
                deposits.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // An operator's subscription: a user's reads the backlog through the owner filter, a
    // query of its own; this one measures the catch-up machinery itself.
    let mut ws = WsClient::authenticated(&url, &op).await;
    let subscribed = Instant::now();
    ws.subscribe("feed", FEED_SUB, json!({"after": "0"})).await;
    let wait = Duration::from_secs(20);
    let mut last = 0i64;
    let mut deposits_during_catch_up = 0;
    let mut caught_up = Duration::ZERO;
    let mut live_balance = Decimal::ZERO;
    let mut live_rows = 0;
    let mut made = None;
    // Until the depositor has stopped (after a few live deposits past the backlog) and
    // every deposit's events have arrived.
    while made.is_none_or(|made: i64| last < BACKLOG + 2 * made) {
        let e = next_event(&mut ws, "feed", wait).await;
        let s = seq(&e);
        assert_eq!(s, last + 1, "events arrive contiguously: {last} then {s}");
        last = s;
        assert_eq!(e["wallet"]["id"], w.as_str());
        if s <= BACKLOG {
            assert_eq!(e["type"], "WALLET_UPDATED");
            assert_eq!(dec(&e["wallet"]["balance"]), Decimal::from(s), "event {s}");
            if s == BACKLOG {
                caught_up = subscribed.elapsed();
                deposits_during_catch_up = deposits.load(Ordering::Relaxed);
            }
            continue;
        }
        // A live deposit: its WALLET_UPDATED (balance one more), then its row.
        match e["type"].as_str().unwrap() {
            "WALLET_UPDATED" => {
                live_balance += Decimal::ONE;
                assert_eq!(dec(&e["wallet"]["balance"]), live_balance, "event {s}");
            }
            "TRANSACTION_CREATED" => live_rows += 1,
            other => panic!("event {s}: unexpected {other}"),
        }
        // Stop once five deposits made after the backlog was read have arrived too.
        if live_rows >= deposits_during_catch_up + 5 && made.is_none() {
            stop.store(true, Ordering::Relaxed);
            (&mut depositor).await.unwrap();
            made = Some(deposits.load(Ordering::Relaxed) as i64);
        }
    }
    let made = deposits.load(Ordering::Relaxed) as i64;
    assert_eq!(last, BACKLOG + 2 * made, "each deposit's two events, once");
    assert_eq!(
        settle(&api, &op, &pg).await,
        last,
        "the subscriber reached the head"
    );
    assert!(
        ws.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing after the head"
    );
    assert!(
        deposits_during_catch_up > 0,
        "deposits were committed while the subscriber caught up"
    );
    assert_eq!(live_balance, Decimal::from(made));
    let rate = BACKLOG as f64 / caught_up.as_secs_f64();
    println!(
        "catch-up: {BACKLOG} events numbered in {numbering:.1?}, replayed in {caught_up:.1?} \
         ({rate:.0} events/s) while {deposits_during_catch_up} deposits arrived; \
         {made} deposits in all, their events contiguous after the backlog"
    );
}

/// 4. Positions older than what the feed keeps are refused with the oldest kept, by the
///    query and the subscription; the position just before the oldest works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cursor_is_refused_with_the_oldest_position() {
    let t = TestApp::with(app_options()).await;
    let url = t.serve().await;
    let w = t.create_wallet("alice", "USD").await;
    let api = Api::Router(t.router.clone());
    let op = t.operator();
    let pg = t.db.client().await;
    for i in 0..5 {
        let body = t.deposit(&w, "1.00", &format!("d-{i}")).await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    assert_eq!(settle(&api, &op, &pg).await, 10, "two events per deposit");
    let stored = async |pg: &tokio_postgres::Client| {
        pg.query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };

    // Retention takes the four oldest.
    let mut conn = t.app.state.pool.get().await.unwrap();
    let pruned = wallet::events::feed::prune(&mut conn, Utc::now() + chrono::Duration::days(1), 4)
        .await
        .unwrap();
    assert_eq!(pruned, 4);
    assert_eq!(stored(&pg).await, 6);

    let expired = |body: &Value, oldest: &str| {
        assert_eq!(error_code(body), "CURSOR_EXPIRED", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["oldest"], oldest, "{body}");
    };
    for after in ["0", "3"] {
        let body = page(&api, &op, Some(after), 20, None, None)
            .await
            .err()
            .unwrap();
        expired(&body, "5");
    }
    let sequences = |events: &[Value]| events.iter().map(seq).collect::<Vec<_>>();
    let p = page(&api, &op, Some("4"), 20, None, None).await.unwrap();
    assert_eq!(sequences(&p.events), (5..=10).collect::<Vec<_>>());
    assert_eq!((p.position, p.head, p.has_next), (10, 10, false));
    // No position: from the oldest kept.
    let p = page(&api, &op, None, 20, None, None).await.unwrap();
    assert_eq!(sequences(&p.events), (5..=10).collect::<Vec<_>>());
    // Not a position, or one not given yet.
    for after in ["abc", "-1", "11"] {
        let body = page(&api, &op, Some(after), 20, None, None)
            .await
            .err()
            .unwrap();
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "after {after}: {body}");
    }

    let mut ws = WsClient::authenticated(&url, &op).await;
    ws.subscribe("old", FEED_SUB, json!({"after": "0"})).await;
    let error = refusal(&mut ws, "old").await;
    assert_eq!(error["extensions"]["code"], "CURSOR_EXPIRED", "{error}");
    assert_eq!(error["extensions"]["oldest"], "5", "{error}");
    ws.subscribe("ok", FEED_SUB, json!({"after": "4"})).await;
    for s in 5..=10 {
        assert_eq!(
            seq(&next_event(&mut ws, "ok", Duration::from_secs(5)).await),
            s
        );
    }

    // Everything numbered is pruned: the oldest is the head's successor, and resuming
    // from the head works (an empty page, then what comes next).
    let pruned =
        wallet::events::feed::prune(&mut conn, Utc::now() + chrono::Duration::days(1), 1000)
            .await
            .unwrap();
    assert_eq!(pruned, 6);
    drop(conn);
    let body = page(&api, &op, Some("9"), 20, None, None)
        .await
        .err()
        .unwrap();
    expired(&body, "11");
    let p = page(&api, &op, Some("10"), 20, None, None).await.unwrap();
    assert!(p.events.is_empty());
    assert_eq!((p.position, p.head), (10, 10));
    ws.subscribe("gone", FEED_SUB, json!({"after": "4"})).await;
    let error = refusal(&mut ws, "gone").await;
    assert_eq!(error["extensions"]["code"], "CURSOR_EXPIRED", "{error}");
    assert_eq!(error["extensions"]["oldest"], "11", "{error}");
    ws.subscribe("head", FEED_SUB, json!({"after": "10"})).await;
    let body = t.deposit(&w, "1.00", "d-after").await;
    assert!(body.get("errors").is_none(), "{body}");
    // Both live subscriptions ("ok" and "head") get events 11 and 12, in order each.
    let mut by_op: HashMap<String, Vec<i64>> = HashMap::new();
    for _ in 0..4 {
        match ws.next_within(Duration::from_secs(5)).await {
            Some(Event::Message(m)) if m["type"] == "next" => {
                assert!(m["payload"].get("errors").is_none(), "{m}");
                by_op
                    .entry(m["id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(seq(&m["payload"]["data"]["events"]));
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(by_op["ok"], [11, 12]);
    assert_eq!(by_op["head"], [11, 12]);
    let p = page(&api, &op, Some("10"), 20, None, None).await.unwrap();
    assert_eq!(sequences(&p.events), [11, 12]);
}

/// 5. A balance alert fires once per crossing, is re-armed by crossing back, stops when
///    deleted, and only the wallet's owner (or an operator) may set or remove one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_alert_fires_once_per_crossing() {
    let t = TestApp::with(app_options()).await;
    let api = Api::Router(t.router.clone());
    let (alice, bob, op) = (t.user("alice"), t.user("bob"), t.operator());
    let pg = t.db.client().await;
    let w = t.create_wallet("alice", "USD").await;
    // A user has one wallet per currency.
    let other = t.create_wallet("alice", "EUR").await;
    assert!(
        t.deposit(&w, "100.00", "fund")
            .await
            .get("errors")
            .is_none()
    );
    assert!(
        t.deposit(&other, "100.00", "fund")
            .await
            .get("errors")
            .is_none()
    );

    let below = api
        .ok(&alice, CREATE_ALERT, json!({"w": w, "below": "50.00"}))
        .await["createBalanceAlert"]
        .clone();
    assert_eq!(below["wallet"]["id"], w.as_str());
    assert_eq!(dec(&below["below"]), Decimal::from(50));
    assert!(below["above"].is_null());
    let below = below["id"].as_str().unwrap().to_owned();
    // An operator may set one on anyone's wallet.
    let above = api
        .ok(&op, CREATE_ALERT, json!({"w": w, "above": "120.00"}))
        .await["createBalanceAlert"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another wallet's alert, crossed by nothing here.
    api.ok(&alice, CREATE_ALERT, json!({"w": other, "below": "10.00"}))
        .await;

    // Another user may neither set nor remove an alert on alice's wallet.
    let refused = api
        .gql(&bob, CREATE_ALERT, json!({"w": w, "below": "10.00"}))
        .await;
    assert_eq!(error_code(&refused), "NOT_FOUND", "{refused}");
    let refused = api.gql(&bob, DELETE_ALERT, json!({"id": above})).await;
    assert_eq!(error_code(&refused), "NOT_FOUND", "{refused}");

    let mut step = 0;
    let mut move_by = async |amount: i64| {
        step += 1;
        let key = format!("m-{step}");
        let body = if amount > 0 {
            t.deposit(&w, &format!("{amount}.00"), &key).await
        } else {
            t.withdraw(&alice, &w, &format!("{}.00", -amount), &key)
                .await
        };
        assert!(body.get("errors").is_none(), "{body}");
    };
    move_by(-60).await; // 100 → 40: crosses below 50
    for amount in [1, -2, 3, -1, 2] {
        move_by(amount).await; // 41, 39, 42, 41, 43: stays below
    }
    move_by(10).await; // 53: back above (re-armed, no event)
    move_by(-5).await; // 48: crosses below again
    move_by(80).await; // 128: crosses above 120
    move_by(1).await; // 129: stays above
    move_by(-2).await; // 127: stays above

    let alerts_now = |body: Value| -> Vec<String> {
        body["wallet"]["balanceAlerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let listed = alerts_now(api.ok(&alice, ALERTS_OF, json!({"w": w})).await);
    assert_eq!(listed, [below.clone(), above.clone()]);
    let deleted = api.ok(&alice, DELETE_ALERT, json!({"id": below})).await;
    assert_eq!(deleted["deleteBalanceAlert"]["id"], below.as_str());
    let again = api.gql(&alice, DELETE_ALERT, json!({"id": below})).await;
    assert_eq!(error_code(&again), "NOT_FOUND", "deleted already: {again}");
    move_by(-100).await; // 27: would cross below 50, but that alert is gone
    let listed = alerts_now(api.ok(&alice, ALERTS_OF, json!({"w": w})).await);
    assert_eq!(listed, [above.as_str()], "bob's attempt removed nothing");
    assert_eq!(t.balance(&w).await, "27.00");

    settle(&api, &op, &pg).await;
    let types = ["BALANCE_ALERT"];
    let (fired, _) = read_all(
        std::slice::from_ref(&api),
        &alice,
        Some("0"),
        100,
        Some(&w),
        Some(&types),
    )
    .await;
    let summary: Vec<(String, String, Decimal, Decimal, Decimal)> = fired
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "BALANCE_ALERT");
            assert_eq!(e["wallet"]["id"], w.as_str());
            assert_eq!(
                e["wallet"]["availableBalance"], e["alert"]["availableBalance"],
                "the wallet as the crossing change left it"
            );
            (
                e["alert"]["alert"].as_str().unwrap().to_owned(),
                e["alert"]["direction"].as_str().unwrap().to_owned(),
                dec(&e["alert"]["threshold"]),
                dec(&e["alert"]["availableBalance"]),
                dec(&e["wallet"]["balance"]),
            )
        })
        .collect();
    let d = Decimal::from;
    assert_eq!(
        summary,
        [
            (below.clone(), "BELOW".into(), d(50), d(40), d(40)),
            (below.clone(), "BELOW".into(), d(50), d(48), d(48)),
            (above.clone(), "ABOVE".into(), d(120), d(128), d(128)),
        ]
    );
    // Each alert event is where it belongs: right after the WALLET_UPDATED of the change
    // that crossed, with the same balance (the feed as an operator sees it).
    let (all, _) = read_all(
        std::slice::from_ref(&api),
        &op,
        Some("0"),
        100,
        Some(&w),
        None,
    )
    .await;
    for alert in &fired {
        let i = all.iter().position(|e| e["id"] == alert["id"]).unwrap();
        let before = all[..i]
            .iter()
            .rev()
            .find(|e| e["type"] == "WALLET_UPDATED")
            .expect("a WALLET_UPDATED before the alert");
        assert_eq!(before["wallet"]["balance"], alert["wallet"]["balance"]);
    }
    let total_alerts: i64 = pg
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'BALANCE_ALERT'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(total_alerts, 3, "no alert of the other wallet fired");
}

/// 6. A user's feed (query and subscription) holds only their wallets' events; a wallet
///    of someone else is NOT_FOUND; a types filter returns only those types while the
///    position still advances over the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_own_events() {
    let t = TestApp::with(app_options()).await;
    let url = t.serve().await;
    let api = Api::Router(t.router.clone());
    let apis = std::slice::from_ref(&api);
    let (alice, bob, op) = (t.user("alice"), t.user("bob"), t.operator());
    let pg = t.db.client().await;
    let a1 = t.create_wallet("alice", "USD").await;
    let a2 = t.create_wallet("alice", "EUR").await;
    let b1 = t.create_wallet("bob", "USD").await;
    for (i, w) in [&a1, &b1, &a2, &b1, &a1].into_iter().enumerate() {
        let body = t.deposit(w, "30.00", &format!("d-{i}")).await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    let body = t.withdraw(&bob, &b1, "5.00", "w-1").await;
    assert!(body.get("errors").is_none(), "{body}");
    // Transfers both ways between alice and bob: each side's events belong to its owner.
    let transfer = |token: &str, from: &str, to: &str, key: &str| {
        let (api, token) = (api.clone(), token.to_owned());
        let vars = json!({"from": from, "to": to, "a": "2.50", "k": key});
        async move { api.ok(&token, TRANSFER, vars).await }
    };
    transfer(&alice, &a1, &b1, "t-1").await;
    transfer(&bob, &b1, &a1, "t-2").await;
    let head = settle(&api, &op, &pg).await;

    let count = async |sql: &str| -> i64 { pg.query_one(sql, &[]).await.unwrap().get(0) };
    let wallet_ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["wallet"]["id"].as_str().unwrap().to_owned())
            .collect()
    };

    // Everyone's events, to the operator.
    let (all, _) = read_all(apis, &op, None, 7, None, None).await;
    assert_eq!(all.len() as i64, head);
    let alices_count = count("SELECT count(*) FROM events WHERE user_id = 'alice'").await;
    let bobs_count = count("SELECT count(*) FROM events WHERE user_id = 'bob'").await;
    assert!(alices_count > 0 && bobs_count > 0);
    assert_eq!(alices_count + bobs_count, head);

    // Only alice's, to alice (in feed order: a subsequence of the operator's).
    let (mine, last_head) = read_all(apis, &alice, Some("0"), 3, None, None).await;
    assert_eq!(last_head, head, "the head is the feed's, whoever reads");
    assert_eq!(mine.len() as i64, alices_count);
    for id in wallet_ids(&mine) {
        assert!(
            id == a1 || id == a2,
            "alice was shown an event of wallet {id}"
        );
    }
    let alices_in_all: Vec<&Value> = all
        .iter()
        .filter(|e| e["wallet"]["id"] == a1.as_str() || e["wallet"]["id"] == a2.as_str())
        .collect();
    assert_eq!(
        mine.iter().map(seq).collect::<Vec<_>>(),
        alices_in_all.iter().map(|e| seq(e)).collect::<Vec<_>>()
    );
    let (bobs, _) = read_all(apis, &bob, None, 100, None, None).await;
    assert_eq!(bobs.len() as i64, bobs_count);
    assert!(wallet_ids(&bobs).iter().all(|id| *id == b1));

    // One of her wallets; someone else's is NOT_FOUND.
    let (only_a2, _) = read_all(apis, &alice, None, 100, Some(&a2), None).await;
    assert_eq!(
        only_a2.len() as i64,
        count(&format!(
            "SELECT count(*) FROM events WHERE wallet_id = {}",
            db_id(&a2)
        ))
        .await
    );
    assert!(wallet_ids(&only_a2).iter().all(|id| *id == a2));
    let body = page(&api, &alice, None, 10, Some(&b1), None)
        .await
        .err()
        .unwrap();
    assert_eq!(error_code(&body), "NOT_FOUND", "{body}");

    // A types filter: only those types, and the position moves over the others.
    let types = ["TRANSACTION_CREATED"];
    let mut after = "0".to_owned();
    let mut created = Vec::new();
    let mut previous = 0;
    loop {
        let p = page(&api, &alice, Some(&after), 2, None, Some(&types))
            .await
            .unwrap();
        assert!(p.events.iter().all(|e| e["type"] == "TRANSACTION_CREATED"));
        if p.events.len() == 2 {
            assert_eq!(
                p.position,
                seq(&p.events[1]),
                "a full page ends at its last event"
            );
        } else {
            assert_eq!(p.position, p.head, "a page not full ends at the head");
        }
        created.extend(p.events);
        if !p.has_next {
            assert_eq!(p.position, head);
            break;
        }
        assert!(p.position > previous, "the position advances");
        previous = p.position;
        after = p.position.to_string();
    }
    assert_eq!(
        created.len() as i64,
        count(
            "SELECT count(*) FROM events WHERE user_id = 'alice' AND type = 'TRANSACTION_CREATED'"
        )
        .await
    );
    // A type nobody has: no events, and the scan still ends at the head.
    let p = page(&api, &alice, Some("0"), 5, None, Some(&["BALANCE_ALERT"]))
        .await
        .unwrap();
    assert!(p.events.is_empty());
    assert_eq!((p.position, p.has_next), (head, false));

    // The subscription: alice's history, then her live events only.
    let mut ws = WsClient::authenticated(&url, &alice).await;
    ws.subscribe("mine", FEED_SUB, json!({"after": "0"})).await;
    let wait = Duration::from_secs(5);
    let mut replayed = Vec::new();
    for _ in 0..alices_count {
        replayed.push(seq(&next_event(&mut ws, "mine", wait).await));
    }
    assert_eq!(replayed, mine.iter().map(seq).collect::<Vec<_>>());
    ws.subscribe("types", FEED_SUB, json!({"after": "0", "types": types}))
        .await;
    let mut typed = Vec::new();
    for _ in 0..created.len() {
        let e = next_event(&mut ws, "types", wait).await;
        assert_eq!(e["type"], "TRANSACTION_CREATED");
        typed.push(seq(&e));
    }
    assert_eq!(typed, created.iter().map(seq).collect::<Vec<_>>());
    ws.subscribe("bobs", FEED_SUB, json!({"after": "0", "w": b1}))
        .await;
    let error = refusal(&mut ws, "bobs").await;
    assert_eq!(error["extensions"]["code"], "NOT_FOUND", "{error}");

    // Live: bob's deposit is not shown to alice; hers is (to both of her subscriptions).
    assert!(
        t.deposit(&b1, "1.00", "live-b")
            .await
            .get("errors")
            .is_none()
    );
    assert!(
        t.deposit(&a2, "1.00", "live-a")
            .await
            .get("errors")
            .is_none()
    );
    let mut live: Vec<(String, String, String)> = Vec::new();
    for _ in 0..3 {
        match ws.next_within(wait).await {
            Some(Event::Message(m)) if m["type"] == "next" => {
                let e = &m["payload"]["data"]["events"];
                live.push((
                    m["id"].as_str().unwrap().to_owned(),
                    e["type"].as_str().unwrap().to_owned(),
                    e["wallet"]["id"].as_str().unwrap().to_owned(),
                ));
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
    live.sort();
    let s = |x: &str| x.to_owned();
    assert_eq!(
        live,
        [
            (s("mine"), s("TRANSACTION_CREATED"), a2.clone()),
            (s("mine"), s("WALLET_UPDATED"), a2.clone()),
            (s("types"), s("TRANSACTION_CREATED"), a2.clone()),
        ]
    );
    assert!(
        ws.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing of bob's reaches alice"
    );
}
