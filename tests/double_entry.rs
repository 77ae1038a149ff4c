//! Double entry: every movement is one entry whose postings sum to zero per currency; the
//! customers' wallets and the system accounts always balance; a journal written before
//! double entry is backfilled to a balanced ledger.

mod common;

use common::{OUTSIDE_BTC, TRIAL, TestApp, Trial};
use serde_json::{Value, json};

fn account<'a>(trial: &'a Trial, currency: &str, code: &str) -> &'a str {
    trial[currency].2[code].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_movement_is_one_balanced_entry() {
    let t = TestApp::new().await;
    let usd = t.create_wallet("alice", "USD").await;
    t.deposit(&usd, "100.00", "d-1").await;
    let after = t.assert_balanced().await;
    assert_eq!(account(&after, "USD", "bank"), "-100.00");
    assert_eq!(after["USD"].0, "100.00");
    t.withdraw(&t.user("alice"), &usd, "30.25", "w-1").await;
    let after = t.assert_balanced().await;
    assert_eq!(account(&after, "USD", "bank"), "-69.75");
    assert_eq!(account(&after, "USD", "fee_revenue"), "0.00");

    // Crypto: a deposit credited, a withdrawal with its network fee, and one the chain
    // fails, refunded.
    let (btc, _) = t.funded_btc("alice", "1.00000000").await;
    let after = t.assert_balanced().await;
    assert_eq!(account(&after, "BTC", "custody"), "-1.00000000");
    let worker = t.app.chain_worker().unwrap();
    t.crypto_withdraw("alice", &btc, "0.25", "cw-1").await;
    worker.pass().await.unwrap();
    let after = t.assert_balanced().await;
    assert_eq!(after["BTC"].0, "0.74999000");
    // Our address paid amount + network fee; the fee was the user's, passed on.
    assert_eq!(account(&after, "BTC", "custody"), "-0.74999000");
    assert_eq!(account(&after, "BTC", "network_fees"), "-0.00001000");
    assert_eq!(account(&after, "BTC", "fee_revenue"), "0.00001000");
    // Confirmed on chain: completing it posts nothing more.
    t.ok(&t.operator(), common::MINE, json!({"n": "bitcoin", "c": 6}))
        .await;
    worker.pass().await.unwrap();
    assert_eq!(t.assert_balanced().await, after);

    t.fail_transfers_to(OUTSIDE_BTC).await;
    t.crypto_withdraw("alice", &btc, "0.5", "cw-doomed").await;
    worker.pass().await.unwrap();
    let debited = t.assert_balanced().await;
    assert_eq!(account(&debited, "BTC", "custody"), "-0.24998000");
    assert_eq!(account(&debited, "BTC", "network_fees"), "-0.00002000");
    t.ok(&t.operator(), common::MINE, json!({"n": "bitcoin", "c": 1}))
        .await;
    assert_eq!(worker.pass().await.unwrap().withdrawals.failed, 1);
    let refunded = t.assert_balanced().await;
    // The refund reverses exactly what the debit posted.
    assert_eq!(refunded["BTC"], after["BTC"]);
    for w in [&usd, &btc] {
        t.assert_chain(w).await;
    }

    // Postings are history: never rewritten or removed.
    let pg = t.db.client().await;
    for statement in [
        "UPDATE ledger_postings SET amount = 1",
        "DELETE FROM ledger_postings",
        "TRUNCATE ledger_postings",
    ] {
        let refused = pg.batch_execute(statement).await.unwrap_err();
        assert!(
            refused.to_string().contains("append-only")
                || format!("{refused:?}").contains("append-only"),
            "{statement}: {refused:?}"
        );
    }
}

/// Concurrent deposits and withdrawals from 16 clients over 20 wallets, batched by the
/// group committer: the ledger balances after every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_movements_keep_the_ledger_balanced() {
    let t = TestApp::new().await;
    let mut wallets = Vec::new();
    for i in 0..20 {
        let w = t.create_wallet(&format!("user{i}"), "USD").await;
        t.deposit(&w, "50.00", &format!("seed-{i}")).await;
        wallets.push(w);
    }
    for round in 0..3 {
        let requests = (0..16).map(|client| {
            let (t, wallets) = (&t, &wallets);
            async move {
                for n in 0..10 {
                    let i = (client * 7 + n * 3 + round) % 20;
                    let key = format!("r{round}-c{client}-n{n}");
                    if (client + n) % 3 == 0 {
                        t.withdraw(&t.user(&format!("user{i}")), &wallets[i], "7.00", &key)
                            .await;
                    } else {
                        t.deposit(&wallets[i], "1.25", &key).await;
                    }
                }
            }
        });
        futures_util::future::join_all(requests).await;
        let trial = t.assert_balanced().await;
        let customers: rust_decimal::Decimal = trial["USD"].0.parse().unwrap();
        let bank: rust_decimal::Decimal = account(&trial, "USD", "bank").parse().unwrap();
        assert_eq!(customers + bank, rust_decimal::Decimal::ZERO);
    }
    for w in &wallets {
        t.assert_chain(w).await;
    }
    let stats = t.app.state.committer.stats();
    assert!(
        stats.batches.load(std::sync::atomic::Ordering::Relaxed)
            < stats.movements.load(std::sync::atomic::Ordering::Relaxed),
        "movements were batched"
    );
}

/// A database written before double entry — deposits, withdrawals, crypto credits, debits
/// and refunds — migrates to a balanced ledger with the same account balances, and every
/// wallet's chain still verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_from_before_double_entry_is_backfilled() {
    let t = TestApp::new().await;
    let usd = t.create_wallet("alice", "USD").await;
    t.deposit(&usd, "80.00", "d-1").await;
    t.withdraw(&t.user("alice"), &usd, "12.34", "w-1").await;
    let eur = t.create_wallet("bob", "EUR").await;
    t.deposit(&eur, "5.00", "d-2").await;
    let (btc, _) = t.funded_btc("carol", "1.00000000").await;
    let worker = t.app.chain_worker().unwrap();
    t.crypto_withdraw("carol", &btc, "0.1", "cw-1").await;
    worker.pass().await.unwrap();
    t.fail_transfers_to(OUTSIDE_BTC).await;
    t.crypto_withdraw("carol", &btc, "0.2", "cw-2").await;
    worker.pass().await.unwrap();
    t.ok(&t.operator(), common::MINE, json!({"n": "bitcoin", "c": 1}))
        .await;
    worker.pass().await.unwrap();
    let before = t.assert_balanced().await;

    // Back to the schema before double entry (and what came after it), data kept.
    let pg = t.db.client().await;
    let newer = [
        "20261208000003",
        "20261127000005",
        "20261127000004",
        "20261127000003",
    ];
    for (version, name) in newer.iter().zip([
        // Gas funding and token gas change the accounts and the posting trigger.
        "2026-12-08-000003_gas",
        "2026-11-27-000005_reversals_fees_references",
        "2026-11-27-000004_transfers",
        "2026-11-27-000003_double_entry",
    ]) {
        let down = std::fs::read_to_string(format!(
            "{}/migrations/{name}/down.sql",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        pg.batch_execute(&down).await.unwrap();
        pg.execute(
            "DELETE FROM __diesel_schema_migrations WHERE version = $1",
            &[version],
        )
        .await
        .unwrap();
    }
    let gone: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'ledger_postings'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);

    // The new migrations, as a deployment of this version runs them.
    let applied = wallet::db::run_migrations(&t.db.url).await.unwrap();
    let mut expected: Vec<String> = newer.iter().map(|v| v.to_string()).collect();
    expected.reverse();
    assert_eq!(applied, expected);
    let after = t.assert_balanced().await;
    assert_eq!(after, before);
    for w in [&usd, &eur, &btc] {
        t.assert_chain(w).await;
    }
    // And it goes on balancing.
    t.deposit(&usd, "1.00", "d-after").await;
    t.assert_balanced().await;
}

/// An account's postings, page by page: each names its journal row, and they add up to the
/// account's balance.
#[tokio::test(flavor = "multi_thread")]
async fn an_accounts_postings_add_up_to_its_balance() {
    let t = TestApp::new().await;
    let usd = t.create_wallet("alice", "USD").await;
    for (i, amount) in ["10.00", "20.00", "30.00"].iter().enumerate() {
        t.deposit(&usd, amount, &format!("d-{i}")).await;
    }
    t.withdraw(&t.user("alice"), &usd, "5.50", "w-1").await;
    let query = "query($c: String, $code: String, $after: String) {
      ledgerAccounts(currency: $c, code: $code) {
        code currency balance
        postings(first: 3, after: $after) {
          pageInfo { hasNextPage endCursor }
          edges { node { amount transaction { idempotencyKey type } } } } } }";
    let first = t.ok(&t.operator(), query, json!({"c": "USD"})).await["ledgerAccounts"].clone();
    let codes: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["bank", "fee_revenue"]);
    let bank = &first[0];
    assert_eq!(bank["balance"], "-54.50");
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut page = bank["postings"].clone();
    loop {
        for e in page["edges"].as_array().unwrap() {
            seen.push((
                e["node"]["transaction"]["idempotencyKey"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                e["node"]["amount"].as_str().unwrap().to_owned(),
            ));
        }
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        let after = page["pageInfo"]["endCursor"].clone();
        page = t
            .ok(
                &t.operator(),
                query,
                json!({"c": "USD", "code": "bank", "after": after}),
            )
            .await["ledgerAccounts"][0]["postings"]
            .clone();
    }
    let expected: Vec<(String, String)> = [
        ("d-0", "-10.00"),
        ("d-1", "-20.00"),
        ("d-2", "-30.00"),
        ("w-1", "5.50"),
    ]
    .iter()
    .map(|(k, a)| (k.to_string(), a.to_string()))
    .collect();
    assert_eq!(seen, expected);

    // Operators only.
    for q in [TRIAL, "{ ledgerAccounts { code } }"] {
        let body = t.gql(Some(&t.user("alice")), q, json!({})).await;
        assert_eq!(common::error_code(&body), "FORBIDDEN", "{body}");
    }
}

const RECONCILE_CHAIN: &str = "mutation($w: ID!) { reconcileWallet(input: {walletId: $w,
    startTime: \"2020-01-01T00:00:00Z\", endTime: \"2099-01-01T00:00:00Z\"}) {
    status systemBalance externalBalance mismatchReason notes } }";

#[tokio::test(flavor = "multi_thread")]
async fn configured_withdrawal_fees_land_in_fee_revenue() {
    let mut options = common::Options::default();
    for (code, fee) in [("USD", "0.50"), ("BTC", "0.0001")] {
        options
            .withdrawal_fees
            .insert(code.into(), fee.parse().unwrap());
    }
    let t = TestApp::with(options).await;
    let fees = t
        .ok(
            &t.operator(),
            "{ currencies { code withdrawalFee } }",
            json!({}),
        )
        .await;
    let fee_of = |code: &str| {
        fees["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["code"] == code)
            .unwrap()["withdrawalFee"]
            .clone()
    };
    assert_eq!(fee_of("USD"), "0.50");
    assert_eq!(fee_of("BTC"), "0.00010000");
    assert!(fee_of("EUR").is_null());

    // Fiat: the fee is paid on top of the amount, and counts against the funds.
    let usd = t.create_wallet("alice", "USD").await;
    t.deposit(&usd, "10.00", "fund").await;
    let body = t.withdraw(&t.user("alice"), &usd, "10.00", "all").await;
    assert_eq!(common::error_code(&body), "INSUFFICIENT_FUNDS", "{body}");
    let body = t.withdraw(&t.user("alice"), &usd, "9.50", "most").await;
    assert_eq!(body["data"]["withdraw"]["balanceAfter"], "0.00", "{body}");
    let trial = t.assert_balanced().await;
    assert_eq!(account(&trial, "USD", "bank"), "-0.50");
    assert_eq!(account(&trial, "USD", "fee_revenue"), "0.50");

    // Crypto: the user pays amount + the flat fee; our address pays amount + the network's
    // fee, which is the service's expense.
    let (btc, _) = t.funded_btc("alice", "1.00000000").await;
    let worker = t.app.chain_worker().unwrap();
    let hold = t.crypto_withdraw("alice", &btc, "0.25", "cw-1").await;
    assert_eq!(hold["cryptoWithdraw"]["fee"], "0.00010000", "{hold}");
    worker.pass().await.unwrap();
    let sent = t.assert_balanced().await;
    assert_eq!(sent["BTC"].0, "0.74990000");
    assert_eq!(account(&sent, "BTC", "custody"), "-0.74999000");
    assert_eq!(account(&sent, "BTC", "network_fees"), "-0.00001000");
    assert_eq!(account(&sent, "BTC", "fee_revenue"), "0.00010000");
    let row = t
        .ok(
            &t.operator(),
            "query($w: ID!) { wallet(id: $w) { transactions(last: 1) {
               edges { node { type fee networkFee isHold } } } } }",
            json!({"w": btc}),
        )
        .await["wallet"]["transactions"]["edges"][0]["node"]
        .clone();
    assert_eq!(
        row,
        json!({"type": "WITHDRAW", "fee": "0.00010000", "networkFee": "0.00001000", "isHold": false})
    );
    t.ok(&t.operator(), common::MINE, json!({"n": "bitcoin", "c": 6}))
        .await;
    worker.pass().await.unwrap();
    // The address keeps the fee charged beyond the network's: reconciliation knows why.
    let rec = t
        .ok(&t.operator(), RECONCILE_CHAIN, json!({"w": btc}))
        .await["reconcileWallet"]
        .clone();
    assert_eq!(rec["status"], "MATCHED", "{rec}");
    assert_eq!(rec["externalBalance"], "0.74999000", "{rec}");
    assert_eq!(rec["systemBalance"], "0.74990000", "{rec}");

    // A withdrawal the chain fails: the refund reverses exactly what was posted.
    t.fail_transfers_to(common::OUTSIDE_BTC).await;
    t.crypto_withdraw("alice", &btc, "0.5", "cw-doomed").await;
    worker.pass().await.unwrap();
    let debited = t.assert_balanced().await;
    assert_eq!(debited["BTC"].0, "0.24980000");
    assert_eq!(account(&debited, "BTC", "fee_revenue"), "0.00020000");
    t.ok(&t.operator(), common::MINE, json!({"n": "bitcoin", "c": 1}))
        .await;
    assert_eq!(worker.pass().await.unwrap().withdrawals.failed, 1);
    let refunded = t.assert_balanced().await;
    assert_eq!(refunded["BTC"], sent["BTC"]);
    t.assert_chain(&btc).await;
    let rec = t
        .ok(&t.operator(), RECONCILE_CHAIN, json!({"w": btc}))
        .await["reconcileWallet"]
        .clone();
    assert_eq!(rec["status"], "MATCHED", "{rec}");
}

const ANNOTATED_DEPOSIT: &str = "mutation($w: ID!, $k: String!, $r: String, $m: Metadata) {
  deposit(input: {walletId: $w, amount: \"5.00\", idempotencyKey: $k, reference: $r, metadata: $m}) {
    id reference metadata } }";

#[tokio::test(flavor = "multi_thread")]
async fn references_and_metadata_are_kept_and_searchable() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let other = t.create_wallet("bob", "USD").await;
    let op = t.operator();
    let meta = json!({"invoice": "INV-1042", "channel": "sepa"});
    let first = t
        .ok(
            &op,
            ANNOTATED_DEPOSIT,
            json!({"w": w, "k": "d-1", "r": "STMT-7", "m": meta}),
        )
        .await["deposit"]
        .clone();
    assert_eq!(first["reference"], "STMT-7");
    assert_eq!(first["metadata"], meta);
    // Not unique: another deposit from the same statement.
    t.ok(
        &op,
        ANNOTATED_DEPOSIT,
        json!({"w": w, "k": "d-2", "r": "STMT-7"}),
    )
    .await;
    t.ok(
        &op,
        ANNOTATED_DEPOSIT,
        json!({"w": other, "k": "d-1", "r": "STMT-7"}),
    )
    .await;
    t.ok(
        &op,
        ANNOTATED_DEPOSIT,
        json!({"w": w, "k": "d-3", "r": "STMT-8"}),
    )
    .await;
    let found = t
        .ok(
            &op,
            "query($w: ID!) { wallet(id: $w) { transactions(first: 10, filter: {reference: \"STMT-7\"}) {
               edges { node { idempotencyKey reference } } } } }",
            json!({"w": w}),
        )
        .await;
    let keys: Vec<&str> = found["wallet"]["transactions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["idempotencyKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["d-1", "d-2"]);
    // Across every wallet an operator sees.
    let all = t
        .ok(
            &op,
            "{ transactions(first: 10, filter: {reference: \"STMT-7\"}) { edges { node { idempotencyKey } } } }",
            json!({}),
        )
        .await;
    assert_eq!(all["transactions"]["edges"].as_array().unwrap().len(), 3);

    // The same key with other metadata is another request.
    let body = t
        .gql(
            Some(&op),
            ANNOTATED_DEPOSIT,
            json!({"w": w, "k": "d-1", "r": "STMT-7", "m": {"invoice": "INV-9"}}),
        )
        .await;
    assert_eq!(common::error_code(&body), "IDEMPOTENCY_CONFLICT", "{body}");
    let replay = t
        .ok(
            &op,
            ANNOTATED_DEPOSIT,
            json!({"w": w, "k": "d-1", "r": "STMT-7", "m": meta}),
        )
        .await;
    assert_eq!(replay["deposit"]["id"], first["id"]);

    // Metadata that is not a small object of strings: refused, nothing changes.
    for bad in [
        json!(["a"]),
        json!({"n": 1}),
        json!({"deep": {"a": "b"}}),
        json!({"k": "a\u{0}b"}),
        serde_json::Value::Object((0..40).map(|i| (format!("k{i}"), json!("v"))).collect()),
        json!({"k": "v".repeat(5000)}),
    ] {
        let body = t
            .gql(
                Some(&op),
                ANNOTATED_DEPOSIT,
                json!({"w": w, "k": "bad", "m": bad}),
            )
            .await;
        assert_eq!(common::error_code(&body), "BAD_USER_INPUT", "{bad}: {body}");
    }
    let body = t
        .gql(
            Some(&op),
            ANNOTATED_DEPOSIT,
            json!({"w": w, "k": "bad", "r": "r".repeat(200)}),
        )
        .await;
    assert_eq!(common::error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(t.by_key(&w, "bad").await.is_null());
    assert_eq!(t.balance(&w).await, "15.00");

    // A transfer carries them on both sides.
    let sent = t
        .ok(
            &t.user("alice"),
            "mutation($f: ID!, $t: ID!) { transfer(input: {fromWalletId: $f, toWalletId: $t,
               amount: \"1.00\", idempotencyKey: \"p\", reference: \"ORDER-5\",
               metadata: {order: \"5\"}}) { reference metadata from { reference metadata } } }",
            json!({"f": w, "t": other}),
        )
        .await["transfer"]
        .clone();
    assert_eq!(
        sent,
        json!({"reference": "ORDER-5", "metadata": {"order": "5"},
               "from": {"reference": "ORDER-5", "metadata": {"order": "5"}}})
    );
    let received = t
        .ok(
            &t.user("bob"),
            "query($w: ID!) { wallet(id: $w) { transactions(first: 5, filter: {reference: \"ORDER-5\"}) {
               edges { node { type metadata } } } } }",
            json!({"w": other}),
        )
        .await;
    assert_eq!(
        received["wallet"]["transactions"]["edges"][0]["node"],
        json!({"type": "TRANSFER_IN", "metadata": {"order": "5"}})
    );
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crypto_withdrawal_carries_its_reference_to_its_debit() {
    let t = TestApp::new().await;
    let (btc, _) = t.funded_btc("alice", "1.00000000").await;
    let request = |meta: Value| json!({"w": btc, "to": OUTSIDE_BTC, "k": "payout-7", "r": "PAYOUT-7", "m": meta});
    const WITHDRAW: &str =
        "mutation($w: ID!, $to: String!, $k: String!, $r: String, $m: Metadata) {
      cryptoWithdraw(input: {walletId: $w, toAddress: $to, amount: \"0.1\", idempotencyKey: $k,
                             reference: $r, metadata: $m}) { id reference metadata } }";
    let alice = t.user("alice");
    let hold =
        t.ok(&alice, WITHDRAW, request(json!({"batch": "7"}))).await["cryptoWithdraw"].clone();
    assert_eq!(hold["reference"], "PAYOUT-7");
    let body = t
        .gql(Some(&alice), WITHDRAW, request(json!({"batch": "8"})))
        .await;
    assert_eq!(common::error_code(&body), "IDEMPOTENCY_CONFLICT", "{body}");
    t.app.chain_worker().unwrap().pass().await.unwrap();
    let debit = t
        .ok(
            &t.operator(),
            "query($id: ID!) { transaction(id: $id) { settlements { type reference metadata } } }",
            json!({"id": hold["id"]}),
        )
        .await["transaction"]["settlements"][0]
        .clone();
    assert_eq!(
        debit,
        json!({"type": "WITHDRAW", "reference": "PAYOUT-7", "metadata": {"batch": "7"}})
    );
}

/// Sums are exact: with 18-decimal balances near the ceiling the trial balance adds them in
/// the database, and a total beyond what a `Decimal` holds (28 significant digits) is an
/// error, never a rounded figure that could hide or invent an imbalance.
#[tokio::test(flavor = "multi_thread")]
async fn sums_near_the_ceiling_are_exact_or_refused() {
    let t = TestApp::new().await;
    let near_max = "999999999.999999999999999999"; // ETH's ceiling is 10^9
    let fund = async |user: &str| {
        let w = t
            .ok(&t.user(user), common::CREATE_CRYPTO, json!({"c": "ETH"}))
            .await["createWallet"]
            .clone();
        t.ok(
            &t.operator(),
            common::INCOMING,
            json!({"n": "ethereum", "to": w["address"], "a": near_max}),
        )
        .await;
        w["id"].as_str().unwrap().to_owned()
    };
    let credit_all = async || {
        t.ok(
            &t.operator(),
            common::MINE,
            json!({"n": "ethereum", "c": 12}),
        )
        .await;
        t.app.chain_worker().unwrap().pass().await.unwrap();
    };
    // Three wallets: 2999999999.999999999999999997 has 28 digits and is shown exactly.
    let first = fund("u0").await;
    for i in 1..3 {
        fund(&format!("u{i}")).await;
    }
    credit_all().await;
    assert_eq!(t.balance(&first).await, near_max);
    let trial = t.assert_balanced().await;
    assert_eq!(trial["ETH"].0, "2999999999.999999999999999997");
    assert_eq!(trial["ETH"].2["custody"], "-2999999999.999999999999999997");

    // Ninety-seven more: the customers' total needs 29 digits. Refused, and said why.
    for i in 3..100 {
        fund(&format!("u{i}")).await;
    }
    credit_all().await;
    let body = t.gql(Some(&t.operator()), common::TRIAL, json!({})).await;
    assert_eq!(common::error_code(&body), "NOT_REPRESENTABLE", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("99999999999.999999999999999900"),
        "{body}"
    );
    // The database's own exact sums balance.
    let pg = t.db.client().await;
    let balanced: bool = pg
        .query_one(
            "SELECT (SELECT sum(balance) FROM wallets WHERE currency = 'ETH')
                  + (SELECT sum(p.amount) FROM ledger_postings p
                       JOIN ledger_accounts a ON a.id = p.account_id
                      WHERE a.currency = 'ETH') = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(balanced);
}

/// Gas funding on a simulated network: the operator's transfer to a wallet's address is
/// recognised while still pending, is never held as a deposit, and posts custody and
/// gas_funding once confirmed; the customer's balance does not move and reconciliation
/// explains the address's extra coin.
#[tokio::test(flavor = "multi_thread")]
async fn gas_funding_posts_to_custody_and_gas_funding_not_to_the_customer() {
    let t = TestApp::new().await;
    let (btc, address) = t.funded_btc("alice", "1.00000000").await;
    let worker = t.app.chain_worker().unwrap();
    let outside = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4";
    let funding = t
        .ok(
            &t.operator(),
            "mutation($w: ID!, $from: String!) { fundGas(input: {walletId: $w,
               fromAddress: $from, amount: \"0.001\", idempotencyKey: \"gas\"}) { id status } }",
            json!({"w": btc, "from": outside}),
        )
        .await["fundGas"]
        .clone();
    assert_eq!(funding["status"], "EXPECTED");
    let sent = t
        .ok(
            &t.operator(),
            common::INCOMING,
            json!({"n": "bitcoin", "to": address, "a": "0.001"}),
        )
        .await;
    let hash = sent["simulateIncomingTransfer"]["txHash"]
        .as_str()
        .unwrap()
        .to_owned();
    worker.pass().await.unwrap();
    assert_eq!(
        funding_status(&t, &funding).await,
        json!({"status": "CONFIRMING", "chainTxHash": hash})
    );
    t.ok(&t.operator(), common::MINE, json!({"n": "bitcoin", "c": 6}))
        .await;
    worker.pass().await.unwrap();
    assert_eq!(funding_status(&t, &funding).await["status"], "COMPLETED");
    let holds: i64 =
        t.db.client()
            .await
            .query_one(
                "SELECT count(*) FROM transactions WHERE chain_tx_hash = $1",
                &[&hash],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(holds, 0, "never a deposit");
    assert_eq!(t.balance(&btc).await, "1.00000000");
    let trial = t.assert_balanced().await;
    assert_eq!(account(&trial, "BTC", "custody"), "-1.00100000");
    assert_eq!(account(&trial, "BTC", "gas_funding"), "0.00100000");
    assert_eq!(trial["BTC"].0, "1.00000000");
    let reconciled = t
        .ok(&t.operator(), RECONCILE_CHAIN, json!({"w": btc}))
        .await["reconcileWallet"]
        .clone();
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    // The expectation is used up: the same transfer again is the customer's deposit.
    t.ok(
        &t.operator(),
        common::INCOMING,
        json!({"n": "bitcoin", "to": address, "a": "0.001"}),
    )
    .await;
    t.ok(&t.operator(), common::MINE, json!({"n": "bitcoin", "c": 6}))
        .await;
    worker.pass().await.unwrap();
    assert_eq!(t.balance(&btc).await, "1.00100000");
    t.assert_balanced().await;
}

async fn funding_status(t: &TestApp, funding: &Value) -> Value {
    t.ok(
        &t.operator(),
        "query($id: ID!) { node(id: $id) { ... on GasFunding { status chainTxHash } } }",
        json!({"id": funding["id"]}),
    )
    .await["node"]
        .clone()
}
