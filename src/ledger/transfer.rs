//! Transfers between wallets of the same currency: a `TRANSFER_OUT` row on the source and a
//! `TRANSFER_IN` row on the target, each with its own balances, in one database
//! transaction. The pair is one double-entry entry (it sums to zero by itself).
//!
//! Both wallets are locked in id order — the order every movement locks in — so transfers
//! A→B and B→A racing each other never deadlock. The key belongs to the source wallet,
//! like any other movement's: the same request again returns the original transfer.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::movement;
use super::posting::{self, Annotation, NewRow};
use super::{
    CurrencyKind, CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionType, Wallet,
    input, money,
};
use crate::schema::transactions;

/// A transfer a caller asks for.
#[derive(Clone, Debug)]
pub struct TransferRequest {
    pub from_wallet_id: i64,
    pub to_wallet_id: i64,
    pub amount: Decimal,
    pub key: String,
    pub description: Option<String>,
    /// The client's business reference and metadata, on both sides.
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl TransferRequest {
    pub(crate) fn annotation(&self) -> Annotation<'_> {
        Annotation {
            reference: self.reference.as_deref(),
            metadata: self.metadata.as_ref(),
        }
    }
}

/// Both sides of a transfer, and whether an earlier call with the same key made it.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub out: JournalEntry,
    pub into: JournalEntry,
    pub replayed: bool,
}

/// Moves `amount` from one wallet to another, exactly once per key of the source wallet.
/// The source must be visible to the caller (`scope`); the target may be anyone's.
pub async fn execute(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &TransferRequest,
) -> Result<Transfer, LedgerError> {
    validate_shape(request)?;
    posting::retried!(conn, |tx| { apply(tx, currencies, scope, request).await })
}

/// Checks that need no database: a request that passes them cannot fail a batch.
pub(crate) fn validate_shape(request: &TransferRequest) -> Result<(), LedgerError> {
    input::check_movement(
        "idempotencyKey",
        &request.key,
        request.description.as_deref(),
        request.amount,
    )?;
    input::check_annotation(request.reference.as_deref(), request.metadata.as_ref())?;
    if request.from_wallet_id == request.to_wallet_id {
        return Err(LedgerError::BadInput(
            "a transfer needs two different wallets".into(),
        ));
    }
    Ok(())
}

async fn apply(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &TransferRequest,
) -> Result<Transfer, LedgerError> {
    // The source as the caller may see it; the target anyone's.
    let (from, to) = posting::lock_two(
        conn,
        (request.from_wallet_id, scope),
        (request.to_wallet_id, &Scope::All),
    )
    .await?;

    // Read after the locks: an identical request that committed meanwhile is seen.
    if let Some(out) = posting::find_by_key(conn, from.id, &request.key).await? {
        let into = match same_sending_side(&out, request) {
            true => receiving_side(conn, out.id).await?,
            false => None,
        };
        return replay(out, into, request);
    }

    let (out_row, in_row) = journal_rows(currencies, &from, &to, request)?;
    let (out, into) = posting::append_transfer(conn, (&from, &out_row), (&to, &in_row)).await?;
    Ok(Transfer {
        out,
        into,
        replayed: false,
    })
}

/// Whether `out` is the sending side `request` would have written (its receiving side's
/// wallet is checked by [`replay`]).
pub(crate) fn same_sending_side(out: &JournalEntry, request: &TransferRequest) -> bool {
    out.kind == TransactionType::TransferOut
        && out.amount == request.amount
        && out.description == request.description
        && request.annotation().matches(out)
}

/// The answer to a request whose key names `out` on the source wallet: the original
/// transfer if it is the same request to the same wallet, a conflict otherwise.
pub(crate) fn replay(
    out: JournalEntry,
    into: Option<JournalEntry>,
    request: &TransferRequest,
) -> Result<Transfer, LedgerError> {
    match into {
        Some(into)
            if same_sending_side(&out, request) && into.wallet_id == request.to_wallet_id =>
        {
            Ok(Transfer {
                out,
                into,
                replayed: true,
            })
        }
        _ => Err(movement::key_conflict("idempotencyKey", &request.key)),
    }
}

/// The two rows `request` appends to the locked `from` and `to` (holding their current
/// balances), or why it is refused: currencies, amount, funds.
pub(crate) fn journal_rows<'r>(
    currencies: &CurrencyRegistry,
    from: &Wallet,
    to: &Wallet,
    request: &'r TransferRequest,
) -> Result<(NewRow<'r>, NewRow<'r>), LedgerError> {
    if from.currency != to.currency {
        return Err(LedgerError::CurrencyMismatch(format!(
            "the source wallet holds {} and the target {}",
            from.currency, to.currency
        )));
    }
    let currency = currencies
        .get(&from.currency)
        .ok_or_else(|| LedgerError::CurrencyNotSupported(from.currency.clone()))?;
    if currency.kind == CurrencyKind::Crypto {
        // Withdrawals are signed from each wallet's own address: a book transfer would
        // leave the receiver with a balance its address cannot pay out.
        return Err(LedgerError::CurrencyNotSupported(format!(
            "transfers of {} between wallets are not supported",
            currency.code
        )));
    }
    let amount = money::validate_amount(request.amount, currency)?;
    money::check_funds(from, amount)?;
    money::check_credit(to, amount, currency)?;
    let side = |kind| {
        let mut row = NewRow::fiat(
            kind,
            amount,
            &request.key,
            request.description.as_deref(),
            currency.scale(),
        );
        row.annotation = request.annotation();
        row
    };
    Ok((
        side(TransactionType::TransferOut),
        side(TransactionType::TransferIn),
    ))
}

/// The receiving side of the transfer whose sending side is `out_id`.
pub async fn receiving_side(
    conn: &mut AsyncPgConnection,
    out_id: i64,
) -> Result<Option<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::counterpart_id.eq(out_id))
        .select(JournalEntry::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The receiving sides of the transfers whose sending sides are `out_ids`.
pub async fn receiving_sides(
    conn: &mut AsyncPgConnection,
    out_ids: &[i64],
) -> Result<Vec<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::counterpart_id.eq_any(out_ids))
        .filter(transactions::type_.eq(TransactionType::TransferIn))
        .select(JournalEntry::as_select())
        .load(conn)
        .await?)
}
