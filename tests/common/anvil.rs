//! A real Ethereum node for tests: anvil (Foundry's local node, pinned in
//! `tests/node/package.json` and installed by `npm ci --prefix tests/node`) on a free port,
//! mining only when asked; killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process::free_port;

/// anvil's chain id.
pub const CHAIN_ID: u64 = 31337;
/// anvil's first funded development account (10,000 ether).
pub const DEV_ACCOUNT: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
/// A second funded account.
pub const DEV_ACCOUNT_2: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
/// Wei per ether.
pub const ETHER: u128 = 1_000_000_000_000_000_000;

/// A JSON-RPC quantity (`"0x1a"`) as a number.
pub fn quantity(value: &Value) -> u128 {
    let hex = value
        .as_str()
        .unwrap_or_else(|| panic!("not a quantity: {value}"));
    u128::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
}

pub struct Anvil {
    child: Option<Child>,
    port: u16,
    chain_id: u64,
    /// Where the chain is kept across a stop and a start, when it is.
    state: Option<PathBuf>,
    pub url: String,
    http: reqwest::Client,
}

/// The anvil binary: `$ANVIL`, or the platform package npm installed in `tests/node`.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("ANVIL") {
        return PathBuf::from(path);
    }
    let packages =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules/@foundry-rs");
    std::fs::read_dir(&packages)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/anvil"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "anvil is not installed in {}: run .ci/run, or `npm ci --prefix tests/node`",
                packages.display()
            )
        })
}

impl Anvil {
    /// Starts anvil with mining on demand only, and waits until it answers.
    pub async fn start() -> Anvil {
        Self::start_keeping(None).await
    }

    /// Like [`start`](Self::start), keeping the chain in `state` when it stops (and
    /// loading it from there when it starts again).
    pub async fn start_keeping(state: Option<PathBuf>) -> Anvil {
        Self::start_on(free_port(), CHAIN_ID, state).await
    }

    /// Like [`start_keeping`](Self::start_keeping), on `port` with `chain_id`.
    pub async fn start_on(port: u16, chain_id: u64, state: Option<PathBuf>) -> Anvil {
        let mut anvil = Anvil {
            child: None,
            port,
            chain_id,
            state,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        anvil.run().await;
        anvil
    }

    async fn run(&mut self) {
        let mut command = Command::new(binary());
        command
            .args(["--port", &self.port.to_string()])
            .args(["--chain-id", &self.chain_id.to_string()])
            .args(["--no-mining", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(state) = &self.state {
            command.arg("--state").arg(state);
        }
        self.child = Some(command.spawn().expect("anvil starts"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_rpc("eth_chainId", json!([])).await.is_err() {
            assert!(Instant::now() < deadline, "anvil did not answer");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the node cleanly (SIGTERM: it keeps its state, if it has a state file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id())
                && let Some(pid) = rustix::process::Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same port (with its state, if it kept one).
    pub async fn start_again(&mut self) {
        self.run().await;
    }

    pub async fn try_rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response: Value = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match response.get("error") {
            Some(error) => Err(error.to_string()),
            None => Ok(response["result"].clone()),
        }
    }

    /// A JSON-RPC call that must succeed.
    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params.clone())
            .await
            .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
    }

    /// Mines `count` blocks.
    pub async fn mine(&self, count: u64) {
        self.rpc("anvil_mine", json!([format!("{count:#x}")])).await;
    }

    pub async fn height(&self) -> u64 {
        let hex = self.rpc("eth_blockNumber", json!([])).await;
        u64::try_from(quantity(&hex)).unwrap()
    }

    /// A transfer of `wei` from a development account, signed by anvil but not sent: the
    /// raw bytes (EIP-1559, fixed nonce and fees, so the same bytes can be sent again
    /// after a reorg).
    pub async fn sign_transfer(&self, from: &str, to: &str, wei: u128, nonce: u64) -> String {
        let tx = json!({
            "from": from, "to": to, "value": format!("{wei:#x}"),
            "nonce": format!("{nonce:#x}"), "gas": "0x5208",
            "maxFeePerGas": "0x174876e800", "maxPriorityFeePerGas": "0x3b9aca00",
            "chainId": format!("{CHAIN_ID:#x}"),
        });
        self.rpc("eth_signTransaction", json!([tx]))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A contract call from a development account, signed by anvil but not sent: the raw
    /// bytes (EIP-1559, fixed nonce, gas and fees, so the same bytes can be sent again or
    /// put into a reorganised chain).
    pub async fn sign_call(&self, from: &str, to: &str, data: &[u8], nonce: u64) -> String {
        let tx = json!({
            "from": from, "to": to, "value": "0x0",
            "data": format!("0x{}", alloy_primitives::hex::encode(data)),
            "nonce": format!("{nonce:#x}"), "gas": "0x7a120",
            "maxFeePerGas": "0x174876e800", "maxPriorityFeePerGas": "0x3b9aca00",
            "chainId": format!("{CHAIN_ID:#x}"),
        });
        self.rpc("eth_signTransaction", json!([tx]))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sends raw bytes; returns the transaction hash.
    pub async fn send_raw(&self, raw: &str) -> String {
        self.rpc("eth_sendRawTransaction", json!([raw]))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Replaces the newest `depth` blocks by as many new ones, holding `transactions`
    /// (raw bytes, each with the offset of its block among the new ones).
    pub async fn reorg(&self, depth: u64, transactions: &[(&str, u64)]) {
        let txs: Vec<Value> = transactions
            .iter()
            .map(|(raw, offset)| json!([raw, offset]))
            .collect();
        self.rpc("anvil_reorg", json!([depth, txs])).await;
    }

    /// Sends a transaction from a development account (signed by anvil) and returns its
    /// hash; it is mined with the next block.
    pub async fn send_from(&self, from: &str, to: Option<&str>, data: &[u8], wei: u128) -> String {
        let mut tx = json!({
            "from": from, "value": format!("{wei:#x}"),
            "data": format!("0x{}", alloy_primitives::hex::encode(data)),
        });
        if let Some(to) = to {
            tx["to"] = json!(to);
        }
        self.rpc("eth_sendTransaction", json!([tx]))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The receipt of a mined transaction.
    pub async fn receipt(&self, hash: &str) -> Value {
        self.rpc("eth_getTransactionReceipt", json!([hash])).await
    }

    /// Deploys the test token (`tests/fixtures/erc20`) from the first development account
    /// and mines it; returns its address.
    pub async fn deploy_test_token(&self, name: &str, symbol: &str) -> String {
        use alloy::sol_types::SolValue;
        let bin = include_str!("../fixtures/erc20/TestToken.bin").trim();
        let mut code = alloy_primitives::hex::decode(bin).unwrap();
        code.extend((name.to_owned(), symbol.to_owned()).abi_encode_params());
        let hash = self.send_from(DEV_ACCOUNT, None, &code, 0).await;
        self.mine(1).await;
        let receipt = self.receipt(&hash).await;
        assert_eq!(receipt["status"], "0x1", "{receipt}");
        let address: alloy_primitives::Address = receipt["contractAddress"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        address.to_checksum(None)
    }

    /// Deploys `TokenBatch` (`tests/fixtures/erc20`: several token transfers in one
    /// transaction) from the first development account and mines it; returns its address.
    pub async fn deploy_token_batch(&self) -> String {
        let bin = include_str!("../fixtures/erc20/TokenBatch.bin").trim();
        let code = alloy_primitives::hex::decode(bin).unwrap();
        let hash = self.send_from(DEV_ACCOUNT, None, &code, 0).await;
        self.mine(1).await;
        let receipt = self.receipt(&hash).await;
        assert_eq!(receipt["status"], "0x1", "{receipt}");
        let address: alloy_primitives::Address = receipt["contractAddress"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        address.to_checksum(None)
    }

    /// The hash of block `number` (`None`: no such block).
    pub async fn block_hash(&self, number: u64) -> Option<String> {
        let block = self
            .rpc(
                "eth_getBlockByNumber",
                json!([format!("{number:#x}"), false]),
            )
            .await;
        block["hash"].as_str().map(str::to_owned)
    }

    /// The balance of `address`, in wei.
    pub async fn balance(&self, address: &str) -> u128 {
        let hex = self.rpc("eth_getBalance", json!([address, "latest"])).await;
        quantity(&hex)
    }

    /// `address`'s balance of the token at `contract`, in its smallest unit.
    pub async fn token_balance(&self, contract: &str, address: &str) -> u128 {
        use alloy::sol_types::SolCall;
        alloy::sol! { function balanceOf(address owner) returns (uint256); }
        let call = balanceOfCall {
            owner: address.parse().unwrap(),
        };
        let data = format!("0x{}", alloy_primitives::hex::encode(call.abi_encode()));
        let hex = self
            .rpc(
                "eth_call",
                json!([{"to": contract, "data": data}, "latest"]),
            )
            .await;
        u128::from_str_radix(hex.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    /// How many transactions `address` has sent that were mined (its nonce).
    pub async fn sent(&self, address: &str) -> u64 {
        let hex = self
            .rpc("eth_getTransactionCount", json!([address, "latest"]))
            .await;
        u64::try_from(quantity(&hex)).unwrap()
    }

    /// Whether the node knows the transaction (pending or mined).
    pub async fn knows(&self, hash: &str) -> bool {
        !self
            .rpc("eth_getTransactionByHash", json!([hash]))
            .await
            .is_null()
    }

    /// Forgets a pending transaction, as a node restarting or evicting it would.
    pub async fn drop_transaction(&self, hash: &str) {
        self.rpc("anvil_dropTransaction", json!([hash])).await;
    }

    /// Sets the base fee of the next block (in wei).
    pub async fn set_next_base_fee(&self, wei: u128) {
        self.rpc(
            "anvil_setNextBlockBaseFeePerGas",
            json!([format!("{wei:#x}")]),
        )
        .await;
    }

    /// Stops the node (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.kill();
    }
}
