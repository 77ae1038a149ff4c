//! Fiat money movements: deposits (credits reported by the payment back office) and
//! withdrawals (debits). Each is one database transaction that locks the wallet row,
//! honours the idempotency key, updates the balance and appends the journal row.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::models::Scaled;
use super::{
    CurrencyKind, CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionStatus,
    TransactionType, Wallet, money,
};
use crate::db;
use crate::schema::{transactions, wallets};

/// Longest accepted idempotency key and description.
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_DESCRIPTION_LEN: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Deposit,
    Withdraw,
}

impl Direction {
    fn transaction_type(self) -> TransactionType {
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
    /// The client's idempotency key (`txHash`).
    pub key: String,
    pub description: Option<String>,
    /// Set for crypto movements (the chain transfer behind them); `None` for fiat.
    pub chain: Option<ChainDetails>,
}

/// What the journal records about the chain transfer behind a crypto movement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainDetails {
    pub network: String,
    pub from_address: String,
    pub to_address: String,
    pub confirmations: i32,
    pub required_confirmations: i32,
    pub block_number: Option<i64>,
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
    let mut attempt = 1;
    loop {
        let result = conn
            .transaction(async |tx| apply(tx, currencies, scope, request).await)
            .await;
        match result {
            Err(e) if attempt < db::MAX_ATTEMPTS && (e.is_transient() || is_key_race(&e)) => {
                tokio::time::sleep(db::retry_backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Checks that need no database.
fn validate_shape(request: &MovementRequest) -> Result<(), LedgerError> {
    if request.key.trim().is_empty() || request.key.len() > MAX_KEY_LEN {
        return Err(LedgerError::BadInput(format!(
            "txHash must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    if request
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN)
    {
        return Err(LedgerError::BadInput(format!(
            "description must be at most {MAX_DESCRIPTION_LEN} characters"
        )));
    }
    if request.amount <= Decimal::ZERO {
        return Err(LedgerError::InvalidAmount(format!(
            "the amount must be greater than zero, got {}",
            request.amount
        )));
    }
    Ok(())
}

/// Another transaction inserted the same key first (on another wallet, so the wallet lock
/// did not order us): the retry will find its row and judge the replay.
fn is_key_race(e: &LedgerError) -> bool {
    matches!(
        e,
        LedgerError::Database(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
            if info.constraint_name() == Some("transactions_tx_hash_key")
    )
}

async fn apply(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &MovementRequest,
) -> Result<Movement, LedgerError> {
    // The row lock orders every movement of this wallet; FOR NO KEY UPDATE because the
    // key columns do not change (journal inserts referencing the wallet are not blocked).
    let wallet: Wallet = wallets::table
        .find(request.wallet_id)
        .select(Wallet::as_select())
        .for_no_key_update()
        .first(conn)
        .await
        .optional()?
        .filter(|w| scope.owner().is_none_or(|owner| w.user_id == owner))
        .ok_or(LedgerError::NotFound("wallet"))?;

    // Read after the lock: a request with the same key that committed while we waited
    // is visible now.
    if let Some(existing) = find_by_key(conn, &request.key).await? {
        return replay(existing, request);
    }

    // Fiat moves by the fiat mutations, crypto only with a chain transfer behind it.
    let currency = currencies
        .get(&wallet.currency)
        .filter(|c| match &request.chain {
            None => c.kind == CurrencyKind::Fiat,
            Some(chain) => {
                c.kind == CurrencyKind::Crypto && c.network.as_deref() == Some(&chain.network)
            }
        })
        .ok_or_else(|| {
            LedgerError::CurrencyNotSupported(format!(
                "{} wallets are not moved with deposit/withdraw",
                wallet.currency
            ))
        })?;
    let amount = money::validate_amount(request.amount, currency)?;

    let kind = request.direction.transaction_type();
    let balance_before = wallet.balance;
    let balance_after = match request.direction {
        Direction::Deposit => {
            let after = balance_before + amount;
            if after > money::max_balance(currency) {
                return Err(LedgerError::InvalidAmount(format!(
                    "the deposit would take the balance above the maximum of {} {}",
                    money::max_balance(currency),
                    currency.code
                )));
            }
            after
        }
        Direction::Withdraw => {
            let available = wallet.available_balance();
            if amount > available {
                return Err(LedgerError::InsufficientFunds {
                    available,
                    requested: amount,
                });
            }
            balance_before - amount
        }
    };

    // Journal time never runs backwards within a wallet, even if the clock does, so that
    // ordering by (created_at, id) is the order in which the balance changed.
    let at: DateTime<Utc> = diesel::update(wallets::table.find(wallet.id))
        .set((
            wallets::balance.eq(Scaled(balance_after)),
            wallets::updated_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                "GREATEST(clock_timestamp(), updated_at)",
            )),
        ))
        .returning(wallets::updated_at)
        .get_result(conn)
        .await?;

    let entry = diesel::insert_into(transactions::table)
        .values((
            transactions::wallet_id.eq(wallet.id),
            transactions::type_.eq(kind),
            transactions::amount.eq(Scaled(amount)),
            transactions::balance_before.eq(Scaled(balance_before)),
            transactions::balance_after.eq(Scaled(balance_after)),
            transactions::status.eq(TransactionStatus::Completed),
            transactions::tx_hash.eq(&request.key),
            transactions::description.eq(&request.description),
            transactions::network.eq(request.chain.as_ref().map(|c| &c.network)),
            transactions::from_address.eq(request.chain.as_ref().map(|c| &c.from_address)),
            transactions::to_address.eq(request.chain.as_ref().map(|c| &c.to_address)),
            transactions::confirmations.eq(request.chain.as_ref().map(|c| c.confirmations)),
            transactions::required_confirmations
                .eq(request.chain.as_ref().map(|c| c.required_confirmations)),
            transactions::block_number.eq(request.chain.as_ref().and_then(|c| c.block_number)),
            transactions::created_at.eq(at),
            transactions::updated_at.eq(at),
        ))
        .returning(JournalEntry::as_returning())
        .get_result(conn)
        .await?;
    Ok(Movement {
        entry,
        replayed: false,
    })
}

async fn find_by_key(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> Result<Option<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::tx_hash.eq(key))
        .select(JournalEntry::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Same key: the same request gets the original result; anything else is a conflict.
fn replay(existing: JournalEntry, request: &MovementRequest) -> Result<Movement, LedgerError> {
    let same = existing.wallet_id == request.wallet_id
        && existing.kind == request.direction.transaction_type()
        && existing.amount == request.amount
        && existing.description == request.description;
    if same {
        Ok(Movement {
            entry: existing,
            replayed: true,
        })
    } else {
        Err(LedgerError::IdempotencyConflict(format!(
            "txHash {:?} was already used for a different request",
            request.key
        )))
    }
}
