//! Reorganisations of a real chain (anvil) and the money they move: a token deposit mined
//! again at another place in its block is credited once; a reorganisation the watcher
//! found is flagged even when the pass that found it fails or dies before flagging; a
//! credit a reorganisation removed is corrected by the operator's runbook and credited
//! once more if its transaction is mined again; a completed withdrawal a reorganisation
//! removed is sent again and holds up nothing.

mod common;

use std::time::Duration;

use alloy::primitives::U256;
use alloy::sol_types::SolCall;
use common::anvil::{Anvil, CHAIN_ID, DEV_ACCOUNT, DEV_ACCOUNT_2, ETHER, quantity};
use common::ethereum::{crypto_wallet, eth_wallet, on, pass, with_test_token};
use common::faulty_node::FaultyNode;
use common::process::{ServerProcess, post};
use common::{CREATE_CRYPTO, CRYPTO_WITHDRAW, TestApp, TestDb, db_id, error_code, wait_until};
use rust_decimal::Decimal;
use serde_json::json;
use wallet::auth::{Role, TokenKeys};

alloy::sol! {
    function mint(address to, uint256 value);
    function transfer(address to, uint256 value) returns (bool);
    function pay(address token, address[] to, uint256[] values);
}

/// The seed of the tests' anvil options (its addresses are not anvil's funded accounts).
const SEED: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                    abandon abandon about";

/// A chain deposit hold: its status, confirmations and block, and its credits.
#[derive(Debug, PartialEq, Eq)]
struct Hold {
    status: String,
    confirmations: i32,
    block: Option<i64>,
    credits: i64,
}

/// The deposit holds of a wallet, by name, oldest first.
async fn holds(db: &TestDb, wallet: &str) -> Vec<(String, Hold)> {
    let c = db.client().await;
    c.query(
        "SELECT h.chain_tx_hash, h.status, h.confirmations, h.block_number,
                (SELECT count(*) FROM transactions c WHERE c.hold_id = h.id AND c.type = 'DEPOSIT')
           FROM transactions h
          WHERE h.wallet_id = $1 AND h.hold AND h.type = 'DEPOSIT' ORDER BY h.id",
        &[&db_id(wallet)],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            Hold {
                status: r.get(1),
                confirmations: r.get(2),
                block: r.get(3),
                credits: r.get(4),
            },
        )
    })
    .collect()
}

/// The deposit hold named `name`.
async fn hold(db: &TestDb, name: &str) -> Hold {
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT h.status, h.confirmations, h.block_number,
                    (SELECT count(*) FROM transactions c WHERE c.hold_id = h.id AND c.type = 'DEPOSIT')
               FROM transactions h WHERE h.chain_tx_hash = $1 AND h.hold",
            &[&name],
        )
        .await
        .unwrap();
    Hold {
        status: r.get(0),
        confirmations: r.get(1),
        block: r.get(2),
        credits: r.get(3),
    }
}

fn wei(amount: &str) -> u128 {
    let mut d: Decimal = amount.parse().unwrap();
    d.rescale(18);
    u128::try_from(d.mantissa()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_deposit_mined_again_at_another_log_index_is_credited_once() {
    let anvil = Anvil::start().await;
    let (contract, options) = with_test_token(&anvil).await;
    let t = TestApp::with(options).await;
    let (tusd, address) = crypto_wallet(&t, "alice", "TUSD").await;
    let batch = anvil.deploy_token_batch().await;
    for (to, value) in [(batch.as_str(), 10_000_000u64), (DEV_ACCOUNT_2, 5_000_000)] {
        let call = mintCall {
            to: to.parse().unwrap(),
            value: U256::from(value),
        };
        anvil
            .send_from(DEV_ACCOUNT, Some(&contract), &call.abi_encode(), 0)
            .await;
    }
    anvil.mine(1).await;

    // One transaction moves the token twice to alice's address: 1 and 2 TUSD, two
    // `Transfer` logs. Alone in its block, its logs are the block's first two.
    let pay = payCall {
        token: contract.parse().unwrap(),
        to: vec![address.parse().unwrap(); 2],
        values: vec![U256::from(1_000_000u64), U256::from(2_000_000u64)],
    };
    let raw = anvil
        .sign_call(
            DEV_ACCOUNT,
            &batch,
            &pay.abi_encode(),
            anvil.sent(DEV_ACCOUNT).await,
        )
        .await;
    let hash = anvil.send_raw(&raw).await;
    anvil.mine(2).await;
    pass(&t.app).await;
    assert_eq!(
        quantity(&anvil.receipt(&hash).await["logs"][0]["logIndex"]),
        0
    );
    assert_eq!(holds(&t.db, &tusd).await.len(), 2);

    // A shallow reorganisation mines it again after another token transfer in its block:
    // its logs are now the block's second and third.
    let other = transferCall {
        to: DEV_ACCOUNT.parse().unwrap(),
        value: U256::from(1u64),
    };
    let other_raw = anvil
        .sign_call(
            DEV_ACCOUNT_2,
            &contract,
            &other.abi_encode(),
            anvil.sent(DEV_ACCOUNT_2).await,
        )
        .await;
    anvil.reorg(2, &[(&other_raw, 0), (&raw, 0)]).await;
    let receipt = anvil.receipt(&hash).await;
    assert_eq!(quantity(&receipt["logs"][0]["logIndex"]), 1, "{receipt}");
    pass(&t.app).await;
    anvil.mine(5).await;
    pass(&t.app).await;
    pass(&t.app).await;
    // Each transfer credited once: the ledger holds what balanceOf says.
    assert_eq!(t.balance(&tusd).await, "3.000000");
    assert_eq!(anvil.token_balance(&contract, &address).await, 3_000_000);

    // A reorganisation deeper than the six confirmations mines it again alone in its
    // block: its logs are the block's first two again. Still on the chain: nothing is
    // flagged, nothing credited again.
    anvil.reorg(7, &[(&raw, 0)]).await;
    let receipt = anvil.receipt(&hash).await;
    assert_eq!(quantity(&receipt["logs"][0]["logIndex"]), 0, "{receipt}");
    pass(&t.app).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&tusd).await, "3.000000");
    assert_eq!(anvil.token_balance(&contract, &address).await, 3_000_000);
    let seen = holds(&t.db, &tusd).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (name, hold) in &seen {
        assert!(name.starts_with(&hash), "{name}");
        assert_eq!(
            (hold.status.as_str(), hold.credits),
            ("COMPLETED", 1),
            "{seen:?}"
        );
    }
    // Named by the log's place in its transaction.
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [format!("{hash}:0"), format!("{hash}:1")]);
    t.assert_balanced().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_deposits_named_by_their_block_log_index_before_are_never_credited_twice() {
    let anvil = Anvil::start().await;
    let (contract, options) = with_test_token(&anvil).await;
    let t = TestApp::with(options).await;
    let (tusd, address) = crypto_wallet(&t, "alice", "TUSD").await;
    let batch = anvil.deploy_token_batch().await;
    for (to, value) in [(batch.as_str(), 10_000_000u64), (DEV_ACCOUNT_2, 5_000_000)] {
        let call = mintCall {
            to: to.parse().unwrap(),
            value: U256::from(value),
        };
        anvil
            .send_from(DEV_ACCOUNT, Some(&contract), &call.abi_encode(), 0)
            .await;
    }
    anvil.mine(1).await;

    // 1 and 2 TUSD to alice in one transaction, after another token transfer in its block:
    // its logs are the block's second and third.
    let other = transferCall {
        to: DEV_ACCOUNT.parse().unwrap(),
        value: U256::from(1u64),
    };
    anvil
        .send_raw(
            &anvil
                .sign_call(
                    DEV_ACCOUNT_2,
                    &contract,
                    &other.abi_encode(),
                    anvil.sent(DEV_ACCOUNT_2).await,
                )
                .await,
        )
        .await;
    let pay = payCall {
        token: contract.parse().unwrap(),
        to: vec![address.parse().unwrap(); 2],
        values: vec![U256::from(1_000_000u64), U256::from(2_000_000u64)],
    };
    let raw = anvil
        .sign_call(
            DEV_ACCOUNT,
            &batch,
            &pay.abi_encode(),
            anvil.sent(DEV_ACCOUNT).await,
        )
        .await;
    let hash = anvil.send_raw(&raw).await;
    anvil.mine(7).await;
    assert_eq!(
        quantity(&anvil.receipt(&hash).await["logs"][0]["logIndex"]),
        1
    );
    pass(&t.app).await;
    assert_eq!(t.balance(&tusd).await, "3.000000");

    // The database as the previous version left it: the deposits named by their logs'
    // indices in the block (`:1`, `:2`), listed by the upgrade as named before.
    let c = t.db.client().await;
    c.batch_execute(&format!(
        "SET session_replication_role = replica;
         UPDATE transactions SET tx_hash = '{hash}:2', chain_tx_hash = '{hash}:2'
          WHERE chain_tx_hash = '{hash}:1';
         UPDATE transactions SET tx_hash = '{hash}:1', chain_tx_hash = '{hash}:1'
          WHERE chain_tx_hash = '{hash}:0';
         SET session_replication_role = DEFAULT;
         INSERT INTO legacy_token_deposits (hold_id, network, tx_hash)
         SELECT id, network, split_part(chain_tx_hash, ':', 1)
           FROM transactions
          WHERE hold AND type = 'DEPOSIT' AND network IS NOT NULL
            AND chain_tx_hash LIKE '%:%';"
    ))
    .await
    .unwrap();

    // A reorganisation deeper than the confirmations mines the transaction again alone
    // in its block: its logs are the block's first and second now — `:1`, an old name of
    // the first, is the second's name now.
    anvil.reorg(7, &[(&raw, 0)]).await;
    assert_eq!(
        quantity(&anvil.receipt(&hash).await["logs"][0]["logIndex"]),
        0
    );
    pass(&t.app).await;
    anvil.mine(1).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&tusd).await, "3.000000");
    assert_eq!(anvil.token_balance(&contract, &address).await, 3_000_000);
    let seen = holds(&t.db, &tusd).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (_, hold) in &seen {
        assert_eq!(
            (hold.status.as_str(), hold.credits),
            ("COMPLETED", 1),
            "{seen:?}"
        );
    }
    // Each old name resolved to the log's place in its transaction.
    let resolved: Vec<(String, Option<String>)> = c
        .query(
            "SELECT t.chain_tx_hash, l.name FROM legacy_token_deposits l
               JOIN transactions t ON t.id = l.hold_id ORDER BY t.chain_tx_hash",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        resolved,
        [
            (format!("{hash}:1"), Some(format!("{hash}:0"))),
            (format!("{hash}:2"), Some(format!("{hash}:1"))),
        ]
    );
    // Named now as the chain names them: reconciliation matches them.
    let reconciled = common::ethereum::reconcile(&t, &tusd).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
    t.assert_balanced().await;
}

/// An injected failure, and where a pass meets it.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The node fails while the watcher compares its blocks with the remembered ones.
    NodeWhileDetecting,
    /// The database refuses to forget the replaced blocks.
    DbWhileForgetting,
    /// The node fails while the watcher asks about the credited deposits.
    NodeWhileFlagging,
    /// The database refuses the flag.
    DbWhileFlagging,
    /// The database refuses to clear the record of the reorganisation.
    DbWhileClearing,
}

impl Fault {
    async fn inject(self, node: &FaultyNode, db: &TestDb) {
        let trigger = |table: &str, when: &str| {
            format!(
                "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
                 CREATE TRIGGER injected_fault BEFORE {when} ON {table}
                   FOR EACH ROW EXECUTE FUNCTION injected_fault();"
            )
        };
        let sql = match self {
            // Blocks 0 and 1 still answered: the node's chain is verified with them.
            Fault::NodeWhileDetecting => {
                return node.fail_except("eth_getBlockByNumber", &[json!("0x0"), json!("0x1")]);
            }
            Fault::NodeWhileFlagging => return node.fail("eth_getTransactionByHash"),
            Fault::DbWhileForgetting => trigger("chain_blocks", "DELETE"),
            Fault::DbWhileFlagging => trigger("transactions", "UPDATE")
                .replace("FOR EACH ROW", "FOR EACH ROW WHEN (NEW.status = 'REORGED')"),
            Fault::DbWhileClearing => trigger("chain_reorgs", "DELETE"),
        };
        db.client().await.batch_execute(&sql).await.unwrap();
    }

    async fn heal(self, node: &FaultyNode, db: &TestDb) {
        node.heal();
        db.client()
            .await
            .batch_execute("DROP FUNCTION IF EXISTS injected_fault() CASCADE")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reorg_whose_pass_fails_at_any_step_is_flagged_by_the_next_pass_of_another_process() {
    let anvil = Anvil::start().await;
    let node = FaultyNode::start(&anvil.url).await;
    let mut options = on(&anvil);
    if let Some(config) = &mut options.ethereum {
        config.rpc_url = node.url.clone().into();
    }
    let t = TestApp::with(options.clone()).await;
    let (other, _) = t.sibling_with(options).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;
    let worker = t.app.chain_worker().unwrap();

    for (i, fault) in [
        Fault::NodeWhileFlagging,
        Fault::DbWhileFlagging,
        Fault::NodeWhileDetecting,
        Fault::DbWhileForgetting,
        Fault::DbWhileClearing,
    ]
    .into_iter()
    .enumerate()
    {
        // A deposit credited at seven confirmations (each one its own amount: its own
        // transaction).
        let amount = ETHER + u128::try_from(i).unwrap();
        let raw = anvil
            .sign_transfer(DEV_ACCOUNT, &address, amount, anvil.sent(DEV_ACCOUNT).await)
            .await;
        let hash = anvil.send_raw(&raw).await;
        anvil.mine(7).await;
        pass(&t.app).await;
        assert_eq!(hold(&t.db, &hash).await.status, "COMPLETED", "{fault:?}");

        // Seven blocks replaced, past its six confirmations; this process's pass meets
        // the fault and fails.
        let c = t.db.client().await;
        let records = async || -> i64 {
            c.query_one("SELECT count(*) FROM chain_reorgs", &[])
                .await
                .unwrap()
                .get(0)
        };
        // Old enough to be cleared once followed (see `reorg::RECHECK_FOR`).
        let age = async || {
            c.execute(
                "UPDATE chain_reorgs SET recorded_at = recorded_at - interval '61 seconds'",
                &[],
            )
            .await
            .unwrap();
        };
        if let Fault::DbWhileClearing = fault {
            // Followed, and kept while what it covers is checked again (a credit another
            // watcher decided on what it read before the reorganisation may still come).
            anvil.reorg(7, &[]).await;
            pass(&t.app).await;
            assert_eq!(records().await, 1, "{fault:?}");
            age().await;
            fault.inject(&node, &t.db).await;
        } else {
            fault.inject(&node, &t.db).await;
            anvil.reorg(7, &[]).await;
        }
        assert!(worker.pass().await.is_err(), "{fault:?}");
        if let Fault::NodeWhileFlagging | Fault::DbWhileFlagging = fault {
            assert_eq!(hold(&t.db, &hash).await.status, "COMPLETED", "{fault:?}");
        }
        fault.heal(&node, &t.db).await;

        // Another process's next pass flags it, whatever step the failure stopped.
        pass(&other).await;
        let flagged = hold(&t.db, &hash).await;
        assert_eq!(
            (flagged.status.as_str(), flagged.credits),
            ("REORGED", 1),
            "{fault:?}"
        );
        age().await;
        pass(&other).await;
        assert_eq!(records().await, 0, "{fault:?}: cleared once followed");
    }
    assert_eq!(
        t.balance(&wallet).await.parse::<Decimal>().unwrap(),
        Decimal::from(5) + Decimal::new(10, 18)
    );
}

fn token(sub: &str, role: Role) -> String {
    TokenKeys::new(common::JWT_SECRET.as_bytes())
        .mint(sub, role, Duration::from_secs(600))
        .unwrap()
}

/// The `wallet` binary watching `anvil` for `db`, passes every 100 ms.
async fn watcher(db: &TestDb, anvil: &Anvil) -> ServerProcess {
    ServerProcess::start_with(
        &db.url,
        &[
            ("WALLET_ETHEREUM_RPC_URL", &anvil.url),
            ("WALLET_ETHEREUM_CHAIN_ID", &CHAIN_ID.to_string()),
            ("WALLET_CHAIN_POLL_MS", "100"),
            ("WALLET_SEED", SEED),
            ("WALLET_REQUEST_TIMEOUT_SECS", "60"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_killed_between_forgetting_the_blocks_and_flagging_leaves_the_flag_to_another() {
    let anvil = Anvil::start().await;
    let db = TestDb::new().await;
    let mut first = watcher(&db, &anvil).await;
    let http = reqwest::Client::new();
    let created = post(
        &http,
        &first.base,
        &token("alice", Role::User),
        CREATE_CRYPTO,
        json!({"c": "ETH"}),
    )
    .await
    .unwrap();
    let wallet = created["data"]["createWallet"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let address = created["data"]["createWallet"]["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = anvil
        .send_raw(&anvil.sign_transfer(DEV_ACCOUNT, &address, ETHER, 0).await)
        .await;
    anvil.mine(7).await;
    let block = i64::try_from(anvil.height().await).unwrap() - 6;
    wait_until(
        "the deposit is credited",
        Duration::from_secs(30),
        || async {
            let c = db.client().await;
            c.query_opt(
            "SELECT 1 FROM transactions WHERE chain_tx_hash = $1 AND hold AND status = 'COMPLETED'",
            &[&hash],
        )
        .await
        .unwrap()
        .is_some()
        },
    )
    .await;

    // The wallet is held locked, so that the watcher, once it has forgotten the replaced
    // blocks and scanned the new ones, waits in the middle of flagging; then it is killed.
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE",
        &[&db_id(&wallet)],
    )
    .await
    .unwrap();
    let old = anvil
        .block_hash(u64::try_from(block).unwrap())
        .await
        .unwrap();
    anvil.reorg(7, &[]).await;
    let new = anvil
        .block_hash(u64::try_from(block).unwrap())
        .await
        .unwrap();
    assert_ne!(old, new);
    wait_until(
        "the watcher remembers the new chain",
        Duration::from_secs(30),
        || async {
            let c = db.client().await;
            c.query_opt(
                "SELECT 1 FROM chain_blocks WHERE number = $1 AND hash = $2",
                &[&block, &new],
            )
            .await
            .unwrap()
            .is_some()
        },
    )
    .await;
    wait_until(
        "the watcher waits for the wallet",
        Duration::from_secs(30),
        || async {
            let c = db.client().await;
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                > 0
        },
    )
    .await;
    first.kill();
    lock.rollback().await.unwrap();
    assert_eq!(hold(&db, &hash).await.status, "COMPLETED");

    // Another process: the blocks it resumes from are the new chain's (nothing left to
    // detect), yet it flags the deposit.
    let second = watcher(&db, &anvil).await;
    wait_until(
        "the deposit is flagged",
        Duration::from_secs(30),
        || async { hold(&db, &hash).await.status == "REORGED" },
    )
    .await;
    assert_eq!(hold(&db, &hash).await.credits, 1);
    drop(second);
}

/// The runbook's first step (docs/operations.md, runbook (d)): the REORGED deposits, as
/// an operator finds them.
const REORGED: &str = "{ transactions(last: 50, filter: {statuses: [REORGED], types: [DEPOSIT]})
  { edges { node { id wallet { id userId } amount chainTxHash statusReason settlements {
  id } } } } }";

const REVERSE: &str = "mutation($t: ID!, $k: String!, $r: String!) {
  reverseTransaction(input: {transactionId: $t, idempotencyKey: $k, reason: $r}) {
    id type amount balanceBefore balanceAfter reverses { id type } } }";

#[tokio::test(flavor = "multi_thread")]
async fn a_reorged_credit_is_reversed_by_the_runbook_and_credited_once_when_mined_again() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;
    let raw = anvil.sign_transfer(DEV_ACCOUNT, &address, ETHER, 0).await;
    let hash = anvil.send_raw(&raw).await;
    anvil.mine(7).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    let operator = t.operator();

    // A credit that stands on the chain cannot be reversed.
    let settlement = t
        .ok(
            &operator,
            "query($w: ID!) { wallet(id: $w) { transactions(first: 5, filter: {types: [DEPOSIT]}) {
               edges { node { id isHold } } } } }",
            json!({"w": wallet}),
        )
        .await["wallet"]["transactions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"]["isHold"] == false)
        .unwrap()["node"]["id"]
        .clone();
    let body = t
        .gql(
            Some(&operator),
            REVERSE,
            json!({"t": settlement, "k": "too-early", "r": "not reorged"}),
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");

    anvil.reorg(7, &[]).await;
    pass(&t.app).await;

    // The runbook. 1. Find them.
    let found = t.ok(&operator, REORGED, json!({})).await["transactions"]["edges"].clone();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let node = &found[0]["node"];
    assert_eq!(node["chainTxHash"], hash.as_str());
    assert_eq!(node["settlements"][0]["id"], settlement);
    // 2. Ask the node: gone.
    assert!(!anvil.knows(&hash).await);
    // 3. Reverse the credit.
    let body = t
        .gql(
            Some(&operator),
            REVERSE,
            json!({"t": settlement, "k": format!("reorg-{hash}"), "r": "removed by a reorganisation"}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let reversal = &body["data"]["reverseTransaction"];
    assert_eq!(reversal["type"], "REVERSAL");
    assert_eq!(reversal["balanceAfter"], "0.000000000000000000");
    assert_eq!(reversal["reverses"]["id"], settlement);
    assert_eq!(t.balance(&wallet).await, "0.000000000000000000");
    assert_eq!(anvil.balance(&address).await, 0);
    // The hold stays REORGED, as the record of what happened; once only.
    assert_eq!(hold(&t.db, &hash).await.status, "REORGED");
    let again = t
        .gql(
            Some(&operator),
            REVERSE,
            json!({"t": settlement, "k": "reorg-again", "r": "removed by a reorganisation"}),
        )
        .await;
    assert_eq!(error_code(&again), "ALREADY_REVERSED", "{again}");
    t.assert_balanced().await;
    // Corrected: the reversed credit and its deposit no longer stand between the wallet
    // and the chain.
    let corrected = common::ethereum::reconcile(&t, &wallet).await;
    assert_eq!(corrected["status"], "MATCHED", "{corrected}");

    // The sender broadcasts it again: mined, it is credited once more at the threshold —
    // not before, and not twice.
    assert_eq!(anvil.send_raw(&raw).await, hash);
    anvil.mine(1).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&wallet).await, "0.000000000000000000");
    anvil.mine(5).await;
    pass(&t.app).await;
    pass(&t.app).await;
    let credited = hold(&t.db, &hash).await;
    assert_eq!(
        (credited.status.as_str(), credited.credits),
        ("COMPLETED", 2)
    );
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    assert_eq!(anvil.balance(&address).await, ETHER);
    anvil.mine(3).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    t.assert_balanced().await;
    t.assert_chain(&wallet).await;
    // The chain agrees, transfer by transfer.
    let reconciled = common::ethereum::reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
}

/// A withdrawal hold's (status, chain hash, confirmations).
async fn withdrawal(db: &TestDb, id: i64) -> (String, String, i32) {
    let c = db.client().await;
    let r = c
        .query_one(
            "SELECT status, chain_tx_hash, confirmations FROM transactions WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

async fn withdraw(t: &TestApp, wallet: &str, amount: &str, key: &str) -> i64 {
    let body = t
        .ok(
            &t.user("alice"),
            CRYPTO_WITHDRAW,
            json!({"w": wallet, "to": DEV_ACCOUNT_2, "a": amount, "k": key}),
        )
        .await;
    db_id(body["cryptoWithdraw"]["id"].as_str().unwrap())
}

/// Passes and blocks until withdrawal `id` is COMPLETED (at most `limit` blocks).
async fn confirmed(t: &TestApp, anvil: &Anvil, id: i64, limit: u64) {
    for _ in 0..limit {
        pass(&t.app).await;
        if withdrawal(&t.db, id).await.0 == "COMPLETED" {
            return;
        }
        anvil.mine(1).await;
    }
    panic!(
        "withdrawal {id} not completed: {:?}",
        withdrawal(&t.db, id).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completed_withdrawal_removed_by_a_deep_reorg_is_followed_and_holds_up_nothing() {
    let anvil = Anvil::start().await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;
    anvil
        .send_from(DEV_ACCOUNT, Some(&address), &[], ETHER)
        .await;
    anvil.mine(10).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");

    let first = withdraw(&t, &wallet, "0.1", "w-1").await;
    confirmed(&t, &anvil, first, 12).await;
    let (_, hash, _) = withdrawal(&t.db, first).await;
    assert_eq!(anvil.sent(&address).await, 1);

    // A reorganisation deeper than its confirmations removes it from the chain.
    anvil.reorg(8, &[]).await;
    assert_eq!(anvil.sent(&address).await, 0);
    pass(&t.app).await;
    let (status, _, confirmations) = withdrawal(&t.db, first).await;
    assert_eq!((status.as_str(), confirmations), ("REORGED", 0));
    assert!(
        t.metrics()
            .await
            .contains("wallet_withdrawals_reorged_total{network=\"ethereum\"} 1")
    );
    // Sent again from its stored bytes at once: the node has it, and mines it.
    assert!(anvil.knows(&hash).await);
    confirmed(&t, &anvil, first, 12).await;
    assert_eq!(anvil.sent(&address).await, 1);

    // The address's next nonce is free for the next withdrawal: mined, not held up.
    let second = withdraw(&t, &wallet, "0.2", "w-2").await;
    confirmed(&t, &anvil, second, 12).await;
    assert_eq!(anvil.sent(&address).await, 2);
    // Debited once each: the first with what the chain charged when it was mined again
    // (its first debit reversed, if that was another fee).
    let c = t.db.client().await;
    let debits: i64 = c
        .query_one(
            "SELECT count(*) FROM transactions d WHERE d.hold_id = ANY($1) AND d.type = 'WITHDRAW'
                AND NOT EXISTS (SELECT 1 FROM transactions r WHERE r.reverses_id = d.id)",
            &[&vec![first, second]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(debits, 2);
    let balance = t.balance(&wallet).await;
    assert_eq!(
        wei(&balance),
        anvil.balance(&address).await,
        "{balance} vs {}",
        anvil.balance(&address).await
    );
    t.assert_balanced().await;
    t.assert_chain(&wallet).await;
    // The chain agrees, transfer by transfer.
    let reconciled = common::ethereum::reconcile(&t, &wallet).await;
    assert_eq!(reconciled["status"], "MATCHED", "{reconciled}");
}
