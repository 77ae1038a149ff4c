//! DataLoaders: batch the lookups that each row of a page would otherwise make.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;

use async_graphql::Context;
use async_graphql::dataloader::{DataLoader, HashMapCache};

use crate::db::PgPool;
use crate::ledger::{LedgerError, Wallet, wallet};

/// The request's wallet loader (request-scoped, so its cache never outlives a request).
pub type Wallets = DataLoader<WalletLoader, HashMapCache>;

/// A wallet loader for one request (or one websocket session).
pub fn wallets(pool: PgPool) -> Wallets {
    DataLoader::with_cache(WalletLoader { pool }, tokio::spawn, HashMapCache::default())
}

/// When the selection of a connection asks for `edges.node.wallet`, loads the wallets of the
/// whole page in one query up front, so the per-row loads are served from the cache instead
/// of depending on the loader's batching window.
pub async fn prefetch_wallets(
    ctx: &Context<'_>,
    ids: impl IntoIterator<Item = i64>,
) -> async_graphql::Result<()> {
    if !ctx
        .look_ahead()
        .field("edges")
        .field("node")
        .field("wallet")
        .exists()
    {
        return Ok(());
    }
    ctx.data_unchecked::<Wallets>()
        .load_many(ids)
        .await
        .map_err(|e| super::error::ledger_error(&e))?;
    Ok(())
}

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
