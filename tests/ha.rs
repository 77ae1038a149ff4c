//! High availability: the service on a pg_auto_failover formation (a monitor and two data
//! nodes with synchronous replication, private ports and directories) follows a failover
//! without a restart and without losing or repeating an acknowledged movement.
//!
//! `WALLET_FAULT_LOAD=long` runs a longer load before the failure (CI runs the short one).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::formation::Formation;
use common::process::{Heard, Load, Movement, ServerProcess, Tokens, funded_wallets, post};
use common::ws::{Event, WsClient};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// Movements acknowledged before the primary is killed.
fn load_before_fault() -> usize {
    match std::env::var("WALLET_FAULT_LOAD").as_deref() {
        Ok("long") => 20_000,
        _ => 1_000,
    }
}

/// Small pools: two processes share each data node with the formation's own sessions.
const PROCESS_ENV: &[(&str, &str)] = &[
    ("WALLET_DB_POOL_SIZE", "8"),
    ("WALLET_DB_READ_POOL_SIZE", "4"),
    ("WALLET_WEBHOOKS", "false"),
    ("WALLET_REQUEST_TIMEOUT_SECS", "5"),
];

/// The failover test's processes also send webhooks, with a short lease and retry (a
/// process that lost the database gives its endpoints up soon).
const WEBHOOK_ENV: &[(&str, &str)] = &[
    ("WALLET_WEBHOOKS", "true"),
    ("WALLET_WEBHOOK_LEASE_MS", "3000"),
    ("WALLET_WEBHOOK_RETRY_BASE_MS", "200"),
    ("WALLET_WEBHOOK_RETRY_MAX_MS", "1000"),
];

const FEED_SUB: &str = "subscription($after: String) {
  events(after: $after) { sequence type transaction { id } } }";

/// The JetStream stream the processes publish to.
const STREAM: &str = "WALLET_HA";

/// The `Wallet-Event-Sequence` of every message in the stream, in stream order, once it
/// holds at least `head` messages.
async fn stream_sequences(url: &str, head: i64) -> Vec<i64> {
    use async_nats::jetstream;
    use futures_util::StreamExt as _;
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let give_up = Instant::now() + Duration::from_secs(60);
    let count = loop {
        let count = match js.get_stream(STREAM).await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if count >= head as u64 {
            break count;
        }
        assert!(
            Instant::now() < give_up,
            "the stream holds {count} of {head} events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stream = js.get_stream(STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the stream's messages")
            .unwrap()
            .unwrap();
        let headers = message.headers.clone().unwrap();
        out.push(
            headers
                .get("Wallet-Event-Sequence")
                .unwrap()
                .as_str()
                .parse()
                .unwrap(),
        );
    }
    out
}

const HEAD: &str = "query { events(first: 1) { head } }";

const BY_KEY: &str =
    "query($w: ID!, $k: String!) { transactionByKey(walletId: $w, key: $k) { id } }";

/// One event as the subscriber got it: sequence, type, the transaction's id.
type FeedEvent = (i64, String, Option<String>);

/// The feed as one subscriber saw it: `(sequence, type, transaction id)`, resubscribing
/// from its last position (on either process) whenever a subscription ends — as a client
/// would.
struct FeedReader {
    seen: Arc<Mutex<Vec<FeedEvent>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl FeedReader {
    fn start(endpoints: Vec<String>, token: String) -> FeedReader {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                let mut resubscribed = 0;
                let mut turn = 0;
                while !stop.load(Ordering::Relaxed) {
                    let after = seen.lock().unwrap().last().map(|(s, _, _)| *s).unwrap_or(0);
                    let url = &endpoints[turn % endpoints.len()];
                    turn += 1;
                    let Ok(Ok(mut ws)) = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::spawn({
                            let (url, token) = (url.clone(), token.clone());
                            async move { WsClient::authenticated(&url, &token).await }
                        }),
                    )
                    .await
                    else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    ws.subscribe("feed", FEED_SUB, json!({"after": after.to_string()}))
                        .await;
                    loop {
                        match ws.next_within(Duration::from_millis(500)).await {
                            Some(Event::Message(m)) if m["type"] == "next" => {
                                if m["payload"].get("errors").is_some() {
                                    break;
                                }
                                let e = &m["payload"]["data"]["events"];
                                let sequence: i64 =
                                    e["sequence"].as_str().unwrap().parse().unwrap();
                                seen.lock().unwrap().push((
                                    sequence,
                                    e["type"].as_str().unwrap().to_owned(),
                                    e["transaction"]["id"].as_str().map(str::to_owned),
                                ));
                            }
                            // An error, a completion or a close: resume elsewhere.
                            Some(_) => break,
                            None if stop.load(Ordering::Relaxed) => break,
                            None => {}
                        }
                    }
                    resubscribed += 1;
                }
                resubscribed
            })
        };
        FeedReader { seen, stop, task }
    }

    fn last(&self) -> i64 {
        self.seen
            .lock()
            .unwrap()
            .last()
            .map(|(s, _, _)| *s)
            .unwrap_or(0)
    }
}

/// `/readyz` of each process, every 100 ms: `(since the kill, process, status)`.
fn watch_readiness(
    bases: Vec<String>,
    since: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Duration, usize, u16)>> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for (i, base) in bases.iter().enumerate() {
                let status = match http.get(format!("{base}/readyz")).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                if let Some(at) = *since.lock().unwrap() {
                    seen.push((at.elapsed(), i, status));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_under_load_loses_nothing_acknowledged() {
    let mut formation = tokio::task::spawn_blocking(|| Formation::start("wallet_ha"))
        .await
        .unwrap();
    assert_eq!(formation.primary(), 1);
    // Synchronous: a commit on node 1 is acknowledged once node 2 has it.
    let standbys = formation.psql_output(
        formation.node_ports[0],
        "postgres",
        "SELECT current_setting('synchronous_standby_names') <> '', \
                current_setting('synchronous_commit'), \
                (SELECT string_agg(sync_state, ',') FROM pg_stat_replication)",
    );
    let standbys = standbys.trim();
    assert!(
        standbys.starts_with("t|on|")
            && (standbys.ends_with("quorum") || standbys.ends_with("sync")),
        "node 1 replicates synchronously to node 2: {standbys}"
    );

    let url = formation.url();
    // Both processes publish the feed to a NATS JetStream stream (one at a time, by lease).
    let nats = common::nats::NatsServer::new().await;
    let nats_url = nats.url();
    let env: Vec<(&str, &str)> = PROCESS_ENV
        .iter()
        .copied()
        .chain(WEBHOOK_ENV.iter().copied())
        .chain([
            ("WALLET_NATS_URL", nats_url.as_str()),
            ("WALLET_NATS_STREAM", STREAM),
        ])
        .collect();
    // Process a also runs the chain worker (the simulated chain's deposit watcher).
    let env_a: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("WALLET_CHAIN_POLL_MS", "200")])
        .collect();
    let a = ServerProcess::start_with(&url, &env_a).await;
    let b = ServerProcess::start_with(&url, &env).await;
    let pids = (a.pid(), b.pid());
    let users = ["ann", "ben", "cat", "dan"];
    let tokens = Tokens::for_users(&users);
    let wallets = funded_wallets(&a.base, &tokens, &users).await;
    // A webhook endpoint for every movement, verified by a Standard Webhooks receiver.
    let receiver = common::receiver::Receiver::start(&common::receiver::new_secret()).await;
    let endpoint = post(
        &reqwest::Client::new(),
        &a.base,
        &tokens.operator,
        "mutation($in: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $in) { secret position } }",
        json!({"in": {"url": receiver.url("/ha"), "eventTypes": ["TRANSACTION_CREATED"]}}),
    )
    .await
    .unwrap();
    receiver
        .set_secret(
            endpoint["data"]["createWebhookEndpoint"]["secret"]
                .as_str()
                .unwrap(),
        )
        .await;
    // The endpoint is sent what is committed after this position.
    let endpoint_from: i64 = endpoint["data"]["createWebhookEndpoint"]["position"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let feed = FeedReader::start(vec![b.websocket(), a.websocket()], tokens.operator.clone());
    // 16 clients in all, 8 on each process.
    let load_a = Load::start_with_transfers(&a.base, 8, wallets.clone(), tokens.clone(), "a");
    let load_b = Load::start_with_transfers(&b.base, 8, wallets.clone(), tokens.clone(), "b");
    let half = load_before_fault() / 2;
    load_a
        .wait_for_acknowledged(half, Duration::from_secs(600))
        .await;
    load_b
        .wait_for_acknowledged(half, Duration::from_secs(600))
        .await;

    let killed_at = Arc::new(Mutex::new(None));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let readiness = watch_readiness(
        vec![a.base.clone(), b.base.clone()],
        killed_at.clone(),
        stop_watch.clone(),
    );
    let acknowledged_before =
        load_a.acknowledged.load(Ordering::Relaxed) + load_b.acknowledged.load(Ordering::Relaxed);

    // The primary's machine dies.
    tokio::task::block_in_place(|| formation.kill_node(1));
    let kill = Instant::now();
    *killed_at.lock().unwrap() = Some(kill);

    // A probe deposit every 50 ms until one succeeds: the time to the first.
    let http = reqwest::Client::new();
    let (probe_wallet, _) = &wallets[0];
    let mut probes = Vec::new();
    let first_success = loop {
        let movement = Movement {
            key: format!("probe-{}", probes.len()),
            wallet: probe_wallet.clone(),
            user: "ann".into(),
            deposit: true,
            amount: "1.00".into(),
            to: None,
        };
        let (query, vars) = movement.query();
        let base = [&a.base, &b.base][probes.len() % 2];
        let answer = common::process::hear(
            &movement,
            post(&http, base, &tokens.operator, query, vars).await,
        );
        let done = matches!(answer, Heard::Acknowledged(_));
        probes.push((movement, answer));
        if done {
            break kill.elapsed();
        }
        assert!(
            kill.elapsed() < Duration::from_secs(120),
            "no deposit succeeded within 120 s of the kill:\n{}",
            formation.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The deposit committed on node 2, promoted.
    tokio::task::block_in_place(|| {
        formation.wait_for_states(Duration::from_secs(60), |s| {
            s[1].reported == "wait_primary" || s[1].reported == "primary"
        })
    });

    // Serving again on the new primary: both processes, no restart.
    for server in [&a, &b] {
        server.wait_ready(Duration::from_secs(30)).await;
    }
    let after_failover =
        load_a.acknowledged.load(Ordering::Relaxed) + load_b.acknowledged.load(Ordering::Relaxed);
    load_a
        .wait_for_acknowledged(
            load_a.acknowledged.load(Ordering::Relaxed) + 200,
            Duration::from_secs(120),
        )
        .await;

    // The old primary comes back, as a standby of the new one.
    tokio::task::block_in_place(|| {
        formation.restart_node(1);
        formation.wait_for_states(Duration::from_secs(120), |s| {
            s[0].reported == "secondary"
                && s[0].assigned == "secondary"
                && s[1].reported == "primary"
                && s[1].assigned == "primary"
        });
    });
    load_b
        .wait_for_acknowledged(
            load_b.acknowledged.load(Ordering::Relaxed) + 200,
            Duration::from_secs(120),
        )
        .await;
    // The chain worker resumed on the new primary: a crypto deposit is credited.
    let btc = post(
        &http,
        &a.base,
        &tokens.users["ann"],
        common::CREATE_CRYPTO,
        json!({"c": "BTC"}),
    )
    .await
    .unwrap();
    let (btc_wallet, address) = (
        btc["data"]["createWallet"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        btc["data"]["createWallet"]["address"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    for (query, vars) in [
        (
            common::INCOMING,
            json!({"n": "bitcoin", "to": address, "a": "0.50000000"}),
        ),
        (common::MINE, json!({"n": "bitcoin", "c": 6})),
    ] {
        let done = post(&http, &b.base, &tokens.operator, query, vars)
            .await
            .unwrap();
        assert!(done.get("errors").is_none(), "{done}");
    }
    common::wait_until(
        "the chain worker credits the deposit",
        Duration::from_secs(30),
        || async {
            let w = post(
                &http,
                &b.base,
                &tokens.operator,
                BALANCE,
                json!({"w": btc_wallet}),
            )
            .await
            .unwrap();
            w["data"]["wallet"]["balance"] == "0.50000000"
        },
    )
    .await;

    let mut heard = load_a.stop().await;
    heard.extend(load_b.stop().await);
    stop_watch.store(true, Ordering::Relaxed);
    let readiness = readiness.await.unwrap();

    // Only clear answers: committed, UNAVAILABLE (nothing happened), OUTCOME_UNKNOWN.
    let unclear: Vec<_> = heard
        .values()
        .chain(probes.iter())
        .filter(|(_, h)| match h {
            Heard::Acknowledged(_) => false,
            Heard::Refused(code) => !["UNAVAILABLE", "INSUFFICIENT_FUNDS"].contains(&code.as_str()),
            Heard::Unknown(u) => u != "OUTCOME_UNKNOWN",
        })
        .map(|(m, h)| (m.key.clone(), h.clone()))
        .collect();
    assert!(unclear.is_empty(), "unclear answers: {unclear:?}");

    // Every OUTCOME_UNKNOWN resolves by key: the lookup says whether it happened.
    let pg = connect(&url).await;
    let mut unknown = 0;
    let mut unknown_committed = 0;
    for (movement, first) in heard.values().chain(probes.iter()) {
        if !matches!(first, Heard::Unknown(_)) {
            continue;
        }
        unknown += 1;
        let token = match movement.deposit {
            true => &tokens.operator,
            false => &tokens.users[&movement.user],
        };
        let found = post(
            &http,
            &a.base,
            token,
            BY_KEY,
            json!({"w": movement.wallet, "k": movement.key}),
        )
        .await
        .unwrap();
        assert!(found.get("errors").is_none(), "{found}");
        let rows: i64 = pg
            .query_one(
                "SELECT count(*) FROM transactions WHERE tx_hash = $1",
                &[&movement.key],
            )
            .await
            .unwrap()
            .get(0);
        let by_key = !found["data"]["transactionByKey"].is_null();
        assert_eq!(
            by_key,
            rows > 0,
            "{}: the lookup tells the truth",
            movement.key
        );
        unknown_committed += usize::from(by_key);
    }
    // Then every key is sent again: acknowledged ones come back as the original, exactly
    // once; refused ones left nothing.
    let mut all: common::process::Answers = heard;
    for (m, h) in probes {
        all.insert(m.key.clone(), (m, h));
    }
    let journaled = common::process::replay_and_check(&a.base, &tokens, &all, &pg).await;
    let acknowledged = all
        .values()
        .filter(|(_, h)| matches!(h, Heard::Acknowledged(_)))
        .count();
    assert!(journaled >= acknowledged);

    // The ledger is whole: every chain verifies, the trial balance is zero.
    let mut rows = common::process::check_chain(&b.base, &tokens.operator, &btc_wallet).await;
    for (wallet, _) in &wallets {
        rows += common::process::check_chain(&b.base, &tokens.operator, wallet).await;
    }
    let journal_rows: i64 = pg
        .query_one("SELECT count(*) FROM transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows as i64, journal_rows,
        "every row is on a verified chain"
    );
    let trial = post(
        &http,
        &b.base,
        &tokens.operator,
        "query { trialBalance { currency imbalance } }",
        json!({}),
    )
    .await
    .unwrap();
    for line in trial["data"]["trialBalance"].as_array().unwrap() {
        assert_eq!(line["imbalance"], "0", "{trial}");
    }

    // The feed subscriber got every committed movement once, in one gap-free sequence.
    let head: i64 = {
        let data = post(&http, &a.base, &tokens.operator, HEAD, json!({}))
            .await
            .unwrap();
        data["data"]["events"]["head"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    common::wait_until(
        "the subscriber reaches the head",
        Duration::from_secs(60),
        || async { feed.last() >= head },
    )
    .await;
    feed.stop.store(true, Ordering::Relaxed);
    let resubscribed = feed.task.await.unwrap();
    let seen = feed.seen.lock().unwrap().clone();
    let sequences: Vec<i64> = seen.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        sequences,
        (1..=sequences.len() as i64).collect::<Vec<_>>(),
        "gap-free, no repeats"
    );
    let created: Vec<String> = seen
        .iter()
        .filter(|(_, t, _)| t == "TRANSACTION_CREATED")
        .filter_map(|(_, _, tx)| tx.clone())
        .collect();
    let distinct: HashSet<&String> = created.iter().collect();
    assert_eq!(distinct.len(), created.len(), "each movement once");
    assert_eq!(
        created.len() as i64,
        journal_rows,
        "every journal row in the feed"
    );

    // Webhook delivery resumed on the new primary: every movement delivered, signed (at
    // least once; a repeat has the same id).
    // Those after the endpoint was created (the fundings came before).
    let movements = seen
        .iter()
        .filter(|(sequence, kind, _)| kind == "TRANSACTION_CREATED" && *sequence > endpoint_from)
        .count();
    let records = receiver
        .wait_for(
            |r| {
                r.iter()
                    .filter(|d| d.status == 204)
                    .map(|d| &d.id)
                    .collect::<HashSet<_>>()
                    .len()
                    >= movements
            },
            Duration::from_secs(120),
        )
        .await;
    let delivered: HashSet<&String> = records
        .iter()
        .filter(|d| d.status == 204)
        .map(|d| &d.id)
        .collect();
    assert_eq!(
        delivered.len(),
        movements,
        "every movement delivered by webhook"
    );
    assert!(records.iter().all(|d| d.verified), "every delivery signed");
    let repeats = records.len() - delivered.len();

    // The stream publisher resumed on the new primary: the stream is the feed, each event
    // once.
    let published = stream_sequences(&nats.url(), head).await;
    assert_eq!(
        published,
        (1..=head).collect::<Vec<_>>(),
        "the stream holds every event once, in order"
    );

    // Readiness: both processes said 503 during the switch and 200 after.
    for process in 0..2 {
        let statuses: Vec<&(Duration, usize, u16)> =
            readiness.iter().filter(|(_, p, _)| *p == process).collect();
        let not_ready = statuses.iter().position(|(_, _, s)| *s == 503);
        assert!(
            not_ready.is_some(),
            "process {process}: /readyz said 503 during the switch: {statuses:?}"
        );
        assert_eq!(statuses.last().map(|(_, _, s)| *s), Some(200));
    }
    // The service needed no restart.
    assert_eq!((a.pid(), b.pid()), pids);
    assert!(a.readyz().await == Some(200) && b.readyz().await == Some(200));

    let (not_ready_from, ready_again) = {
        let p0: Vec<_> = readiness.iter().filter(|(_, p, _)| *p == 0).collect();
        let first_503 = p0.iter().find(|(_, _, s)| *s == 503).map(|(t, _, _)| *t);
        let back = first_503.and_then(|from| {
            p0.iter()
                .find(|(t, _, s)| *t > from && *s == 200)
                .map(|(t, _, _)| *t)
        });
        (first_503, back)
    };
    let counts: HashMap<String, usize> = all.values().fold(HashMap::new(), |mut m, (_, h)| {
        let k = match h {
            Heard::Acknowledged(_) => "acknowledged".to_owned(),
            Heard::Refused(code) => code.clone(),
            Heard::Unknown(why) => why.clone(),
        };
        *m.entry(k).or_default() += 1;
        m
    });
    eprintln!(
        "failover: {acknowledged_before} acknowledged before the kill, {} after the failover; \
         first successful deposit {first_success:?} after the kill; /readyz 503 from {:?} to \
         {:?}; answers {counts:?}; {unknown} OUTCOME_UNKNOWN ({unknown_committed} had \
         committed); feed {} events, subscriber resubscribed {resubscribed} times; {movements} \
         movements delivered by webhook ({repeats} deliveries repeated)",
        after_failover.saturating_sub(acknowledged_before),
        not_ready_from,
        ready_again,
        seen.len(),
    );
}

/// A GraphQL POST with an optional consistency token; returns the body, the token the
/// response carried and which server read it (`replica` or `primary`).
async fn gql_with_token(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    consistency: Option<&str>,
    query: &str,
    variables: Value,
) -> (Value, Option<String>, Option<String>) {
    let mut request = http
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": variables}));
    if let Some(c) = consistency {
        request = request.header("wallet-consistency-token", c);
    }
    let resp = request.send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (issued, source) = (
        header("wallet-consistency-token"),
        header("wallet-read-source"),
    );
    let body: Value = resp.json().await.unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    (body, issued, source)
}

const BALANCE: &str = "query($w: ID!) { wallet(id: $w) { balance } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_serve_reads_that_see_their_writes_and_a_lagging_one_is_skipped() {
    use common::process::PrivateCluster;
    let primary = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let standby = {
        let primary_port = primary.port;
        let _ = primary_port;
        tokio::task::block_in_place(|| PrivateCluster::standby_of(&primary))
    };
    let database = "wallet_replicas";
    let max_lag = Duration::from_millis(500);
    let server = ServerProcess::start_with(
        &primary.url(database),
        &[
            ("WALLET_DB_POOL_SIZE", "4"),
            ("WALLET_DB_READ_POOL_SIZE", "4"),
            ("WALLET_WEBHOOKS", "false"),
            (
                "WALLET_DATABASE_READ_URL",
                &format!(
                    "{}?target_session_attrs=prefer-standby",
                    standby.url(database)
                ),
            ),
            (
                "WALLET_READ_REPLICA_MAX_LAG_MS",
                &max_lag.as_millis().to_string(),
            ),
            ("WALLET_READ_CONSISTENCY_WAIT_MS", "1000"),
        ],
    )
    .await;
    let tokens = Tokens::for_users(&["ann"]);
    let http = reqwest::Client::new();
    let op = &tokens.operator;
    let (created, _, _) = gql_with_token(
        &http,
        &server.base,
        &tokens.users["ann"],
        None,
        "mutation { createWallet(input: {currency: \"USD\"}) { id } }",
        json!({}),
    )
    .await;
    let wallet = created["data"]["createWallet"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let balance_of = |body: &Value| -> Decimal {
        body["data"]["wallet"]["balance"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let replica_serves = || async {
        let (_, _, source) =
            gql_with_token(&http, &server.base, op, None, BALANCE, json!({"w": wallet})).await;
        source.as_deref() == Some("replica")
    };
    // The replica serves once it has the wallet and its lag is measured.
    common::wait_until(
        "the replica serves reads",
        Duration::from_secs(30),
        replica_serves,
    )
    .await;

    // With the token, a read right after each deposit sees it — every time.
    let mut expected = Decimal::ZERO;
    let mut by_replica = 0;
    let mut stale_without_token = 0;
    for i in 0..100 {
        let (_, token, _) = gql_with_token(
            &http,
            &server.base,
            op,
            None,
            common::DEPOSIT,
            json!({"w": wallet, "a": "1.00", "k": format!("ryw-{i}")}),
        )
        .await;
        expected += Decimal::ONE;
        let token = token.expect("a mutation's response carries a consistency token");
        let (read, _, source) = gql_with_token(
            &http,
            &server.base,
            op,
            Some(&token),
            BALANCE,
            json!({"w": wallet}),
        )
        .await;
        assert_eq!(
            balance_of(&read),
            expected,
            "read {i} with its token sees the deposit"
        );
        by_replica += usize::from(source.as_deref() == Some("replica"));
        // Without it, the replica may not have it yet.
        let (unguarded, _, _) =
            gql_with_token(&http, &server.base, op, None, BALANCE, json!({"w": wallet})).await;
        stale_without_token += usize::from(balance_of(&unguarded) < expected);
    }
    assert!(
        by_replica > 50,
        "the replica served most token reads: {by_replica} of 100"
    );

    // Replay paused: the replica falls behind.
    standby.psql("postgres", "SELECT pg_wal_replay_pause()");
    let (_, paused_token, _) = gql_with_token(
        &http,
        &server.base,
        op,
        None,
        common::DEPOSIT,
        json!({"w": wallet, "a": "5.00", "k": "while-paused"}),
    )
    .await;
    expected += Decimal::from(5);
    let paused_at = Instant::now();
    // Within the bound it still serves reads: without the token they are stale...
    let (stale, _, source) =
        gql_with_token(&http, &server.base, op, None, BALANCE, json!({"w": wallet})).await;
    if paused_at.elapsed() < max_lag / 2 {
        assert_eq!(source.as_deref(), Some("replica"));
        assert_eq!(
            balance_of(&stale),
            expected - Decimal::from(5),
            "without a token: stale"
        );
    }
    // ...a lookup by key that finds nothing there asks the primary...
    let (found, _, _) = gql_with_token(
        &http,
        &server.base,
        op,
        None,
        BY_KEY,
        json!({"w": wallet, "k": "while-paused"}),
    )
    .await;
    assert!(
        !found["data"]["transactionByKey"].is_null(),
        "found on the primary: {found}"
    );
    // ...and with the token the read waits, then goes to the primary, which has it.
    let (fresh, _, source) = gql_with_token(
        &http,
        &server.base,
        op,
        paused_token.as_deref(),
        BALANCE,
        json!({"w": wallet}),
    )
    .await;
    assert_eq!(balance_of(&fresh), expected);
    assert_eq!(source.as_deref(), Some("primary"));

    // Writes go on; past the bound the lagging replica is skipped: reads see the primary.
    let mut n = 0;
    common::wait_until(
        "the lagging replica is skipped",
        Duration::from_secs(30),
        || {
            n += 1;
            let key = format!("after-pause-{n}");
            let (http, base, wallet) = (&http, &server.base, &wallet);
            async move {
                gql_with_token(
                    http,
                    base,
                    op,
                    None,
                    common::DEPOSIT,
                    json!({"w": wallet, "a": "1.00", "k": key}),
                )
                .await;
                let (_, _, source) =
                    gql_with_token(http, base, op, None, BALANCE, json!({"w": wallet})).await;
                source.as_deref() == Some("primary")
            }
        },
    )
    .await;
    let skipped_after = paused_at.elapsed();
    assert!(
        skipped_after >= max_lag,
        "not skipped before the bound: {skipped_after:?}"
    );
    let (status, body) = server.readyz_body().await.unwrap();
    assert_eq!(
        status, 200,
        "a lagging replica leaves the service ready: {body}"
    );
    assert!(
        body.contains("lagging"),
        "/readyz names the lagging replica: {body}"
    );
    let lag = server.metric("wallet_replica_lag_seconds").await;
    assert!(lag > max_lag.as_secs_f64(), "lag metric {lag}");

    // Replay resumed: it catches up and serves again, the trial balance included.
    standby.psql("postgres", "SELECT pg_wal_replay_resume()");
    common::wait_until(
        "the replica serves again",
        Duration::from_secs(30),
        replica_serves,
    )
    .await;
    let (trial, _, source) = gql_with_token(
        &http,
        &server.base,
        op,
        None,
        "query { trialBalance { currency imbalance } }",
        json!({}),
    )
    .await;
    assert_eq!(source.as_deref(), Some("replica"));
    for line in trial["data"]["trialBalance"].as_array().unwrap() {
        assert_eq!(line["imbalance"], "0", "{trial}");
    }
    let (_, body) = server.readyz_body().await.unwrap();
    assert!(body.contains(": ok (lag"), "{body}");
    eprintln!(
        "replica reads: 100 of 100 token reads saw their deposit ({by_replica} by the replica); \
         {stale_without_token} of 100 reads without a token were stale; the paused replica \
         was skipped {skipped_after:?} after the pause (bound {max_lag:?}); lag metric {lag:.3}s"
    );
}

/// The failure a readiness check on a side connection misses: the primary up, answering
/// `SELECT 1`, but unable to complete a commit because its synchronous standby is gone.
/// `/readyz` must say 503, movements must answer `OUTCOME_UNKNOWN` (never a failure that
/// claims nothing happened), and once the standby is back they turn out committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_that_cannot_commit_is_not_ready() {
    use common::process::PrivateCluster;
    let primary = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let standby = tokio::task::block_in_place(|| PrivateCluster::standby_of(&primary));
    primary.psql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    );
    primary.psql("postgres", "SELECT pg_reload_conf()");
    let database = "wallet_sync";
    let server = ServerProcess::start_with(
        &primary.url(database),
        &[
            ("WALLET_DB_POOL_SIZE", "4"),
            ("WALLET_DB_READ_POOL_SIZE", "2"),
            ("WALLET_WEBHOOKS", "false"),
            ("WALLET_REQUEST_TIMEOUT_SECS", "3"),
        ],
    )
    .await;
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT string_agg(sync_state, ',') FROM pg_stat_replication"
        ),
        "sync"
    );
    let tokens = Tokens::for_users(&["ann"]);
    let http = reqwest::Client::new();
    let wallets = funded_wallets(&server.base, &tokens, &["ann"]).await;
    let (wallet, _) = &wallets[0];

    // The standby goes away: commits on the primary wait for it.
    tokio::task::block_in_place(|| standby.stop());
    let stopped = Instant::now();
    common::wait_until("/readyz says 503", Duration::from_secs(10), || async {
        server.readyz().await == Some(503)
    })
    .await;
    let not_ready_after = stopped.elapsed();
    let deposit = || async {
        let body = json!({"w": wallet, "a": "7.00", "k": "while-no-standby"});
        post(&http, &server.base, &tokens.operator, common::DEPOSIT, body)
            .await
            .unwrap()
    };
    let answer = deposit().await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "OUTCOME_UNKNOWN",
        "a commit that cannot complete is of unknown outcome: {answer}"
    );
    // Still not ready while it cannot commit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.readyz().await, Some(503));

    // The standby is back: the waiting commit completes, the service is ready, and the
    // key tells the truth.
    tokio::task::block_in_place(|| standby.pg_ctl_start());
    server.wait_ready(Duration::from_secs(30)).await;
    let found = post(
        &http,
        &server.base,
        &tokens.operator,
        BY_KEY,
        json!({"w": wallet, "k": "while-no-standby"}),
    )
    .await
    .unwrap();
    assert!(
        !found["data"]["transactionByKey"].is_null(),
        "it committed: {found}"
    );
    let again = deposit().await;
    assert_eq!(
        again["data"]["deposit"]["id"], found["data"]["transactionByKey"]["id"],
        "sent again, the original: {again}"
    );
    assert_eq!(
        common::process::check_chain(&server.base, &tokens.operator, wallet).await,
        2
    );
    eprintln!("no synchronous standby: /readyz 503 after {not_ready_after:?}");
}

/// A primary fenced by its operator (made read-only without a restart, as some failover
/// tools do): movements are refused `UNAVAILABLE` with nothing done, `/readyz` says 503,
/// and once writes are allowed again the same processes serve without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_made_read_only_refuses_cleanly_and_recovers() {
    use common::process::PrivateCluster;
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let database = "wallet_fenced";
    let server = ServerProcess::start_with(
        &format!("{}?target_session_attrs=read-write", cluster.url(database)),
        &[
            ("WALLET_DB_POOL_SIZE", "4"),
            ("WALLET_DB_READ_POOL_SIZE", "2"),
            ("WALLET_WEBHOOKS", "false"),
        ],
    )
    .await;
    let tokens = Tokens::for_users(&["ann"]);
    let http = reqwest::Client::new();
    let wallets = funded_wallets(&server.base, &tokens, &["ann"]).await;
    let (wallet, _) = &wallets[0];
    let deposit = |key: &'static str| {
        let (http, base, op) = (&http, &server.base, &tokens.operator);
        async move {
            post(
                http,
                base,
                op,
                common::DEPOSIT,
                json!({"w": wallet, "a": "2.00", "k": key}),
            )
            .await
            .unwrap()
        }
    };

    cluster.psql(
        "postgres",
        "ALTER SYSTEM SET default_transaction_read_only = on",
    );
    cluster.psql("postgres", "SELECT pg_reload_conf()");
    common::wait_until("/readyz says 503", Duration::from_secs(10), || async {
        server.readyz().await == Some(503)
    })
    .await;
    for key in ["fenced-1", "fenced-2", "fenced-3"] {
        let refused = deposit(key).await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "UNAVAILABLE",
            "a write refused by a read-only server did nothing: {refused}"
        );
    }

    cluster.psql(
        "postgres",
        "ALTER SYSTEM SET default_transaction_read_only = off",
    );
    cluster.psql("postgres", "SELECT pg_reload_conf()");
    server.wait_ready(Duration::from_secs(30)).await;
    let done = deposit("after-fence").await;
    assert!(done["data"]["deposit"]["id"].is_string(), "{done}");
    // Nothing of the refused ones was written; the chain holds the funding and the last.
    for key in ["fenced-1", "fenced-2", "fenced-3"] {
        let found = post(
            &http,
            &server.base,
            &tokens.operator,
            BY_KEY,
            json!({"w": wallet, "k": key}),
        )
        .await
        .unwrap();
        assert!(found["data"]["transactionByKey"].is_null(), "{found}");
    }
    assert_eq!(
        common::process::check_chain(&server.base, &tokens.operator, wallet).await,
        2
    );
}
