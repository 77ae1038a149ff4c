//! Ethereum through a real node: anvil started by each test on a free port (mining only
//! when the test asks), the service's `ethereum` network served by its JSON-RPC client.
//! Deposits are found block by block, held, confirmed and credited once — also with two
//! processes watching, and across reorganisations of the chain.

mod common;

use common::anvil::{Anvil, DEV_ACCOUNT, DEV_ACCOUNT_2, ETHER, quantity};
use common::ethereum::{
    connected, crypto_wallet, eth_wallet, on, pass, reconcile, with_test_token,
};
use common::{TestApp, error_code};
use serde_json::json;
use wallet::app::App;

alloy::sol! {
    function mint(address to, uint256 value);
    function transfer(address to, uint256 value) returns (bool);
}

/// `processCryptoDeposit` of `hash` for alice's `wallet`: the whole response.
async fn process(t: &TestApp, wallet: &str, hash: &str) -> serde_json::Value {
    t.gql(
        Some(&t.user("alice")),
        "mutation($w: ID!, $h: String!) {
           processCryptoDeposit(input: {walletId: $w, txHash: $h}) { id } }",
        json!({"w": wallet, "h": hash}),
    )
    .await
}

/// The deposit hold of `hash`: (status, confirmations, block), and how many credits it has.
async fn deposit(t: &TestApp, hash: &str) -> Option<(String, i32, Option<i64>, i64)> {
    let c = t.db.client().await;
    let hold = c
        .query_opt(
            "SELECT status::text, confirmations, block_number, id FROM transactions
              WHERE chain_tx_hash = $1 AND hold AND type = 'DEPOSIT'",
            &[&hash],
        )
        .await
        .unwrap()?;
    let id: i64 = hold.get(3);
    let credits: i64 = c
        .query_one(
            "SELECT count(*) FROM transactions WHERE hold_id = $1 AND type = 'DEPOSIT'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    Some((hold.get(0), hold.get(1), hold.get(2), credits))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ether_deposit_is_held_confirmed_and_credited_once_by_two_watchers() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (other, _) = t.sibling_with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;

    let raw = anvil
        .sign_transfer(DEV_ACCOUNT, &address, 3 * ETHER / 2, 0)
        .await;
    let hash = anvil.send_raw(&raw).await;
    // Pending in the node's pool: not a deposit yet.
    pass(&t.app).await;
    assert_eq!(deposit(&t, &hash).await, None);

    // Mined: held with one confirmation, then one more per block, credited at six — once,
    // whichever watcher gets there first.
    anvil.mine(1).await;
    let block = i64::try_from(anvil.height().await).unwrap();
    for confirmations in 1..=6 {
        if confirmations > 1 {
            anvil.mine(1).await;
        }
        tokio::join!(pass(&t.app), pass(&other));
        let (status, seen, at, credits) = deposit(&t, &hash).await.expect("a hold");
        assert_eq!(seen, confirmations);
        assert_eq!(at, Some(block));
        match confirmations {
            6 => assert_eq!((status.as_str(), credits), ("COMPLETED", 1)),
            _ => assert_eq!((status.as_str(), credits), ("PENDING", 0)),
        }
    }
    assert_eq!(t.balance(&wallet).await, "1.500000000000000000");
    // More blocks and passes change nothing.
    anvil.mine(3).await;
    tokio::join!(pass(&t.app), pass(&other));
    assert_eq!(deposit(&t, &hash).await.unwrap().3, 1);
    assert_eq!(t.balance(&wallet).await, "1.500000000000000000");
    assert_eq!(anvil.balance(&address).await, 3 * ETHER / 2);
    t.assert_balanced().await;

    // Reconciled against the node: the address holds what the ledger says.
    let reconciled = reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    assert_eq!(reconciled["externalBalance"], "1.500000000000000000");
    // A transfer the ledger has not seen (no watcher pass since): a mismatch naming it.
    let unseen = anvil
        .send_raw(
            &anvil
                .sign_transfer(DEV_ACCOUNT_2, &address, ETHER / 10, 0)
                .await,
        )
        .await;
    anvil.mine(1).await;
    let reconciled = reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MISMATCH", "{reconciled}");
    assert_eq!(
        reconciled["unmatchedTransactions"],
        json!([unseen]),
        "{reconciled}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reorg_drops_a_deposit_and_it_is_credited_once_when_mined_again() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;

    // Deposit A is mined and seen at two confirmations.
    let raw_a = anvil.sign_transfer(DEV_ACCOUNT, &address, ETHER, 0).await;
    let hash_a = anvil.send_raw(&raw_a).await;
    anvil.mine(2).await;
    pass(&t.app).await;
    assert_eq!(deposit(&t, &hash_a).await.unwrap().1, 2);

    // A reorg replaces both blocks: the first now holds deposit B (another sender) instead
    // of A, which is on no chain any more.
    let raw_b = anvil
        .sign_transfer(DEV_ACCOUNT_2, &address, ETHER / 4, 0)
        .await;
    anvil.reorg(2, &[(&raw_b, 0)]).await;
    pass(&t.app).await;
    let (status, confirmations, block, credits) = deposit(&t, &hash_a).await.unwrap();
    assert_eq!(
        (status.as_str(), confirmations, block, credits),
        ("DROPPED", 0, None, 0),
        "A is on no chain and the node no longer has it"
    );
    assert!(reason(&t, &hash_a).await.contains("reorganisation"));
    let hash_b = format!(
        "{:#x}",
        alloy_primitives::keccak256(alloy_primitives::hex::decode(&raw_b).unwrap())
    );
    assert_eq!(deposit(&t, &hash_b).await.unwrap().1, 2);

    // A is sent again (the same bytes) and mined in a later block: it is followed there.
    assert_eq!(anvil.send_raw(&raw_a).await, hash_a);
    anvil.mine(1).await;
    let block_a = i64::try_from(anvil.height().await).unwrap();
    pass(&t.app).await;
    let (status, confirmations, block, _) = deposit(&t, &hash_a).await.unwrap();
    assert_eq!(
        (status.as_str(), confirmations, block),
        ("PENDING", 1, Some(block_a))
    );
    assert!(reason(&t, &hash_a).await.starts_with("held again"));

    // Six confirmations for both: each credited once.
    anvil.mine(5).await;
    pass(&t.app).await;
    pass(&t.app).await;
    for hash in [&hash_a, &hash_b] {
        let (status, confirmations, _, credits) = deposit(&t, hash).await.unwrap();
        assert_eq!(status, "COMPLETED");
        assert!(confirmations >= 6);
        assert_eq!(credits, 1, "{hash}");
    }
    assert_eq!(t.balance(&wallet).await, "1.250000000000000000");
    assert_eq!(anvil.balance(&address).await, ETHER + ETHER / 4);
    t.assert_balanced().await;
}

/// The status reason of the deposit hold of `hash`.
async fn reason(t: &TestApp, hash: &str) -> String {
    t.db.client()
        .await
        .query_one(
            "SELECT status_reason FROM transactions WHERE chain_tx_hash = $1 AND hold",
            &[&hash],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credited_deposit_removed_by_a_deep_reorg_is_flagged_not_kept_silently() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;
    let raw = anvil.sign_transfer(DEV_ACCOUNT, &address, ETHER, 0).await;
    let hash = anvil.send_raw(&raw).await;
    anvil.mine(7).await;
    pass(&t.app).await;
    assert_eq!(deposit(&t, &hash).await.unwrap().0, "COMPLETED");
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");

    // Seven blocks replaced, past the six confirmations it was credited at.
    anvil.reorg(7, &[]).await;
    pass(&t.app).await;
    let (status, _, _, credits) = deposit(&t, &hash).await.unwrap();
    assert_eq!((status.as_str(), credits), ("REORGED", 1));
    assert!(
        reason(&t, &hash)
            .await
            .contains("deeper than 6 confirmations")
    );
    // The credit stands (an operator decides), and every view says so.
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("wallet_deposits_reorged_total{network=\"ethereum\"} 1"),
        "{metrics}"
    );
    let reconciled = reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MISMATCH", "{reconciled}");
    assert_eq!(reconciled["unmatchedTransactions"], json!([hash]));
    assert!(
        reconciled["mismatchReason"]
            .as_str()
            .unwrap()
            .contains("removed by a reorganisation"),
        "{reconciled}"
    );
    // More passes change nothing.
    pass(&t.app).await;
    assert_eq!(deposit(&t, &hash).await.unwrap().3, 1);

    // Mined again: the flag is lifted, still credited once.
    anvil.send_raw(&raw).await;
    anvil.mine(1).await;
    pass(&t.app).await;
    let (status, _, _, credits) = deposit(&t, &hash).await.unwrap();
    assert_eq!((status.as_str(), credits), ("COMPLETED", 1));
    assert!(reason(&t, &hash).await.starts_with("mined again"));
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_is_checked_at_start_and_its_absence_is_chain_unavailable() {
    let mut anvil = Anvil::start().await;
    // Another chain id than the node's: refused at start.
    let db = common::TestDb::new().await;
    let mut wrong = on(&anvil);
    if let Some(node) = &mut wrong.ethereum {
        node.chain_id = Some(1);
    }
    let refused = App::start(&wrong.config(&db.url))
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{refused:#}").contains("chain id 31337"),
        "{refused:#}"
    );
    drop(db);

    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;
    let hash = anvil
        .send_raw(&anvil.sign_transfer(DEV_ACCOUNT, &address, ETHER, 0).await)
        .await;
    anvil.mine(6).await;
    // The simulator's mutations are for the networks it serves: bitcoin here, not ethereum.
    let operator = t.operator();
    for (query, variables) in [
        (common::MINE, json!({"n": "ethereum", "c": 1})),
        (
            common::INCOMING,
            json!({"n": "ethereum", "to": address, "a": "1"}),
        ),
    ] {
        let body = t.gql(Some(&operator), query, variables).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    }
    t.ok(&operator, common::MINE, json!({"n": "bitcoin", "c": 1}))
        .await;

    // The node goes away: the watcher's pass fails and records nothing; naming the
    // deposit is CHAIN_UNAVAILABLE.
    anvil.kill();
    let worker = t.app.chain_worker().unwrap();
    assert!(worker.pass().await.is_err());
    assert_eq!(deposit(&t, &hash).await, None);
    let body = process(&t, &wallet, &hash).await;
    assert_eq!(error_code(&body), "CHAIN_UNAVAILABLE", "{body}");
    assert_eq!(t.balance(&wallet).await, "0.000000000000000000");
    // A withdrawal needs the node's fees: refused, nothing journaled or locked.
    let body = t
        .gql(
            Some(&t.user("alice")),
            common::CRYPTO_WITHDRAW,
            json!({"w": wallet, "to": DEV_ACCOUNT_2, "a": "0.1", "k": "w-1"}),
        )
        .await;
    assert_eq!(error_code(&body), "CHAIN_UNAVAILABLE", "{body}");
    let c = t.db.client().await;
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM transactions WHERE type = 'WITHDRAW'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_stopped_and_started_again_loses_and_doubles_nothing() {
    let state = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("anvil-{}.json", uuid::Uuid::new_v4()));
    let mut anvil = Anvil::start_keeping(Some(state.clone())).await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;
    let hash = anvil
        .send_raw(&anvil.sign_transfer(DEV_ACCOUNT, &address, ETHER, 0).await)
        .await;
    anvil.mine(2).await;
    pass(&t.app).await;
    assert_eq!(deposit(&t, &hash).await.unwrap().1, 2);
    let ready = readyz(&t).await;
    assert!(ready.contains("ethereum: ok (height 2)"), "{ready}");

    // Stopped: passes fail and change nothing; readiness says which network is down.
    anvil.stop();
    let worker = t.app.chain_worker().unwrap();
    assert!(worker.pass().await.is_err());
    assert!(worker.pass().await.is_err());
    assert_eq!(
        deposit(&t, &hash).await.unwrap(),
        ("PENDING".to_owned(), 2, Some(1), 0)
    );
    // The last verdict is reused for a second.
    tokio::time::sleep(wallet::readiness::FRESH_FOR).await;
    let ready = readyz(&t).await;
    assert!(ready.starts_with("ready\n"), "{ready}");
    assert!(ready.contains("bitcoin: ok"), "{ready}");
    // Why is in the log only (a node's error text may hold its URL and credentials).
    assert!(
        ready.lines().any(|l| l == "ethereum: unavailable"),
        "{ready}"
    );
    assert!(!ready.contains("127.0.0.1"), "{ready}");

    // Back (with its chain): once verified again, the deposit is followed on and
    // credited once.
    anvil.start_again().await;
    connected(&t.app).await;
    anvil.mine(4).await;
    pass(&t.app).await;
    pass(&t.app).await;
    let (status, confirmations, _, credits) = deposit(&t, &hash).await.unwrap();
    assert_eq!(
        (status.as_str(), confirmations, credits),
        ("COMPLETED", 6, 1)
    );
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    t.assert_balanced().await;

    // A withdrawal sent, and the node stops before mining it (its pool may not survive):
    // after the restart it is sent again from the stored bytes if need be, mined once,
    // debited once.
    t.ok(
        &t.user("alice"),
        common::CRYPTO_WITHDRAW,
        json!({"w": wallet, "to": DEV_ACCOUNT_2, "a": "0.3", "k": "w-1"}),
    )
    .await;
    assert_eq!(pass(&t.app).await.broadcast, 1);
    anvil.stop();
    assert!(worker.pass().await.is_err());
    anvil.start_again().await;
    connected(&t.app).await;
    for _ in 0..8 {
        pass(&t.app).await;
        anvil.mine(1).await;
    }
    pass(&t.app).await;
    let c = t.db.client().await;
    let row = c
        .query_one(
            "SELECT h.status, count(d.id), (SELECT balance::text FROM wallets WHERE id = h.wallet_id)
               FROM transactions h LEFT JOIN transactions d ON d.hold_id = h.id
              WHERE h.hold AND h.type = 'WITHDRAW' GROUP BY h.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("COMPLETED".into(), 1)
    );
    let balance: rust_decimal::Decimal = row.get::<_, String>(2).parse().unwrap();
    let mut wei = balance;
    wei.rescale(18);
    assert_eq!(
        anvil.balance(&address).await,
        u128::try_from(wei.mantissa()).unwrap()
    );
    assert_eq!(anvil.sent(&address).await, 1);
    t.assert_balanced().await;
    let _ = std::fs::remove_file(state);
}

/// `/readyz`: answered 200 (the service serves with a chain down), and its text.
async fn readyz(t: &TestApp) -> String {
    let response = tower::ServiceExt::oneshot(
        t.router.clone(),
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::OK);
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_deposit_is_credited_to_the_token_wallet_once() {
    use alloy::sol_types::SolCall;
    let anvil = Anvil::start().await;
    let (contract, options) = with_test_token(&anvil).await;
    let t = TestApp::with(options.clone()).await;
    // A second process watching the same chain and database.
    let (other, _) = t.sibling_with(options).await;
    let (tusd, tusd_address) = crypto_wallet(&t, "alice", "TUSD").await;
    let (eth, eth_address) = eth_wallet(&t, "alice").await;
    let dev: alloy::primitives::Address = DEV_ACCOUNT.parse().unwrap();
    let mint = mintCall {
        to: dev,
        value: alloy::primitives::U256::from(1_000_000_000u64),
    };
    anvil
        .send_from(DEV_ACCOUNT, Some(&contract), &mint.abi_encode(), 0)
        .await;
    anvil.mine(1).await;

    // In one block: 12.5 TUSD to the token wallet, 1 TUSD to the ether wallet's address
    // (not its currency: not a deposit of it), and 0.5 ether to the ether wallet.
    let pay = |to: &str, value: u64| transferCall {
        to: to.parse().unwrap(),
        value: alloy::primitives::U256::from(value),
    };
    let token_tx = anvil
        .send_from(
            DEV_ACCOUNT,
            Some(&contract),
            &pay(&tusd_address, 12_500_000).abi_encode(),
            0,
        )
        .await;
    anvil
        .send_from(
            DEV_ACCOUNT,
            Some(&contract),
            &pay(&eth_address, 1_000_000).abi_encode(),
            0,
        )
        .await;
    let ether_tx = anvil
        .send_from(DEV_ACCOUNT, Some(&eth_address), &[], ETHER / 2)
        .await;
    anvil.mine(1).await;
    let receipt = anvil.receipt(&token_tx).await;
    let index = quantity(&receipt["logs"][0]["logIndex"]);
    let token_deposit = format!("{token_tx}:{index}");

    tokio::join!(pass(&t.app), pass(&other));
    let (status, confirmations, _, _) = deposit(&t, &token_deposit).await.expect("a token hold");
    assert_eq!((status.as_str(), confirmations), ("PENDING", 1));
    anvil.mine(5).await;
    tokio::join!(pass(&t.app), pass(&other));
    tokio::join!(pass(&t.app), pass(&other));
    for hash in [&token_deposit, &ether_tx] {
        let (status, _, _, credits) = deposit(&t, hash).await.unwrap();
        assert_eq!((status.as_str(), credits), ("COMPLETED", 1), "{hash}");
    }
    assert_eq!(t.balance(&tusd).await, "12.500000");
    assert_eq!(t.balance(&eth).await, "0.500000000000000000");

    // Naming the token transfer for the ether wallet: refused, it does not move ether.
    let body = process(&t, &eth, &token_deposit).await;
    assert_eq!(error_code(&body), "ADDRESS_MISMATCH", "{body}");

    // Each wallet reconciles with its own asset at its address.
    let reconciled = reconcile(&t, &tusd).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    assert_eq!(reconciled["externalBalance"], "12.500000");
    let reconciled = reconcile(&t, &eth).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_gap_is_caught_up_over_several_short_scans() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;
    anvil.mine(1).await;
    pass(&t.app).await;
    // The watcher was away for 700 blocks; the deposit is in the newest ones.
    anvil.mine(700).await;
    let hash = anvil
        .send_raw(&anvil.sign_transfer(DEV_ACCOUNT, &address, ETHER, 0).await)
        .await;
    anvil.mine(6).await;
    // One pass reads at most 500 blocks: not there yet, and no reorganisation is taken
    // for the blocks it has not read.
    pass(&t.app).await;
    assert_eq!(deposit(&t, &hash).await, None);
    let remembered: i64 =
        t.db.client()
            .await
            .query_one("SELECT max(number) FROM chain_blocks", &[])
            .await
            .unwrap()
            .get(0);
    assert!(remembered < 706, "{remembered}");
    // The next pass goes on from there and finds it, with its six confirmations.
    pass(&t.app).await;
    let (status, confirmations, _, credits) = deposit(&t, &hash).await.unwrap();
    assert_eq!(
        (status.as_str(), confirmations, credits),
        ("COMPLETED", 6, 1)
    );
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
}
