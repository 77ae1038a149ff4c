//! The event stream on NATS JetStream, against a real `nats-server` of the test's own:
//! every feed event is published once, in feed order, with its id as `Nats-Msg-Id` and its
//! sequence in `Wallet-Event-Sequence`; a broker outage, and a publisher killed mid-run,
//! leave the stream complete and without duplicates; `/readyz` and the metrics show the
//! lag while the broker is away.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use common::nats::NatsServer;
use common::process::{ServerProcess, gauge, post};
use common::{DEPOSIT, Options, TestApp, TestDb, wait_until};
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;
use wallet::auth::{Role, TokenKeys};
use wallet::events::stream::StreamConfig;

const EVENTS: &str = "query($after: String) { events(first: 100, after: $after) {
  edges { node { id sequence type } } position head pageInfo { hasNextPage } } }";
const HEAD: &str = "{ events(first: 1) { head } }";
const CREATE: &str = "mutation { createWallet(input: {currency: \"USD\"}) { id } }";
const TRANSFER: &str = "mutation($from: ID!, $to: ID!, $a: Decimal!, $k: String!) {
  transfer(input: {fromWalletId: $from, toWalletId: $to, amount: $a, idempotencyKey: $k}) { id } }";

/// An event as `Query.events` shows it.
#[derive(Clone, Debug)]
struct FeedEvent {
    id: String,
    kind: String,
}

/// A message as the stream holds it.
#[derive(Clone, Debug)]
struct Published {
    /// Its place in the stream.
    stream_sequence: u64,
    subject: String,
    msg_id: String,
    /// `Wallet-Event-Sequence`.
    sequence: u64,
    body: Value,
}

/// A JetStream context on the test's broker.
async fn jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .expect("the test connects to its nats-server");
    jetstream::new(client)
}

/// How many messages the stream holds (0 while it does not exist yet).
async fn stored(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => info.state.messages,
            Err(_) => 0,
        },
        Err(_) => 0,
    }
}

/// Waits until the stream holds at least `n` messages; returns how many it holds.
async fn wait_for_stored(js: &jetstream::Context, name: &str, n: u64, limit: Duration) -> u64 {
    let give_up = Instant::now() + limit;
    loop {
        let count = stored(js, name).await;
        if count >= n {
            return count;
        }
        assert!(
            Instant::now() < give_up,
            "timed out after {limit:?}: the stream {name} holds {count} of {n} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message of the stream, in stream order, read with an ordered pull consumer from
/// the start.
async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<Published> {
    let mut stream = js.get_stream(name).await.expect("the stream exists");
    let count = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("the consumer's messages");
    let mut out = Vec::with_capacity(count as usize);
    let give_up = Instant::now() + Duration::from_secs(30);
    while (out.len() as u64) < count {
        let left = give_up.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, messages.next())
            .await
            .unwrap_or_else(|_| panic!("read {} of {count} messages in 30 s", out.len()))
            .expect("the consumer goes on")
            .expect("a message");
        let info = message.info().expect("a JetStream message");
        let headers = message.headers.clone().expect("headers");
        let header = |name: &str| {
            headers
                .get(name)
                .unwrap_or_else(|| panic!("no {name} header on {:?}", message.subject))
                .as_str()
                .to_owned()
        };
        out.push(Published {
            stream_sequence: info.stream_sequence,
            subject: message.subject.to_string(),
            msg_id: header("Nats-Msg-Id"),
            sequence: header("Wallet-Event-Sequence")
                .parse()
                .expect("a numeric Wallet-Event-Sequence"),
            body: serde_json::from_slice(&message.payload).expect("a JSON body"),
        });
    }
    out
}

/// Checks the stream against the feed (`feed[s - 1]` is the event numbered `s`): one
/// message per event, in feed order, each with the event's id, subject and body.
fn assert_stream_is_the_feed(messages: &[Published], feed: &[FeedEvent]) {
    let sequences: Vec<u64> = messages.iter().map(|m| m.sequence).collect();
    let expected: Vec<u64> = (1..=feed.len() as u64).collect();
    if sequences != expected {
        let mut seen = HashSet::new();
        let duplicates: Vec<u64> = sequences
            .iter()
            .copied()
            .filter(|s| !seen.insert(*s))
            .collect();
        let missing: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|s| !seen.contains(s))
            .collect();
        let out_of_order: Vec<(u64, u64, u64)> = messages
            .windows(2)
            .filter(|w| w[1].sequence <= w[0].sequence)
            .map(|w| (w[1].stream_sequence, w[0].sequence, w[1].sequence))
            .take(20)
            .collect();
        panic!(
            "the stream's Wallet-Event-Sequence values are not exactly 1..={}: {} messages, \
             duplicates {duplicates:?}, missing {missing:?}, out of order (stream seq, \
             previous, this; first 20) {out_of_order:?}",
            feed.len(),
            messages.len()
        );
    }
    let mut ids = HashSet::new();
    for (m, event) in messages.iter().zip(feed) {
        assert!(
            ids.insert(m.msg_id.clone()),
            "Nats-Msg-Id {} twice",
            m.msg_id
        );
        assert_eq!(m.msg_id, event.id, "Nats-Msg-Id of sequence {}", m.sequence);
        assert_eq!(
            m.subject,
            format!("wallet.events.{}", event.kind),
            "subject of sequence {}",
            m.sequence
        );
        assert_eq!(m.body["type"], event.kind.as_str(), "{}", m.body);
        assert_eq!(m.body["data"]["type"], event.kind.as_str(), "{}", m.body);
        assert_eq!(m.body["data"]["id"], event.id.as_str(), "{}", m.body);
        assert_eq!(
            m.body["data"]["sequence"],
            m.sequence.to_string(),
            "{}",
            m.body
        );
    }
    // Stream order is the order read: consecutive stream sequences, from the first.
    for w in messages.windows(2) {
        assert_eq!(w[1].stream_sequence, w[0].stream_sequence + 1);
    }
}

/// The numbered events from the tables (sequence 1 first): the global id and type.
async fn numbered(pg: &tokio_postgres::Client) -> Vec<FeedEvent> {
    let rows = pg
        .query(
            "SELECT r.first_sequence + (e.id - r.first_event_id) AS seq, e.id, e.type
               FROM events e
               JOIN event_runs r ON e.id BETWEEN r.first_event_id AND r.last_event_id
              ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let seq: i64 = r.get(0);
            assert_eq!(seq, i as i64 + 1, "the feed is numbered 1, 2, 3…");
            let id: i64 = r.get(1);
            use base64::Engine;
            FeedEvent {
                id: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("Event:{id}")),
                kind: r.get(2),
            }
        })
        .collect()
}

/// The feed once numbering has settled.
struct Settled {
    /// The last sequence given.
    head: u64,
    /// Events committed (numbered or not).
    committed: u64,
    /// When they differ: the events left out, the runs, the open transactions.
    diagnosis: String,
}

impl Settled {
    /// Every committed event numbered (else a failure to report).
    fn failure(&self) -> Option<String> {
        (self.head != self.committed).then(|| {
            format!(
                "{} events committed but the feed is numbered only up to {} (ids skipped by \
                 the sequencer, never numbered, so never in Query.events nor the stream): {}",
                self.committed, self.head, self.diagnosis
            )
        })
    }
}

/// Waits until every committed event is numbered, or numbering has stood still for 3 s
/// (then the events left out are described).
async fn settle(pg: &tokio_postgres::Client) -> Settled {
    let started = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    loop {
        let row = pg
            .query_one(
                "SELECT (SELECT COALESCE(max(first_sequence + last_event_id - first_event_id), 0)
                           FROM event_runs),
                        (SELECT count(*) FROM events)",
                &[],
            )
            .await
            .unwrap();
        let (head, committed) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        if head == committed {
            return Settled {
                head,
                committed,
                diagnosis: String::new(),
            };
        }
        if head != last.0 {
            last = (head, Instant::now());
        }
        if last.1.elapsed() > Duration::from_secs(3) || started.elapsed() > Duration::from_secs(20)
        {
            return Settled {
                head,
                committed,
                diagnosis: diagnose_numbering(pg).await,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What holds numbering back: the unnumbered events, the last runs and the sessions of the
/// database with a transaction open.
async fn diagnose_numbering(pg: &tokio_postgres::Client) -> String {
    let text = |sql: &'static str| async move {
        pg.query(sql, &[])
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|e| e.to_string())
    };
    let unnumbered = text(
        "SELECT format('id %s %s xmin %s at %s (%s)', e.id, e.type, e.xmin, e.created_at,
                       (SELECT tx_hash FROM transactions t
                         WHERE e.type LIKE 'TRANSACTION%' AND t.id = e.subject_id))
           FROM events e
          WHERE NOT EXISTS (SELECT 1 FROM event_runs r
                             WHERE e.id BETWEEN r.first_event_id AND r.last_event_id)
          ORDER BY e.id LIMIT 20",
    )
    .await;
    let runs = text(
        "SELECT format('seq %s ids %s..%s at %s', first_sequence, first_event_id, last_event_id,
                       sequenced_at)
           FROM event_runs ORDER BY first_sequence DESC LIMIT 5",
    )
    .await;
    let sessions = text(
        "SELECT format('pid %s state %s xid %s xmin %s since %s wait %s/%s: %s', pid, state,
                       backend_xid, backend_xmin, xact_start, wait_event_type, wait_event,
                       left(query, 120))
           FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()
            AND (backend_xid IS NOT NULL OR state <> 'idle')",
    )
    .await;
    format!(
        "\n unnumbered (first 20): {unnumbered}\n last runs: {runs}\n sessions in a \
         transaction: {sessions}"
    )
}

/// Where the publisher stands: its position and the lease's owner.
async fn stream_position(pg: &tokio_postgres::Client, name: &str) -> (i64, Option<String>) {
    pg.query_opt(
        "SELECT position, lease_owner FROM stream_positions WHERE name = $1",
        &[&name],
    )
    .await
    .unwrap()
    .map_or((0, None), |r| (r.get(0), r.get(1)))
}

/// `stream: <health> (lag <n> events)` of a `/readyz` body.
fn stream_line(body: &str) -> Option<(String, i64)> {
    let line = body.lines().find_map(|l| l.strip_prefix("stream: "))?;
    let (health, rest) = line.split_once(" (lag ")?;
    let lag = rest.strip_suffix(" events)")?.parse().ok()?;
    Some((health.to_owned(), lag))
}

/// A `wallet serve` publishing to the test's broker, with small pools.
async fn serve(db: &TestDb, nats: &NatsServer, stream: &str) -> ServerProcess {
    let url = nats.url();
    ServerProcess::start_with(
        &db.url,
        &[
            ("WALLET_DB_POOL_SIZE", "6"),
            ("WALLET_DB_READ_POOL_SIZE", "2"),
            ("WALLET_WEBHOOKS", "false"),
            ("WALLET_NATS_URL", &url),
            ("WALLET_NATS_STREAM", stream),
        ],
    )
    .await
}

fn tokens() -> (TokenKeys, String) {
    let keys = TokenKeys::new(common::JWT_SECRET.as_bytes());
    let op = keys
        .mint("back-office", Role::Operator, Duration::from_secs(3600))
        .unwrap();
    (keys, op)
}

/// A GraphQL call to a process that must succeed; returns `data`.
async fn ok_at(http: &reqwest::Client, base: &str, token: &str, query: &str, vars: Value) -> Value {
    let body = post(http, base, token, query, vars)
        .await
        .expect("an answer");
    assert!(body.get("errors").is_none(), "unexpected errors: {body}");
    body["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_is_published_once_in_order() {
    let started = Instant::now();
    let nats = NatsServer::new().await;
    let t = TestApp::with(Options {
        pool_size: 4,
        stream: Some(StreamConfig {
            url: nats.url(),
            stream: "T1_EVENTS".into(),
            lease: Duration::from_secs(2),
        }),
        ..Options::default()
    })
    .await;
    let users = ["alice", "bob", "carol"];
    let mut wallets = Vec::new();
    for u in users {
        let w = t.create_wallet(u, "USD").await;
        let body = t.deposit(&w, "100.00", &format!("fund-{u}")).await;
        assert!(body.get("errors").is_none(), "{body}");
        wallets.push(w);
    }
    // 48 more movements, six at a time (so that some share a group-commit batch):
    // deposits and transfers around the three wallets.
    let mut movements = 3;
    for round in 0..8 {
        let bodies = join_all((0..6).map(|i| {
            let (t, wallets) = (&t, &wallets);
            async move {
                let k = (round + i) % 3;
                if i % 2 == 0 {
                    t.deposit(&wallets[k], "2.50", &format!("d-{round}-{i}"))
                        .await
                } else {
                    t.gql(
                        Some(&t.user(users[k])),
                        TRANSFER,
                        json!({"from": wallets[k], "to": wallets[(k + 1) % 3], "a": "1.25",
                               "k": format!("t-{round}-{i}")}),
                    )
                    .await
                }
            }
        }))
        .await;
        for body in bodies {
            assert!(body.get("errors").is_none(), "{body}");
            movements += 1;
        }
    }

    // The feed, as an operator reads it, once every event is numbered.
    let pg = t.db.client().await;
    let settled = settle(&pg).await;
    let head = settled.head;
    let op = t.operator();
    let mut feed = Vec::new();
    let mut after: Option<String> = None;
    let api_head = loop {
        let page = t.ok(&op, EVENTS, json!({ "after": after })).await["events"].clone();
        for edge in page["edges"].as_array().unwrap() {
            let node = &edge["node"];
            assert_eq!(
                node["sequence"],
                (feed.len() + 1).to_string(),
                "the feed is gap-free"
            );
            feed.push(FeedEvent {
                id: node["id"].as_str().unwrap().to_owned(),
                kind: node["type"].as_str().unwrap().to_owned(),
            });
        }
        after = Some(page["position"].as_str().unwrap().to_owned());
        if !page["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break page["head"].as_str().unwrap().parse::<u64>().unwrap();
        }
    };
    assert_eq!(api_head, head, "Query.events head and the tables agree");
    assert_eq!(feed.len() as u64, head);

    // The stream holds the feed: every event once, in order.
    let js = jetstream(&nats.url()).await;
    let count = wait_for_stored(&js, "T1_EVENTS", head, Duration::from_secs(20)).await;
    let messages = read_stream(&js, "T1_EVENTS").await;
    assert_eq!(count, messages.len() as u64);
    assert_stream_is_the_feed(&messages, &feed);
    // Nothing more comes later (the publisher has been through another round by then).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stored(&js, "T1_EVENTS").await,
        head,
        "no message after the feed's head"
    );
    let (position, _) = stream_position(&pg, "T1_EVENTS").await;
    assert_eq!(position as u64, head, "the recorded position is the head");
    eprintln!(
        "{movements} movements, {head} events published in order; test {:?}",
        started.elapsed()
    );
    if let Some(failure) = settled.failure() {
        panic!("{failure}");
    }
    // Every journal row (a deposit makes one, a transfer two) has its TRANSACTION_CREATED
    // in the feed, and so in the stream.
    let rows: i64 = pg
        .query_one("SELECT count(*) FROM transactions", &[])
        .await
        .unwrap()
        .get(0);
    let created = feed
        .iter()
        .filter(|e| e.kind == "TRANSACTION_CREATED")
        .count();
    assert_eq!(created as i64, rows, "TRANSACTION_CREATED events");
    assert_eq!(rows, 27 + 2 * 24, "journal rows of {movements} movements");
}

/// What the load's clients did.
#[derive(Default)]
struct Tally {
    acknowledged: AtomicUsize,
    refused: AtomicUsize,
    unanswered: AtomicUsize,
}

/// `clients` clients, each with a funded wallet of its own, sending deposits (as the
/// operator) and transfers to the next client's wallet (as the owner), one after another,
/// to whichever live server's turn it is, until `stop`.
fn load(
    clients: usize,
    wallets: Arc<Vec<(String, String)>>,
    live: Arc<Mutex<Vec<String>>>,
    op: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (wallets, live, op, stop, tally) = (
                wallets.clone(),
                live.clone(),
                op.clone(),
                stop.clone(),
                tally.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let base = {
                        let live = live.lock().unwrap();
                        live[(c + n) % live.len()].clone()
                    };
                    let (wallet, token) = &wallets[c];
                    let answer = if n.is_multiple_of(2) {
                        let vars = json!({"w": wallet, "a": "1.00", "k": format!("d-{c}-{n}")});
                        post(&http, &base, &op, DEPOSIT, vars).await
                    } else {
                        let to = &wallets[(c + 1) % wallets.len()].0;
                        let vars = json!({"from": wallet, "to": to, "a": "0.50",
                                          "k": format!("t-{c}-{n}")});
                        post(&http, &base, token, TRANSFER, vars).await
                    };
                    n += 1;
                    match answer {
                        Ok(body) if body.get("errors").is_none() => {
                            tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            tally.unanswered.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Creates and funds a USD wallet per client; (wallet id, owner's token).
async fn funded_wallets(
    http: &reqwest::Client,
    base: &str,
    keys: &TokenKeys,
    op: &str,
    clients: usize,
) -> Vec<(String, String)> {
    let mut wallets = Vec::new();
    for c in 0..clients {
        let token = keys
            .mint(
                &format!("client-{c}"),
                Role::User,
                Duration::from_secs(3600),
            )
            .unwrap();
        let w = ok_at(http, base, &token, CREATE, json!({})).await["createWallet"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        ok_at(
            http,
            base,
            op,
            DEPOSIT,
            json!({"w": w, "a": "1000.00", "k": format!("fund-{c}")}),
        )
        .await;
        wallets.push((w, token));
    }
    wallets
}

/// What `/readyz` said while the broker was away.
#[derive(Debug, Default)]
struct Outage {
    polls: usize,
    not_ready: Vec<String>,
    /// (seconds into the outage, server index, health, lag)
    lines: Vec<(f64, usize, String, i64)>,
    /// (seconds into the outage, the publishing lease)
    leases: Vec<(f64, String)>,
    /// The server holding the lease at the end of the outage.
    publisher: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_stopped_and_restarted_under_load() {
    const STREAM: &str = "T2_EVENTS";
    let started = Instant::now();
    let mut nats = NatsServer::new().await;
    let db = TestDb::new().await;
    let pg = db.client().await;
    let mut servers = vec![
        serve(&db, &nats, STREAM).await,
        serve(&db, &nats, STREAM).await,
    ];
    let (keys, op) = tokens();
    let http = reqwest::Client::new();
    let wallets = Arc::new(funded_wallets(&http, &servers[0].base, &keys, &op, 6).await);
    let live = Arc::new(Mutex::new(
        servers.iter().map(|s| s.base.clone()).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients = load(
        6,
        wallets,
        live.clone(),
        op.clone(),
        stop.clone(),
        tally.clone(),
    );
    let load_started = Instant::now();

    // Two seconds of load with the broker up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut before = Vec::new();
    for s in &servers {
        before.push(s.readyz_body().await.map(|(_, body)| stream_line(&body)));
    }

    // The broker away for three seconds, under load: every process stays ready; what
    // its stream line says is recorded.
    tokio::task::block_in_place(|| nats.stop());
    let stopped = Instant::now();
    let acknowledged_at_stop = tally.acknowledged.load(Ordering::Relaxed);
    let mut outage = Outage::default();
    while stopped.elapsed() < Duration::from_secs(3) {
        let lease = pg
            .query_one(
                "SELECT format('position %s owner %s for %s', position, split_part(lease_owner, '-', 1),
                               lease_until - now()) FROM stream_positions WHERE name = $1",
                &[&STREAM],
            )
            .await
            .unwrap()
            .get::<_, String>(0);
        outage
            .leases
            .push(((stopped.elapsed().as_millis() / 100) as f64 / 10.0, lease));
        for (i, s) in servers.iter().enumerate() {
            outage.polls += 1;
            match s.readyz_body().await {
                Some((200, body)) => {
                    if let Some((health, lag)) = stream_line(&body) {
                        outage.lines.push((
                            (stopped.elapsed().as_millis() / 100) as f64 / 10.0,
                            i,
                            health,
                            lag,
                        ));
                    } else {
                        outage.not_ready.push(format!("no stream line: {body}"));
                    }
                }
                other => outage.not_ready.push(format!("{other:?}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, owner) = stream_position(&pg, STREAM).await;
    outage.publisher = servers
        .iter()
        .position(|s| {
            owner
                .as_ref()
                .is_some_and(|o| o.starts_with(&format!("{}-", s.pid())))
        })
        .expect("one of the servers holds the publishing lease");
    let committed_in_outage = tally.acknowledged.load(Ordering::Relaxed) - acknowledged_at_stop;
    nats.start().await;
    let restarted = Instant::now();

    // SIGKILL the publisher while a batch is in flight — in the stream, not yet recorded
    // as published (or after 8 s): the other process takes over after its lease (15 s for
    // `wallet serve`) and publishes those events again, for the broker to drop.
    let js = jetstream(&nats.url()).await;
    let give_up = Instant::now() + Duration::from_secs(8);
    let mut in_flight = None;
    while Instant::now() < give_up {
        let (position, _) = stream_position(&pg, STREAM).await;
        let held = stored(&js, STREAM).await;
        if held > position as u64 {
            in_flight = Some((position, held));
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (position_at_kill, owner) = stream_position(&pg, STREAM).await;
    let owner = owner.expect("a process holds the publishing lease");
    let pid: u32 = owner
        .split('-')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a lease owner named after its pid: {owner}"));
    let killed = servers
        .iter()
        .position(|s| s.pid() == pid)
        .unwrap_or_else(|| panic!("the lease owner {owner} is one of the servers"));
    live.lock().unwrap().retain(|b| *b != servers[killed].base);
    servers[killed].kill();
    let killed_at = Instant::now();
    // Published but not recorded as published: the survivor publishes these again, and
    // the broker drops the repeats.
    let stored_at_kill = stored(&js, STREAM).await;
    let survivor = &servers[1 - killed];

    // Load until 8 s in, and at least a second after the kill.
    let until = (load_started + Duration::from_secs(8)).max(killed_at + Duration::from_secs(1));
    tokio::time::sleep_until(until).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let load_time = load_started.elapsed();

    // The whole (numbered) feed reaches the stream, once and in order.
    let settled = settle(&pg).await;
    let head = settled.head;
    let feed = numbered(&pg).await;
    assert_eq!(feed.len() as u64, head);
    let api_head = ok_at(&http, &survivor.base, &op, HEAD, json!({})).await["events"]["head"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(api_head, head, "Query.events head and the tables agree");
    let count = wait_for_stored(&js, STREAM, head, Duration::from_secs(45)).await;
    let complete_after_kill = killed_at.elapsed();
    let messages = read_stream(&js, STREAM).await;
    assert_eq!(count, messages.len() as u64);
    assert_stream_is_the_feed(&messages, &feed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        stored(&js, STREAM).await,
        head,
        "no message after the feed's head"
    );
    let (position, owner) = stream_position(&pg, STREAM).await;
    assert_eq!(position as u64, head, "the recorded position is the head");
    assert!(
        owner.is_some_and(|o| o.starts_with(&format!("{}-", survivor.pid()))),
        "the survivor publishes"
    );
    wait_until(
        "the survivor's /readyz says `stream: ok (lag 0 events)`",
        Duration::from_secs(10),
        || async {
            survivor.readyz_body().await.is_some_and(|(status, body)| {
                status == 200 && stream_line(&body) == Some(("ok".to_owned(), 0))
            })
        },
    )
    .await;

    eprintln!(
        "load {load_time:?}: {} acknowledged ({committed_in_outage} while the broker was \
         away), {} refused, {} unanswered; {head} events; server {killed} (the publisher) \
         killed {:?} after the broker's restart at recorded position {position_at_kill} \
         with {stored_at_kill} in the stream (just before: (recorded, in the stream) \
         {in_flight:?}); stream complete {complete_after_kill:?} after the kill; test {:?}",
        tally.acknowledged.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.unanswered.load(Ordering::Relaxed),
        killed_at - restarted,
        started.elapsed()
    );
    eprintln!("readyz stream lines before the stop: {before:?}");
    eprintln!(
        "the publishing lease during the outage (s, lease; pids {:?}): {:?}",
        servers.iter().map(|s| s.pid()).collect::<Vec<_>>(),
        outage.leases
    );
    eprintln!(
        "readyz stream lines during the outage (s, server, health, lag): {:?}",
        outage.lines
    );

    // What /readyz said during the outage, and whether every event was numbered.
    let mut failures = Vec::new();
    if !outage.not_ready.is_empty() {
        failures.push(format!(
            "/readyz not 200 with a stream line while the broker was away: {:?}",
            outage.not_ready
        ));
    }
    if !outage.lines.iter().any(|l| l.2 == "unavailable") {
        failures.push(format!(
            "no `stream: unavailable` in {} polls of /readyz of either process during the \
             3 s the broker was away ({committed_in_outage} movements committed meanwhile)",
            outage.polls
        ));
    }
    // The publisher's lag: each movement makes at least two events, none of which
    // reached the broker.
    let lags: Vec<i64> = outage
        .lines
        .iter()
        .filter(|l| l.1 == outage.publisher)
        .map(|l| l.3)
        .collect();
    let grew = lags.last().unwrap_or(&0) - lags.first().unwrap_or(&0);
    if grew < committed_in_outage as i64 {
        failures.push(format!(
            "the publishing process's /readyz lag grew by {grew} while the broker was away and \
             {committed_in_outage} movements (at least {} events) committed: {lags:?}",
            2 * committed_in_outage
        ));
    }
    if let Some(failure) = settled.failure() {
        failures.push(failure);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_and_metric_show_the_lag() {
    const STREAM: &str = "T3_EVENTS";
    let started = Instant::now();
    let mut nats = NatsServer::new().await;
    let db = TestDb::new().await;
    let pg = db.client().await;
    let server = serve(&db, &nats, STREAM).await;
    let (keys, op) = tokens();
    let http = reqwest::Client::new();
    let wallets = funded_wallets(&http, &server.base, &keys, &op, 1).await;
    let w = wallets[0].0.clone();
    let deposits = |from: usize, to: usize| {
        let (http, base, op, w) = (&http, &server.base, &op, &w);
        async move {
            for i in from..to {
                let vars = json!({"w": w, "a": "1.00", "k": format!("d-{i}")});
                ok_at(http, base, op, DEPOSIT, vars).await;
            }
        }
    };
    let readyz = || async { stream_line(&server.readyz_body().await.expect("an answer").1) };
    let lag_metric = || async { gauge(&server.metrics().await, "wallet_stream_lag_events") };
    let mut failures = Vec::new();

    // Caught up: lag 0.
    let head = settle(&pg).await.head;
    assert!(head > 0);
    wait_until(
        "the stream caught up and /readyz says `stream: ok (lag 0 events)`",
        Duration::from_secs(10),
        || async {
            stream_position(&pg, STREAM).await.0 as u64 == head
                && readyz().await == Some(("ok".to_owned(), 0))
        },
    )
    .await;
    assert_eq!(lag_metric().await, Some(0.0));

    // The broker away; movements go on.
    tokio::task::block_in_place(|| nats.stop());
    let stopped = Instant::now();
    deposits(0, 5).await;
    let head = settle(&pg).await.head;
    let behind = head as i64 - stream_position(&pg, STREAM).await.0;
    assert!(behind > 0);
    let mut seen = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(15);
    let unavailable = loop {
        let line = readyz().await;
        if seen.last().map(|(_, l)| l) != Some(&line) {
            seen.push((
                (stopped.elapsed().as_millis() / 100) as f64 / 10.0,
                line.clone(),
            ));
        }
        if let Some((health, lag)) = &line
            && health == "unavailable"
        {
            break Some((*lag, stopped.elapsed()));
        }
        if Instant::now() >= give_up {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The figure may trail the verdict by a moment (it is refreshed from the database).
    let mut shown = (None, None);
    let exact = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            shown = (readyz().await, lag_metric().await);
            if shown
                == (
                    Some(("unavailable".to_owned(), behind)),
                    Some(behind as f64),
                )
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();
    eprintln!(
        "/readyz stream line after the broker's stop (s, line), {behind} events unpublished: \
         {seen:?}; then (line, wallet_stream_lag_events) {shown:?}"
    );
    match unavailable {
        None => failures.push(format!(
            "/readyz never said `stream: unavailable` in 15 s without a broker, {behind} \
             events unpublished: {seen:?}"
        )),
        Some((lag, after)) => {
            if after > Duration::from_secs(2) {
                failures.push(format!(
                    "/readyz said `stream: ok` for {after:?} after the broker stopped: {seen:?}"
                ));
            }
            if lag <= 0 {
                failures.push(format!(
                    "/readyz says `stream: unavailable (lag {lag} events)` with {behind} \
                     events unpublished"
                ));
            }
        }
    }
    if !exact {
        failures.push(format!(
            "with the broker away and {behind} events unpublished, /readyz and \
             wallet_stream_lag_events show {shown:?}"
        ));
    }

    // More movements while the broker is still away: the lag shown follows the feed.
    deposits(5, 10).await;
    let head = settle(&pg).await.head;
    let behind = head as i64 - stream_position(&pg, STREAM).await.0;
    let mut last = None;
    let followed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let shown = (readyz().await, lag_metric().await);
            let done = shown
                == (
                    Some(("unavailable".to_owned(), behind)),
                    Some(behind as f64),
                );
            last = Some(shown);
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if followed.is_err() {
        failures.push(format!(
            "with the broker away and {behind} events unpublished, /readyz and \
             wallet_stream_lag_events still show {last:?} after 8 s"
        ));
    }

    // The broker back: the stream catches up, the lag goes back to 0.
    nats.start().await;
    let restarted = Instant::now();
    wait_until(
        "/readyz says `stream: ok (lag 0 events)` after the restart",
        Duration::from_secs(20),
        || async {
            stream_position(&pg, STREAM).await.0 as u64 == head
                && readyz().await == Some(("ok".to_owned(), 0))
        },
    )
    .await;
    let recovered_after = restarted.elapsed();
    assert_eq!(lag_metric().await, Some(0.0), "wallet_stream_lag_events");
    let js = jetstream(&nats.url()).await;
    wait_for_stored(&js, STREAM, head, Duration::from_secs(10)).await;
    let messages = read_stream(&js, STREAM).await;
    assert_stream_is_the_feed(&messages, &numbered(&pg).await);
    eprintln!(
        "caught up {recovered_after:?} after the broker's restart; test {:?}",
        started.elapsed()
    );
    if let Some(failure) = settle(&pg).await.failure() {
        failures.push(failure);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
