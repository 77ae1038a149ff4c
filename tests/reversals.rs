//! Reversals: an operator undoes a completed movement with a compensating row — once, never
//! overdrawing, never a reversal of a reversal — and the ledger stays balanced.

mod common;

use common::{TestApp, error_code};
use serde_json::{Value, json};

const REVERSE: &str = "mutation($t: ID!, $k: String!, $r: String!) {
  reverseTransaction(input: {transactionId: $t, idempotencyKey: $k, reason: $r}) {
    id type amount fee balanceBefore balanceAfter description idempotencyKey
    reverses { id type } reversedBy { id } } }";

async fn reverse(t: &TestApp, token: &str, id: &str, key: &str, reason: &str) -> Value {
    t.gql(
        Some(token),
        REVERSE,
        json!({"t": id, "k": key, "r": reason}),
    )
    .await
}

async fn reversed_by(t: &TestApp, id: &str) -> Value {
    t.ok(
        &t.operator(),
        "query($id: ID!) { transaction(id: $id) { reversedBy { id type } } }",
        json!({"id": id}),
    )
    .await["transaction"]["reversedBy"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_is_reversed_once_and_a_reversal_never() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let wrong = t.deposit(&w, "40.00", "posted-twice").await;
    let wrong_id = wrong["data"]["deposit"]["id"].as_str().unwrap().to_owned();
    t.deposit(&w, "15.00", "real").await;
    let op = t.operator();

    // Users cannot reverse anything, not even their own movements.
    let body = reverse(&t, &t.user("alice"), &wrong_id, "rev-1", "duplicate").await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");

    let body = reverse(&t, &op, &wrong_id, "rev-1", "posted twice by the bank feed").await;
    assert!(body["errors"].is_null(), "{body}");
    let reversal = body["data"]["reverseTransaction"].clone();
    assert_eq!(reversal["type"], "REVERSAL");
    assert_eq!(reversal["amount"], "40.00");
    assert_eq!(reversal["balanceBefore"], "55.00");
    assert_eq!(reversal["balanceAfter"], "15.00");
    assert_eq!(reversal["description"], "posted twice by the bank feed");
    assert_eq!(reversal["reverses"]["id"], wrong_id.as_str());
    assert_eq!(reversal["reverses"]["type"], "DEPOSIT");
    assert!(reversal["reversedBy"].is_null());
    assert_eq!(reversed_by(&t, &wrong_id).await["id"], reversal["id"]);
    let trial = t.assert_balanced().await;
    assert_eq!(trial["USD"].2["bank"], "-15.00");

    // The same request again: the original reversal, nothing more.
    let again = reverse(&t, &op, &wrong_id, "rev-1", "posted twice by the bank feed").await;
    assert_eq!(again["data"]["reverseTransaction"]["id"], reversal["id"]);
    // The same key for something else: a conflict.
    let body = reverse(&t, &op, &wrong_id, "rev-1", "another reason").await;
    assert_eq!(error_code(&body), "IDEMPOTENCY_CONFLICT", "{body}");
    // Another key: the deposit is reversed already.
    let body = reverse(&t, &op, &wrong_id, "rev-2", "again").await;
    assert_eq!(error_code(&body), "ALREADY_REVERSED", "{body}");
    // A reversal is not reversed.
    let rid = reversal["id"].as_str().unwrap();
    let body = reverse(&t, &op, rid, "rev-3", "undo the undo").await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("reversal"),
        "{body}"
    );
    // Bad input changes nothing.
    let body = reverse(&t, &op, &wrong_id, "rev-4", " ").await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    let body = reverse(&t, &op, &w, "rev-5", "a wallet id").await;
    assert_eq!(error_code(&body), "NOT_FOUND", "{body}");

    assert_eq!(t.balance(&w).await, "15.00");
    assert_eq!(t.assert_chain(&w).await, 3);
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reversal_that_would_overdraw_is_refused() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let d = t.deposit(&w, "100.00", "d").await;
    let deposit_id = d["data"]["deposit"]["id"].as_str().unwrap().to_owned();
    t.withdraw(&t.user("alice"), &w, "80.00", "spent").await;

    let body = reverse(&t, &t.operator(), &deposit_id, "rev", "chargeback").await;
    assert_eq!(error_code(&body), "INSUFFICIENT_FUNDS", "{body}");
    assert_eq!(t.balance(&w).await, "20.00");
    assert!(reversed_by(&t, &deposit_id).await.is_null());
    // The key was not used up: once funds are back, it works.
    t.deposit(&w, "80.00", "topped-up").await;
    let body = reverse(&t, &t.operator(), &deposit_id, "rev", "chargeback").await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(t.balance(&w).await, "0.00");
    t.assert_chain(&w).await;
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn withdrawals_and_transfers_are_reversed_with_their_fees_and_both_sides() {
    let mut options = common::Options::default();
    options
        .withdrawal_fees
        .insert("USD".into(), "0.50".parse().unwrap());
    let t = TestApp::with(options).await;
    let alice = t.create_wallet("alice", "USD").await;
    let bob = t.create_wallet("bob", "USD").await;
    t.deposit(&alice, "100.00", "fund").await;
    let before = t.assert_balanced().await;

    // A withdrawal with its fee: reversed, the fee comes back out of fee revenue.
    let w = t.withdraw(&t.user("alice"), &alice, "10.00", "w").await;
    assert_eq!(w["data"]["withdraw"]["balanceAfter"], "89.50", "{w}");
    let wid = w["data"]["withdraw"]["id"].as_str().unwrap().to_owned();
    let r = reverse(&t, &t.operator(), &wid, "rev-w", "bank returned it").await;
    assert_eq!(r["data"]["reverseTransaction"]["fee"], "0.50", "{r}");
    assert_eq!(r["data"]["reverseTransaction"]["balanceAfter"], "100.00");
    assert_eq!(t.assert_balanced().await, before);

    // A transfer, reversed through its receiving side: both wallets get their row.
    let sent = t
        .ok(
            &t.user("alice"),
            "mutation($f: ID!, $t: ID!) { transfer(input: {fromWalletId: $f, toWalletId: $t,
               amount: \"25.00\", idempotencyKey: \"pay\"}) { from { id } } }",
            json!({"f": alice, "t": bob}),
        )
        .await;
    let out_id = sent["transfer"]["from"]["id"].as_str().unwrap().to_owned();
    let in_id = t
        .ok(
            &t.operator(),
            "query($w: ID!) { wallet(id: $w) { transactions(first: 1) { edges { node { id type } } } } }",
            json!({"w": bob}),
        )
        .await["wallet"]["transactions"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Bob has spent part of it: reversing needs what he has.
    t.withdraw(&t.user("bob"), &bob, "20.00", "bob-spends")
        .await;
    let body = reverse(&t, &t.operator(), &in_id, "rev-t", "sent by mistake").await;
    assert_eq!(error_code(&body), "INSUFFICIENT_FUNDS", "{body}");
    // (He paid 20.00 + the 0.50 fee.)
    t.deposit(&bob, "21.00", "bob-refills").await;
    let body = reverse(&t, &t.operator(), &in_id, "rev-t", "sent by mistake").await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(body["data"]["reverseTransaction"]["balanceAfter"], "0.50");
    assert_eq!(t.balance(&alice).await, "100.00");
    // Both sides show their reversal; the sending side cannot be reversed again.
    assert_eq!(reversed_by(&t, &in_id).await["type"], "REVERSAL");
    assert_eq!(reversed_by(&t, &out_id).await["type"], "REVERSAL");
    let body = reverse(&t, &t.operator(), &out_id, "rev-t2", "again").await;
    assert_eq!(error_code(&body), "ALREADY_REVERSED", "{body}");
    for w in [&alice, &bob] {
        t.assert_chain(w).await;
    }
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_reversals_reverse_once() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let d = t.deposit(&w, "10.00", "d").await;
    let id = d["data"]["deposit"]["id"].as_str().unwrap().to_owned();
    t.deposit(&w, "5.00", "other").await;
    let op = t.operator();
    let racers = (0..12).map(|i| {
        let (t, op, id) = (&t, op.clone(), id.clone());
        async move {
            // Half share one key (replays), half bring their own (ALREADY_REVERSED).
            let key = if i % 2 == 0 {
                "shared".to_owned()
            } else {
                format!("own-{i}")
            };
            reverse(t, &op, &id, &key, "duplicate").await
        }
    });
    let answers = futures_util::future::join_all(racers).await;
    let mut ids = std::collections::HashSet::new();
    for body in &answers {
        match body["data"]["reverseTransaction"]["id"].as_str() {
            Some(id) => {
                ids.insert(id.to_owned());
            }
            None => assert_eq!(error_code(body), "ALREADY_REVERSED", "{body}"),
        }
    }
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(t.balance(&w).await, "5.00");
    t.assert_chain(&w).await;
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chain_movements_are_not_reversed() {
    let t = TestApp::new().await;
    let (btc, _) = t.funded_btc("alice", "1.00000000").await;
    let credit = t
        .ok(
            &t.operator(),
            "query($w: ID!) { wallet(id: $w) { transactions(first: 5) { edges { node { id isHold } } } } }",
            json!({"w": btc}),
        )
        .await;
    for edge in credit["wallet"]["transactions"]["edges"]
        .as_array()
        .unwrap()
    {
        let id = edge["node"]["id"].as_str().unwrap();
        let body = reverse(&t, &t.operator(), id, "rev", "no").await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    }
    assert_eq!(t.balance(&btc).await, "1.00000000");
    t.assert_balanced().await;
}

const RECONCILE: &str = "mutation($w: ID!, $b: Decimal!, $from: DateTime!, $to: DateTime!) {
  reconcileWallet(input: {walletId: $w, startTime: $from, endTime: $to, externalBalance: $b}) {
    status systemBalance difference notes mismatchReason } }";

/// Reconciliation counts every row type in the direction it moves the balance: a window
/// holding deposits, withdrawals with fees, transfers both ways and reversals of each
/// matches a bank that agrees with the balance, and mismatches one that does not.
#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_counts_every_row_type() {
    let t = TestApp::with(common::Options {
        withdrawal_fees: [("USD".to_owned(), "0.50".parse().unwrap())].into(),
        ..common::Options::default()
    })
    .await;
    let op = t.operator();
    let window = |w: &str, balance: &str| json!({"w": w, "b": balance, "from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"});
    let reconcile = async |w: &str, balance: &str| {
        t.ok(&op, RECONCILE, window(w, balance)).await["reconcileWallet"].clone()
    };

    // The reported case: a deposit reversed leaves nothing, and the bank says nothing.
    let w = t.create_wallet("alice", "USD").await;
    let dep = t.deposit(&w, "100.00", "d-1").await["data"]["deposit"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reverse(&t, &op, &dep, "r-1", "duplicate").await["errors"].is_null());
    let rec = reconcile(&w, "0").await;
    assert_eq!(rec["status"], "MATCHED", "{rec}");
    assert_eq!(rec["systemBalance"], "0.00", "{rec}");

    // Every type in one window: deposit, withdrawal with a fee, a transfer out and one
    // in, and a reversal of each kind.
    let bob = t.create_wallet("bob", "USD").await;
    t.deposit(&w, "50.00", "d-2").await;
    t.deposit(&bob, "30.00", "b-1").await;
    let out = t.withdraw(&t.user("alice"), &w, "10.00", "w-1").await["data"]["withdraw"]["id"]
        .as_str()
        .unwrap()
        .to_owned(); // 50 - 10.50 = 39.50
    let transfer = "mutation($f: ID!, $t: ID!, $a: Decimal!, $k: String!) {
        transfer(input: {fromWalletId: $f, toWalletId: $t, amount: $a, idempotencyKey: $k}) {
        from { id } } }";
    let sent = t
        .ok(
            &t.user("alice"),
            transfer,
            json!({"f": w, "t": bob, "a": "5.00", "k": "t-1"}),
        )
        .await["transfer"]["from"]["id"]
        .as_str()
        .unwrap()
        .to_owned(); // 34.50
    let received = t
        .ok(
            &t.user("bob"),
            transfer,
            json!({"f": bob, "t": w, "a": "7.25", "k": "t-2"}),
        )
        .await["transfer"]["from"]["id"]
        .as_str()
        .unwrap()
        .to_owned(); // 41.75
    for (id, key) in [(&out, "r-w"), (&sent, "r-t1"), (&received, "r-t2")] {
        let body = reverse(&t, &op, id, key, "correction").await;
        assert!(body["errors"].is_null(), "{body}");
    }
    // 41.75 + 10.50 (withdrawal back) + 5.00 (transfer out back) - 7.25 (transfer in back)
    assert_eq!(t.balance(&w).await, "50.00");
    assert_eq!(t.balance(&bob).await, "30.00");
    for (wallet, balance) in [(&w, "50.00"), (&bob, "30.00")] {
        let rec = reconcile(wallet, balance).await;
        assert_eq!(rec["status"], "MATCHED", "{rec}");
        assert_eq!(rec["systemBalance"], balance, "{rec}");
        // A bank that disagrees by a cent is told so, with the figure.
        let cent_more =
            balance.parse::<rust_decimal::Decimal>().unwrap() + rust_decimal::Decimal::new(1, 2);
        let rec = reconcile(wallet, &cent_more.to_string()).await;
        assert_eq!(rec["status"], "MISMATCH", "{rec}");
        assert_eq!(rec["difference"], "0.01", "{rec}");
    }
    t.assert_chain(&w).await;
    t.assert_chain(&bob).await;
    t.assert_balanced().await;
}

/// The SQL the sums use and the rule in Rust are one rule: evaluated by Postgres for
/// every type (and every reversed type), they agree.
#[tokio::test(flavor = "multi_thread")]
async fn the_sql_direction_of_every_type_is_the_rust_one() {
    use wallet::ledger::TransactionType;
    let t = TestApp::new().await;
    let pg = t.db.client().await;
    let sql = format!(
        "SELECT {} FROM (SELECT $1::text AS type) t, (SELECT $2::text AS type) r",
        TransactionType::sign_sql("t", "r")
    );
    for &kind in TransactionType::ALL {
        for &reversed in TransactionType::ALL {
            let row = pg
                .query_one(&sql, &[&kind.as_str(), &reversed.as_str()])
                .await
                .unwrap();
            let got: Option<i32> = row.get(0);
            let want = kind
                .sign_reversing(Some(reversed))
                .map(|s| if s.is_sign_negative() { -1 } else { 1 });
            assert_eq!(got, want, "{kind} reversing {reversed}");
        }
    }
}
