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

use super::judge;
use super::movement::Movement;
use super::store::{self, NewRow};
use super::{
    CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionStatus, TransactionType, Wallet,
    input, money,
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
    check_reversible(&original)?;
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

    // Read after the locks, like every keyed movement.
    if let Some(existing) = store::find_by_key(conn, wallet.id, &request.key).await? {
        let same = existing.kind == TransactionType::Reversal
            && existing.reverses_id == Some(original.id)
            && existing.description.as_deref() == Some(request.reason.as_str());
        return judge::replay_or_conflict(existing, same, "idempotencyKey", &request.key);
    }
    if let Some(earlier) = reversals_of(conn, &[original.id]).await?.into_iter().next() {
        return Err(LedgerError::AlreadyReversed(format!(
            "the transaction was already reversed (by {})",
            earlier.tx_hash
        )));
    }
    if let Some(hold_id) = chain_credit(&original) {
        // Read under the wallet's lock: the watcher lifts the flag under it too.
        let flagged = row(conn, hold_id)
            .await?
            .is_some_and(|hold| hold.status == TransactionStatus::Reorged);
        if !flagged {
            return Err(LedgerError::BadInput(
                "the transaction credited a chain deposit: it can be reversed only while \
                 the deposit is flagged REORGED (a reorganisation took its transaction off \
                 the chain after it was credited)"
                    .into(),
            ));
        }
    }

    let first = reversal_row(currencies, &wallet, &original, request)?;
    let second = match (&partner, &partner_wallet) {
        (Some(p), Some(w)) => Some((w, reversal_row(currencies, w, p, request)?)),
        _ => None,
    };
    let entry = store::append(conn, &wallet, &first, Decimal::ZERO).await?;
    if let Some((w, row)) = second {
        store::append_with(conn, w, &row, Decimal::ZERO, Some(entry.id)).await?;
    }
    Ok(Movement {
        entry,
        replayed: false,
    })
}

/// The deposit hold whose credit `original` is, if it is a chain deposit's credit.
fn chain_credit(original: &JournalEntry) -> Option<i64> {
    original
        .hold_id
        .filter(|_| original.kind == TransactionType::Deposit && original.network.is_some())
}

/// Only completed fiat movements and transfers are reversed — and a chain deposit's credit
/// while the deposit is flagged REORGED (checked once its wallet is locked).
fn check_reversible(original: &JournalEntry) -> Result<(), LedgerError> {
    let refuse = |why: &str| {
        Err(LedgerError::BadInput(format!(
            "{why}: it cannot be reversed"
        )))
    };
    match original.kind {
        TransactionType::Reversal => return refuse("the transaction is a reversal"),
        TransactionType::Refund => return refuse("the transaction is a refund"),
        _ => {}
    }
    if original.hold {
        return refuse("the transaction is part of a movement in progress");
    }
    if chain_credit(original).is_some() {
        return Ok(());
    }
    if original.network.is_some() {
        return refuse("the transaction moved money on a chain");
    }
    if original.hold || original.hold_id.is_some() {
        return refuse("the transaction is part of a movement in progress");
    }
    Ok(())
}

/// The row that undoes `original` on its (locked) `wallet`, if the wallet can take it.
fn reversal_row<'r>(
    currencies: &CurrencyRegistry,
    wallet: &Wallet,
    original: &JournalEntry,
    request: &'r ReversalRequest,
) -> Result<NewRow<'r>, LedgerError> {
    let currency = currencies
        .get(&wallet.currency)
        .ok_or_else(|| LedgerError::CurrencyNotSupported(wallet.currency.clone()))?;
    let change = -original.balance_change();
    if change < Decimal::ZERO {
        money::check_funds(wallet, -change)?;
    }
    if change > Decimal::ZERO {
        money::check_credit(wallet, change, currency)?;
    }
    let mut row = NewRow::fiat(
        TransactionType::Reversal,
        original.amount,
        &request.key,
        Some(request.reason.as_str()),
        currency.scale(),
    );
    row.fee = original.fee;
    row.reverses = Some((original.id, original.balance_change()));
    Ok(row)
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
