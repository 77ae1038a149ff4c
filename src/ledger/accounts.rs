//! System accounts and the trial balance.
//!
//! Every journal row that changes a wallet's balance is one double-entry entry: the row
//! is the wallet's side, and the database writes the other side — postings to the
//! currency's system accounts — in the same statement (see the `double_entry` migration).
//! An account's balance is the sum of its postings; the customers' wallets and all system
//! accounts of a currency always sum to exactly zero:
//!
//! | account | currencies | balance |
//! | --- | --- | --- |
//! | `bank` | fiat | minus what customers brought in through the bank (deposits post `-amount`, withdrawals `+amount`) |
//! | `custody` | crypto | minus what our addresses received for customers, net of what they sent out |
//! | `network_fees` | crypto | network fees custody paid on chain |
//! | `fee_revenue` | all | fees charged to customers |
//! | `gas_funding` | a network's coin | what the service itself put at wallet addresses to pay gas (`fundGas`) |
//!
//! System balances are derived from postings, never kept in a row that every movement would
//! have to lock.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::page::paginate;
use super::{LedgerError, Page, PageArgs};
use crate::schema::{ledger_accounts, ledger_postings, wallets};

/// One system account and its balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountBalance {
    pub id: i64,
    pub code: String,
    pub currency: String,
    pub balance: Decimal,
}

/// One currency's trial balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrialBalance {
    pub currency: String,
    /// The sum of every customer wallet's balance.
    pub customer_balance: Decimal,
    pub accounts: Vec<AccountBalance>,
    /// Customers plus system accounts: exactly zero in a healthy ledger.
    pub imbalance: Decimal,
}

/// The trial balance of every currency, read in one snapshot (so that movements committing
/// meanwhile are either wholly in it or wholly out).
pub async fn trial_balance(conn: &mut AsyncPgConnection) -> Result<Vec<TrialBalance>, LedgerError> {
    let (customers, accounts) = conn
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |tx| {
            let customers: Vec<(String, Option<Decimal>)> = wallets::table
                .group_by(wallets::currency)
                .select((wallets::currency, diesel::dsl::sum(wallets::balance)))
                .load(tx)
                .await?;
            let accounts = account_balances(tx, None).await?;
            Ok::<_, LedgerError>((customers, accounts))
        })
        .await?;
    let mut by_currency: BTreeMap<String, TrialBalance> = BTreeMap::new();
    fn of<'a>(map: &'a mut BTreeMap<String, TrialBalance>, currency: &str) -> &'a mut TrialBalance {
        map.entry(currency.to_owned())
            .or_insert_with(|| TrialBalance {
                currency: currency.to_owned(),
                customer_balance: Decimal::ZERO,
                accounts: Vec::new(),
                imbalance: Decimal::ZERO,
            })
    }
    for (currency, sum) in customers {
        let tb = of(&mut by_currency, &currency);
        tb.customer_balance = sum.unwrap_or_default();
        tb.imbalance += tb.customer_balance;
    }
    for account in accounts {
        let tb = of(&mut by_currency, &account.currency);
        tb.imbalance += account.balance;
        tb.accounts.push(account);
    }
    Ok(by_currency.into_values().collect())
}

/// The system accounts (of one currency, or all), with their balances, by currency and code.
pub async fn account_balances(
    conn: &mut AsyncPgConnection,
    currency: Option<&str>,
) -> Result<Vec<AccountBalance>, LedgerError> {
    let mut q = ledger_accounts::table
        .left_join(ledger_postings::table.on(ledger_postings::account_id.eq(ledger_accounts::id)))
        .group_by((
            ledger_accounts::id,
            ledger_accounts::code,
            ledger_accounts::currency,
        ))
        .select((
            ledger_accounts::id,
            ledger_accounts::code,
            ledger_accounts::currency,
            diesel::dsl::sum(ledger_postings::amount.nullable()),
        ))
        .order((ledger_accounts::currency, ledger_accounts::code))
        .into_boxed();
    if let Some(currency) = currency {
        q = q.filter(ledger_accounts::currency.eq(currency.to_owned()));
    }
    let rows: Vec<(i64, String, String, Option<Decimal>)> = q.load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(id, code, currency, sum)| AccountBalance {
            id,
            code,
            currency,
            balance: sum.unwrap_or_default(),
        })
        .collect())
}

/// One posting to a system account: its part of an entry — a journal row's, or a gas
/// funding's (the operator's ether put at a wallet's address, which moves no wallet).
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = ledger_postings, check_for_backend(diesel::pg::Pg))]
pub struct Posting {
    pub id: i64,
    /// The journal row whose entry it belongs to (`None`: a gas funding's).
    pub transaction_id: Option<i64>,
    pub account_id: i64,
    pub amount: Decimal,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The gas funding whose entry it belongs to (`None`: a journal row's).
    pub gas_funding_id: Option<i64>,
}

/// A page of an account's postings, oldest first.
pub async fn list_postings(
    conn: &mut AsyncPgConnection,
    account_id: i64,
    page: &PageArgs,
) -> Result<Page<Posting>, LedgerError> {
    let q = ledger_postings::table
        .filter(ledger_postings::account_id.eq(account_id))
        .select(Posting::as_select())
        .into_boxed();
    let rows = paginate!(q, page, ledger_postings).load(conn).await?;
    Ok(page.finish(rows))
}
