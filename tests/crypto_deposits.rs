//! Crypto deposits through the simulated chain: confirmations, address checks and
//! exactly-once crediting, also when calls race.

mod common;

use common::{TestApp, error_code};
use serde_json::{Value, json};
use wallet::chain::SimulatedChain;

const CREATE: &str = "mutation($c: String!) { createWallet(input: {currency: $c}) { id address } }";
const INCOMING: &str = "mutation($n: String!, $to: String!, $a: Decimal!) {
  simulateIncomingTransfer(input: {network: $n, toAddress: $to, amount: $a}) {
    txHash network fromAddress toAddress amount status blockNumber confirmations } }";
const MINE: &str =
    "mutation($n: String!, $c: Int!) { mineBlocks(input: {network: $n, count: $c}) }";
const PROCESS: &str = "mutation($w: ID!, $h: String!) {
  processCryptoDeposit(input: {walletId: $w, txHash: $h}) {
    id type amount balanceBefore balanceAfter status idempotencyKey network fromAddress toAddress
    confirmations requiredConfirmations blockNumber } }";

async fn crypto_wallet(t: &TestApp, user: &str, currency: &str) -> (String, String) {
    let w = t.ok(&t.user(user), CREATE, json!({"c": currency})).await["createWallet"].clone();
    (
        w["id"].as_str().unwrap().to_owned(),
        w["address"].as_str().unwrap().to_owned(),
    )
}

/// A transfer from outside (the simulator's mutations are the operator's).
async fn incoming(t: &TestApp, network: &str, to: &str, amount: &str) -> Value {
    t.ok(
        &t.operator(),
        INCOMING,
        json!({"n": network, "to": to, "a": amount}),
    )
    .await["simulateIncomingTransfer"]
        .clone()
}

async fn mine(t: &TestApp, network: &str, count: i32) -> i64 {
    t.ok(&t.operator(), MINE, json!({"n": network, "c": count}))
        .await["mineBlocks"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn a_deposit_is_credited_once_it_has_its_confirmations() {
    let t = TestApp::new().await;
    let alice = t.user("alice");
    let (wallet, address) = crypto_wallet(&t, "alice", "BTC").await;
    let transfer = incoming(&t, "bitcoin", &address, "0.12345678").await;
    assert_eq!(transfer["status"], "PENDING");
    assert_eq!(transfer["confirmations"], 0);
    assert_eq!(transfer["toAddress"], address.as_str());
    let hash = transfer["txHash"].as_str().unwrap().to_owned();

    // Not mined, then too shallow: refused with the counts, nothing credited.
    for (blocks, current) in [(0, 0), (1, 1), (4, 5)] {
        if blocks > 0 {
            mine(&t, "bitcoin", blocks).await;
        }
        let body = t
            .gql(Some(&alice), PROCESS, json!({"w": wallet, "h": hash}))
            .await;
        assert_eq!(error_code(&body), "INSUFFICIENT_CONFIRMATIONS", "{body}");
        let ext = &body["errors"][0]["extensions"];
        assert_eq!(
            (ext["current"].as_i64(), ext["required"].as_i64()),
            (Some(current), Some(6))
        );
        assert_eq!(t.balance(&wallet).await, "0.00000000");
    }

    mine(&t, "bitcoin", 1).await;
    let credited =
        t.ok(&alice, PROCESS, json!({"w": wallet, "h": hash})).await["processCryptoDeposit"]
            .clone();
    assert_eq!(credited["type"], "DEPOSIT");
    assert_eq!(credited["status"], "COMPLETED");
    assert_eq!(credited["amount"], "0.12345678");
    assert_eq!(credited["balanceBefore"], "0.00000000");
    assert_eq!(credited["balanceAfter"], "0.12345678");
    assert_eq!(credited["idempotencyKey"], hash.as_str());
    assert_eq!(credited["network"], "bitcoin");
    assert_eq!(credited["toAddress"], address.as_str());
    assert_eq!(credited["fromAddress"], transfer["fromAddress"]);
    assert_eq!(credited["confirmations"], 6);
    assert_eq!(credited["requiredConfirmations"], 6);
    assert_eq!(credited["blockNumber"], "1");

    // Again, by the owner or an operator: the same row, no second credit.
    let again = t
        .ok(&t.operator(), PROCESS, json!({"w": wallet, "h": hash}))
        .await["processCryptoDeposit"]
        .clone();
    assert_eq!(again["id"], credited["id"]);
    assert_eq!(t.balance(&wallet).await, "0.12345678");
    assert_eq!(t.assert_chain(&wallet).await, 2, "hold and credit");
}

#[tokio::test]
async fn wrong_address_unknown_hash_and_failed_transfers_are_refused() {
    let t = TestApp::new().await;
    let alice = t.user("alice");
    let bob = t.user("bob");
    let (alices, alices_address) = crypto_wallet(&t, "alice", "ETH").await;
    let (bobs, _) = crypto_wallet(&t, "bob", "ETH").await;
    let transfer = incoming(&t, "ethereum", &alices_address, "1.5").await;
    let hash = transfer["txHash"].as_str().unwrap().to_owned();
    assert!(hash.starts_with("0x") && hash.len() == 66);
    mine(&t, "ethereum", 6).await;

    // Bob claims Alice's transfer for his wallet.
    let body = t
        .gql(Some(&bob), PROCESS, json!({"w": bobs, "h": hash}))
        .await;
    assert_eq!(error_code(&body), "ADDRESS_MISMATCH");
    // Alice cannot process into Bob's wallet at all.
    let body = t
        .gql(Some(&alice), PROCESS, json!({"w": bobs, "h": hash}))
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    // No such transaction.
    let unknown = format!("0x{}", "ab".repeat(32));
    let body = t
        .gql(Some(&alice), PROCESS, json!({"w": alices, "h": unknown}))
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    // A fiat wallet has no chain deposits.
    let usd = t.create_wallet("alice", "USD").await;
    let body = t
        .gql(Some(&alice), PROCESS, json!({"w": usd, "h": hash}))
        .await;
    assert_eq!(error_code(&body), "CURRENCY_NOT_SUPPORTED");
    for w in [&alices, &bobs] {
        assert_eq!(t.balance(w).await, "0.000000000000000000");
    }

    // A transfer that fails on chain is never credited.
    let pg = t.db.client().await;
    pg.execute(
        "INSERT INTO sim_failing_addresses (network, address) VALUES ('ethereum', $1)",
        &[&alices_address],
    )
    .await
    .unwrap();
    let failing = incoming(&t, "ethereum", &alices_address, "2").await;
    mine(&t, "ethereum", 6).await;
    let body = t
        .gql(
            Some(&alice),
            PROCESS,
            json!({"w": alices, "h": failing["txHash"]}),
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");

    // The good one still credits.
    t.ok(&alice, PROCESS, json!({"w": alices, "h": hash})).await;
    assert_eq!(t.balance(&alices).await, "1.500000000000000000");
}

#[tokio::test]
async fn simulated_transfers_validate_their_input() {
    let t = TestApp::new().await;
    let (_, address) = crypto_wallet(&t, "alice", "BTC").await;
    let cases = [
        (
            json!({"n": "bitcoin", "to": "bc1qnotanaddress", "a": "1"}),
            "INVALID_ADDRESS",
        ),
        // An ethereum address on the bitcoin network.
        (
            json!({"n": "bitcoin", "to": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "a": "1"}),
            "INVALID_ADDRESS",
        ),
        // EIP-55 checksum broken by one letter's case.
        (
            json!({"n": "ethereum", "to": "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266", "a": "1"}),
            "INVALID_ADDRESS",
        ),
        (
            json!({"n": "bitcoin", "to": address, "a": "0.000000001"}),
            "INVALID_AMOUNT",
        ),
        (
            json!({"n": "bitcoin", "to": address, "a": "0"}),
            "INVALID_AMOUNT",
        ),
        (
            json!({"n": "dogecoin", "to": address, "a": "1"}),
            "BAD_USER_INPUT",
        ),
    ];
    let operator = t.operator();
    for (vars, code) in cases {
        let body = t.gql(Some(&operator), INCOMING, vars.clone()).await;
        assert_eq!(error_code(&body), code, "{vars}: {body}");
    }
    for count in [0, 1001] {
        let body = t
            .gql(Some(&operator), MINE, json!({"n": "bitcoin", "c": count}))
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT");
    }
    let body = t.gql(None, MINE, json!({"n": "bitcoin", "c": 1})).await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_process_calls_credit_once() {
    let t = TestApp::with(common::Options {
        pool_size: 20,
        ..Default::default()
    })
    .await;
    let alice = t.user("alice");
    let (wallet, address) = crypto_wallet(&t, "alice", "ETH").await;
    let transfer = incoming(&t, "ethereum", &address, "0.25").await;
    mine(&t, "ethereum", 6).await;
    let calls = (0..20).map(|_| {
        let (t, alice) = (&t, &alice);
        let vars = json!({"w": wallet, "h": transfer["txHash"]});
        async move { t.ok(alice, PROCESS, vars).await["processCryptoDeposit"]["id"].clone() }
    });
    let ids = futures_util::future::join_all(calls).await;
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(t.balance(&wallet).await, "0.250000000000000000");
    assert_eq!(t.assert_chain(&wallet).await, 2, "hold and credit");
}

/// The block timer runs in every process; one block per interval is mined between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_block_per_interval_however_many_timers() {
    let t = TestApp::new().await;
    let (other, _) = t.sibling().await;
    let chains = [
        SimulatedChain::new(t.app.state.pool.clone()),
        SimulatedChain::new(other.state.pool.clone()),
    ];
    let pg = t.db.client().await;
    pg.execute(
        "UPDATE sim_chains SET mined_at = now() - interval '1 hour'",
        &[],
    )
    .await
    .unwrap();
    let attempts = (0..10).map(|i| {
        let chain = chains[i % 2].clone();
        async move {
            chain
                .mine_if_due("bitcoin", std::time::Duration::from_secs(60))
                .await
                .unwrap()
        }
    });
    let mined: Vec<Option<i64>> = futures_util::future::join_all(attempts).await;
    assert_eq!(
        mined.iter().flatten().collect::<Vec<_>>(),
        vec![&1],
        "{mined:?}"
    );
}

const RECONCILE: &str = "mutation($w: ID!) { reconcileWallet(input: {walletId: $w,
    startTime: \"2020-01-01T00:00:00Z\", endTime: \"2099-01-01T00:00:00Z\"}) {
    source status systemBalance externalBalance difference unmatchedTransactions mismatchReason } }";

#[tokio::test]
async fn crypto_wallets_reconcile_against_the_chain() {
    let t = TestApp::new().await;
    let alice = t.user("alice");
    let op = t.operator();
    let (wallet, address) = crypto_wallet(&t, "alice", "BTC").await;
    for amount in ["0.5", "0.25"] {
        let transfer = incoming(&t, "bitcoin", &address, amount).await;
        mine(&t, "bitcoin", 6).await;
        t.ok(
            &alice,
            PROCESS,
            json!({"w": wallet, "h": transfer["txHash"]}),
        )
        .await;
    }
    let matched = t.ok(&op, RECONCILE, json!({"w": wallet})).await["reconcileWallet"].clone();
    assert_eq!(matched["source"], "CHAIN");
    assert_eq!(matched["status"], "MATCHED", "{matched}");
    assert_eq!(matched["systemBalance"], "0.75000000");
    assert_eq!(matched["externalBalance"], "0.75000000");
    assert_eq!(matched["difference"], "0.00000000");
    assert_eq!(matched["unmatchedTransactions"], json!([]));
    assert_eq!(matched["mismatchReason"], json!(null));

    // A transfer the ledger does not know (never processed): listed, and the balances differ.
    let stray = incoming(&t, "bitcoin", &address, "0.1").await;
    mine(&t, "bitcoin", 1).await;
    let mismatch = t.ok(&op, RECONCILE, json!({"w": wallet})).await["reconcileWallet"].clone();
    assert_eq!(mismatch["status"], "MISMATCH");
    assert_eq!(mismatch["externalBalance"], "0.85000000");
    assert_eq!(mismatch["systemBalance"], "0.75000000");
    assert_eq!(mismatch["difference"], "0.10000000");
    assert_eq!(mismatch["unmatchedTransactions"], json!([stray["txHash"]]));
    let reason = mismatch["mismatchReason"].as_str().unwrap();
    assert!(reason.contains("not in the ledger"), "{reason}");

    // Reconciling is the back office's call; fiat still needs an external balance.
    let body = t.gql(Some(&alice), RECONCILE, json!({"w": wallet})).await;
    assert_eq!(error_code(&body), "FORBIDDEN");
    let usd = t.create_wallet("alice", "USD").await;
    let body = t.gql(Some(&op), RECONCILE, json!({"w": usd})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_reconciliation_is_incremental_and_claimed_once() {
    use wallet::chain::reconciliation::{ScheduledRun, claim_job, reconcile_all_crypto};
    let t = TestApp::new().await;
    let alice = t.user("alice");
    let (a, a_address) = crypto_wallet(&t, "alice", "BTC").await;
    let (_b, b_address) = crypto_wallet(&t, "bob", "ETH").await;
    t.create_wallet("carol", "USD").await; // fiat: not part of it
    let first = incoming(&t, "bitcoin", &a_address, "1").await;
    mine(&t, "bitcoin", 6).await;
    t.ok(&alice, PROCESS, json!({"w": a, "h": first["txHash"]}))
        .await;
    // Bob's transfer reaches the chain but is never credited.
    incoming(&t, "ethereum", &b_address, "3").await;
    mine(&t, "ethereum", 1).await;

    let chain = t.app.state.simulator.clone().unwrap();
    let currencies = t.app.state.currencies.clone();
    let run = reconcile_all_crypto(&t.app.state.pool, &currencies, &chain)
        .await
        .unwrap();
    assert_eq!(
        run,
        ScheduledRun {
            reconciled: 2,
            mismatched: 1,
            failed: 0
        }
    );

    // Alice gets a second deposit; the next run for her starts at the checkpoint and sees
    // only the new transfer, yet balances still agree.
    let second = incoming(&t, "bitcoin", &a_address, "0.5").await;
    mine(&t, "bitcoin", 6).await;
    t.ok(&alice, PROCESS, json!({"w": a, "h": second["txHash"]}))
        .await;
    reconcile_all_crypto(&t.app.state.pool, &currencies, &chain)
        .await
        .unwrap();
    let pg = t.db.client().await;
    let rows = pg
        .query(
            "SELECT r.status, r.start_time::text, r.end_time::text, r.chain_height, r.notes,
                    r.external_balance::text, r.system_balance::text
               FROM reconciliations r JOIN wallets w ON w.id = r.wallet_id
              WHERE w.user_id = 'alice' ORDER BY r.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let (one, two) = (&rows[0], &rows[1]);
    assert_eq!(one.get::<_, String>(0), "MATCHED");
    assert_eq!(two.get::<_, String>(0), "MATCHED");
    let one_end: String = one.get(2);
    let two_start: String = two.get(1);
    assert_eq!(
        two_start, one_end,
        "the second run starts where the first ended"
    );
    assert!(two.get::<_, i64>(3) > one.get::<_, i64>(3));
    let notes: String = two.get(4);
    assert!(notes.contains(": 1 settled transfer(s)"), "{notes}");
    assert_eq!(two.get::<_, String>(5), "1.50000000");
    assert_eq!(two.get::<_, String>(6), "1.50000000");

    // However many processes run the timer, one claims each interval.
    let claims = (0..8).map(|_| {
        let pool = t.app.state.pool.clone();
        async move {
            let mut c = pool.get().await.unwrap();
            claim_job(
                &mut c,
                "chain_reconciliation",
                std::time::Duration::from_secs(3600),
            )
            .await
            .unwrap()
        }
    });
    let won = futures_util::future::join_all(claims).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
}

const TRANSACTION: &str = "query($id: ID!) { node(id: $id) { ... on Transaction {
  status isHold confirmations balanceBefore balanceAfter
  settlements { type amount balanceBefore balanceAfter settles { id } } } } }";

/// The id of the journal row keyed by a chain hash (the deposit's hold).
async fn hold_id(t: &TestApp, hash: &str) -> Option<String> {
    let pg = t.db.client().await;
    let row = pg
        .query_opt(
            "SELECT id FROM transactions WHERE tx_hash = $1 AND hold",
            &[&hash],
        )
        .await
        .unwrap()?;
    let id: i64 = row.get(0);
    Some(
        wallet::graphql::ids::encode_id(wallet::graphql::ids::NodeType::Transaction, id)
            .to_string(),
    )
}

#[tokio::test]
async fn the_watcher_finds_follows_and_credits_deposits_by_itself() {
    let t = TestApp::new().await;
    let alice = t.user("alice");
    let (wallet, address) = crypto_wallet(&t, "alice", "ETH").await;
    let worker = t.app.chain_worker().unwrap();
    let transfer = incoming(&t, "ethereum", &address, "2.5").await;
    let hash = transfer["txHash"].as_str().unwrap();

    // Seen while still pending: journaled as a hold, nothing credited.
    worker.pass().await.unwrap();
    let id = hold_id(&t, hash)
        .await
        .expect("the watcher journaled the deposit");
    let hold = t.ok(&t.operator(), TRANSACTION, json!({"id": id})).await["node"].clone();
    assert_eq!(
        (
            hold["status"].as_str(),
            hold["isHold"].as_bool(),
            hold["confirmations"].as_i64()
        ),
        (Some("PENDING"), Some(true), Some(0))
    );
    assert_eq!(t.balance(&wallet).await, "0.000000000000000000");

    for (blocks, confirmations) in [(1, 1), (4, 5)] {
        mine(&t, "ethereum", blocks).await;
        worker.pass().await.unwrap();
        let hold = t.ok(&t.operator(), TRANSACTION, json!({"id": id})).await["node"].clone();
        assert_eq!(hold["confirmations"], confirmations);
        assert_eq!(hold["status"], "PENDING");
        assert_eq!(t.balance(&wallet).await, "0.000000000000000000");
    }
    mine(&t, "ethereum", 1).await;
    let report = worker.pass().await.unwrap();
    let credited: usize = report.deposits.iter().map(|(_, s)| s.credited).sum();
    assert_eq!(credited, 1);
    let hold = t.ok(&t.operator(), TRANSACTION, json!({"id": id})).await["node"].clone();
    assert_eq!(hold["status"], "COMPLETED");
    assert_eq!(hold["settlements"][0]["type"], "DEPOSIT");
    assert_eq!(
        hold["settlements"][0]["balanceAfter"],
        "2.500000000000000000"
    );
    assert_eq!(hold["settlements"][0]["settles"]["id"], id.as_str());
    assert_eq!(t.balance(&wallet).await, "2.500000000000000000");

    // More blocks and passes, and the client asking too: still one credit.
    mine(&t, "ethereum", 3).await;
    worker.pass().await.unwrap();
    let asked =
        t.ok(&alice, PROCESS, json!({"w": wallet, "h": hash})).await["processCryptoDeposit"]
            .clone();
    assert_eq!(asked["balanceAfter"], "2.500000000000000000");
    assert_eq!(t.balance(&wallet).await, "2.500000000000000000");
    assert_eq!(t.assert_chain(&wallet).await, 2);
}

#[tokio::test]
async fn the_watcher_ignores_other_addresses_and_fails_failed_transfers() {
    let t = TestApp::new().await;
    let (wallet, address) = crypto_wallet(&t, "alice", "BTC").await;
    let worker = t.app.chain_worker().unwrap();
    // To an address that is not ours.
    let stranger = incoming(
        &t,
        "bitcoin",
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
        "1",
    )
    .await;
    // To ours, but failing on chain.
    let pg = t.db.client().await;
    pg.execute(
        "INSERT INTO sim_failing_addresses (network, address) VALUES ('bitcoin', $1)",
        &[&address],
    )
    .await
    .unwrap();
    let failing = incoming(&t, "bitcoin", &address, "1").await;
    worker.pass().await.unwrap();
    mine(&t, "bitcoin", 6).await;
    worker.pass().await.unwrap();
    assert_eq!(
        hold_id(&t, stranger["txHash"].as_str().unwrap()).await,
        None
    );
    let id = hold_id(&t, failing["txHash"].as_str().unwrap())
        .await
        .unwrap();
    let hold = t.ok(&t.operator(), TRANSACTION, json!({"id": id})).await["node"].clone();
    assert_eq!(hold["status"], "FAILED");
    assert_eq!(hold["settlements"], json!([]));
    assert_eq!(t.balance(&wallet).await, "0.00000000");
}

/// The watcher in two processes and clients asking at the same time: one credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_and_process_calls_racing_credit_once() {
    let t = TestApp::with(common::Options {
        pool_size: 20,
        ..Default::default()
    })
    .await;
    let alice = t.user("alice");
    let (wallet, address) = crypto_wallet(&t, "alice", "BTC").await;
    let transfer = incoming(&t, "bitcoin", &address, "0.4").await;
    mine(&t, "bitcoin", 6).await;
    let (other, _) = t.sibling().await;
    let workers = [t.app.chain_worker().unwrap(), other.chain_worker().unwrap()];
    let passes = (0..6).map(|i| {
        let w = workers[i % 2].clone();
        async move {
            let report = w.pass().await.unwrap();
            report
                .deposits
                .iter()
                .map(|(_, s)| s.credited)
                .sum::<usize>()
        }
    });
    let calls = (0..10).map(|_| {
        let (t, alice) = (&t, &alice);
        let vars = json!({"w": wallet, "h": transfer["txHash"]});
        async move { t.ok(alice, PROCESS, vars).await["processCryptoDeposit"]["id"].clone() }
    });
    let (credits, ids) = tokio::join!(
        futures_util::future::join_all(passes),
        futures_util::future::join_all(calls)
    );
    assert!(credits.iter().sum::<usize>() <= 1, "{credits:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(t.balance(&wallet).await, "0.40000000");
    assert_eq!(t.assert_chain(&wallet).await, 2);
}

/// Chain hashes are public before they are mined; using one as a client key first must
/// not block the deposit.
#[tokio::test]
async fn a_client_key_equal_to_a_chain_hash_does_not_block_the_deposit() {
    let t = TestApp::new().await;
    let (bobs, bob_address) = crypto_wallet(&t, "bob", "BTC").await;
    let transfer = incoming(&t, "bitcoin", &bob_address, "0.3").await;
    let hash = transfer["txHash"].as_str().unwrap();
    let usd = t.create_wallet("mallory", "USD").await;
    t.deposit(&usd, "1.00", "bank-1").await;
    t.withdraw(&t.user("mallory"), &usd, "0.01", hash).await;

    mine(&t, "bitcoin", 6).await;
    t.app.chain_worker().unwrap().pass().await.unwrap();
    assert_eq!(t.balance(&bobs).await, "0.30000000");
    let credited = t
        .ok(&t.user("bob"), PROCESS, json!({"w": bobs, "h": hash}))
        .await["processCryptoDeposit"]
        .clone();
    assert_eq!(credited["balanceAfter"], "0.30000000");
    assert_eq!(t.balance(&usd).await, "0.99");
}

/// A deposit that cannot be credited as it is — an amount finer than the currency's
/// scale, or a credit above its maximum balance — is parked with its reason (never
/// rounded, never retried every pass), and the watcher moves on: the deposits behind it
/// are credited and the scan cursor passes it.
#[tokio::test]
async fn deposits_that_cannot_be_credited_are_parked_and_the_watcher_moves_on() {
    let t = TestApp::new().await;
    let alice = t.user("alice");
    let (wallet, address) = crypto_wallet(&t, "alice", "BTC").await;
    let worker = t.app.chain_worker().unwrap();
    let pg = t.db.client().await;
    // Transfers no client could have sent through the API, straight onto the chain: one
    // satoshi-and-a-tenth finer than BTC's 8 decimals, one far above the maximum.
    pg.batch_execute(&format!(
        "INSERT INTO sim_transfers (hash, network, from_address, to_address, amount)
         VALUES ('too-fine', 'bitcoin', 'bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4', '{address}', 0.123456789),
                ('too-big', 'bitcoin', 'bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4', '{address}', 10000000000000000001)"
    ))
    .await
    .unwrap();
    mine(&t, "bitcoin", 1).await;
    // An ordinary deposit in a later block.
    let ordinary = incoming(&t, "bitcoin", &address, "0.5").await["txHash"]
        .as_str()
        .unwrap()
        .to_owned();
    mine(&t, "bitcoin", 6).await;

    let report = worker.pass().await.unwrap();
    let (_, scan) = report
        .deposits
        .iter()
        .find(|(n, _)| n == "bitcoin")
        .unwrap()
        .clone();
    assert_eq!(
        (scan.credited, scan.parked, scan.errors),
        (1, 2, 0),
        "{scan:?}"
    );
    assert_eq!(scan.cursor, 7, "the cursor passes the parked deposits");
    assert_eq!(t.balance(&wallet).await, "0.50000000");
    for (hash, why) in [("too-fine", "decimal"), ("too-big", "maximum")] {
        let id = hold_id(&t, hash).await.expect("journaled as a hold");
        let hold = t
            .ok(
                &t.operator(),
                "query($id: ID!) { transaction(id: $id) { status statusReason amount settlements { id } } }",
                json!({"id": id}),
            )
            .await["transaction"]
            .clone();
        assert_eq!(hold["status"], "PARKED", "{hold}");
        assert!(
            hold["statusReason"].as_str().unwrap().contains(why),
            "{hold}"
        );
        assert_eq!(hold["settlements"], json!([]));
        // Asked for by name, it is tried again and still refused, with the reason.
        let body = t
            .gql(Some(&alice), PROCESS, json!({"w": wallet, "h": hash}))
            .await;
        assert_eq!(error_code(&body), "INVALID_AMOUNT", "{body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("parked"),
            "{body}"
        );
    }
    // The exact amount was kept, not rounded.
    let amount: String = pg
        .query_one(
            "SELECT amount::text FROM transactions WHERE tx_hash = 'too-fine'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(amount, "0.123456789");
    // Later passes do not touch them again; the ordinary deposit stays credited once.
    mine(&t, "bitcoin", 1).await;
    let again = worker.pass().await.unwrap();
    let (_, scan) = again.deposits.iter().find(|(n, _)| n == "bitcoin").unwrap();
    assert_eq!(
        (scan.observed, scan.parked, scan.errors),
        (0, 0, 0),
        "{scan:?}"
    );
    let listed = t
        .ok(
            &t.operator(),
            "query($w: ID!) { transactions(walletId: $w, filter: {statuses: [PARKED]}) { edges { node { idempotencyKey } } } }",
            json!({"w": wallet}),
        )
        .await;
    assert_eq!(listed["transactions"]["edges"].as_array().unwrap().len(), 2);
    let metrics = t.metrics().await;
    assert!(
        metrics.contains(r#"wallet_deposits_parked_total{network="bitcoin"}"#),
        "{metrics}"
    );
    // Two holds parked, one hold and its credit.
    assert_eq!(t.assert_chain(&wallet).await, 4);
    assert_eq!(t.by_key(&wallet, &ordinary).await["status"], "COMPLETED");
}
