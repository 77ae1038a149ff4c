//! Fault injection with real processes: a server killed with SIGKILL under load, and the
//! database server restarted under load. Afterwards every key is sent again with the
//! same parameters: every acknowledged movement exists exactly once and comes back as the
//! original, no key has two rows, and every wallet's chain verifies with its balance
//! equal to the sum of its rows.
//!
//! `WALLET_FAULT_LOAD=long` runs a longer load (CI runs the short one).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::process::{Heard, Load, PrivateCluster, ServerProcess, Tokens, funded_wallets, post};
use common::ws::{Event, WsClient};
use common::{TestDb, wait_until};
use serde_json::json;

/// Movements acknowledged before the fault is injected.
fn load_before_fault() -> usize {
    match std::env::var("WALLET_FAULT_LOAD").as_deref() {
        Ok("long") => 20_000,
        _ => 1_500,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_under_load_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let users = ["ann", "ben", "cat", "dan"];
    let tokens = Tokens::for_users(&users);
    let mut server = ServerProcess::start(&db.url).await;
    let wallets = funded_wallets(&server.base, &tokens, &users).await;

    let load = Load::start(&server.base, 16, wallets.clone(), tokens.clone());
    load.wait_for_acknowledged(load_before_fault(), Duration::from_secs(600))
        .await;
    server.kill();
    // The clients keep sending into the void for a moment (connection refused).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = ServerProcess::start(&db.url).await;
    load.point_at(&restarted.base);
    let at_restart = load.acknowledged.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_for_acknowledged(at_restart + 200, Duration::from_secs(120))
        .await;
    let heard = load.stop().await;
    let lost_answers = heard
        .values()
        .filter(|(_, h)| matches!(h, Heard::Unknown(_)))
        .count();
    assert!(lost_answers > 0, "the kill must have cut some requests off");

    let pg = db.client().await;
    let journaled = common::process::replay_and_check(&restarted.base, &tokens, &heard, &pg).await;
    let mut rows = 0;
    for (wallet, _) in &wallets {
        rows += common::process::check_chain(&restarted.base, &tokens.operator, wallet).await;
    }
    assert_eq!(
        rows,
        journaled + wallets.len(),
        "every row is a movement sent (or a funding)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_under_load_is_survived_without_a_restart() {
    let cluster = PrivateCluster::start();
    let url = cluster.url("wallet_restart");
    let users = ["ann", "ben", "cat"];
    let tokens = Tokens::for_users(&users);
    let server = ServerProcess::start(&url).await;
    let wallets = funded_wallets(&server.base, &tokens, &users).await;

    // A subscriber for everything, through the whole run.
    let mut subscriber = WsClient::authenticated(&server.websocket(), &tokens.operator).await;
    subscriber
        .subscribe(
            "all",
            "subscription { transactionUpdated { idempotencyKey } }",
            json!({}),
        )
        .await;
    let collected = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let collector = {
        let collected = collected.clone();
        tokio::spawn(async move {
            loop {
                match subscriber.next_within(Duration::from_secs(600)).await {
                    Some(Event::Message(m)) if m["type"] == "next" => {
                        collected.lock().unwrap().push(
                            m["payload"]["data"]["transactionUpdated"]["idempotencyKey"]
                                .as_str()
                                .unwrap()
                                .to_owned(),
                        )
                    }
                    Some(Event::Message(m)) => panic!("unexpected {m}"),
                    Some(Event::Closed(code, why)) => panic!("subscription closed: {code} {why}"),
                    None => return,
                }
            }
        })
    };

    let load = Load::start(&server.base, 8, wallets.clone(), tokens.clone());
    load.wait_for_acknowledged(load_before_fault() / 3, Duration::from_secs(600))
        .await;
    cluster.stop();
    // While the database is away: not ready, and a movement gets a clear answer.
    wait_until(
        "/readyz reports the database away",
        Duration::from_secs(10),
        || async { server.readyz().await == Some(503) },
    )
    .await;
    let http = reqwest::Client::new();
    let (wallet, _) = &wallets[0];
    let refused = post(
        &http,
        &server.base,
        &tokens.operator,
        common::DEPOSIT,
        json!({"w": wallet, "a": "1.00", "k": "while-down"}),
    )
    .await
    .expect("an answer, not a dropped connection");
    let code = refused["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ["UNAVAILABLE", "OUTCOME_UNKNOWN"].contains(&code),
        "a clear error while the database is down: {refused}"
    );
    cluster.pg_ctl_start();
    // The same process recovers by itself.
    server.wait_ready(Duration::from_secs(60)).await;
    let at_restart = load.acknowledged.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_for_acknowledged(at_restart + 200, Duration::from_secs(120))
        .await;
    let mut heard = load.stop().await;
    let refusals: Vec<&Heard> = heard
        .values()
        .map(|(_, h)| h)
        .filter(|h| !matches!(h, Heard::Acknowledged(_)))
        .collect();
    eprintln!(
        "{} answers while the database was away (all UNAVAILABLE or OUTCOME_UNKNOWN)",
        refusals.len()
    );
    assert!(
        refusals
            .iter()
            .all(|h| matches!(h, Heard::Refused(c) if c == "UNAVAILABLE")
                || matches!(h, Heard::Unknown(u) if u == "OUTCOME_UNKNOWN")),
        "only clear answers while the database was away: {refusals:?}"
    );
    let while_down = common::process::Movement {
        key: "while-down".into(),
        wallet: wallet.clone(),
        user: "ann".into(),
        deposit: true,
        amount: "1.00".into(),
        to: None,
    };
    let answer = common::process::hear(&while_down, Ok(refused));
    heard.insert("while-down".into(), (while_down, answer));

    let pg = {
        let config: tokio_postgres::Config = url.parse().unwrap();
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    };
    common::process::replay_and_check(&server.base, &tokens, &heard, &pg).await;
    for (wallet, _) in &wallets {
        common::process::check_chain(&server.base, &tokens.operator, wallet).await;
    }
    // Every row committed — before, during the recovery, after — reached the subscriber
    // once, including those committed while its process's listener was reconnecting.
    let keys: Vec<String> = pg
        .query(
            "SELECT tx_hash FROM transactions WHERE tx_hash NOT LIKE 'funding-%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    wait_until(
        "every committed movement is delivered",
        Duration::from_secs(30),
        || async {
            collected
                .lock()
                .unwrap()
                .iter()
                .filter(|k| !k.starts_with("funding-"))
                .count()
                >= keys.len()
        },
    )
    .await;
    // Fundings were committed before the subscription; whether it saw them is a race.
    let mut delivered: Vec<String> = collected
        .lock()
        .unwrap()
        .iter()
        .filter(|k| !k.starts_with("funding-"))
        .cloned()
        .collect();
    delivered.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(
        delivered, expected,
        "each committed movement delivered exactly once"
    );
    collector.abort();
}
