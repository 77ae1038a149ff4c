//! Crypto deposits. A chain transfer to a wallet's address is journaled as a hold the
//! moment it is seen (PENDING, confirmations counting, no balance effect) and credited by
//! a posting once it has the network's confirmations — exactly once, whoever gets there
//! first: the watcher ([`scan`]) or a client (`processCryptoDeposit`, [`process_deposit`]).
//! The transfer's name on its network (its transaction hash; for a token transfer, the
//! hash and the log's place in its transaction — see [`crate::chain::deposit_names`] for names
//! given before) is the hold's idempotency key, and both paths go through [`observe`]
//! under the wallet's row lock.
//!
//! Through reorganisations (a node-backed network): a held deposit off the chain goes
//! back to no confirmations, or DROPPED when the node no longer has it; a credited one a
//! reorganisation removed is flagged REORGED (by [`crate::chain::reorg`], from the record
//! the watcher wrote when it found the reorganisation). A REORGED deposit mined again is
//! COMPLETED again: its credit stands, or — if an operator reversed it meanwhile — it is
//! credited again, once, at the confirmation threshold.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use rust_decimal::Decimal;

use crate::chain::backends;
use crate::chain::{Chain, ChainError, ChainTransfer, TransferStatus};
use crate::chain::{deposit_names, reorg};
use crate::db::PgPool;
use crate::ledger::movement::Movement;
use crate::ledger::store::{self, ChainFields, NewRow};
use crate::ledger::{
    Currency, CurrencyKind, CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionStatus,
    TransactionType, input, money, wallet,
};
use crate::schema::{chain_scan_cursors, legacy_token_deposits, transactions, wallets};

impl From<ChainError> for LedgerError {
    fn from(e: ChainError) -> Self {
        LedgerError::ChainUnavailable(e.to_string())
    }
}

/// `processCryptoDeposit`: checks the transfer on chain — it exists, succeeded, pays this
/// wallet's address and has the network's confirmations — and credits it once. Calling
/// it again, or racing the watcher or another call, returns the same credit.
pub async fn process_deposit(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    chain: &dyn Chain,
    scope: &Scope,
    wallet_id: i64,
    hash: &str,
) -> Result<Movement, LedgerError> {
    let (wallet, currency, network, address) =
        wallet::find_crypto_wallet(conn, currencies, scope, wallet_id, "chain deposits").await?;
    let hash = hash.trim();
    input::check_key("txHash", hash)?;
    crate::chain::gas_funding::refuse_as_deposit(conn, &network, hash).await?;
    let transfer = chain
        .transfer(&network, hash)
        .await?
        .ok_or(LedgerError::NotFound("chain transaction"))?;
    if !currency.is_asset(transfer.asset.as_deref()) {
        return Err(LedgerError::AddressMismatch(format!(
            "transaction {hash} does not move {}",
            currency.code
        )));
    }
    if transfer.to_address != address {
        return Err(LedgerError::AddressMismatch(format!(
            "transaction {hash} pays {}, not this wallet's address {address}",
            transfer.to_address
        )));
    }
    if transfer.status == TransferStatus::Failed {
        return Err(LedgerError::BadInput(format!(
            "transaction {hash} failed on chain"
        )));
    }
    if transfer.amount <= Decimal::ZERO {
        return Err(LedgerError::BadInput(format!(
            "transaction {hash} moves no {}",
            currency.code
        )));
    }
    let required = i64::from(required_confirmations(currency));
    if transfer.confirmations < required {
        return Err(LedgerError::InsufficientConfirmations {
            current: transfer.confirmations,
            required,
        });
    }
    // Asked by name, a parked deposit is tried again (what parked it may have passed).
    let observed = observe(conn, chain, currency, wallet.id, &transfer, Parked::Retry).await?;
    match observed.credit {
        Some(credit) => Ok(Movement {
            entry: credit,
            replayed: !observed.credited_now,
        }),
        None if observed.hold.status == TransactionStatus::Parked => {
            Err(LedgerError::InvalidAmount(format!(
                "the deposit is parked: {}",
                observed
                    .hold
                    .status_reason
                    .as_deref()
                    .unwrap_or("it cannot be credited")
            )))
        }
        // Checked above; the chain cannot have lost confirmations in between.
        None => Err(LedgerError::InsufficientConfirmations {
            current: transfer.confirmations,
            required,
        }),
    }
}

/// What [`observe`] does with a deposit parked earlier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parked {
    /// Leave it as it is (the watcher: a parked deposit must not cost every pass).
    Keep,
    /// Try to credit it again (a client asked for it by name).
    Retry,
}

fn required_confirmations(currency: &Currency) -> i32 {
    currency.required_confirmations.unwrap_or(1)
}

/// What [`observe`] found and did.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The deposit's hold as it is now.
    pub hold: JournalEntry,
    /// The credit posting, once there is one.
    pub credit: Option<JournalEntry>,
    /// This call posted the credit.
    pub credited_now: bool,
    /// This call parked the deposit.
    pub parked_now: bool,
}

/// Brings a deposit's journal up to date with the chain: records the hold if it is new,
/// its confirmations and block, fails it if the transfer failed, and credits it at the
/// threshold. The caller has checked that `transfer` pays wallet `wallet_id`.
///
/// A deposit that cannot be credited as it is — an amount finer than the currency's
/// scale (never rounded), or a credit above the currency's maximum balance — is *parked*
/// with its reason instead of failing: the callers move on to the next deposit.
pub async fn observe(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    currency: &Currency,
    wallet_id: i64,
    transfer: &ChainTransfer,
    parked: Parked,
) -> Result<Observed, LedgerError> {
    // A name means one log only once the holds of its transaction named before have
    // their names now (asked of the chain before the transaction opens).
    if transfer.asset.is_some()
        && let Some((tx_hash, _)) = transfer.hash.split_once(':')
    {
        deposit_names::resolve(conn, chain, &transfer.network, tx_hash).await?;
    }
    store::retried!(conn, |tx| {
        observe_in(tx, currency, wallet_id, transfer, parked).await
    })
}

async fn observe_in(
    conn: &mut AsyncPgConnection,
    currency: &Currency,
    wallet_id: i64,
    transfer: &ChainTransfer,
    parked: Parked,
) -> Result<Observed, LedgerError> {
    // Every writer of a deposit takes the wallet lock first: one of them records, the
    // others see its row.
    let mut wallet = store::lock_wallet(conn, &Scope::All, wallet_id).await?;
    let required = required_confirmations(currency);
    let confirmations = i32::try_from(transfer.confirmations).unwrap_or(i32::MAX);
    let mut chain = ChainFields {
        network: transfer.network.clone(),
        from_address: transfer.from_address.clone(),
        to_address: transfer.to_address.clone(),
        chain_tx_hash: Some(transfer.hash.clone()),
        confirmations,
        required_confirmations: required,
        block_number: transfer.block_number,
        ..ChainFields::default()
    };

    let hold = match store::find_chain_deposit(conn, &transfer.network, &transfer.hash).await? {
        Some(existing) if existing.wallet_id != wallet.id => {
            return Err(LedgerError::AddressMismatch(format!(
                "transaction {} was credited to another wallet",
                transfer.hash
            )));
        }
        // Credited directly, before deposits were held: nothing left to do.
        Some(existing) if !existing.hold => {
            return Ok(Observed {
                hold: existing.clone(),
                credit: Some(existing),
                credited_now: false,
                parked_now: false,
            });
        }
        Some(existing) => existing,
        None => {
            // The chain's amount exactly as it is: if it is finer than the currency's
            // scale, the deposit is parked below rather than rounded.
            let amount = match money::check_scale(transfer.amount, currency) {
                Ok(()) => money::at_scale(transfer.amount, currency),
                Err(_) => transfer.amount,
            };
            let row = NewRow {
                kind: TransactionType::Deposit,
                amount,
                fee: Decimal::ZERO,
                status: TransactionStatus::Pending,
                key: &transfer.hash,
                description: None,
                hold: true,
                settles: None,
                chain: Some(&chain),
                scale: currency.scale(),
                network_fee: None,
                annotation: Default::default(),
                reverses: None,
                settles_hold: None,
            };
            let hold = store::append(conn, &wallet, &row, Decimal::ZERO).await?;
            wallet.updated_at = hold.created_at;
            hold
        }
    };

    let on_chain = transfer.block_number.is_some();
    if hold.status == TransactionStatus::Reorged
        && on_chain
        && transfer.status == TransferStatus::Success
    {
        return mined_again(conn, currency, &wallet, hold, chain).await;
    }
    // A dropped deposit seen again is held again (and credited once at the threshold).
    let back = (hold.status == TransactionStatus::Dropped)
        .then_some("held again: its transaction is back after a reorganisation had dropped it");
    let retry = hold.status == TransactionStatus::Parked && parked == Parked::Retry;
    if hold.status != TransactionStatus::Pending && back.is_none() && !retry {
        let credit = credit_of(conn, hold.id).await?;
        return Ok(Observed {
            hold,
            credit,
            credited_now: false,
            parked_now: false,
        });
    }
    if transfer.status == TransferStatus::Failed {
        let hold = update_hold(
            conn,
            &hold,
            TransactionStatus::Failed,
            &chain,
            Some("the transfer failed on chain"),
        )
        .await?;
        return Ok(Observed {
            hold,
            credit: None,
            credited_now: false,
            parked_now: false,
        });
    }
    if transfer.status == TransferStatus::Success && confirmations >= required {
        let creditable = money::check_scale(hold.amount, currency)
            .and_then(|()| money::check_credit(&wallet, hold.amount, currency));
        if let Err(why) = creditable {
            let reason = format!("not credited: {}", why.message());
            let was_parked = hold.status == TransactionStatus::Parked;
            let hold = if was_parked {
                hold
            } else {
                tracing::warn!(hash = transfer.hash, %reason, "deposit parked");
                update_hold(
                    conn,
                    &hold,
                    TransactionStatus::Parked,
                    &chain,
                    Some(&reason),
                )
                .await?
            };
            return Ok(Observed {
                hold,
                credit: None,
                credited_now: false,
                parked_now: !was_parked,
            });
        }
        chain.chain_tx_hash = hold.chain_tx_hash.clone();
        let row = NewRow {
            kind: TransactionType::Deposit,
            amount: hold.amount,
            fee: Decimal::ZERO,
            status: TransactionStatus::Completed,
            key: &hold.tx_hash,
            description: None,
            hold: false,
            settles: Some(hold.id),
            chain: Some(&chain),
            scale: currency.scale(),
            network_fee: None,
            annotation: Default::default(),
            reverses: None,
            settles_hold: None,
        };
        let credit = store::append(conn, &wallet, &row, Decimal::ZERO).await?;
        let hold = update_hold(conn, &hold, TransactionStatus::Completed, &chain, back).await?;
        return Ok(Observed {
            hold,
            credit: Some(credit),
            credited_now: true,
            parked_now: false,
        });
    }
    let hold = if back.is_some()
        || hold.confirmations != Some(confirmations)
        || hold.block_number != chain.block_number
    {
        update_hold(conn, &hold, TransactionStatus::Pending, &chain, back).await?
    } else {
        hold
    };
    Ok(Observed {
        hold,
        credit: None,
        credited_now: false,
        parked_now: false,
    })
}

/// Moves a hold's status and chain progress on (each update is a `transactionUpdated`);
/// `reason` says why it failed or was parked.
pub(crate) async fn update_hold(
    conn: &mut AsyncPgConnection,
    hold: &JournalEntry,
    status: TransactionStatus,
    chain: &ChainFields,
    reason: Option<&str>,
) -> Result<JournalEntry, LedgerError> {
    Ok(diesel::update(transactions::table.find(hold.id))
        .set((
            transactions::status.eq(status),
            transactions::status_reason.eq(reason.or(hold.status_reason.as_deref())),
            transactions::confirmations.eq(chain.confirmations),
            transactions::block_number.eq(chain.block_number),
            transactions::updated_at.eq(diesel::dsl::now),
        ))
        .returning(JournalEntry::as_returning())
        .get_result(conn)
        .await?)
}

/// A held deposit whose transfer neither the chain nor the node has any more (a
/// reorganisation took it off the chain): DROPPED, with the reason. Held again, and
/// credited once, if it is mined again.
async fn drop_deposit(
    conn: &mut AsyncPgConnection,
    network: &str,
    hold_id: i64,
) -> Result<(), LedgerError> {
    store::retried!(conn, |tx| { drop_deposit_in(tx, network, hold_id).await })
}

async fn drop_deposit_in(
    conn: &mut AsyncPgConnection,
    network: &str,
    hold_id: i64,
) -> Result<(), LedgerError> {
    let hold = locked_hold(conn, hold_id).await?;
    if hold.status != TransactionStatus::Pending {
        return Ok(());
    }
    let reason = match hold.block_number {
        Some(block) => format!(
            "dropped: a reorganisation took its transaction out of block {block} and the \
             node no longer has it; held again if it is mined again"
        ),
        None => {
            "dropped: the node no longer has its transaction; held again if it is mined".to_owned()
        }
    };
    tracing::warn!(
        hash = hold.tx_hash,
        network,
        "a held deposit left the chain: dropped"
    );
    metrics::counter!("wallet_deposits_dropped_total", "network" => network.to_owned())
        .increment(1);
    update_hold(
        conn,
        &hold,
        TransactionStatus::Dropped,
        &off_chain(),
        Some(&reason),
    )
    .await?;
    Ok(())
}

/// Hold `hold_id`, read again under its wallet's lock, like every writer of a deposit
/// takes it (a watcher may be recording it in its new block right now).
async fn locked_hold(
    conn: &mut AsyncPgConnection,
    hold_id: i64,
) -> Result<JournalEntry, LedgerError> {
    let wallet_id: i64 = transactions::table
        .find(hold_id)
        .select(transactions::wallet_id)
        .first(conn)
        .await?;
    store::lock_wallet(conn, &Scope::All, wallet_id).await?;
    Ok(transactions::table
        .find(hold_id)
        .select(JournalEntry::as_select())
        .first(conn)
        .await?)
}

/// Chain progress of a movement whose transaction is on no block: no confirmations.
pub(crate) fn off_chain() -> ChainFields {
    ChainFields {
        confirmations: 0,
        block_number: None,
        ..ChainFields::default()
    }
}

/// A deposit's credit: the newest one (an earlier one may have been reversed).
async fn credit_of(
    conn: &mut AsyncPgConnection,
    hold_id: i64,
) -> Result<Option<JournalEntry>, LedgerError> {
    Ok(store::settlements_of(conn, &[hold_id])
        .await?
        .into_iter()
        .rev()
        .find(|p| p.kind == TransactionType::Deposit))
}

/// A deposit's credit that stands: its newest, unless an operator reversed it.
async fn standing_credit(
    conn: &mut AsyncPgConnection,
    hold_id: i64,
) -> Result<Option<JournalEntry>, LedgerError> {
    let Some(credit) = credit_of(conn, hold_id).await? else {
        return Ok(None);
    };
    let reversed = !crate::ledger::reversal::reversals_of(conn, &[credit.id])
        .await?
        .is_empty();
    Ok((!reversed).then_some(credit))
}

/// A REORGED deposit whose transaction is on the chain again. If its credit stands, the
/// flag is lifted. If an operator reversed the credit meanwhile, it is credited again —
/// once, at the confirmation threshold like any deposit — and then lifted; until then it
/// stays REORGED, its confirmations counting. (The database refuses a second credit of a
/// hold unless it makes good a reversal of the first.)
async fn mined_again(
    conn: &mut AsyncPgConnection,
    currency: &Currency,
    wallet: &crate::ledger::Wallet,
    hold: JournalEntry,
    chain: ChainFields,
) -> Result<Observed, LedgerError> {
    let unchanged = |hold: JournalEntry, credit: Option<JournalEntry>| Observed {
        hold,
        credit,
        credited_now: false,
        parked_now: false,
    };
    if let Some(credit) = standing_credit(conn, hold.id).await? {
        let hold = update_hold(
            conn,
            &hold,
            TransactionStatus::Completed,
            &chain,
            Some("mined again after a reorganisation had removed it"),
        )
        .await?;
        return Ok(unchanged(hold, Some(credit)));
    }
    if chain.confirmations < chain.required_confirmations {
        let hold = if hold.confirmations != Some(chain.confirmations)
            || hold.block_number != chain.block_number
        {
            update_hold(conn, &hold, TransactionStatus::Reorged, &chain, None).await?
        } else {
            hold
        };
        return Ok(unchanged(hold, None));
    }
    if let Err(why) = money::check_credit(wallet, hold.amount, currency) {
        tracing::warn!(
            hash = hold.tx_hash,
            reason = why.message(),
            "a deposit mined again cannot be credited again now; tried again next pass"
        );
        return Ok(unchanged(hold, None));
    }
    let mut chain = chain;
    chain.chain_tx_hash = hold.chain_tx_hash.clone();
    let row = NewRow {
        kind: TransactionType::Deposit,
        amount: hold.amount,
        fee: Decimal::ZERO,
        status: TransactionStatus::Completed,
        key: &hold.tx_hash,
        description: None,
        hold: false,
        settles: Some(hold.id),
        chain: Some(&chain),
        scale: currency.scale(),
        network_fee: None,
        annotation: Default::default(),
        reverses: None,
        settles_hold: None,
    };
    let credit = store::append(conn, wallet, &row, Decimal::ZERO).await?;
    tracing::warn!(
        hash = hold.tx_hash,
        "a deposit whose reorganised credit was reversed is mined again: credited again"
    );
    let hold = update_hold(
        conn,
        &hold,
        TransactionStatus::Completed,
        &chain,
        Some(
            "mined again after a reorganisation had removed it and its credit was reversed: \
             credited again",
        ),
    )
    .await?;
    Ok(Observed {
        hold,
        credit: Some(credit),
        credited_now: true,
        parked_now: false,
    })
}

/// What one [`scan`] of a network did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Deposits looked at (new ones and those still confirming).
    pub observed: usize,
    /// Deposits credited by this scan.
    pub credited: usize,
    /// Deposits parked by this scan (they cannot be credited as they are).
    pub parked: usize,
    /// Deposits that could not be recorded this time.
    pub errors: usize,
    /// The block the next scan starts after.
    pub cursor: i64,
    /// The earliest block holding a deposit that could not be recorded for a passing
    /// reason (the cursor stays before it).
    pub retry_from: Option<i64>,
    /// Credited deposits a reorganisation removed, flagged REORGED by this scan.
    pub reorged_deposits: usize,
    /// Completed withdrawals a reorganisation removed, flagged REORGED (and sent again)
    /// by this scan.
    pub reorged_withdrawals: usize,
}

/// Wallets whose deposits one scan records at the same time, each on a connection of its
/// own (deposits to one wallet stay in chain order, one after the other). Each deposit is
/// a short transaction of its own, so one at a time the watcher waits on round trips and
/// commit flushes, not on Postgres.
const PARALLEL_WALLETS: usize = 4;

/// The deposit watcher, one pass over a network: finds transfers to our addresses in the
/// blocks since the last scan (and those still pending), records each as a held deposit,
/// follows every deposit still confirming, and credits those that reached the threshold.
/// Safe to run in several processes at once: [`observe`] serialises on the wallet lock.
pub async fn scan(
    pool: &PgPool,
    currencies: &CurrencyRegistry,
    chain: &dyn Chain,
    network: &str,
) -> Result<ScanReport, LedgerError> {
    if !currencies
        .all()
        .any(|c| c.kind == CurrencyKind::Crypto && c.network.as_deref() == Some(network))
    {
        return Err(LedgerError::CurrencyNotSupported(format!(
            "no currency on network {network:?}"
        )));
    }
    let backend = chain.backend(network)?;
    let mut conn = pool.get().await?;
    if !backends::serves(&mut conn, network, &backend).await? {
        return Err(LedgerError::ChainUnavailable(format!(
            "{network} is served by another backend now: this process leaves it alone"
        )));
    }
    let cursor: i64 = chain_scan_cursors::table
        .find((network, &backend))
        .select(chain_scan_cursors::block)
        .first(&mut conn)
        .await
        .optional()?
        .unwrap_or(0);
    deposit_names::resolve_some(&mut conn, chain, network).await?;
    // Read the tip first: a block mined during the scan is scanned again next time
    // (observing is idempotent), never skipped.
    let tip = chain.tip(network).await?;
    let scanned = chain.transfers_since(network, cursor).await;
    // Reorganisations not followed to the end yet, whether the scan went through or not:
    // one it found (blocks already scanned were replaced, and what was completed above
    // the shared block may have left the chain with them), or one found earlier by any
    // process.
    let settled = reorg::settle(&mut conn, chain, network, &backend).await?;
    let mut transfers = scanned?.transfers;
    // An operator's gas funding of a wallet's address is not the customer's deposit.
    crate::chain::gas_funding::claim(&mut conn, network, &mut transfers).await?;

    let addresses: BTreeSet<&str> = transfers.iter().map(|t| t.to_address.as_str()).collect();
    // Our addresses, each with its wallet and currency: a transfer is a deposit when it
    // moves that currency (the network's coin, or that token).
    let ours: HashMap<String, (i64, String)> = wallets::table
        .filter(wallets::network.eq(network))
        .filter(wallets::address.eq_any(addresses))
        .select((
            wallets::address.assume_not_null(),
            wallets::id,
            wallets::currency,
        ))
        .load::<(String, i64, String)>(&mut conn)
        .await?
        .into_iter()
        .map(|(address, id, currency)| (address, (id, currency)))
        .collect();
    transfers.retain(|t| {
        ours.get(&t.to_address).is_some_and(|(_, code)| {
            currencies
                .get(code)
                .is_some_and(|c| c.is_asset(t.asset.as_deref()))
        })
    });

    // Deposits seen before and still confirming, whose blocks are behind the cursor (and
    // those a reorganisation removed, in case they are mined again).
    let seen: BTreeSet<String> = transfers.iter().map(|t| t.hash.clone()).collect();
    let confirming = transactions::table
        .inner_join(wallets::table)
        .left_join(legacy_token_deposits::table)
        // Spelled as the partial indexes that serve it (open holds, dropped deposits,
        // REORGED holds: each mined again is followed to its threshold).
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "((transactions.hold AND transactions.status IN ('PENDING', 'PROCESSING'))
              OR (transactions.hold AND transactions.status = 'DROPPED')
              OR (transactions.hold AND transactions.status = 'REORGED'))",
        ))
        .filter(transactions::type_.eq(TransactionType::Deposit))
        .filter(transactions::status.eq_any([
            TransactionStatus::Pending,
            TransactionStatus::Dropped,
            TransactionStatus::Reorged,
        ]))
        .filter(transactions::network.eq(network))
        .order(transactions::id)
        .select((
            transactions::id,
            transactions::wallet_id,
            wallets::currency,
            transactions::tx_hash,
            legacy_token_deposits::hold_id.nullable(),
            legacy_token_deposits::name.nullable(),
        ))
        .load::<(i64, i64, String, String, Option<i64>, Option<String>)>(&mut conn)
        .await?;
    // Each wallet's work in chain order: new transfers, then those still confirming.
    let mut work: BTreeMap<i64, (String, Vec<Deposit>)> = BTreeMap::new();
    for t in transfers {
        // Nothing to credit (a contract call, say): not a deposit.
        if t.amount > Decimal::ZERO
            && let Some((wallet_id, code)) = ours.get(&t.to_address)
        {
            work.entry(*wallet_id)
                .or_insert_with(|| (code.clone(), Vec::new()))
                .1
                .push(Deposit::Seen(Box::new(t)));
        }
    }
    for (hold_id, wallet_id, code, key, legacy, legacy_name) in confirming {
        // Its name now (a token deposit named before: once resolved).
        let name = match legacy {
            Some(_) => legacy_name,
            None => Some(key),
        };
        if name.as_ref().is_none_or(|n| !seen.contains(n)) {
            work.entry(wallet_id)
                .or_insert_with(|| (code, Vec::new()))
                .1
                .push(Deposit::Confirming { hold_id, name });
        }
    }

    // No connection is held while waiting for others (that could starve the pool).
    drop(conn);
    let work: Vec<(i64, Currency, Vec<Deposit>)> = work
        .into_iter()
        .filter_map(|(wallet_id, (code, deposits))| {
            Some((wallet_id, currencies.get(&code)?.clone(), deposits))
        })
        .collect();
    let reports: Vec<ScanReport> = futures_util::stream::iter(work)
        .map(|(wallet_id, currency, deposits)| async move {
            observe_wallet(pool, &currency, chain, network, wallet_id, deposits).await
        })
        .buffer_unordered(PARALLEL_WALLETS)
        .collect()
        .await;
    // The next scan starts after the tip — or before the first block holding a deposit
    // that could not be recorded for a passing reason (see `observe_wallet`).
    let mut report = ScanReport {
        reorged_deposits: settled.deposits,
        reorged_withdrawals: settled.withdrawals,
        ..ScanReport::default()
    };
    let mut next = tip.max(cursor);
    for r in reports {
        report.observed += r.observed;
        report.credited += r.credited;
        report.parked += r.parked;
        report.errors += r.errors;
        if let Some(block) = r.retry_from {
            next = next.min(block - 1).max(cursor);
        }
    }
    report.cursor = next;
    if next == cursor {
        return Ok(report);
    }
    let mut conn = pool.get().await?;
    diesel::insert_into(chain_scan_cursors::table)
        .values((
            chain_scan_cursors::network.eq(network),
            chain_scan_cursors::backend.eq(&backend),
            chain_scan_cursors::block.eq(next),
        ))
        .on_conflict((chain_scan_cursors::network, chain_scan_cursors::backend))
        .do_update()
        .set(
            chain_scan_cursors::block.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "GREATEST(chain_scan_cursors.block, excluded.block)",
            )),
        )
        .execute(&mut conn)
        .await?;
    Ok(report)
}

/// A deposit a scan looks at: one found in the new blocks, or one recorded before and
/// still confirming (known by its hash).
enum Deposit {
    Seen(Box<ChainTransfer>),
    /// A hold, and its name now (`None`: named before, not resolved yet).
    Confirming {
        hold_id: i64,
        name: Option<String>,
    },
}

/// Records and follows one wallet's deposits, in order, on a connection of its own. A
/// deposit that cannot be recorded for a passing reason (the database or the chain away)
/// sets `retry_from` to its block, so that the cursor stops before it and the next scan
/// finds it again. One refused for what it is does not: it is parked, or (if it cannot
/// even be journaled) logged and left to reconciliation, which lists it as on chain only.
async fn observe_wallet(
    pool: &PgPool,
    currency: &Currency,
    chain: &dyn Chain,
    network: &str,
    wallet_id: i64,
    deposits: Vec<Deposit>,
) -> ScanReport {
    fn hold_back(report: &mut ScanReport, transfer: &ChainTransfer) {
        if let Some(block) = transfer.block_number {
            report.retry_from = Some(report.retry_from.map_or(block, |b| b.min(block)));
        }
    }
    let mut report = ScanReport::default();
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(wallet_id, error = %e, "no connection to record deposits");
            for d in &deposits {
                report.errors += 1;
                if let Deposit::Seen(t) = d {
                    hold_back(&mut report, t);
                }
            }
            return report;
        }
    };
    for deposit in deposits {
        let transfer = match deposit {
            Deposit::Seen(t) => *t,
            // One the chain cannot tell about now is asked again next pass (it stays open).
            Deposit::Confirming { hold_id, name } => {
                match confirming_transfer(&mut conn, chain, network, hold_id, name).await {
                    Ok(Some(t)) => t,
                    // Gone from the chain and from the node (a reorganisation dropped it):
                    // DROPPED until it is mined again; asked again every pass.
                    Ok(None) => {
                        if let Err(e) = drop_deposit(&mut conn, network, hold_id).await {
                            report.errors += 1;
                            tracing::warn!(hold_id, error = ?e, "could not mark a deposit dropped");
                        }
                        continue;
                    }
                    Err(e) => {
                        report.errors += 1;
                        tracing::warn!(hold_id, error = ?e, "could not follow a deposit");
                        continue;
                    }
                }
            }
        };
        match observe(
            &mut conn,
            chain,
            currency,
            wallet_id,
            &transfer,
            Parked::Keep,
        )
        .await
        {
            Ok(observed) => {
                report.observed += 1;
                report.credited += usize::from(observed.credited_now);
                report.parked += usize::from(observed.parked_now);
            }
            Err(e) => {
                report.errors += 1;
                let passing = e.is_transient()
                    || e.is_unavailable()
                    || matches!(
                        e,
                        LedgerError::ChainUnavailable(_) | LedgerError::OutcomeUnknown(_)
                    );
                tracing::error!(hash = transfer.hash, passing, error = ?e, "could not record a deposit");
                if passing {
                    hold_back(&mut report, &transfer);
                }
            }
        }
    }
    report
}

/// The transfer of a deposit still confirming, as the chain has it now (`None`: gone).
async fn confirming_transfer(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    network: &str,
    hold_id: i64,
    name: Option<String>,
) -> Result<Option<ChainTransfer>, LedgerError> {
    let name = match name {
        Some(name) => Some(name),
        None => {
            let hold: JournalEntry = transactions::table
                .find(hold_id)
                .select(JournalEntry::as_select())
                .first(conn)
                .await?;
            deposit_names::current_name(conn, chain, network, &hold).await?
        }
    };
    match name {
        Some(name) => Ok(chain.transfer(network, &name).await?),
        None => Ok(None),
    }
}
