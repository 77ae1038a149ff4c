//! Reconciliation of a crypto wallet's journal against its address on the chain: what
//! the chain says the address holds, against the ledger's balance, with what is in transit
//! (journaled but not mined, mined but not yet journaled) accounted for.

use crate::chain::{Chain, ChainTransfer};
use crate::db::PgPool;
use crate::ledger::models::{ReconciliationSource, ReconciliationStatus};
use crate::ledger::reconciliation::{Outcome, record, summarize_period};
use crate::ledger::{
    Currency, CurrencyRegistry, LedgerError, Reconciliation, Scope, TransactionStatus,
    TransactionType, Wallet, money, wallet,
};
use crate::schema::{reconciliations, transactions, wallets};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Numeric, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use std::collections::BTreeSet;

/// Compare a crypto wallet's ledger over `[start, end]` with its address on chain.
#[derive(Clone, Debug)]
pub struct ChainReconciliation {
    pub wallet_id: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// The chain's side of a comparison, as the chain was at the window's end: only blocks
/// mined by then count, whatever happened since.
struct ChainAsOf {
    /// The chain's height at the window's end.
    height: i64,
    /// The address's balance at that height.
    balance: Decimal,
    /// The address's successful transfers up to that height that the comparison looks
    /// at: its whole history, or those since the last checkpoint.
    settled: Vec<ChainTransfer>,
    /// Of those, the hashes mined inside the window.
    window: BTreeSet<String>,
    /// Ledger rows before this time are already reconciled (a checkpoint's end).
    reconciled_until: Option<DateTime<Utc>>,
}

/// A crypto wallet with its chain and address, if the caller may see it. A fiat wallet
/// is reconciled against an external balance instead: asking for the chain is bad input.
async fn crypto_wallet<'c>(
    conn: &mut AsyncPgConnection,
    currencies: &'c CurrencyRegistry,
    scope: &Scope,
    wallet_id: i64,
) -> Result<(Wallet, &'c Currency, String, String), LedgerError> {
    wallet::find_crypto_wallet(conn, currencies, scope, wallet_id, "chain")
        .await
        .map_err(|e| match e {
            LedgerError::CurrencyNotSupported(_) => LedgerError::BadInput(
                "a fiat wallet is reconciled against an externalBalance".into(),
            ),
            other => other,
        })
}

/// Reconciles a crypto wallet against the chain *as it was at `end`*: the ledger's
/// balance at `end` against the address's balance at the chain's height then, and the
/// transfers mined inside the window on each side. A window that was consistent when it
/// ended reconciles MATCHED whenever it is asked about; movements that were on their way
/// at its end (a deposit confirming, a withdrawal signed but not yet mined) are listed as
/// in transit, not as differences.
pub async fn reconcile_chain(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    chain: &dyn Chain,
    scope: &Scope,
    request: &ChainReconciliation,
) -> Result<Reconciliation, LedgerError> {
    if request.start > request.end {
        return Err(LedgerError::BadInput(
            "startTime must not be after endTime".into(),
        ));
    }
    let (wallet, currency, network, address) =
        crypto_wallet(conn, currencies, scope, request.wallet_id).await?;
    let before_start = chain.height_at(&network, request.start).await?;
    let height = chain.height_at(&network, request.end).await?;
    let mut settled = chain.settled_between(&network, &address, 0, height).await?;
    settled.retain(|t| currency.is_asset(t.asset.as_deref()));
    let summed = net_of(&address, settled.iter());
    let balance = chain_balance(chain, &network, &address, currency, height, summed).await?;
    let side = ChainAsOf {
        height,
        balance,
        window: settled
            .iter()
            .filter(|t| t.block_number.is_some_and(|b| b > before_start))
            .map(|t| t.hash.clone())
            .collect(),
        settled,
        reconciled_until: None,
    };
    compare_with_chain(
        conn,
        chain,
        &wallet,
        currency,
        (request.start, request.end),
        side,
        false,
    )
    .await
}

/// The address's balance of the wallet's currency at `height`: the node's own state when
/// the backend can read it, else `summed` (what the settled transfers add up to).
async fn chain_balance(
    chain: &dyn Chain,
    network: &str,
    address: &str,
    currency: &Currency,
    height: i64,
    summed: Decimal,
) -> Result<Decimal, LedgerError> {
    let asset = currency.contract_address.as_deref();
    Ok(chain
        .balance_at(network, address, asset, height)
        .await?
        .unwrap_or(summed))
}

/// What a set of settled transfers did to an address: in minus out and fees.
fn net_of<'a>(address: &str, transfers: impl Iterator<Item = &'a ChainTransfer>) -> Decimal {
    transfers.fold(Decimal::ZERO, |sum, t| {
        let mut sum = sum;
        if t.to_address == address {
            sum += t.amount;
        }
        if t.from_address == address {
            sum -= t.amount + t.fee;
        }
        sum
    })
}

/// Reconciles a crypto wallet from its last clean scheduled run (its checkpoint) to now,
/// reading only what the chain settled above that run's height and the journal since its
/// end time. A run is a checkpoint when it matched with nothing in transit.
pub async fn reconcile_since_checkpoint(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    chain: &dyn Chain,
    wallet_id: i64,
) -> Result<Reconciliation, LedgerError> {
    let (wallet, currency, network, address) =
        crypto_wallet(conn, currencies, &Scope::All, wallet_id).await?;
    let checkpoint: Option<Reconciliation> = reconciliations::table
        .filter(reconciliations::wallet_id.eq(wallet.id))
        .filter(reconciliations::source.eq(ReconciliationSource::Chain))
        .filter(reconciliations::status.eq(ReconciliationStatus::Matched))
        .filter(reconciliations::chain_height.is_not_null())
        .order(reconciliations::end_time.desc())
        .select(Reconciliation::as_select())
        .first(conn)
        .await
        .optional()?;
    let (start, after, opening) = match &checkpoint {
        Some(c) => (c.end_time, c.chain_height.unwrap_or(0), c.external_balance),
        None => (wallet.created_at, 0, Decimal::ZERO),
    };
    // The end first, then the chain as it was then: a block mined meanwhile is the next
    // run's.
    let end = Utc::now().max(start);
    let height = chain.height_at(&network, end).await?.max(after);
    let mut settled = chain
        .settled_between(&network, &address, after, height)
        .await?;
    settled.retain(|t| currency.is_asset(t.asset.as_deref()));
    let summed = opening + net_of(&address, settled.iter());
    let balance = chain_balance(chain, &network, &address, currency, height, summed).await?;
    let side = ChainAsOf {
        height,
        balance,
        window: settled.iter().map(|t| t.hash.clone()).collect(),
        settled,
        reconciled_until: checkpoint.map(|c| c.end_time),
    };
    compare_with_chain(conn, chain, &wallet, currency, (start, end), side, true).await
}

/// A movement on its way at a window's end: on one side already, on the other later.
struct InTransit {
    hash: String,
    /// What the movement does to the wallet's balance (shown in the notes): a deposit's
    /// amount, or minus a withdrawal's amount and fee.
    effect: Decimal,
    /// How much higher the chain's balance is than the ledger's because of it: a
    /// deposit's amount (on chain, not yet credited), a withdrawal's amount and fee
    /// (debited, not yet paid out on chain), or minus them (paid out on chain, not yet
    /// debited: a withdrawal through a node is debited at its confirmations).
    chain_minus_ledger: Decimal,
}

/// What the journal says about the chain transfers behind a wallet, as of a moment.
#[derive(QueryableByName)]
struct JournaledTransfer {
    #[diesel(sql_type = diesel::sql_types::Text)]
    hash: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: TransactionType,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    hold: bool,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: TransactionStatus,
    #[diesel(sql_type = Numeric)]
    moved: Decimal,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    /// By the window's end: a posting reversed, or a hold whose posting was (an operator
    /// corrected a credit a reorganisation took back, or a withdrawal's first debit).
    #[diesel(sql_type = diesel::sql_types::Bool)]
    reversed: bool,
}

/// Compares the journal as of the window's end with the chain as of then, and records the
/// outcome. `checkpoint`: a scheduled run, which becomes the next run's starting point if
/// it matched with nothing in transit.
async fn compare_with_chain(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    wallet: &Wallet,
    currency: &Currency,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    side: ChainAsOf,
    checkpoint: bool,
) -> Result<Reconciliation, LedgerError> {
    let network = wallet.network.clone().unwrap_or_default();
    let address = wallet.address.clone().unwrap_or_default();
    let on_chain: std::collections::HashMap<&str, &ChainTransfer> =
        side.settled.iter().map(|t| (t.hash.as_str(), t)).collect();

    // Every journal row carrying a chain transfer of this wallet since the last clean
    // checkpoint: credits, debits, refunds and deposit holds.
    let journaled: Vec<JournaledTransfer> = diesel::sql_query(
        // A token deposit named before by its block's log index: by its name now.
        "SELECT COALESCE((SELECT l.name FROM legacy_token_deposits l
                           WHERE l.hold_id = COALESCE(transactions.hold_id, transactions.id)),
                         chain_tx_hash) AS hash,
                type AS kind, hold, status,
                amount + COALESCE(network_fee, fee) AS moved, created_at,
                EXISTS (SELECT 1 FROM transactions r
                         WHERE r.created_at <= $3
                           AND (r.reverses_id = transactions.id
                                OR r.reverses_id IN (SELECT s.id FROM transactions s
                                                      WHERE s.hold_id = transactions.id
                                                        AND transactions.hold)))
                    AS reversed
           FROM transactions
          WHERE wallet_id = $1 AND chain_tx_hash IS NOT NULL
            AND ($2::timestamptz IS NULL OR created_at > $2)
            AND (NOT hold OR type = 'DEPOSIT')",
    )
    .bind::<BigInt, _>(wallet.id)
    .bind::<diesel::sql_types::Nullable<Timestamptz>, _>(side.reconciled_until)
    .bind::<Timestamptz, _>(end)
    .load(conn)
    .await?;
    // Ether the operator put at the address to pay gas (`fundGas`): on chain, not the
    // customer's, and explained. (A token wallet's balance is the token's: its gas
    // funding is not in it.)
    let funded = match currency.contract_address {
        None => super::gas_funding::funded_at(conn, wallet.id, side.height).await?,
        Some(_) => Default::default(),
    };
    let posted = |hash: &str, kind: TransactionType| {
        journaled
            .iter()
            .find(|j| j.hash == hash && j.kind == kind && !j.hold)
    };

    let mut in_transit: Vec<InTransit> = Vec::new();
    let mut chain_only: Vec<String> = Vec::new();
    let mut ledger_only: Vec<String> = Vec::new();
    // Deposits on chain by the window's end: credited by then, on their way (credited
    // later, or still confirming), or unknown to the ledger.
    for t in side.settled.iter().filter(|t| t.to_address == address) {
        let credit = posted(&t.hash, TransactionType::Deposit);
        let on_its_way = match credit {
            Some(credit) => credit.created_at > end,
            None => journaled
                .iter()
                .any(|j| j.hash == t.hash && j.hold && j.status == TransactionStatus::Pending),
        };
        if on_its_way {
            in_transit.push(InTransit {
                hash: t.hash.clone(),
                effect: t.amount,
                chain_minus_ledger: t.amount,
            });
        } else if credit.is_none()
            && side.window.contains(&t.hash)
            && !funded.hashes.contains(&t.hash)
        {
            chain_only.push(t.hash.clone());
        }
    }
    // Outflows on chain: debited by the window's end; on their way at its end (a
    // withdrawal through a node is debited only at its confirmations, and one sent again
    // under another hash is the same withdrawal); or unknown to the ledger.
    let debited_by_end = |name: &str| {
        journaled.iter().any(|j| {
            !j.hold
                && !j.reversed
                && j.kind == TransactionType::Withdraw
                && j.created_at <= end
                && names_transaction(name, &j.hash)
        })
    };
    let awaiting_debit = undebited_attempts(conn, wallet.id, end).await?;
    for t in side.settled.iter().filter(|t| t.from_address == address) {
        if debited_by_end(&t.hash) {
            continue;
        }
        let ours = awaiting_debit.iter().any(|a| names_transaction(&t.hash, a))
            || journaled.iter().any(|j| {
                !j.hold
                    && j.kind == TransactionType::Withdraw
                    && names_transaction(&t.hash, &j.hash)
            });
        if ours {
            in_transit.push(InTransit {
                hash: t.hash.clone(),
                effect: -(t.amount + t.fee),
                chain_minus_ledger: -(t.amount + t.fee),
            });
        } else if side.window.contains(&t.hash) {
            chain_only.push(t.hash.clone());
        }
    }
    // Debits by the window's end whose transfer was not mined by then: on their way
    // (mined, failed or still pending since, or signed and waiting to be sent again), or
    // unknown to the chain. One refunded by the end cancels out.
    for debit in journaled.iter().filter(|j| {
        !j.hold && !j.reversed && j.kind == TransactionType::Withdraw && j.created_at <= end
    }) {
        let refunded = journaled.iter().any(|j| {
            j.hash == debit.hash && j.kind == TransactionType::Refund && j.created_at <= end
        });
        let mined = side
            .settled
            .iter()
            .any(|t| names_transaction(&t.hash, &debit.hash));
        if refunded || mined {
            continue;
        }
        let known = chain.transfer(&network, &debit.hash).await?.is_some();
        let in_flight = known || holds_processing(conn, wallet.id, &debit.hash).await?;
        if in_flight {
            in_transit.push(InTransit {
                hash: debit.hash.clone(),
                effect: -debit.moved,
                chain_minus_ledger: debit.moved,
            });
        } else if debit.created_at >= start {
            ledger_only.push(debit.hash.clone());
        }
    }
    // Credits of the window for transfers the chain had not settled by its end.
    // A credit reversed by then (an operator's correction of a reorganised deposit)
    // moved nothing in the end.
    for credit in journaled.iter().filter(|j| {
        !j.hold
            && !j.reversed
            && j.kind == TransactionType::Deposit
            && j.created_at >= start
            && j.created_at <= end
    }) {
        if !on_chain.contains_key(credit.hash.as_str()) {
            ledger_only.push(credit.hash.clone());
        }
    }

    // Credits the chain took back in a reorganisation deeper than the threshold, and
    // not yet corrected (reversed) by the window's end.
    let reorged: Vec<&str> = journaled
        .iter()
        .filter(|j| {
            j.hold
                && !j.reversed
                && j.kind == TransactionType::Deposit
                && j.status == TransactionStatus::Reorged
        })
        .map(|j| j.hash.as_str())
        .collect();

    conn.build_transaction()
        .repeatable_read()
        .run(async |conn| {
            let mut period = summarize_period(conn, wallet.id, start, end).await?;
            period.system_balance = money::at_scale(period.system_balance, currency);
            let chain_balance = money::at_scale(side.balance, currency);
            let difference = chain_balance
                .checked_sub(period.system_balance)
                .ok_or_else(|| {
                    LedgerError::NotRepresentable("the difference from the chain".into())
                })?;
            let transit: Decimal = in_transit.iter().map(|t| t.chain_minus_ledger).sum();
            // Fees charged beyond the network's stay at the address and explain a surplus;
            // fees charged below what the address paid the network leave it short, and
            // nothing explains a shortfall.
            let retained = retained_fees(conn, wallet.id, end).await?;
            let unexplained = difference - retained.max(Decimal::ZERO) - transit - funded.amount;
            let within_tolerance = unexplained.abs() <= currency.reconciliation_tolerance;
            let mut reasons = Vec::new();
            if let Some(broken) = &period.inconsistency {
                reasons.push(broken.clone());
            }
            if retained < Decimal::ZERO {
                reasons.push(format!(
                    "the address paid the network {} {} more in fees than its withdrawals \
                     charged: it holds that much less than the wallet",
                    -retained, currency.code
                ));
            }
            if !chain_only.is_empty() {
                reasons.push(format!(
                    "{} transfer(s) on chain are not in the ledger",
                    chain_only.len()
                ));
            }
            if !ledger_only.is_empty() {
                reasons.push(format!(
                    "{} ledger row(s) have no transfer on chain",
                    ledger_only.len()
                ));
            }
            if !reorged.is_empty() {
                reasons.push(format!(
                    "{} credited deposit(s) removed by a reorganisation after they were \
                     credited (flagged REORGED): {}",
                    reorged.len(),
                    reorged.join(", ")
                ));
            }
            if !within_tolerance {
                reasons.push(format!(
                    "the chain balance is {} {} {} than the ledger's {}{}",
                    unexplained.abs(),
                    currency.code,
                    if unexplained > Decimal::ZERO {
                        "higher"
                    } else {
                        "lower"
                    },
                    period.system_balance,
                    if in_transit.is_empty() {
                        String::new()
                    } else {
                        " beyond what was in transit".into()
                    }
                ));
            }
            let status = if reasons.is_empty() {
                ReconciliationStatus::Matched
            } else {
                ReconciliationStatus::Mismatch
            };
            let unmatched: Vec<Option<String>> = chain_only
                .iter()
                .chain(ledger_only.iter())
                .map(|h| Some(h.clone()))
                .collect();
            let mut notes = format!(
                "address {address} on {network} at height {}: {} settled transfer(s) in the \
                 window; ledger opening balance {}, {} movement(s); tolerance {}",
                side.height,
                side.window.len(),
                period.opening,
                period.movements,
                currency.reconciliation_tolerance
            );
            if !funded.amount.is_zero() {
                notes.push_str(&format!(
                    "; gas funding the operator put at the address (not the customer's): {}",
                    funded.amount
                ));
            }
            if !retained.is_zero() {
                notes.push_str(&format!(
                    "; withdrawal fees charged beyond the network's, left at the address: {retained}"
                ));
            }
            if !in_transit.is_empty() {
                notes.push_str(&format!(
                    "; in transit at the window's end: {}",
                    in_transit
                        .iter()
                        .map(|t| format!("{} ({:+})", t.hash, t.effect))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            // Only a clean run is a checkpoint: the next one starts from its height.
            let clean = status == ReconciliationStatus::Matched && in_transit.is_empty();
            record(
                conn,
                Outcome {
                    wallet_id: wallet.id,
                    start,
                    end,
                    system_balance: period.system_balance,
                    external_balance: chain_balance,
                    source: ReconciliationSource::Chain,
                    status,
                    difference,
                    notes,
                    mismatch_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
                    unmatched,
                    chain_height: (checkpoint && clean).then_some(side.height),
                },
            )
            .await
        })
        .await
}

#[derive(QueryableByName)]
struct Retained {
    #[diesel(sql_type = Text)]
    retained: String,
}

/// How much more the wallet's address holds than the wallet by `end` because its
/// withdrawals charged a configured fee other than the network's: the address paid the
/// network fee, the wallet the charged fee (refunded withdrawals cancel out).
async fn retained_fees(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    end: DateTime<Utc>,
) -> Result<Decimal, LedgerError> {
    // A withdrawal's debit keeps `fee - network_fee` at the address; its refund gives it
    // back: minus each row's balance direction.
    let row: Retained = diesel::sql_query(format!(
        "SELECT COALESCE(sum(-({sign}) * (t.fee - t.network_fee)), 0)::text AS retained
           FROM transactions t
           LEFT JOIN transactions r ON r.id = t.reverses_id
          WHERE t.wallet_id = $1 AND NOT t.hold AND t.network_fee IS NOT NULL
            AND t.created_at <= $2",
        sign = TransactionType::sign_sql("t", "r"),
    ))
    .bind::<BigInt, _>(wallet_id)
    .bind::<Timestamptz, _>(end)
    .get_result(conn)
    .await?;
    money::exact(&row.retained, "the fees retained at the address")
}

/// Whether a transfer's name on chain is the transaction `hash` or one of its token
/// transfers (`hash:logIndex`): a withdrawal's debit names the transaction that sent it.
fn names_transaction(name: &str, hash: &str) -> bool {
    name == hash || name.split_once(':').is_some_and(|(tx, _)| tx == hash)
}

/// The hashes of every transaction signed for a withdrawal of the wallet through a node
/// (each attempt: a replacement has its own) whose debit was not yet made by `end`.
async fn undebited_attempts(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    end: DateTime<Utc>,
) -> Result<Vec<String>, LedgerError> {
    use crate::schema::withdrawal_attempts;
    let debits = diesel::alias!(transactions as debits);
    Ok(withdrawal_attempts::table
        .inner_join(
            transactions::table.on(transactions::id.eq(withdrawal_attempts::transaction_id)),
        )
        .filter(transactions::wallet_id.eq(wallet_id))
        .filter(diesel::dsl::not(diesel::dsl::exists(
            debits
                .filter(
                    debits
                        .field(transactions::hold_id)
                        .eq(transactions::id.nullable()),
                )
                .filter(
                    debits
                        .field(transactions::type_)
                        .eq(TransactionType::Withdraw),
                )
                .filter(debits.field(transactions::created_at).le(end)),
        )))
        .select(withdrawal_attempts::hash)
        .load(conn)
        .await?)
}

/// Whether the wallet's withdrawal with this chain hash is still on its way (signed,
/// to be sent again if the chain lost it).
async fn holds_processing(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    hash: &str,
) -> Result<bool, LedgerError> {
    let status: Option<TransactionStatus> = transactions::table
        .filter(transactions::wallet_id.eq(wallet_id))
        .filter(transactions::hold.eq(true))
        .filter(transactions::chain_tx_hash.eq(hash))
        .select(transactions::status)
        .first(conn)
        .await
        .optional()?;
    Ok(status == Some(TransactionStatus::Processing))
}

/// Wallets the scheduled job reconciles at once.
const RECONCILE_CONCURRENCY: usize = 4;

/// How a scheduled run went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduledRun {
    pub reconciled: usize,
    pub mismatched: usize,
    pub failed: usize,
}

/// Reconciles every crypto wallet since its checkpoint, in pages of wallets. One wallet
/// failing (the chain unreachable, say) does not stop the others.
pub async fn reconcile_all_crypto(
    pool: &PgPool,
    currencies: &CurrencyRegistry,
    chain: &dyn Chain,
) -> Result<ScheduledRun, LedgerError> {
    use futures_util::StreamExt;
    let mut run = ScheduledRun::default();
    let mut after = 0_i64;
    loop {
        let ids: Vec<i64> = {
            let mut conn = pool.get().await?;
            wallets::table
                .filter(wallets::address.is_not_null())
                .filter(wallets::id.gt(after))
                .order(wallets::id)
                .limit(200)
                .select(wallets::id)
                .load(&mut conn)
                .await?
        };
        let Some(&last) = ids.last() else {
            return Ok(run);
        };
        // A few wallets at a time, each on its own connection: the job's wall time is
        // mostly round trips, and it leaves the rest of the pool to requests.
        let outcomes: Vec<(i64, Result<Reconciliation, LedgerError>)> =
            futures_util::stream::iter(ids)
                .map(|id| async move {
                    let outcome = match pool.get().await {
                        Ok(mut conn) => {
                            reconcile_since_checkpoint(&mut conn, currencies, chain, id).await
                        }
                        Err(e) => Err(LedgerError::from(e)),
                    };
                    (id, outcome)
                })
                .buffer_unordered(RECONCILE_CONCURRENCY)
                .collect()
                .await;
        for (id, outcome) in outcomes {
            match outcome {
                Ok(r) => {
                    run.reconciled += 1;
                    if r.status == ReconciliationStatus::Mismatch {
                        run.mismatched += 1;
                    }
                }
                Err(e) => {
                    run.failed += 1;
                    tracing::warn!(wallet = id, error = ?e, "scheduled reconciliation failed");
                }
            }
        }
        after = last;
    }
}

/// Claims the named job for this interval: true for exactly one caller per interval,
/// across processes.
pub async fn claim_job(
    conn: &mut AsyncPgConnection,
    name: &str,
    interval: std::time::Duration,
) -> Result<bool, LedgerError> {
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let claimed = diesel::sql_query(
        "UPDATE scheduled_jobs SET last_run = now()
          WHERE name = $1 AND last_run <= now() - $2 * interval '1 millisecond'",
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .bind::<BigInt, _>(interval_ms)
    .execute(conn)
    .await?;
    Ok(claimed == 1)
}
