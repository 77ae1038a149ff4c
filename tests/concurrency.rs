//! Concurrency claims, proven concurrently: no overdraft, no lost update, exactly-once
//! under racing idempotent requests, and a journal chain that holds throughout.
//!
//! Each scenario runs in three topologies (see `common::Topology`): one process whose
//! committer batches everything; three processes whose batches race in the database; and
//! two processes without batching, where every movement is a transaction of its own
//! racing the others. The last two are what the wallet row lock, the key read after the
//! lock and the unique-key retry exist for; each test checks which path carried its
//! movements.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{Fleet, TestApp, Topology, error_code};
use futures_util::future::join_all;
use rust_decimal::Decimal;
use serde_json::json;

/// One test per topology for a scenario `async fn(Arc<Fleet>, Topology)`.
macro_rules! in_every_topology {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn one_process() {
                let topology = Topology::OneProcess;
                super::$scenario(Arc::new(topology.start().await), topology).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn three_processes() {
                let topology = Topology::ThreeProcesses;
                super::$scenario(Arc::new(topology.start().await), topology).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn unbatched() {
                let topology = Topology::Unbatched;
                super::$scenario(Arc::new(topology.start().await), topology).await;
            }
        }
    };
}

in_every_topology!(hundred_concurrent_withdrawals_never_overdraw);
in_every_topology!(fifty_identical_deposits_credit_once);
in_every_topology!(same_key_racing_on_two_wallets_makes_two_movements);
in_every_topology!(mixed_concurrent_movements_keep_every_chain);
in_every_topology!(thirty_identical_racing_transfers_make_one);
in_every_topology!(transfers_in_both_directions_keep_the_books);
in_every_topology!(deep_queues_run_batches_side_by_side);

async fn hundred_concurrent_withdrawals_never_overdraw(f: Arc<Fleet>, topology: Topology) {
    let t = &f.t;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "50.00", "funding").await;
    let alice = t.user("alice");
    let before = f.stats();

    let tasks = (0..100).map(|i| {
        let (f, w, alice) = (f.clone(), w.clone(), alice.clone());
        tokio::spawn(async move { f.withdraw(i, &alice, &w, "1.00", &format!("wd-{i}")).await })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    f.assert_path(topology, before, 100);
    let ok = results.iter().filter(|b| b.get("errors").is_none()).count();
    let refused: Vec<_> = results
        .iter()
        .filter(|b| b.get("errors").is_some())
        .collect();
    assert_eq!(ok, 50, "exactly the funded withdrawals succeed");
    assert_eq!(refused.len(), 50);
    for body in refused {
        assert_eq!(error_code(body), "INSUFFICIENT_FUNDS", "{body}");
    }
    // Every success saw a distinct balance: 50.00 → 49.00, …, 1.00 → 0.00.
    let befores: HashSet<_> = results
        .iter()
        .filter_map(|b| b["data"]["withdraw"]["balanceBefore"].as_str())
        .collect();
    assert_eq!(befores.len(), 50);
    assert_eq!(t.balance(&w).await, "0.00");
    assert_eq!(t.assert_chain(&w).await, 51);
}

async fn fifty_identical_deposits_credit_once(f: Arc<Fleet>, topology: Topology) {
    let t = &f.t;
    let w = t.create_wallet("alice", "USD").await;
    let before = f.stats();
    let tasks = (0..50).map(|i| {
        let (f, w) = (f.clone(), w.clone());
        tokio::spawn(async move { f.deposit(i, &w, "25.00", "same-key").await })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    f.assert_path(topology, before, 50);
    let first = &results[0]["data"]["deposit"];
    assert!(first["id"].is_string(), "{}", results[0]);
    for body in &results {
        assert_eq!(
            &body["data"]["deposit"], first,
            "every caller gets the same transaction"
        );
    }
    assert_eq!(t.balance(&w).await, "25.00");
    assert_eq!(t.assert_chain(&w).await, 1);
}

async fn same_key_racing_on_two_wallets_makes_two_movements(f: Arc<Fleet>, topology: Topology) {
    // Keys are scoped to the wallet: the same key racing on two wallets is two movements,
    // one each, whichever process or batch takes them.
    let t = &f.t;
    let a = t.create_wallet("alice", "USD").await;
    let b = t.create_wallet("bob", "USD").await;
    let before = f.stats();
    for round in 0..10 {
        let key = format!("shared-{round}");
        let (ra, rb) = tokio::join!(
            f.deposit(round, &a, "1.00", &key),
            f.deposit(round + 1, &b, "1.00", &key)
        );
        assert!(
            ra["errors"].is_null() && rb["errors"].is_null(),
            "{ra} {rb}"
        );
        assert_ne!(ra["data"]["deposit"]["id"], rb["data"]["deposit"]["id"]);
    }
    f.assert_path(topology, before, 20);
    let total: Decimal = t.balance(&a).await.parse::<Decimal>().unwrap()
        + t.balance(&b).await.parse::<Decimal>().unwrap();
    assert_eq!(total.to_string(), "20.00");
    assert_eq!(t.assert_chain(&a).await, 10);
    assert_eq!(t.assert_chain(&b).await, 10);
}

async fn mixed_concurrent_movements_keep_every_chain(f: Arc<Fleet>, topology: Topology) {
    let t = &f.t;
    let users = ["u1", "u2", "u3", "u4"];
    let mut wallets = Vec::new();
    for u in users {
        let w = t.create_wallet(u, "EUR").await;
        t.deposit(&w, "20.00", &format!("seed-{u}")).await;
        wallets.push((u, w));
    }
    let before = f.stats();
    // 240 movements: deposits and withdrawals interleaved on four wallets, some
    // withdrawals bound to fail for lack of funds.
    let tasks = (0..240).map(|i| {
        let f = f.clone();
        let (user, w) = wallets[i % wallets.len()].clone();
        tokio::spawn(async move {
            let amount = format!("{}.{:02}", 1 + i % 7, i % 100);
            let key = format!("m-{i}");
            if i % 3 == 0 {
                let body = f.deposit(i, &w, &amount, &key).await;
                (w, true, amount, body)
            } else {
                let body = f.withdraw(i, &f.t.user(user), &w, &amount, &key).await;
                (w, false, amount, body)
            }
        })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    f.assert_path(topology, before, 240);
    let mut expected: HashMap<String, Decimal> = wallets
        .iter()
        .map(|(_, w)| (w.clone(), "20.00".parse().unwrap()))
        .collect();
    let mut failures = 0;
    for (w, deposit, amount, body) in &results {
        let amount: Decimal = amount.parse().unwrap();
        match body.get("errors") {
            None if *deposit => *expected.get_mut(w).unwrap() += amount,
            None => *expected.get_mut(w).unwrap() -= amount,
            Some(_) => {
                assert_eq!(error_code(body), "INSUFFICIENT_FUNDS", "{body}");
                assert!(!deposit);
                failures += 1;
            }
        }
    }
    assert!(
        failures > 0,
        "the scenario must exercise refused withdrawals"
    );
    t.assert_balanced().await;
    for (_, w) in &wallets {
        let balance: Decimal = t.balance(w).await.parse().unwrap();
        assert_eq!(balance, expected[w], "no lost update on {w}");
        assert!(balance >= Decimal::ZERO);
        t.assert_chain(w).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_wallet_yields_one_wallet() {
    let t = Arc::new(TestApp::new().await);
    let tasks = (0..20).map(|_| {
        let t = t.clone();
        tokio::spawn(async move { t.create_wallet("carol", "CNY").await })
    });
    let ids: HashSet<String> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids.len(), 1);
    let data = t
        .ok(
            &t.user("carol"),
            "{ viewer { wallets { edges { node { currency } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data["viewer"]["wallets"]["edges"].as_array().unwrap().len(),
        1
    );
}

/// A movement chosen as a deadlock's victim is run again, not failed. The deadlock is made
/// on purpose: a trigger has the movement's insert lock a row the test holds, while the
/// test waits for the wallet the movement holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlocked_movement_is_run_again() {
    let f = Topology::Unbatched.start().await;
    let t = &f.t;
    let w = t.create_wallet("alice", "USD").await;
    f.deposit(0, &w, "10.00", "funding").await;
    let mut pg = t.db.client().await;
    pg.batch_execute(
        "CREATE TABLE poke (id int PRIMARY KEY); INSERT INTO poke VALUES (1);
         CREATE FUNCTION poke() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           -- Postgres looks for a deadlock once, deadlock_timeout after a wait starts:
           -- long enough here for the test to close the cycle even on a loaded machine.
           SET LOCAL deadlock_timeout = '3s';
           PERFORM 1 FROM poke WHERE id = 1 FOR UPDATE; RETURN NEW;
         END $$;
         CREATE TRIGGER poke BEFORE INSERT ON transactions
           FOR EACH ROW WHEN (NEW.tx_hash = 'deadlock') EXECUTE FUNCTION poke();",
    )
    .await
    .unwrap();
    let observer = t.db.client().await;
    let deadlocks_before = deadlocks(&observer, &t.db.name).await;

    // The test's session never looks for the deadlock itself: the movement is the one to
    // find it, and so its victim.
    pg.batch_execute("SET deadlock_timeout = '60s'")
        .await
        .unwrap();
    let holder = pg.transaction().await.unwrap();
    holder
        .batch_execute("SELECT 1 FROM poke WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let alice = t.user("alice");
    let movement = f.withdraw(0, &alice, &w, "1.00", "deadlock");
    let close_the_cycle = async {
        // The movement waits for the test's row.
        common::wait_for_lock_waiters(t, 1).await;
        // Postgres aborts the movement (it looks for the deadlock), which runs again.
        holder
            .execute(
                "SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE",
                &[&common::db_id(&w)],
            )
            .await
            .unwrap();
        holder.commit().await.unwrap();
    };
    let (body, ()) = tokio::join!(movement, close_the_cycle);
    assert_eq!(
        body["data"]["withdraw"]["idempotencyKey"], "deadlock",
        "{body}"
    );
    common::wait_until(
        "the deadlock is counted",
        std::time::Duration::from_secs(5),
        || {
            let observer = &observer;
            async move { deadlocks(observer, &t.db.name).await > deadlocks_before }
        },
    )
    .await;
    assert_eq!(t.balance(&w).await, "9.00");
    assert_eq!(t.assert_chain(&w).await, 2);
}

/// Deadlocks Postgres has counted in a database.
async fn deadlocks(pg: &tokio_postgres::Client, database: &str) -> i64 {
    pg.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    pg.query_one(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = $1",
        &[&database],
    )
    .await
    .unwrap()
    .get(0)
}

const TRANSFER: &str = "mutation($from: ID!, $to: ID!, $a: Decimal!, $k: String!) {
  transfer(input: {fromWalletId: $from, toWalletId: $to, amount: $a, idempotencyKey: $k}) {
    id from { id balanceAfter } } }";

/// `count` USD wallets of users `u0`, `u1`, …, each funded with `amount`.
async fn funded_wallets(t: &TestApp, count: usize, amount: &str) -> Vec<String> {
    let mut wallets = Vec::new();
    for i in 0..count {
        let w = t.create_wallet(&format!("u{i}"), "USD").await;
        t.deposit(&w, amount, &format!("seed-{i}")).await;
        wallets.push(w);
    }
    wallets
}

async fn send(
    f: &Fleet,
    node: usize,
    token: &str,
    from: &str,
    to: &str,
    amount: &str,
    key: &str,
) -> serde_json::Value {
    common::gql_to(
        f.router(node),
        Some(token),
        TRANSFER,
        json!({"from": from, "to": to, "a": amount, "k": key}),
    )
    .await
}

/// The same transfer raced 30 times, within batches and across processes: one transfer.
async fn thirty_identical_racing_transfers_make_one(f: Arc<Fleet>, topology: Topology) {
    let t = &f.t;
    let alice = t.create_wallet("alice", "USD").await;
    let bob = t.create_wallet("bob", "USD").await;
    t.deposit(&alice, "10.00", "fund").await;
    let token = t.user("alice");
    let before = f.stats();
    let answers = join_all((0..30).map(|i| {
        let (f, token, alice, bob) = (f.clone(), token.clone(), alice.clone(), bob.clone());
        tokio::spawn(async move { send(&f, i, &token, &alice, &bob, "2.50", "once").await })
    }))
    .await;
    f.assert_path(topology, before, 30);
    let ids: std::collections::HashSet<serde_json::Value> = answers
        .into_iter()
        .map(|b| {
            let b = b.unwrap();
            assert!(b["errors"].is_null(), "{b}");
            b["data"]["transfer"]["id"].clone()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(t.balance(&alice).await, "7.50");
    assert_eq!(t.balance(&bob).await, "2.50");
    // The same key for another amount: a conflict, nothing moves.
    let body = send(&f, 0, &token, &alice, &bob, "3.00", "once").await;
    assert_eq!(error_code(&body), "IDEMPOTENCY_CONFLICT", "{body}");
    t.assert_balanced().await;
}

/// 16 clients move money at random among 20 wallets — both directions between the same
/// pairs included — beside deposits and withdrawals: no deadlock reaches anyone, money is
/// only created by deposits and destroyed by withdrawals, every chain verifies.
async fn transfers_in_both_directions_keep_the_books(f: Arc<Fleet>, topology: Topology) {
    let t = &f.t;
    let wallets = funded_wallets(t, 20, "20.00").await;
    let operator = t.operator();
    let before = f.stats();
    let answers = join_all((0..16usize).map(|client| {
        let (f, wallets, operator) = (f.clone(), wallets.clone(), operator.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            for n in 0..12usize {
                let a = (client * 5 + n * 7) % 20;
                // Pairs sent both ways: client c sends a→b, client c+1 sends b→a.
                let b = if client % 2 == 0 {
                    (a + 1) % 20
                } else {
                    (a + 19) % 20
                };
                let key = format!("c{client}-n{n}");
                let node = client + n;
                let body = match n % 4 {
                    0 => ("deposit", f.deposit(node, &wallets[a], "3.00", &key).await),
                    1 => {
                        let token = f.t.user(&format!("u{a}"));
                        (
                            "withdraw",
                            f.withdraw(node, &token, &wallets[a], "2.00", &key).await,
                        )
                    }
                    _ => (
                        "transfer",
                        send(&f, node, &operator, &wallets[a], &wallets[b], "4.00", &key).await,
                    ),
                };
                out.push(body);
            }
            out
        })
    }))
    .await;
    f.assert_path(topology, before, 16 * 12);
    let (mut deposited, mut withdrawn) = (Decimal::ZERO, Decimal::ZERO);
    let mut transfers = 0;
    for (kind, body) in answers.into_iter().flat_map(Result::unwrap) {
        match body.get("errors") {
            None => match kind {
                "deposit" => deposited += Decimal::new(300, 2),
                "withdraw" => withdrawn += Decimal::new(200, 2),
                _ => transfers += 1,
            },
            Some(_) => assert_eq!(error_code(&body), "INSUFFICIENT_FUNDS", "{kind}: {body}"),
        }
    }
    assert!(transfers > 0);
    let mut total = Decimal::ZERO;
    for w in &wallets {
        total += t.balance(w).await.parse::<Decimal>().unwrap();
        t.assert_chain(w).await;
    }
    assert_eq!(total, Decimal::new(40000, 2) + deposited - withdrawn);
    t.assert_balanced().await;
}

/// 96 clients at once — a queue deep enough for a process to run several batches side by
/// side — move money among 40 wallets: transfers between whichever wallets, so a wallet
/// is in one batch and then in another as the load shifts and a transfer's two wallets
/// may have been in two different running batches a moment before; deposits; and now and
/// then a deposit the database refuses, failing its whole batch while the batches beside
/// it commit. Each refused deposit alone fails; everything else is applied once; the books
/// balance and every chain verifies.
async fn deep_queues_run_batches_side_by_side(f: Arc<Fleet>, topology: Topology) {
    let t = &f.t;
    let pg = t.db.client().await;
    pg.batch_execute(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON transactions
           FOR EACH ROW WHEN (NEW.tx_hash LIKE 'poison-%') EXECUTE FUNCTION poison();",
    )
    .await
    .unwrap();
    let wallets = funded_wallets(t, 40, "100.00").await;
    let operator = t.operator();
    let before = f.stats();
    let answers = join_all((0..96usize).map(|client| {
        let (f, wallets, operator) = (f.clone(), wallets.clone(), operator.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            for n in 0..6usize {
                let a = (client * 7 + n * 13) % 40;
                let b = (a + 1 + (client + n) % 39) % 40;
                let node = client + n;
                let answer = match (client % 16, n) {
                    (5, 2) => {
                        let key = format!("poison-{client}");
                        ("poison", f.deposit(node, &wallets[a], "1.00", &key).await)
                    }
                    (_, 0 | 3) => {
                        let key = format!("d-{client}-{n}");
                        ("deposit", f.deposit(node, &wallets[a], "2.00", &key).await)
                    }
                    _ => {
                        let key = format!("t-{client}-{n}");
                        let body =
                            send(&f, node, &operator, &wallets[a], &wallets[b], "3.00", &key).await;
                        ("transfer", body)
                    }
                };
                out.push(answer);
            }
            out
        })
    }))
    .await;
    f.assert_path(topology, before, 96 * 6);
    let mut deposited = Decimal::ZERO;
    let (mut transfers, mut poisoned) = (0, 0);
    for (kind, body) in answers.into_iter().flat_map(Result::unwrap) {
        match (kind, body.get("errors")) {
            ("poison", _) => {
                assert_eq!(error_code(&body), "INTERNAL", "{body}");
                poisoned += 1;
            }
            ("deposit", None) => deposited += Decimal::new(200, 2),
            ("transfer", None) => transfers += 1,
            (_, Some(_)) => assert_eq!(error_code(&body), "INSUFFICIENT_FUNDS", "{kind}: {body}"),
            _ => unreachable!(),
        }
    }
    assert_eq!(poisoned, 6);
    assert!(transfers > 200, "{transfers} transfers went through");
    let mut total = Decimal::ZERO;
    for w in &wallets {
        total += t.balance(w).await.parse::<Decimal>().unwrap();
        t.assert_chain(w).await;
    }
    assert_eq!(total, Decimal::new(400_000, 2) + deposited);
    let rows: i64 = pg
        .query_one(
            "SELECT count(*) FROM transactions WHERE tx_hash LIKE 'poison-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "no refused deposit left a row");
    t.assert_balanced().await;
    if topology != Topology::Unbatched {
        use std::sync::atomic::Ordering::Relaxed;
        let side_by_side = f
            .nodes
            .iter()
            .map(|(app, _)| app.state.committer.stats().most_in_flight.load(Relaxed))
            .max()
            .unwrap_or(0);
        assert!(
            side_by_side >= 2,
            "a deep queue ran batches side by side (at most {side_by_side} at once)"
        );
        assert!(
            f.stats().fallbacks > before.fallbacks,
            "the poisoned batches fell back"
        );
    }
}
