//! Crypto withdrawals: funds locked at once, signed and stored before broadcasting,
//! followed on chain to COMPLETED (or FAILED and refunded), exactly once when workers race
//! and when a worker dies between two steps.

mod common;

use common::{TestApp, error_code};
use serde_json::{Value, json};
use wallet::chain::withdrawal;
use wallet::chain::{self, Chain};
use wallet::chain_worker::ChainWorker;

const CREATE: &str = "mutation($c: String!) { createWallet(input: {currency: $c}) { id address } }";
const INCOMING: &str = "mutation($n: String!, $to: String!, $a: Decimal!) {
  simulateIncomingTransfer(input: {network: $n, toAddress: $to, amount: $a}) { txHash } }";
const MINE: &str =
    "mutation($n: String!, $c: Int!) { mineBlocks(input: {network: $n, count: $c}) }";
const WITHDRAW: &str = "mutation($w: ID!, $to: String!, $a: Decimal!, $k: String!) {
  cryptoWithdraw(input: {walletId: $w, toAddress: $to, amount: $a, idempotencyKey: $k}) {
    id type amount fee status isHold balanceBefore balanceAfter idempotencyKey chainTxHash
    toAddress fromAddress confirmations requiredConfirmations raw } }";
const TRANSACTION: &str = "query($id: ID!) { node(id: $id) { ... on Transaction {
  id type amount fee status isHold confirmations blockNumber chainTxHash raw gasPrice gasUsed
  settlements { type amount fee balanceBefore balanceAfter status chainTxHash settles { id } } } } }";
const WALLET: &str = "query($w: ID!) { wallet(id: $w) { balance lockedBalance availableBalance } }";
const RECONCILE: &str = "mutation($w: ID!) { reconcileWallet(input: {walletId: $w,
    startTime: \"2020-01-01T00:00:00Z\", endTime: \"2099-01-01T00:00:00Z\"}) {
    status systemBalance externalBalance unmatchedTransactions mismatchReason notes } }";

/// An outside bitcoin address (BIP173's P2WSH example).
const OUTSIDE_BTC: &str = "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3";

/// A BTC wallet of `user` funded with `amount` through a confirmed, credited deposit.
async fn funded_wallet(t: &TestApp, user: &str, amount: &str) -> (String, String) {
    let w = t.ok(&t.user(user), CREATE, json!({"c": "BTC"})).await["createWallet"].clone();
    let (id, address) = (
        w["id"].as_str().unwrap().to_owned(),
        w["address"].as_str().unwrap().to_owned(),
    );
    t.ok(
        &t.operator(),
        INCOMING,
        json!({"n": "bitcoin", "to": address, "a": amount}),
    )
    .await;
    mine(t, 6).await;
    pass(&worker(t)).await;
    assert_eq!(t.balance(&id).await, amount);
    (id, address)
}

fn worker(t: &TestApp) -> ChainWorker {
    t.app.chain_worker().expect("a simulated chain")
}

async fn pass(worker: &ChainWorker) -> wallet::chain_worker::PassReport {
    worker.pass().await.expect("a worker pass")
}

async fn mine(t: &TestApp, count: i32) -> i64 {
    t.ok(&t.operator(), MINE, json!({"n": "bitcoin", "c": count}))
        .await["mineBlocks"]
        .as_i64()
        .unwrap()
}

async fn withdraw(t: &TestApp, user: &str, wallet: &str, amount: &str, key: &str) -> Value {
    t.gql(
        Some(&t.user(user)),
        WITHDRAW,
        json!({"w": wallet, "to": OUTSIDE_BTC, "a": amount, "k": key}),
    )
    .await
}

async fn transaction(t: &TestApp, id: &Value) -> Value {
    t.ok(&t.operator(), TRANSACTION, json!({"id": id})).await["node"].clone()
}

async fn balances(t: &TestApp, wallet: &str) -> (String, String, String) {
    let w = t.ok(&t.operator(), WALLET, json!({"w": wallet})).await["wallet"].clone();
    let s = |k: &str| w[k].as_str().unwrap().to_owned();
    (s("balance"), s("lockedBalance"), s("availableBalance"))
}

/// Rows in the simulated chain sent from `address`.
async fn chain_sends(t: &TestApp, address: &str) -> i64 {
    let pg = t.db.client().await;
    pg.query_one(
        "SELECT count(*) FROM sim_transfers WHERE from_address = $1",
        &[&address],
    )
    .await
    .unwrap()
    .get(0)
}

/// Debit postings of a withdrawal (there must only ever be one).
async fn debits(t: &TestApp, key: &str) -> i64 {
    let pg = t.db.client().await;
    pg.query_one(
        "SELECT count(*) FROM transactions
          WHERE tx_hash = $1 AND NOT hold AND type = 'WITHDRAW'",
        &[&key],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn requests_lock_amount_and_fee_and_bad_ones_change_nothing() {
    let t = TestApp::new().await;
    let (wallet, _) = funded_wallet(&t, "alice", "1.00000000").await;

    let body = withdraw(&t, "alice", &wallet, "0.6", "w-1").await;
    let w = &body["data"]["cryptoWithdraw"];
    assert_eq!(w["status"], "PENDING", "{body}");
    assert_eq!(w["type"], "WITHDRAW");
    assert_eq!(w["isHold"], true);
    assert_eq!(w["amount"], "0.60000000");
    assert_eq!(w["fee"], "0.00001000");
    assert_eq!(w["balanceBefore"], "1.00000000");
    assert_eq!(w["balanceAfter"], "1.00000000");
    assert_eq!(w["idempotencyKey"], "w-1");
    assert_eq!(w["chainTxHash"], json!(null), "not signed yet");
    assert_eq!(w["toAddress"], OUTSIDE_BTC);
    assert_eq!(w["requiredConfirmations"], 6);
    let locked = (
        "1.00000000".to_owned(),
        "0.60001000".to_owned(),
        "0.39999000".to_owned(),
    );
    assert_eq!(balances(&t, &wallet).await, locked);

    // The same request again: the same withdrawal, nothing locked twice.
    let again = withdraw(&t, "alice", &wallet, "0.6", "w-1").await;
    assert_eq!(again["data"]["cryptoWithdraw"]["id"], w["id"]);

    // Refused, each changing nothing.
    let other = t.ok(&t.user("bob"), CREATE, json!({"c": "BTC"})).await["createWallet"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let usd = t.create_wallet("alice", "USD").await;
    let cases = [
        // Available is 0.39999: 0.39999 + fee is too much.
        (
            json!({"w": wallet, "to": OUTSIDE_BTC, "a": "0.39999", "k": "w-2"}),
            "INSUFFICIENT_FUNDS",
        ),
        (
            json!({"w": wallet, "to": OUTSIDE_BTC, "a": "0.7", "k": "w-1"}),
            "IDEMPOTENCY_CONFLICT",
        ),
        (
            json!({"w": wallet, "to": "bc1qnotanaddress", "a": "0.1", "k": "w-3"}),
            "INVALID_ADDRESS",
        ),
        (
            json!({"w": wallet, "to": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "a": "0.1", "k": "w-3"}),
            "INVALID_ADDRESS",
        ),
        // A testnet address on mainnet.
        (
            json!({"w": wallet, "to": "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "a": "0.1", "k": "w-3"}),
            "INVALID_ADDRESS",
        ),
        (
            json!({"w": wallet, "to": OUTSIDE_BTC, "a": "0.000000001", "k": "w-3"}),
            "INVALID_AMOUNT",
        ),
        (
            json!({"w": wallet, "to": OUTSIDE_BTC, "a": "-1", "k": "w-3"}),
            "INVALID_AMOUNT",
        ),
        (
            json!({"w": wallet, "to": OUTSIDE_BTC, "a": "0.1", "k": ""}),
            "BAD_USER_INPUT",
        ),
        (
            json!({"w": other, "to": OUTSIDE_BTC, "a": "0.1", "k": "w-3"}),
            "NOT_FOUND",
        ),
        (
            json!({"w": usd, "to": OUTSIDE_BTC, "a": "0.1", "k": "w-3"}),
            "CURRENCY_NOT_SUPPORTED",
        ),
    ];
    for (vars, code) in cases {
        let body = t.gql(Some(&t.user("alice")), WITHDRAW, vars.clone()).await;
        assert_eq!(error_code(&body), code, "{vars}: {body}");
    }
    let body = t
        .gql(
            None,
            WITHDRAW,
            json!({"w": wallet, "to": OUTSIDE_BTC, "a": "0.1", "k": "w-4"}),
        )
        .await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
    assert_eq!(balances(&t, &wallet).await, locked);
    assert_eq!(
        t.assert_chain(&wallet).await,
        3,
        "deposit hold, credit, withdrawal hold"
    );

    // What is left can still be withdrawn, to the last satoshi.
    let rest = withdraw(&t, "alice", &wallet, "0.39998", "w-5").await;
    assert_eq!(
        rest["data"]["cryptoWithdraw"]["status"], "PENDING",
        "{rest}"
    );
    assert_eq!(balances(&t, &wallet).await.2, "0.00000000");
}

#[tokio::test]
async fn a_withdrawal_is_signed_sent_confirmed_and_completed_with_its_fee() {
    let t = TestApp::new().await;
    let (wallet, address) = funded_wallet(&t, "alice", "1.00000000").await;
    let requested =
        withdraw(&t, "alice", &wallet, "0.3", "pay-1").await["data"]["cryptoWithdraw"].clone();
    let id = requested["id"].clone();
    let worker = worker(&t);

    let report = pass(&worker).await;
    assert_eq!((report.signed, report.broadcast), (1, 1));
    let sent = transaction(&t, &id).await;
    assert_eq!(sent["status"], "PROCESSING");
    let hash = sent["chainTxHash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);
    // Debited on signing: the lock became the debit (amount + fee).
    assert_eq!(
        balances(&t, &wallet).await,
        (
            "0.69999000".into(),
            "0.00000000".into(),
            "0.69999000".into()
        )
    );
    let debit = &sent["settlements"][0];
    assert_eq!(debit["type"], "WITHDRAW");
    assert_eq!(
        (debit["amount"].as_str(), debit["fee"].as_str()),
        (Some("0.30000000"), Some("0.00001000"))
    );
    assert_eq!(
        (
            debit["balanceBefore"].as_str(),
            debit["balanceAfter"].as_str()
        ),
        (Some("1.00000000"), Some("0.69999000"))
    );
    assert_eq!(debit["settles"]["id"], id);
    assert_eq!(debit["chainTxHash"], hash.as_str());

    // The chain has exactly the stored bytes, signed by the wallet's own key.
    let on_chain = t
        .app
        .state
        .simulator
        .as_ref()
        .unwrap()
        .transfer("bitcoin", &hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(on_chain.raw.as_deref(), sent["raw"].as_str());
    assert_eq!(on_chain.from_address, address);
    assert_eq!(on_chain.to_address, OUTSIDE_BTC);
    let raw = alloy_primitives::hex::decode(sent["raw"].as_str().unwrap()).unwrap();
    let (payload, signature) = raw.split_at(raw.len() - 64);
    let signature: [u8; 64] = signature.try_into().unwrap();
    assert!(t.app.state.custody.verify(
        "m/84'/0'/0'/0/0",
        chain::digest("bitcoin", payload),
        &signature
    ));
    assert!(!t.app.state.custody.verify(
        "m/84'/0'/0'/0/1",
        chain::digest("bitcoin", payload),
        &signature
    ));

    // On its way: the ledger has debited a transfer the chain has not mined yet. That is
    // no difference but a movement in transit, and said so.
    let rec = t.ok(&t.operator(), RECONCILE, json!({"w": wallet})).await["reconcileWallet"].clone();
    assert_eq!(rec["status"], "MATCHED", "{rec}");
    assert_eq!(rec["unmatchedTransactions"], json!([]));
    assert_eq!(
        rec["externalBalance"], "1.00000000",
        "the chain has not paid it out yet"
    );
    assert_eq!(rec["systemBalance"], "0.69999000");
    assert!(
        rec["notes"].as_str().unwrap().contains(&format!(
            "in transit at the window's end: {hash} (-0.30001000)"
        )),
        "{rec}"
    );

    // Confirmations are recorded block by block; the sixth completes it.
    for (blocks, confirmations) in [(1, 1), (4, 5)] {
        mine(&t, blocks).await;
        pass(&worker).await;
        let now = transaction(&t, &id).await;
        assert_eq!(
            (now["status"].as_str(), now["confirmations"].as_i64()),
            (Some("PROCESSING"), Some(confirmations))
        );
    }
    mine(&t, 1).await;
    assert_eq!(pass(&worker).await.withdrawals.completed, 1);
    let done = transaction(&t, &id).await;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["confirmations"], 6);
    assert_eq!(done["fee"], "0.00001000");
    assert_eq!(
        done["settlements"].as_array().unwrap().len(),
        1,
        "one debit, no refund"
    );
    // Later passes change nothing.
    assert_eq!(pass(&worker).await.withdrawals, Default::default());
    assert_eq!(t.balance(&wallet).await, "0.69999000");
    assert_eq!(t.assert_chain(&wallet).await, 4);

    // Ledger and chain agree, transfer by transfer.
    let rec = t.ok(&t.operator(), RECONCILE, json!({"w": wallet})).await["reconcileWallet"].clone();
    assert_eq!(rec["status"], "MATCHED", "{rec}");
    assert_eq!(rec["externalBalance"], "0.69999000");
}

#[tokio::test]
async fn a_withdrawal_the_chain_fails_is_refunded() {
    let t = TestApp::new().await;
    let (wallet, _) = funded_wallet(&t, "alice", "1.00000000").await;
    let pg = t.db.client().await;
    pg.execute(
        "INSERT INTO sim_failing_addresses (network, address) VALUES ('bitcoin', $1)",
        &[&OUTSIDE_BTC],
    )
    .await
    .unwrap();
    let id = withdraw(&t, "alice", &wallet, "0.5", "doomed").await["data"]["cryptoWithdraw"]["id"]
        .clone();
    let worker = worker(&t);
    pass(&worker).await;
    assert_eq!(t.balance(&wallet).await, "0.49999000");
    mine(&t, 1).await;
    assert_eq!(pass(&worker).await.withdrawals.failed, 1);

    let failed = transaction(&t, &id).await;
    assert_eq!(failed["status"], "FAILED");
    let postings = failed["settlements"].as_array().unwrap();
    let kinds: Vec<&str> = postings
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["WITHDRAW", "REFUND"]);
    assert_eq!(postings[1]["amount"], "0.50000000");
    assert_eq!(postings[1]["fee"], "0.00001000");
    assert_eq!(postings[1]["balanceAfter"], "1.00000000");
    assert_eq!(
        balances(&t, &wallet).await,
        (
            "1.00000000".into(),
            "0.00000000".into(),
            "1.00000000".into()
        )
    );
    assert_eq!(t.assert_chain(&wallet).await, 5);
    // Nothing more happens to it, however many passes or blocks follow.
    mine(&t, 10).await;
    pass(&worker).await;
    assert_eq!(t.balance(&wallet).await, "1.00000000");
    let rec = t.ok(&t.operator(), RECONCILE, json!({"w": wallet})).await["reconcileWallet"].clone();
    assert_eq!(rec["status"], "MATCHED", "{rec}");
}

/// The process dies after signing and storing (the debit is committed) but before the
/// broadcast: the next worker — another process — sends the stored bytes, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_storing_and_broadcasting_sends_once() {
    let t = TestApp::new().await;
    let (wallet, address) = funded_wallet(&t, "alice", "1.00000000").await;
    withdraw(&t, "alice", &wallet, "0.25", "crash-1").await;

    // Step 2 only, then the process is gone.
    let mut conn = t.app.state.pool.get().await.unwrap();
    let signed = withdrawal::sign_next(&mut conn, &t.app.state.custody, &[], &mut 0)
        .await
        .unwrap()
        .unwrap();
    drop(conn);
    assert_eq!(chain_sends(&t, &address).await, 0, "nothing broadcast yet");
    assert_eq!(t.balance(&wallet).await, "0.74999000");

    // Another process takes over.
    let (other, _) = t.sibling().await;
    let survivor = other.chain_worker().unwrap();
    let report = pass(&survivor).await;
    assert_eq!((report.signed, report.withdrawals.rebroadcast), (0, 1));
    assert_eq!(chain_sends(&t, &address).await, 1);
    let stored = t
        .app
        .state
        .simulator
        .as_ref()
        .unwrap()
        .transfer("bitcoin", &signed.hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.raw.as_deref(),
        Some(signed.raw.as_str()),
        "the stored bytes, not a new signature"
    );

    mine(&t, 6).await;
    assert_eq!(pass(&survivor).await.withdrawals.completed, 1);
    assert_eq!(chain_sends(&t, &address).await, 1);
    assert_eq!(debits(&t, "crash-1").await, 1);
    assert_eq!(t.balance(&wallet).await, "0.74999000");
    assert_eq!(t.assert_chain(&wallet).await, 4);
}

/// The process dies after broadcasting, before recording anything more: the next worker
/// finds the transfer on chain, does not send it again, and completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_broadcasting_and_updating_sends_once() {
    let t = TestApp::new().await;
    let (wallet, address) = funded_wallet(&t, "alice", "1.00000000").await;
    let id =
        withdraw(&t, "alice", &wallet, "0.25", "crash-2").await["data"]["cryptoWithdraw"]["id"]
            .clone();

    let chain = t.app.state.simulator.clone().unwrap();
    let mut conn = t.app.state.pool.get().await.unwrap();
    let signed = withdrawal::sign_next(&mut conn, &t.app.state.custody, &[], &mut 0)
        .await
        .unwrap()
        .unwrap();
    chain.broadcast(&signed).await.unwrap();
    drop(conn);
    mine(&t, 3).await;

    let (other, _) = t.sibling().await;
    let survivor = other.chain_worker().unwrap();
    let report = pass(&survivor).await;
    assert_eq!((report.signed, report.withdrawals.rebroadcast), (0, 0));
    assert_eq!(transaction(&t, &id).await["confirmations"], 3);
    // A stale process broadcasting the same bytes again is harmless.
    chain.broadcast(&signed).await.unwrap();
    mine(&t, 3).await;
    assert_eq!(pass(&survivor).await.withdrawals.completed, 1);
    assert_eq!(chain_sends(&t, &address).await, 1);
    assert_eq!(debits(&t, "crash-2").await, 1);
    assert_eq!(transaction(&t, &id).await["status"], "COMPLETED");
    assert_eq!(t.balance(&wallet).await, "0.74999000");
}

/// A crash inside the signing transaction rolls it back whole: nothing stored, nothing
/// debited, and the withdrawal is signed by the next pass.
#[tokio::test]
async fn a_crash_inside_the_signing_transaction_leaves_it_pending() {
    let t = TestApp::new().await;
    let (wallet, address) = funded_wallet(&t, "alice", "1.00000000").await;
    let id = withdraw(&t, "alice", &wallet, "0.1", "crash-3").await["data"]["cryptoWithdraw"]["id"]
        .clone();
    // The journal insert of the debit fails (as if the process died mid-transaction).
    let pg = t.db.client().await;
    pg.batch_execute(
        "CREATE FUNCTION fail_debit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER fail_debit BEFORE INSERT ON transactions
           FOR EACH ROW WHEN (NEW.hold_id IS NOT NULL) EXECUTE FUNCTION fail_debit();",
    )
    .await
    .unwrap();
    // A deposit arriving meanwhile: the rest of the pass still runs.
    t.ok(
        &t.operator(),
        INCOMING,
        json!({"n": "bitcoin", "to": address, "a": "0.05"}),
    )
    .await;
    assert!(worker(&t).pass().await.is_err());
    // Nothing of the failed transaction was stored: no signed bytes, no hash, no debit.
    let hold = transaction(&t, &id).await;
    assert_eq!(hold["status"], "PENDING");
    assert_eq!(
        (&hold["raw"], &hold["chainTxHash"]),
        (&json!(null), &json!(null))
    );
    assert_eq!(hold["settlements"], json!([]));
    assert_eq!(debits(&t, "crash-3").await, 0);
    let watched: i64 = pg
        .query_one(
            "SELECT count(*) FROM transactions WHERE hold AND type = 'DEPOSIT' AND amount = 0.05",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        watched, 1,
        "the deposit watcher ran despite the failed signing"
    );
    assert_eq!(
        balances(&t, &wallet).await,
        (
            "1.00000000".into(),
            "0.10001000".into(),
            "0.89999000".into()
        )
    );
    assert_eq!(chain_sends(&t, &address).await, 0);

    pg.batch_execute("DROP TRIGGER fail_debit ON transactions")
        .await
        .unwrap();
    assert_eq!(pass(&worker(&t)).await.signed, 1);
    assert_eq!(chain_sends(&t, &address).await, 1);
    assert_eq!(debits(&t, "crash-3").await, 1);
}

/// `n` worker passes at once, alternately in this process and another one.
async fn racing_passes(t: &TestApp, n: usize) -> Vec<wallet::chain_worker::PassReport> {
    let (other, _) = t.sibling().await;
    let workers = [worker(t), other.chain_worker().unwrap()];
    let passes = (0..n).map(|i| {
        let w = workers[i % 2].clone();
        async move { w.pass().await.unwrap() }
    });
    futures_util::future::join_all(passes).await
}

/// Workers in two processes, four passes at once, twelve withdrawals: each is signed,
/// sent and debited exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_workers_handle_each_withdrawal_once() {
    let t = TestApp::with(common::Options {
        pool_size: 12,
        ..Default::default()
    })
    .await;
    let (alices, alice_address) = funded_wallet(&t, "alice", "1.00000000").await;
    let (bobs, bob_address) = funded_wallet(&t, "bob", "1.00000000").await;
    for i in 0..6 {
        withdraw(&t, "alice", &alices, "0.1", &format!("a-{i}")).await;
        withdraw(&t, "bob", &bobs, "0.1", &format!("b-{i}")).await;
    }
    let reports = racing_passes(&t, 4).await;
    assert_eq!(
        reports.iter().map(|r| r.signed).sum::<usize>(),
        12,
        "{reports:?}"
    );
    assert_eq!(chain_sends(&t, &alice_address).await, 6);
    assert_eq!(chain_sends(&t, &bob_address).await, 6);
    for (wallet, prefix) in [(&alices, "a"), (&bobs, "b")] {
        for i in 0..6 {
            assert_eq!(debits(&t, &format!("{prefix}-{i}")).await, 1);
        }
        assert_eq!(t.balance(wallet).await, "0.39994000");
        t.assert_chain(wallet).await;
    }
}

/// Identical requests racing: one withdrawal, locked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_identical_requests_lock_once() {
    let t = TestApp::with(common::Options {
        pool_size: 12,
        ..Default::default()
    })
    .await;
    let (wallet, _) = funded_wallet(&t, "alice", "1.00000000").await;
    let calls = (0..12).map(|_| {
        let (t, wallet) = (&t, &wallet);
        async move {
            withdraw(t, "alice", wallet, "0.2", "same").await["data"]["cryptoWithdraw"]["id"]
                .clone()
        }
    });
    let ids = futures_util::future::join_all(calls).await;
    assert!(
        ids.iter().all(|id| *id == ids[0] && id.is_string()),
        "{ids:?}"
    );
    assert_eq!(balances(&t, &wallet).await.1, "0.20001000");
}

/// The worker polls rarely here (an hour); a request wakes it, so the withdrawal is
/// signed, sent and — once mined — completed without waiting for the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_wakes_the_worker() {
    let t = TestApp::with(common::Options {
        chain_poll: Some(std::time::Duration::from_secs(3600)),
        ..Default::default()
    })
    .await;
    let (wallet, address) = funded_wallet(&t, "alice", "1.00000000").await;
    let id = withdraw(&t, "alice", &wallet, "0.1", "woken").await["data"]["cryptoWithdraw"]["id"]
        .clone();
    let until = |status: &'static str| {
        let (t, id) = (&t, &id);
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if transaction(t, id).await["status"] == status {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "still not {status}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    until("PROCESSING").await;
    assert_eq!(chain_sends(&t, &address).await, 1);
    mine(&t, 6).await; // mineBlocks wakes it too
    until("COMPLETED").await;
}

/// A withdrawal custody cannot sign for (here: its wallet's key path no longer gives its
/// address, as with a wrong seed) fails with its funds released, and does not hold up the
/// withdrawals behind it.
#[tokio::test]
async fn a_withdrawal_custody_cannot_sign_fails_and_releases_its_funds() {
    let t = TestApp::new().await;
    let (alices, alice_address) = funded_wallet(&t, "alice", "1.00000000").await;
    let (bobs, bob_address) = funded_wallet(&t, "bob", "1.00000000").await;
    let stuck =
        withdraw(&t, "alice", &alices, "0.2", "a-1").await["data"]["cryptoWithdraw"]["id"].clone();
    let fine =
        withdraw(&t, "bob", &bobs, "0.2", "b-1").await["data"]["cryptoWithdraw"]["id"].clone();
    let pg = t.db.client().await;
    pg.execute(
        "UPDATE wallets SET derivation_path = 'm/84''/0''/0''/0/99' WHERE address = $1",
        &[&alice_address],
    )
    .await
    .unwrap();

    let report = pass(&worker(&t)).await;
    assert_eq!(report.signed, 1);
    let failed = transaction(&t, &stuck).await;
    assert_eq!(failed["status"], "FAILED");
    assert_eq!(failed["settlements"], json!([]), "nothing was debited");
    assert_eq!(
        balances(&t, &alices).await,
        (
            "1.00000000".into(),
            "0.00000000".into(),
            "1.00000000".into()
        )
    );
    assert_eq!(chain_sends(&t, &alice_address).await, 0);
    assert_eq!(transaction(&t, &fine).await["status"], "PROCESSING");
    assert_eq!(chain_sends(&t, &bob_address).await, 1);
    t.assert_chain(&alices).await;
}

/// One withdrawal that cannot be followed (its stored bytes damaged here) is reported and
/// retried next pass; the others still complete.
#[tokio::test]
async fn one_withdrawal_that_cannot_be_followed_does_not_stop_the_others() {
    let t = TestApp::new().await;
    let (alices, _) = funded_wallet(&t, "alice", "1.00000000").await;
    let (bobs, _) = funded_wallet(&t, "bob", "1.00000000").await;
    let damaged =
        withdraw(&t, "alice", &alices, "0.2", "a-1").await["data"]["cryptoWithdraw"]["id"].clone();
    let fine =
        withdraw(&t, "bob", &bobs, "0.2", "b-1").await["data"]["cryptoWithdraw"]["id"].clone();
    assert_eq!(pass(&worker(&t)).await.signed, 2);
    // Damage it behind the journal's guard (as only a superuser can, with triggers off).
    let pg = t.db.client().await;
    pg.batch_execute(
        "SET session_replication_role = replica;
         UPDATE transactions SET raw = NULL WHERE tx_hash = 'a-1' AND hold;
         SET session_replication_role = DEFAULT;",
    )
    .await
    .unwrap();
    mine(&t, 6).await;
    let report = pass(&worker(&t)).await;
    assert_eq!(
        (report.withdrawals.completed, report.withdrawals.errors),
        (1, 1)
    );
    assert_eq!(transaction(&t, &fine).await["status"], "COMPLETED");
    assert_eq!(transaction(&t, &damaged).await["status"], "PROCESSING");
}

/// A withdrawal whose signing transaction fails (its debit refused, here by a trigger)
/// does not hold up the ones behind it: each pass tries every waiting withdrawal once,
/// in id order, and the failed one is signed once the cause is gone.
#[tokio::test]
async fn a_withdrawal_that_fails_to_sign_does_not_delay_the_others() {
    let t = TestApp::new().await;
    let (alices, alice_address) = funded_wallet(&t, "alice", "1.00000000").await;
    let (bobs, bob_address) = funded_wallet(&t, "bob", "1.00000000").await;
    // The stuck one comes first.
    let stuck =
        withdraw(&t, "alice", &alices, "0.1", "stuck").await["data"]["cryptoWithdraw"]["id"]
            .clone();
    let fine =
        withdraw(&t, "bob", &bobs, "0.1", "fine").await["data"]["cryptoWithdraw"]["id"].clone();
    let pg = t.db.client().await;
    pg.batch_execute(
        "CREATE FUNCTION fail_debit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER fail_debit BEFORE INSERT ON transactions
           FOR EACH ROW WHEN (NEW.tx_hash = 'stuck' AND NEW.hold_id IS NOT NULL)
           EXECUTE FUNCTION fail_debit();",
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let report = worker(&t).pass().await;
        assert!(report.is_err(), "the failure is reported");
        assert_eq!(transaction(&t, &stuck).await["status"], "PENDING");
        assert_eq!(transaction(&t, &fine).await["status"], "PROCESSING");
        assert_eq!(chain_sends(&t, &bob_address).await, 1, "sent once");
        assert_eq!(chain_sends(&t, &alice_address).await, 0);
    }
    pg.batch_execute("DROP TRIGGER fail_debit ON transactions")
        .await
        .unwrap();
    assert_eq!(pass(&worker(&t)).await.signed, 1);
    assert_eq!(chain_sends(&t, &alice_address).await, 1);
    assert_eq!(
        (debits(&t, "stuck").await, debits(&t, "fine").await),
        (1, 1)
    );
}

/// Workers racing the last step: completion of one withdrawal and the refund of another
/// the chain failed. Each is completed or refunded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_workers_complete_or_refund_each_withdrawal_once() {
    let t = TestApp::with(common::Options {
        pool_size: 12,
        ..Default::default()
    })
    .await;
    let (alices, _) = funded_wallet(&t, "alice", "1.00000000").await;
    let (bobs, _) = funded_wallet(&t, "bob", "1.00000000").await;
    let failing = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
    t.db.client()
        .await
        .execute(
            "INSERT INTO sim_failing_addresses (network, address) VALUES ('bitcoin', $1)",
            &[&failing],
        )
        .await
        .unwrap();
    let refunded = t
        .ok(
            &t.user("alice"),
            WITHDRAW,
            json!({"w": alices, "to": failing, "a": "0.3", "k": "to-fail"}),
        )
        .await["cryptoWithdraw"]["id"]
        .clone();
    let completed =
        withdraw(&t, "bob", &bobs, "0.3", "to-complete").await["data"]["cryptoWithdraw"]["id"]
            .clone();
    assert_eq!(pass(&worker(&t)).await.signed, 2);
    mine(&t, 6).await;

    let reports = racing_passes(&t, 6).await;
    let sum =
        |f: fn(&wallet::chain_worker::PassReport) -> usize| reports.iter().map(f).sum::<usize>();
    assert_eq!(sum(|r| r.withdrawals.completed), 1, "{reports:?}");
    assert_eq!(sum(|r| r.withdrawals.failed), 1, "{reports:?}");
    assert_eq!(transaction(&t, &completed).await["status"], "COMPLETED");
    let failed = transaction(&t, &refunded).await;
    assert_eq!(failed["status"], "FAILED");
    let refunds: Vec<_> = failed["settlements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "REFUND")
        .collect();
    assert_eq!(refunds.len(), 1, "{failed}");
    assert_eq!(
        t.balance(&alices).await,
        "1.00000000",
        "refunded in full, once"
    );
    assert_eq!(t.balance(&bobs).await, "0.69999000");
    t.assert_chain(&alices).await;
    t.assert_chain(&bobs).await;
}

/// A transfer from outside to `address`, pending until the next block; its hash.
async fn send_in(t: &TestApp, address: &str, amount: &str) -> String {
    t.ok(
        &t.operator(),
        INCOMING,
        json!({"n": "bitcoin", "to": address, "a": amount}),
    )
    .await["simulateIncomingTransfer"]["txHash"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The database's clock now (journal times and block times come from it).
async fn db_now(t: &TestApp) -> chrono::DateTime<chrono::Utc> {
    let text: String = t
        .db
        .client()
        .await
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

async fn reconcile_window(
    t: &TestApp,
    wallet: &str,
    start: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
) -> Value {
    t.ok(
        &t.operator(),
        "mutation($w: ID!, $s: DateTime!, $e: DateTime!) { reconcileWallet(input: {walletId: $w,
           startTime: $s, endTime: $e}) { status systemBalance externalBalance
           unmatchedTransactions mismatchReason notes } }",
        json!({"w": wallet, "s": start.to_rfc3339(), "e": end.to_rfc3339()}),
    )
    .await["reconcileWallet"]
        .clone()
}

/// A past window is compared with the chain as it was at the window's end. Windows that
/// ended while a deposit was confirming, or while a withdrawal was signed but not yet
/// sent, were consistent then, and reconcile MATCHED whenever they are asked about — the
/// movements on their way are named as in transit. A real difference still shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_windows_reconcile_against_the_chain_as_it_was_then() {
    let t = TestApp::new().await;
    let (wallet, address) = {
        let w = t.ok(&t.user("alice"), CREATE, json!({"c": "BTC"})).await["createWallet"].clone();
        (
            w["id"].as_str().unwrap().to_owned(),
            w["address"].as_str().unwrap().to_owned(),
        )
    };
    let worker = worker(&t);
    let opened = db_now(&t).await;
    let deposit = send_in(&t, &address, "0.5").await;
    mine(&t, 1).await;
    pass(&worker).await;
    let confirming = db_now(&t).await; // the deposit has 1 of 6 confirmations
    mine(&t, 5).await;
    pass(&worker).await;
    assert_eq!(t.balance(&wallet).await, "0.50000000");

    withdraw(&t, "alice", &wallet, "0.1", "payout").await;
    let mut conn = t.app.state.pool.get().await.unwrap();
    let signed = withdrawal::sign_next(&mut conn, &t.app.state.custody, &[], &mut 0)
        .await
        .unwrap()
        .unwrap();
    drop(conn);
    let unsent = db_now(&t).await; // debited, not yet on chain
    pass(&worker).await; // sends it
    mine(&t, 6).await;
    pass(&worker).await;
    let settled = db_now(&t).await;

    let in_transit = |rec: &Value, what: &str| {
        assert!(
            rec["notes"].as_str().unwrap().contains(what),
            "{rec} should name {what} in transit"
        );
    };
    let early = reconcile_window(&t, &wallet, opened, confirming).await;
    assert_eq!(early["status"], "MATCHED", "{early}");
    assert_eq!(
        (
            early["systemBalance"].as_str(),
            early["externalBalance"].as_str()
        ),
        (Some("0.00000000"), Some("0.50000000"))
    );
    in_transit(&early, &format!("{deposit} (+0.50000000)"));

    let mid = reconcile_window(&t, &wallet, confirming, unsent).await;
    assert_eq!(mid["status"], "MATCHED", "{mid}");
    assert_eq!(
        (
            mid["systemBalance"].as_str(),
            mid["externalBalance"].as_str()
        ),
        (Some("0.39999000"), Some("0.50000000"))
    );
    in_transit(&mid, &format!("{} (-0.10001000)", signed.hash));

    let all = reconcile_window(&t, &wallet, opened, settled).await;
    assert_eq!(all["status"], "MATCHED", "{all}");
    assert_eq!(
        (
            all["systemBalance"].as_str(),
            all["externalBalance"].as_str()
        ),
        (Some("0.39999000"), Some("0.39999000"))
    );
    assert!(
        !all["notes"].as_str().unwrap().contains("in transit"),
        "{all}"
    );

    // A transfer the ledger never heard of (no watcher pass since) is a difference, in
    // the window that saw it and in any later one.
    let stranger = send_in(&t, &address, "0.2").await;
    mine(&t, 1).await;
    let later = db_now(&t).await;
    let rec = reconcile_window(&t, &wallet, settled, later).await;
    assert_eq!(rec["status"], "MISMATCH", "{rec}");
    assert_eq!(rec["unmatchedTransactions"], json!([stranger]));
    // The earlier windows are untouched by it.
    assert_eq!(
        reconcile_window(&t, &wallet, opened, settled).await["status"],
        "MATCHED"
    );
}

/// A refund is a credit like any other: one that would take the balance past the
/// currency's maximum (where sums stop being exact) is not applied; the withdrawal waits,
/// counted as an error each pass, nothing lost, and is refunded once the balance has room.
#[tokio::test]
async fn a_refund_is_held_to_the_credit_ceiling() {
    let t = TestApp::new().await;
    // BTC's ceiling is 10^19: start just under it.
    let (wallet, address) = funded_wallet(&t, "alice", "9999999999999999990.00000000").await;
    t.fail_transfers_to(OUTSIDE_BTC).await;
    // 12 more arrive and confirm; the same pass signs a withdrawal of 5 (its debit) and
    // credits the 12.
    t.ok(
        &t.operator(),
        INCOMING,
        json!({"n": "bitcoin", "to": address, "a": "12"}),
    )
    .await;
    mine(&t, 6).await;
    let id =
        withdraw(&t, "alice", &wallet, "5", "doomed").await["data"]["cryptoWithdraw"]["id"].clone();
    let worker = worker(&t);
    pass(&worker).await;
    assert_eq!(t.balance(&wallet).await, "9999999999999999996.99999000");
    // The chain fails the withdrawal: its refund of 5.00001 would cross the ceiling.
    mine(&t, 1).await;
    let report = pass(&worker).await;
    assert_eq!(report.withdrawals.failed, 0, "{report:?}");
    assert!(report.withdrawals.errors >= 1, "{report:?}");
    assert_eq!(t.balance(&wallet).await, "9999999999999999996.99999000");
    assert_eq!(transaction(&t, &id).await["status"], "PROCESSING");
    // The user moves 10 out elsewhere: now the refund fits, and is made once.
    let elsewhere = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
    let body = t
        .gql(
            Some(&t.user("alice")),
            WITHDRAW,
            json!({"w": wallet, "to": elsewhere, "a": "10", "k": "room"}),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    pass(&worker).await;
    pass(&worker).await;
    assert_eq!(transaction(&t, &id).await["status"], "FAILED");
    assert_eq!(t.balance(&wallet).await, "9999999999999999991.99999000");
    t.assert_chain(&wallet).await;
    t.assert_balanced().await;
}
