//! The hot paths never scan the journal or the outbox, also once Postgres has switched
//! their prepared statements to generic plans (which it does after a few executions, and
//! which cannot use a partial index whose predicate is hidden behind a bind parameter —
//! a real defect the load benchmark found). Checked with the tables' own scan counters.

mod common;

use std::time::Duration;

use common::TestApp;

/// Sequential scans of a table so far, as the statistics collector counts them.
async fn seq_scans(pg: &tokio_postgres::Client, table: &str) -> i64 {
    // The counters are flushed by each backend at the end of its transaction and read
    // through a snapshot: clear it so the next read is fresh.
    pg.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    pg.query_one(
        "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1",
        &[&table],
    )
    .await
    .unwrap()
    .get(0)
}

/// Index entries read from the outbox's primary key (the feed is read by event id) so far.
async fn outbox_index_reads(pg: &tokio_postgres::Client) -> i64 {
    pg.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    pg.query_one(
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'events_pkey'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movements_and_the_listener_use_indexes_under_generic_plans() {
    let t = TestApp::new().await;
    let pg = t.db.client().await;
    // Every new session of this database plans prepared statements generically at once,
    // and enough rows that a scan would be the planner's honest choice only if no index
    // could serve the query.
    pg.batch_execute(&format!(
        "ALTER DATABASE {} SET plan_cache_mode = force_generic_plan",
        t.db.name
    ))
    .await
    .unwrap();
    let wallet = t.create_wallet("alice", "USD").await;
    pg.batch_execute(
        "INSERT INTO wallets (user_id, currency) SELECT 'filler-' || g, 'USD' FROM generate_series(1, 2000) g;
         INSERT INTO transactions (wallet_id, type, amount, balance_before, balance_after, status,
                                   tx_hash, created_at, updated_at)
         SELECT w.id, 'DEPOSIT', 1, 0, 1, 'COMPLETED', 'filler-' || w.id || '-' || g, now(), now()
           FROM wallets w, generate_series(1, 10) g WHERE w.user_id LIKE 'filler-%';
         INSERT INTO events (topic, type, subject_id, wallet_id, user_id)
         SELECT 'WALLET', 'WALLET_UPDATED', g, 1, 'filler' FROM generate_series(1, 20000) g;
         ANALYZE wallets; ANALYZE transactions; ANALYZE events;",
    )
    .await
    .unwrap();
    // A fresh instance: its pool and listener connect after the setting. The first
    // instance's sessions report their counters when they end (its listener read the
    // filler events): wait for that, so that the counts below are the new instance's.
    let restarted_at: String = pg
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0);
    let t = t.restart().await;
    let name = t.db.name.clone();
    common::wait_until(
        "the first instance's sessions end",
        Duration::from_secs(30),
        || {
            let (pg, name, restarted_at) = (&pg, &name, &restarted_at);
            async move {
                let older: i64 = pg
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                          WHERE datname = $1 AND pid <> pg_backend_pid()
                            AND backend_start < $2::text::timestamptz",
                        &[name, restarted_at],
                    )
                    .await
                    .unwrap()
                    .get(0);
                older == 0
            }
        },
    )
    .await;
    let (transactions_before, events_before, outbox_reads_before) = (
        seq_scans(&pg, "transactions").await,
        seq_scans(&pg, "events").await,
        outbox_index_reads(&pg).await,
    );

    // More than the five executions after which Postgres may go generic anyway.
    for n in 0..12 {
        t.deposit(&wallet, "1.00", &format!("dep-{n}")).await;
        t.withdraw(&t.operator(), &wallet, "0.50", &format!("wd-{n}"))
            .await;
    }
    // Replays and refusals take the same lookups.
    t.deposit(&wallet, "1.00", "dep-0").await;
    t.withdraw(&t.operator(), &wallet, "1000", "too-much").await;
    assert_eq!(t.balance(&wallet).await, "6.00");
    // A backend reports its scan counters at most once a second, and always when it
    // ends: end every session of the service (pool and listener), then read them.
    let TestApp {
        db, app, router, ..
    } = t;
    drop((app, router));
    let name = db.name.clone();
    common::wait_until(
        "the service's sessions end",
        Duration::from_secs(30),
        || {
            let (pg, name) = (&pg, &name);
            async move {
                let others: i64 = pg
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[name],
                    )
                    .await
                    .unwrap()
                    .get(0);
                others == 0
            }
        },
    )
    .await;
    assert_eq!(
        seq_scans(&pg, "transactions").await,
        transactions_before,
        "a movement scanned the journal"
    );
    assert_eq!(
        seq_scans(&pg, "events").await,
        events_before,
        "the event listener scanned the outbox"
    );
    // Nor walked its index from the start: each read starts at the listener's cursor
    // (reading the 20,000 older events even once would show here).
    let outbox_reads = outbox_index_reads(&pg).await - outbox_reads_before;
    assert!(
        outbox_reads < 2_000,
        "the event listener read {outbox_reads} outbox index entries for 26 movements"
    );
}
