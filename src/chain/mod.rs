//! What the ledger needs from a blockchain, behind one trait, so that the simulated chain
//! and real node clients are interchangeable.

pub mod backends;
pub mod deposit;
pub mod deposit_names;
pub mod ethereum;
pub mod gas_funding;
pub mod link;
pub mod networks;
pub mod node_withdrawal;
pub mod reconciliation;
pub mod redact;
pub mod reorg;
pub mod rpc;
pub mod simulated;
pub mod withdrawal;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

pub use ethereum::EthereumNode;
pub use networks::Networks;

pub use simulated::SimulatedChain;

/// What a deposit watcher's scan of the chain found. A reorganisation it found on the
/// way is not reported here: the backend wrote it down (`chain_reorgs`) in the transaction
/// that forgot the replaced blocks, for the ledger to follow whatever happens next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    pub transfers: Vec<ChainTransfer>,
}

/// A transfer as the chain reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTransfer {
    /// The transfer's name on its network: the transaction hash, or for a token transfer
    /// the transaction hash and the log's place among the transaction's logs (`0x…:1`),
    /// since one transaction may move tokens several times. Both survive a reorganisation
    /// that mines the transaction again in another block (a log's index in its block
    /// does not).
    pub hash: String,
    pub network: String,
    /// The token contract a token transfer moves (`None`: the network's own coin).
    pub asset: Option<String>,
    pub from_address: String,
    pub to_address: String,
    pub amount: Decimal,
    /// Paid by the sender.
    pub fee: Decimal,
    pub gas_price: Option<Decimal>,
    pub gas_used: Option<i64>,
    pub status: TransferStatus,
    /// The including block; `None` while pending.
    pub block_number: Option<i64>,
    /// Blocks on top of (and including) the including block; 0 while pending.
    pub confirmations: i64,
    pub raw: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferStatus {
    Pending,
    Success,
    Failed,
}

impl TransferStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(TransferStatus::Pending),
            "SUCCESS" => Some(TransferStatus::Success),
            "FAILED" => Some(TransferStatus::Failed),
            _ => None,
        }
    }
}

/// A transfer signed by custody, ready to broadcast. Broadcasting the same bytes again is
/// harmless: the chain identifies it by its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTransfer {
    pub network: String,
    pub hash: String,
    pub from_address: String,
    pub to_address: String,
    pub amount: Decimal,
    /// What the sender pays, fixed when signing.
    pub fee: Fee,
    pub raw: String,
}

/// A transfer's cost to its sender: a flat fee (bitcoin-like) or gas price × gas used
/// (ethereum-like).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fee {
    pub total: Decimal,
    pub gas_price: Option<Decimal>,
    pub gas_used: Option<i64>,
}

/// The bytes a sender signs for a transfer, in the simulated networks' wire format (one
/// line of fields; a client of a real node would build that network's transaction
/// encoding here). `nonce` makes two otherwise equal transfers distinct.
pub fn transfer_payload(
    network: &str,
    from: &str,
    to: &str,
    amount: Decimal,
    fee: &Fee,
    nonce: i64,
) -> Vec<u8> {
    format!(
        "{network}|{from}|{to}|{amount}|{}|{}|{}|{nonce}",
        fee.total,
        fee.gas_price.map(|p| p.to_string()).unwrap_or_default(),
        fee.gas_used.map(|g| g.to_string()).unwrap_or_default(),
    )
    .into_bytes()
}

/// The digest a network signs and names transactions by: double SHA-256 for bitcoin,
/// Keccak-256 for ethereum.
pub fn digest(network: &str, bytes: &[u8]) -> [u8; 32] {
    use bitcoin::hashes::Hash;
    if network == "ethereum" {
        alloy_primitives::keccak256(bytes).0
    } else {
        bitcoin::hashes::sha256d::Hash::hash(bytes).to_byte_array()
    }
}

/// Assembles a signed transfer: the raw bytes are payload ‖ signature, and the hash is
/// the digest of the raw bytes in the network's usual spelling.
pub fn assemble(network: &str, payload: &[u8], signature: &[u8; 64]) -> (String, String) {
    let mut raw = payload.to_vec();
    raw.extend_from_slice(signature);
    (
        hash_spelling(network, digest(network, &raw)),
        alloy_primitives::hex::encode(raw),
    )
}

/// A transaction hash in the network's usual spelling: hex, `0x`-prefixed on ethereum.
pub fn hash_spelling(network: &str, hash: [u8; 32]) -> String {
    let hex = alloy_primitives::hex::encode(hash);
    if network == "ethereum" {
        format!("0x{hex}")
    } else {
        hex
    }
}

/// What an EIP-1559 transaction offers to pay per gas, in wei.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GasFees {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

impl GasFees {
    /// A replacement's fees: a quarter above these in both parts (nodes refuse a
    /// replacement that does not raise both by at least a tenth), or what the chain asks
    /// now if that is more.
    pub fn bumped(self, now: GasFees) -> GasFees {
        let raise = |fee: u128| {
            fee.saturating_add(fee.div_ceil(4))
                .max(fee.saturating_add(1))
        };
        let max_fee_per_gas = raise(self.max_fee_per_gas).max(now.max_fee_per_gas);
        GasFees {
            max_fee_per_gas,
            max_priority_fee_per_gas: raise(self.max_priority_fee_per_gas)
                .max(now.max_priority_fee_per_gas)
                .min(max_fee_per_gas),
        }
    }

    /// These fees within `cap` per gas (the tip never above the max fee).
    pub fn capped(self, cap: u128) -> GasFees {
        let max_fee_per_gas = self.max_fee_per_gas.min(cap);
        GasFees {
            max_fee_per_gas,
            max_priority_fee_per_gas: self.max_priority_fee_per_gas.min(max_fee_per_gas),
        }
    }

    /// Whether these fees are enough to replace a transaction offering `old`.
    pub fn replaces(self, old: GasFees) -> bool {
        let tenth_above = |fee: u128| fee.saturating_add(fee.div_ceil(10));
        self.max_fee_per_gas >= tenth_above(old.max_fee_per_gas)
            && self.max_priority_fee_per_gas >= tenth_above(old.max_priority_fee_per_gas)
    }
}

/// What the chain asks for gas now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GasQuote {
    /// What a transaction should offer to be mined soon, whatever it costs (the service's
    /// cap is applied by whoever signs).
    pub wanted: GasFees,
    /// The newest block's base fee per gas: a transaction offering less cannot be mined
    /// now.
    pub base_fee_per_gas: u128,
}

/// A withdrawal on an account-based network, before signing: the sender's nonce orders it
/// among the sender's transactions, and a replacement reuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonceTransfer {
    pub from_address: String,
    pub to_address: String,
    pub amount: Decimal,
    /// The token contract moved (`None`: the network's coin).
    pub asset: Option<String>,
    pub nonce: u64,
    pub fees: GasFees,
    pub gas_limit: u64,
}

/// What withdrawals through a node of an account-based network need beyond [`Chain`]:
/// nonces, current fees and signing in the network's transaction format.
#[async_trait::async_trait]
pub trait AccountChain: Send + Sync {
    /// The nonce the address's next transaction takes (counting those the node holds).
    async fn pending_nonce(&self, address: &str) -> Result<u64, ChainError>;
    /// Fees a transaction should offer now to be mined soon, and the base fee.
    async fn gas_fees(&self) -> Result<GasQuote, ChainError>;
    /// The most per gas the service offers for any transaction (wei): what
    /// [`AccountChain::gas_fees`] wants is capped at it, whoever pays.
    fn max_fee_per_gas(&self) -> u128;
    /// Gas a withdrawal of `asset` may use (what is unused is not charged).
    fn gas_limit(&self, asset: Option<&str>) -> u64;
    /// Blocks a withdrawal may wait unmined before it is replaced with a higher fee.
    fn replace_after_blocks(&self) -> u64;
    /// `wei` in the coin's whole units.
    fn coin_amount(&self, wei: u128) -> Result<Decimal, ChainError>;
    /// A coin amount in wei (rounded down).
    fn wei(&self, amount: Decimal) -> Result<u128, ChainError>;
    /// Signs `transfer` with `key`; returns its hash and raw bytes (hex), ready to send.
    fn sign(
        &self,
        transfer: &NonceTransfer,
        key: &alloy::signers::local::PrivateKeySigner,
    ) -> Result<(String, String), ChainError>;
}

/// A chain's failure. Its text may come from a node or its transport, and so may hold
/// the node's URL: `Display` and `Debug` show it redacted ([`redact::redact`]).
#[derive(thiserror::Error)]
pub enum ChainError {
    /// The node could not be reached, failed, or is not used now; worth retrying.
    #[error("the chain is unavailable: {}", redact::redact(.0))]
    Unavailable(String),
    #[error("unknown network {0:?}")]
    UnknownNetwork(String),
}

impl std::fmt::Debug for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::Unavailable(text) => {
                write!(f, "Unavailable({:?})", redact::redact(text))
            }
            ChainError::UnknownNetwork(network) => write!(f, "UnknownNetwork({network:?})"),
        }
    }
}

#[async_trait::async_trait]
pub trait Chain: Send + Sync {
    /// Whether `network` may be used now, asking nobody: `Err` while its node is not
    /// connected or failed verification (then every other call fails the same way).
    fn available(&self, _network: &str) -> Result<(), ChainError> {
        Ok(())
    }
    /// Asks `network`'s node to prove it still serves the chain it was verified on (its
    /// chain id); a node that does not is taken out of use. The chain worker does this
    /// before each pass's work on the network.
    async fn verify(&self, _network: &str) -> Result<(), ChainError> {
        Ok(())
    }
    /// Height of the newest block.
    async fn tip(&self, network: &str) -> Result<i64, ChainError>;
    /// A transfer by hash, with its current confirmations.
    async fn transfer(
        &self,
        network: &str,
        hash: &str,
    ) -> Result<Option<ChainTransfer>, ChainError>;
    /// Balance of an address: successful transfers in, minus transfers and fees out.
    async fn balance(&self, network: &str, address: &str) -> Result<Decimal, ChainError>;
    /// An address's balance of `asset` (a token contract; `None`: the coin) as of block
    /// `height`, when the backend can read it from its state; `None` otherwise (then
    /// reconciliation sums the settled transfers instead).
    async fn balance_at(
        &self,
        _network: &str,
        _address: &str,
        _asset: Option<&str>,
        _height: i64,
    ) -> Result<Option<Decimal>, ChainError> {
        Ok(None)
    }
    /// The height the chain had at `at`: its newest block mined at or before then (0
    /// before the first). What a reconciliation of a past window compares against.
    async fn height_at(&self, network: &str, at: DateTime<Utc>) -> Result<i64, ChainError>;
    /// Successful transfers from or to an address included in blocks `(after, up_to]`,
    /// oldest first: what an incremental reconciliation needs since its last checkpoint.
    async fn settled_between(
        &self,
        network: &str,
        address: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<ChainTransfer>, ChainError>;
    /// Transfers included in blocks after `after_block`, and those still pending: what a
    /// deposit watcher scans (oldest first).
    async fn transfers_since(&self, network: &str, after_block: i64)
    -> Result<Scanned, ChainError>;
    /// What a plain transfer costs its sender now.
    async fn estimate_fee(&self, network: &str) -> Result<Fee, ChainError>;
    /// The most a withdrawal of the network's coin may ever cost its sender in fees
    /// (`None`: unbounded, or not known here). A flat withdrawal fee below it would leave
    /// the address paying the rest out of the customer's money.
    fn max_transfer_fee(&self, _network: &str) -> Option<Decimal> {
        None
    }
    /// Submits a signed transfer; returns its hash (also when it was already submitted).
    async fn broadcast(&self, transfer: &SignedTransfer) -> Result<String, ChainError>;
    /// The identity of the backend serving `network` ([`backends`]): what its chain
    /// history is keyed by. A node's is known once it is verified.
    fn backend(&self, network: &str) -> Result<String, ChainError>;
    /// The token transfers of followed tokens in transaction `hash`, named as
    /// [`ChainTransfer::hash`] says, while it is on the canonical chain (`None` when it is
    /// not, or the backend has no tokens).
    async fn token_transfers_of(
        &self,
        _network: &str,
        _hash: &str,
    ) -> Result<Option<Vec<ChainTransfer>>, ChainError> {
        Ok(None)
    }
    /// Whether `network` is the simulator's here (its development mutations apply).
    fn is_simulated(&self, _network: &str) -> bool {
        false
    }
    /// `network`'s nonce-ordered withdrawals, when a node of an account-based network
    /// serves it (its withdrawals then follow `crate::chain::node_withdrawal`).
    fn accounts(&self, _network: &str) -> Option<&dyn AccountChain> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::GasFees;

    const GWEI: u128 = 1_000_000_000;

    fn fees(max: u128, tip: u128) -> GasFees {
        GasFees {
            max_fee_per_gas: max * GWEI,
            max_priority_fee_per_gas: tip * GWEI,
        }
    }

    #[test]
    fn a_replacement_raises_both_fees_enough_for_a_node_to_take_it() {
        let old = fees(4, 1);
        // The chain asks for less than before: a quarter more than the old fees.
        let bumped = old.bumped(fees(2, 1));
        assert_eq!(
            bumped,
            GasFees {
                max_fee_per_gas: 5 * GWEI,
                max_priority_fee_per_gas: GWEI + GWEI / 4
            }
        );
        assert!(bumped.replaces(old));
        // The chain asks for more: what it asks.
        assert_eq!(old.bumped(fees(100, 3)), fees(100, 3));
        // Never a tip above the max fee; a zero tip still rises.
        let tipless = GasFees {
            max_fee_per_gas: 10,
            max_priority_fee_per_gas: 0,
        };
        let bumped = tipless.bumped(tipless);
        assert!(bumped.max_priority_fee_per_gas > 0);
        assert!(bumped.max_priority_fee_per_gas <= bumped.max_fee_per_gas);
    }

    #[test]
    fn capped_fees_never_exceed_the_cap() {
        assert_eq!(fees(100, 3).capped(60 * GWEI), fees(60, 3));
        assert_eq!(fees(100, 3).capped(2 * GWEI), fees(2, 2));
        assert_eq!(fees(10, 3).capped(60 * GWEI), fees(10, 3));
        // A replacement above the cap is capped, and then may not replace at all.
        let old = fees(55, 1);
        let bumped = old.bumped(fees(100, 1)).capped(60 * GWEI);
        assert_eq!(bumped.max_fee_per_gas, 60 * GWEI);
        assert!(!bumped.replaces(old));
    }

    #[test]
    fn fees_less_than_a_tenth_higher_do_not_replace() {
        let old = fees(10, 2);
        assert!(!fees(10, 2).replaces(old));
        assert!(
            !GasFees {
                max_fee_per_gas: 10 * GWEI + 1,
                max_priority_fee_per_gas: 3 * GWEI
            }
            .replaces(old)
        );
        assert!(fees(11, 3).replaces(old));
        assert!(!fees(20, 2).replaces(old), "the tip must rise too");
    }
}
