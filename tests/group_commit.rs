//! Group commit: concurrent movements share database transactions, each request is
//! judged on its own inside a batch, and a batch that fails as a whole is retried request
//! by request.

mod common;

use std::sync::atomic::Ordering;

use common::TestApp;
use serde_json::{Value, json};

/// The error code of a response, empty when it succeeded.
fn code_of(body: &Value) -> String {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Many concurrent movements on a few wallets: fewer transactions than movements, every
/// result right, every journal chain intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_movements_share_transactions_and_stay_exact() {
    let t = TestApp::with(common::Options {
        pool_size: 20,
        ..Default::default()
    })
    .await;
    let wallets: Vec<String> = {
        let mut out = Vec::new();
        for user in ["a", "b", "c"] {
            let w = t.create_wallet(user, "USD").await;
            t.deposit(&w, "10.00", &format!("seed-{user}")).await;
            out.push(w);
        }
        out
    };
    let stats = t.app.state.committer.stats();
    let (batches, movements) = (
        stats.batches.load(Ordering::Relaxed),
        stats.movements.load(Ordering::Relaxed),
    );
    // Per wallet: 20 withdrawals of 1.00 from 10.00 and 10 deposits of 0.50, at once.
    let calls = wallets.iter().enumerate().flat_map(|(i, w)| {
        let t = &t;
        let withdrawals = (0..20).map(move |n| async move {
            let body = t
                .gql(
                    Some(&t.operator()),
                    common::WITHDRAW,
                    json!({"w": w, "a": "1.00", "k": format!("w-{i}-{n}")}),
                )
                .await;
            (false, code_of(&body))
        });
        let deposits = (0..10).map(move |n| async move {
            let body = t
                .gql(
                    Some(&t.operator()),
                    common::DEPOSIT,
                    json!({"w": w, "a": "0.50", "k": format!("d-{i}-{n}")}),
                )
                .await;
            (true, code_of(&body))
        });
        withdrawals
            .map(futures_util::future::Either::Left)
            .chain(deposits.map(futures_util::future::Either::Right))
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results
            .iter()
            .filter(|(deposit, _)| *deposit)
            .all(|(_, code)| code.is_empty()),
        "every deposit succeeds: {results:?}"
    );
    assert!(
        results
            .iter()
            .all(|(_, code)| code.is_empty() || code == "INSUFFICIENT_FUNDS"),
        "{results:?}"
    );
    let succeeded = results
        .iter()
        .filter(|(deposit, code)| !deposit && code.is_empty())
        .count();
    let mut withdrawn = 0;
    for w in &wallets {
        let rows = t.assert_chain(w).await;
        let balance: rust_decimal::Decimal = t.balance(w).await.parse().unwrap();
        // The seed deposit and ten deposits; the rest are the withdrawals that went through.
        let out = rows - 11;
        assert_eq!(rust_decimal::Decimal::from(15 - out as i64), balance);
        withdrawn += out;
    }
    assert_eq!(
        withdrawn, succeeded,
        "each success is a row, each refusal none"
    );
    let batches = stats.batches.load(Ordering::Relaxed) - batches;
    let movements = stats.movements.load(Ordering::Relaxed) - movements;
    assert_eq!(movements, 90);
    assert!(
        batches < movements,
        "{batches} batches for {movements} movements"
    );
}

/// A batch whose transaction fails (here: one request's journal insert is refused by the
/// database) is run again request by request: the others succeed, the bad one alone fails
/// and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_batch_falls_back_to_one_transaction_per_request() {
    let t = TestApp::with(common::Options {
        pool_size: 20,
        ..Default::default()
    })
    .await;
    let wallet = t.create_wallet("alice", "USD").await;
    let pg = t.db.client().await;
    pg.batch_execute(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON transactions
           FOR EACH ROW WHEN (NEW.tx_hash = 'poison') EXECUTE FUNCTION poison();",
    )
    .await
    .unwrap();
    let fallbacks = t
        .app
        .state
        .committer
        .stats()
        .fallbacks
        .load(Ordering::Relaxed);
    let keys: Vec<String> = (0..15)
        .map(|n| format!("ok-{n}"))
        .chain(["poison".to_owned()])
        .collect();
    let calls = keys.iter().map(|k| {
        let (t, wallet) = (&t, &wallet);
        async move {
            let body = t.deposit(wallet, "1.00", k).await;
            (k.clone(), code_of(&body))
        }
    });
    let results = futures_util::future::join_all(calls).await;
    for (key, code) in &results {
        let expected = if key == "poison" { "INTERNAL" } else { "" };
        assert_eq!(code, expected, "{key}: {results:?}");
    }
    assert_eq!(t.balance(&wallet).await, "15.00");
    assert_eq!(t.assert_chain(&wallet).await, 15);
    assert!(
        t.app
            .state
            .committer
            .stats()
            .fallbacks
            .load(Ordering::Relaxed)
            > fallbacks,
        "the poisoned batch fell back"
    );
}

/// Without the batching task, movements still work, one transaction each, with the same
/// answers — including replays of what the batches committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movements_survive_the_loss_of_the_committer() {
    let t = TestApp::new().await;
    let wallet = t.create_wallet("alice", "USD").await;
    let first = t.deposit(&wallet, "5.00", "before").await;
    t.app.state.committer.stop();
    tokio::task::yield_now().await;
    let replay = t.deposit(&wallet, "5.00", "before").await;
    assert_eq!(
        replay["data"]["deposit"]["id"],
        first["data"]["deposit"]["id"]
    );
    t.deposit(&wallet, "1.00", "after").await;
    let body = t
        .withdraw(&t.operator(), &wallet, "100.00", "too-much")
        .await;
    assert_eq!(code_of(&body), "INSUFFICIENT_FUNDS");
    assert_eq!(t.balance(&wallet).await, "6.00");
    assert_eq!(t.assert_chain(&wallet).await, 2);
}
