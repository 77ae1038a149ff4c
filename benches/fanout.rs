//! Subscription fan-out benchmark.
//!
//! Starts two real server processes on one fresh database: N websocket subscribers on
//! process A follow one wallet's `transactionUpdated`; deposits into that wallet are sent
//! to process B at a fixed interval. Reports the delivery latency (deposit request sent →
//! event received, over every subscriber × deposit) and process A's memory, and fails
//! unless every subscriber received every deposit exactly once, in balance order.
//!
//! cargo bench --bench fanout -- [--subscribers 1000] [--deposits 500] [--interval-ms 10]
//!
//! `WALLET_BENCH_DATABASE_URL` names the server (default postgres://postgres@127.0.0.1:5432);
//! the benchmark creates and drops its own database there.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wallet::auth::{Role, TokenKeys};

mod support;
use support::{Server, gql, percentile, wait_ready};

const SECRET: &str = "fanout-benchmark-secret-0123456789";
const PORT_A: u16 = 18091;
const PORT_B: u16 = 18092;

struct Args {
    subscribers: usize,
    deposits: usize,
    interval: Duration,
}

fn args() -> Args {
    let mut out = Args {
        subscribers: 1000,
        deposits: 500,
        interval: Duration::from_millis(10),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match argv[i].as_str() {
            "--subscribers" => out.subscribers = value().expect("--subscribers N") as usize,
            "--deposits" => out.deposits = value().expect("--deposits N") as usize,
            "--interval-ms" => {
                out.interval = Duration::from_millis(value().expect("--interval-ms N"))
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    out
}

fn main() {
    support::block_on(run(args()));
}

async fn run(args: Args) {
    let base = std::env::var("WALLET_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = "wallet_bench_fanout";
    let url = format!("{base}/{db}");
    let (admin, conn) = tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
        .await
        .expect("Postgres is running");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();

    // A first, alone, so it creates and migrates the database; then B.
    let http = reqwest::Client::new();
    let a = Server::start(
        &url,
        PORT_A,
        SECRET,
        &[("WALLET_WS_MAX_SUBSCRIPTIONS", "4")],
    );
    wait_ready(&http, PORT_A).await;
    let b = Server::start(
        &url,
        PORT_B,
        SECRET,
        &[("WALLET_WS_MAX_SUBSCRIPTIONS", "4")],
    );
    wait_ready(&http, PORT_B).await;
    let (rss_idle, _) = a.memory();

    let keys = TokenKeys::new(SECRET.as_bytes());
    let alice = keys
        .mint("alice", Role::User, Duration::from_secs(3600))
        .unwrap();
    let operator = keys
        .mint("bench", Role::Operator, Duration::from_secs(3600))
        .unwrap();
    let created = gql(
        &http,
        PORT_B,
        &alice,
        "mutation { createWallet(input: {currency: \"USD\"}) { id } }",
        json!({}),
    )
    .await;
    let wallet = created["data"]["createWallet"]["id"]
        .as_str()
        .expect("wallet id")
        .to_owned();

    // Send times by deposit number (0 is the warm-up).
    let sent: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..=args.deposits).map(|_| OnceLock::new()).collect());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut subscribers = Vec::with_capacity(args.subscribers);
    let connect_started = Instant::now();
    for _ in 0..args.subscribers {
        let mut request = format!("ws://127.0.0.1:{PORT_A}/graphql/ws")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket");
        let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {alice}")}});
        ws.send(Message::Text(init.to_string().into()))
            .await
            .unwrap();
        let subscribe = json!({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription($w: ID) { transactionUpdated(walletId: $w) { idempotencyKey amount balanceAfter } }",
            "variables": {"w": wallet}}});
        ws.send(Message::Text(subscribe.to_string().into()))
            .await
            .unwrap();
        let sent = sent.clone();
        let ready = ready_tx.clone();
        let expected = args.deposits;
        subscribers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(expected);
            let mut received = 0;
            // How often each deposit arrived, and arrivals whose balance did not follow
            // the one before.
            let mut seen = vec![0u32; expected + 1];
            let mut out_of_order = 0usize;
            let mut last_balance = rust_decimal::Decimal::ZERO;
            while let Some(Ok(frame)) = ws.next().await {
                let Message::Text(text) = frame else { continue };
                let at = Instant::now();
                // Cheap on purpose: the client shares the machine with the servers.
                let text = text.as_str();
                if text.contains(r#""type":"ping""#) {
                    let pong = json!({"type": "pong"}).to_string();
                    let _ = ws.send(Message::Text(pong.into())).await;
                    continue;
                }
                let Some(n) = text
                    .split_once(r#""idempotencyKey":"fanout-"#)
                    .and_then(|(_, rest)| rest.split('"').next())
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let balance = text
                    .split_once(r#""balanceAfter":""#)
                    .and_then(|(_, rest)| rest.split('"').next())
                    .and_then(|b| b.parse::<rust_decimal::Decimal>().ok())
                    .unwrap_or_default();
                if balance <= last_balance {
                    out_of_order += 1;
                }
                last_balance = balance;
                if n == 0 {
                    let _ = ready.send(());
                    continue;
                }
                if let Some(count) = seen.get_mut(n) {
                    *count += 1;
                }
                if let Some(t0) = sent.get(n).and_then(|s| s.get()) {
                    latencies.push(at.duration_since(*t0));
                }
                received += 1;
                if received == expected {
                    break;
                }
            }
            (latencies, seen, out_of_order)
        }));
    }
    drop(ready_tx);
    let connect_time = connect_started.elapsed();

    // Warm-up deposit until every subscriber has seen it: all subscriptions are live.
    let deposit = "mutation($w: ID!, $k: String!) { deposit(input: {walletId: $w, amount: \"1.00\", idempotencyKey: $k}) { id } }";
    let _ = sent[0].set(Instant::now());
    gql(
        &http,
        PORT_B,
        &operator,
        deposit,
        json!({"w": wallet, "k": "fanout-0"}),
    )
    .await;
    let mut live = 0;
    while live < args.subscribers {
        match tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await {
            Ok(Some(())) => live += 1,
            _ => break,
        }
    }
    assert_eq!(
        live, args.subscribers,
        "not every subscriber received the warm-up event"
    );
    let (rss_subscribed, _) = a.memory();

    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    for n in 1..=args.deposits {
        ticker.tick().await;
        let http = http.clone();
        let operator = operator.clone();
        let wallet = wallet.clone();
        let sent = sent.clone();
        // Deposits do not wait for each other: one every interval, whatever the latency.
        tokio::spawn(async move {
            let _ = sent[n].set(Instant::now());
            let r = gql(
                &http,
                PORT_B,
                &operator,
                deposit,
                json!({"w": wallet, "k": format!("fanout-{n}")}),
            )
            .await;
            assert!(r.get("errors").is_none(), "deposit failed: {r}");
        });
    }
    let send_time = started.elapsed();

    let mut latencies = Vec::with_capacity(args.subscribers * args.deposits);
    let mut failures = Vec::new();
    for (i, s) in subscribers.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(30), s).await {
            Ok(Ok((l, seen, out_of_order))) => {
                latencies.extend(l);
                let missing = seen[1..].iter().filter(|&&c| c == 0).count();
                let duplicated = seen[1..].iter().filter(|&&c| c > 1).count();
                if missing + duplicated + out_of_order > 0 {
                    failures.push(format!(
                        "subscriber {i}: {missing} missing, {duplicated} duplicated, {out_of_order} out of order"
                    ));
                }
            }
            _ => failures.push(format!(
                "subscriber {i}: did not receive every event within 30 s"
            )),
        }
    }
    let (rss_end, rss_peak) = a.memory();
    latencies.sort();
    let expected = args.subscribers * args.deposits;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    println!(
        "subscription fan-out: {} subscribers on process A, {} deposits on process B every {:?}",
        args.subscribers, args.deposits, args.interval
    );
    println!(
        "  connected {} websockets in {:.2} s; deposits sent over {:.2} s",
        args.subscribers,
        connect_time.as_secs_f64(),
        send_time.as_secs_f64()
    );
    println!(
        "  events delivered: {} of {} ({} missing)",
        latencies.len(),
        expected,
        expected - latencies.len()
    );
    println!(
        "  latency deposit sent -> event received: p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    println!(
        "  process A memory: {:.1} MiB idle, {:.1} MiB with subscribers, {:.1} MiB at the end, peak {:.1} MiB",
        rss_idle as f64 / 1024.0,
        rss_subscribed as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
    );
    drop(a);
    drop(b);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
    assert!(
        failures.is_empty(),
        "every subscriber must receive every deposit exactly once, in balance order:\n{}",
        failures.join("\n")
    );
    println!("  every subscriber received every deposit exactly once, in balance order");
}
