//! Event feed benchmark: resumable subscribers and webhook throughput.
//!
//! Starts two real server processes on one fresh database.
//!
//! 1. Feed fan-out: N `events` subscribers (half on each process, each its own operator
//!    token) follow one wallet's `TRANSACTION_CREATED` events while deposits go to
//!    process B at a fixed interval; halfway, a tenth of the subscribers disconnect and
//!    resume with `after:` the last sequence they saw (on the other process). Reports the
//!    delivery latency and memory, and fails unless every subscriber received every
//!    deposit exactly once, in sequence order, across its resume.
//! 2. Webhook throughput: K deposits are made while E endpoints (pointing at a receiver in
//!    this process that answers 204) are disabled; enabling them delivers the backlog as
//!    fast as the service sends (signed, one attempt recorded per delivery, in order per
//!    endpoint). Reports events delivered per second.
//!
//! cargo bench --bench feed -- [--subscribers 10000] [--deposits 200] [--interval-ms 20]
//!                             [--webhook-events 2000] [--endpoints 4]
//!
//! `WALLET_BENCH_DATABASE_URL` names the server (default postgres://postgres@127.0.0.1:5432).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wallet::auth::{Role, TokenKeys};

mod support;

/// Deliveries the receiver got, by endpoint: when, and the `webhook-id`.
type Received = Arc<Mutex<HashMap<String, Vec<(Instant, String)>>>>;
use support::{Server, gql, percentile, wait_ready};

const SECRET: &str = "feed-benchmark-secret-0123456789ab";
const PORTS: [u16; 2] = [18093, 18094];
const RECEIVER_PORT: u16 = 18095;

struct Args {
    subscribers: usize,
    deposits: usize,
    interval: Duration,
    webhook_events: usize,
    endpoints: usize,
}

fn args() -> Args {
    let mut out = Args {
        subscribers: 10_000,
        deposits: 200,
        interval: Duration::from_millis(20),
        webhook_events: 2000,
        endpoints: 4,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for (i, arg) in argv.iter().enumerate() {
        let value = || argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match arg.as_str() {
            "--subscribers" => out.subscribers = value().expect("--subscribers N") as usize,
            "--deposits" => out.deposits = value().expect("--deposits N") as usize,
            "--interval-ms" => out.interval = Duration::from_millis(value().expect("N")),
            "--webhook-events" => out.webhook_events = value().expect("N") as usize,
            "--endpoints" => out.endpoints = value().expect("N") as usize,
            _ => {}
        }
    }
    out
}

fn main() {
    support::block_on(run(args()));
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(port: u16, token: &str, wallet: &str, after: Option<i64>) -> Ws {
    let mut request = format!("ws://127.0.0.1:{port}/graphql/ws")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket");
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}});
    ws.send(Message::Text(init.to_string().into()))
        .await
        .unwrap();
    let subscribe = json!({"id": "1", "type": "subscribe", "payload": {
        "query": "subscription($w: ID, $a: String) { events(walletId: $w, after: $a, types: [TRANSACTION_CREATED]) { sequence transaction { idempotencyKey } } }",
        "variables": {"w": wallet, "a": after.map(|a| a.to_string())}}});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    ws
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    counts: Vec<u32>,
    latencies: Vec<Duration>,
    out_of_order: usize,
    last_sequence: i64,
    /// Deposits (after the warm-up) seen at least once.
    distinct: usize,
}

/// Reads until `stop` deposits were seen or the socket ends; cheap parsing on purpose
/// (the client shares the machine with the servers).
async fn follow(
    ws: &mut Ws,
    seen: &mut Seen,
    sent: &[OnceLock<Instant>],
    until: usize,
    ready: &tokio::sync::mpsc::UnboundedSender<()>,
) {
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Text(text) = frame else { continue };
        let at = Instant::now();
        let text = text.as_str();
        if text.contains(r#""type":"ping""#) {
            let _ = ws
                .send(Message::Text(json!({"type": "pong"}).to_string().into()))
                .await;
            continue;
        }
        let Some(sequence) = text
            .split_once(r#""sequence":""#)
            .and_then(|(_, r)| r.split('"').next())
            .and_then(|s| s.parse::<i64>().ok())
        else {
            continue;
        };
        if sequence <= seen.last_sequence {
            seen.out_of_order += 1;
        }
        seen.last_sequence = sequence;
        let Some(n) = text
            .split_once(r#""idempotencyKey":"feed-"#)
            .and_then(|(_, r)| r.split('"').next())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if n == 0 {
            let _ = ready.send(());
        }
        if let Some(c) = seen.counts.get_mut(n) {
            *c += 1;
            if *c == 1 && n > 0 {
                seen.distinct += 1;
            }
        }
        if n > 0
            && let Some(t0) = sent.get(n).and_then(|s| s.get())
        {
            seen.latencies.push(at.duration_since(*t0));
        }
        if seen.distinct >= until {
            return;
        }
    }
}

async fn run(args: Args) {
    let base = std::env::var("WALLET_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = "wallet_bench_feed";
    let url = format!("{base}/{db}");
    let (admin, conn) = tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
        .await
        .expect("Postgres is running");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
    // Room for every subscriber on either process: a resumed one connects to the other
    // process before its old socket is closed.
    let per_process = (args.subscribers + 256).to_string();
    let limits: Vec<(&str, &str)> = vec![
        ("WALLET_HTTP_MAX_CONNECTIONS", per_process.as_str()),
        ("WALLET_HTTP_MAX_CONNECTIONS_PER_IP", per_process.as_str()),
        ("WALLET_WS_MAX_CONNECTIONS", per_process.as_str()),
        ("WALLET_WS_MAX_UNAUTHENTICATED", per_process.as_str()),
        ("WALLET_WS_MAX_SUBSCRIPTIONS", "2"),
        ("WALLET_RECONCILE_SECS", "0"),
        ("WALLET_WEBHOOK_TIMEOUT_MS", "5000"),
    ];
    let http = reqwest::Client::new();
    let a = Server::start(&url, PORTS[0], SECRET, &limits);
    wait_ready(&http, PORTS[0]).await;
    let b = Server::start(&url, PORTS[1], SECRET, &limits);
    wait_ready(&http, PORTS[1]).await;
    let idle = [a.memory().0, b.memory().0];

    let keys = TokenKeys::new(SECRET.as_bytes());
    let mint = |sub: &str, role| keys.mint(sub, role, Duration::from_secs(3600)).unwrap();
    let alice = mint("alice", Role::User);
    let operator = mint("bench", Role::Operator);
    let created = gql(
        &http,
        PORTS[1],
        &alice,
        "mutation { createWallet(input: {currency: \"USD\"}) { id } }",
        json!({}),
    )
    .await;
    let wallet = created["data"]["createWallet"]["id"]
        .as_str()
        .expect("wallet id")
        .to_owned();

    // --- 1. Feed fan-out with resumes ---
    let sent: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..=args.deposits).map(|_| OnceLock::new()).collect());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (half_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(args.subscribers);
    let mut resumed = 0;
    for i in 0..args.subscribers {
        let token = mint(&format!("reader-{i}"), Role::Operator);
        let port = PORTS[i % 2];
        let mut ws = subscribe(port, &token, &wallet, None).await;
        let (sent, ready, wallet) = (sent.clone(), ready_tx.clone(), wallet.clone());
        let deposits = args.deposits;
        // Every tenth subscriber drops its socket halfway and resumes on the other process.
        let resumes = i % 10 == 0;
        resumed += usize::from(resumes);
        let mut half = half_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen {
                counts: vec![0; deposits + 1],
                ..Seen::default()
            };
            if resumes {
                tokio::select! {
                    _ = follow(&mut ws, &mut seen, &sent, deposits, &ready) => return seen,
                    _ = half.recv() => {}
                }
                drop(ws);
                let mut ws = subscribe(
                    PORTS[(i + 1) % 2],
                    &token,
                    &wallet,
                    Some(seen.last_sequence),
                )
                .await;
                follow(&mut ws, &mut seen, &sent, deposits, &ready).await;
            } else {
                follow(&mut ws, &mut seen, &sent, deposits, &ready).await;
            }
            seen
        }));
    }
    drop(ready_tx);
    let connect_time = connect_started.elapsed();

    let deposit = "mutation($w: ID!, $k: String!) { deposit(input: {walletId: $w, amount: \"1.00\", idempotencyKey: $k}) { id } }";
    let _ = sent[0].set(Instant::now());
    gql(
        &http,
        PORTS[1],
        &operator,
        deposit,
        json!({"w": wallet, "k": "feed-0"}),
    )
    .await;
    let mut live = 0;
    while live < args.subscribers {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(())) => live += 1,
            _ => break,
        }
    }
    assert_eq!(
        live, args.subscribers,
        "not every subscriber received the warm-up event"
    );
    let subscribed = [a.memory().0, b.memory().0];

    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    for n in 1..=args.deposits {
        ticker.tick().await;
        if n == args.deposits / 2 {
            let _ = half_tx.send(());
        }
        let (http, operator, wallet, sent) =
            (http.clone(), operator.clone(), wallet.clone(), sent.clone());
        tokio::spawn(async move {
            let _ = sent[n].set(Instant::now());
            let r = gql(
                &http,
                PORTS[1],
                &operator,
                deposit,
                json!({"w": wallet, "k": format!("feed-{n}")}),
            )
            .await;
            assert!(r.get("errors").is_none(), "deposit failed: {r}");
        });
    }
    let send_time = started.elapsed();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(seen)) => {
                latencies.extend(seen.latencies.iter().copied());
                let missing = seen.counts[1..].iter().filter(|&&c| c == 0).count();
                let repeated = seen.counts[1..].iter().filter(|&&c| c > 1).count();
                if missing + repeated + seen.out_of_order > 0 {
                    failures.push(format!(
                        "subscriber {i}: {missing} missing, {repeated} repeated, {} out of order",
                        seen.out_of_order
                    ));
                }
            }
            _ => failures.push(format!("subscriber {i}: did not finish within 60 s")),
        }
    }
    let end = [a.memory(), b.memory()];
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "event feed: {} resumable subscribers over 2 processes, {} deposits every {:?}, {} resumed halfway on the other process",
        args.subscribers, args.deposits, args.interval, resumed
    );
    println!(
        "  connected in {:.1} s; deposits sent over {:.1} s; events delivered {} of {}",
        connect_time.as_secs_f64(),
        send_time.as_secs_f64(),
        latencies.len(),
        args.subscribers * args.deposits
    );
    println!(
        "  latency deposit sent -> event received: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    for (p, name) in ["A", "B"].iter().enumerate() {
        println!(
            "  process {name} memory: {:.1} MiB idle, {:.1} MiB subscribed, {:.1} MiB at the end, peak {:.1} MiB",
            idle[p] as f64 / 1024.0,
            subscribed[p] as f64 / 1024.0,
            end[p].0 as f64 / 1024.0,
            end[p].1 as f64 / 1024.0
        );
    }
    assert!(
        failures.is_empty(),
        "every subscriber must receive every deposit exactly once, in order:\n{}",
        failures.join("\n")
    );
    println!("  every subscriber received every deposit exactly once, in sequence order");

    // --- 2. Webhook throughput ---
    let received: Received = Arc::default();
    let receiver = {
        let received = received.clone();
        axum::Router::new().route(
            "/{endpoint}",
            axum::routing::post(
                move |axum::extract::Path(endpoint): axum::extract::Path<String>,
                      headers: axum::http::HeaderMap| {
                    let received = received.clone();
                    async move {
                        let id = headers
                            .get("webhook-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        received
                            .lock()
                            .unwrap()
                            .entry(endpoint)
                            .or_default()
                            .push((Instant::now(), id));
                        axum::http::StatusCode::NO_CONTENT
                    }
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", RECEIVER_PORT))
        .await
        .expect("receiver port");
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let mut endpoints = Vec::new();
    for e in 0..args.endpoints {
        let r = gql(&http, PORTS[0], &operator,
            "mutation($u: String!) { createWebhookEndpoint(input: {url: $u, eventTypes: [TRANSACTION_CREATED]}) { id } }",
            json!({"u": format!("http://127.0.0.1:{RECEIVER_PORT}/e{e}")})).await;
        let id = r["data"]["createWebhookEndpoint"]["id"]
            .as_str()
            .expect("endpoint")
            .to_owned();
        gql(
            &http,
            PORTS[0],
            &operator,
            "mutation($id: ID!) { disableWebhookEndpoint(id: $id) { status } }",
            json!({"id": id}),
        )
        .await;
        endpoints.push(id);
    }
    // The backlog: deposits from 16 clients.
    let per_client = args.webhook_events.div_ceil(16);
    let mut clients = Vec::new();
    for c in 0..16 {
        let (http, operator, wallet) = (http.clone(), operator.clone(), wallet.clone());
        clients.push(tokio::spawn(async move {
            for n in 0..per_client {
                gql(
                    &http,
                    PORTS[c % 2],
                    &operator,
                    deposit,
                    json!({"w": wallet, "k": format!("hook-{c}-{n}")}),
                )
                .await;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let events = per_client * 16;
    let cpu_before = machine_cpu();
    let started = Instant::now();
    for id in &endpoints {
        gql(
            &http,
            PORTS[0],
            &operator,
            "mutation($id: ID!) { enableWebhookEndpoint(id: $id) { status } }",
            json!({"id": id}),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = {
            let r = received.lock().unwrap();
            (0..args.endpoints).all(|e| r.get(&format!("e{e}")).is_some_and(|v| v.len() >= events))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let cpu = machine_cpu().since(&cpu_before);
    let (delivered, distinct) = {
        let r = received.lock().unwrap();
        let distinct = r
            .values()
            .map(|v| {
                v.iter()
                    .map(|(_, id)| id.as_str())
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            })
            .sum::<usize>();
        (r.values().map(Vec::len).sum::<usize>(), distinct)
    };
    println!(
        "webhooks: {} endpoints, a backlog of {} events each, delivered to a local receiver (answers 204)",
        args.endpoints, events
    );
    println!(
        "  {} deliveries ({} distinct per endpoint in total) in {:.2} s: {:.0} events/s in all, {:.0} per endpoint; machine CPU {:.0} % busy ({:.2} ms per delivery), {:.0} % idle",
        delivered,
        distinct,
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64() / args.endpoints.max(1) as f64,
        cpu.busy_percent(),
        cpu.busy_seconds() * 1000.0 / delivered.max(1) as f64,
        100.0 - cpu.busy_percent(),
    );
    drop(a);
    drop(b);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
    assert!(
        distinct >= events * args.endpoints,
        "every endpoint must receive every event"
    );
}

/// Machine-wide CPU counters from /proc/stat.
#[derive(Clone, Copy)]
struct Cpu {
    busy: f64,
    total: f64,
}

impl Cpu {
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            busy: self.busy - before.busy,
            total: self.total - before.total,
        }
    }
    fn busy_percent(&self) -> f64 {
        100.0 * self.busy / self.total.max(1.0)
    }
    /// Busy CPU-seconds (USER_HZ = 100).
    fn busy_seconds(&self) -> f64 {
        self.busy / 100.0
    }
}

fn machine_cpu() -> Cpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    Cpu {
        busy: total - idle,
        total,
    }
}
