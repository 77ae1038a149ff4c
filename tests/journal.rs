//! The journal is append-only in the database itself, not only in code.

mod common;

use common::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn journal_rows_cannot_be_rewritten_or_deleted() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "10.00", "d1").await;
    let c = t.db.client().await;
    for sql in [
        "UPDATE transactions SET amount = 999",
        "UPDATE transactions SET balance_after = 999",
        "UPDATE transactions SET balance_before = 1",
        "UPDATE transactions SET wallet_id = wallet_id + 1",
        "UPDATE transactions SET tx_hash = 'other'",
        "UPDATE transactions SET created_at = now() - interval '1 day'",
        "DELETE FROM transactions",
        "TRUNCATE transactions CASCADE",
    ] {
        let err = c.batch_execute(sql).await.expect_err(sql);
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{sql}: {err:?}"
        );
    }
    // Status may move on (e.g. a crypto withdrawal completing).
    c.batch_execute("UPDATE transactions SET status = 'COMPLETED', updated_at = now()")
        .await
        .unwrap();
    // Balances can never go negative, amounts never zero, even by hand.
    let err = c
        .batch_execute("UPDATE wallets SET balance = -1")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("check"), "{err:?}");
    assert_eq!(t.balance(&w).await, "10.00");
    assert_eq!(t.assert_chain(&w).await, 1);
}
