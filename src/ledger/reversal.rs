//! Reversals: an operator's correction of a completed fiat movement. History is never
//! edited; a `REVERSAL` row on the same wallet moves the same amount and fee the other
//! way, and the database posts its original's system side negated. A transfer is reversed
//! as a pair, like it was made: both wallets get their reversal row in one transaction.
//!
//! A movement is reversed at most once (`ALREADY_REVERSED`; a unique index on
//! `reverses_id` backs the check), a reversal that would overdraw a wallet is refused
//! (`INSUFFICIENT_FUNDS`), and a reversal, refund or chain movement cannot be reversed:
//! money that moved on a chain is corrected on the chain.
//!
//! One exception: the credit of a chain deposit flagged `REORGED` — a reorganisation took
//! its transaction off the chain after it was credited, so the ledger holds money the
//! chain does not. While the deposit is flagged (checked under the wallet's lock, and by
//! the database), its credit may be reversed. Its hold stays `REORGED` as the record of
//! what happened; if the transaction is mined again, the deposit is credited again, once
//! (see `chain::deposit`).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::judge::{self, ReversalDecision, ReversalPrefetched};
use super::movement::Movement;
use super::store;
use super::{
    CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionStatus, TransactionType, Wallet,
    input,
};
use crate::schema::transactions;

/// `reverseTransaction`.
#[derive(Clone, Debug)]
pub struct ReversalRequest {
    /// The journal row to reverse (either side, for a transfer).
    pub transaction_id: i64,
    /// The operator's idempotency key, on the wallet of the reversed row.
    pub key: String,
    /// Why: kept as the reversal's description.
    pub reason: String,
}

/// Reverses a completed movement exactly once: the reversal row on the reversed row's
/// wallet (a replay: the original one). Operators only: the caller checks.
pub async fn execute(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    request: &ReversalRequest,
) -> Result<Movement, LedgerError> {
    input::check_key("idempotencyKey", &request.key)?;
    input::check_text("reason", &request.reason, input::MAX_DESCRIPTION_LEN)?;
    if request.reason.trim().is_empty() {
        return Err(LedgerError::BadInput("a reversal needs a reason".into()));
    }
    store::retried!(conn, |tx| { apply(tx, currencies, request).await })
}

async fn apply(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    request: &ReversalRequest,
) -> Result<Movement, LedgerError> {
    let original = row(conn, request.transaction_id)
        .await?
        .ok_or(LedgerError::NotFound("transaction"))?;
    // Refused before any lock is taken (the judge checks it again, first).
    judge::check_reversible(&original)?;
    // The other side of a transfer, reversed with it.
    let partner = match original.kind {
        TransactionType::TransferOut => store::batch::receiving_sides(conn, &[original.id])
            .await?
            .into_iter()
            .next(),
        TransactionType::TransferIn => match original.counterpart_id {
            Some(id) => row(conn, id).await?,
            None => None,
        },
        _ => None,
    };
    let (wallet, partner_wallet) = lock(conn, &original, partner.as_ref()).await?;

    // Read after the locks, like every keyed movement; the deposit's flag too (the
    // watcher lifts it under the wallet's lock).
    let journaled = store::find_by_key(conn, wallet.id, &request.key).await?;
    let reversed_by = reversals_of(conn, &[original.id]).await?.into_iter().next();
    let deposit_flagged = match judge::chain_credit(&original) {
        Some(hold_id) => row(conn, hold_id)
            .await?
            .is_some_and(|hold| hold.status == TransactionStatus::Reorged),
        None => false,
    };
    let state = ReversalPrefetched {
        original,
        partner: partner.zip(partner_wallet),
        wallet,
        journaled,
        reversed_by,
        deposit_flagged,
    };
    match judge::reversal(currencies, &state, request)? {
        ReversalDecision::Replay(movement) => Ok(movement),
        ReversalDecision::New(first, second) => {
            let entry = store::append(conn, &state.wallet, &first, Decimal::ZERO).await?;
            if let (Some(row), Some((_, w))) = (second, &state.partner) {
                store::append_with(conn, w, &row, Decimal::ZERO, Some(entry.id)).await?;
            }
            Ok(Movement {
                entry,
                replayed: false,
            })
        }
    }
}

/// Locks the original's wallet and its partner's (a transfer's other side), lower id
/// first.
async fn lock(
    conn: &mut AsyncPgConnection,
    original: &JournalEntry,
    partner: Option<&JournalEntry>,
) -> Result<(Wallet, Option<Wallet>), LedgerError> {
    match partner {
        None => Ok((
            store::lock_wallet(conn, &Scope::All, original.wallet_id).await?,
            None,
        )),
        Some(partner) => {
            let (wallet, other) = store::lock_two(
                conn,
                (original.wallet_id, &Scope::All),
                (partner.wallet_id, &Scope::All),
            )
            .await?;
            Ok((wallet, Some(other)))
        }
    }
}

async fn row(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .find(id)
        .select(JournalEntry::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The reversals of journal rows `ids` (each has at most one).
pub async fn reversals_of(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<Vec<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::reverses_id.eq_any(ids))
        .select(JournalEntry::as_select())
        .load(conn)
        .await?)
}
