//! Reconciliation of a wallet's journal against an outside balance or the chain.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Numeric, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::models::{ReconciliationSource, ReconciliationStatus, Scaled};
use super::page::paginate;
use super::{
    CurrencyKind, CurrencyRegistry, LedgerError, ListScope, Page, PageArgs, Reconciliation, Scope,
    TransactionType, money, wallet,
};
use crate::schema::{reconciliations, transactions, wallets};

/// Compare the ledger over `[start, end]` with a balance reported from outside (a bank
/// statement, the payment processor).
#[derive(Clone, Debug)]
pub struct ExternalReconciliation {
    pub wallet_id: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub external_balance: Decimal,
}

/// What the journal says about a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodSummary {
    /// `balance_after` of the last row before the period (zero if none).
    pub opening: Decimal,
    pub movements: i64,
    pub credits: Decimal,
    pub debits: Decimal,
    /// opening + credits - debits.
    pub system_balance: Decimal,
    /// Where the chain of balances disagrees with the amounts, if it does.
    pub inconsistency: Option<String>,
}

/// A period's sums as the database computed them, in NUMERIC (as text: a sum over many
/// rows may not fit a `Decimal`, and is then refused, never rounded).
#[derive(QueryableByName)]
struct Totals {
    #[diesel(sql_type = BigInt)]
    movements: i64,
    #[diesel(sql_type = Text)]
    credits: String,
    #[diesel(sql_type = Text)]
    debits: String,
    /// opening + credits - debits.
    #[diesel(sql_type = Text)]
    system_balance: String,
    /// Rows of no known direction (a reversal of a reversal, which the database
    /// refuses): never silently left out of the sums.
    #[diesel(sql_type = BigInt)]
    unknown: i64,
    #[diesel(sql_type = BigInt)]
    breaks: i64,
}

/// Sums a wallet's movements in `[start, end]` in the database (one pass over the
/// `(wallet_id, created_at, id)` index), and checks the balance chain on the way.
pub async fn summarize_period(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<PeriodSummary, LedgerError> {
    let opening: Decimal = transactions::table
        .filter(transactions::wallet_id.eq(wallet_id))
        .filter(transactions::created_at.lt(start))
        .order((transactions::created_at.desc(), transactions::id.desc()))
        .select(transactions::balance_after)
        .first(conn)
        .await
        .optional()?
        .unwrap_or(Decimal::ZERO);

    // Every type counts, in the direction `TransactionType::effect` gives it (a reversal
    // the opposite of the row it reverses); holds move nothing.
    let totals: Totals = diesel::sql_query(format!(
        "SELECT movements, credits::text, debits::text,
                ($4 + credits - debits)::text AS system_balance, unknown, breaks
         FROM (SELECT count(*) FILTER (WHERE NOT hold) AS movements,
                      coalesce(sum(amount + fee) FILTER (WHERE NOT hold AND sign > 0), 0)
                          AS credits,
                      coalesce(sum(amount + fee) FILTER (WHERE NOT hold AND sign < 0), 0)
                          AS debits,
                      count(*) FILTER (WHERE NOT hold AND sign IS NULL) AS unknown,
                      count(*) FILTER (WHERE balance_before <> coalesce(prev_after, $4))
                          AS breaks
               FROM (SELECT t.hold, t.amount, t.fee, t.balance_before, {sign} AS sign,
                            lag(t.balance_after) OVER (ORDER BY t.created_at, t.id) AS prev_after
                     FROM transactions t
                     LEFT JOIN transactions r ON r.id = t.reverses_id
                     WHERE t.wallet_id = $1 AND t.created_at >= $2 AND t.created_at <= $3)
                    AS period) AS totals",
        sign = TransactionType::sign_sql("t", "r"),
    ))
    .bind::<BigInt, _>(wallet_id)
    .bind::<Timestamptz, _>(start)
    .bind::<Timestamptz, _>(end)
    .bind::<Numeric, _>(opening)
    .get_result(conn)
    .await?;

    let credits = money::exact(&totals.credits, "the period's credits")?;
    let debits = money::exact(&totals.debits, "the period's debits")?;
    let system_balance = money::exact(&totals.system_balance, "the period's closing balance")?;
    let closing: Option<Decimal> = transactions::table
        .filter(transactions::wallet_id.eq(wallet_id))
        .filter(transactions::created_at.le(end))
        .order((transactions::created_at.desc(), transactions::id.desc()))
        .select(transactions::balance_after)
        .first(conn)
        .await
        .optional()?;
    let inconsistency = if totals.unknown > 0 {
        Some(format!(
            "{} row(s) in the period move the balance in no known direction",
            totals.unknown
        ))
    } else if totals.breaks > 0 {
        Some(format!(
            "the journal chain is broken at {} row(s) in the period",
            totals.breaks
        ))
    } else if totals.movements > 0 && closing != Some(system_balance) {
        Some(format!(
            "the journal's closing balance {} differs from the sum of its movements {system_balance}",
            closing.unwrap_or_default()
        ))
    } else {
        None
    };
    Ok(PeriodSummary {
        opening,
        movements: totals.movements,
        credits,
        debits,
        system_balance,
        inconsistency,
    })
}

/// The result of comparing a wallet with an outside source, as recorded.
pub(crate) struct Outcome {
    pub(crate) wallet_id: i64,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    pub(crate) system_balance: Decimal,
    pub(crate) external_balance: Decimal,
    pub(crate) source: ReconciliationSource,
    pub(crate) status: ReconciliationStatus,
    pub(crate) difference: Decimal,
    pub(crate) notes: String,
    pub(crate) mismatch_reason: Option<String>,
    pub(crate) unmatched: Vec<Option<String>>,
    pub(crate) chain_height: Option<i64>,
}

pub(crate) async fn record(
    conn: &mut AsyncPgConnection,
    outcome: Outcome,
) -> Result<Reconciliation, LedgerError> {
    Ok(diesel::insert_into(reconciliations::table)
        .values((
            reconciliations::wallet_id.eq(outcome.wallet_id),
            reconciliations::start_time.eq(outcome.start),
            reconciliations::end_time.eq(outcome.end),
            reconciliations::system_balance.eq(Scaled(outcome.system_balance)),
            reconciliations::external_balance.eq(Scaled(outcome.external_balance)),
            reconciliations::source.eq(outcome.source),
            reconciliations::status.eq(outcome.status),
            reconciliations::difference.eq(Scaled(outcome.difference)),
            reconciliations::notes.eq(outcome.notes),
            reconciliations::mismatch_reason.eq(outcome.mismatch_reason),
            reconciliations::unmatched_transactions.eq(outcome.unmatched),
            reconciliations::chain_height.eq(outcome.chain_height),
        ))
        .returning(Reconciliation::as_returning())
        .get_result(conn)
        .await?)
}

/// Reconciles a fiat wallet against an external balance and records the result.
pub async fn reconcile_external(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &ExternalReconciliation,
) -> Result<Reconciliation, LedgerError> {
    if request.start > request.end {
        return Err(LedgerError::BadInput(
            "startTime must not be after endTime".into(),
        ));
    }
    // One snapshot for every read, so movements committed meanwhile cannot skew the sums.
    conn.build_transaction()
        .repeatable_read()
        .run(async |conn| {
            let wallet = wallet::find_wallet(conn, scope, request.wallet_id).await?;
            let currency = currencies
                .get(&wallet.currency)
                .ok_or(LedgerError::NotFound("currency"))?;
            if currency.kind != CurrencyKind::Fiat {
                return Err(LedgerError::CurrencyNotSupported(format!(
                    "{} wallets are reconciled against the chain",
                    currency.code
                )));
            }
            money::check_scale(request.external_balance, currency)?;
            let mut period = summarize_period(conn, wallet.id, request.start, request.end).await?;
            for v in [
                &mut period.opening,
                &mut period.credits,
                &mut period.debits,
                &mut period.system_balance,
            ] {
                *v = money::at_scale(*v, currency);
            }
            let external = money::at_scale(request.external_balance, currency);
            let difference = external.checked_sub(period.system_balance).ok_or_else(|| {
                LedgerError::NotRepresentable("the difference from the external balance".into())
            })?;
            let within_tolerance = difference.abs() <= currency.reconciliation_tolerance;
            let status = if within_tolerance && period.inconsistency.is_none() {
                ReconciliationStatus::Matched
            } else {
                ReconciliationStatus::Mismatch
            };
            let mismatch_reason = match (&period.inconsistency, within_tolerance) {
                (Some(broken), _) => Some(broken.clone()),
                (None, false) => Some(format!(
                    "the external balance is {} {} {} than the ledger's {}",
                    difference.abs(),
                    currency.code,
                    if difference > Decimal::ZERO {
                        "higher"
                    } else {
                        "lower"
                    },
                    period.system_balance
                )),
                (None, true) => None,
            };
            let notes = format!(
                "opening balance {}, {} movement(s) in the period: credits {}, debits {}; \
                 tolerance {}",
                period.opening,
                period.movements,
                period.credits,
                period.debits,
                currency.reconciliation_tolerance
            );
            record(
                conn,
                Outcome {
                    wallet_id: wallet.id,
                    start: request.start,
                    end: request.end,
                    system_balance: period.system_balance,
                    external_balance: external,
                    source: ReconciliationSource::External,
                    status,
                    difference,
                    notes,
                    mismatch_reason,
                    unmatched: Vec::new(),
                    chain_height: None,
                },
            )
            .await
        })
        .await
}

/// A reconciliation the caller may see.
pub async fn find_reconciliation(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    id: i64,
) -> Result<Reconciliation, LedgerError> {
    let mut q = reconciliations::table
        .filter(reconciliations::id.eq(id))
        .select(Reconciliation::as_select())
        .into_boxed();
    if let Some(owner) = scope.owner() {
        q = q.filter(
            reconciliations::wallet_id.eq_any(
                wallets::table
                    .filter(wallets::user_id.eq(owner.to_owned()))
                    .select(wallets::id),
            ),
        );
    }
    q.first(conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("reconciliation"))
}

/// A page of reconciliations, oldest first.
pub async fn list_reconciliations(
    conn: &mut AsyncPgConnection,
    scope: &ListScope,
    page: &PageArgs,
) -> Result<Page<Reconciliation>, LedgerError> {
    let mut q = reconciliations::table
        .select(Reconciliation::as_select())
        .into_boxed();
    match scope {
        ListScope::Wallet(id) => q = q.filter(reconciliations::wallet_id.eq(*id)),
        ListScope::Owner(user) => {
            q = q.filter(
                reconciliations::wallet_id.eq_any(
                    wallets::table
                        .filter(wallets::user_id.eq(user.clone()))
                        .select(wallets::id),
                ),
            )
        }
        ListScope::All => {}
    }
    let rows = paginate!(q, page, reconciliations).load(conn).await?;
    Ok(page.finish(rows))
}
