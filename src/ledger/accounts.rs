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

use diesel::sql_types::{BigInt, Nullable, Text};

use super::page::paginate;
use super::{LedgerError, Page, PageArgs, money};
use crate::schema::ledger_postings;

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
/// meanwhile are either wholly in it or wholly out). Every sum, the imbalance included, is
/// computed by the database in NUMERIC, exactly; a figure beyond a `Decimal`'s 28
/// significant digits is an error ([`LedgerError::NotRepresentable`]), never rounded.
pub async fn trial_balance(conn: &mut AsyncPgConnection) -> Result<Vec<TrialBalance>, LedgerError> {
    let (customers, accounts) = conn
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |tx| {
            let customers: Vec<CurrencyTotals> = diesel::sql_query(
                "WITH customers AS (SELECT currency, sum(balance) AS total
                                      FROM wallets GROUP BY currency),
                      system AS (SELECT a.currency, sum(p.amount) AS total
                                   FROM ledger_accounts a
                                   JOIN ledger_postings p ON p.account_id = a.id
                                  GROUP BY a.currency),
                      currencies AS (SELECT currency FROM customers
                                     UNION SELECT currency FROM ledger_accounts)
                 SELECT c.currency,
                        coalesce(customers.total, 0)::text AS customer_balance,
                        (coalesce(customers.total, 0) + coalesce(system.total, 0))::text
                            AS imbalance
                   FROM currencies c
                   LEFT JOIN customers ON customers.currency = c.currency
                   LEFT JOIN system ON system.currency = c.currency
                  ORDER BY c.currency",
            )
            .load(tx)
            .await?;
            let accounts = account_balances(tx, None).await?;
            Ok::<_, LedgerError>((customers, accounts))
        })
        .await?;
    let mut by_currency: BTreeMap<String, TrialBalance> = BTreeMap::new();
    for row in customers {
        by_currency.insert(
            row.currency.clone(),
            TrialBalance {
                customer_balance: money::exact(
                    &row.customer_balance,
                    &format!("the {} customers' total", row.currency),
                )?,
                imbalance: money::exact(
                    &row.imbalance,
                    &format!("the {} imbalance", row.currency),
                )?,
                currency: row.currency,
                accounts: Vec::new(),
            },
        );
    }
    for account in accounts {
        if let Some(tb) = by_currency.get_mut(&account.currency) {
            tb.accounts.push(account);
        }
    }
    Ok(by_currency.into_values().collect())
}

/// A currency's sums, as the database computed them (NUMERIC as text).
#[derive(QueryableByName)]
struct CurrencyTotals {
    #[diesel(sql_type = Text)]
    currency: String,
    #[diesel(sql_type = Text)]
    customer_balance: String,
    #[diesel(sql_type = Text)]
    imbalance: String,
}

/// An account's sum, as the database computed it.
#[derive(QueryableByName)]
struct AccountTotal {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    code: String,
    #[diesel(sql_type = Text)]
    currency: String,
    #[diesel(sql_type = Text)]
    balance: String,
}

/// The system accounts (of one currency, or all), with their balances, by currency and
/// code; each balance exact (see [`trial_balance`]).
pub async fn account_balances(
    conn: &mut AsyncPgConnection,
    currency: Option<&str>,
) -> Result<Vec<AccountBalance>, LedgerError> {
    let rows: Vec<AccountTotal> = diesel::sql_query(
        "SELECT a.id, a.code, a.currency, coalesce(sum(p.amount), 0)::text AS balance
           FROM ledger_accounts a
           LEFT JOIN ledger_postings p ON p.account_id = a.id
          WHERE $1::text IS NULL OR a.currency = $1
          GROUP BY a.id, a.code, a.currency
          ORDER BY a.currency, a.code",
    )
    .bind::<Nullable<Text>, _>(currency)
    .load(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(AccountBalance {
                balance: money::exact(
                    &row.balance,
                    &format!("the {} {} account's balance", row.currency, row.code),
                )?,
                id: row.id,
                code: row.code,
                currency: row.currency,
            })
        })
        .collect()
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
