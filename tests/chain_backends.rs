//! A network's chain history belongs to the backend that made it: the simulator, or a node
//! of one chain (its chain id and genesis block). Switching a network to another backend
//! never reuses the other's scan position, so a deposit on the new chain is never skipped;
//! and a database whose journal holds another backend's movements on that network refuses
//! to serve it from this one, saying why.

mod common;

use common::anvil::{Anvil, DEV_ACCOUNT, ETHER};
use common::ethereum::{on, pass};
use common::{CREATE_CRYPTO, INCOMING, MINE, Options, TestApp, gql_to};
use serde_json::json;
use wallet::app::App;

/// One seed for every process of a test (a database refuses another seed).
const SEED: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                    abandon abandon about";

fn simulated() -> Options {
    Options {
        mnemonic: SEED,
        ..Options::default()
    }
}

/// Why `options` cannot start on `t`'s database.
async fn refused(t: &TestApp, options: &Options) -> String {
    match App::start(&options.config(&t.db.url)).await {
        Ok(_) => panic!("the start was not refused"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ethereum_switched_from_the_simulator_to_a_fresh_node_misses_no_deposit() {
    // The README's sequence: the simulated networks first — ethereum past block 17, a
    // bitcoin deposit credited, the watcher's passes done.
    let t = TestApp::with(simulated()).await;
    t.ok(&t.operator(), MINE, json!({"n": "ethereum", "c": 20}))
        .await;
    t.funded_btc("alice", "0.05000000").await;

    // Then the same database served by a fresh anvil: an ETH wallet, and 0.1 ether to
    // its address mined in block 8.
    let anvil = Anvil::start().await;
    let (node, router) = t.sibling_with(on(&anvil)).await;
    let created = gql_to(
        &router,
        Some(&t.user("alice")),
        CREATE_CRYPTO,
        json!({"c": "ETH"}),
    )
    .await;
    let wallet = created["data"]["createWallet"]["id"].as_str().unwrap();
    let address = created["data"]["createWallet"]["address"].as_str().unwrap();
    anvil.mine(7).await;
    anvil
        .send_from(DEV_ACCOUNT, Some(address), &[], ETHER / 10)
        .await;
    anvil.mine(1).await;
    assert_eq!(anvil.height().await, 8);
    anvil.mine(6).await;
    pass(&node).await;
    let balance = gql_to(
        &router,
        Some(&t.operator()),
        "query($w: ID!) { wallet(id: $w) { balance } }",
        json!({"w": wallet}),
    )
    .await;
    assert_eq!(
        balance["data"]["wallet"]["balance"], "0.100000000000000000",
        "{balance}"
    );
    assert_eq!(anvil.balance(address).await, ETHER / 10);

    // Back to the simulator for ethereum: its history is the node's now — refused, saying
    // why and what to do.
    drop((node, router));
    let why = refused(&t, &simulated()).await;
    for needle in [
        "ethereum",
        "the simulated chain",
        "chain id 31337",
        "genesis",
    ] {
        assert!(why.contains(needle), "{needle:?} not in: {why}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_with_another_backends_movements_is_not_served_by_this_one() {
    // Simulated ether credited to a wallet.
    let t = TestApp::with(simulated()).await;
    let created = t
        .ok(&t.user("alice"), CREATE_CRYPTO, json!({"c": "ETH"}))
        .await;
    let address = created["createWallet"]["address"].as_str().unwrap();
    t.ok(
        &t.operator(),
        INCOMING,
        json!({"n": "ethereum", "to": address, "a": "2"}),
    )
    .await;
    t.ok(&t.operator(), MINE, json!({"n": "ethereum", "c": 6}))
        .await;
    pass(&t.app).await;

    // A node of another chain for the same network: refused at start.
    let anvil = Anvil::start().await;
    anvil.mine(3).await;
    let why = refused(&t, &on(&anvil)).await;
    for needle in ["ethereum", "the simulated chain", "chain id 31337"] {
        assert!(why.contains(needle), "{needle:?} not in: {why}");
    }
    // The simulator serves it as before.
    let (again, _) = t.sibling_with(simulated()).await;
    pass(&again).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_node_of_the_same_chain_id_is_another_chain() {
    // A node's deposit credited.
    let first = Anvil::start().await;
    let t = TestApp::with(on(&first)).await;
    let created = t
        .ok(&t.user("alice"), CREATE_CRYPTO, json!({"c": "ETH"}))
        .await;
    let address = created["createWallet"]["address"].as_str().unwrap();
    first
        .send_from(DEV_ACCOUNT, Some(address), &[], ETHER)
        .await;
    first.mine(6).await;
    pass(&t.app).await;
    let genesis = first.block_hash(0).await.unwrap();

    // Another anvil with the same chain id (a node reset, a wrong snapshot): another
    // genesis block, another chain. Refused at start.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let second = Anvil::start().await;
    assert_ne!(second.block_hash(0).await.unwrap(), genesis);
    second.mine(10).await;
    let why = refused(&t, &on(&second)).await;
    assert!(why.contains(&genesis), "{why}");
    assert!(why.contains("genesis"), "{why}");
}
