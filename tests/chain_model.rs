//! Seeded random test of the chain flows, like the model test for fiat: two real server
//! processes watch one real node (anvil) while random steps happen — ether deposits,
//! token deposits of several transfers in one transaction, ether withdrawals, fee spikes
//! that force replacements, reorganisations of random depth (deeper than the six
//! confirmations too), transactions the reorganisation dropped sent again or not, a server
//! killed with SIGKILL and started again, the node stopped and started again. When the
//! chain settles, every wallet's ledger balance equals its address's balance on chain once
//! the operator has corrected the credits a reorganisation took back for good (the
//! documented runbook), every trial balance is 0, no deposit is credited twice, nothing
//! stays locked, and every wallet reconciles MATCHED.
//!
//! `WALLET_CHAIN_MODEL_SEED=<n>` replays a run (the seed is printed); `WALLET_CHAIN_MODEL_STEPS`
//! sets the number of steps (default 30).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use alloy::primitives::U256;
use alloy::sol_types::SolCall;
use common::TestDb;
use common::anvil::{Anvil, CHAIN_ID, DEV_ACCOUNT, DEV_ACCOUNT_2, ETHER, quantity};
use common::process::{ServerProcess, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use wallet::auth::{Role, TokenKeys};

alloy::sol! {
    function mint(address to, uint256 value);
    function pay(address token, address[] to, uint256[] values);
}

/// The custody seed (the tests' usual mnemonic is anvil's: its addresses are anvil's
/// funded accounts).
const SEED: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                    abandon abandon about";
const USERS: usize = 3;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One of our transactions on the chain: its raw bytes, to send again after a
/// reorganisation dropped it.
struct Sent {
    raw: String,
    hash: String,
}

struct World {
    anvil: Anvil,
    db: TestDb,
    env: Vec<(String, String)>,
    servers: Vec<ServerProcess>,
    http: reqwest::Client,
    operator: String,
    users: Vec<String>,
    /// Ether wallets: (id, address).
    eth: Vec<(String, String)>,
    /// Token wallets: (id, address).
    tokens: Vec<(String, String)>,
    contract: String,
    batch: String,
    /// Deposits we sent, by hash.
    sent: BTreeMap<String, Sent>,
    /// The height the node had when it last started: anvil keeps no state of older blocks
    /// across a restart, so it can reorganise only the blocks mined since.
    floor: u64,
}

impl World {
    fn base(&self, rng: &mut StdRng) -> String {
        self.servers[rng.random_range(0..self.servers.len())]
            .base
            .clone()
    }

    async fn gql(&self, base: &str, token: &str, query: &str, vars: Value) -> Value {
        let body = post(&self.http, base, token, query, vars)
            .await
            .expect("the server answers");
        assert!(body.get("errors").is_none(), "{body}");
        body["data"].clone()
    }

    async fn start_server(&self) -> ServerProcess {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ServerProcess::start_with(&self.db.url, &env).await
    }

    /// Lets both servers' workers see the chain as it is now.
    async fn settle_a_moment(&self) {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    /// Sends our own signed bytes; `false` when the node refuses them (their nonce was
    /// taken by another transaction since).
    async fn send_raw(&self, raw: &str) -> bool {
        self.anvil
            .try_rpc("eth_sendRawTransaction", json!([raw]))
            .await
            .is_ok()
    }

    async fn pending_nonce(&self) -> u64 {
        let hex = self
            .anvil
            .rpc("eth_getTransactionCount", json!([DEV_ACCOUNT, "pending"]))
            .await;
        u64::try_from(quantity(&hex)).unwrap()
    }

    async fn deposit_ether(&mut self, rng: &mut StdRng) {
        let (_, address) = self.eth[rng.random_range(0..self.eth.len())].clone();
        let wei = ETHER / 100 * rng.random_range(1..=50u128);
        // The node's next nonce: a transaction a reorganisation dropped is then replaced
        // by this one, and gone for good.
        let nonce = self.pending_nonce().await;
        let raw = self
            .anvil
            .sign_transfer(DEV_ACCOUNT, &address, wei, nonce)
            .await;
        if self.send_raw(&raw).await {
            let hash = self.hash_of(&raw).await;
            self.sent.insert(hash.clone(), Sent { raw, hash });
        }
    }

    /// Several token transfers in one transaction, to one or more token wallets.
    async fn deposit_tokens(&mut self, rng: &mut StdRng) {
        let n = rng.random_range(1..=3);
        let to: Vec<_> = (0..n)
            .map(|_| {
                self.tokens[rng.random_range(0..self.tokens.len())]
                    .1
                    .parse()
                    .unwrap()
            })
            .collect();
        let values = (0..n)
            .map(|_| U256::from(rng.random_range(1..=5_000_000u64)))
            .collect();
        let call = payCall {
            token: self.contract.parse().unwrap(),
            to,
            values,
        };
        let nonce = self.pending_nonce().await;
        let raw = self
            .anvil
            .sign_call(DEV_ACCOUNT, &self.batch, &call.abi_encode(), nonce)
            .await;
        if self.send_raw(&raw).await {
            let hash = self.hash_of(&raw).await;
            self.sent.insert(hash.clone(), Sent { raw, hash });
        }
    }

    /// The hash of raw bytes just sent (keccak of the bytes).
    async fn hash_of(&self, raw: &str) -> String {
        let bytes = alloy_primitives::hex::decode(raw).unwrap();
        format!("{:#x}", alloy_primitives::keccak256(bytes))
    }

    /// A user withdraws a little ether, when their wallet has some available.
    async fn withdraw(&self, rng: &mut StdRng, key: &str) {
        let i = rng.random_range(0..self.eth.len());
        let (wallet, _) = &self.eth[i];
        let base = self.base(rng);
        let available: Decimal = self
            .gql(
                &base,
                &self.users[i],
                "query($w: ID!) { wallet(id: $w) { availableBalance } }",
                json!({"w": wallet}),
            )
            .await["wallet"]["availableBalance"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let amount = Decimal::new(rng.random_range(1..=20), 3);
        if available < amount + Decimal::new(1, 2) {
            return;
        }
        let body = post(
            &self.http,
            &base,
            &self.users[i],
            common::CRYPTO_WITHDRAW,
            json!({"w": wallet, "to": DEV_ACCOUNT_2, "a": amount.to_string(), "k": key}),
        )
        .await
        .expect("the server answers");
        // A refusal (the balance moved meanwhile) is fine; anything else is not.
        if let Some(code) = body["errors"][0]["extensions"]["code"].as_str() {
            assert!(
                ["INSUFFICIENT_FUNDS", "CHAIN_UNAVAILABLE"].contains(&code),
                "{body}"
            );
        }
    }

    /// Replaces the newest `depth` blocks with empty ones (what they held is dropped),
    /// then sends some of our dropped deposits again.
    async fn reorg(&self, rng: &mut StdRng, depth: u64) {
        let height = self.anvil.height().await;
        // Never below the contracts' blocks, nor below what the node can rebuild.
        let depth = depth.min(height.saturating_sub(self.floor.max(4)));
        if depth == 0 {
            return;
        }
        self.anvil.reorg(depth, &[]).await;
        for sent in self.sent.values() {
            if !self.anvil.knows(&sent.hash).await && rng.random_bool(0.5) {
                self.send_raw(&sent.raw).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_chain_steps_leave_every_wallet_equal_to_its_address() {
    let seed = env_u64("WALLET_CHAIN_MODEL_SEED").unwrap_or_else(rand::random);
    let steps = env_u64("WALLET_CHAIN_MODEL_STEPS").unwrap_or(30);
    eprintln!(
        "chain model seed {seed} (WALLET_CHAIN_MODEL_SEED={seed} reproduces the steps), {steps} steps"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let state = std::env::temp_dir().join(format!("anvil-model-{}.json", uuid::Uuid::new_v4()));
    let anvil = Anvil::start_keeping(Some(state.clone())).await;
    let contract = anvil.deploy_test_token("Test USD", "TUSD").await;
    let batch = anvil.deploy_token_batch().await;
    let mint = mintCall {
        to: batch.parse().unwrap(),
        value: U256::from(1_000_000_000_000u64),
    };
    anvil
        .send_from(DEV_ACCOUNT, Some(&contract), &mint.abi_encode(), 0)
        .await;
    anvil.mine(1).await;

    let db = TestDb::new().await;
    let env: Vec<(String, String)> = [
        ("WALLET_SEED", SEED.to_owned()),
        ("WALLET_ETHEREUM_RPC_URL", anvil.url.clone()),
        ("WALLET_ETHEREUM_CHAIN_ID", CHAIN_ID.to_string()),
        ("WALLET_ETHEREUM_TOKENS", format!("TUSD:{contract}:6")),
        ("WALLET_ETHEREUM_REPLACE_AFTER_BLOCKS", "3".to_owned()),
        ("WALLET_CHAIN_POLL_MS", "150".to_owned()),
        ("WALLET_SIMULATED_CHAIN", "false".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let keys = TokenKeys::new(common::JWT_SECRET.as_bytes());
    let hour = Duration::from_secs(3600);
    let mut world = World {
        anvil,
        db,
        env,
        servers: Vec::new(),
        http: reqwest::Client::new(),
        operator: keys.mint("back-office", Role::Operator, hour).unwrap(),
        users: (0..USERS)
            .map(|i| keys.mint(&format!("u{i}"), Role::User, hour).unwrap())
            .collect(),
        eth: Vec::new(),
        tokens: Vec::new(),
        contract,
        batch,
        sent: BTreeMap::new(),
        floor: 0,
    };
    for _ in 0..2 {
        let server = world.start_server().await;
        world.servers.push(server);
    }
    let base = world.servers[0].base.clone();
    for i in 0..USERS {
        for (currency, into) in [("ETH", 0), ("TUSD", 1)] {
            let w = world
                .gql(
                    &base,
                    &world.users[i],
                    common::CREATE_CRYPTO,
                    json!({"c": currency}),
                )
                .await["createWallet"]
                .clone();
            let pair = (
                w["id"].as_str().unwrap().to_owned(),
                w["address"].as_str().unwrap().to_owned(),
            );
            if into == 0 {
                world.eth.push(pair);
            } else {
                world.tokens.push(pair);
            }
        }
    }
    // Some ether in every wallet to start with.
    for _ in 0..USERS * 2 {
        world.deposit_ether(&mut rng).await;
    }
    world.anvil.mine(8).await;
    world.settle_a_moment().await;

    for step in 0..steps {
        let roll = rng.random_range(0..100);
        match roll {
            0..=19 => world.deposit_ether(&mut rng).await,
            20..=34 => world.deposit_tokens(&mut rng).await,
            35..=54 => world.withdraw(&mut rng, &format!("w-{seed}-{step}")).await,
            55..=69 => {
                let blocks = rng.random_range(1..=6);
                world.anvil.mine(blocks).await;
            }
            70..=79 => {
                // Up to twice the confirmations: credits are taken back too.
                let depth = rng.random_range(1..=12);
                world.reorg(&mut rng, depth).await;
            }
            80..=84 => {
                // A fee spike: what waits in the pool is replaced with a higher fee.
                world.anvil.set_next_base_fee(300_000_000_000).await;
                world.anvil.mine(1).await;
            }
            85..=92 => {
                let i = rng.random_range(0..world.servers.len());
                world.servers[i].kill();
                world.servers[i] = world.start_server().await;
            }
            _ => {
                world.anvil.stop();
                world.anvil.start_again().await;
                world.floor = world.anvil.height().await;
            }
        }
        world.settle_a_moment().await;
    }

    // The chain settles: fees back to normal, our dropped deposits sent once more (those
    // whose nonce was taken meanwhile are gone for good), blocks until nothing is in
    // flight.
    world.anvil.set_next_base_fee(1_000_000_000).await;
    let dropped: Vec<String> = {
        let mut out = Vec::new();
        for sent in world.sent.values() {
            if !world.anvil.knows(&sent.hash).await {
                out.push(sent.raw.clone());
            }
        }
        out
    };
    for raw in &dropped {
        world.send_raw(raw).await;
    }
    let pg = world.db.client().await;
    let in_flight = async || -> i64 {
        pg.query_one(
            "SELECT count(*) FROM transactions
              WHERE hold AND status IN ('PENDING', 'PROCESSING')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    let mut settled = false;
    for _ in 0..60 {
        world.anvil.mine(1).await;
        world.settle_a_moment().await;
        if in_flight().await == 0 {
            // A few more blocks: every confirmation count past the threshold.
            world.anvil.mine(8).await;
            world.settle_a_moment().await;
            world.settle_a_moment().await;
            if in_flight().await == 0 {
                settled = true;
                break;
            }
        }
    }
    let stuck = pg
        .query(
            "SELECT id, type, status, chain_tx_hash FROM transactions
              WHERE hold AND status IN ('PENDING', 'PROCESSING')",
            &[],
        )
        .await
        .unwrap();
    assert!(
        settled,
        "seed {seed}: still in flight: {:?}",
        stuck
            .iter()
            .map(|r| (
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, Option<String>>(3)
            ))
            .collect::<Vec<_>>()
    );

    // Credits a reorganisation took back for good: the runbook reverses their settlement.
    let reorged = pg
        .query(
            "SELECT s.id FROM transactions h JOIN transactions s ON s.hold_id = h.id
              WHERE h.hold AND h.type = 'DEPOSIT' AND h.status = 'REORGED'
                AND s.type = 'DEPOSIT' AND NOT s.hold
                AND NOT EXISTS (SELECT 1 FROM transactions r WHERE r.reverses_id = s.id)",
            &[],
        )
        .await
        .unwrap();
    for row in &reorged {
        let id: i64 = row.get(0);
        let global =
            wallet::graphql::ids::encode_id(wallet::graphql::ids::NodeType::Transaction, id);
        world
            .gql(
                &base_of(&world),
                &world.operator,
                "mutation($t: ID!, $k: String!) { reverseTransaction(input: {transactionId: $t,
                   idempotencyKey: $k, reason: \"removed by a reorganisation\"}) { id } }",
                json!({"t": global.to_string(), "k": format!("reorg-{id}")}),
            )
            .await;
    }
    let tally = pg
        .query_one(
            "SELECT (SELECT count(*) FROM transactions WHERE hold AND type = 'WITHDRAW'
                        AND status = 'COMPLETED'),
                    (SELECT count(*) FROM transactions WHERE hold AND type = 'WITHDRAW'
                        AND status = 'FAILED'),
                    (SELECT count(*) FROM withdrawal_attempts WHERE replaces IS NOT NULL),
                    (SELECT count(*) FROM transactions WHERE type = 'REVERSAL')",
            &[],
        )
        .await
        .unwrap();
    eprintln!(
        "seed {seed}: {} deposits sent, {} dropped at the end, {} reorganised credits \
         reversed; withdrawals {} completed, {} failed, {} replacements; {} reversals in all",
        world.sent.len(),
        dropped.len(),
        reorged.len(),
        tally.get::<_, i64>(0),
        tally.get::<_, i64>(1),
        tally.get::<_, i64>(2),
        tally.get::<_, i64>(3),
    );

    // Every wallet equals its address on chain.
    let base = base_of(&world);
    let balance = async |w: &str| -> Decimal {
        world
            .gql(
                &base,
                &world.operator,
                "query($w: ID!) { wallet(id: $w) { balance lockedBalance } }",
                json!({"w": w}),
            )
            .await["wallet"]["balance"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    for (wallet, address) in &world.eth {
        let on_chain = Decimal::from_i128_with_scale(
            i128::try_from(world.anvil.balance(address).await).unwrap(),
            18,
        );
        assert_eq!(
            balance(wallet).await,
            on_chain,
            "seed {seed}: ETH wallet {wallet}"
        );
    }
    for (wallet, address) in &world.tokens {
        let on_chain = Decimal::from_i128_with_scale(
            i128::try_from(world.anvil.token_balance(&world.contract, address).await).unwrap(),
            6,
        );
        assert_eq!(
            balance(wallet).await,
            on_chain,
            "seed {seed}: TUSD wallet {wallet}"
        );
    }
    // Nothing locked; no deposit credited twice; the books balance.
    let locked: i64 = pg
        .query_one(
            "SELECT count(*) FROM wallets WHERE locked_balance <> 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        locked, 0,
        "seed {seed}: funds locked with nothing in flight"
    );
    let twice: i64 = pg
        .query_one(
            "SELECT count(*) FROM transactions h
              WHERE h.hold AND h.type = 'DEPOSIT'
                AND (SELECT count(*) FROM transactions s
                      WHERE s.hold_id = h.id AND s.type = 'DEPOSIT' AND NOT s.hold)
                  - (SELECT count(*) FROM transactions r
                       JOIN transactions s ON r.reverses_id = s.id
                      WHERE s.hold_id = h.id) > 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "seed {seed}: a deposit credited twice");
    let trial = world
        .gql(
            &base,
            &world.operator,
            "{ trialBalance { currency imbalance } }",
            json!({}),
        )
        .await;
    for row in trial["trialBalance"].as_array().unwrap() {
        assert_eq!(row["imbalance"], "0", "seed {seed}: {row}");
    }
    // And the chain agrees, wallet by wallet.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (wallet, _) in world.eth.iter().chain(&world.tokens) {
        let rec = world
            .gql(
                &base,
                &world.operator,
                "mutation($w: ID!, $end: DateTime!) { reconcileWallet(input: {walletId: $w,
                   startTime: \"2020-01-01T00:00:00Z\", endTime: $end}) {
                   status mismatchReason notes } }",
                json!({"w": wallet, "end": chrono::Utc::now().to_rfc3339()}),
            )
            .await["reconcileWallet"]
            .clone();
        assert_eq!(rec["status"], "MATCHED", "seed {seed}: {wallet}: {rec}");
    }
    let _ = std::fs::remove_file(&state);
}

fn base_of(world: &World) -> String {
    world.servers[0].base.clone()
}
