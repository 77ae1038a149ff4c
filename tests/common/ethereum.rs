//! What the Ethereum tests share: an app served by anvil, wallets, worker passes,
//! reconciliation.

use serde_json::json;
use wallet::app::App;
use wallet::chain::ethereum::{NodeConfig, Token};
use wallet::chain_worker::PassReport;

use super::anvil::{Anvil, CHAIN_ID};
use super::{CREATE_CRYPTO, Options, TestApp};

/// Served by `anvil`, with a seed of its own (the tests' usual mnemonic is anvil's: its
/// first addresses are anvil's funded development accounts).
pub fn on(anvil: &Anvil) -> Options {
    Options {
        ethereum: Some(NodeConfig {
            chain_id: Some(CHAIN_ID),
            replace_after_blocks: 3,
            ..NodeConfig::new(anvil.url.as_str())
        }),
        mnemonic: "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                   abandon abandon about",
        ..Options::default()
    }
}

/// The test token deployed on `anvil` and offered as the currency `TUSD` (6 decimals):
/// its contract address, and the options serving it.
pub async fn with_test_token(anvil: &Anvil) -> (String, Options) {
    let contract = anvil.deploy_test_token("Test USD", "TUSD").await;
    let mut options = on(anvil);
    if let Some(node) = &mut options.ethereum {
        node.tokens = vec![Token {
            code: "TUSD".into(),
            contract: contract.clone(),
            decimals: 6,
        }];
    }
    (contract, options)
}

pub async fn eth_wallet(t: &TestApp, user: &str) -> (String, String) {
    crypto_wallet(t, user, "ETH").await
}

pub async fn crypto_wallet(t: &TestApp, user: &str, currency: &str) -> (String, String) {
    let w = t
        .ok(&t.user(user), CREATE_CRYPTO, json!({"c": currency}))
        .await["createWallet"]
        .clone();
    (
        w["id"].as_str().unwrap().to_owned(),
        w["address"].as_str().unwrap().to_owned(),
    )
}

/// Waits until `app`'s ethereum node is connected and verified (after a start without it,
/// or a lost connection, the supervisor connects again with backoff).
pub async fn connected(app: &App) {
    use wallet::chain::Chain as _;
    super::wait_until(
        "the ethereum node is connected and verified",
        std::time::Duration::from_secs(30),
        || async { app.state.chains.available("ethereum").is_ok() },
    )
    .await;
}

/// One chain worker pass of `app`, which must succeed.
pub async fn pass(app: &App) -> PassReport {
    app.chain_worker()
        .expect("a chain worker")
        .pass()
        .await
        .expect("a worker pass")
}

/// Reconciles `wallet` against the chain, from the epoch to now.
pub async fn reconcile(t: &TestApp, wallet: &str) -> serde_json::Value {
    // Block times have whole seconds: let the newest block's second pass.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    t.ok(
        &t.operator(),
        "mutation($w: ID!, $end: DateTime!) { reconcileWallet(input: {walletId: $w,
           startTime: \"2020-01-01T00:00:00Z\", endTime: $end}) {
           status systemBalance externalBalance unmatchedTransactions mismatchReason notes } }",
        json!({"w": wallet, "end": chrono::Utc::now().to_rfc3339()}),
    )
    .await["reconcileWallet"]
        .clone()
}
