//! Failure semantics: a movement's outcome is never misreported. Every answer is the
//! committed result, a refusal of a movement that did not and will not happen, or
//! OUTCOME_UNKNOWN — and then the same key tells (or makes) the truth. Work cancelled
//! with its request releases its locks at once.

mod common;

use std::time::Duration;

use common::{Options, TestApp, error_code, wait_until};
use serde_json::{Value, json};
use tokio::time::Instant;
use wallet::db::SessionLimits;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

async fn app_with_short_deadline() -> TestApp {
    TestApp::with(Options {
        request_timeout: REQUEST_TIMEOUT,
        ..Options::default()
    })
    .await
}

/// The three money mutations a client sends with a key of its own.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Deposit,
    Withdraw,
    CryptoWithdraw,
}

/// A wallet to move money on, funded, and the movement to send.
struct Case {
    kind: Kind,
    wallet: String,
    amount: &'static str,
}

impl Case {
    async fn new(t: &TestApp, kind: Kind) -> Case {
        match kind {
            Kind::Deposit | Kind::Withdraw => {
                let wallet = t.create_wallet("alice", "USD").await;
                t.deposit(&wallet, "100.00", "funding").await;
                Case {
                    kind,
                    wallet,
                    amount: "10.00",
                }
            }
            Kind::CryptoWithdraw => Case {
                kind,
                wallet: t.funded_btc("alice", "1.00000000").await.0,
                amount: "0.10000000",
            },
        }
    }

    /// Sends the movement under `key`; returns the HTTP status and the JSON body.
    async fn send(&self, t: &TestApp, key: &str) -> (axum::http::StatusCode, Value) {
        let (query, vars) = match self.kind {
            Kind::Deposit => (
                common::DEPOSIT,
                json!({"w": self.wallet, "a": self.amount, "k": key}),
            ),
            Kind::Withdraw => (
                common::WITHDRAW,
                json!({"w": self.wallet, "a": self.amount, "k": key}),
            ),
            Kind::CryptoWithdraw => (
                common::CRYPTO_WITHDRAW,
                json!({"w": self.wallet, "to": common::OUTSIDE_BTC, "a": self.amount, "k": key}),
            ),
        };
        let token = match self.kind {
            Kind::Deposit => t.operator(),
            _ => t.user("alice"),
        };
        let req = axum::http::Request::post("/graphql")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::from(
                json!({"query": query, "variables": vars}).to_string(),
            ))
            .unwrap();
        let (status, _, body) = t.send(req).await;
        (status, body)
    }

    /// What the movement does to the wallet's available balance.
    fn effect(&self) -> &'static str {
        match self.kind {
            Kind::Deposit => "10.00",
            Kind::Withdraw => "-10.00",
            // Amount + the simulated network's fee, locked at once.
            Kind::CryptoWithdraw => "-0.10001000",
        }
    }
}

async fn available(t: &TestApp, wallet: &str) -> rust_decimal::Decimal {
    t.ok(
        &t.operator(),
        "query($w: ID!) { wallet(id: $w) { availableBalance } }",
        json!({"w": wallet}),
    )
    .await["wallet"]["availableBalance"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Rows (movements and postings) recorded under a client's key.
async fn rows_with_key(t: &TestApp, key: &str) -> i64 {
    t.db.client()
        .await
        .query_one(
            "SELECT count(*) FROM transactions WHERE tx_hash = $1 AND hold_id IS NULL",
            &[&key],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until no session of this test's database is working or waiting, but ours.
async fn quiet(t: &TestApp) {
    let pg = t.db.client().await;
    let db = t.db.name.clone();
    wait_until("the database is quiet", Duration::from_secs(20), || {
        let (pg, db) = (&pg, &db);
        async move {
            let busy: i64 = pg
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = $1 AND pid <> pg_backend_pid()
                        AND (state IN ('active', 'idle in transaction')
                             OR wait_event_type = 'Lock')",
                    &[db],
                )
                .await
                .unwrap()
                .get(0);
            busy == 0
        }
    })
    .await;
}

/// Classifies an answer: the committed movement's id, a definite refusal, or unknown.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Committed(String),
    Refused(String),
    Unknown,
}

fn answer(status: axum::http::StatusCode, body: &Value) -> Answer {
    assert!(
        body.is_object(),
        "every answer is a GraphQL response, never a bare status ({status})"
    );
    if let Some(errors) = body.get("errors") {
        let code = errors[0]["extensions"]["code"].as_str().unwrap_or_default();
        return if code == "OUTCOME_UNKNOWN" {
            Answer::Unknown
        } else {
            assert!(
                ["UNAVAILABLE", "INSUFFICIENT_FUNDS"].contains(&code),
                "unexpected refusal {body}"
            );
            Answer::Refused(code.to_owned())
        };
    }
    let data = &body["data"];
    let field = data.as_object().unwrap().values().next().unwrap();
    Answer::Committed(field["id"].as_str().unwrap().to_owned())
}

/// Holds the wallet's row lock from another session for longer than the request may take
/// (the reproduction: `SELECT … FOR UPDATE` in psql). The answer comes by the deadline,
/// and is the truth: a refusal commits nothing even after the lock is gone, and the same
/// key afterwards moves the money exactly once.
async fn lock_held_past_the_deadline(kind: Kind) {
    let t = app_with_short_deadline().await;
    let case = Case::new(&t, kind).await;
    let before = available(&t, &case.wallet).await;
    let mut holder = t.db.client().await;
    let lock = holder.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE",
        &[&common::db_id(&case.wallet)],
    )
    .await
    .unwrap();

    let started = Instant::now();
    let (status, body) = case.send(&t, "held-1").await;
    let took = started.elapsed();
    assert!(
        took < REQUEST_TIMEOUT + Duration::from_millis(1500),
        "answered by the deadline, took {took:?}: {body}"
    );
    let first = answer(status, &body);
    // The lock was held throughout: nothing could have committed. The lock timeout (a
    // quarter of the request timeout) ends the wait while the request can still say so:
    // a definite refusal.
    assert_eq!(first, Answer::Refused("UNAVAILABLE".into()), "{body}");

    tokio::time::sleep(REQUEST_TIMEOUT.saturating_sub(took) + Duration::from_millis(500)).await;
    lock.rollback().await.unwrap();
    quiet(&t).await;
    match &first {
        Answer::Refused(code) => {
            assert_eq!(code, "UNAVAILABLE", "{body}");
            assert_eq!(
                rows_with_key(&t, "held-1").await,
                0,
                "a refusal never commits later"
            );
            assert_eq!(t.by_key(&case.wallet, "held-1").await, Value::Null);
            assert_eq!(available(&t, &case.wallet).await, before);
        }
        Answer::Unknown => {}
        Answer::Committed(_) => unreachable!(),
    }

    // The same key again, now that the wallet is free: applied, once.
    let (status, again) = case.send(&t, "held-1").await;
    let Answer::Committed(id) = answer(status, &again) else {
        panic!("with the lock gone the movement goes through: {again}");
    };
    assert_eq!(t.by_key(&case.wallet, "held-1").await["id"], id.as_str());
    assert_eq!(rows_with_key(&t, "held-1").await, 1);
    let effect: rust_decimal::Decimal = case.effect().parse().unwrap();
    assert_eq!(available(&t, &case.wallet).await, before + effect);
    t.assert_chain(&case.wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_behind_a_held_lock_is_answered_truthfully() {
    lock_held_past_the_deadline(Kind::Deposit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_behind_a_held_lock_is_answered_truthfully() {
    lock_held_past_the_deadline(Kind::Withdraw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crypto_withdrawal_behind_a_held_lock_is_answered_truthfully() {
    lock_held_past_the_deadline(Kind::CryptoWithdraw).await;
}

/// A movement still being written when the deadline passes (its journal insert made slow
/// by a trigger): the answer is OUTCOME_UNKNOWN, the movement commits afterwards, and
/// both `transactionByKey` and a retry with the same key return it — applied once.
async fn slow_commit(kind: Kind) {
    let t = app_with_short_deadline().await;
    let case = Case::new(&t, kind).await;
    let before = available(&t, &case.wallet).await;
    t.db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON transactions
               FOR EACH ROW WHEN (NEW.tx_hash = 'slow-1' AND NEW.hold_id IS NULL)
               EXECUTE FUNCTION slow();",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (status, body) = case.send(&t, "slow-1").await;
    assert!(started.elapsed() < REQUEST_TIMEOUT + Duration::from_millis(1500));
    assert_eq!(answer(status, &body), Answer::Unknown, "{body}");
    assert_eq!(error_code(&body), "OUTCOME_UNKNOWN");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("same key"),
        "{body}"
    );

    // The work goes on by itself and commits.
    let wallet = case.wallet.clone();
    wait_until("the movement commits", Duration::from_secs(10), || {
        let (t, wallet) = (&t, &wallet);
        async move { t.by_key(wallet, "slow-1").await.is_object() }
    })
    .await;
    let found = t.by_key(&case.wallet, "slow-1").await;
    let (status, again) = case.send(&t, "slow-1").await;
    assert_eq!(
        answer(status, &again),
        Answer::Committed(found["id"].as_str().unwrap().to_owned()),
        "the retry returns the original"
    );
    assert_eq!(rows_with_key(&t, "slow-1").await, 1);
    let effect: rust_decimal::Decimal = case.effect().parse().unwrap();
    assert_eq!(available(&t, &case.wallet).await, before + effect);
    t.assert_chain(&case.wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_committing_after_the_deadline_is_outcome_unknown() {
    slow_commit(Kind::Deposit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_committing_after_the_deadline_is_outcome_unknown() {
    slow_commit(Kind::Withdraw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crypto_withdrawal_committing_after_the_deadline_is_outcome_unknown() {
    slow_commit(Kind::CryptoWithdraw).await;
}

/// A batch blocked on a wallet lock is abandoned (its task aborted, as on shutdown or
/// when the committer stops): its connection is closed, not parked in the pool holding
/// the lock it was waiting for. Neither Postgres' lock timeout nor its idle-in-transaction
/// timeout (both long here) is what releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_work_releases_its_locks_at_once() {
    let t = TestApp::with(Options {
        session_limits: SessionLimits {
            lock_timeout: Duration::from_secs(60),
            statement_timeout: Duration::from_secs(120),
            idle_in_transaction_timeout: Duration::from_secs(120),
        },
        request_timeout: Duration::from_secs(300),
        ..Options::default()
    })
    .await;
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "5.00", "first").await;
    let id = common::db_id(&wallet);
    let mut holder = t.db.client().await;
    let lock = holder.transaction().await.unwrap();
    lock.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();

    let deposit = {
        let (router, token) = (t.router.clone(), t.operator());
        let w = wallet.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let body = json!({"query": common::DEPOSIT, "variables": {"w": w, "a": "1.00", "k": "abandoned"}});
            let req = axum::http::Request::post("/graphql")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let resp = router.oneshot(req).await.unwrap();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        })
    };
    common::wait_for_lock_waiters(&t, 1).await;
    let pg = t.db.client().await;
    let db = t.db.name.clone();
    t.app.state.committer.stop();
    lock.rollback().await.unwrap();

    // The lock is free again at once: nobody sits on it idle in a transaction.
    wait_until("the wallet can be locked", Duration::from_secs(3), || {
        let (pg, id) = (&pg, id);
        async move {
            pg.query_opt(
                "SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE NOWAIT",
                &[&id],
            )
            .await
            .is_ok()
        }
    })
    .await;
    // The caller still gets the truth: its movement, applied once.
    let body = deposit.await.unwrap();
    assert_eq!(
        body["data"]["deposit"]["idempotencyKey"], "abandoned",
        "{body}"
    );
    // And nothing was left behind holding a transaction open.
    let idle_in_transaction: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = $1 AND state = 'idle in transaction'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idle_in_transaction, 0);
    assert_eq!(t.balance(&wallet).await, "6.00");
    assert_eq!(t.assert_chain(&wallet).await, 2);
}

/// A request naming a wallet its caller may not touch is refused without waiting for
/// (or taking) that wallet's lock — in a batch and on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_elses_wallet_is_refused_without_touching_its_lock() {
    let t = TestApp::new().await;
    let bobs = t.create_wallet("bob", "USD").await;
    t.deposit(&bobs, "50.00", "bob-funding").await;
    let mut holder = t.db.client().await;
    let lock = holder.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE",
        &[&common::db_id(&bobs)],
    )
    .await
    .unwrap();
    for round in ["batched", "alone"] {
        if round == "alone" {
            t.app.state.committer.stop();
        }
        let started = Instant::now();
        let body = t
            .withdraw(&t.user("mallory"), &bobs, "1.00", &format!("steal-{round}"))
            .await;
        assert_eq!(error_code(&body), "NOT_FOUND", "{round}: {body}");
        // The lock timeout is 5 s: an answer well before it did not wait for the lock.
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{round}: waited {:?} for a lock it must not take",
            started.elapsed()
        );
    }
    lock.rollback().await.unwrap();
    assert_eq!(t.balance(&bobs).await, "50.00");
}

/// The pool never takes back a connection whose transaction was cut off: a future
/// dropped inside a transaction (a cancelled task) closes its connection, and Postgres
/// rolls the transaction back and frees its locks at once — not when the pool happens to
/// hand that connection out again, nor when the idle-in-transaction timeout (long here)
/// ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_inside_a_transaction_is_closed() {
    let t = TestApp::with(Options {
        session_limits: SessionLimits {
            idle_in_transaction_timeout: Duration::from_secs(120),
            ..SessionLimits::default()
        },
        ..Options::default()
    })
    .await;
    let wallet = t.create_wallet("alice", "USD").await;
    let id = common::db_id(&wallet);
    let pool = t.app.state.pool.clone();
    let (locked_tx, locked) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        use diesel_async::AsyncConnection;
        let mut conn = pool.get().await.unwrap();
        conn.transaction(async |tx| {
            wallet::ledger::store::lock_wallet(tx, &wallet::ledger::Scope::All, id).await?;
            let _ = locked_tx.send(());
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, wallet::ledger::LedgerError>(())
        })
        .await
    });
    locked.await.unwrap();
    let pg = t.db.client().await;
    let try_lock = || async {
        pg.query_opt(
            "SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE NOWAIT",
            &[&id],
        )
        .await
        .is_ok()
    };
    assert!(!try_lock().await, "the task holds the wallet");
    task.abort();
    let _ = task.await;
    wait_until("the lock is released", Duration::from_secs(3), try_lock).await;
}

/// Every pooled session runs under the configured limits (the lock timeout kept within a
/// quarter of the request timeout).
#[tokio::test]
async fn pooled_sessions_run_under_their_limits() {
    let t = TestApp::with(Options {
        request_timeout: Duration::from_secs(8),
        session_limits: SessionLimits {
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_millis(12_345),
            idle_in_transaction_timeout: Duration::from_millis(6_789),
        },
        ..Options::default()
    })
    .await;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        setting: String,
    }
    let mut conn = t.app.state.pool.get().await.unwrap();
    let mut show = async |name: &str| {
        diesel::sql_query(format!("SELECT current_setting('{name}') AS setting"))
            .get_result::<Setting>(&mut conn)
            .await
            .unwrap()
            .setting
    };
    assert_eq!(show("lock_timeout").await, "2s");
    assert_eq!(show("statement_timeout").await, "12345ms");
    assert_eq!(show("idle_in_transaction_session_timeout").await, "6789ms");
}

/// A batch blocked on one wallet (locked elsewhere) holds up that wallet's requests only:
/// movements on other wallets are committed meanwhile, by batches of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_wallet_does_not_hold_up_the_others() {
    let t = TestApp::with(Options {
        session_limits: SessionLimits {
            lock_timeout: Duration::from_secs(60),
            ..SessionLimits::default()
        },
        request_timeout: Duration::from_secs(300),
        ..Options::default()
    })
    .await;
    let blocked = t.create_wallet("alice", "USD").await;
    let free = t.create_wallet("bob", "USD").await;
    let mut holder = t.db.client().await;
    let lock = holder.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE",
        &[&common::db_id(&blocked)],
    )
    .await
    .unwrap();
    let waiting = {
        let (router, token, w) = (t.router.clone(), t.operator(), blocked.clone());
        tokio::spawn(async move {
            common::gql_to(
                &router,
                Some(&token),
                common::DEPOSIT,
                json!({"w": w, "a": "1.00", "k": "blocked"}),
            )
            .await
        })
    };
    common::wait_for_lock_waiters(&t, 1).await;
    for n in 0..20 {
        let body = t.deposit(&free, "1.00", &format!("free-{n}")).await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    assert!(
        !waiting.is_finished(),
        "still blocked: the others did not wait for it"
    );
    assert_eq!(t.balance(&free).await, "20.00");
    lock.rollback().await.unwrap();
    let body = waiting.await.unwrap();
    assert_eq!(
        body["data"]["deposit"]["idempotencyKey"], "blocked",
        "{body}"
    );
    assert_eq!(t.balance(&blocked).await, "1.00");
}
