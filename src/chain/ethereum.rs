//! Ethereum through a JSON-RPC node (anvil in development and tests, any execution client
//! in production), with alloy.
//!
//! What the ledger needs, read from the node's canonical chain:
//! - a transfer's confirmations are counted only while the block that includes it is the
//!   canonical block at that height (a receipt of a block a reorg replaced is ignored);
//! - the deposit watcher's [`Chain::transfers_since`] remembers the hash of every block it
//!   returned (`chain_blocks`, keyed by this node's chain id and genesis block: see
//!   [`super::backends`]). When a block it remembers is no longer canonical, it walks back
//!   to the newest block both chains share and scans forward from there, so a transfer
//!   moved to another block by a reorg is seen again there (and recorded once: the ledger
//!   keys deposits by name, which a reorg does not change — a token transfer is named by
//!   its transaction and its log's place among the transaction's logs, never by its
//!   log's index in the block). In the transaction that forgets the replaced blocks it
//!   writes "blocks above N are being replaced" (`chain_reorgs`), which the ledger
//!   follows to the end whatever happens to this pass (`crate::chain::reorg`);
//! - withdrawals ([`AccountChain`]): the address's pending nonce, current fees, and
//!   EIP-1559 transactions signed with the wallet's key (ether, or an ERC-20 `transfer`);
//! - balances at a block (`eth_getBalance`, a token's `balanceOf`) for reconciliation.
//!
//! Amounts are ether (wei / 10^18) as exact decimals. Every call has a deadline: a node
//! that does not answer is [`ChainError::Unavailable`], never a hung worker.
//!
//! The node is verified, not trusted: it is used only once it reports the configured
//! chain id (or, without one, the id it first reported) and each configured token's
//! contract reports the configured `decimals()`. Until then, and from the moment a call
//! finds it unreachable until it is verified again, the network is unavailable (see
//! [`super::link`]) while the rest of the service serves; [`EthereumNode::supervise`]
//! connects again in the background with exponential backoff, and checks the chain id
//! every minute. The chain worker checks it before each pass's work too
//! ([`Chain::verify`]): a node that starts serving another chain is taken out of use
//! before any deposit is read from it or any withdrawal sent to it.

use std::future::IntoFuture;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alloy::consensus::Transaction as _;
use alloy::consensus::{TxEip1559, TxEnvelope};
use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::network::TransactionResponse as _;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Block, Filter, Log, TransactionReceipt};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent as _;
use alloy::transports::{RpcError, TransportErrorKind};
use chrono::{DateTime, TimeZone as _, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use rust_decimal::Decimal;

use super::backends;
use super::link::{self, Link};
use super::rpc::{self, CALL_TIMEOUT, Endpoint, NodeUrl};
use super::{
    AccountChain, Chain, ChainError, ChainTransfer, Fee, GasFees, GasQuote, NonceTransfer, Scanned,
    SignedTransfer, TransferStatus,
};
use crate::db::PgPool;
use crate::schema::chain_blocks;
use crate::task::AbortOnDrop;

/// The network name this client serves.
pub const NETWORK: &str = "ethereum";
/// Wei per ether, as a decimal scale.
const ETHER_SCALE: u32 = 18;
/// Gas of a plain ether transfer.
const TRANSFER_GAS: u64 = 21_000;
/// Gas a token withdrawal may use: an ERC-20 `transfer` costs 30,000–60,000; unused gas
/// is not charged.
const TOKEN_TRANSFER_GAS: u64 = 100_000;
/// How often a connected node's chain id is checked again (besides the chain worker's
/// check before each pass).
const RECHECK_EVERY: Duration = Duration::from_secs(60);
/// Wei per gwei.
pub const GWEI: u128 = 1_000_000_000;
/// The default of `WALLET_ETHEREUM_MAX_FEE_PER_GAS_GWEI`: above what mainnet asks but in
/// its rarest spikes, far below what a node gone wrong could make the service pay.
pub const DEFAULT_MAX_FEE_PER_GAS_GWEI: u64 = 500;
/// Blocks whose hashes are kept for reorg detection: deeper reorgs are not followed.
const REMEMBERED_BLOCKS: i64 = 1024;
/// Blocks one deposit scan reads at most.
const MAX_BLOCKS_PER_SCAN: u64 = 500;
/// Where a watcher with no history starts: this many blocks below the tip (a node's whole
/// history is not scanned; wallets are younger than that).
const FIRST_SCAN_DEPTH: u64 = 256;

/// How to reach the node, and what it must be. `Debug` shows the URL redacted.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// JSON-RPC endpoint: `https://…`, or `http://…` to a node on this machine.
    pub rpc_url: NodeUrl,
    /// A PEM file of the CAs the node's certificate must chain to (instead of the public
    /// web's): for a node with a certificate from a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// The chain id the node must report (without one: the first id it reports, for as
    /// long as the process runs). Required in production.
    pub chain_id: Option<u64>,
    /// ERC-20 tokens offered as currencies of their own.
    pub tokens: Vec<Token>,
    /// Blocks a withdrawal may wait unmined before it is replaced with a higher fee.
    pub replace_after_blocks: u64,
    /// The most the service offers per gas for any transaction, in wei.
    pub max_fee_per_gas: u128,
}

impl NodeConfig {
    /// A node at `rpc_url`, with the defaults of everything else.
    pub fn new(rpc_url: impl Into<NodeUrl>) -> Self {
        NodeConfig {
            rpc_url: rpc_url.into(),
            ca_file: None,
            chain_id: None,
            tokens: Vec::new(),
            replace_after_blocks: 5,
            max_fee_per_gas: u128::from(DEFAULT_MAX_FEE_PER_GAS_GWEI) * GWEI,
        }
    }

    /// The endpoint, checked (`https://`, or `http://` on this machine only).
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        Endpoint::parse(
            "WALLET_ETHEREUM_RPC_URL",
            &self.rpc_url,
            self.ca_file.as_deref(),
        )
    }
}

/// `WALLET_ETHEREUM_MAX_FEE_PER_GAS_GWEI` (a decimal number of gwei, at most 9 decimals)
/// in wei.
pub fn parse_gwei(text: &str) -> Result<u128, String> {
    let gwei = crate::ledger::money::parse_decimal(text.trim())?;
    let wei = gwei
        .checked_mul(Decimal::from(GWEI))
        .filter(|w| w.is_sign_positive() && !w.is_zero() && w.fract().is_zero())
        .ok_or_else(|| format!("{text:?} must be more than 0 gwei, in whole wei"))?;
    u128::try_from(wei).map_err(|_| format!("{text:?} is too large"))
}

/// An ERC-20 token offered as a currency: its code, contract and decimals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub code: String,
    /// EIP-55 spelling.
    pub contract: String,
    pub decimals: u8,
}

/// Parses `CODE:0xCONTRACT:DECIMALS[,…]` (`WALLET_ETHEREUM_TOKENS`).
pub fn parse_tokens(list: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parts: Vec<&str> = item.split(':').map(str::trim).collect();
        let [code, contract, decimals] = parts[..] else {
            return Err(format!("{item:?} is not CODE:CONTRACT:DECIMALS"));
        };
        if code.is_empty()
            || !code
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        {
            return Err(format!(
                "token code {code:?} must be upper-case letters and digits"
            ));
        }
        let contract: Address = contract
            .parse()
            .map_err(|e| format!("token {code}: contract {contract:?}: {e}"))?;
        let decimals: u8 = decimals
            .parse()
            .ok()
            .filter(|d| *d <= 18)
            .ok_or_else(|| format!("token {code}: decimals {decimals:?} must be 0 to 18"))?;
        tokens.push(Token {
            code: code.to_owned(),
            contract: address(contract),
            decimals,
        });
    }
    Ok(tokens)
}

alloy::sol! {
    /// ERC-20's transfer event.
    event Transfer(address indexed from, address indexed to, uint256 value);
    /// ERC-20's transfer call.
    function transfer(address to, uint256 value) returns (bool);
    /// ERC-20's balance.
    function balanceOf(address owner) returns (uint256);
    /// ERC-20's decimals.
    function decimals() returns (uint8);
}

/// A followed token contract.
#[derive(Clone, Debug)]
struct Followed {
    code: String,
    contract: Address,
    decimals: u32,
}

#[derive(Clone)]
pub struct EthereumNode {
    provider: DynProvider,
    /// For logs: shown redacted.
    url: NodeUrl,
    /// For the memory of processed blocks.
    pool: PgPool,
    /// The chain id the node must serve: the configured one, or the first it reported.
    expected_chain_id: Arc<OnceLock<u64>>,
    /// The hash of the genesis block of the chain the node must serve: the first it
    /// reported (with the chain id, what the chain's history here is keyed by).
    expected_genesis: Arc<OnceLock<String>>,
    /// Token contracts followed, with their decimals.
    tokens: Arc<[Followed]>,
    replace_after_blocks: u64,
    max_fee_per_gas: u128,
    /// Whether the node may be used now.
    link: Arc<Link>,
}

/// Why [`EthereumNode::connect`] did not connect.
#[derive(Debug)]
pub enum ConnectError {
    /// The node did not answer (or not in time): tried again later. Why (redacted).
    Unreachable(String),
    /// The node answered, but is not what the configuration says: what to fix.
    Refused(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Unreachable(why) => write!(f, "unreachable: {why}"),
            ConnectError::Refused(why) => write!(f, "{}", super::redact::redact(why)),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ChainError {
    ChainError::Unavailable(rpc::bounded(&super::redact::redact(&e.to_string())))
}

/// How a node call failed.
enum CallFailure {
    /// No answer: the connection failed, or the deadline passed.
    Unreachable(String),
    /// The node answered with an error, or with something that is not the answer.
    Answered(String),
}

/// One node call under [`CALL_TIMEOUT`], whether the node may be used or not.
async fn rpc<T>(
    what: &str,
    f: impl IntoFuture<Output = Result<T, RpcError<TransportErrorKind>>>,
) -> Result<T, CallFailure> {
    match tokio::time::timeout(CALL_TIMEOUT, f.into_future()).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            let text = format!("ethereum node, {what}: {}", rpc::describe(&e));
            Err(match e {
                RpcError::Transport(_) => CallFailure::Unreachable(text),
                _ => CallFailure::Answered(text),
            })
        }
        Err(_) => Err(CallFailure::Unreachable(format!(
            "ethereum node, {what}: no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// Wei as ether.
pub fn ether(wei: U256) -> Result<Decimal, ChainError> {
    units(wei, ETHER_SCALE)
}

/// An integer amount of a coin's or token's smallest unit, in whole units.
fn units(value: U256, decimals: u32) -> Result<Decimal, ChainError> {
    let value = i128::try_from(value).map_err(|_| unavailable("an amount beyond 2^127 units"))?;
    Decimal::try_from_i128_with_scale(value, decimals).map_err(unavailable)
}

/// A whole amount in the smallest unit of a coin or token with `decimals` (an amount finer
/// than that is refused, never rounded).
fn to_units(amount: Decimal, decimals: u32) -> Result<U256, ChainError> {
    let refused = || {
        unavailable(format!(
            "{amount} is not a whole number of units at {decimals} decimals"
        ))
    };
    if amount.is_sign_negative() || amount.scale() > decimals {
        return Err(refused());
    }
    let mantissa = u128::try_from(amount.mantissa()).map_err(|_| refused())?;
    let factor = U256::from(10u8).pow(U256::from(decimals - amount.scale()));
    U256::from(mantissa).checked_mul(factor).ok_or_else(refused)
}

fn parse_address(text: &str) -> Result<Address, ChainError> {
    text.parse()
        .map_err(|e| unavailable(format!("address {text:?}: {e}")))
}

fn spell(hash: B256) -> String {
    format!("{hash:#x}")
}

fn address(a: Address) -> String {
    a.to_checksum(None)
}

fn parse_hash(hash: &str) -> Option<B256> {
    hash.parse().ok()
}

/// A block time as a timestamp.
fn time(timestamp: u64) -> DateTime<Utc> {
    Utc.timestamp_opt(i64::try_from(timestamp).unwrap_or(0), 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn block_number(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Blocks on top of (and including) `block` when the chain is at `tip`.
fn confirmations(block: u64, tip: u64) -> i64 {
    block_number(tip.saturating_sub(block).saturating_add(1))
}

impl EthereumNode {
    /// A client of the configured node, not connected yet: nothing is asked of the node
    /// until [`EthereumNode::connect`], and until that succeeds the network is
    /// unavailable. Refuses a URL that is not `https://` (or `http://` on this machine).
    pub fn new(config: &NodeConfig, pool: PgPool) -> anyhow::Result<Self> {
        let endpoint = config.endpoint().map_err(anyhow::Error::msg)?;
        let client = endpoint.client().map_err(anyhow::Error::msg)?;
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_reqwest(client, endpoint.url())
            .erased();
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                Ok(Followed {
                    code: t.code.clone(),
                    contract: t
                        .contract
                        .parse()
                        .map_err(|e| anyhow::anyhow!("token {}: {e}", t.code))?,
                    decimals: u32::from(t.decimals),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let expected_chain_id = OnceLock::new();
        if let Some(id) = config.chain_id {
            let _ = expected_chain_id.set(id);
        }
        Ok(EthereumNode {
            provider,
            url: config.rpc_url.clone(),
            pool,
            expected_chain_id: Arc::new(expected_chain_id),
            expected_genesis: Arc::new(OnceLock::new()),
            tokens: tokens.into(),
            replace_after_blocks: config.replace_after_blocks.max(1),
            max_fee_per_gas: config.max_fee_per_gas.max(1),
            link: Arc::new(Link::new(NETWORK)),
        })
    }

    /// The verified chain id, or why the node is not used now.
    pub fn chain_id(&self) -> Result<u64, ChainError> {
        self.link.ready()
    }

    /// The backend the node is ([`backends::node`]: its chain id and genesis block), once
    /// verified: what the chain history it serves is keyed by.
    fn identity(&self) -> Result<String, ChainError> {
        let chain_id = self.link.ready()?;
        let genesis = self
            .expected_genesis
            .get()
            .ok_or_else(|| unavailable("the node's genesis block is not known yet"))?;
        Ok(backends::node(chain_id, genesis))
    }

    /// Verifies the node — its chain id, and each token's `decimals()` — and on success
    /// puts it to use. A node that does not answer leaves the network unavailable; one
    /// that answers wrongly is refused (unavailable too, with what to fix).
    pub async fn connect(&self) -> Result<u64, ConnectError> {
        let verified = self.verify_node().await;
        match &verified {
            Ok(chain_id) => self.link.connected(*chain_id),
            Err(ConnectError::Unreachable(why)) => self.link.unreachable(why),
            Err(ConnectError::Refused(why)) => self.link.refused(why),
        }
        verified
    }

    async fn verify_node(&self) -> Result<u64, ConnectError> {
        let chain_id = self.reported_chain_id().await?;
        self.check_chain_id(chain_id)
            .map_err(ConnectError::Refused)?;
        let genesis = self.reported_genesis().await?;
        self.check_genesis(&genesis)
            .map_err(ConnectError::Refused)?;
        for token in self.tokens.iter() {
            self.check_token(token).await?;
        }
        self.claim(&backends::node(chain_id, &genesis)).await?;
        Ok(chain_id)
    }

    /// The hash of the node's genesis block, as its block 1 names it (its parent) once
    /// there is one: what a chain's later blocks build on never changes, while a node
    /// restored from a state dump (anvil's `--state`) may rebuild block 0 itself.
    async fn reported_genesis(&self) -> Result<String, ConnectError> {
        let unreachable = |failure| match failure {
            CallFailure::Unreachable(e) | CallFailure::Answered(e) => ConnectError::Unreachable(e),
        };
        let first = rpc(
            "eth_getBlockByNumber",
            self.provider
                .get_block_by_number(BlockNumberOrTag::Number(1)),
        )
        .await
        .map_err(unreachable)?;
        if let Some(first) = first {
            return Ok(spell(first.header.parent_hash));
        }
        let genesis = rpc(
            "eth_getBlockByNumber",
            self.provider
                .get_block_by_number(BlockNumberOrTag::Number(0)),
        )
        .await
        .map_err(unreachable)?;
        genesis
            .map(|b| spell(b.header.hash))
            .ok_or_else(|| ConnectError::Refused("the node has no genesis block".into()))
    }

    /// `reported` is the genesis block of the chain the node must serve (the first it
    /// ever reported here): a node reset to a fresh chain with the same chain id serves
    /// another chain.
    fn check_genesis(&self, reported: &str) -> Result<(), String> {
        let expected = self.expected_genesis.get_or_init(|| reported.to_owned());
        if expected == reported {
            return Ok(());
        }
        Err(format!(
            "the ethereum node at {} serves a chain with genesis block {reported}, not              {expected} (the chain it served when this process first connected): point              WALLET_ETHEREUM_RPC_URL at a node of that chain",
            self.url
        ))
    }

    /// Claims the `ethereum` network's history for this node ([`backends::claim`]):
    /// refused while the network's wallets have movements made on another backend.
    async fn claim(&self, backend: &str) -> Result<(), ConnectError> {
        let database = |e: &dyn std::fmt::Display| {
            ConnectError::Unreachable(format!("the database, claiming {NETWORK}: {e}"))
        };
        let mut conn = self.pool.get().await.map_err(|e| database(&e))?;
        let legacy = match backends::claimed(&mut conn, NETWORK)
            .await
            .map_err(|e| database(&e))?
        {
            Some(_) => backends::Legacy::NotMine,
            None => self.legacy_evidence(&mut conn).await?,
        };
        backends::claim(&mut conn, NETWORK, backend, legacy)
            .await
            .map_err(|e| match e {
                backends::ClaimError::Refused(why) => ConnectError::Refused(why),
                backends::ClaimError::Database(e) => database(&e),
            })
    }

    /// Whether the chain state kept before backends were recorded is this node's chain's:
    /// a block it remembered is canonical here, or a transaction the journal names is
    /// known here (with neither, nothing says otherwise).
    async fn legacy_evidence(
        &self,
        conn: &mut crate::db::PooledConn,
    ) -> Result<backends::Legacy, ConnectError> {
        let database = |e: diesel::result::Error| {
            ConnectError::Unreachable(format!("the database, claiming {NETWORK}: {e}"))
        };
        let unreachable = |failure| match failure {
            CallFailure::Unreachable(e) | CallFailure::Answered(e) => ConnectError::Unreachable(e),
        };
        let blocks = backends::legacy_blocks(conn, NETWORK)
            .await
            .map_err(database)?;
        let hashes = backends::journaled_hashes(conn, NETWORK)
            .await
            .map_err(database)?;
        if blocks.is_empty() && hashes.is_empty() {
            return Ok(backends::Legacy::Mine);
        }
        for (number, hash) in &blocks {
            let block = rpc(
                "eth_getBlockByNumber",
                self.provider.get_block_by_number(BlockNumberOrTag::Number(
                    u64::try_from(*number).unwrap_or(0),
                )),
            )
            .await
            .map_err(unreachable)?;
            if block.is_some_and(|b| spell(b.header.hash) == *hash) {
                return Ok(backends::Legacy::Mine);
            }
        }
        for name in &hashes {
            let Some(hash) = parse_hash(name.split(':').next().unwrap_or(name)) else {
                continue;
            };
            let known = rpc(
                "eth_getTransactionByHash",
                self.provider.get_transaction_by_hash(hash),
            )
            .await
            .map_err(unreachable)?;
            if known.is_some() {
                return Ok(backends::Legacy::Mine);
            }
        }
        Ok(backends::Legacy::NotMine)
    }

    async fn reported_chain_id(&self) -> Result<u64, ConnectError> {
        rpc("eth_chainId", self.provider.get_chain_id())
            .await
            .map_err(|failure| match failure {
                CallFailure::Unreachable(e) => ConnectError::Unreachable(e),
                CallFailure::Answered(e) => {
                    ConnectError::Refused(format!("{e}: is this an Ethereum JSON-RPC node?"))
                }
            })
    }

    /// `reported` is the chain the node must serve (the configured one; without one, the
    /// first it ever reported here).
    fn check_chain_id(&self, reported: u64) -> Result<(), String> {
        let expected = *self.expected_chain_id.get_or_init(|| reported);
        if expected == reported {
            return Ok(());
        }
        Err(format!(
            "the ethereum node at {} serves chain id {reported}, not {expected} \
             (WALLET_ETHEREUM_CHAIN_ID, or the chain it served when this process first \
             connected): point WALLET_ETHEREUM_RPC_URL at a node of chain {expected}",
            self.url
        ))
    }

    /// The token's contract must report the configured decimals: amounts are read and
    /// sent in its smallest unit, and a wrong scale would credit or pay a wrong amount.
    async fn check_token(&self, token: &Followed) -> Result<(), ConnectError> {
        use alloy::sol_types::SolCall as _;
        let request = alloy::rpc::types::TransactionRequest::default()
            .to(token.contract)
            .input(Bytes::from(decimalsCall {}.abi_encode()).into());
        let answer = match rpc("eth_call decimals()", self.provider.call(request)).await {
            Ok(answer) => answer,
            Err(CallFailure::Unreachable(e)) => {
                return Err(ConnectError::Unreachable(e));
            }
            Err(CallFailure::Answered(e)) => {
                return Err(ConnectError::Refused(format!(
                    "token {}: the contract {} did not answer decimals() ({e}): check \
                     WALLET_ETHEREUM_TOKENS and that the node serves the right chain",
                    token.code,
                    address(token.contract)
                )));
            }
        };
        let reported = decimalsCall::abi_decode_returns(&answer).map_err(|_| {
            ConnectError::Refused(format!(
                "token {}: {} is not an ERC-20 contract on this chain (no decimals()): \
                 check WALLET_ETHEREUM_TOKENS and that the node serves the right chain",
                token.code,
                address(token.contract)
            ))
        })?;
        if u32::from(reported) != token.decimals {
            return Err(ConnectError::Refused(format!(
                "token {}: WALLET_ETHEREUM_TOKENS says {} decimals, but the contract {} \
                 reports {reported}: correct WALLET_ETHEREUM_TOKENS ({}:{}:{reported})",
                token.code,
                token.decimals,
                address(token.contract),
                token.code,
                address(token.contract),
            )));
        }
        Ok(())
    }

    /// Asks the connected node for its chain id and genesis block: a node now serving
    /// another chain is refused (taken out of use, loudly).
    async fn recheck_chain_id(&self) -> Result<(), ChainError> {
        let reported = self
            .call("eth_chainId", self.provider.get_chain_id())
            .await?;
        // As `reported_genesis` reads it.
        let genesis = match self.block(1, false).await? {
            Some(first) => spell(first.header.parent_hash),
            None => self
                .block(0, false)
                .await?
                .map(|b| spell(b.header.hash))
                .unwrap_or_default(),
        };
        match self
            .check_chain_id(reported)
            .and_then(|()| self.check_genesis(&genesis))
        {
            Ok(()) => Ok(()),
            Err(why) => {
                if self.link.is_ready() {
                    tracing::error!(
                        network = NETWORK,
                        reason = %why,
                        "THE ETHEREUM NODE CHANGED CHAINS: the network is stopped (no \
                         deposit read, no withdrawal sent) until it serves the expected \
                         chain again"
                    );
                    metrics::counter!("wallet_chain_id_mismatches_total", "network" => NETWORK)
                        .increment(1);
                }
                self.link.refused(&why);
                Err(unavailable(why))
            }
        }
    }

    /// Keeps the node connected, until dropped: while it is not, connects again with
    /// exponential backoff ([`link::RETRY_FIRST`] doubling to [`link::RETRY_MAX`]); while
    /// it is, checks its chain id every [`RECHECK_EVERY`], and at once when a call finds
    /// it unreachable.
    pub fn supervise(&self) -> AbortOnDrop<()> {
        let node = self.clone();
        AbortOnDrop::spawn(async move {
            let mut delay = link::RETRY_FIRST;
            if !node.link.is_ready() {
                // Not connected at start: that attempt was the first.
                tokio::time::sleep(delay).await;
                delay = link::next_delay(delay);
            }
            loop {
                if node.link.is_ready() {
                    tokio::select! {
                        _ = tokio::time::sleep(RECHECK_EVERY) => {}
                        _ = node.link.lost_signal() => {}
                    }
                    if node.link.is_ready() {
                        let _ = node.recheck_chain_id().await;
                    }
                    delay = link::RETRY_FIRST;
                    continue;
                }
                match node.connect().await {
                    Ok(chain_id) => {
                        tracing::info!(
                            network = NETWORK,
                            chain_id,
                            url = %node.url,
                            "ethereum node connected and verified: the network serves"
                        );
                        continue;
                    }
                    Err(ConnectError::Unreachable(e)) => tracing::warn!(
                        network = NETWORK,
                        error = %e,
                        retry_in = ?delay,
                        "ethereum node unreachable: the network is unavailable"
                    ),
                    Err(ConnectError::Refused(why)) => tracing::error!(
                        network = NETWORK,
                        reason = %super::redact::redact(&why),
                        retry_in = ?delay,
                        "ethereum node REFUSED: it is not what the configuration says, or \
                         not the chain of this database's ethereum history; the network is \
                         unavailable until this is fixed"
                    ),
                }
                tokio::time::sleep(delay).await;
                delay = link::next_delay(delay);
            }
        })
    }

    /// One call to the node, if it may be used now (else unavailable at once). A call
    /// the node does not answer takes it out of use until it is verified again.
    async fn call<T>(
        &self,
        what: &str,
        f: impl IntoFuture<Output = Result<T, RpcError<TransportErrorKind>>>,
    ) -> Result<T, ChainError> {
        self.link.ready()?;
        match rpc(what, f).await {
            Ok(value) => Ok(value),
            Err(CallFailure::Unreachable(e)) => {
                self.link.lost(&e);
                Err(unavailable(e))
            }
            Err(CallFailure::Answered(e)) => Err(unavailable(e)),
        }
    }

    /// The decimals of a followed token.
    fn decimals(&self, contract: Address) -> Result<u32, ChainError> {
        self.tokens
            .iter()
            .find(|t| t.contract == contract)
            .map(|t| t.decimals)
            .ok_or_else(|| unavailable(format!("token {contract} is not configured")))
    }

    async fn conn(&self) -> Result<crate::db::PooledConn, ChainError> {
        self.pool.get().await.map_err(unavailable)
    }

    async fn tip_number(&self) -> Result<u64, ChainError> {
        self.call("eth_blockNumber", self.provider.get_block_number())
            .await
    }

    async fn block(&self, number: u64, full: bool) -> Result<Option<Block>, ChainError> {
        let request = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number));
        let request = if full { request.full() } else { request };
        self.call("eth_getBlockByNumber", request).await
    }

    async fn canonical_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        Ok(self.block(number, false).await?.map(|b| b.header.hash))
    }

    async fn receipts(&self, number: u64) -> Result<Vec<TransactionReceipt>, ChainError> {
        Ok(self
            .call(
                "eth_getBlockReceipts",
                self.provider
                    .get_block_receipts(BlockId::Number(BlockNumberOrTag::Number(number))),
            )
            .await?
            .unwrap_or_default())
    }

    /// The transfers of a block: those of followed tokens, and ether transfers
    /// (transactions with a value) with their outcome.
    async fn block_transfers(
        &self,
        block: &Block,
        tip: u64,
    ) -> Result<Vec<ChainTransfer>, ChainError> {
        let logs = self.token_logs(block).await?;
        let valued: Vec<_> = block
            .transactions
            .as_transactions()
            .unwrap_or_default()
            .iter()
            .filter(|t| {
                !alloy::consensus::Transaction::value(*t).is_zero()
                    && alloy::consensus::Transaction::to(*t).is_some()
            })
            .collect();
        if logs.is_empty() && valued.is_empty() {
            return Ok(Vec::new());
        }
        // Outcomes, and each transaction's logs (a token transfer is named by its log's
        // place among them).
        let receipts = self.receipts(block.header.number).await?;
        let receipt_of = |hash: B256| {
            receipts
                .iter()
                .find(|r| r.transaction_hash == hash)
                .ok_or_else(|| {
                    unavailable(format!(
                        "block {} has no receipt for {hash:#x}",
                        block.header.number
                    ))
                })
        };
        let mut transfers = Vec::new();
        for log in &logs {
            let Some(hash) = log.transaction_hash else {
                continue;
            };
            let receipt = receipt_of(hash)?;
            let Some(position) = receipt
                .logs()
                .iter()
                .position(|l| l.log_index.is_some() && l.log_index == log.log_index)
            else {
                return Err(unavailable(format!(
                    "the receipt of {hash:#x} does not hold its log {:?}",
                    log.log_index
                )));
            };
            transfers.extend(self.token_transfer(
                log,
                position,
                block.header.number,
                block.header.timestamp,
                tip,
            )?);
        }
        for t in valued {
            let hash = t.tx_hash();
            transfers.push(self.transfer_of(
                t.from(),
                t.to(),
                t.value(),
                Some(receipt_of(hash)?),
                Some(block.header.number),
                block.header.timestamp,
                tip,
                hash,
            )?);
        }
        Ok(transfers)
    }

    /// The `Transfer` logs of followed tokens in a block (a log exists only for a
    /// transaction that succeeded).
    async fn token_logs(&self, block: &Block) -> Result<Vec<Log>, ChainError> {
        if self.tokens.is_empty() {
            return Ok(Vec::new());
        }
        let filter = Filter::new()
            .at_block_hash(block.header.hash)
            .address(self.tokens.iter().map(|t| t.contract).collect::<Vec<_>>())
            .event_signature(Transfer::SIGNATURE_HASH);
        self.call("eth_getLogs", self.provider.get_logs(&filter))
            .await
    }

    /// A followed token's `Transfer` log, the `position`-th log of its transaction, as a
    /// transfer (`None` for any other log). Named by the transaction and that position:
    /// what a reorganisation that mines the transaction again elsewhere does not change.
    fn token_transfer(
        &self,
        log: &Log,
        position: usize,
        block: u64,
        timestamp: u64,
        tip: u64,
    ) -> Result<Option<ChainTransfer>, ChainError> {
        let Some(token) = self.tokens.iter().find(|t| t.contract == log.address()) else {
            return Ok(None);
        };
        let (contract, decimals) = (token.contract, token.decimals);
        let Ok(event) = log.log_decode::<Transfer>() else {
            return Ok(None);
        };
        let Some(hash) = log.transaction_hash else {
            return Ok(None);
        };
        let transfer = &event.inner.data;
        Ok(Some(ChainTransfer {
            hash: format!("{}:{position}", spell(hash)),
            network: NETWORK.to_owned(),
            asset: Some(address(contract)),
            from_address: address(transfer.from),
            to_address: address(transfer.to),
            amount: units(transfer.value, decimals)?,
            // Paid in ether by the sender; nothing to do with the token's amount.
            fee: Decimal::ZERO,
            gas_price: None,
            gas_used: None,
            status: TransferStatus::Success,
            block_number: Some(block_number(block)),
            confirmations: confirmations(block, tip),
            raw: None,
            created_at: time(timestamp),
        }))
    }

    /// The receipt of `hash` while its block is the canonical one at its height, with
    /// that block's number and time.
    async fn canonical_receipt(
        &self,
        hash: B256,
    ) -> Result<Option<(TransactionReceipt, u64, u64)>, ChainError> {
        let receipt = self
            .call(
                "eth_getTransactionReceipt",
                self.provider.get_transaction_receipt(hash),
            )
            .await?;
        if let Some(r) = receipt
            && let (Some(number), Some(block_hash)) = (r.block_number, r.block_hash)
            && let Some(block) = self.block(number, false).await?
            && block.header.hash == block_hash
        {
            return Ok(Some((r, number, block.header.timestamp)));
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    fn transfer_of(
        &self,
        from: Address,
        to: Option<Address>,
        value: U256,
        receipt: Option<&TransactionReceipt>,
        block: Option<u64>,
        timestamp: u64,
        tip: u64,
        hash: B256,
    ) -> Result<ChainTransfer, ChainError> {
        let (status, fee, gas_price, gas_used) = match receipt {
            None => (TransferStatus::Pending, Decimal::ZERO, None, None),
            Some(r) => {
                let price = U256::from(r.effective_gas_price);
                let used = U256::from(r.gas_used);
                let status = if r.status() {
                    TransferStatus::Success
                } else {
                    TransferStatus::Failed
                };
                (
                    status,
                    ether(price * used)?,
                    Some(ether(price)?),
                    i64::try_from(r.gas_used).ok(),
                )
            }
        };
        Ok(ChainTransfer {
            hash: spell(hash),
            network: NETWORK.to_owned(),
            asset: None,
            from_address: address(from),
            to_address: to.map(address).unwrap_or_default(),
            amount: ether(value)?,
            fee,
            gas_price,
            gas_used,
            status,
            block_number: block.map(block_number),
            confirmations: block.map_or(0, |b| confirmations(b, tip)),
            raw: None,
            created_at: time(timestamp),
        })
    }

    /// Where the watcher resumes, its position being `after`: after the newest block it
    /// remembers (at most `after`) while that is still the canonical one; after a
    /// reorganisation, after the newest remembered block that still is (the block the old
    /// and the new chain share), with `true`. Every remembered block is checked, not only
    /// those up to `after`: a watcher whose position was held back must not forget
    /// replaced blocks unseen.
    async fn resume_point(&self, backend: &str, after: u64) -> Result<(u64, bool), ChainError> {
        let mut conn = self.conn().await?;
        let remembered: Vec<(i64, String)> = chain_blocks::table
            .filter(chain_blocks::network.eq(NETWORK))
            .filter(chain_blocks::backend.eq(backend))
            .order(chain_blocks::number.desc())
            .select((chain_blocks::number, chain_blocks::hash))
            .load(&mut conn)
            .await
            .map_err(unavailable)?;
        drop(conn);
        let mut shared = None;
        let mut reorged = false;
        let mut oldest = after;
        for (number, hash) in remembered {
            let number = u64::try_from(number).unwrap_or(0);
            match self.canonical_hash(number).await? {
                Some(canonical) if spell(canonical) == hash => {
                    shared = Some(number);
                    break;
                }
                _ => {
                    reorged = true;
                    oldest = number;
                }
            }
        }
        // After the newest block it remembers (a long outage is caught up over several
        // passes, each scanning a bounded number of blocks), never beyond `after`.
        let resume = match (shared, reorged) {
            (Some(shared), _) => shared,
            (None, true) => oldest.saturating_sub(1),
            (None, false) => after,
        }
        .min(after);
        if !reorged {
            return Ok((resume, false));
        }
        tracing::warn!(
            after,
            resume,
            "ethereum reorganised: scanning again from the common ancestor"
        );
        metrics::counter!("wallet_chain_reorgs_total", "network" => NETWORK).increment(1);
        Ok((resume, true))
    }

    async fn remember(
        &self,
        backend: &str,
        blocks: &[(i64, String, String)],
    ) -> Result<(), ChainError> {
        let Some(&(newest, ..)) = blocks.last() else {
            return Ok(());
        };
        let mut conn = self.conn().await?;
        let rows: Vec<_> = blocks
            .iter()
            .map(|(number, hash, parent)| {
                (
                    chain_blocks::network.eq(NETWORK),
                    chain_blocks::backend.eq(backend),
                    chain_blocks::number.eq(*number),
                    chain_blocks::hash.eq(hash),
                    chain_blocks::parent_hash.eq(parent),
                )
            })
            .collect();
        // Several watchers may scan the same blocks: the newest answer wins.
        diesel::insert_into(chain_blocks::table)
            .values(rows)
            .on_conflict((
                chain_blocks::network,
                chain_blocks::backend,
                chain_blocks::number,
            ))
            .do_update()
            .set((
                chain_blocks::hash.eq(diesel::upsert::excluded(chain_blocks::hash)),
                chain_blocks::parent_hash.eq(diesel::upsert::excluded(chain_blocks::parent_hash)),
            ))
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        diesel::delete(
            chain_blocks::table
                .filter(chain_blocks::network.eq(NETWORK))
                .filter(chain_blocks::backend.eq(backend))
                .filter(chain_blocks::number.le(newest - REMEMBERED_BLOCKS)),
        )
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Forgets the remembered blocks above `number` (they are scanned again). When they
    /// were replaced by a reorganisation (`reorged`), says so in the same transaction
    /// (`chain_reorgs`): forgotten, they could not show it again, and what was recorded
    /// in them is checked from that record by whichever pass gets to it — even if this
    /// one fails or its process dies next.
    async fn forget_above(
        &self,
        backend: &str,
        number: u64,
        reorged: bool,
    ) -> Result<(), ChainError> {
        use crate::schema::chain_reorgs;
        let mut conn = self.conn().await?;
        let number = block_number(number);
        conn.transaction(async |tx| {
            if reorged {
                diesel::insert_into(chain_reorgs::table)
                    .values((
                        chain_reorgs::network.eq(NETWORK),
                        chain_reorgs::backend.eq(backend),
                        chain_reorgs::above.eq(number),
                    ))
                    .execute(tx)
                    .await?;
            }
            diesel::delete(
                chain_blocks::table
                    .filter(chain_blocks::network.eq(NETWORK))
                    .filter(chain_blocks::backend.eq(backend))
                    .filter(chain_blocks::number.gt(number)),
            )
            .execute(tx)
            .await?;
            Ok::<_, diesel::result::Error>(())
        })
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Chain for EthereumNode {
    fn available(&self, _network: &str) -> Result<(), ChainError> {
        self.link.ready().map(|_| ())
    }

    async fn verify(&self, _network: &str) -> Result<(), ChainError> {
        self.recheck_chain_id().await
    }

    async fn tip(&self, _network: &str) -> Result<i64, ChainError> {
        Ok(block_number(self.tip_number().await?))
    }

    async fn transfer(
        &self,
        _network: &str,
        hash: &str,
    ) -> Result<Option<ChainTransfer>, ChainError> {
        let (hash, position) = match hash.split_once(':') {
            Some((hash, position)) => match position.parse::<usize>() {
                Ok(position) => (hash, Some(position)),
                Err(_) => return Ok(None),
            },
            None => (hash, None),
        };
        let Some(hash) = parse_hash(hash) else {
            return Ok(None);
        };
        let Some(tx) = self
            .call(
                "eth_getTransactionByHash",
                self.provider.get_transaction_by_hash(hash),
            )
            .await?
        else {
            return Ok(None);
        };
        let tip = self.tip_number().await?;
        // Counted only while its block is the canonical one at that height.
        let included = self.canonical_receipt(hash).await?;
        if let Some(position) = position {
            // A token transfer: its log, once its transaction is on the canonical chain.
            let Some((receipt, block, timestamp)) = included else {
                return Ok(None);
            };
            return match receipt.logs().get(position) {
                Some(log) => self.token_transfer(log, position, block, timestamp, tip),
                None => Ok(None),
            };
        }
        let (receipt, block, timestamp) = match included {
            Some((receipt, number, timestamp)) => (Some(receipt), Some(number), timestamp),
            None => (
                None,
                None,
                u64::try_from(Utc::now().timestamp()).unwrap_or(0),
            ),
        };
        self.transfer_of(
            tx.from(),
            tx.to(),
            tx.value(),
            receipt.as_ref(),
            block,
            timestamp,
            tip,
            hash,
        )
        .map(Some)
    }

    async fn token_transfers_of(
        &self,
        _network: &str,
        hash: &str,
    ) -> Result<Option<Vec<ChainTransfer>>, ChainError> {
        let Some(hash) = parse_hash(hash) else {
            return Ok(None);
        };
        let Some((receipt, block, timestamp)) = self.canonical_receipt(hash).await? else {
            return Ok(None);
        };
        let tip = self.tip_number().await?;
        let mut transfers = Vec::new();
        for (position, log) in receipt.logs().iter().enumerate() {
            transfers.extend(self.token_transfer(log, position, block, timestamp, tip)?);
        }
        Ok(Some(transfers))
    }

    fn backend(&self, _network: &str) -> Result<String, ChainError> {
        self.identity()
    }

    async fn balance(&self, _network: &str, address: &str) -> Result<Decimal, ChainError> {
        let address = parse_address(address)?;
        ether(
            self.call("eth_getBalance", self.provider.get_balance(address))
                .await?,
        )
    }

    async fn balance_at(
        &self,
        _network: &str,
        address: &str,
        asset: Option<&str>,
        height: i64,
    ) -> Result<Option<Decimal>, ChainError> {
        use alloy::sol_types::SolCall as _;
        let owner = parse_address(address)?;
        let block = BlockId::number(u64::try_from(height).unwrap_or(0));
        let Some(contract) = asset else {
            let wei = self
                .call(
                    "eth_getBalance",
                    self.provider.get_balance(owner).block_id(block),
                )
                .await?;
            return ether(wei).map(Some);
        };
        let contract = parse_address(contract)?;
        let decimals = self.decimals(contract)?;
        let request = alloy::rpc::types::TransactionRequest::default()
            .to(contract)
            .input(Bytes::from(balanceOfCall { owner }.abi_encode()).into());
        let answer = self
            .call("eth_call", self.provider.call(request).block(block))
            .await?;
        let value = balanceOfCall::abi_decode_returns(&answer)
            .map_err(|e| unavailable(format!("balanceOf of {contract}: {e}")))?;
        units(value, decimals).map(Some)
    }

    async fn height_at(&self, _network: &str, at: DateTime<Utc>) -> Result<i64, ChainError> {
        // The newest block mined at or before `at`: a binary search on block times.
        let at = u64::try_from(at.timestamp()).unwrap_or(0);
        let (mut low, mut high) = (0u64, self.tip_number().await?);
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            let time = self
                .block(middle, false)
                .await?
                .map_or(u64::MAX, |b| b.header.timestamp);
            if time <= at {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        Ok(block_number(low))
    }

    async fn settled_between(
        &self,
        _network: &str,
        address: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<ChainTransfer>, ChainError> {
        let tip = self.tip_number().await?;
        let (after, up_to) = (
            u64::try_from(after).unwrap_or(0),
            u64::try_from(up_to).unwrap_or(0).min(tip),
        );
        let mut settled = Vec::new();
        for number in after + 1..=up_to {
            let Some(block) = self.block(number, true).await? else {
                break;
            };
            settled.extend(
                self.block_transfers(&block, tip)
                    .await?
                    .into_iter()
                    .filter(|t| t.status == TransferStatus::Success)
                    .filter(|t| t.from_address == address || t.to_address == address),
            );
        }
        Ok(settled)
    }

    async fn transfers_since(
        &self,
        _network: &str,
        after_block: i64,
    ) -> Result<Scanned, ChainError> {
        let backend = self.identity()?;
        let tip = self.tip_number().await?;
        let (after, reorged) = match u64::try_from(after_block).unwrap_or(0) {
            0 => (tip.saturating_sub(FIRST_SCAN_DEPTH), false),
            scanned => self.resume_point(&backend, scanned.min(tip)).await?,
        };
        // A long outage is caught up over several passes (each resumes after the newest
        // block it remembers), so that one pass stays short.
        let last = tip.min(after.saturating_add(MAX_BLOCKS_PER_SCAN));
        self.forget_above(&backend, after, reorged).await?;
        let mut transfers = Vec::new();
        let mut seen: Vec<(i64, String, String)> = Vec::new();
        for number in after + 1..=last {
            let Some(block) = self.block(number, true).await? else {
                break;
            };
            // A reorg while scanning: stop here; the next scan walks back.
            if let Some((_, previous, _)) = seen.last()
                && *previous != spell(block.header.parent_hash)
            {
                break;
            }
            transfers.extend(self.block_transfers(&block, tip).await?);
            seen.push((
                block_number(number),
                spell(block.header.hash),
                spell(block.header.parent_hash),
            ));
        }
        self.remember(&backend, &seen).await?;
        Ok(Scanned { transfers })
    }

    async fn estimate_fee(&self, _network: &str) -> Result<Fee, ChainError> {
        // What a plain transfer may cost at most (the amount locked); the chain charges the
        // effective price, and the difference is released. Never more than the cap: no
        // transaction offers more.
        let quote = self.gas_fees().await?;
        let max_fee = U256::from(quote.wanted.capped(self.max_fee_per_gas).max_fee_per_gas);
        Ok(Fee {
            total: ether(max_fee * U256::from(TRANSFER_GAS))?,
            gas_price: Some(ether(max_fee)?),
            gas_used: i64::try_from(TRANSFER_GAS).ok(),
        })
    }

    async fn broadcast(&self, transfer: &SignedTransfer) -> Result<String, ChainError> {
        let raw = alloy::primitives::hex::decode(&transfer.raw)
            .map_err(|e| unavailable(format!("stored transaction is not hex: {e}")))?;
        match self
            .call(
                "eth_sendRawTransaction",
                self.provider.send_raw_transaction(&raw),
            )
            .await
        {
            Ok(pending) => Ok(spell(*pending.tx_hash())),
            // The same bytes again: the node has them (pending or mined).
            Err(ChainError::Unavailable(e)) if e.contains("already known") => {
                Ok(transfer.hash.clone())
            }
            Err(e) => Err(e),
        }
    }

    fn accounts(&self, _network: &str) -> Option<&dyn AccountChain> {
        Some(self)
    }

    fn max_transfer_fee(&self, _network: &str) -> Option<Decimal> {
        // No transaction offers more than the cap per gas, and an ether withdrawal may use
        // no more than its gas limit.
        ether(U256::from(self.max_fee_per_gas) * U256::from(TRANSFER_GAS)).ok()
    }
}

#[async_trait::async_trait]
impl AccountChain for EthereumNode {
    async fn pending_nonce(&self, address: &str) -> Result<u64, ChainError> {
        let address = parse_address(address)?;
        self.call(
            "eth_getTransactionCount",
            self.provider.get_transaction_count(address).pending(),
        )
        .await
    }

    async fn gas_fees(&self) -> Result<GasQuote, ChainError> {
        // What a transaction may pay at most if the base fee doubles before it is mined
        // (the chain charges the base fee of its block plus the tip).
        let latest = self
            .call(
                "eth_getBlockByNumber",
                self.provider.get_block_by_number(BlockNumberOrTag::Latest),
            )
            .await?
            .ok_or_else(|| unavailable("the node has no latest block"))?;
        let base = u128::from(latest.header.base_fee_per_gas.unwrap_or(0));
        let tip = self
            .call(
                "eth_maxPriorityFeePerGas",
                self.provider.get_max_priority_fee_per_gas(),
            )
            .await?;
        Ok(GasQuote {
            wanted: GasFees {
                max_fee_per_gas: base.saturating_mul(2).saturating_add(tip).max(1),
                max_priority_fee_per_gas: tip,
            },
            base_fee_per_gas: base,
        })
    }

    fn max_fee_per_gas(&self) -> u128 {
        self.max_fee_per_gas
    }

    fn gas_limit(&self, asset: Option<&str>) -> u64 {
        match asset {
            None => TRANSFER_GAS,
            Some(_) => TOKEN_TRANSFER_GAS,
        }
    }

    fn replace_after_blocks(&self) -> u64 {
        self.replace_after_blocks
    }

    fn coin_amount(&self, wei: u128) -> Result<Decimal, ChainError> {
        ether(U256::from(wei))
    }

    fn wei(&self, amount: Decimal) -> Result<u128, ChainError> {
        u128::try_from(to_units(amount.trunc_with_scale(ETHER_SCALE), ETHER_SCALE)?)
            .map_err(unavailable)
    }

    fn sign(
        &self,
        transfer: &NonceTransfer,
        key: &PrivateKeySigner,
    ) -> Result<(String, String), ChainError> {
        use alloy::consensus::SignableTransaction as _;
        use alloy::eips::Encodable2718 as _;
        use alloy::signers::SignerSync as _;
        use alloy::sol_types::SolCall as _;

        let to = parse_address(&transfer.to_address)?;
        let (destination, value, input) = match &transfer.asset {
            None => (to, to_units(transfer.amount, ETHER_SCALE)?, Bytes::new()),
            Some(contract) => {
                let contract = parse_address(contract)?;
                let decimals = self.decimals(contract)?;
                let call = transferCall {
                    to,
                    value: to_units(transfer.amount, decimals)?,
                };
                (contract, U256::ZERO, Bytes::from(call.abi_encode()))
            }
        };
        let tx = TxEip1559 {
            chain_id: self.link.ready()?,
            nonce: transfer.nonce,
            gas_limit: transfer.gas_limit,
            max_fee_per_gas: transfer.fees.max_fee_per_gas,
            max_priority_fee_per_gas: transfer.fees.max_priority_fee_per_gas,
            to: TxKind::Call(destination),
            value,
            access_list: Default::default(),
            input,
        };
        let signature = key
            .sign_hash_sync(&tx.signature_hash())
            .map_err(|e| unavailable(format!("signing: {e}")))?;
        let envelope = TxEnvelope::from(tx.into_signed(signature));
        Ok((
            spell(*envelope.tx_hash()),
            alloy::primitives::hex::encode(envelope.encoded_2718()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fee_cap_is_whole_wei_above_zero() {
        assert_eq!(parse_gwei("500"), Ok(500 * GWEI));
        assert_eq!(parse_gwei(" 0.5 "), Ok(GWEI / 2));
        assert_eq!(parse_gwei("0.000000001"), Ok(1));
        for bad in ["0", "-1", "0.0000000001", "abc", "", "1e3"] {
            assert!(parse_gwei(bad).is_err(), "{bad}");
        }
    }
}
