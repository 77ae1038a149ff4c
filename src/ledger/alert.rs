//! Balance alerts: thresholds on a wallet's available balance that fire a `BALANCE_ALERT`
//! event once per crossing (the database trigger on wallets compares each committed change
//! with the state before it; see the migration that creates `balance_alerts`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::{LedgerError, Scope, wallet};
use crate::schema::balance_alerts;

/// Alerts one wallet may have.
pub const MAX_PER_WALLET: i64 = 20;

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = balance_alerts, check_for_backend(diesel::pg::Pg))]
pub struct BalanceAlert {
    pub id: i64,
    pub wallet_id: i64,
    /// Fires when the available balance falls from at or above this to under it.
    pub below: Option<Decimal>,
    /// Fires when the available balance rises from at or under this to over it.
    pub above: Option<Decimal>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Sets an alert on a wallet the caller can see. Thresholds are amounts of the wallet's
/// currency (at most its decimals); at least one is given.
pub async fn create(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    wallet_id: i64,
    below: Option<Decimal>,
    above: Option<Decimal>,
    decimals: impl Fn(&str) -> Option<u32>,
    actor: &str,
) -> Result<BalanceAlert, LedgerError> {
    let wallet = wallet::find_wallet(conn, scope, wallet_id).await?;
    if below.is_none() && above.is_none() {
        return Err(LedgerError::BadInput("give below, above or both".into()));
    }
    let places = decimals(&wallet.currency).unwrap_or(18);
    for threshold in [below, above].into_iter().flatten() {
        if threshold.normalize().scale() > places {
            return Err(LedgerError::InvalidAmount(format!(
                "{threshold} has more than {places} decimals for {}",
                wallet.currency
            )));
        }
    }
    if let (Some(b), Some(a)) = (below, above)
        && b > a
    {
        return Err(LedgerError::BadInput("below must not exceed above".into()));
    }
    let count: i64 = balance_alerts::table
        .filter(balance_alerts::wallet_id.eq(wallet_id))
        .filter(balance_alerts::deleted_at.is_null())
        .count()
        .get_result(conn)
        .await?;
    if count >= MAX_PER_WALLET {
        return Err(LedgerError::BadInput(format!(
            "a wallet may have at most {MAX_PER_WALLET} alerts"
        )));
    }
    Ok(diesel::insert_into(balance_alerts::table)
        .values((
            balance_alerts::wallet_id.eq(wallet_id),
            balance_alerts::below.eq(below),
            balance_alerts::above.eq(above),
            balance_alerts::created_by.eq(actor),
        ))
        .returning(BalanceAlert::as_returning())
        .get_result(conn)
        .await?)
}

/// Removes an alert (it fires no more; its past events stay).
pub async fn delete(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    id: i64,
) -> Result<BalanceAlert, LedgerError> {
    let alert = get(conn, id).await?;
    wallet::find_wallet(conn, scope, alert.wallet_id)
        .await
        .map_err(|_| LedgerError::NotFound("BalanceAlert"))?;
    Ok(diesel::update(balance_alerts::table.find(id))
        .set(balance_alerts::deleted_at.eq(Some(Utc::now())))
        .returning(BalanceAlert::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn get(conn: &mut AsyncPgConnection, id: i64) -> Result<BalanceAlert, LedgerError> {
    balance_alerts::table
        .find(id)
        .filter(balance_alerts::deleted_at.is_null())
        .select(BalanceAlert::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("BalanceAlert"))
}

/// A wallet's alerts in force, oldest first.
pub async fn of_wallet(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
) -> Result<Vec<BalanceAlert>, LedgerError> {
    Ok(balance_alerts::table
        .filter(balance_alerts::wallet_id.eq(wallet_id))
        .filter(balance_alerts::deleted_at.is_null())
        .order(balance_alerts::id)
        .select(BalanceAlert::as_select())
        .load(conn)
        .await?)
}
