//! Every mutation's happy path and each error code it can return; after every rejected
//! request the balance is unchanged.

mod common;

use common::{DEPOSIT, TestApp, WITHDRAW, error_code};
use serde_json::json;

const CREATE: &str = "mutation($c: String!, $u: String) {
  createWallet(input: {currency: $c, userId: $u}) { id userId currency kind balance availableBalance lockedBalance network address derivationPath } }";

#[tokio::test(flavor = "multi_thread")]
async fn create_wallet_is_idempotent_and_validates() {
    let t = TestApp::new().await;
    let alice = t.user("alice");
    let first = t.ok(&alice, CREATE, json!({"c": "USD"})).await["createWallet"].clone();
    assert_eq!(first["userId"], "alice");
    assert_eq!(first["currency"], "USD");
    assert_eq!(first["kind"], "FIAT");
    assert_eq!(first["balance"], "0.00");
    assert_eq!(first["availableBalance"], "0.00");
    assert_eq!(first["lockedBalance"], "0.00");
    assert!(
        first["network"].is_null()
            && first["address"].is_null()
            && first["derivationPath"].is_null()
    );
    // Again: the same wallet.
    let again = t.ok(&alice, CREATE, json!({"c": "USD"})).await["createWallet"].clone();
    assert_eq!(again["id"], first["id"]);
    // JPY has scale 0.
    let jpy = t.ok(&alice, CREATE, json!({"c": "JPY"})).await["createWallet"].clone();
    assert_eq!(jpy["balance"], "0");
    assert_ne!(jpy["id"], first["id"]);

    // Unknown currencies (codes are case-sensitive).
    for c in ["XYZ", "usd", "btc"] {
        let body = t.gql(Some(&alice), CREATE, json!({"c": c})).await;
        assert_eq!(error_code(&body), "CURRENCY_NOT_SUPPORTED", "{c}: {body}");
    }
    // A user cannot open a wallet for someone else; an operator can.
    let body = t
        .gql(Some(&alice), CREATE, json!({"c": "EUR", "u": "bob"}))
        .await;
    assert_eq!(error_code(&body), "FORBIDDEN");
    let for_bob = t
        .ok(&t.operator(), CREATE, json!({"c": "EUR", "u": "bob"}))
        .await;
    assert_eq!(for_bob["createWallet"]["userId"], "bob");
    // Anonymous.
    let body = t.gql(None, CREATE, json!({"c": "EUR"})).await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
    // Nothing was created by the refused calls.
    let list = t
        .ok(
            &t.operator(),
            "{ wallets(first: 100) { edges { node { userId currency } } } }",
            json!({}),
        )
        .await;
    assert_eq!(list["wallets"]["edges"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn deposit_happy_path_replay_and_errors() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;

    let body = t.deposit(&w, "100.5", "dep-1").await;
    let tx = &body["data"]["deposit"];
    assert_eq!(tx["type"], "DEPOSIT");
    assert_eq!(tx["amount"], "100.50", "stored at the currency's scale");
    assert_eq!(tx["balanceBefore"], "0.00");
    assert_eq!(tx["balanceAfter"], "100.50");
    assert_eq!(tx["status"], "COMPLETED");
    assert_eq!(tx["idempotencyKey"], "dep-1");
    assert_eq!(t.balance(&w).await, "100.50");

    // Replays (also with an equal amount written differently) return the original row.
    for amount in ["100.5", "100.50", "100.500"] {
        let again = t.deposit(&w, amount, "dep-1").await;
        assert_eq!(again["data"]["deposit"], *tx, "replay with {amount}");
    }
    assert_eq!(t.balance(&w).await, "100.50");

    let op = t.operator();
    let cases: Vec<(serde_json::Value, &str)> = vec![
        // Same key, different request.
        (
            json!({"w": w, "a": "99", "k": "dep-1"}),
            "IDEMPOTENCY_CONFLICT",
        ),
        // Amounts.
        (json!({"w": w, "a": "0", "k": "d2"}), "INVALID_AMOUNT"),
        (json!({"w": w, "a": "-5", "k": "d2"}), "INVALID_AMOUNT"),
        (json!({"w": w, "a": "0.001", "k": "d2"}), "INVALID_AMOUNT"),
        (json!({"w": w, "a": "1e3", "k": "d2"}), "BAD_USER_INPUT"),
        (json!({"w": w, "a": "ten", "k": "d2"}), "BAD_USER_INPUT"),
        (json!({"w": w, "a": 10.5, "k": "d2"}), "BAD_USER_INPUT"),
        (json!({"w": w, "a": 10, "k": "d2"}), "BAD_USER_INPUT"),
        (
            json!({"w": w, "a": "1000000000000000000000000000", "k": "d2"}),
            "INVALID_AMOUNT",
        ),
        // Keys.
        (json!({"w": w, "a": "1", "k": ""}), "BAD_USER_INPUT"),
        (
            json!({"w": w, "a": "1", "k": "k".repeat(129)}),
            "BAD_USER_INPUT",
        ),
        // Wallets.
        (
            json!({"w": "V2FsbGV0Ojk5OTk", "a": "1", "k": "d2"}),
            "NOT_FOUND",
        ),
        (
            json!({"w": "not-an-id", "a": "1", "k": "d2"}),
            "BAD_USER_INPUT",
        ),
    ];
    for (vars, code) in cases {
        let body = t.gql(Some(&op), DEPOSIT, vars.clone()).await;
        assert_eq!(error_code(&body), code, "{vars}: {body}");
        assert!(body["data"].is_null() || body["data"]["deposit"].is_null());
        assert_eq!(t.balance(&w).await, "100.50", "unchanged after {vars}");
    }
    // Users cannot deposit, anonymous callers are not authenticated.
    let body = t
        .gql(
            Some(&t.user("alice")),
            DEPOSIT,
            json!({"w": w, "a": "1", "k": "d3"}),
        )
        .await;
    assert_eq!(error_code(&body), "FORBIDDEN");
    let body = t
        .gql(None, DEPOSIT, json!({"w": w, "a": "1", "k": "d3"}))
        .await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
    assert_eq!(t.balance(&w).await, "100.50");
    // The numeric-literal refusal says why.
    let body = t
        .gql(Some(&op), DEPOSIT, json!({"w": w, "a": 1.1, "k": "d4"}))
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Decimal")
    );
    assert_eq!(t.assert_chain(&w).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn withdraw_happy_path_replay_and_errors() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let alice = t.user("alice");
    t.deposit(&w, "50.00", "seed").await;

    let body = t.withdraw(&alice, &w, "20.25", "wd-1").await;
    let tx = body["data"]["withdraw"].clone();
    assert_eq!(tx["type"], "WITHDRAW");
    assert_eq!(tx["balanceBefore"], "50.00");
    assert_eq!(tx["balanceAfter"], "29.75");
    assert_eq!(
        t.withdraw(&alice, &w, "20.25", "wd-1").await["data"]["withdraw"],
        tx
    );
    assert_eq!(t.balance(&w).await, "29.75");

    let cases = [
        (
            json!({"w": w, "a": "29.76", "k": "wd-2"}),
            "INSUFFICIENT_FUNDS",
        ),
        (
            json!({"w": w, "a": "1", "k": "wd-1"}),
            "IDEMPOTENCY_CONFLICT",
        ),
        // A deposit's key cannot be reused for a withdrawal.
        (
            json!({"w": w, "a": "50.00", "k": "seed"}),
            "IDEMPOTENCY_CONFLICT",
        ),
        (json!({"w": w, "a": "1.001", "k": "wd-3"}), "INVALID_AMOUNT"),
        (json!({"w": w, "a": "0.00", "k": "wd-3"}), "INVALID_AMOUNT"),
        (json!({"w": w, "a": 1, "k": "wd-3"}), "BAD_USER_INPUT"),
    ];
    for (vars, code) in cases {
        let body = t.gql(Some(&alice), WITHDRAW, vars.clone()).await;
        assert_eq!(error_code(&body), code, "{vars}: {body}");
        assert_eq!(t.balance(&w).await, "29.75", "unchanged after {vars}");
    }
    let body = t.withdraw(&alice, &w, "29.76", "wd-2").await;
    assert_eq!(body["errors"][0]["extensions"]["available"], "29.75");
    assert_eq!(body["errors"][0]["extensions"]["requested"], "29.76");
    // Exactly everything is fine; then a failed key can be used once funds exist.
    let all = t.withdraw(&alice, &w, "29.75", "wd-all").await;
    assert_eq!(all["data"]["withdraw"]["balanceAfter"], "0.00");
    t.deposit(&w, "40", "top-up").await;
    let later = t.withdraw(&alice, &w, "29.76", "wd-2").await;
    assert_eq!(later["data"]["withdraw"]["balanceAfter"], "10.24");
    // Someone else's wallet does not exist for bob.
    let body = t.withdraw(&t.user("bob"), &w, "1", "wd-bob").await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    // Operators may withdraw on behalf of the owner.
    let body = t.withdraw(&t.operator(), &w, "0.24", "wd-op").await;
    assert_eq!(body["data"]["withdraw"]["balanceAfter"], "10.00");
    assert_eq!(t.assert_chain(&w).await, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn jpy_has_no_decimals() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "JPY").await;
    assert_eq!(
        error_code(&t.deposit(&w, "100.5", "j1").await),
        "INVALID_AMOUNT"
    );
    let ok = t.deposit(&w, "1000", "j1").await;
    assert_eq!(ok["data"]["deposit"]["balanceAfter"], "1000");
    assert_eq!(t.balance(&w).await, "1000");
}

const RECONCILE: &str = "mutation($w: ID!, $s: DateTime!, $e: DateTime!, $x: Decimal) {
  reconcileWallet(input: {walletId: $w, startTime: $s, endTime: $e, externalBalance: $x}) {
    id status source systemBalance externalBalance difference notes mismatchReason
    unmatchedTransactions startTime endTime wallet { id } } }";

#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_matched_mismatched_and_errors() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "100.00", "d1").await;
    t.withdraw(&t.user("alice"), &w, "30.00", "w1").await;
    let op = t.operator();
    let range = json!({"w": w, "s": "2000-01-01T00:00:00Z", "e": "2100-01-01T00:00:00Z"});
    let with = |x: &str| {
        let mut v = range.clone();
        v["x"] = json!(x);
        v
    };

    let r = t.ok(&op, RECONCILE, with("70.00")).await["reconcileWallet"].clone();
    assert_eq!(r["status"], "MATCHED");
    assert_eq!(r["source"], "EXTERNAL");
    assert_eq!(r["systemBalance"], "70.00");
    assert_eq!(r["difference"], "0.00");
    assert!(r["mismatchReason"].is_null());
    assert_eq!(r["unmatchedTransactions"], json!([]));
    assert_eq!(r["wallet"]["id"], json!(w));

    let r = t.ok(&op, RECONCILE, with("65.50")).await["reconcileWallet"].clone();
    assert_eq!(r["status"], "MISMATCH");
    assert_eq!(r["difference"], "-4.50");
    assert!(r["mismatchReason"].as_str().unwrap().contains("lower"));

    // A tolerance per currency: within it, still matched (the difference is reported).
    t.db.client()
        .await
        .execute(
            "UPDATE currencies SET reconciliation_tolerance = 0.05 WHERE code = 'USD'",
            &[],
        )
        .await
        .unwrap();
    let t2_registry_note = "the tolerance is reference data read at start";
    let t = t.restart().await;
    let r = t.ok(&op, RECONCILE, with("70.03")).await["reconcileWallet"].clone();
    assert_eq!(r["status"], "MATCHED", "{t2_registry_note}");
    assert_eq!(r["difference"], "0.03");
    let r = t.ok(&op, RECONCILE, with("70.06")).await["reconcileWallet"].clone();
    assert_eq!(r["status"], "MISMATCH");

    // Errors, each recording nothing.
    let user = t.user("alice");
    assert_eq!(
        error_code(&t.gql(Some(&user), RECONCILE, with("70")).await),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(&t.gql(Some(&op), RECONCILE, range.clone()).await),
        "BAD_USER_INPUT"
    );
    let mut backwards = with("70");
    backwards["s"] = json!("2100-01-01T00:00:00Z");
    backwards["e"] = json!("2000-01-01T00:00:00Z");
    assert_eq!(
        error_code(&t.gql(Some(&op), RECONCILE, backwards).await),
        "BAD_USER_INPUT"
    );
    assert_eq!(
        error_code(&t.gql(Some(&op), RECONCILE, with("70.001")).await),
        "INVALID_AMOUNT"
    );
    let mut missing = with("70");
    missing["w"] = json!("V2FsbGV0Ojk5OTk");
    assert_eq!(
        error_code(&t.gql(Some(&op), RECONCILE, missing).await),
        "NOT_FOUND"
    );
    let mut bad_time = with("70");
    bad_time["s"] = json!("yesterday");
    assert_eq!(
        error_code(&t.gql(Some(&op), RECONCILE, bad_time).await),
        "BAD_USER_INPUT"
    );

    let list = t
        .ok(
            &op,
            "query($w: ID!) { reconciliations(walletId: $w) { edges { node { status } } } }",
            json!({"w": w}),
        )
        .await;
    let statuses: Vec<_> = list["reconciliations"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["MATCHED", "MISMATCH", "MATCHED", "MISMATCH"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_period_starts_after_earlier_history() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "EUR").await;
    let alice = t.user("alice");
    t.deposit(&w, "500.00", "old-1").await;
    t.withdraw(&alice, &w, "100.00", "old-2").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let start = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    t.deposit(&w, "25.00", "new-1").await;
    t.withdraw(&alice, &w, "5.00", "new-2").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let end = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    t.deposit(&w, "1000.00", "after-end").await;

    let vars = json!({"w": w, "s": start.to_rfc3339(), "e": end.to_rfc3339(), "x": "420.00"});
    let r = t.ok(&t.operator(), RECONCILE, vars).await["reconcileWallet"].clone();
    // Opening 400.00 (last row before start) + 25 - 5; the later deposit is outside.
    assert_eq!(r["systemBalance"], "420.00", "{r}");
    assert_eq!(r["status"], "MATCHED");
    let notes = r["notes"].as_str().unwrap();
    assert!(
        notes.contains("opening balance 400.00") && notes.contains("2 movement(s)"),
        "{notes}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_detects_a_tampered_journal() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "10.00", "a").await;
    t.deposit(&w, "10.00", "b").await;
    // Bypass the append-only trigger as a superuser would, to simulate corruption (the
    // row's own arithmetic still adds up, so its CHECK lets it through; the chain breaks).
    let c = t.db.client().await;
    c.batch_execute(
        "ALTER TABLE transactions DISABLE TRIGGER transactions_no_rewrite;
         UPDATE transactions SET amount = 15, balance_after = 15 WHERE tx_hash = 'a';
         ALTER TABLE transactions ENABLE TRIGGER transactions_no_rewrite;",
    )
    .await
    .unwrap();
    let vars =
        json!({"w": w, "s": "2000-01-01T00:00:00Z", "e": "2100-01-01T00:00:00Z", "x": "20.00"});
    let r = t.ok(&t.operator(), RECONCILE, vars).await["reconcileWallet"].clone();
    assert_eq!(r["status"], "MISMATCH");
    assert!(
        r["mismatchReason"].as_str().unwrap().contains("journal"),
        "{r}"
    );
}

/// A deposit or withdrawal whose key may be sent under either name: `k` as
/// `idempotencyKey`, `h` as its deprecated name `txHash` (null: not sent).
const DEPOSIT_NAMED: &str = "mutation($w: ID!, $a: Decimal!, $k: String, $h: String) {
  deposit(input: {walletId: $w, amount: $a, idempotencyKey: $k, txHash: $h}) {
    id amount idempotencyKey txHash balanceAfter } }";
const WITHDRAW_NAMED: &str = "mutation($w: ID!, $a: Decimal!, $k: String, $h: String) {
  withdraw(input: {walletId: $w, amount: $a, idempotencyKey: $k, txHash: $h}) {
    id amount idempotencyKey txHash balanceAfter } }";

#[tokio::test(flavor = "multi_thread")]
async fn deposit_and_withdraw_take_the_key_as_idempotency_key_or_as_tx_hash() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let (op, alice) = (t.operator(), t.user("alice"));

    let new = t
        .ok(
            &op,
            DEPOSIT_NAMED,
            json!({"w": w, "a": "10.00", "k": "d-new"}),
        )
        .await["deposit"]
        .clone();
    let old = t
        .ok(
            &op,
            DEPOSIT_NAMED,
            json!({"w": w, "a": "5.00", "h": "d-old"}),
        )
        .await["deposit"]
        .clone();
    assert_eq!(
        (&new["idempotencyKey"], &new["txHash"]),
        (&json!("d-new"), &json!("d-new"))
    );
    assert_eq!(
        (&old["idempotencyKey"], &old["txHash"]),
        (&json!("d-old"), &json!("d-old"))
    );
    assert_eq!(t.balance(&w).await, "15.00");

    let new = t
        .ok(
            &alice,
            WITHDRAW_NAMED,
            json!({"w": w, "a": "1.00", "k": "w-new"}),
        )
        .await["withdraw"]
        .clone();
    let old = t
        .ok(
            &alice,
            WITHDRAW_NAMED,
            json!({"w": w, "a": "2.00", "h": "w-old"}),
        )
        .await["withdraw"]
        .clone();
    assert_eq!(new["idempotencyKey"], "w-new");
    assert_eq!(old["idempotencyKey"], "w-old");
    assert_eq!(old["balanceAfter"], "12.00");
    assert_eq!(t.balance(&w).await, "12.00");
    // Found by the key whichever name sent it.
    for key in ["d-new", "d-old", "w-new", "w-old"] {
        assert_eq!(t.by_key(&w, key).await["idempotencyKey"], key);
    }
    assert_eq!(t.assert_chain(&w).await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_sent_again_under_its_other_name_returns_the_original() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let (op, alice) = (t.operator(), t.user("alice"));

    let first = t
        .ok(&op, DEPOSIT_NAMED, json!({"w": w, "a": "10.00", "h": "k"}))
        .await["deposit"]
        .clone();
    let again = t
        .ok(&op, DEPOSIT_NAMED, json!({"w": w, "a": "10.00", "k": "k"}))
        .await["deposit"]
        .clone();
    assert_eq!(again, first, "the original deposit, not a second one");
    // Both names at once, equal: the same key again.
    let both = t
        .ok(
            &op,
            DEPOSIT_NAMED,
            json!({"w": w, "a": "10.00", "k": "k", "h": "k"}),
        )
        .await["deposit"]
        .clone();
    assert_eq!(both, first);
    assert_eq!(t.balance(&w).await, "10.00");

    let first = t
        .ok(
            &alice,
            WITHDRAW_NAMED,
            json!({"w": w, "a": "3.00", "k": "out"}),
        )
        .await["withdraw"]
        .clone();
    let again = t
        .ok(
            &alice,
            WITHDRAW_NAMED,
            json!({"w": w, "a": "3.00", "h": "out"}),
        )
        .await["withdraw"]
        .clone();
    assert_eq!(again, first, "the original withdrawal, not a second one");
    assert_eq!(t.balance(&w).await, "7.00");
    assert_eq!(t.assert_chain(&w).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_sent_again_under_its_other_name_for_another_amount_conflicts() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let (op, alice) = (t.operator(), t.user("alice"));
    t.ok(&op, DEPOSIT_NAMED, json!({"w": w, "a": "10.00", "h": "k"}))
        .await;
    t.ok(
        &alice,
        WITHDRAW_NAMED,
        json!({"w": w, "a": "3.00", "k": "out"}),
    )
    .await;

    for (token, query, vars) in [
        (&op, DEPOSIT_NAMED, json!({"w": w, "a": "11.00", "k": "k"})),
        (
            &alice,
            WITHDRAW_NAMED,
            json!({"w": w, "a": "4.00", "h": "out"}),
        ),
    ] {
        let body = t.gql(Some(token), query, vars.clone()).await;
        assert_eq!(error_code(&body), "IDEMPOTENCY_CONFLICT", "{vars}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.starts_with("idempotencyKey "), "{message}");
    }
    assert_eq!(t.balance(&w).await, "7.00");
    assert_eq!(t.assert_chain(&w).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_under_both_names_differing_or_under_neither_is_bad_user_input() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let (op, alice) = (t.operator(), t.user("alice"));
    t.deposit(&w, "10.00", "seed").await;

    for (token, query) in [(&op, DEPOSIT_NAMED), (&alice, WITHDRAW_NAMED)] {
        let body = t
            .gql(
                Some(token),
                query,
                json!({"w": w, "a": "1.00", "k": "one", "h": "other"}),
            )
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("give one of idempotencyKey and txHash"),
            "{message}"
        );

        let body = t
            .gql(Some(token), query, json!({"w": w, "a": "1.00"}))
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("idempotencyKey"), "{message}");
    }
    assert_eq!(t.balance(&w).await, "10.00");
    assert_eq!(t.assert_chain(&w).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_shows_the_key_sent_and_its_wallets_currency() {
    let t = TestApp::new().await;
    let usd = t.create_wallet("alice", "USD").await;
    let eur = t.create_wallet("alice", "EUR").await;
    let deposited = t
        .ok(
            &t.operator(),
            "mutation($w: ID!) { deposit(input: {walletId: $w, amount: \"7.00\",
               idempotencyKey: \"bank-ref-7\"}) { idempotencyKey currency } }",
            json!({"w": usd}),
        )
        .await;
    assert_eq!(
        deposited["deposit"],
        json!({"idempotencyKey": "bank-ref-7", "currency": "USD"})
    );
    t.deposit(&eur, "1.00", "eur-1").await;
    t.deposit(&usd, "2.00", "usd-2").await;
    // Listed across wallets: each row with its own wallet's currency.
    let list = t
        .ok(
            &t.user("alice"),
            "{ transactions(first: 10) { edges { node { idempotencyKey currency } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        list["transactions"]["edges"],
        json!([
            {"node": {"idempotencyKey": "bank-ref-7", "currency": "USD"}},
            {"node": {"idempotencyKey": "eur-1", "currency": "EUR"}},
            {"node": {"idempotencyKey": "usd-2", "currency": "USD"}},
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fiat_withdrawal_charged_its_fee() {
    let mut options = common::Options::default();
    options
        .withdrawal_fees
        .insert("USD".into(), "0.50".parse().unwrap());
    let t = TestApp::with(options).await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "10.00", "seed").await;
    let body = t
        .ok(
            &t.user("alice"),
            "mutation($w: ID!) { withdraw(input: {walletId: $w, amount: \"4.00\",
               idempotencyKey: \"out\"}) { fee chargedFee balanceAfter } }",
            json!({"w": w}),
        )
        .await;
    assert_eq!(
        body["withdraw"],
        json!({"fee": "0.50", "chargedFee": "0.50", "balanceAfter": "5.50"})
    );
    // And as listed, with the deposit's (no fee).
    let list = t
        .ok(
            &t.user("alice"),
            "query($w: ID!) { wallet(id: $w) { transactions { edges { node {
               type fee chargedFee } } } } }",
            json!({"w": w}),
        )
        .await;
    assert_eq!(
        list["wallet"]["transactions"]["edges"],
        json!([
            {"node": {"type": "DEPOSIT", "fee": "0", "chargedFee": "0"}},
            {"node": {"type": "WITHDRAW", "fee": "0.50", "chargedFee": "0.50"}},
        ])
    );
}
