//! Following the reorganisations a node-backed deposit watcher finds.
//!
//! When the watcher finds that blocks it scanned were replaced, the backend writes "blocks
//! above N are being replaced" (`chain_reorgs`) in the transaction that forgets them
//! ([`Chain::transfers_since`]). From then on, the record — not the pass that found it —
//! carries the reorganisation: [`settle`] (run by every watcher pass, in any process,
//! after scanning, whether the scan went through or not) checks everything completed
//! above N against the new chain and deletes the record only once all of it was checked
//! — and not before [`RECHECK_FOR`] has passed since it was written, so that a credit
//! another watcher decided on what it read before the reorganisation, and committed after
//! a check, is checked too. A node error, a database error or a process dying at any
//! step leaves the record for the next pass.
//!
//! - A credited deposit whose transaction the chain no longer has is flagged `REORGED`
//!   (reason, `wallet_deposits_reorged_total`, an error log). The credit stands until an
//!   operator reverses it ([`crate::ledger::reversal`]), or the transaction is mined again.
//! - A completed withdrawal sent through a node whose transaction (none of its attempts)
//!   the chain no longer has is flagged `REORGED` the same way
//!   (`wallet_withdrawals_reorged_total`) and sent again at once from its stored bytes:
//!   its nonce must be used again, or every later withdrawal of the address would wait
//!   behind it. [`follow_withdrawals`] keeps sending it every pass until it is mined,
//!   and sets it `COMPLETED` again at the confirmation threshold. Its debit stands
//!   meanwhile (the amount is still on its way out); if the chain charged another fee
//!   this time (or mined another of its attempts), that debit is reversed and the
//!   withdrawal debited again with what the chain charged, so that the wallet holds what
//!   its address holds.
//!
//! [`Chain::transfers_since`]: crate::chain::Chain::transfers_since

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use crate::chain::deposit::{off_chain, update_hold};
use crate::chain::{Chain, ChainTransfer, SignedTransfer, TransferStatus};
use crate::chain::{deposit_names, node_withdrawal};
use crate::ledger::store::{self, Annotation, ChainFields, NewRow};
use crate::ledger::{
    CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionStatus, TransactionType,
};
use crate::schema::{chain_reorgs, transactions, withdrawal_attempts};

/// How long after a reorganisation was found what was completed above it is checked again
/// every pass: longer than a watcher's pass takes from reading the chain to committing
/// what it read (bounded by the database's statement and lock timeouts).
pub const RECHECK_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`settle`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Reorganisation records followed to the end and old enough (deleted).
    pub records: usize,
    /// Credited deposits flagged REORGED.
    pub deposits: usize,
    /// Completed withdrawals flagged REORGED (and sent again).
    pub withdrawals: usize,
}

/// Follows every recorded reorganisation of `network` on `backend` to the end: checks
/// what was completed above the lowest replaced block against the chain now, flags what
/// is gone, then deletes the records it followed. Any failure leaves them.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    network: &str,
    backend: &str,
) -> Result<Settled, LedgerError> {
    let records: Vec<(i64, i64)> = chain_reorgs::table
        .filter(chain_reorgs::network.eq(network))
        .filter(chain_reorgs::backend.eq(backend))
        .order(chain_reorgs::id)
        .select((chain_reorgs::id, chain_reorgs::above))
        .load(conn)
        .await?;
    let Some(above) = records.iter().map(|(_, above)| *above).min() else {
        return Ok(Settled::default());
    };
    let deposits = flag_deposits(conn, chain, network, above).await?;
    let withdrawals = flag_withdrawals(conn, chain, network, above).await?;
    // Only the records followed here (one written meanwhile is followed next time), once
    // they are old enough.
    let ids: Vec<i64> = records.iter().map(|(id, _)| *id).collect();
    let recheck_ms = i64::try_from(RECHECK_FOR.as_millis()).unwrap_or(i64::MAX);
    let records = diesel::delete(
        chain_reorgs::table
            .filter(chain_reorgs::id.eq_any(&ids))
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("chain_reorgs.recorded_at < now() - ")
                    .bind::<diesel::sql_types::BigInt, _>(recheck_ms)
                    .sql(" * interval '1 millisecond'"),
            ),
    )
    .execute(conn)
    .await?;
    Ok(Settled {
        records,
        deposits,
        withdrawals,
    })
}

/// Holds completed in a block above `above` on `network`, of `kind`.
async fn completed_above(
    conn: &mut AsyncPgConnection,
    network: &str,
    kind: TransactionType,
    above: i64,
) -> Result<Vec<JournalEntry>, LedgerError> {
    // Spelled as the partial indexes that serve it.
    let predicate = match kind {
        TransactionType::Withdraw => {
            "transactions.hold AND transactions.type = 'WITHDRAW' \
             AND transactions.status = 'COMPLETED'"
        }
        _ => {
            "transactions.hold AND transactions.type = 'DEPOSIT' \
             AND transactions.status = 'COMPLETED'"
        }
    };
    Ok(transactions::table
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(predicate))
        .filter(transactions::network.eq(network))
        .filter(transactions::block_number.gt(above))
        .order(transactions::id)
        .select(JournalEntry::as_select())
        .load(conn)
        .await?)
}

/// The hold `id` read again under its wallet's lock (every writer of a chain movement
/// takes it), if it still has `status`.
async fn relocked(
    tx: &mut AsyncPgConnection,
    hold: &JournalEntry,
    status: TransactionStatus,
) -> Result<Option<JournalEntry>, LedgerError> {
    store::lock_wallet(tx, &Scope::All, hold.wallet_id).await?;
    let hold: JournalEntry = transactions::table
        .find(hold.id)
        .select(JournalEntry::as_select())
        .first(tx)
        .await?;
    Ok((hold.status == status).then_some(hold))
}

/// Flags each credited deposit above `above` whose transfer the chain no longer has.
async fn flag_deposits(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    network: &str,
    above: i64,
) -> Result<usize, LedgerError> {
    let mut flagged = 0;
    for hold in completed_above(conn, network, TransactionType::Deposit, above).await? {
        if let Some(name) = deposit_names::current_name(conn, chain, network, &hold).await?
            && chain
                .transfer(network, &name)
                .await?
                .is_some_and(|t| t.block_number.is_some())
        {
            continue;
        }
        flagged += usize::from(store::retried!(conn, |tx| {
            let Some(hold) = relocked(tx, &hold, TransactionStatus::Completed).await? else {
                return Ok(false);
            };
            let reason = format!(
                "reorged: a reorganisation deeper than {} confirmations took its transaction \
                 out of block {} after it was credited; the credit stands until an operator \
                 reverses it, or the transaction is mined again",
                hold.required_confirmations.unwrap_or(0),
                hold.block_number.unwrap_or(0)
            );
            tracing::error!(
                hash = hold.tx_hash,
                network,
                "a credited deposit left the chain: flagged"
            );
            metrics::counter!("wallet_deposits_reorged_total", "network" => network.to_owned())
                .increment(1);
            update_hold(
                tx,
                &hold,
                TransactionStatus::Reorged,
                &off_chain(),
                Some(&reason),
            )
            .await?;
            Ok(true)
        })?);
    }
    Ok(flagged)
}

/// The signed attempts of a withdrawal: (hash, raw bytes), newest first.
async fn attempts(
    conn: &mut AsyncPgConnection,
    hold_id: i64,
) -> Result<Vec<(String, String)>, LedgerError> {
    Ok(withdrawal_attempts::table
        .filter(withdrawal_attempts::transaction_id.eq(hold_id))
        .order(withdrawal_attempts::id.desc())
        .select((withdrawal_attempts::hash, withdrawal_attempts::raw))
        .load(conn)
        .await?)
}

/// The attempt of a withdrawal the canonical chain includes, if any (its attempts share a
/// nonce: at most one is), and whether the node knows any of them.
async fn mined_attempt(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    network: &str,
    hold_id: i64,
) -> Result<(Option<(String, String, ChainTransfer)>, bool), LedgerError> {
    let mut known = false;
    for (hash, raw) in attempts(conn, hold_id).await? {
        let Some(found) = chain.transfer(network, &hash).await? else {
            continue;
        };
        known = true;
        if found.block_number.is_some() {
            return Ok((Some((hash, raw, found)), true));
        }
    }
    Ok((None, known))
}

/// Sends the withdrawal's stored bytes again (best effort: the next pass tries again).
async fn send_again(chain: &dyn Chain, network: &str, hold: &JournalEntry) {
    let (Some(hash), Some(raw)) = (hold.chain_tx_hash.clone(), hold.raw.clone()) else {
        return;
    };
    let stored = SignedTransfer {
        network: network.to_owned(),
        hash,
        from_address: hold.from_address.clone().unwrap_or_default(),
        to_address: hold.to_address.clone().unwrap_or_default(),
        amount: hold.amount,
        fee: Default::default(),
        raw,
    };
    match chain.broadcast(&stored).await {
        Ok(_) => {
            metrics::counter!("wallet_withdrawal_rebroadcasts_total", "network" => network.to_owned())
                .increment(1);
        }
        Err(e) => tracing::warn!(
            id = hold.id,
            hash = stored.hash,
            error = %e,
            "a withdrawal a reorganisation removed could not be sent again; tried again \
             next pass"
        ),
    }
}

/// Flags each completed withdrawal through a node above `above` whose transaction the
/// chain no longer has, and sends it again.
async fn flag_withdrawals(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    network: &str,
    above: i64,
) -> Result<usize, LedgerError> {
    let mut flagged = 0;
    for hold in completed_above(conn, network, TransactionType::Withdraw, above).await? {
        let (mined, _) = mined_attempt(conn, chain, network, hold.id).await?;
        if mined.is_some() || attempts(conn, hold.id).await?.is_empty() {
            continue;
        }
        let done = store::retried!(conn, |tx| {
            let Some(hold) = relocked(tx, &hold, TransactionStatus::Completed).await? else {
                return Ok(None);
            };
            let reason = format!(
                "reorged: a reorganisation deeper than {} confirmations took its transaction \
                 out of block {} after it was debited; sent again from its stored bytes, and \
                 completed again once it is mined again",
                hold.required_confirmations.unwrap_or(0),
                hold.block_number.unwrap_or(0)
            );
            tracing::error!(
                id = hold.id,
                hash = hold.chain_tx_hash,
                network,
                "a completed withdrawal left the chain: flagged, and sent again"
            );
            metrics::counter!("wallet_withdrawals_reorged_total", "network" => network.to_owned())
                .increment(1);
            Ok(Some(
                update_hold(
                    tx,
                    &hold,
                    TransactionStatus::Reorged,
                    &off_chain(),
                    Some(&reason),
                )
                .await?,
            ))
        })?;
        if let Some(hold) = done {
            flagged += 1;
            send_again(chain, network, &hold).await;
        }
    }
    Ok(flagged)
}

/// Follows every REORGED withdrawal of `network` (sent through a node): sent again from
/// its stored bytes while the node does not know it; once one of its attempts is mined
/// with the confirmations, `COMPLETED` again — and if the chain charged another fee this
/// time (or another attempt was mined), its debit is reversed and it is debited again
/// with what the chain charged, so that the wallet holds what its address holds
/// (`FAILED`, with the amount refunded, if it reverted this time). Returns how many
/// withdrawals it settled.
pub async fn follow_withdrawals(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    chain: &dyn Chain,
    network: &str,
) -> Result<usize, LedgerError> {
    let reorged: Vec<JournalEntry> = transactions::table
        // Spelled as the partial index that serves it.
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "transactions.hold AND transactions.status = 'REORGED'",
        ))
        .filter(transactions::type_.eq(TransactionType::Withdraw))
        .filter(transactions::network.eq(network))
        .order(transactions::id)
        .select(JournalEntry::as_select())
        .load(conn)
        .await?;
    let mut settled = 0;
    for hold in reorged {
        let (mined, known) = mined_attempt(conn, chain, network, hold.id).await?;
        let Some((hash, raw, found)) = mined else {
            if !known {
                send_again(chain, network, &hold).await;
            }
            continue;
        };
        let mined = Mined {
            hash: &hash,
            raw: &raw,
            found: &found,
        };
        settled += usize::from(store::retried!(conn, |tx| {
            settle_again(tx, currencies, &hold, &mined).await
        })?);
    }
    Ok(settled)
}

/// The attempt of a REORGED withdrawal the chain includes now.
struct Mined<'a> {
    hash: &'a str,
    raw: &'a str,
    found: &'a ChainTransfer,
}

/// Records `mined` for a REORGED withdrawal: its confirmations, and at the threshold what
/// the chain charged this time.
async fn settle_again(
    tx: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    hold: &JournalEntry,
    mined: &Mined<'_>,
) -> Result<bool, LedgerError> {
    let Some(hold) = relocked(tx, hold, TransactionStatus::Reorged).await? else {
        return Ok(false);
    };
    let found = mined.found;
    let fields = ChainFields {
        network: hold.network.clone().unwrap_or_default(),
        from_address: hold.from_address.clone().unwrap_or_default(),
        to_address: hold.to_address.clone().unwrap_or_default(),
        chain_tx_hash: Some(mined.hash.to_owned()),
        confirmations: i32::try_from(found.confirmations).unwrap_or(i32::MAX),
        required_confirmations: hold.required_confirmations.unwrap_or(1),
        block_number: found.block_number,
        gas_price: found.gas_price,
        gas_used: found.gas_used,
        raw: Some(mined.raw.to_owned()),
    };
    // The attempt the chain included now is the one the hold names.
    if hold.chain_tx_hash.as_deref() != Some(mined.hash) {
        diesel::update(transactions::table.find(hold.id))
            .set((
                transactions::chain_tx_hash.eq(mined.hash),
                transactions::raw.eq(mined.raw),
            ))
            .execute(tx)
            .await?;
    }
    if fields.confirmations < fields.required_confirmations {
        if hold.confirmations != Some(fields.confirmations)
            || hold.block_number != fields.block_number
        {
            update_hold(tx, &hold, TransactionStatus::Reorged, &fields, None).await?;
        }
        return Ok(false);
    }
    let wallet = store::lock_wallet(tx, &Scope::All, hold.wallet_id).await?;
    let pays: bool = diesel::select(diesel::dsl::exists(
        withdrawal_attempts::table
            .filter(withdrawal_attempts::transaction_id.eq(hold.id))
            .filter(withdrawal_attempts::locked_fee.gt(Decimal::ZERO)),
    ))
    .get_result(tx)
    .await?;
    let (fee, network_fee) =
        node_withdrawal::debit_fees(currencies, &wallet, &hold, pays, found.fee);
    let reverted = found.status == TransferStatus::Failed;
    let debit = standing_debit(tx, hold.id).await?;
    // The debit says what was charged, and for which transaction: the fees, and the gas
    // recorded on it (a token's gas is booked in the network's coin from those).
    let as_debited = debit.as_ref().is_some_and(|d| {
        d.fee == fee
            && d.network_fee == Some(network_fee)
            && d.chain_tx_hash.as_deref() == Some(mined.hash)
            && d.gas_price == found.gas_price
            && d.gas_used == found.gas_used
    });
    let mut reason = if reverted {
        "reverted on chain when it was mined again after a reorganisation had removed it: \
         the network fee was paid, the amount was refunded"
            .to_owned()
    } else {
        "mined again after a reorganisation had removed it".to_owned()
    };
    if !as_debited || reverted {
        let scale = hold.amount.scale();
        // What the wallet's balance becomes: the first debit undone, the chain's charge
        // (and, if it reverted, the amount back).
        let undone = debit.as_ref().map_or(Decimal::ZERO, |d| d.amount + d.fee);
        let refunded = if reverted { hold.amount } else { Decimal::ZERO };
        let after = wallet.balance + undone - (hold.amount + fee) + refunded;
        if after < wallet.locked_balance {
            // Rare (a higher fee, spent funds): the first debit stays, and says so.
            tracing::error!(
                id = hold.id,
                charged = %fee,
                "a withdrawal mined again was charged more than debited, and its wallet \
                 cannot pay the difference: left as debited"
            );
            reason = format!(
                "{reason}; the chain charged {fee} this time, more than debited, and the \
                 wallet could not pay the difference"
            );
        } else {
            let annotation = Annotation {
                reference: hold.reference.as_deref(),
                metadata: hold.metadata.as_ref(),
            };
            let mut wallet = wallet;
            if let Some(d) = &debit {
                let undo = NewRow {
                    kind: TransactionType::Reversal,
                    amount: d.amount,
                    fee: d.fee,
                    status: TransactionStatus::Completed,
                    key: &hold.tx_hash,
                    description: Some(
                        "debited again: a reorganisation removed the withdrawal, and the chain \
                         charged what the new debit says when it was mined again",
                    ),
                    hold: false,
                    settles: Some(hold.id),
                    chain: None,
                    scale,
                    network_fee: None,
                    annotation: Default::default(),
                    reverses: Some((d.id, d.balance_change())),
                    settles_hold: None,
                };
                wallet.balance = store::append(tx, &wallet, &undo, Decimal::ZERO)
                    .await?
                    .balance_after;
            }
            let again = NewRow {
                kind: TransactionType::Withdraw,
                amount: hold.amount,
                fee,
                status: TransactionStatus::Completed,
                key: &hold.tx_hash,
                description: None,
                hold: false,
                settles: Some(hold.id),
                chain: Some(&fields),
                scale,
                network_fee: Some(network_fee),
                annotation,
                reverses: None,
                settles_hold: None,
            };
            wallet.balance = store::append(tx, &wallet, &again, Decimal::ZERO)
                .await?
                .balance_after;
            if reverted {
                let refund = NewRow {
                    kind: TransactionType::Refund,
                    fee: Decimal::ZERO,
                    network_fee: Some(Decimal::ZERO),
                    description: Some(&reason),
                    ..again
                };
                store::append(tx, &wallet, &refund, Decimal::ZERO).await?;
            }
        }
    }
    tracing::info!(
        id = hold.id,
        hash = mined.hash,
        "a withdrawal a reorganisation removed is mined again"
    );
    let status = if reverted {
        TransactionStatus::Failed
    } else {
        TransactionStatus::Completed
    };
    update_hold(tx, &hold, status, &fields, Some(&reason)).await?;
    Ok(true)
}

/// A withdrawal's debit that stands: its newest, unless it was reversed.
async fn standing_debit(
    tx: &mut AsyncPgConnection,
    hold_id: i64,
) -> Result<Option<JournalEntry>, LedgerError> {
    let Some(debit) = store::settlements_of(tx, &[hold_id])
        .await?
        .into_iter()
        .rev()
        .find(|p| p.kind == TransactionType::Withdraw)
    else {
        return Ok(None);
    };
    let reversed = !crate::ledger::reversal::reversals_of(tx, &[debit.id])
        .await?
        .is_empty();
    Ok((!reversed).then_some(debit))
}
