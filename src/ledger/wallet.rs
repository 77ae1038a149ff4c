//! Wallets: one per user and currency.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::models::Scaled;
use super::page::paginate;
use super::{CurrencyKind, CurrencyRegistry, LedgerError, Page, PageArgs, Scope, Wallet, money};
use crate::schema::wallets;
use rust_decimal::Decimal;

/// Returns the caller's wallet in `currency`, creating it on first use. Creating it again
/// (also concurrently) returns the same wallet; `created` says whether this call made it.
pub async fn create_wallet(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    user_id: &str,
    currency: &str,
) -> Result<(Wallet, bool), LedgerError> {
    if user_id.is_empty() || user_id.len() > 128 {
        return Err(LedgerError::BadInput(
            "userId must be 1 to 128 characters".into(),
        ));
    }
    let Some(cur) = currencies.get(currency).filter(|c| c.enabled) else {
        return Err(LedgerError::CurrencyNotSupported(format!(
            "currency {currency:?} is not supported"
        )));
    };
    if cur.kind != CurrencyKind::Fiat {
        return Err(LedgerError::CurrencyNotSupported(format!(
            "{} wallets are not available yet",
            cur.code
        )));
    }
    // Zero written at the currency's scale, so balances always read "0.00" for USD.
    let zero = money::at_scale(Decimal::ZERO, cur);
    let inserted: Option<Wallet> = diesel::insert_into(wallets::table)
        .values((
            wallets::user_id.eq(user_id),
            wallets::currency.eq(&cur.code),
            wallets::balance.eq(Scaled(zero)),
            wallets::locked_balance.eq(Scaled(zero)),
        ))
        .on_conflict((wallets::user_id, wallets::currency))
        .do_nothing()
        .returning(Wallet::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(w) = inserted {
        return Ok((w, true));
    }
    // Someone (maybe a concurrent call) made it first; ON CONFLICT waited for them.
    let existing = wallets::table
        .filter(wallets::user_id.eq(user_id))
        .filter(wallets::currency.eq(&cur.code))
        .select(Wallet::as_select())
        .first(conn)
        .await?;
    Ok((existing, false))
}

/// A wallet the caller may see.
pub async fn find_wallet(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    id: i64,
) -> Result<Wallet, LedgerError> {
    let mut q = wallets::table.filter(wallets::id.eq(id)).into_boxed();
    if let Some(owner) = scope.owner() {
        q = q.filter(wallets::user_id.eq(owner.to_owned()));
    }
    q.select(Wallet::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("wallet"))
}

/// Wallets by id, unscoped: for loading the wallet of rows the caller was already
/// allowed to see.
pub async fn wallets_by_ids(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<Vec<Wallet>, LedgerError> {
    Ok(wallets::table
        .filter(wallets::id.eq_any(ids))
        .select(Wallet::as_select())
        .load(conn)
        .await?)
}

#[derive(Clone, Debug, Default)]
pub struct WalletFilter {
    pub user_id: Option<String>,
    pub currency: Option<String>,
}

/// A page of the wallets visible to the caller, oldest first.
pub async fn list_wallets(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    filter: &WalletFilter,
    page: &PageArgs,
) -> Result<Page<Wallet>, LedgerError> {
    let mut q = wallets::table.select(Wallet::as_select()).into_boxed();
    if let Some(owner) = scope.owner() {
        q = q.filter(wallets::user_id.eq(owner.to_owned()));
    }
    if let Some(user) = &filter.user_id {
        q = q.filter(wallets::user_id.eq(user.clone()));
    }
    if let Some(cur) = &filter.currency {
        q = q.filter(wallets::currency.eq(cur.clone()));
    }
    let rows = paginate!(q, page, wallets).load(conn).await?;
    Ok(page.finish(rows))
}
