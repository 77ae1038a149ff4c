//! Crypto wallets get HD-derived addresses: the right ones (published vectors), distinct
//! and without gaps under concurrency, and never a key in the database.

mod common;

use std::collections::HashSet;

use common::{TEST_MNEMONIC, TestApp, error_code};
use serde_json::json;
use wallet::custody::{Chain, Custody};

const CREATE: &str =
    "mutation($c: String!, $u: String) { createWallet(input: {currency: $c, userId: $u}) {
  id currency network address derivationPath balance kind } }";

#[tokio::test]
async fn crypto_wallets_get_derived_addresses() {
    let t = TestApp::new().await;
    let alice = t.user("alice");
    let eth = t.ok(&alice, CREATE, json!({"c": "ETH"})).await["createWallet"].clone();
    // The first BIP44 address of the "test … junk" mnemonic, a published vector.
    assert_eq!(eth["address"], "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
    assert_eq!(eth["derivationPath"], "m/44'/60'/0'/0/0");
    assert_eq!(eth["network"], "ethereum");
    assert_eq!(eth["kind"], "CRYPTO");
    assert_eq!(eth["balance"], "0.000000000000000000");

    let btc = t.ok(&alice, CREATE, json!({"c": "BTC"})).await["createWallet"].clone();
    let expected = Custody::from_mnemonic(TEST_MNEMONIC)
        .unwrap()
        .derive(Chain::Bitcoin, 0)
        .unwrap();
    assert_eq!(btc["address"], expected.address.as_str());
    assert!(expected.address.starts_with("bc1q"));
    assert_eq!(btc["derivationPath"], "m/84'/0'/0'/0/0");
    assert_eq!(btc["network"], "bitcoin");
    assert_eq!(btc["balance"], "0.00000000");

    // Again: the same wallet, and no index is spent.
    let again = t.ok(&alice, CREATE, json!({"c": "ETH"})).await["createWallet"].clone();
    assert_eq!(again, eth);
    let bobs = t.ok(&t.user("bob"), CREATE, json!({"c": "ETH"})).await["createWallet"].clone();
    assert_eq!(bobs["derivationPath"], "m/44'/60'/0'/0/1");
    assert_eq!(
        bobs["address"],
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    );

    // Fiat wallets have none of it.
    let usd = t.ok(&alice, CREATE, json!({"c": "USD"})).await["createWallet"].clone();
    assert_eq!(usd["address"], json!(null));
    assert_eq!(usd["network"], json!(null));
    // Crypto wallets are not moved with the fiat mutations.
    let body = t.deposit(eth["id"].as_str().unwrap(), "1", "eth-dep").await;
    assert_eq!(error_code(&body), "CURRENCY_NOT_SUPPORTED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_get_distinct_gapless_addresses() {
    let t = TestApp::with(common::Options {
        pool_size: 20,
        ..Default::default()
    })
    .await;
    let users = 40;
    // Every user asks twice at once, so creations also race for the same wallet.
    let calls = (0..users * 2).map(|i| {
        let token = t.user(&format!("user{}", i % users));
        let t = &t;
        async move { t.ok(&token, CREATE, json!({"c": "BTC"})).await["createWallet"].clone() }
    });
    let wallets = futures_util::future::join_all(calls).await;

    let ids: HashSet<_> = wallets.iter().map(|w| w["id"].clone()).collect();
    let addresses: HashSet<_> = wallets.iter().map(|w| w["address"].clone()).collect();
    assert_eq!(ids.len(), users, "one wallet per user");
    assert_eq!(addresses.len(), users, "one address per wallet");
    let mut indexes: Vec<u32> = wallets
        .iter()
        .map(|w| {
            let path = w["derivationPath"].as_str().unwrap();
            path.rsplit('/').next().unwrap().parse().unwrap()
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    indexes.sort();
    assert_eq!(
        indexes,
        (0..users as u32).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );

    // The database holds paths and addresses, and the counter agrees.
    let pg = t.db.client().await;
    let next: i32 = pg
        .query_one(
            "SELECT next_index FROM hd_indexes WHERE network = 'bitcoin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next as usize, users);
    let custody = Custody::from_mnemonic(TEST_MNEMONIC).unwrap();
    for w in &wallets {
        let index: u32 = w["derivationPath"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            w["address"],
            custody
                .derive(Chain::Bitcoin, index)
                .unwrap()
                .address
                .as_str()
        );
    }
}
