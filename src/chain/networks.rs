//! One [`Chain`] over several networks, each served by its own backend: the simulator for
//! some, a node client for others. Callers name the network; a network nobody serves is
//! [`ChainError::UnknownNetwork`].

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{AccountChain, Chain, ChainError, ChainTransfer, Fee, Scanned, SignedTransfer};

#[derive(Clone, Default)]
pub struct Networks {
    backends: BTreeMap<String, Arc<dyn Chain>>,
}

impl Networks {
    /// Serves `network` with `backend` (replacing an earlier backend for it).
    pub fn with(mut self, network: &str, backend: Arc<dyn Chain>) -> Self {
        self.backends.insert(network.to_owned(), backend);
        self
    }

    /// The networks served, in name order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.backends.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    fn served_by(&self, network: &str) -> Result<&dyn Chain, ChainError> {
        self.backends
            .get(network)
            .map(|b| b.as_ref())
            .ok_or_else(|| ChainError::UnknownNetwork(network.to_owned()))
    }
}

#[async_trait::async_trait]
impl Chain for Networks {
    fn available(&self, network: &str) -> Result<(), ChainError> {
        self.served_by(network)?.available(network)
    }

    async fn verify(&self, network: &str) -> Result<(), ChainError> {
        self.served_by(network)?.verify(network).await
    }

    async fn tip(&self, network: &str) -> Result<i64, ChainError> {
        self.served_by(network)?.tip(network).await
    }

    async fn transfer(
        &self,
        network: &str,
        hash: &str,
    ) -> Result<Option<ChainTransfer>, ChainError> {
        self.served_by(network)?.transfer(network, hash).await
    }

    async fn balance(&self, network: &str, address: &str) -> Result<Decimal, ChainError> {
        self.served_by(network)?.balance(network, address).await
    }

    async fn balance_at(
        &self,
        network: &str,
        address: &str,
        asset: Option<&str>,
        height: i64,
    ) -> Result<Option<Decimal>, ChainError> {
        self.served_by(network)?
            .balance_at(network, address, asset, height)
            .await
    }

    async fn height_at(&self, network: &str, at: DateTime<Utc>) -> Result<i64, ChainError> {
        self.served_by(network)?.height_at(network, at).await
    }

    async fn settled_between(
        &self,
        network: &str,
        address: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<ChainTransfer>, ChainError> {
        self.served_by(network)?
            .settled_between(network, address, after, up_to)
            .await
    }

    async fn transfers_since(
        &self,
        network: &str,
        after_block: i64,
    ) -> Result<Scanned, ChainError> {
        self.served_by(network)?
            .transfers_since(network, after_block)
            .await
    }

    async fn estimate_fee(&self, network: &str) -> Result<Fee, ChainError> {
        self.served_by(network)?.estimate_fee(network).await
    }

    async fn broadcast(&self, transfer: &SignedTransfer) -> Result<String, ChainError> {
        self.served_by(&transfer.network)?.broadcast(transfer).await
    }

    fn backend(&self, network: &str) -> Result<String, ChainError> {
        self.served_by(network)?.backend(network)
    }

    async fn token_transfers_of(
        &self,
        network: &str,
        hash: &str,
    ) -> Result<Option<Vec<ChainTransfer>>, ChainError> {
        self.served_by(network)?
            .token_transfers_of(network, hash)
            .await
    }

    fn max_transfer_fee(&self, network: &str) -> Option<Decimal> {
        self.served_by(network).ok()?.max_transfer_fee(network)
    }

    fn is_simulated(&self, network: &str) -> bool {
        self.served_by(network)
            .is_ok_and(|b| b.is_simulated(network))
    }

    fn accounts(&self, network: &str) -> Option<&dyn AccountChain> {
        self.served_by(network).ok()?.accounts(network)
    }
}
