//! The journal is append-only in the database itself, not only in code: whatever client
//! writes to it, a row's history and its arithmetic cannot be rewritten.

mod common;

use common::TestApp;

/// The statement must be refused by the journal's guard.
async fn refused(c: &tokio_postgres::Client, sql: &str) {
    let err = c.batch_execute(sql).await.expect_err(sql);
    let text = format!("{err:?}");
    assert!(
        text.contains("append-only") || text.contains("check constraint"),
        "{sql}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_rows_cannot_be_rewritten_or_deleted() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "10.00", "d1").await;
    let c = t.db.client().await;
    for sql in [
        "UPDATE transactions SET amount = 999",
        // Numerically equal, but a different scale is a rewrite too.
        "UPDATE transactions SET amount = 10.0000",
        "UPDATE transactions SET balance_after = 999",
        "UPDATE transactions SET balance_before = 1",
        "UPDATE transactions SET fee = 1",
        "UPDATE transactions SET wallet_id = wallet_id + 1",
        "UPDATE transactions SET tx_hash = 'other'",
        "UPDATE transactions SET description = 'rewritten'",
        "UPDATE transactions SET created_at = now() - interval '1 day'",
        // A posting is final: not even its status or time moves.
        "UPDATE transactions SET status = 'PENDING'",
        "UPDATE transactions SET status = 'FAILED'",
        "UPDATE transactions SET updated_at = now()",
        "DELETE FROM transactions",
        "TRUNCATE transactions CASCADE",
    ] {
        refused(&c, sql).await;
    }
    // Balances can never go below what the wallet may spend, even by hand: a wallet
    // without credit never below zero.
    let err = c
        .batch_execute("UPDATE wallets SET balance = -1")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("wallets_within_credit"),
        "{err:?}"
    );
    assert_eq!(t.balance(&w).await, "10.00");
    assert_eq!(t.assert_chain(&w).await, 1);
}

/// Every row's balance arithmetic is a constraint: a new row that does not add up is
/// refused whoever inserts it.
#[tokio::test(flavor = "multi_thread")]
async fn rows_that_do_not_add_up_cannot_be_inserted() {
    let t = TestApp::new().await;
    t.create_wallet("alice", "USD").await;
    let c = t.db.client().await;
    let insert = |kind: &str, hold: bool, amount: &str, fee: &str, before: &str, after: &str| {
        format!(
            "INSERT INTO transactions (wallet_id, type, amount, fee, balance_before, balance_after,
                                       status, tx_hash, created_at, updated_at, hold)
             SELECT id, '{kind}', {amount}, {fee}, {before}, {after}, '{}', 'k-' || random(),
                    now(), now(), {hold}
               FROM wallets LIMIT 1",
            if hold { "PENDING" } else { "COMPLETED" }
        )
    };
    for sql in [
        insert("DEPOSIT", false, "10", "0", "0", "11"),
        insert("DEPOSIT", false, "10", "1", "0", "10"),
        insert("WITHDRAW", false, "5", "0", "10", "6"),
        insert("WITHDRAW", false, "5", "1", "10", "5"),
        insert("REFUND", false, "5", "0", "0", "4"),
        // A hold moves nothing.
        insert("WITHDRAW", true, "5", "0", "10", "5"),
        // Only holds are ever anything but COMPLETED.
        insert("DEPOSIT", false, "10", "0", "0", "10").replace("'COMPLETED'", "'PENDING'"),
    ] {
        refused(&c, &sql).await;
    }
    for sql in [
        insert("DEPOSIT", false, "10", "0", "0", "10"),
        insert("WITHDRAW", false, "4", "1", "10", "5"),
        insert("REFUND", false, "4", "1", "5", "10"),
        insert("DEPOSIT", true, "3", "0", "10", "10"),
    ] {
        c.batch_execute(&sql).await.expect(&sql);
    }
}

/// A hold (a crypto movement on its way) moves on — confirmations, block, its chain hash
/// and signed bytes once, status forward — and nothing else about it changes.
#[tokio::test(flavor = "multi_thread")]
async fn holds_only_move_forward() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "BTC").await;
    let c = t.db.client().await;
    // A withdrawal waiting to be signed and a deposit confirming, as the service writes them.
    c.batch_execute(
        "INSERT INTO transactions (wallet_id, type, amount, fee, balance_before, balance_after,
                                   status, tx_hash, created_at, updated_at, hold, network,
                                   from_address, to_address, confirmations,
                                   required_confirmations, chain_tx_hash)
         SELECT id, 'WITHDRAW', 0.5, 0.0001, 1, 1, 'PENDING', 'payout', now(), now(), TRUE,
                'bitcoin', address, 'bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3',
                0, 6, NULL FROM wallets;
         INSERT INTO transactions (wallet_id, type, amount, fee, balance_before, balance_after,
                                   status, tx_hash, created_at, updated_at, hold, network,
                                   from_address, to_address, confirmations,
                                   required_confirmations, chain_tx_hash)
         SELECT id, 'DEPOSIT', 0.25, 0, 1, 1, 'PENDING', 'abc', now(), now(), TRUE,
                'bitcoin', 'bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4', address, 2, 6, 'abc'
           FROM wallets;",
    )
    .await
    .unwrap();
    let _ = w;
    for sql in [
        // Redirecting a payout, or freeing a deposit's key so it is credited again.
        "UPDATE transactions SET to_address = 'bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4' WHERE tx_hash = 'payout'",
        "UPDATE transactions SET chain_tx_hash = 'other' WHERE tx_hash = 'abc'",
        "UPDATE transactions SET from_address = 'x' WHERE tx_hash = 'abc'",
        "UPDATE transactions SET network = 'ethereum' WHERE tx_hash = 'abc'",
        "UPDATE transactions SET fee = 0 WHERE tx_hash = 'payout'",
        "UPDATE transactions SET amount = 0.50 WHERE tx_hash = 'payout'",
        "UPDATE transactions SET gas_price = 1 WHERE tx_hash = 'payout'",
        "UPDATE transactions SET gas_used = 1 WHERE tx_hash = 'payout'",
        "UPDATE transactions SET required_confirmations = 1 WHERE tx_hash = 'abc'",
        "UPDATE transactions SET description = 'x' WHERE tx_hash = 'payout'",
        "UPDATE transactions SET hold = FALSE WHERE tx_hash = 'abc'",
        // A reason explains a status change; it does not change on its own.
        "UPDATE transactions SET status_reason = 'x' WHERE tx_hash = 'abc'",
    ] {
        refused(&c, sql).await;
    }
    // Progress is allowed: confirmations, then the credit's status.
    c.batch_execute(
        "UPDATE transactions SET confirmations = 3, block_number = 7, updated_at = now()
          WHERE tx_hash = 'abc'",
    )
    .await
    .unwrap();
    // Signing: the hash and bytes are written once, PENDING -> PROCESSING.
    c.batch_execute(
        "UPDATE transactions SET status = 'PROCESSING', chain_tx_hash = 'h1', raw = 'beef'
          WHERE tx_hash = 'payout'",
    )
    .await
    .unwrap();
    for sql in [
        "UPDATE transactions SET chain_tx_hash = 'h2' WHERE tx_hash = 'payout'",
        "UPDATE transactions SET raw = 'cafe' WHERE tx_hash = 'payout'",
        "UPDATE transactions SET raw = NULL WHERE tx_hash = 'payout'",
        "UPDATE transactions SET status = 'PENDING' WHERE tx_hash = 'payout'",
        "UPDATE transactions SET status = 'PARKED' WHERE tx_hash = 'payout'",
    ] {
        refused(&c, sql).await;
    }
    c.batch_execute(
        "UPDATE transactions SET status = 'COMPLETED', confirmations = 6 WHERE tx_hash = 'payout';
         UPDATE transactions SET status = 'PARKED', status_reason = 'too fine' WHERE tx_hash = 'abc';",
    )
    .await
    .unwrap();
    // Nothing leaves COMPLETED or FAILED; a parked deposit may still be credited or failed.
    for sql in [
        "UPDATE transactions SET status = 'PROCESSING' WHERE tx_hash = 'payout'",
        "UPDATE transactions SET status = 'FAILED' WHERE tx_hash = 'payout'",
        "UPDATE transactions SET status = 'PENDING' WHERE tx_hash = 'abc'",
    ] {
        refused(&c, sql).await;
    }
    c.batch_execute(
        "UPDATE transactions SET status = 'FAILED', status_reason = 'refused by an operator'
          WHERE tx_hash = 'abc'",
    )
    .await
    .unwrap();
    refused(
        &c,
        "UPDATE transactions SET status = 'COMPLETED' WHERE tx_hash = 'abc'",
    )
    .await;
}
