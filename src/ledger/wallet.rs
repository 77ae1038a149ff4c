//! Wallets: one per user and currency.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::models::Scaled;
use super::page::paginate;
use super::{CurrencyKind, CurrencyRegistry, LedgerError, Page, PageArgs, Scope, Wallet, money};
use crate::custody::{Chain, Custody, Derived};
use crate::schema::{hd_indexes, wallets};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::AsyncConnection;
use rust_decimal::Decimal;

/// Returns the caller's wallet in `currency`, creating it on first use. Creating it again
/// (also concurrently) returns the same wallet; `created` says whether this call made it.
/// A crypto wallet gets the next address of its network derived from the custody seed.
pub async fn create_wallet(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    custody: &Custody,
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
    if let Some(existing) = find_own(conn, user_id, &cur.code).await? {
        return Ok((existing, false));
    }
    // Zero written at the currency's scale, so balances always read "0.00" for USD.
    let zero = money::at_scale(Decimal::ZERO, cur);
    let chain = match cur.kind {
        CurrencyKind::Fiat => None,
        CurrencyKind::Crypto => Some(
            cur.network
                .as_deref()
                .and_then(Chain::from_network)
                .ok_or_else(|| {
                    LedgerError::CurrencyNotSupported(format!(
                        "{} has no supported network",
                        cur.code
                    ))
                })?,
        ),
    };
    let created = conn
        .transaction(async |tx| {
            let derived = match chain {
                Some(chain) => Some(next_address(tx, custody, chain).await?),
                None => None,
            };
            let wallet: Wallet = diesel::insert_into(wallets::table)
                .values((
                    wallets::user_id.eq(user_id),
                    wallets::currency.eq(&cur.code),
                    wallets::balance.eq(Scaled(zero)),
                    wallets::locked_balance.eq(Scaled(zero)),
                    wallets::network.eq(chain.map(Chain::network)),
                    wallets::address.eq(derived.as_ref().map(|d| d.address.as_str())),
                    wallets::derivation_path.eq(derived.as_ref().map(|d| d.path.as_str())),
                ))
                .returning(Wallet::as_returning())
                .get_result(tx)
                .await?;
            Ok::<_, LedgerError>(wallet)
        })
        .await;
    match created {
        Ok(wallet) => Ok((wallet, true)),
        // A concurrent call made it first (and our index allocation rolled back with us).
        Err(LedgerError::Database(DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            info,
        ))) if info.constraint_name() == Some("wallets_user_id_currency_key") => {
            let existing = find_own(conn, user_id, &cur.code).await?;
            existing
                .map(|w| (w, false))
                .ok_or(LedgerError::NotFound("wallet"))
        }
        Err(e) => Err(e),
    }
}

async fn find_own(
    conn: &mut AsyncPgConnection,
    user_id: &str,
    currency: &str,
) -> Result<Option<Wallet>, LedgerError> {
    Ok(wallets::table
        .filter(wallets::user_id.eq(user_id))
        .filter(wallets::currency.eq(currency))
        .select(Wallet::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Takes the network's next address index (row-locked until the caller's transaction
/// ends, so indexes are unique and gapless) and derives the address.
async fn next_address(
    conn: &mut AsyncPgConnection,
    custody: &Custody,
    chain: Chain,
) -> Result<Derived, LedgerError> {
    let index: i32 = diesel::update(hd_indexes::table.find(chain.network()))
        .set(hd_indexes::next_index.eq(hd_indexes::next_index + 1))
        .returning(hd_indexes::next_index - 1)
        .get_result(conn)
        .await?;
    let index =
        u32::try_from(index).map_err(|_| LedgerError::Internal(format!("bad HD index {index}")))?;
    custody
        .derive(chain, index)
        .map_err(|e| LedgerError::Internal(format!("custody: {e}")))
}

/// A crypto wallet the caller may see, with its currency, network and address; a fiat
/// wallet is `CURRENCY_NOT_SUPPORTED` (`what` says for what).
pub async fn find_crypto_wallet<'c>(
    conn: &mut AsyncPgConnection,
    currencies: &'c CurrencyRegistry,
    scope: &Scope,
    id: i64,
    what: &str,
) -> Result<(Wallet, &'c super::Currency, String, String), LedgerError> {
    let wallet = find_wallet(conn, scope, id).await?;
    let currency = currencies
        .get(&wallet.currency)
        .filter(|c| c.kind == CurrencyKind::Crypto)
        .ok_or_else(|| {
            LedgerError::CurrencyNotSupported(format!("{} wallets have no {what}", wallet.currency))
        })?;
    let (Some(network), Some(address)) = (wallet.network.clone(), wallet.address.clone()) else {
        return Err(LedgerError::CurrencyNotSupported(
            "the wallet has no address".into(),
        ));
    };
    Ok((wallet, currency, network, address))
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
