//! Fiat money movements: deposits (credits reported by the payment back office) and
//! withdrawals (debits). Each is one database transaction that locks the wallet row,
//! honours the idempotency key, updates the balance and appends the journal row.

use diesel_async::AsyncPgConnection;
use rust_decimal::Decimal;

use super::posting::{self, Annotation, NewRow};
use super::{
    CurrencyKind, CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionType, Wallet,
    input, money,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Deposit,
    Withdraw,
}

impl Direction {
    pub(crate) fn transaction_type(self) -> TransactionType {
        match self {
            Direction::Deposit => TransactionType::Deposit,
            Direction::Withdraw => TransactionType::Withdraw,
        }
    }
}

/// A request to move money into or out of a fiat wallet.
#[derive(Clone, Debug)]
pub struct MovementRequest {
    pub wallet_id: i64,
    pub direction: Direction,
    pub amount: Decimal,
    /// The client's idempotency key (`idempotencyKey`).
    pub key: String,
    pub description: Option<String>,
    /// The client's business reference and metadata.
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl MovementRequest {
    pub(crate) fn annotation(&self) -> Annotation<'_> {
        Annotation {
            reference: self.reference.as_deref(),
            metadata: self.metadata.as_ref(),
        }
    }
}

/// The journal row a request produced, and whether it was produced by an earlier call
/// with the same key (a replay has no second effect).
#[derive(Clone, Debug)]
pub struct Movement {
    pub entry: JournalEntry,
    pub replayed: bool,
}

/// Applies a movement exactly once per idempotency key. Runs in its own transaction,
/// retried when Postgres reports a transient failure or a concurrent use of the same key.
pub async fn execute(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &MovementRequest,
) -> Result<Movement, LedgerError> {
    validate_shape(request)?;
    posting::retried!(conn, |tx| { apply(tx, currencies, scope, request).await })
}

/// Checks that need no database: a request that passes them cannot fail a batch.
pub(crate) fn validate_shape(request: &MovementRequest) -> Result<(), LedgerError> {
    input::check_movement(
        "idempotencyKey",
        &request.key,
        request.description.as_deref(),
        request.amount,
    )?;
    input::check_annotation(request.reference.as_deref(), request.metadata.as_ref())
}

async fn apply(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &MovementRequest,
) -> Result<Movement, LedgerError> {
    // The row lock orders every movement of this wallet.
    let wallet = posting::lock_wallet(conn, scope, request.wallet_id).await?;

    // Read after the lock: a request with the same key that committed while we waited
    // is visible now.
    if let Some(existing) = posting::find_by_key(conn, wallet.id, &request.key).await? {
        return replay(existing, request);
    }

    let row = journal_row(currencies, &wallet, request)?;
    let entry = posting::append(conn, &wallet, &row, Decimal::ZERO).await?;
    Ok(Movement {
        entry,
        replayed: false,
    })
}

/// The row `request` appends to `wallet` (locked, holding its current balance), or why it
/// is refused: currency, amount, funds.
pub(crate) fn journal_row<'r>(
    currencies: &CurrencyRegistry,
    wallet: &Wallet,
    request: &'r MovementRequest,
) -> Result<NewRow<'r>, LedgerError> {
    // Crypto moves only with a chain transfer behind it (processCryptoDeposit,
    // cryptoWithdraw).
    let currency = currencies
        .get(&wallet.currency)
        .filter(|c| c.kind == CurrencyKind::Fiat)
        .ok_or_else(|| {
            LedgerError::CurrencyNotSupported(format!(
                "{} wallets are not moved with deposit/withdraw",
                wallet.currency
            ))
        })?;
    let amount = money::validate_amount(request.amount, currency)?;
    let mut fee = Decimal::ZERO;
    match request.direction {
        Direction::Deposit => money::check_credit(wallet, amount, currency)?,
        Direction::Withdraw => {
            // A configured withdrawal fee is paid on top, to fee revenue.
            fee = currencies
                .withdrawal_fee(&currency.code)
                .unwrap_or_default();
            money::check_funds(wallet, amount + fee)?;
        }
    }
    let mut row = NewRow::fiat(
        request.direction.transaction_type(),
        amount,
        &request.key,
        request.description.as_deref(),
        currency.scale(),
    );
    row.fee = fee;
    row.annotation = request.annotation();
    Ok(row)
}

/// Same key: the same request gets the original result; anything else is a conflict.
fn replay(existing: JournalEntry, request: &MovementRequest) -> Result<Movement, LedgerError> {
    let same = same_request(&existing, request);
    replay_or_conflict(existing, same, "idempotencyKey", &request.key)
}

/// The answer to a request whose key (`key_field` in the API) already names `existing`:
/// the original when `same` (the request is what wrote it), a conflict otherwise.
pub(crate) fn replay_or_conflict(
    existing: JournalEntry,
    same: bool,
    key_field: &str,
    key: &str,
) -> Result<Movement, LedgerError> {
    if same {
        Ok(Movement {
            entry: existing,
            replayed: true,
        })
    } else {
        Err(key_conflict(key_field, key))
    }
}

/// Whether `existing` is what `request` would have written.
pub(crate) fn same_request(existing: &JournalEntry, request: &MovementRequest) -> bool {
    existing.wallet_id == request.wallet_id
        && existing.kind == request.direction.transaction_type()
        && existing.amount == request.amount
        && existing.description == request.description
        && request.annotation().matches(existing)
}

/// A key (`key_field` in the API) already used on the wallet for another request.
pub(crate) fn key_conflict(key_field: &str, key: &str) -> LedgerError {
    LedgerError::IdempotencyConflict(format!(
        "{key_field} {key:?} was already used for a different request"
    ))
}
