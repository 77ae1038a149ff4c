//! The SQL of the fiat write path: what [`judge`](crate::ledger::judge) reads before it
//! decides (prefetch) and what it decided, written (commit). The same statements serve a
//! request applied alone (a batch of one, in the caller's transaction) and a group-commit
//! batch (which sends `BEGIN` before the prefetch and `COMMIT` after the writes, each in
//! the same round trip).
//!
//! Every statement has a fixed text (the long ones in the `.sql` files next to this one),
//! so each connection keeps it prepared; statements sent together travel in one round
//! trip and Postgres runs them in the order sent.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::ledger::fixed_sql::{self, Bind, Fixed};
use crate::ledger::judge::{Decided, Prefetched, Request};
use crate::ledger::{JournalEntry, LedgerError, Scope, TransactionType, Wallet};
use crate::schema::transactions;

/// What a batch reads before it is judged.
pub struct Prefetch {
    pub state: Prefetched,
    /// The database's clock after the locks were taken: the batch's time.
    pub clock: DateTime<Utc>,
    /// Journal row ids taken beforehand, ascending — a transfer's receiving row names its
    /// sending row by id in the same insert — enough for every row the batch could write
    /// (unused ones are gaps, as a rolled-back insert leaves).
    pub ids: Vec<i64>,
}

/// Locks the requests' wallets (in id order, each only if a request naming it may touch
/// it), reads the rows journaled under their keys, the clock and enough row ids: one round
/// trip, the keys read after the locks (as a request alone would read them), plus one
/// more when a key names a transfer already made (its receiving side).
pub async fn prefetch(
    conn: &AsyncPgConnection,
    asked: &[(&Scope, &Request)],
) -> Result<Prefetch, LedgerError> {
    let keys: Vec<(i64, &str)> = asked
        .iter()
        .map(|(_, r)| (r.keyed_wallet(), r.key()))
        .collect();
    let rows_at_most = asked.iter().map(|(_, r)| r.rows_at_most()).sum();
    let mut pipe = conn;
    let locked = lock_wallets(conn, asked);
    let journaled = super::find_by_keys(conn, &keys);
    let clock = diesel::select(Fixed::<Timestamptz>::new(&["clock_timestamp()"], vec![]))
        .get_result::<DateTime<Utc>>(&mut pipe);
    let ids = super::allocate_ids(conn, rows_at_most);
    let (locked, journaled, clock, ids) = futures_util::join!(locked, journaled, clock, ids);
    // The first failure in the order sent is the cause: the statements after it only
    // report the transaction aborted.
    let (wallets, journaled, clock, ids) = (locked?, journaled?, clock?, ids?);
    let journaled: HashMap<(i64, String), JournalEntry> = journaled
        .into_iter()
        .map(|e| ((e.wallet_id, e.tx_hash.clone()), e))
        .collect();
    // The receiving sides of transfers sent before under these keys (a replay).
    let sent: Vec<i64> = journaled
        .values()
        .filter(|e| e.kind == TransactionType::TransferOut)
        .map(|e| e.id)
        .collect();
    let received = match sent.is_empty() {
        true => HashMap::new(),
        false => receiving_sides(conn, &sent)
            .await?
            .into_iter()
            .filter_map(|e| e.counterpart_id.map(|out| (out, e)))
            .collect(),
    };
    Ok(Prefetch {
        state: Prefetched {
            wallets,
            journaled,
            received,
        },
        clock,
        ids,
    })
}

/// Locks, in id order, the wallets of `asked` that the request naming them may touch: a
/// movement's wallet and a transfer's source as its caller may see them, a transfer's
/// target anyone's.
async fn lock_wallets(
    conn: &AsyncPgConnection,
    asked: &[(&Scope, &Request)],
) -> Result<HashMap<i64, Wallet>, LedgerError> {
    let mut ids: Vec<i64> = Vec::with_capacity(asked.len());
    let mut owners: Vec<Option<String>> = Vec::with_capacity(asked.len());
    for (scope, request) in asked {
        ids.push(request.keyed_wallet());
        owners.push(scope.owner().map(str::to_owned));
        if let Request::Transfer(t) = request {
            ids.push(t.to_wallet_id);
            owners.push(None);
        }
    }
    lock_visible(conn, ids, owners).await
}

/// Locks, in id order, the wallets `ids` that the owner paired with each (`None`:
/// anyone's) may touch.
pub async fn lock_visible(
    mut conn: &AsyncPgConnection,
    ids: Vec<i64>,
    owners: Vec<Option<String>>,
) -> Result<HashMap<i64, Wallet>, LedgerError> {
    let locked: Vec<Wallet> = fixed_sql::numbered(
        include_str!("lock_wallets.sql"),
        vec![
            Bind::BigInts(ids.clone()),
            Bind::BigInts(ids),
            Bind::OptionalTexts(owners),
        ],
    )
    .load(&mut conn)
    .await?;
    Ok(locked.into_iter().map(|w| (w.id, w)).collect())
}

/// The receiving sides of the transfers whose sending sides are `out_ids`.
pub async fn receiving_sides(
    mut conn: &AsyncPgConnection,
    out_ids: &[i64],
) -> Result<Vec<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::counterpart_id.eq_any(out_ids))
        .filter(transactions::type_.eq(TransactionType::TransferIn))
        .select(JournalEntry::as_select())
        .load(&mut conn)
        .await?)
}

/// Writes `decided` — the new balances with one statement, the journal rows with another
/// (ids from `ids`, in row order, so the journal's order is the order judged) — and
/// returns the rows as stored, in the order of `decided.rows`. Sent together; the caller
/// may send `COMMIT` behind them in the same round trip.
pub async fn write(
    conn: &AsyncPgConnection,
    decided: &Decided<'_>,
    ids: &[i64],
) -> Result<Vec<JournalEntry>, LedgerError> {
    let mut entries = Vec::with_capacity(decided.rows.len());
    for (i, r) in decided.rows.iter().enumerate() {
        let Some(&(_, _, time)) = decided.touched.iter().find(|t| t.0 == r.wallet_id) else {
            return Err(LedgerError::Internal(
                "a batch row's wallet has no new balance".into(),
            ));
        };
        let mut entry = r.row.entry(r.wallet_id, r.around, time);
        let id = |i: usize| {
            ids.get(i)
                .copied()
                .ok_or_else(|| LedgerError::Internal("fewer row ids taken than rows".into()))
        };
        entry.id = Some(id(i)?);
        entry.counterpart_id = r.counterpart.map(id).transpose()?;
        entries.push(entry);
    }
    let mut pipe = conn;
    let update = fixed_sql::numbered(
        include_str!("update_balances.sql"),
        vec![
            Bind::BigInts(decided.touched.iter().map(|t| t.0).collect()),
            Bind::Numerics(decided.touched.iter().map(|t| t.1).collect()),
            Bind::Times(decided.touched.iter().map(|t| t.2).collect()),
        ],
    )
    .execute(&mut pipe);
    let insert = super::insert_batch(conn, &entries);
    let (updated, inserted) = futures_util::join!(update, insert);
    let (updated, inserted) = (updated?, inserted?);
    if updated != decided.touched.len() || inserted.len() != decided.rows.len() {
        // Cannot happen with the wallets locked. If it did, what commits is not what was
        // judged: the requests run again on their own and replay what is there.
        return Err(LedgerError::OutcomeUnknown(
            "a batch wrote other rows than it judged".into(),
        ));
    }
    Ok(inserted)
}
