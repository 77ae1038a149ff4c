//! Withdrawals through a real Ethereum node (anvil): EIP-1559 transactions signed with the
//! wallet's derived key, nonces from the database, the fee the chain charged debited once,
//! the rest of the lock released — also when the process dies before broadcasting, the
//! node forgets the transaction, the fee was too low to be mined, or the transaction
//! reverts.

mod common;

use alloy::sol_types::SolCall;
use common::anvil::{Anvil, DEV_ACCOUNT, DEV_ACCOUNT_2, ETHER, quantity};
use common::ethereum::{crypto_wallet, eth_wallet, on, pass, reconcile, with_test_token};
use common::{CRYPTO_WITHDRAW, TestApp, db_id};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use wallet::chain::node_withdrawal;

alloy::sol! {
    function mint(address to, uint256 value);
}

const GWEI: u128 = 1_000_000_000;

/// A funded ether wallet of alice's: `wei` deposited and credited.
async fn funded(t: &TestApp, anvil: &Anvil, wei: u128) -> (String, String) {
    let (wallet, address) = eth_wallet(t, "alice").await;
    anvil.send_from(DEV_ACCOUNT, Some(&address), &[], wei).await;
    anvil.mine(6).await;
    pass(&t.app).await;
    assert_eq!(
        t.balance(&wallet).await.parse::<Decimal>().unwrap(),
        Decimal::from_i128_with_scale(i128::try_from(wei).unwrap(), 18)
    );
    (wallet, address)
}

/// Alice withdraws `amount` from `wallet` to `to`: the hold's database id.
async fn withdraw(t: &TestApp, wallet: &str, to: &str, amount: &str, key: &str) -> i64 {
    let body = t
        .ok(
            &t.user("alice"),
            CRYPTO_WITHDRAW,
            json!({"w": wallet, "to": to, "a": amount, "k": key}),
        )
        .await;
    assert_eq!(body["cryptoWithdraw"]["status"], "PENDING", "{body}");
    db_id(body["cryptoWithdraw"]["id"].as_str().unwrap())
}

/// A withdrawal's debit: what it charged and for which transaction.
#[derive(Clone, Debug)]
struct Debit {
    fee: Decimal,
    network_fee: Option<Decimal>,
    hash: String,
    gas_used: Option<i64>,
}

/// A withdrawal as the journal has it.
#[derive(Debug)]
struct Withdrawal {
    status: String,
    reason: Option<String>,
    hash: Option<String>,
    confirmations: Option<i32>,
    debits: Vec<Debit>,
    refunds: Vec<(Decimal, Decimal)>,
    /// Hashes of its signed attempts, oldest first.
    attempts: Vec<String>,
}

async fn withdrawal(t: &TestApp, id: i64) -> Withdrawal {
    let c = t.db.client().await;
    let hold = c
        .query_one(
            "SELECT status, status_reason, chain_tx_hash, confirmations FROM transactions
              WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let debits = c
        .query(
            "SELECT fee::text, network_fee::text, chain_tx_hash, gas_used
               FROM transactions WHERE hold_id = $1 AND type = 'WITHDRAW'",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Debit {
            fee: dec(r.get(0)),
            network_fee: r.get::<_, Option<&str>>(1).map(dec),
            hash: r.get(2),
            gas_used: r.get(3),
        })
        .collect();
    let refunds = c
        .query(
            "SELECT amount::text, fee::text FROM transactions
              WHERE hold_id = $1 AND type = 'REFUND'",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (dec(r.get(0)), dec(r.get(1))))
        .collect();
    let attempts = c
        .query(
            "SELECT hash FROM withdrawal_attempts WHERE transaction_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    Withdrawal {
        status: hold.get(0),
        reason: hold.get(1),
        hash: hold.get(2),
        confirmations: hold.get(3),
        debits,
        refunds,
        attempts,
    }
}

/// (balance, locked) of a wallet, exactly as stored.
async fn balances(t: &TestApp, wallet: &str) -> (Decimal, Decimal) {
    let row =
        t.db.client()
            .await
            .query_one(
                "SELECT balance::text, locked_balance::text FROM wallets WHERE id = $1",
                &[&db_id(wallet)],
            )
            .await
            .unwrap();
    (dec(row.get(0)), dec(row.get(1)))
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn wei(amount: Decimal) -> u128 {
    let mut a = amount;
    a.rescale(18);
    u128::try_from(a.mantissa()).unwrap()
}

/// What the chain charged for a mined transaction: gasUsed × effectiveGasPrice, in ether.
async fn charged(anvil: &Anvil, hash: &str) -> (Decimal, i64, bool) {
    let receipt = anvil.receipt(hash).await;
    let used = quantity(&receipt["gasUsed"]);
    let price = quantity(&receipt["effectiveGasPrice"]);
    (
        Decimal::from_i128_with_scale(i128::try_from(used * price).unwrap(), 18),
        i64::try_from(used).unwrap(),
        receipt["status"] == "0x1",
    )
}

/// Mines a block at a time, with a pass after each, until the withdrawal has left
/// PROCESSING (at most `limit` blocks).
async fn confirm(t: &TestApp, anvil: &Anvil, id: i64, limit: u64) -> Withdrawal {
    for _ in 0..limit {
        anvil.mine(1).await;
        pass(&t.app).await;
        let w = withdrawal(t, id).await;
        if w.status != "PROCESSING" {
            return w;
        }
    }
    panic!(
        "withdrawal {id} still processing: {:?}",
        withdrawal(t, id).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ether_withdrawal_is_debited_once_with_the_fee_the_chain_charged() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = funded(&t, &anvil, 2 * ETHER).await;
    let destination_before = anvil.balance(DEV_ACCOUNT_2).await;

    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.25", "w-1").await;
    let (balance, locked) = balances(&t, &wallet).await;
    assert_eq!(balance, Decimal::from(2));
    // The amount and the most its fee may be: 21,000 gas at twice the base fee plus the tip.
    let locked_fee = locked - Decimal::new(25, 2);
    assert!(locked_fee > Decimal::ZERO, "{locked}");

    // Signed, stored and sent: nothing debited before it is mined.
    let report = pass(&t.app).await;
    assert_eq!((report.signed, report.broadcast), (1, 1), "{report:?}");
    let w = withdrawal(&t, id).await;
    assert_eq!(w.status, "PROCESSING");
    let hash = w.hash.clone().expect("the hold names its transaction");
    assert_eq!(w.attempts, vec![hash.clone()]);
    assert!(anvil.knows(&hash).await);
    assert_eq!(balances(&t, &wallet).await, (balance, locked));

    // Confirmations one block at a time; the debit at six, once.
    for confirmations in 1..=5 {
        anvil.mine(1).await;
        pass(&t.app).await;
        let w = withdrawal(&t, id).await;
        assert_eq!(
            (w.status.as_str(), w.confirmations, w.debits.len()),
            ("PROCESSING", Some(confirmations), 0)
        );
    }
    anvil.mine(1).await;
    pass(&t.app).await;
    pass(&t.app).await;
    let w = withdrawal(&t, id).await;
    assert_eq!(w.status, "COMPLETED");
    let (fee, gas_used, succeeded) = charged(&anvil, &hash).await;
    assert!(succeeded);
    assert_eq!(w.debits.len(), 1);
    let debit = w.debits[0].clone();
    assert_eq!((debit.fee, debit.network_fee), (fee, Some(fee)));
    assert_eq!((debit.hash, debit.gas_used), (hash.clone(), Some(gas_used)));
    assert!(
        fee < locked_fee,
        "the chain charged {fee}, {locked_fee} was locked"
    );

    // The amount arrived; the wallet paid amount + the charged fee and nothing is locked.
    assert_eq!(
        anvil.balance(DEV_ACCOUNT_2).await,
        destination_before + ETHER / 4
    );
    let (balance, locked) = balances(&t, &wallet).await;
    assert_eq!(balance, Decimal::from(2) - Decimal::new(25, 2) - fee);
    assert_eq!(locked, Decimal::ZERO);
    assert_eq!(anvil.balance(&address).await, wei(balance));
    assert_eq!(anvil.sent(&address).await, 1);
    let reconciled = reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    t.assert_balanced().await;

    // A second withdrawal takes the next nonce.
    let second = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.5", "w-2").await;
    pass(&t.app).await;
    assert_eq!(confirm(&t, &anvil, second, 8).await.status, "COMPLETED");
    assert_eq!(anvil.sent(&address).await, 2);
    let (balance, _) = balances(&t, &wallet).await;
    assert_eq!(anvil.balance(&address).await, wei(balance));
}

/// A withdrawal's `fee` and `chargedFee` as its owner reads them (null: not known yet).
async fn fees_shown(t: &TestApp, id: i64) -> (Decimal, Option<Decimal>) {
    let body = t
        .ok(
            &t.user("alice"),
            "query($id: ID!) { node(id: $id) { ... on Transaction { fee chargedFee } } }",
            json!({"id": transaction_global_id(id)}),
        )
        .await;
    let row = &body["node"];
    (
        dec(row["fee"].as_str().unwrap()),
        row["chargedFee"].as_str().map(dec),
    )
}

/// The global id of the transaction with database id `id`.
fn transaction_global_id(id: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("Transaction:{id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn charged_fee_is_null_until_the_withdrawal_is_settled_then_what_the_chain_charged() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, _) = funded(&t, &anvil, ETHER).await;
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.25", "w-1").await;

    // Requested: `fee` is what is locked for it, the most the network may charge.
    let (locked_fee, charged_fee) = fees_shown(&t, id).await;
    let (_, locked) = balances(&t, &wallet).await;
    assert_eq!(locked_fee, locked - Decimal::new(25, 2));
    assert_eq!(charged_fee, None, "PENDING: not charged yet");
    // Signed and sent, mined but not confirmed: still not known.
    pass(&t.app).await;
    anvil.mine(1).await;
    pass(&t.app).await;
    let w = withdrawal(&t, id).await;
    assert_eq!((w.status.as_str(), w.debits.len()), ("PROCESSING", 0));
    assert_eq!(fees_shown(&t, id).await, (locked_fee, None));

    let w = confirm(&t, &anvil, id, 8).await;
    assert_eq!(w.status, "COMPLETED");
    let (fee, _, _) = charged(&anvil, &w.hash.clone().unwrap()).await;
    assert!(fee < locked_fee, "{fee} charged, {locked_fee} locked");
    // Settled: what the chain charged, as debited; `fee` still says what was locked.
    assert_eq!(w.debits[0].fee, fee);
    assert_eq!(fees_shown(&t, id).await, (locked_fee, Some(fee)));
    // The debit itself charged its fee; listed, each row says so.
    let listed = t
        .ok(
            &t.user("alice"),
            "query($w: ID!) { wallet(id: $w) { transactions(last: 2) { edges { node {
               isHold fee chargedFee } } } } }",
            json!({"w": wallet}),
        )
        .await;
    let rows: Vec<(bool, Decimal, Decimal)> = listed["wallet"]["transactions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = &e["node"];
            (
                n["isHold"].as_bool().unwrap(),
                dec(n["fee"].as_str().unwrap()),
                dec(n["chargedFee"].as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(rows, vec![(true, locked_fee, fee), (false, fee, fee)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_storing_and_broadcasting_sends_once() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (other, _) = t.sibling_with(on(&anvil)).await;
    let (wallet, address) = funded(&t, &anvil, ETHER).await;
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.1", "w-1").await;

    // Signed and stored, and the process dies before broadcasting.
    let state = &t.app.state;
    let mut conn = state.pool.get().await.unwrap();
    let signed = node_withdrawal::sign_next(
        &mut conn,
        &state.currencies,
        &state.custody,
        &state.chains,
        &["ethereum".to_owned()],
        &mut 0,
        &mut Vec::new(),
    )
    .await
    .unwrap()
    .expect("a withdrawal to sign");
    drop(conn);
    assert!(!anvil.knows(&signed.hash).await);

    // Two processes pick it up: the stored bytes are sent (twice is harmless), mined once.
    tokio::join!(pass(&t.app), pass(&other));
    assert!(anvil.knows(&signed.hash).await);
    for _ in 0..7 {
        anvil.mine(1).await;
        tokio::join!(pass(&t.app), pass(&other));
    }
    let w = withdrawal(&t, id).await;
    assert_eq!(w.status, "COMPLETED");
    assert_eq!(w.attempts, vec![signed.hash.clone()]);
    assert_eq!(w.debits.len(), 1);
    assert_eq!(anvil.sent(&address).await, 1);
    let (balance, locked) = balances(&t, &wallet).await;
    assert_eq!(locked, Decimal::ZERO);
    assert_eq!(anvil.balance(&address).await, wei(balance));
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_the_node_forgot_is_sent_again_from_its_stored_bytes() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = funded(&t, &anvil, ETHER).await;
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.1", "w-1").await;
    pass(&t.app).await;
    let hash = withdrawal(&t, id).await.hash.unwrap();

    anvil.drop_transaction(&hash).await;
    assert!(!anvil.knows(&hash).await);
    let report = pass(&t.app).await;
    assert_eq!(report.withdrawals.rebroadcast, 1, "{report:?}");
    assert!(anvil.knows(&hash).await, "the same bytes, the same hash");

    let w = confirm(&t, &anvil, id, 8).await;
    assert_eq!(w.status, "COMPLETED");
    assert_eq!(w.attempts, vec![hash]);
    assert_eq!(w.debits.len(), 1);
    assert_eq!(anvil.sent(&address).await, 1);
    assert_eq!(
        anvil.balance(&address).await,
        wei(balances(&t, &wallet).await.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_withdrawal_is_replaced_with_a_higher_fee_and_debited_once() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    // A second process follows the same withdrawals.
    let (other, _) = t.sibling_with(on(&anvil)).await;
    let (wallet, address) = funded(&t, &anvil, ETHER).await;
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.1", "w-1").await;
    let locked_at_request = balances(&t, &wallet).await.1;
    pass(&t.app).await;
    let first = withdrawal(&t, id).await.hash.unwrap();

    // The base fee jumps far above what the transaction offers (but not above the fee
    // cap, 500 gwei by default: see the cap's own test): it is not mined.
    anvil.set_next_base_fee(200 * GWEI).await;
    anvil.mine(2).await;
    let report = pass(&t.app).await;
    assert_eq!(report.withdrawals.replaced, 0, "not yet: {report:?}");
    assert_eq!(withdrawal(&t, id).await.status, "PROCESSING");
    assert!(anvil.receipt(&first).await.is_null());

    // Three blocks unmined (anvil evicted it, and refuses its bytes while the base fee is
    // above its max fee): replaced with the same nonce and a fee the chain takes.
    anvil.mine(1).await;
    let (a, b) = tokio::join!(pass(&t.app), pass(&other));
    assert_eq!(
        a.withdrawals.replaced + b.withdrawals.replaced,
        1,
        "replaced once by the two: {a:?} {b:?}"
    );
    let w = withdrawal(&t, id).await;
    assert_eq!(w.attempts.len(), 2);
    assert_eq!(w.attempts[0], first);
    let second = w.attempts[1].clone();
    assert_eq!(w.hash.as_deref(), Some(second.as_str()));
    // The wallet locked what the higher fee may cost.
    assert!(balances(&t, &wallet).await.1 > locked_at_request);
    // Both hashes are the withdrawal's, in the API too.
    let global = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("Transaction:{id}"))
    };
    let seen = t
        .ok(
            &t.user("alice"),
            "query($id: ID!) { node(id: $id) { ... on Transaction { chainTxHash chainAttempts } } }",
            json!({"id": global}),
        )
        .await;
    assert_eq!(
        seen["node"],
        json!({"chainTxHash": second, "chainAttempts": [first, second]})
    );

    for _ in 0..10 {
        anvil.mine(1).await;
        tokio::join!(pass(&t.app), pass(&other));
    }
    let w = withdrawal(&t, id).await;
    assert_eq!(w.status, "COMPLETED", "{w:?}");
    assert_eq!(w.attempts.len(), 2, "no replacement once mined");
    assert_eq!(w.debits.len(), 1);
    assert_eq!(w.debits[0].hash, second, "the replacement is the one mined");
    assert!(anvil.receipt(&first).await.is_null());
    let (fee, _, _) = charged(&anvil, &second).await;
    assert_eq!(w.debits[0].fee, fee);
    assert_eq!(anvil.sent(&address).await, 1, "one transaction on chain");
    let (balance, locked) = balances(&t, &wallet).await;
    assert_eq!(locked, Decimal::ZERO);
    assert_eq!(balance, Decimal::ONE - Decimal::new(1, 1) - fee);
    assert_eq!(anvil.balance(&address).await, wei(balance));
    let reconciled = reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reverted_withdrawal_pays_its_gas_and_gets_the_amount_back() {
    let anvil = Anvil::start().await;
    // A contract that takes no ether: a plain transfer to it reverts.
    let contract = anvil.deploy_test_token("Test USD", "TUSD").await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = funded(&t, &anvil, ETHER).await;
    let id = withdraw(&t, &wallet, &contract, "0.1", "w-1").await;
    pass(&t.app).await;
    let w = confirm(&t, &anvil, id, 8).await;
    assert_eq!(w.status, "FAILED");
    assert!(w.reason.unwrap().contains("reverted"));
    let hash = w.hash.unwrap();
    let (fee, _, succeeded) = charged(&anvil, &hash).await;
    assert!(!succeeded);
    assert_eq!(w.debits.len(), 1);
    assert_eq!(w.debits[0].fee, fee);
    assert_eq!(w.refunds, vec![(Decimal::new(1, 1), Decimal::ZERO)]);
    assert_eq!(
        fees_shown(&t, id).await.1,
        Some(fee),
        "the gas stays charged"
    );
    let (balance, locked) = balances(&t, &wallet).await;
    assert_eq!((balance, locked), (Decimal::ONE - fee, Decimal::ZERO));
    assert_eq!(anvil.balance(&address).await, wei(balance));
    assert_eq!(anvil.balance(&contract).await, 0);
    // The chain's balance of the address (what the gas took) is the ledger's.
    let reconciled = reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_withdrawal_pays_its_gas_from_gas_funding_in_the_ether_books() {
    let anvil = Anvil::start().await;
    let (contract, options) = with_test_token(&anvil).await;
    let t = TestApp::with(options).await;
    let (tusd, address) = crypto_wallet(&t, "alice", "TUSD").await;
    // 100 TUSD minted to the wallet's address.
    let mint = mintCall {
        to: address.parse().unwrap(),
        value: alloy::primitives::U256::from(100_000_000u64),
    };
    anvil
        .send_from(DEV_ACCOUNT, Some(&contract), &mint.abi_encode(), 0)
        .await;
    anvil.mine(6).await;
    pass(&t.app).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&tusd).await, "100.000000");

    // No gas funding at the address: not sent (no nonce taken), failed with its reason,
    // the lock released.
    let unfunded = withdraw(&t, &tusd, DEV_ACCOUNT_2, "10", "t-0").await;
    let report = pass(&t.app).await;
    assert_eq!(report.signed, 0, "{report:?}");
    let w = withdrawal(&t, unfunded).await;
    assert_eq!(w.status, "FAILED");
    let reason = w.reason.unwrap();
    assert!(
        reason.contains("gas funding") && reason.contains("fundGas"),
        "{reason}"
    );
    assert!(w.attempts.is_empty());
    assert_eq!(
        balances(&t, &tusd).await,
        (Decimal::new(100_000_000, 6), Decimal::ZERO)
    );
    assert_eq!(anvil.sent(&address).await, 0);

    // The operator funds the address's gas: recorded first, then sent; posted to the
    // ether books once confirmed, nobody's balance changes.
    let funding = fund_gas(&t, &tusd, OPERATOR, "0.1", "gas-1").await;
    assert_eq!(funding["status"], "EXPECTED", "{funding}");
    anvil
        .send_from(OPERATOR, Some(&address), &[], ETHER / 10)
        .await;
    anvil.mine(6).await;
    pass(&t.app).await;
    pass(&t.app).await;
    assert_eq!(gas_funding(&t, &funding).await["status"], "COMPLETED");
    let trial = t.assert_balanced().await;
    assert_eq!(trial["ETH"].2["gas_funding"], "0.100000000000000000");
    assert_eq!(trial["ETH"].2["custody"], "-0.100000000000000000");

    let id = withdraw(&t, &tusd, DEV_ACCOUNT_2, "40.5", "t-1").await;
    // No fee in the token: the gas is ether.
    assert_eq!(
        balances(&t, &tusd).await,
        (Decimal::new(100_000_000, 6), Decimal::new(40_500_000, 6))
    );
    pass(&t.app).await;
    let w = confirm(&t, &anvil, id, 8).await;
    assert_eq!(w.status, "COMPLETED", "{w:?}");
    let hash = w.hash.unwrap();
    let (gas_fee, gas_used, succeeded) = charged(&anvil, &hash).await;
    assert!(succeeded);
    let debit = w.debits[0].clone();
    assert_eq!(
        (debit.fee, debit.network_fee),
        (Decimal::ZERO, Some(Decimal::ZERO))
    );
    assert_eq!(debit.gas_used, Some(gas_used));
    assert_eq!(
        anvil.token_balance(&contract, DEV_ACCOUNT_2).await,
        40_500_000
    );
    assert_eq!(anvil.token_balance(&contract, &address).await, 59_500_000);
    assert_eq!(
        anvil.balance(&address).await,
        ETHER / 10 - wei(gas_fee),
        "the gas came from the address's ether"
    );
    assert_eq!(
        balances(&t, &tusd).await,
        (Decimal::new(59_500_000, 6), Decimal::ZERO)
    );
    let reconciled = reconcile(&t, &tusd).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    // The gas is in the ether books: custody paid it, network_fees spent it; the token's
    // books have none of it. Both balance.
    let trial = t.assert_balanced().await;
    let ether_gas = |d: Decimal| {
        let mut d = d;
        d.rescale(18);
        d.to_string()
    };
    assert_eq!(trial["ETH"].2["network_fees"], ether_gas(-gas_fee));
    assert_eq!(
        trial["ETH"].2["custody"],
        ether_gas(gas_fee - Decimal::new(1, 1))
    );
    assert_eq!(trial["ETH"].2["gas_funding"], ether_gas(Decimal::new(1, 1)));
    assert_eq!(trial["TUSD"].2["network_fees"], "0.000000");
    assert_eq!(trial["TUSD"].2["custody"], "-59.500000");
    // What the ether books say the address holds is what it holds.
    assert_eq!(
        -trial["ETH"].2["custody"].parse::<Decimal>().unwrap(),
        Decimal::from_i128_with_scale(i128::try_from(anvil.balance(&address).await).unwrap(), 18)
    );
    assert_locks_match_holds(&t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_transaction_offers_more_than_the_fee_cap_and_a_withdrawal_waits_under_it() {
    let anvil = Anvil::start().await;
    let capped = |gwei: u128| {
        let mut options = on(&anvil);
        if let Some(node) = &mut options.ethereum {
            node.max_fee_per_gas = gwei * GWEI;
        }
        options
    };
    let t = TestApp::with(capped(10)).await;
    let (wallet, address) = funded(&t, &anvil, ETHER).await;
    // The base fee rises to 50 gwei, above the 10 gwei cap.
    anvil.set_next_base_fee(50 * GWEI).await;
    anvil.mine(1).await;
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.1", "w-1").await;
    // Locked: the amount and 21,000 gas at the cap, not at what the node asks.
    let gas_at = |gwei: u128| Decimal::from_i128_with_scale((21_000 * gwei * GWEI) as i128, 18);
    assert_eq!(
        balances(&t, &wallet).await,
        (Decimal::ONE, Decimal::new(1, 1) + gas_at(10))
    );

    // Not signed (no nonce taken, nothing sent), still PENDING with its lock, and
    // reported as held at the cap, pass after pass.
    for _ in 0..3 {
        let report = pass(&t.app).await;
        assert_eq!((report.signed, report.broadcast), (0, 0), "{report:?}");
        assert_eq!(report.held_at_fee_cap(), vec![id], "{report:?}");
    }
    let w = withdrawal(&t, id).await;
    assert_eq!((w.status.as_str(), w.attempts.len()), ("PENDING", 0));
    let pending_nonce = anvil
        .rpc("eth_getTransactionCount", json!([address, "pending"]))
        .await;
    assert_eq!(quantity(&pending_nonce), 0);

    // Restarted with the cap at 60 gwei: above the base fee, below what the node asks
    // (twice the base fee plus the tip). Signed at the cap exactly; the lock follows.
    let (raised, _) = t.sibling_with(capped(60)).await;
    let report = pass(&raised).await;
    assert_eq!((report.signed, report.broadcast), (1, 1), "{report:?}");
    assert!(report.held_at_fee_cap().is_empty(), "{report:?}");
    let offered = max_fees(&t, id).await;
    assert_eq!(offered, vec![Decimal::from(60 * GWEI)]);
    let locked_fee = gas_at(60);
    assert_eq!(
        balances(&t, &wallet).await,
        (Decimal::ONE, Decimal::new(1, 1) + locked_fee)
    );

    // The base fee jumps above what it offers: it is not mined, and a replacement would
    // have to offer more than the cap, so none is made; it is reported.
    anvil.set_next_base_fee(200 * GWEI).await;
    for _ in 0..4 {
        anvil.mine(1).await;
        pass(&raised).await;
    }
    let report = pass(&raised).await;
    assert_eq!(report.withdrawals.replaced, 0, "{report:?}");
    assert_eq!(report.held_at_fee_cap(), vec![id], "{report:?}");
    assert_eq!(max_fees(&t, id).await, offered, "no attempt above the cap");
    assert_eq!(withdrawal(&t, id).await.status, "PROCESSING");

    // Fees fall: the attempt sent is mined (sent again if the node dropped it), and the
    // user is charged what the chain charged — never more than was locked.
    anvil.set_next_base_fee(10 * GWEI).await;
    let mut w = withdrawal(&t, id).await;
    for _ in 0..10 {
        anvil.mine(1).await;
        pass(&raised).await;
        w = withdrawal(&t, id).await;
        if w.status != "PROCESSING" {
            break;
        }
    }
    assert_eq!(w.status, "COMPLETED", "{w:?}");
    assert_eq!(w.attempts.len(), 1);
    let (fee, _, _) = charged(&anvil, &w.attempts[0]).await;
    assert_eq!(w.debits[0].fee, fee);
    assert!(fee <= locked_fee, "charged {fee}, locked {locked_fee}");
    let (balance, locked) = balances(&t, &wallet).await;
    assert_eq!(locked, Decimal::ZERO);
    assert_eq!(balance, Decimal::ONE - Decimal::new(1, 1) - fee);
    assert_eq!(anvil.balance(&address).await, wei(balance));
    t.assert_balanced().await;
}

/// The max fee per gas of each of a withdrawal's attempts, oldest first (wei).
async fn max_fees(t: &TestApp, id: i64) -> Vec<Decimal> {
    t.db.client()
        .await
        .query(
            "SELECT max_fee_per_gas::text FROM withdrawal_attempts
              WHERE transaction_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| dec(r.get(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fee_cap_holds_when_the_service_pays_the_gas() {
    let anvil = Anvil::start().await;
    let mut options = on(&anvil);
    // A flat ETH withdrawal fee: the user pays it, the service pays the gas (it covers
    // 21,000 gas at the cap: 0.00126 ETH).
    options.withdrawal_fees = [("ETH".to_owned(), Decimal::new(126, 5))].into();
    if let Some(node) = &mut options.ethereum {
        node.max_fee_per_gas = 60 * GWEI;
    }
    let t = TestApp::with(options).await;
    let (wallet, _) = funded(&t, &anvil, ETHER).await;
    anvil.set_next_base_fee(50 * GWEI).await;
    anvil.mine(1).await;
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.1", "w-1").await;
    let report = pass(&t.app).await;
    assert_eq!(report.signed, 1, "{report:?}");
    // The node asks twice the base fee plus the tip (over 100 gwei): the cap is offered.
    assert_eq!(max_fees(&t, id).await, vec![Decimal::from(60 * GWEI)]);
    assert_eq!(
        balances(&t, &wallet).await,
        (Decimal::ONE, Decimal::new(10126, 5)),
        "the user's lock is the amount and the flat fee"
    );
}

/// A withdrawal through a node is paid out on chain before its debit (made at its
/// confirmations): a window ending in that gap is explained as in transit, not as a
/// transfer the ledger never saw, and gives the same answer whenever it is asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_mined_before_its_debit_is_in_transit_whenever_reconciled() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, _) = funded(&t, &anvil, 2 * ETHER).await;
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.25", "w-gap").await;
    pass(&t.app).await;
    anvil.mine(2).await;
    pass(&t.app).await;
    let w = withdrawal(&t, id).await;
    assert_eq!((w.status.as_str(), w.debits.len()), ("PROCESSING", 0));
    let hash = w.hash.unwrap();

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let end = chrono::Utc::now().to_rfc3339();
    let ask = async || {
        t.ok(
            &t.operator(),
            "mutation($w: ID!, $end: DateTime!) { reconcileWallet(input: {walletId: $w,
               startTime: \"2020-01-01T00:00:00Z\", endTime: $end}) {
               status difference unmatchedTransactions mismatchReason notes } }",
            json!({"w": wallet, "end": end}),
        )
        .await["reconcileWallet"]
            .clone()
    };
    let during = ask().await;
    assert_eq!(during["status"], "MATCHED", "{during}");
    assert_eq!(during["unmatchedTransactions"], json!([]), "{during}");
    let notes = during["notes"].as_str().unwrap();
    assert!(
        notes.contains("in transit") && notes.contains(&hash),
        "{notes}"
    );

    // Debited since: the same window, asked again, says the same. (Only the height the
    // window's end maps to may differ: anvil stamps blocks mined in a burst with times of
    // its own.)
    assert_eq!(confirm(&t, &anvil, id, 8).await.status, "COMPLETED");
    let after = ask().await;
    let in_transit = |r: &serde_json::Value| {
        let notes = r["notes"].as_str().unwrap();
        notes[notes.find("in transit").unwrap()..].to_owned()
    };
    for field in [
        "status",
        "difference",
        "unmatchedTransactions",
        "mismatchReason",
    ] {
        assert_eq!(after[field], during[field], "{field}: {after} / {during}");
    }
    assert_eq!(in_transit(&after), in_transit(&during));
    // And a window ending now matches with nothing in transit.
    let now = reconcile(&t, &wallet).await;
    assert_eq!(now["status"], "MATCHED", "{now}");
    assert!(
        !now["notes"].as_str().unwrap().contains("in transit"),
        "{now}"
    );
}

/// The operator's own address (anvil's third funded account): not a wallet's.
const OPERATOR: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
/// The custody seed of [`on`]'s options.
const SEED: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                    abandon abandon about";
const FUND_GAS: &str = "mutation($w: ID!, $from: String!, $a: Decimal!, $k: String!) {
  fundGas(input: {walletId: $w, fromAddress: $from, amount: $a, idempotencyKey: $k}) {
    id status amount currency fromAddress toAddress chainTxHash confirmations statusReason } }";

/// Records an expected gas funding of `wallet`'s address (as an operator).
async fn fund_gas(t: &TestApp, wallet: &str, from: &str, amount: &str, key: &str) -> Value {
    t.ok(
        &t.operator(),
        FUND_GAS,
        json!({"w": wallet, "from": from, "a": amount, "k": key}),
    )
    .await["fundGas"]
        .clone()
}

/// A gas funding as the API shows it now.
async fn gas_funding(t: &TestApp, funding: &Value) -> Value {
    t.ok(
        &t.operator(),
        "query($id: ID!) { node(id: $id) { ... on GasFunding {
           id status amount chainTxHash confirmations wallet { id balance } } } }",
        json!({"id": funding["id"]}),
    )
    .await["node"]
        .clone()
}

/// The operations check "locked funds are exactly the withdrawals in flight that have not
/// been debited" (docs/operations.md, query 4): no wallet may differ.
async fn assert_locks_match_holds(t: &TestApp) {
    let rows = t
        .db
        .client()
        .await
        .query(
            "SELECT w.id, w.locked_balance::text, COALESCE(h.locked, 0)::text AS expected
               FROM wallets w
               LEFT JOIN (SELECT t.wallet_id,
                                 sum(t.amount + GREATEST(t.fee, COALESCE(a.locked_fee, 0))) AS locked
                            FROM transactions t
                            LEFT JOIN (SELECT transaction_id, max(locked_fee) AS locked_fee
                                         FROM withdrawal_attempts GROUP BY transaction_id) a
                              ON a.transaction_id = t.id
                           WHERE t.hold AND t.type = 'WITHDRAW'
                             AND (t.status = 'PENDING'
                                  OR (t.status = 'PROCESSING' AND a.transaction_id IS NOT NULL))
                           GROUP BY t.wallet_id) h ON h.wallet_id = w.id
              WHERE w.locked_balance <> COALESCE(h.locked, 0)",
            &[],
        )
        .await
        .unwrap();
    let off: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        off.is_empty(),
        "locked funds differ from the holds: {off:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flat_fee_below_what_the_network_may_charge_refuses_the_start() {
    let anvil = Anvil::start().await;
    let db = common::TestDb::new().await;
    let home = common::binary::Scratch::new("wallet-fees");
    let node = [
        ("DATABASE_URL", db.url.as_str()),
        ("WALLET_SEED", SEED),
        ("WALLET_ETHEREUM_RPC_URL", anvil.url.as_str()),
        ("WALLET_ETHEREUM_CHAIN_ID", "31337"),
        ("WALLET_ETHEREUM_MAX_FEE_PER_GAS_GWEI", "60"),
    ];
    // 21,000 gas at the 60 gwei cap is 0.00126 ETH: a flat fee below it would leave the
    // address paying the rest of the gas out of the customer's money.
    let run = common::binary::run_binary(
        home.path(),
        &[&node[..], &[("WALLET_WITHDRAWAL_FEES", "ETH=0.00125")]].concat(),
    )
    .await;
    run.refused("the withdrawal fee of ETH (0.00125) is below the most the ethereum network may charge for a withdrawal (0.00126 ETH)");
    run.refused("Set it to at least 0.00126 or lower WALLET_ETHEREUM_MAX_FEE_PER_GAS_GWEI");
    // At the most, it starts.
    common::binary::run_binary(
        home.path(),
        &[&node[..], &[("WALLET_WITHDRAWAL_FEES", "ETH=0.00126")]].concat(),
    )
    .await
    .started();

    // The simulated networks' fees are fixed: bitcoin's is 0.00001 BTC.
    let low = common::Options {
        withdrawal_fees: [("BTC".to_owned(), Decimal::new(9, 6))].into(),
        mnemonic: SEED,
        ..common::Options::default()
    };
    let refused = wallet::app::App::start(&low.config(&db.url))
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{refused:#}").contains("(0.00001 BTC)"),
        "{refused:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_the_node_refuses_for_want_of_funds_fails_and_frees_its_lock_and_nonce() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = funded(&t, &anvil, ETHER).await;
    // The address holds less than its wallet (as signing with flat fees below the gas
    // once left addresses): 0.5 ether for a wallet of 1.
    anvil
        .rpc(
            "anvil_setBalance",
            json!([address, format!("{:#x}", ETHER / 2)]),
        )
        .await;

    // The whole available balance (the amount and the most its fee may be, 21,000 gas at
    // twice the base fee plus the tip): the node refuses it ("insufficient funds"). It
    // does not hang: it fails in the same pass, with the node's reason, nothing debited,
    // nothing locked.
    let latest = anvil
        .rpc("eth_getBlockByNumber", json!(["latest", false]))
        .await;
    let tip = quantity(&anvil.rpc("eth_maxPriorityFeePerGas", json!([])).await);
    let worst_fee = 21_000 * (2 * quantity(&latest["baseFeePerGas"]) + tip);
    let all = Decimal::from_i128_with_scale(i128::try_from(ETHER - worst_fee).unwrap(), 18);
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, &all.to_string(), "w-1").await;
    assert_eq!(
        balances(&t, &wallet).await,
        (Decimal::ONE, Decimal::ONE),
        "all of it locked"
    );
    let report = pass(&t.app).await;
    assert_eq!((report.signed, report.broadcast), (1, 0), "{report:?}");
    assert_eq!(report.withdrawals.failed, 1, "{report:?}");
    let w = withdrawal(&t, id).await;
    assert_eq!(w.status, "FAILED");
    let reason = w.reason.unwrap();
    assert!(
        reason.starts_with("not sent: the node refused it")
            && reason.to_lowercase().contains("insufficient funds"),
        "{reason}"
    );
    assert!(w.debits.is_empty() && w.refunds.is_empty());
    assert_eq!(balances(&t, &wallet).await, (Decimal::ONE, Decimal::ZERO));
    assert_eq!(
        fees_shown(&t, id).await.1,
        Some(Decimal::ZERO),
        "nothing was charged"
    );
    let refused: Vec<Option<String>> =
        t.db.client()
            .await
            .query(
                "SELECT refused FROM withdrawal_attempts WHERE transaction_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(
        refused.len() == 1 && refused[0].as_deref().is_some_and(|r| !r.is_empty()),
        "{refused:?}"
    );
    assert_locks_match_holds(&t).await;
    // Shown to its owner as failed, with the reason.
    let seen = t
        .ok(
            &t.user("alice"),
            "query($w: ID!) { wallet(id: $w) { availableBalance lockedBalance } }",
            json!({"w": wallet}),
        )
        .await;
    assert_eq!(
        seen["wallet"]["lockedBalance"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        Decimal::ZERO
    );

    // Its nonce went back to the address: the next withdrawal takes it and is mined.
    let next = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.3", "w-2").await;
    pass(&t.app).await;
    let w = confirm(&t, &anvil, next, 8).await;
    assert_eq!(w.status, "COMPLETED", "{w:?}");
    assert_eq!(anvil.sent(&address).await, 1);
    let nonce: i64 =
        t.db.client()
            .await
            .query_one(
                "SELECT nonce FROM withdrawal_attempts WHERE transaction_id = $1",
                &[&next],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(nonce, 0);
    assert_eq!(balances(&t, &wallet).await.1, Decimal::ZERO);
    t.assert_balanced().await;
    assert_locks_match_holds(&t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gas_funding_is_not_a_deposit_and_reconciliation_explains_it() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = funded(&t, &anvil, ETHER).await;
    let before = t.assert_balanced().await;

    // Operators only; never from one of our own addresses; the key replays.
    let body = t
        .gql(
            Some(&t.user("alice")),
            FUND_GAS,
            json!({"w": wallet, "from": OPERATOR, "a": "0.05", "k": "g"}),
        )
        .await;
    assert_eq!(common::error_code(&body), "FORBIDDEN", "{body}");
    let body = t
        .gql(
            Some(&t.operator()),
            FUND_GAS,
            json!({"w": wallet, "from": address, "a": "0.05", "k": "g"}),
        )
        .await;
    assert_eq!(common::error_code(&body), "BAD_USER_INPUT", "{body}");
    let funding = fund_gas(&t, &wallet, OPERATOR, "0.05", "g").await;
    assert_eq!(
        (&funding["status"], &funding["amount"], &funding["currency"]),
        (
            &json!("EXPECTED"),
            &json!("0.050000000000000000"),
            &json!("ETH")
        )
    );
    assert_eq!(funding["toAddress"], address);
    assert_eq!(
        fund_gas(&t, &wallet, OPERATOR, "0.050", "g").await["id"],
        funding["id"]
    );
    let body = t
        .gql(
            Some(&t.operator()),
            FUND_GAS,
            json!({"w": wallet, "from": OPERATOR, "a": "0.06", "k": "g"}),
        )
        .await;
    assert_eq!(common::error_code(&body), "IDEMPOTENCY_CONFLICT", "{body}");

    // The operator sends it; the same block holds a customer's deposit of the same amount
    // from elsewhere, which stays a deposit.
    let gas = anvil
        .send_from(OPERATOR, Some(&address), &[], ETHER / 20)
        .await;
    let deposit = anvil
        .send_from(DEV_ACCOUNT, Some(&address), &[], ETHER / 20)
        .await;
    anvil.mine(1).await;
    pass(&t.app).await;
    let seen = gas_funding(&t, &funding).await;
    assert_eq!(
        (
            &seen["status"],
            &seen["chainTxHash"],
            &seen["confirmations"]
        ),
        (&json!("CONFIRMING"), &json!(gas), &json!(1))
    );
    let holds: Vec<String> =
        t.db.client()
            .await
            .query(
                "SELECT chain_tx_hash FROM transactions WHERE type = 'DEPOSIT' AND hold
              AND chain_tx_hash IN ($1, $2)",
                &[&gas, &deposit],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(
        holds,
        vec![deposit.clone()],
        "only the customer's transfer is a deposit"
    );
    // Nor can it be claimed as one.
    let body = t
        .gql(
            Some(&t.user("alice")),
            "mutation($w: ID!, $h: String!) { processCryptoDeposit(input: {walletId: $w, txHash: $h}) { id } }",
            json!({"w": wallet, "h": gas}),
        )
        .await;
    assert_eq!(common::error_code(&body), "BAD_USER_INPUT", "{body}");

    anvil.mine(5).await;
    pass(&t.app).await;
    let done = gas_funding(&t, &funding).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // The customer has their deposit, not the gas.
    assert_eq!(t.balance(&wallet).await, "1.050000000000000000");
    assert_eq!(
        anvil.balance(&address).await,
        ETHER + ETHER / 10,
        "the address holds the wallet and the gas"
    );
    let trial = t.assert_balanced().await;
    assert_eq!(before["ETH"].2["gas_funding"], "0.000000000000000000");
    assert_eq!(trial["ETH"].2["gas_funding"], "0.050000000000000000");
    assert_eq!(trial["ETH"].2["custody"], "-1.100000000000000000");
    // The postings say whose they are.
    let postings = t
        .ok(
            &t.operator(),
            "{ ledgerAccounts(currency: \"ETH\", code: \"gas_funding\") {
                 postings(first: 10) { edges { node { amount transaction { id }
                   gasFunding { id status } } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        postings["ledgerAccounts"][0]["postings"]["edges"][0]["node"],
        json!({"amount": "0.050000000000000000", "transaction": null,
               "gasFunding": {"id": funding["id"], "status": "COMPLETED"}})
    );
    let listed = t
        .ok(
            &t.operator(),
            "query($w: ID!) { gasFundings(walletId: $w) { edges { node { id status } } } }",
            json!({"w": wallet}),
        )
        .await;
    assert_eq!(
        listed["gasFundings"]["edges"],
        json!([{"node": {"id": funding["id"], "status": "COMPLETED"}}])
    );

    // The address holds more than the wallet by the gas funding: explained, MATCHED.
    let reconciled = reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    assert!(
        reconciled["notes"]
            .as_str()
            .unwrap()
            .contains("gas funding the operator put at the address (not the customer's): 0.05"),
        "{reconciled}"
    );
    // The customer can withdraw everything that is theirs; the gas stays at the address.
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "1", "w-1").await;
    pass(&t.app).await;
    assert_eq!(confirm(&t, &anvil, id, 8).await.status, "COMPLETED");
    let (balance, locked) = balances(&t, &wallet).await;
    assert_eq!(locked, Decimal::ZERO);
    assert_eq!(anvil.balance(&address).await, wei(balance) + ETHER / 20);
    let reconciled = reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    t.assert_balanced().await;

    // An expected funding that will not come is cancelled; a transfer then matching it
    // is a deposit.
    let stale = fund_gas(&t, &wallet, OPERATOR, "0.01", "g-2").await;
    let cancelled = t
        .ok(
            &t.operator(),
            "mutation($id: ID!) { cancelGasFunding(input: {id: $id}) { status statusReason } }",
            json!({"id": stale["id"]}),
        )
        .await;
    assert_eq!(cancelled["cancelGasFunding"]["status"], "CANCELLED");
    let late = anvil
        .send_from(OPERATOR, Some(&address), &[], ETHER / 100)
        .await;
    anvil.mine(6).await;
    pass(&t.app).await;
    pass(&t.app).await;
    let credited: i64 =
        t.db.client()
            .await
            .query_one(
                "SELECT count(*) FROM transactions WHERE chain_tx_hash = $1 AND NOT hold",
                &[&late],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(credited, 1);
    let body = t
        .gql(
            Some(&t.operator()),
            "mutation($id: ID!) { cancelGasFunding(input: {id: $id}) { status } }",
            json!({"id": funding["id"]}),
        )
        .await;
    assert_eq!(common::error_code(&body), "BAD_USER_INPUT", "{body}");
}

/// A `wallet serve` process following the same database and node as `t`, its chain
/// worker passing every 50 ms.
async fn worker_process(
    t: &TestApp,
    anvil: &Anvil,
    home: &common::binary::Scratch,
) -> common::binary::Server {
    let server = common::binary::launch(
        home.path(),
        &[
            ("DATABASE_URL", t.db.url.as_str()),
            ("WALLET_SEED", SEED),
            ("WALLET_JWT_SECRET", common::JWT_SECRET),
            ("WALLET_ETHEREUM_RPC_URL", anvil.url.as_str()),
            ("WALLET_ETHEREUM_CHAIN_ID", "31337"),
            ("WALLET_ETHEREUM_REPLACE_AFTER_BLOCKS", "3"),
            ("WALLET_CHAIN_POLL_MS", "50"),
        ],
    )
    .await;
    assert!(server.exit.is_none(), "the worker process started");
    server
}

/// Waits until `n` sessions of the test's database wait for a row lock.
async fn lock_waiters(t: &TestApp, n: i64) {
    let c = t.db.client().await;
    common::wait_until(
        &format!("{n} session(s) waiting for a lock"),
        std::time::Duration::from_secs(30),
        || async {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                >= n
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_settlement_racing_a_replacement_in_another_process_releases_every_lock() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = funded(&t, &anvil, ETHER).await;
    let id = withdraw(&t, &wallet, DEV_ACCOUNT_2, "0.1", "w-1").await;
    pass(&t.app).await;
    let first = withdrawal(&t, id).await.hash.unwrap();
    // Not mined in time: due for a replacement.
    anvil.set_next_base_fee(200 * GWEI).await;
    anvil.mine(3).await;

    // The hold's row is locked here, so that each process stops where it takes it.
    let mut holder = t.db.client().await;
    let holding = holder.transaction().await.unwrap();
    holding
        .execute(
            "SELECT id FROM transactions WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .unwrap();

    // Process B finds the withdrawal overdue and replaces it: it waits for the row.
    let home_b = common::binary::Scratch::new("wallet-replacer");
    let replacer = worker_process(&t, &anvil, &home_b).await;
    lock_waiters(&t, 1).await;

    // Meanwhile the first attempt is mined and confirmed after all.
    anvil.set_next_base_fee(GWEI).await;
    if !anvil.knows(&first).await {
        let raw: String =
            t.db.client()
                .await
                .query_one(
                    "SELECT raw FROM withdrawal_attempts WHERE hash = $1",
                    &[&first],
                )
                .await
                .unwrap()
                .get(0);
        anvil
            .send_raw(&format!("0x{}", raw.trim_start_matches("0x")))
            .await;
    }
    anvil.mine(7).await;
    assert_eq!(anvil.receipt(&first).await["status"], "0x1");

    // Process A lists the withdrawal's attempts (only the first: B has not committed) and
    // settles it: it waits for the row behind B.
    let home_a = common::binary::Scratch::new("wallet-settler");
    let settler = worker_process(&t, &anvil, &home_a).await;
    lock_waiters(&t, 2).await;

    // Released: B commits its replacement (locking more for its higher fee), then A
    // settles the mined first attempt.
    holding.rollback().await.unwrap();
    common::wait_until(
        "the withdrawal is settled",
        std::time::Duration::from_secs(30),
        || async { withdrawal(&t, id).await.status == "COMPLETED" },
    )
    .await;
    let w = withdrawal(&t, id).await;
    assert_eq!(w.attempts.len(), 2, "B replaced it: {w:?}");
    assert_eq!(w.debits.len(), 1);
    assert_eq!(w.debits[0].hash, first);
    // The replacement was committed before the debit: the settlement saw it.
    let c = t.db.client().await;
    let order: bool = c
        .query_one(
            "SELECT (SELECT max(created_at) FROM withdrawal_attempts WHERE transaction_id = $1)
                  < (SELECT created_at FROM transactions WHERE hold_id = $1 AND type = 'WITHDRAW')",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(order, "the replacement committed before the settlement");
    let locked_for_replacement: Decimal = c
        .query_one(
            "SELECT max(locked_fee)::text FROM withdrawal_attempts WHERE transaction_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    let (fee, _, _) = charged(&anvil, &first).await;
    assert!(locked_for_replacement > fee);

    // Every lock released: the whole lock went into the debit.
    drop((replacer, settler));
    let (balance, locked) = balances(&t, &wallet).await;
    assert_eq!(locked, Decimal::ZERO);
    assert_eq!(balance, Decimal::ONE - Decimal::new(1, 1) - fee);
    assert_eq!(anvil.balance(&address).await, wei(balance));
    t.assert_balanced().await;
    assert_locks_match_holds(&t).await;
}
