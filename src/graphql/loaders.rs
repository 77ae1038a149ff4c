//! DataLoaders: batch the lookups that each row of a page would otherwise make.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;

use crate::db::PgPool;
use crate::ledger::{LedgerError, Wallet, wallet};

/// Loads wallets by id, one query per batch (used by `Transaction.wallet` and
/// `Reconciliation.wallet`, whose rows the caller was already allowed to see).
pub struct WalletLoader {
    pub pool: PgPool,
}

impl Loader<i64> for WalletLoader {
    type Value = Wallet;
    type Error = Arc<LedgerError>;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Wallet>, Self::Error> {
        let mut conn = self.pool.get().await.map_err(|e| Arc::new(e.into()))?;
        let rows = wallet::wallets_by_ids(&mut conn, keys)
            .await
            .map_err(Arc::new)?;
        Ok(rows.into_iter().map(|w| (w.id, w)).collect())
    }
}
