//! Ethereum through a JSON-RPC node (anvil in development and tests, any execution client
//! in production), with alloy.
//!
//! What the ledger needs, read from the node's canonical chain:
//! - a transfer's confirmations are counted only while the block that includes it is the
//!   canonical block at that height (a receipt of a block a reorg replaced is ignored);
//! - the deposit watcher's [`Chain::transfers_since`] remembers the hash of every block it
//!   returned (`chain_blocks`). When the block it resumes from is no longer canonical, it
//!   walks back to the newest block both chains share and scans forward from there, so a
//!   transfer moved to another block by a reorg is seen again there (and recorded once:
//!   the ledger keys deposits by hash). It reports the shared block, so that the ledger
//!   can check the deposits it credited above it;
//! - withdrawals ([`AccountChain`]): the address's pending nonce, current fees, and
//!   EIP-1559 transactions signed with the wallet's key (ether, or an ERC-20 `transfer`);
//! - balances at a block (`eth_getBalance`, a token's `balanceOf`) for reconciliation.
//!
//! Amounts are ether (wei / 10^18) as exact decimals. Every call has a deadline: a node
//! that does not answer is [`ChainError::Unavailable`], never a hung worker.

use std::future::IntoFuture;
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
use chrono::{DateTime, TimeZone as _, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rust_decimal::Decimal;

use super::{
    AccountChain, Chain, ChainError, ChainTransfer, Fee, GasFees, NonceTransfer, Scanned,
    SignedTransfer, TransferStatus,
};
use crate::db::PgPool;
use crate::schema::chain_blocks;

/// The network name this client serves.
pub const NETWORK: &str = "ethereum";
/// Wei per ether, as a decimal scale.
const ETHER_SCALE: u32 = 18;
/// Gas of a plain ether transfer.
const TRANSFER_GAS: u64 = 21_000;
/// Gas a token withdrawal may use: an ERC-20 `transfer` costs 30,000–60,000; unused gas
/// is not charged.
const TOKEN_TRANSFER_GAS: u64 = 100_000;
/// How long one JSON-RPC call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks whose hashes are kept for reorg detection: deeper reorgs are not followed.
const REMEMBERED_BLOCKS: i64 = 1024;
/// Blocks one deposit scan reads at most.
const MAX_BLOCKS_PER_SCAN: u64 = 500;
/// Where a watcher with no history starts: this many blocks below the tip (a node's whole
/// history is not scanned; wallets are younger than that).
const FIRST_SCAN_DEPTH: u64 = 256;

/// How to reach the node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `http://…` JSON-RPC endpoint.
    pub rpc_url: String,
    /// The chain id the node must report (refused otherwise).
    pub chain_id: Option<u64>,
    /// ERC-20 tokens offered as currencies of their own.
    pub tokens: Vec<Token>,
    /// Blocks a withdrawal may wait unmined before it is replaced with a higher fee.
    pub replace_after_blocks: u64,
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
}

#[derive(Clone)]
pub struct EthereumNode {
    provider: DynProvider,
    /// For the memory of processed blocks.
    pool: PgPool,
    chain_id: u64,
    /// Token contracts followed, with their decimals.
    tokens: Vec<(Address, u32)>,
    replace_after_blocks: u64,
}

fn unavailable(e: impl std::fmt::Display) -> ChainError {
    ChainError::Unavailable(e.to_string())
}

/// One node call under [`CALL_TIMEOUT`]; any failure is the node being unavailable.
async fn call<T, E: std::fmt::Display>(
    what: &str,
    f: impl IntoFuture<Output = Result<T, E>>,
) -> Result<T, ChainError> {
    match tokio::time::timeout(CALL_TIMEOUT, f.into_future()).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ChainError::Unavailable(format!(
            "ethereum node, {what}: {e}"
        ))),
        Err(_) => Err(ChainError::Unavailable(format!(
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
    /// Connects and checks the chain id (when one is configured).
    pub async fn connect(config: &NodeConfig, pool: PgPool) -> anyhow::Result<Self> {
        let url = config
            .rpc_url
            .parse()
            .map_err(|e| anyhow::anyhow!("WALLET_ETHEREUM_RPC_URL {:?}: {e}", config.rpc_url))?;
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(url)
            .erased();
        let chain_id = call("eth_chainId", provider.get_chain_id())
            .await
            .map_err(|e| anyhow::anyhow!("{e} (WALLET_ETHEREUM_RPC_URL={})", config.rpc_url))?;
        if let Some(expected) = config.chain_id
            && expected != chain_id
        {
            anyhow::bail!(
                "the ethereum node at {} serves chain id {chain_id}, not \
                 WALLET_ETHEREUM_CHAIN_ID={expected}",
                config.rpc_url
            );
        }
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                t.contract
                    .parse::<Address>()
                    .map(|a| (a, u32::from(t.decimals)))
                    .map_err(|e| anyhow::anyhow!("token {}: {e}", t.code))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(EthereumNode {
            provider,
            pool,
            chain_id,
            tokens,
            replace_after_blocks: config.replace_after_blocks.max(1),
        })
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The decimals of a followed token.
    fn decimals(&self, contract: Address) -> Result<u32, ChainError> {
        self.tokens
            .iter()
            .find(|(a, _)| *a == contract)
            .map(|(_, d)| *d)
            .ok_or_else(|| unavailable(format!("token {contract} is not configured")))
    }

    async fn conn(&self) -> Result<crate::db::PooledConn, ChainError> {
        self.pool.get().await.map_err(unavailable)
    }

    async fn tip_number(&self) -> Result<u64, ChainError> {
        call("eth_blockNumber", self.provider.get_block_number()).await
    }

    async fn block(&self, number: u64, full: bool) -> Result<Option<Block>, ChainError> {
        let request = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number));
        let request = if full { request.full() } else { request };
        call("eth_getBlockByNumber", request).await
    }

    async fn canonical_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        Ok(self.block(number, false).await?.map(|b| b.header.hash))
    }

    async fn receipts(&self, number: u64) -> Result<Vec<TransactionReceipt>, ChainError> {
        Ok(call(
            "eth_getBlockReceipts",
            self.provider
                .get_block_receipts(BlockId::Number(BlockNumberOrTag::Number(number))),
        )
        .await?
        .unwrap_or_default())
    }

    /// The ether transfers of a block (transactions with a value), with their outcome.
    async fn block_transfers(
        &self,
        block: &Block,
        tip: u64,
    ) -> Result<Vec<ChainTransfer>, ChainError> {
        let mut transfers = self.token_transfers(block, tip).await?;
        let Some(transactions) = block.transactions.as_transactions() else {
            return Ok(transfers);
        };
        let valued: Vec<_> = transactions
            .iter()
            .filter(|t| {
                !alloy::consensus::Transaction::value(*t).is_zero()
                    && alloy::consensus::Transaction::to(*t).is_some()
            })
            .collect();
        if valued.is_empty() {
            return Ok(transfers);
        }
        let receipts = self.receipts(block.header.number).await?;
        for t in valued {
            let hash = t.tx_hash();
            let Some(receipt) = receipts.iter().find(|r| r.transaction_hash == hash) else {
                return Err(unavailable(format!(
                    "block {} has no receipt for {hash:#x}",
                    block.header.number
                )));
            };
            transfers.push(self.transfer_of(
                t.from(),
                t.to(),
                t.value(),
                Some(receipt),
                Some(block.header.number),
                block.header.timestamp,
                tip,
                hash,
            )?);
        }
        Ok(transfers)
    }

    /// The transfers of followed tokens in a block, from their `Transfer` logs (a log
    /// exists only for a transaction that succeeded).
    async fn token_transfers(
        &self,
        block: &Block,
        tip: u64,
    ) -> Result<Vec<ChainTransfer>, ChainError> {
        if self.tokens.is_empty() {
            return Ok(Vec::new());
        }
        let filter = Filter::new()
            .at_block_hash(block.header.hash)
            .address(self.tokens.iter().map(|(a, _)| *a).collect::<Vec<_>>())
            .event_signature(Transfer::SIGNATURE_HASH);
        let logs = call("eth_getLogs", self.provider.get_logs(&filter)).await?;
        logs.iter()
            .filter_map(|log| {
                self.token_transfer(log, block.header.number, block.header.timestamp, tip)
                    .transpose()
            })
            .collect()
    }

    /// A followed token's `Transfer` log as a transfer (`None` for any other log).
    fn token_transfer(
        &self,
        log: &Log,
        block: u64,
        timestamp: u64,
        tip: u64,
    ) -> Result<Option<ChainTransfer>, ChainError> {
        let Some(&(contract, decimals)) = self.tokens.iter().find(|(a, _)| *a == log.address())
        else {
            return Ok(None);
        };
        let Ok(event) = log.log_decode::<Transfer>() else {
            return Ok(None);
        };
        let (Some(hash), Some(index)) = (log.transaction_hash, log.log_index) else {
            return Ok(None);
        };
        let transfer = &event.inner.data;
        Ok(Some(ChainTransfer {
            hash: format!("{}:{index}", spell(hash)),
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

    /// The block the watcher resumes after: `after` itself while it is still the block the
    /// watcher saw there, else the newest remembered block that is still canonical (the
    /// common ancestor of the old and the new chain).
    async fn resume_point(&self, after: u64) -> Result<(u64, bool), ChainError> {
        let mut conn = self.conn().await?;
        let remembered: Vec<(i64, String)> = chain_blocks::table
            .filter(chain_blocks::network.eq(NETWORK))
            .filter(chain_blocks::number.le(block_number(after)))
            .order(chain_blocks::number.desc())
            .select((chain_blocks::number, chain_blocks::hash))
            .load(&mut conn)
            .await
            .map_err(unavailable)?;
        drop(conn);
        let mut resume = after;
        let mut reorged = false;
        for (number, hash) in remembered {
            let number = u64::try_from(number).unwrap_or(0);
            match self.canonical_hash(number).await? {
                Some(canonical) if spell(canonical) == hash => {
                    resume = number;
                    break;
                }
                _ => {
                    reorged = true;
                    resume = number.saturating_sub(1);
                }
            }
        }
        if reorged {
            tracing::warn!(
                after,
                resume,
                "ethereum reorganised: scanning again from the common ancestor"
            );
            metrics::counter!("wallet_chain_reorgs_total", "network" => NETWORK).increment(1);
        }
        Ok((resume, reorged))
    }

    async fn remember(&self, blocks: &[(i64, String, String)]) -> Result<(), ChainError> {
        let Some(&(newest, ..)) = blocks.last() else {
            return Ok(());
        };
        let mut conn = self.conn().await?;
        let rows: Vec<_> = blocks
            .iter()
            .map(|(number, hash, parent)| {
                (
                    chain_blocks::network.eq(NETWORK),
                    chain_blocks::number.eq(*number),
                    chain_blocks::hash.eq(hash),
                    chain_blocks::parent_hash.eq(parent),
                )
            })
            .collect();
        // Several watchers may scan the same blocks: the newest answer wins.
        diesel::insert_into(chain_blocks::table)
            .values(rows)
            .on_conflict((chain_blocks::network, chain_blocks::number))
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
                .filter(chain_blocks::number.le(newest - REMEMBERED_BLOCKS)),
        )
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn forget_above(&self, number: u64) -> Result<(), ChainError> {
        let mut conn = self.conn().await?;
        diesel::delete(
            chain_blocks::table
                .filter(chain_blocks::network.eq(NETWORK))
                .filter(chain_blocks::number.gt(block_number(number))),
        )
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Chain for EthereumNode {
    async fn tip(&self, _network: &str) -> Result<i64, ChainError> {
        Ok(block_number(self.tip_number().await?))
    }

    async fn transfer(
        &self,
        _network: &str,
        hash: &str,
    ) -> Result<Option<ChainTransfer>, ChainError> {
        let (hash, log_index) = match hash.split_once(':') {
            Some((hash, index)) => match index.parse::<u64>() {
                Ok(index) => (hash, Some(index)),
                Err(_) => return Ok(None),
            },
            None => (hash, None),
        };
        let Some(hash) = parse_hash(hash) else {
            return Ok(None);
        };
        let Some(tx) = call(
            "eth_getTransactionByHash",
            self.provider.get_transaction_by_hash(hash),
        )
        .await?
        else {
            return Ok(None);
        };
        let tip = self.tip_number().await?;
        let receipt = call(
            "eth_getTransactionReceipt",
            self.provider.get_transaction_receipt(hash),
        )
        .await?;
        // Counted only while its block is the canonical one at that height.
        let mut included = None;
        if let Some(r) = &receipt
            && let (Some(number), Some(block_hash)) = (r.block_number, r.block_hash)
            && let Some(block) = self.block(number, false).await?
            && block.header.hash == block_hash
        {
            included = Some((number, block.header.timestamp));
        }
        let receipt = receipt.filter(|_| included.is_some());
        if let Some(index) = log_index {
            // A token transfer: its log, once its transaction is on the canonical chain.
            let (Some(receipt), Some((block, timestamp))) = (&receipt, included) else {
                return Ok(None);
            };
            let log = receipt.logs().iter().find(|l| l.log_index == Some(index));
            return match log {
                Some(log) => self.token_transfer(log, block, timestamp, tip),
                None => Ok(None),
            };
        }
        let (block, timestamp) = match included {
            Some((number, timestamp)) => (Some(number), timestamp),
            None => (None, u64::try_from(Utc::now().timestamp()).unwrap_or(0)),
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

    async fn balance(&self, _network: &str, address: &str) -> Result<Decimal, ChainError> {
        let address = parse_address(address)?;
        ether(call("eth_getBalance", self.provider.get_balance(address)).await?)
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
            let wei = call(
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
        let answer = call("eth_call", self.provider.call(request).block(block)).await?;
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
        let tip = self.tip_number().await?;
        let (after, common_ancestor) = match u64::try_from(after_block).unwrap_or(0) {
            0 => (tip.saturating_sub(FIRST_SCAN_DEPTH), None),
            scanned => {
                let (resume, reorged) = self.resume_point(scanned.min(tip)).await?;
                (resume, reorged.then_some(block_number(resume)))
            }
        };
        // A long outage is caught up over several passes (each resumes after the newest
        // block it remembers), so that one pass stays short.
        let last = tip.min(after.saturating_add(MAX_BLOCKS_PER_SCAN));
        self.forget_above(after).await?;
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
        self.remember(&seen).await?;
        Ok(Scanned {
            transfers,
            common_ancestor,
        })
    }

    async fn estimate_fee(&self, _network: &str) -> Result<Fee, ChainError> {
        // What a plain transfer may cost at most (the amount locked); the chain charges the
        // effective price, and the difference is released.
        let max_fee = U256::from(self.gas_fees().await?.max_fee_per_gas);
        Ok(Fee {
            total: ether(max_fee * U256::from(TRANSFER_GAS))?,
            gas_price: Some(ether(max_fee)?),
            gas_used: i64::try_from(TRANSFER_GAS).ok(),
        })
    }

    async fn broadcast(&self, transfer: &SignedTransfer) -> Result<String, ChainError> {
        let raw = alloy::primitives::hex::decode(&transfer.raw)
            .map_err(|e| unavailable(format!("stored transaction is not hex: {e}")))?;
        match call(
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
}

#[async_trait::async_trait]
impl AccountChain for EthereumNode {
    async fn pending_nonce(&self, address: &str) -> Result<u64, ChainError> {
        let address = parse_address(address)?;
        call(
            "eth_getTransactionCount",
            self.provider.get_transaction_count(address).pending(),
        )
        .await
    }

    async fn gas_fees(&self) -> Result<GasFees, ChainError> {
        // What a transaction may pay at most if the base fee doubles before it is mined
        // (the chain charges the base fee of its block plus the tip).
        let latest = call(
            "eth_getBlockByNumber",
            self.provider.get_block_by_number(BlockNumberOrTag::Latest),
        )
        .await?
        .ok_or_else(|| unavailable("the node has no latest block"))?;
        let base = u128::from(latest.header.base_fee_per_gas.unwrap_or(0));
        let tip = call(
            "eth_maxPriorityFeePerGas",
            self.provider.get_max_priority_fee_per_gas(),
        )
        .await?;
        Ok(GasFees {
            max_fee_per_gas: base.saturating_mul(2).saturating_add(tip).max(1),
            max_priority_fee_per_gas: tip,
        })
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
            chain_id: self.chain_id,
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
