//! Transfers between wallets: both sides in one transaction with their own balances,
//! idempotent under races, deadlock-free in both directions, and always balanced.

mod common;

use common::{TestApp, error_code};
use serde_json::{Value, json};

const TRANSFER: &str = "mutation($from: ID!, $to: ID!, $a: Decimal!, $k: String!, $d: String) {
  transfer(input: {fromWalletId: $from, toWalletId: $to, amount: $a, idempotencyKey: $k,
                   description: $d}) {
    id amount currency createdAt
    from { id type amount balanceBefore balanceAfter idempotencyKey description }
    to { id type amount balanceBefore balanceAfter idempotencyKey description } } }";

async fn transfer(
    t: &TestApp,
    token: &str,
    from: &str,
    to: &str,
    amount: &str,
    key: &str,
) -> Value {
    t.gql(
        Some(token),
        TRANSFER,
        json!({"from": from, "to": to, "a": amount, "k": key}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_moves_money_between_two_wallets_once() {
    let t = TestApp::new().await;
    let alice = t.create_wallet("alice", "USD").await;
    let bob = t.create_wallet("bob", "USD").await;
    t.deposit(&alice, "100.00", "fund").await;
    // Bob's own key "pay-1" must not stand in the way of alice's transfer keyed "pay-1".
    t.deposit(&bob, "1.00", "pay-1").await;

    let body = t
        .gql(
            Some(&t.user("alice")),
            TRANSFER,
            json!({"from": alice, "to": bob, "a": "30.25", "k": "pay-1", "d": "rent"}),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let sent = body["data"]["transfer"].clone();
    assert_eq!(sent["amount"], "30.25");
    assert_eq!(sent["currency"], "USD");
    assert_eq!(sent["from"]["type"], "TRANSFER_OUT");
    assert_eq!(sent["from"]["balanceBefore"], "100.00");
    assert_eq!(sent["from"]["balanceAfter"], "69.75");
    assert_eq!(sent["from"]["description"], "rent");
    // Alice may not see bob's balances.
    assert!(sent["to"].is_null(), "{sent}");
    assert_eq!(t.balance(&alice).await, "69.75");
    assert_eq!(t.balance(&bob).await, "31.25");

    // The operator sees both sides.
    let op = t
        .gql(
            Some(&t.operator()),
            TRANSFER,
            json!({"from": alice, "to": bob, "a": "30.25", "k": "pay-1", "d": "rent"}),
        )
        .await["data"]["transfer"]
        .clone();
    assert_eq!(op["id"], sent["id"], "a replay, not a second transfer");
    assert_eq!(op["to"]["type"], "TRANSFER_IN");
    assert_eq!(op["to"]["balanceBefore"], "1.00");
    assert_eq!(op["to"]["balanceAfter"], "31.25");
    assert_eq!(t.balance(&alice).await, "69.75");

    // Refusals change nothing.
    let eur = t.create_wallet("bob", "EUR").await;
    let alice_token = t.user("alice");
    let cases = [
        (
            json!({"from": alice, "to": bob, "a": "1.00", "k": "pay-1"}),
            "IDEMPOTENCY_CONFLICT",
        ),
        (
            json!({"from": alice, "to": eur, "a": "1.00", "k": "x-1"}),
            "CURRENCY_MISMATCH",
        ),
        (
            json!({"from": alice, "to": bob, "a": "69.76", "k": "x-2"}),
            "INSUFFICIENT_FUNDS",
        ),
        (
            json!({"from": alice, "to": bob, "a": "0.001", "k": "x-3"}),
            "INVALID_AMOUNT",
        ),
        (
            json!({"from": alice, "to": alice, "a": "1.00", "k": "x-4"}),
            "BAD_USER_INPUT",
        ),
        // Alice cannot send from bob's wallet; an unknown target does not exist.
        (
            json!({"from": bob, "to": alice, "a": "1.00", "k": "x-5"}),
            "NOT_FOUND",
        ),
        (
            json!({"from": alice, "to": "V2FsbGV0Ojk5OTk5", "a": "1.00", "k": "x-6"}),
            "NOT_FOUND",
        ),
    ];
    for (vars, code) in cases {
        let body = t.gql(Some(&alice_token), TRANSFER, vars.clone()).await;
        assert_eq!(error_code(&body), code, "{vars}: {body}");
    }
    assert_eq!(t.balance(&alice).await, "69.75");
    assert_eq!(t.balance(&bob).await, "31.25");
    let trial = t.assert_balanced().await;
    assert_eq!(
        trial["USD"].2["bank"], "-101.00",
        "a transfer posts nothing to the bank"
    );
    t.assert_chain(&alice).await;
    t.assert_chain(&bob).await;
}

/// A wallet's reconciliation counts transfers in and out; both owners' subscriptions see
/// their side.
#[tokio::test(flavor = "multi_thread")]
async fn transfers_reconcile_and_reach_both_owners() {
    let t = TestApp::new().await;
    let alice = t.create_wallet("alice", "USD").await;
    let bob = t.create_wallet("bob", "USD").await;
    t.deposit(&alice, "50.00", "fund").await;
    let url = t.serve().await;
    let sub =
        "subscription($w: ID!) { transactionUpdated(walletId: $w) { type amount balanceAfter } }";
    let mut alices = common::ws::WsClient::authenticated(&url, &t.user("alice")).await;
    alices.subscribe("a", sub, json!({"w": alice})).await;
    let mut bobs = common::ws::WsClient::authenticated(&url, &t.user("bob")).await;
    bobs.subscribe("b", sub, json!({"w": bob})).await;
    common::wait_until(
        "both subscribed",
        std::time::Duration::from_secs(5),
        || async { t.app.state.events.subscriber_count() == 2 },
    )
    .await;
    let body = transfer(&t, &t.user("alice"), &alice, &bob, "12.00", "gift").await;
    assert!(body["errors"].is_null(), "{body}");
    // The funding deposit's event may reach the listener after alice subscribed.
    let mut seen = alices.data("a").await["transactionUpdated"].clone();
    if seen["type"] == "DEPOSIT" {
        seen = alices.data("a").await["transactionUpdated"].clone();
    }
    assert_eq!(
        seen,
        json!({"type": "TRANSFER_OUT", "amount": "12.00", "balanceAfter": "38.00"})
    );
    let seen = bobs.data("b").await["transactionUpdated"].clone();
    assert_eq!(
        seen,
        json!({"type": "TRANSFER_IN", "amount": "12.00", "balanceAfter": "12.00"})
    );

    let reconcile = "mutation($w: ID!, $b: Decimal!) { reconcileWallet(input: {walletId: $w,
        startTime: \"2000-01-01T00:00:00Z\", endTime: \"2100-01-01T00:00:00Z\",
        externalBalance: $b}) { status systemBalance } }";
    for (w, balance) in [(&alice, "38.00"), (&bob, "12.00")] {
        let rec = t
            .ok(&t.operator(), reconcile, json!({"w": w, "b": balance}))
            .await["reconcileWallet"]
            .clone();
        assert_eq!(rec["status"], "MATCHED", "{rec}");
    }
}

/// The sender's key is the sender's: the recipient reads the receiving row (listing,
/// lookup by id, live event) and never sees it.
#[tokio::test(flavor = "multi_thread")]
async fn the_recipient_never_sees_the_senders_key() {
    let t = TestApp::new().await;
    let alice = t.create_wallet("alice", "USD").await;
    let bob = t.create_wallet("bob", "USD").await;
    t.deposit(&alice, "10.00", "fund").await;
    let url = t.serve().await;
    let bob_token = t.user("bob");
    let mut ws = common::ws::WsClient::authenticated(&url, &bob_token).await;
    ws.subscribe(
        "tx",
        "subscription($w: ID!) { transactionUpdated(walletId: $w) { id type idempotencyKey } }",
        json!({"w": bob}),
    )
    .await;
    common::wait_until(
        "the subscription is registered",
        std::time::Duration::from_secs(5),
        || async { t.app.state.events.subscriber_count() >= 1 },
    )
    .await;
    let secret_key = "alice-private-invoice-7731";
    let sent = transfer(&t, &t.user("alice"), &alice, &bob, "2.50", secret_key).await;
    assert_eq!(
        sent["data"]["transfer"]["from"]["idempotencyKey"], secret_key,
        "{sent}"
    );

    let event = ws.data("tx").await["transactionUpdated"].clone();
    assert_eq!(event["type"], "TRANSFER_IN");
    let listed = t
        .ok(
            &bob_token,
            "query($w: ID!) { wallet(id: $w) { transactions(first: 5) { edges { node {
               id type idempotencyKey } } } } }",
            json!({"w": bob}),
        )
        .await["wallet"]["transactions"]["edges"][0]["node"]
        .clone();
    let by_id = t
        .ok(
            &bob_token,
            "query($id: ID!) { node(id: $id) { ... on Transaction { id idempotencyKey txHash } } }",
            json!({"id": listed["id"]}),
        )
        .await["node"]
        .clone();
    for row in [&event, &listed, &by_id] {
        assert!(!row.to_string().contains(secret_key), "{row}");
        // In its place, the row's own id.
        assert_eq!(row["idempotencyKey"], row["id"], "{row}");
    }
    // Also under the key's deprecated name.
    assert_eq!(by_id["txHash"], by_id["id"], "{by_id}");
    // Nor does the key find the receiving row on bob's wallet.
    let found = t
        .ok(
            &t.operator(),
            common::BY_KEY,
            json!({"w": bob, "k": secret_key}),
        )
        .await;
    assert!(found["transactionByKey"].is_null(), "{found}");
}

/// The database checks a transfer's two sides itself, whoever writes them: each needs its
/// mirror (same amount and fee, another wallet of the same currency) in the same
/// statement; alone, either side would create or destroy money.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_refuses_a_transfer_side_without_its_mirror() {
    let t = TestApp::new().await;
    let alice = common::db_id(&t.create_wallet("alice", "USD").await);
    let bob = common::db_id(&t.create_wallet("bob", "USD").await);
    let euro = common::db_id(&t.create_wallet("bob", "EUR").await);
    let pg = t.db.client().await;
    let next_id = async || -> i64 {
        pg.query_one(
            "SELECT nextval(pg_get_serial_sequence('transactions', 'id'))",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    // One side as the service writes it: (id, wallet, type, amount, balance before/after,
    // counterpart).
    let row = |id: i64, wallet: i64, kind: &str, amount: &str, counterpart: Option<i64>| {
        let (before, after) = match kind {
            "TRANSFER_OUT" => ("100".to_owned(), format!("100 - {amount}")),
            _ => ("0".to_owned(), amount.to_owned()),
        };
        format!(
            "({id}, {wallet}, '{kind}', {amount}, 0, {before}, {after}, 'COMPLETED', 'pair-{id}',
              now(), now(), FALSE, {})",
            counterpart.map_or("NULL".to_owned(), |c| c.to_string())
        )
    };
    let insert = |rows: &[String]| {
        format!(
            "INSERT INTO transactions (id, wallet_id, type, amount, fee, balance_before,
                 balance_after, status, tx_hash, created_at, updated_at, hold, counterpart_id)
             VALUES {}",
            rows.join(", ")
        )
    };
    let (a, b) = (next_id().await, next_id().await);
    let refused_cases = [
        (
            "a sending side alone",
            insert(&[row(a, alice, "TRANSFER_OUT", "1", None)]),
        ),
        (
            "sides of other amounts",
            insert(&[
                row(a, alice, "TRANSFER_OUT", "1", None),
                row(b, bob, "TRANSFER_IN", "2", Some(a)),
            ]),
        ),
        (
            "both sides on one wallet",
            insert(&[
                row(a, alice, "TRANSFER_OUT", "1", None),
                row(b, alice, "TRANSFER_IN", "1", Some(a)),
            ]),
        ),
        (
            "sides in two currencies",
            insert(&[
                row(a, alice, "TRANSFER_OUT", "1", None),
                row(b, euro, "TRANSFER_IN", "1", Some(a)),
            ]),
        ),
    ];
    for (what, sql) in refused_cases {
        let err = pg.batch_execute(&sql).await.expect_err(what);
        assert!(
            err.to_string().contains("mirror") || format!("{err:?}").contains("mirror"),
            "{what}: {err:?}"
        );
    }
    // The same pair, mirrored, in one statement: accepted.
    pg.batch_execute(&insert(&[
        row(a, alice, "TRANSFER_OUT", "1", None),
        row(b, bob, "TRANSFER_IN", "1", Some(a)),
    ]))
    .await
    .expect("a mirrored pair in one statement");
    // A receiving side alone, naming a row written earlier (one receiving side per
    // sending side is a unique index already; here it names a deposit).
    let deposit = t
        .deposit(&t.create_wallet("carol", "USD").await, "5.00", "fund")
        .await["data"]["deposit"]["id"]
        .as_str()
        .map(common::db_id)
        .unwrap();
    let c = next_id().await;
    let err = pg
        .batch_execute(&insert(&[row(c, bob, "TRANSFER_IN", "1", Some(deposit))]))
        .await
        .expect_err("a receiving side alone");
    assert!(format!("{err:?}").contains("mirror"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn both_sides_of_a_transfer_show_their_wallets_currency() {
    let t = TestApp::new().await;
    let alice = t.create_wallet("alice", "EUR").await;
    let bob = t.create_wallet("bob", "EUR").await;
    t.deposit(&alice, "10.00", "fund").await;
    let sides = "from { type currency } to { type currency }";
    let sent = t
        .ok(
            &t.operator(),
            &format!(
                "mutation($from: ID!, $to: ID!) {{ transfer(input: {{fromWalletId: $from,
                   toWalletId: $to, amount: \"2.00\", idempotencyKey: \"t-1\"}}) {{ {sides} }} }}"
            ),
            json!({"from": alice, "to": bob}),
        )
        .await;
    assert_eq!(
        sent["transfer"],
        json!({"from": {"type": "TRANSFER_OUT", "currency": "EUR"},
               "to": {"type": "TRANSFER_IN", "currency": "EUR"}})
    );
    // Each side as its owner lists it.
    for (user, wallet, kind) in [
        ("alice", &alice, "TRANSFER_OUT"),
        ("bob", &bob, "TRANSFER_IN"),
    ] {
        let listed = t
            .ok(
                &t.user(user),
                "query($w: ID!) { wallet(id: $w) { transactions(last: 1) { edges { node {
                   type currency } } } } }",
                json!({"w": wallet}),
            )
            .await;
        assert_eq!(
            listed["wallet"]["transactions"]["edges"][0]["node"],
            json!({"type": kind, "currency": "EUR"}),
            "{user}"
        );
    }
}
