//! Credit limits: how far below zero an operator lets a fiat wallet's balance go. Every
//! change is appended to `credit_limit_changes` (who, when, the old and the new limit,
//! why) in the transaction that makes it, under the wallet's lock — so the limit every
//! debit is judged against is the one the history shows.
//!
//! Lowering a limit below what the wallet already uses is allowed: the balance stays,
//! new debits and authorisations are refused until the balance recovers, and holds made
//! before still settle.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::decide;
use crate::ledger::models::Scaled;
use crate::ledger::store;
use crate::ledger::{CurrencyRegistry, LedgerError, Page, PageArgs, Scope, Wallet, input};
use crate::schema::{credit_limit_changes, wallets};

/// `setCreditLimit`.
#[derive(Clone, Debug)]
pub struct CreditLimitRequest {
    pub wallet_id: i64,
    pub limit: Decimal,
    /// Scoped to the wallet.
    pub key: String,
    pub reason: String,
}

/// One change of a wallet's credit limit.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = credit_limit_changes, check_for_backend(diesel::pg::Pg))]
pub struct CreditLimitChange {
    pub id: i64,
    pub wallet_id: i64,
    pub previous_limit: Decimal,
    pub new_limit: Decimal,
    pub reason: String,
    pub changed_by: String,
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
}

/// Sets a fiat wallet's credit limit (operators: the caller checks) and records the
/// change; answers the wallet as it is then (a replay: as it is now).
pub async fn set_limit(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    actor: &str,
    request: &CreditLimitRequest,
) -> Result<Wallet, LedgerError> {
    input::check_key("idempotencyKey", &request.key)?;
    input::check_text("reason", &request.reason, input::MAX_DESCRIPTION_LEN)?;
    if request.reason.trim().is_empty() {
        return Err(LedgerError::BadInput(
            "a credit limit change needs a reason".into(),
        ));
    }
    if request.limit < Decimal::ZERO {
        return Err(LedgerError::InvalidAmount(format!(
            "a credit limit is zero or more, got {}",
            request.limit
        )));
    }
    store::retried!(conn, |tx| {
        let wallet = store::lock_wallet(tx, &Scope::All, request.wallet_id).await?;
        let existing: Option<CreditLimitChange> = credit_limit_changes::table
            .filter(credit_limit_changes::wallet_id.eq(wallet.id))
            .filter(credit_limit_changes::idempotency_key.eq(&request.key))
            .select(CreditLimitChange::as_select())
            .first(tx)
            .await
            .optional()?;
        let decided = decide::credit_limit(
            currencies,
            &wallet,
            existing.as_ref().map(|c| (c.new_limit, c.reason.as_str())),
            (request.limit, &request.reason, &request.key),
        )?;
        let Some(limit) = decided else {
            return Ok(wallet);
        };
        let previous = wallet.credit_limit;
        let wallet: Wallet = diesel::update(wallets::table.find(wallet.id))
            .set((
                wallets::credit_limit.eq(Scaled(limit)),
                wallets::updated_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                    "GREATEST(clock_timestamp(), updated_at)",
                )),
            ))
            .returning(Wallet::as_returning())
            .get_result(tx)
            .await?;
        diesel::insert_into(credit_limit_changes::table)
            .values((
                credit_limit_changes::wallet_id.eq(wallet.id),
                credit_limit_changes::previous_limit.eq(Scaled(previous)),
                credit_limit_changes::new_limit.eq(Scaled(limit)),
                credit_limit_changes::reason.eq(&request.reason),
                credit_limit_changes::changed_by.eq(actor),
                credit_limit_changes::idempotency_key.eq(&request.key),
                credit_limit_changes::created_at.eq(wallet.updated_at),
            ))
            .execute(tx)
            .await?;
        Ok(wallet)
    })
}

/// A page of a wallet's credit limit changes (the caller may see the wallet), oldest
/// first.
pub async fn changes(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    page: &PageArgs,
) -> Result<Page<CreditLimitChange>, LedgerError> {
    use crate::ledger::page::paginate;
    let q = credit_limit_changes::table
        .filter(credit_limit_changes::wallet_id.eq(wallet_id))
        .select(CreditLimitChange::as_select())
        .into_boxed();
    let rows: Vec<CreditLimitChange> = paginate!(q, page, credit_limit_changes).load(conn).await?;
    Ok(page.finish(rows))
}
