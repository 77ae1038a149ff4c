//! Reading the journal: single rows, filtered pages, and chain verification.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::page::paginate;
use super::{
    JournalEntry, LedgerError, ListScope, Page, PageArgs, Scope, TransactionStatus, TransactionType,
};
use crate::schema::{transactions, wallets};

/// Filters of `transactions(filter: …)`. Time bounds are inclusive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionFilter {
    pub types: Option<Vec<TransactionType>>,
    pub statuses: Option<Vec<TransactionStatus>>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// Exactly this business reference.
    pub reference: Option<String>,
}

/// Wallets up to which a user's listing is one index walk per wallet (beyond: one query).
const MERGED_WALLETS: usize = 16;

impl TransactionFilter {
    /// The filter split into one filter per ordered index walk. Postgres walks an index
    /// in `(created_at, id)` order only below equalities, so a page filtered by several
    /// types is the merge of one walk per type on `(wallet_id, type, created_at, id)`;
    /// without types, one walk per status on `(wallet_id, status, created_at, id)` (which
    /// holds every row not `COMPLETED`: that status is dense, its walk is the wallet's
    /// own). Each walk stops after a page, so a type or status that is rare in a long
    /// history costs a page, not the history.
    fn walks(&self) -> Vec<TransactionFilter> {
        fn distinct<T: PartialEq + Copy>(values: &[T]) -> Vec<T> {
            let mut out = Vec::new();
            for v in values {
                if !out.contains(v) {
                    out.push(*v);
                }
            }
            out
        }
        match (&self.types, &self.statuses) {
            (Some(types), _) if !types.is_empty() => distinct(types)
                .into_iter()
                .map(|t| TransactionFilter {
                    types: Some(vec![t]),
                    ..self.clone()
                })
                .collect(),
            (_, Some(statuses)) if !statuses.is_empty() => distinct(statuses)
                .into_iter()
                .map(|s| TransactionFilter {
                    statuses: Some(vec![s]),
                    ..self.clone()
                })
                .collect(),
            _ => vec![self.clone()],
        }
    }
}

/// A page of journal rows, in the order balances changed (oldest first).
///
/// Every listing costs a page, not the journal: a user's listing walks each of the
/// user's wallets' `(wallet_id, created_at, id)` index from the cursor for one page, and
/// a filter by types or statuses walks one index per value (see
/// [`TransactionFilter::walks`]); the walks are sent together, share one snapshot, and
/// are merged here. (A single query ordered by time would walk everyone's rows to find
/// the user's, or every row of a long history to find a rare type.)
pub async fn list_transactions(
    conn: &mut AsyncPgConnection,
    scope: &ListScope,
    filter: &TransactionFilter,
    page: &PageArgs,
) -> Result<Page<JournalEntry>, LedgerError> {
    let walks = filter.walks();
    if walks.len() == 1 && !matches!(scope, ListScope::Owner(_)) {
        return Ok(page.finish(fetch(conn, scope, filter, page).await?));
    }
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| {
            let scopes = match scope {
                ListScope::Owner(user) => {
                    let ids: Vec<i64> = wallets::table
                        .filter(wallets::user_id.eq(user))
                        .select(wallets::id)
                        .load(conn)
                        .await?;
                    if ids.len() > MERGED_WALLETS {
                        vec![scope.clone()]
                    } else {
                        ids.into_iter().map(ListScope::Wallet).collect()
                    }
                }
                other => vec![other.clone()],
            };
            let pipe: &AsyncPgConnection = conn;
            let fetches = scopes
                .iter()
                .flat_map(|s| walks.iter().map(move |w| fetch(pipe, s, w, page)));
            let mut rows: Vec<JournalEntry> = futures_util::future::try_join_all(fetches)
                .await?
                .into_iter()
                .flatten()
                .collect();
            // Back into fetch order: by (created_at, id), descending for a backward page.
            rows.sort_by_key(|e| (e.created_at, e.id));
            if page.is_backward() {
                rows.reverse();
            }
            rows.truncate(usize::try_from(page.fetch_limit()).unwrap_or(usize::MAX));
            Ok(page.finish(rows))
        })
        .await
}

/// One page's rows of `scope`, in fetch order (see [`PageArgs::finish`]). A single type
/// or status is an equality, so that Postgres can walk its index in order.
async fn fetch(
    conn: &AsyncPgConnection,
    scope: &ListScope,
    filter: &TransactionFilter,
    page: &PageArgs,
) -> Result<Vec<JournalEntry>, LedgerError> {
    let mut q = transactions::table
        .select(JournalEntry::as_select())
        .into_boxed();
    match scope {
        ListScope::Wallet(id) => q = q.filter(transactions::wallet_id.eq(*id)),
        ListScope::Owner(user) => {
            q = q.filter(
                transactions::wallet_id.eq_any(
                    wallets::table
                        .filter(wallets::user_id.eq(user.clone()))
                        .select(wallets::id),
                ),
            )
        }
        ListScope::All => {}
    }
    match filter.types.as_deref() {
        Some([only]) => q = q.filter(transactions::type_.eq(*only)),
        Some(types) => q = q.filter(transactions::type_.eq_any(types.to_vec())),
        None => {}
    }
    match filter.statuses.as_deref() {
        Some([only]) => q = q.filter(transactions::status.eq(*only)),
        Some(statuses) => q = q.filter(transactions::status.eq_any(statuses.to_vec())),
        None => {}
    }
    if let Some(from) = filter.created_from {
        q = q.filter(transactions::created_at.ge(from));
    }
    if let Some(to) = filter.created_to {
        q = q.filter(transactions::created_at.le(to));
    }
    if let Some(reference) = &filter.reference {
        q = q.filter(transactions::reference.eq(reference.clone()));
    }
    let mut pipe = conn;
    Ok(paginate!(q, page, transactions).load(&mut pipe).await?)
}

/// A journal row the caller may see.
pub async fn find_transaction(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    id: i64,
) -> Result<JournalEntry, LedgerError> {
    let mut q = transactions::table
        .filter(transactions::id.eq(id))
        .select(JournalEntry::as_select())
        .into_boxed();
    if let Some(owner) = scope.owner() {
        q = q.filter(
            transactions::wallet_id.eq_any(
                wallets::table
                    .filter(wallets::user_id.eq(owner.to_owned()))
                    .select(wallets::id),
            ),
        );
    }
    q.first(conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("transaction"))
}

/// The movement recorded on a wallet the caller may see under `key`: a client's
/// idempotency key (`idempotencyKey`), or a chain deposit's hash. `None` when
/// there is none (yet).
pub async fn find_by_key(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    wallet_id: i64,
    key: &str,
) -> Result<Option<JournalEntry>, LedgerError> {
    let wallet = super::wallet::find_wallet(conn, scope, wallet_id).await?;
    let keyed = super::store::find_by_key(conn, wallet.id, key).await?;
    if keyed.is_some() {
        return Ok(keyed);
    }
    match &wallet.network {
        Some(network) => Ok(super::store::find_chain_deposit(conn, network, key)
            .await?
            .filter(|e| e.wallet_id == wallet.id)),
        None => Ok(None),
    }
}

/// What walking a wallet's journal in API order found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    pub rows: usize,
    /// Rows whose `balance_before` differs from the previous row's `balance_after`, or
    /// whose own before/after do not differ by the signed amount.
    pub breaks: Vec<i64>,
    /// The newest `balance_after` (zero for an empty journal).
    pub journal_balance: Decimal,
    pub wallet_balance: Decimal,
}

impl ChainReport {
    pub fn holds(&self) -> bool {
        self.breaks.is_empty() && self.journal_balance == self.wallet_balance
    }
}

/// One journal row as the chain check reads it.
#[derive(Queryable)]
struct ChainRow {
    id: i64,
    kind: TransactionType,
    hold: bool,
    amount: Decimal,
    fee: Decimal,
    before: Decimal,
    after: Decimal,
    reverses: Option<i64>,
}

/// Walks a wallet's whole journal in API order and checks the journal chain: each row
/// starts where the previous ended, moves by its signed amount, and the last one ends at
/// the wallet's balance. Read in one snapshot so concurrent movements cannot tear it.
pub async fn verify_chain(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
) -> Result<ChainReport, LedgerError> {
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| {
            let wallet_balance: Decimal = wallets::table
                .find(wallet_id)
                .select(wallets::balance)
                .first(conn)
                .await
                .optional()?
                .ok_or(LedgerError::NotFound("wallet"))?;
            let rows: Vec<ChainRow> = transactions::table
                .filter(transactions::wallet_id.eq(wallet_id))
                .order((transactions::created_at.asc(), transactions::id.asc()))
                .select((
                    transactions::id,
                    transactions::type_,
                    transactions::hold,
                    transactions::amount,
                    transactions::fee,
                    transactions::balance_before,
                    transactions::balance_after,
                    transactions::reverses_id,
                ))
                .load(conn)
                .await?;
            // The types of the rows that reversals reverse: a reversal moves the balance
            // the other way from its original, whatever its own balances say.
            let reversed_ids: Vec<i64> = rows.iter().filter_map(|r| r.reverses).collect();
            let reversed: std::collections::HashMap<i64, TransactionType> = transactions::table
                .filter(transactions::id.eq_any(&reversed_ids))
                .select((transactions::id, transactions::type_))
                .load(conn)
                .await?
                .into_iter()
                .collect();
            let mut breaks = Vec::new();
            let mut running = Decimal::ZERO;
            for ChainRow {
                id,
                kind,
                hold,
                amount,
                fee,
                before,
                after,
                reverses,
            } in &rows
            {
                // A hold moves nothing; a posting moves its amount and fee in the
                // direction its type gives.
                let sign = kind.sign_reversing(reverses.and_then(|r| reversed.get(&r).copied()));
                let moved = match (hold, sign) {
                    (true, _) => Some(Decimal::ZERO),
                    (false, Some(sign)) => Some(sign * (amount + fee)),
                    (false, None) => None,
                };
                if *before != running || moved.is_none_or(|m| *after != *before + m) {
                    breaks.push(*id);
                }
                running = *after;
            }
            Ok(ChainReport {
                rows: rows.len(),
                breaks,
                journal_balance: running,
                wallet_balance,
            })
        })
        .await
}
