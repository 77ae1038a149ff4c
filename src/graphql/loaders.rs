//! DataLoaders: batch the lookups that each row of a page would otherwise make, one query
//! (and one connection) per batch instead of one per row.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::Context;
use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use tokio::sync::Semaphore;

use super::RequestDb;
use crate::chain::node_withdrawal;
use crate::db::PgPool;
use crate::ledger::{JournalEntry, LedgerError, Wallet, reversal, store, wallet};

/// The request's wallet loader (request-scoped, so its cache never outlives a request).
pub type Wallets = DataLoader<WalletLoader, HashMapCache>;
/// Journal rows by id (`Transaction.settles`).
pub type Entries = DataLoader<EntryLoader, HashMapCache>;
/// The postings of holds, by hold id (`Transaction.settlements`, `Transaction.chargedFee`).
pub type Settlements = DataLoader<SettlementLoader, HashMapCache>;
/// The reversal of a journal row, by the row's id (`Transaction.reversedBy`).
pub type Reversals = DataLoader<ReversalLoader, HashMapCache>;
/// The transactions signed for withdrawals through a node, by hold id
/// (`Transaction.chainAttempts`).
pub type Attempts = DataLoader<AttemptLoader, HashMapCache>;

/// The loaders of one request (or one websocket connection). Their batches share one
/// connection at a time, apart from the resolvers' budget.
pub struct Loaders {
    pub wallets: Wallets,
    pub entries: Entries,
    pub settlements: Settlements,
    pub reversals: Reversals,
    pub attempts: Attempts,
}

impl Loaders {
    /// Loaders over `db`'s pool. Without `cache`, every load reads the database again (a
    /// long-lived websocket connection must never serve an earlier event's row).
    pub fn new(db: &RequestDb, cache: bool) -> Loaders {
        let batches = Batches {
            pool: db.pool().clone(),
            one_at_a_time: Arc::new(Semaphore::new(1)),
        };
        let loaders = Loaders {
            wallets: loader(WalletLoader(batches.clone())),
            entries: loader(EntryLoader(batches.clone())),
            settlements: loader(SettlementLoader(batches.clone())),
            reversals: loader(ReversalLoader(batches.clone())),
            attempts: loader(AttemptLoader(batches)),
        };
        if !cache {
            loaders.wallets.enable_all_cache(false);
            loaders.entries.enable_all_cache(false);
            loaders.settlements.enable_all_cache(false);
            loaders.reversals.enable_all_cache(false);
            loaders.attempts.enable_all_cache(false);
        }
        loaders
    }

    pub fn into_request(self, request: async_graphql::Request) -> async_graphql::Request {
        request
            .data(self.wallets)
            .data(self.entries)
            .data(self.settlements)
            .data(self.reversals)
            .data(self.attempts)
    }

    pub fn into_data(self, data: &mut async_graphql::Data) {
        data.insert(self.wallets);
        data.insert(self.entries);
        data.insert(self.settlements);
        data.insert(self.reversals);
        data.insert(self.attempts);
    }
}

fn loader<L: Loader<i64>>(l: L) -> DataLoader<L, HashMapCache> {
    DataLoader::with_cache(l, tokio::spawn, HashMapCache::default())
}

/// Where the loaders of one request get their connection: one batch at a time.
#[derive(Clone)]
pub struct Batches {
    pool: PgPool,
    one_at_a_time: Arc<Semaphore>,
}

impl Batches {
    async fn run<T>(
        &self,
        load: impl AsyncFnOnce(&mut diesel_async::AsyncPgConnection) -> Result<T, LedgerError>,
    ) -> Result<T, Arc<LedgerError>> {
        let _turn = self
            .one_at_a_time
            .acquire()
            .await
            .map_err(|_| Arc::new(LedgerError::Internal("loader closed".into())))?;
        let mut conn = self.pool.get().await.map_err(|e| Arc::new(e.into()))?;
        load(&mut conn).await.map_err(Arc::new)
    }
}

/// When the selection of a connection asks for one of `fields` of `edges.node` (those that
/// read the row's wallet: `wallet`, a transaction's `currency`), loads the wallets of the
/// whole page in one query up front, so the per-row loads are served from the cache instead
/// of depending on the loader's batching window.
pub async fn prefetch_wallets(
    ctx: &Context<'_>,
    fields: &[&str],
    ids: impl IntoIterator<Item = i64>,
) -> async_graphql::Result<()> {
    let node = ctx.look_ahead().field("edges").field("node");
    if !fields.iter().any(|f| node.field(f).exists()) {
        return Ok(());
    }
    ctx.data_unchecked::<Wallets>()
        .load_many(ids)
        .await
        .map_err(|e| super::error::ledger_error(&e))?;
    Ok(())
}

/// Loads wallets by id (used by `Transaction.wallet`, `Transaction.currency` and
/// `Reconciliation.wallet`, whose rows the caller was already allowed to see).
pub struct WalletLoader(Batches);

impl Loader<i64> for WalletLoader {
    type Value = Wallet;
    type Error = Arc<LedgerError>;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Wallet>, Self::Error> {
        let rows = self
            .0
            .run(async |c| wallet::wallets_by_ids(c, keys).await)
            .await?;
        Ok(rows.into_iter().map(|w| (w.id, w)).collect())
    }
}

/// Loads journal rows by id (the holds that postings settle: same wallet as the posting).
pub struct EntryLoader(Batches);

impl Loader<i64> for EntryLoader {
    type Value = JournalEntry;
    type Error = Arc<LedgerError>;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, JournalEntry>, Self::Error> {
        let rows = self
            .0
            .run(async |c| store::entries_by_ids(c, keys).await)
            .await?;
        Ok(rows.into_iter().map(|e| (e.id, e)).collect())
    }
}

/// Loads the postings of holds, oldest first, by hold id.
pub struct SettlementLoader(Batches);

impl Loader<i64> for SettlementLoader {
    type Value = Vec<JournalEntry>;
    type Error = Arc<LedgerError>;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Vec<JournalEntry>>, Self::Error> {
        let rows = self
            .0
            .run(async |c| store::settlements_of(c, keys).await)
            .await?;
        let mut by_hold: HashMap<i64, Vec<JournalEntry>> = HashMap::new();
        for row in rows {
            if let Some(hold) = row.hold_id {
                by_hold.entry(hold).or_default().push(row);
            }
        }
        Ok(by_hold)
    }
}

/// Loads the hashes of the transactions signed for each withdrawal, oldest first.
pub struct AttemptLoader(Batches);

impl Loader<i64> for AttemptLoader {
    type Value = Vec<String>;
    type Error = Arc<LedgerError>;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Vec<String>>, Self::Error> {
        let rows = self
            .0
            .run(async |c| node_withdrawal::attempts_of_holds(c, keys).await)
            .await?;
        let mut by_hold: HashMap<i64, Vec<String>> = HashMap::new();
        for (hold, hash) in rows {
            by_hold.entry(hold).or_default().push(hash);
        }
        Ok(by_hold)
    }
}

/// Loads the reversal of each journal row, by the reversed row's id (same wallet).
pub struct ReversalLoader(Batches);

impl Loader<i64> for ReversalLoader {
    type Value = JournalEntry;
    type Error = Arc<LedgerError>;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, JournalEntry>, Self::Error> {
        let rows = self
            .0
            .run(async |c| reversal::reversals_of(c, keys).await)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|e| e.reverses_id.map(|id| (id, e)))
            .collect())
    }
}
