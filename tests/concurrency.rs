//! Concurrency claims, proven concurrently: no overdraft, no lost update, exactly-once
//! under racing idempotent requests, and a journal chain that holds throughout.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{TestApp, error_code};
use futures_util::future::join_all;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_withdrawals_never_overdraw() {
    let t = Arc::new(TestApp::new().await);
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "50.00", "funding").await;
    let alice = t.user("alice");

    let tasks = (0..100).map(|i| {
        let (t, w, alice) = (t.clone(), w.clone(), alice.clone());
        tokio::spawn(async move { t.withdraw(&alice, &w, "1.00", &format!("wd-{i}")).await })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_identical_deposits_credit_once() {
    let t = Arc::new(TestApp::new().await);
    let w = t.create_wallet("alice", "USD").await;
    let tasks = (0..50).map(|_| {
        let (t, w) = (t.clone(), w.clone());
        tokio::spawn(async move { t.deposit(&w, "25.00", "same-key").await })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_racing_on_two_wallets_conflicts() {
    // The wallet lock does not order these two: the unique key does. One wins; the other
    // is told the key was used for a different request, and has no effect.
    let t = Arc::new(TestApp::new().await);
    let a = t.create_wallet("alice", "USD").await;
    let b = t.create_wallet("bob", "USD").await;
    for round in 0..10 {
        let key = format!("shared-{round}");
        let (ra, rb) = tokio::join!(t.deposit(&a, "1.00", &key), t.deposit(&b, "1.00", &key));
        let codes: Vec<_> = [&ra, &rb]
            .iter()
            .map(|r| r.get("errors").map(|_| error_code(r).to_owned()))
            .collect();
        assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1, "{ra} {rb}");
        assert!(
            codes.contains(&Some("IDEMPOTENCY_CONFLICT".into())),
            "{ra} {rb}"
        );
    }
    let total: rust_decimal::Decimal = t
        .balance(&a)
        .await
        .parse::<rust_decimal::Decimal>()
        .unwrap()
        + t.balance(&b)
            .await
            .parse::<rust_decimal::Decimal>()
            .unwrap();
    assert_eq!(total.to_string(), "10.00");
    t.assert_chain(&a).await;
    t.assert_chain(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_concurrent_movements_keep_every_chain() {
    let t = Arc::new(TestApp::new().await);
    let users = ["u1", "u2", "u3", "u4"];
    let mut wallets = Vec::new();
    for u in users {
        let w = t.create_wallet(u, "EUR").await;
        t.deposit(&w, "20.00", &format!("seed-{u}")).await;
        wallets.push((u, w));
    }
    // 240 movements: deposits and withdrawals interleaved on four wallets, some
    // withdrawals bound to fail for lack of funds.
    let tasks = (0..240).map(|i| {
        let t = t.clone();
        let (user, w) = wallets[i % wallets.len()].clone();
        tokio::spawn(async move {
            let amount = format!("{}.{:02}", 1 + i % 7, i % 100);
            let key = format!("m-{i}");
            if i % 3 == 0 {
                let body = t.deposit(&w, &amount, &key).await;
                (w, true, amount, body)
            } else {
                let body = t.withdraw(&t.user(user), &w, &amount, &key).await;
                (w, false, amount, body)
            }
        })
    });
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut expected: std::collections::HashMap<String, rust_decimal::Decimal> = wallets
        .iter()
        .map(|(_, w)| (w.clone(), "20.00".parse().unwrap()))
        .collect();
    let mut failures = 0;
    for (w, deposit, amount, body) in &results {
        let amount: rust_decimal::Decimal = amount.parse().unwrap();
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
    for (_, w) in &wallets {
        let balance: rust_decimal::Decimal = t.balance(w).await.parse().unwrap();
        assert_eq!(balance, expected[w], "no lost update on {w}");
        assert!(balance >= rust_decimal::Decimal::ZERO);
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
