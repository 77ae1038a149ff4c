//! Crypto withdrawals through a node of an account-based network (ethereum): the same
//! journal states as [`crate::chain::withdrawal`], with what a real chain adds — nonces,
//! fees known only once mined, replacement of a transaction that is not mined in time.
//!
//! 1. `cryptoWithdraw` journals the hold and locks amount + the most the network's fee
//!    may be (gas limit × max fee per gas), as for every network.
//! 2. [`sign_next`] claims a PENDING withdrawal, allocates the next nonce of its source
//!    address (`chain_nonces`, never below the node's count), signs an EIP-1559
//!    transaction with the wallet's derived key and, in one database transaction, stores
//!    it as the withdrawal's first attempt (`withdrawal_attempts`) and moves the hold to
//!    PROCESSING. Nothing is debited yet: the fee is not known. Then the stored bytes are
//!    broadcast.
//! 3. [`advance`] follows every PROCESSING withdrawal: whichever of its attempts the chain
//!    includes is the withdrawal's (they share a nonce, so at most one can be). At the
//!    network's confirmation threshold the debit is posted once with what the chain
//!    charged (`gasUsed × effectiveGasPrice`) and the lock is released, difference and
//!    all; a reverted transaction still paid its gas, so it is debited and the amount
//!    alone refunded. An attempt the node does not know (never sent, or forgotten) is
//!    sent again from its stored bytes; one the node holds but has not mined for
//!    `replace_after_blocks` is replaced by a new attempt with the same nonce and higher
//!    fees, locking more if the user pays the network's fee and has it.
//!
//! No transaction offers more per gas than the service's cap
//! ([`AccountChain::max_fee_per_gas`], `WALLET_ETHEREUM_MAX_FEE_PER_GAS_GWEI`), whoever
//! pays its fee: a first attempt asks at most the cap, and while the network's base fee
//! is above the cap it is not signed at all (it could not be mined, and a nonce given to
//! it would hold up the address's later withdrawals); it stays PENDING, with its lock,
//! and is counted in the pass's report until fees fall or the cap is raised. A
//! replacement that would have to go beyond the cap is not made: the attempt sent stays,
//! to be mined when fees fall. What the user is charged never exceeds what was locked.
//!
//! An address has one unmined transaction at a time: a withdrawal is signed only when
//! the address's earlier ones are mined (the others wait, PENDING). So a withdrawal the
//! node refuses because its address cannot pay for it (`insufficient funds`) — and none
//! of whose attempts the node holds — can fail: FAILED with the node's reason, its
//! attempts marked refused, its nonce given back to the address, its lock released
//! (nothing was debited). It never waits PROCESSING for funds that will not come.
//!
//! A token withdrawal's gas is ether paid by the token wallet's address. It is signed
//! only if the address's gas funding ([`crate::chain::gas_funding`]: what operators put there,
//! less the gas already spent and the most its withdrawals in flight may still spend)
//! covers the most it may cost; otherwise it fails unsent, with its reason. Its debit
//! records the gas (`gasUsed`, `gasPrice`), and the database posts it in ether:
//! `custody` +gas, `network_fees` −gas.
//!
//! A process dying between any two steps leaves a state the next pass picks up: the
//! stored bytes are sent again (the chain knows a transaction by its hash), a nonce is
//! never given to two withdrawals, and the debit is posted once, by the pass that moves
//! the hold out of PROCESSING under its row lock.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::chain::deposit::{off_chain, update_hold};
use crate::chain::gas_funding;
use crate::chain::withdrawal::{
    AdvanceReport, Advanced, fail_unsent, fail_unsigned, release_lock, signing_details,
};
use crate::chain::{
    AccountChain, Chain, ChainError, ChainTransfer, Fee, GasFees, NonceTransfer, SignedTransfer,
    TransferStatus,
};
use crate::custody::Custody;
use crate::ledger::models::Scaled;
use crate::ledger::store::{self, Annotation, ChainFields, NewRow};
use crate::ledger::{
    CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionStatus, TransactionType, Wallet,
};
use crate::schema::{chain_nonces, transactions, withdrawal_attempts};

/// One signed transaction of a withdrawal.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = withdrawal_attempts)]
struct Attempt {
    id: i64,
    nonce: i64,
    hash: String,
    raw: String,
    max_fee_per_gas: Decimal,
    max_priority_fee_per_gas: Decimal,
    gas_limit: i64,
    locked_fee: Decimal,
    signed_at_height: i64,
}

impl Attempt {
    fn fees(&self) -> GasFees {
        let wei = |d: Decimal| u128::try_from(d).unwrap_or(u128::MAX);
        GasFees {
            max_fee_per_gas: wei(self.max_fee_per_gas),
            max_priority_fee_per_gas: wei(self.max_priority_fee_per_gas),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = withdrawal_attempts)]
struct NewAttempt<'a> {
    transaction_id: i64,
    network: &'a str,
    from_address: &'a str,
    nonce: i64,
    replaces: Option<i64>,
    hash: &'a str,
    raw: &'a str,
    max_fee_per_gas: Decimal,
    max_priority_fee_per_gas: Decimal,
    gas_limit: i64,
    locked_fee: Scaled,
    signed_at_height: i64,
}

fn accounts<'c>(chain: &'c dyn Chain, network: &str) -> Result<&'c dyn AccountChain, LedgerError> {
    chain.accounts(network).ok_or_else(|| {
        LedgerError::ChainUnavailable(format!("{network} is not served by a node here"))
    })
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A network fee in the wallet's currency, rounded up to its scale (never less than the
/// chain charged).
fn at_scale_up(amount: Decimal, scale: u32) -> Decimal {
    let mut up = amount.round_dp_with_strategy(scale, RoundingStrategy::AwayFromZero);
    up.rescale(scale);
    up
}

/// The fees an attempt signs with and what the wallet then has locked for its fee.
///
/// When the user pays the network's fee (`pays`), the lock must cover the attempt's
/// worst case (gas limit × max fee): what is missing is locked if the wallet has it
/// available, otherwise the fees are capped at what is locked. Otherwise the service pays
/// the gas and nothing more is locked.
struct Priced {
    fees: GasFees,
    locked_fee: Decimal,
    extra_lock: Decimal,
}

fn price(
    accounts: &dyn AccountChain,
    wanted: GasFees,
    gas_limit: u64,
    pays: bool,
    locked: Decimal,
    wallet: &Wallet,
    scale: u32,
) -> Result<Priced, LedgerError> {
    if !pays {
        return Ok(Priced {
            fees: wanted,
            locked_fee: Decimal::ZERO,
            extra_lock: Decimal::ZERO,
        });
    }
    let worst =
        accounts.coin_amount(wanted.max_fee_per_gas.saturating_mul(u128::from(gas_limit)))?;
    let worst = at_scale_up(worst, scale);
    if worst <= locked {
        return Ok(Priced {
            fees: wanted,
            locked_fee: locked,
            extra_lock: Decimal::ZERO,
        });
    }
    let extra = worst - locked;
    if extra <= wallet.available_balance() {
        return Ok(Priced {
            fees: wanted,
            locked_fee: worst,
            extra_lock: extra,
        });
    }
    // Capped: the most per gas the lock pays for.
    let max_fee_per_gas = accounts.wei(locked)? / u128::from(gas_limit.max(1));
    Ok(Priced {
        fees: GasFees {
            max_fee_per_gas,
            max_priority_fee_per_gas: wanted.max_priority_fee_per_gas.min(max_fee_per_gas),
        },
        locked_fee: locked,
        extra_lock: Decimal::ZERO,
    })
}

/// Whether the user pays the network's fee for withdrawals of the wallet's currency (the
/// network's coin with no configured withdrawal fee): then the lock follows the fee.
fn user_pays_network_fee(currencies: &CurrencyRegistry, wallet: &Wallet) -> bool {
    currencies
        .get(&wallet.currency)
        .is_some_and(|c| c.contract_address.is_none())
        && currencies.withdrawal_fee(&wallet.currency).is_none()
}

fn asset_of(currencies: &CurrencyRegistry, wallet: &Wallet) -> Option<String> {
    currencies
        .get(&wallet.currency)
        .and_then(|c| c.contract_address.clone())
}

/// What a withdrawal has locked for its fee: the most any of its attempts locked.
fn fee_lock(hold: &JournalEntry, attempts: &[Attempt]) -> Decimal {
    attempts
        .iter()
        .map(|a| a.locked_fee)
        .fold(hold.fee, Decimal::max)
}

/// Step 2: claims the oldest PENDING withdrawal after `after` on one of `networks` that
/// no other worker holds, allocates its nonce, signs it and stores it as its first
/// attempt. Returns the transfer to broadcast, or `None` when none waits. `after` moves
/// like [`crate::chain::withdrawal::sign_next`]'s; withdrawals passed over because the
/// network's base fee is above the cap are added to `capped`.
pub async fn sign_next(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    custody: &Custody,
    chain: &dyn Chain,
    networks: &[String],
    after: &mut i64,
    capped: &mut Vec<i64>,
) -> Result<Option<SignedTransfer>, LedgerError> {
    loop {
        let tried = std::sync::atomic::AtomicI64::new(*after);
        let signing = sign_one(conn, currencies, custody, chain, networks, *after, &tried).await;
        *after = tried.into_inner();
        match signing? {
            Signing::Idle => return Ok(None),
            Signing::Signed(signed) => return Ok(Some(signed)),
            Signing::Skipped => continue,
            Signing::Capped(id) => {
                capped.push(id);
                continue;
            }
        }
    }
}

enum Signing {
    /// No withdrawal waits.
    Idle,
    Signed(SignedTransfer),
    /// This one is not for this worker now (taken by another, or failed for good): the
    /// next is tried.
    Skipped,
    /// This one waits: the network asks more than the cap (the next is tried).
    Capped(i64),
}

async fn sign_one(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    custody: &Custody,
    chain: &dyn Chain,
    networks: &[String],
    after: i64,
    tried: &std::sync::atomic::AtomicI64,
) -> Result<Signing, LedgerError> {
    // The next candidate, read without a lock: the node is asked before any transaction
    // opens (a slow node must not hold rows or the wallet's other movements).
    let Some(candidate) = transactions::table
        .filter(store::open_hold())
        .filter(transactions::type_.eq(TransactionType::Withdraw))
        .filter(transactions::status.eq(TransactionStatus::Pending))
        .filter(transactions::network.eq_any(networks))
        .filter(transactions::id.gt(after))
        .order(transactions::id)
        .select(JournalEntry::as_select())
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(Signing::Idle);
    };
    tried.store(candidate.id, std::sync::atomic::Ordering::Relaxed);
    let (Some(network), Some(from)) = (
        candidate.network.as_deref(),
        candidate.from_address.as_deref(),
    ) else {
        return Err(LedgerError::Internal(format!(
            "withdrawal {} has no network or source address",
            candidate.id
        )));
    };
    let accounts = accounts(chain, network)?;
    let quote = accounts.gas_fees().await?;
    let wanted = quote.wanted.capped(accounts.max_fee_per_gas());
    if wanted.max_fee_per_gas < quote.base_fee_per_gas {
        tracing::debug!(
            id = candidate.id,
            base_fee_per_gas = quote.base_fee_per_gas,
            cap = accounts.max_fee_per_gas(),
            "withdrawal waits: the network's base fee is above the fee cap"
        );
        return Ok(Signing::Capped(candidate.id));
    }
    let height = chain.tip(network).await?;
    let on_chain_nonce = accounts.pending_nonce(from).await?;
    let backend = chain.backend(network)?;
    store::retried!(conn, |tx| {
        // Still waiting, and no other worker on it (else the next one is tried).
        let Some(hold) = transactions::table
            .find(candidate.id)
            .filter(transactions::status.eq(TransactionStatus::Pending))
            .select(JournalEntry::as_select())
            .for_update()
            .skip_locked()
            .first(tx)
            .await
            .optional()?
        else {
            return Ok(Signing::Skipped);
        };
        let wallet = store::lock_wallet(tx, &Scope::All, hold.wallet_id).await?;
        let (network, from, to, path) = match signing_details(custody, &hold, &wallet) {
            Ok(details) => details,
            Err(reason) => {
                fail_unsigned(tx, &hold, &wallet, reason).await?;
                return Ok(Signing::Skipped);
            }
        };
        let asset = asset_of(currencies, &wallet);
        let gas_limit = accounts.gas_limit(asset.as_deref());
        // One unmined transaction per address: a later nonce is never given while an
        // earlier one may still be refused (then its nonce goes back to the address, and
        // no transaction signed after it waits forever on it).
        lock_nonces(tx, network, &backend, from, on_chain_nonce).await?;
        if unmined_withdrawal_of(tx, network, from, hold.id).await? {
            return Ok(Signing::Skipped);
        }
        if asset.is_some() {
            // A token's gas is ether at the address, which must be gas funding the ledger
            // knows of: never ether the ledger does not (a customer's, or nobody's).
            let worst = accounts
                .coin_amount(wanted.max_fee_per_gas.saturating_mul(u128::from(gas_limit)))?;
            let committed = accounts.coin_amount(in_flight_gas_wei(tx, network, from).await?)?;
            let float = gas_funding::float_of_address(tx, network, from).await? - committed;
            if float < worst {
                let reason = format!(
                    "not sent: its address's gas funding ({} {coin} available) cannot pay its \
                     network fee (up to {worst} {coin}); fund the address's gas (fundGas) \
                     and withdraw again",
                    float.max(Decimal::ZERO).normalize(),
                    coin = gas_coin(currencies, network),
                );
                tracing::warn!(id = hold.id, %float, %worst, "token withdrawal without gas funding: failed");
                fail_unsent(tx, &hold, &wallet, hold.amount + hold.fee, &reason).await?;
                return Ok(Signing::Skipped);
            }
        }
        let priced = price(
            accounts,
            wanted,
            gas_limit,
            user_pays_network_fee(currencies, &wallet),
            hold.fee,
            &wallet,
            hold.amount.scale(),
        )?;
        let nonce = take_nonce(tx, network, &backend, from, on_chain_nonce).await?;
        let signed = sign_attempt(
            tx,
            custody,
            accounts,
            Attempting {
                hold: &hold,
                wallet: &wallet,
                network,
                from,
                to,
                path,
                asset,
                nonce,
                gas_limit,
                priced,
                replaces: None,
                height,
            },
        )
        .await?;
        diesel::update(transactions::table.find(hold.id))
            .set((
                transactions::status.eq(TransactionStatus::Processing),
                transactions::updated_at.eq(diesel::dsl::now),
            ))
            .execute(tx)
            .await?;
        Ok(Signing::Signed(signed))
    })
}

/// Locks `address`'s nonce counter on the chain of `backend` (nonces are that chain's)
/// for the rest of the transaction (recording it, at the node's count `on_chain`, the
/// first time): signing, and giving a nonce back, take it.
async fn lock_nonces(
    tx: &mut AsyncPgConnection,
    network: &str,
    backend: &str,
    address: &str,
    on_chain: u64,
) -> Result<(), LedgerError> {
    diesel::insert_into(chain_nonces::table)
        .values((
            chain_nonces::network.eq(network),
            chain_nonces::backend.eq(backend),
            chain_nonces::address.eq(address),
            chain_nonces::next_nonce.eq(as_i64(on_chain)),
        ))
        .on_conflict((
            chain_nonces::network,
            chain_nonces::backend,
            chain_nonces::address,
        ))
        .do_nothing()
        .execute(tx)
        .await?;
    chain_nonces::table
        .find((network, backend, address))
        .select(chain_nonces::next_nonce)
        .for_update()
        .first::<i64>(tx)
        .await?;
    Ok(())
}

/// The next nonce of `address` (its counter locked): one past the last this service gave
/// it, and never below the node's count of the address's transactions (`on_chain`).
async fn take_nonce(
    tx: &mut AsyncPgConnection,
    network: &str,
    backend: &str,
    address: &str,
    on_chain: u64,
) -> Result<u64, LedgerError> {
    let next: i64 = diesel::update(chain_nonces::table.find((network, backend, address)))
        .set(
            chain_nonces::next_nonce.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "GREATEST(chain_nonces.next_nonce, ",
            )
            .bind::<diesel::sql_types::BigInt, _>(as_i64(on_chain))
            .sql(") + 1")),
        )
        .returning(chain_nonces::next_nonce)
        .get_result(tx)
        .await?;
    u64::try_from(next - 1).map_err(|_| LedgerError::Internal("negative nonce".into()))
}

/// Whether another withdrawal from `address` is signed and not mined yet.
async fn unmined_withdrawal_of(
    tx: &mut AsyncPgConnection,
    network: &str,
    address: &str,
    except: i64,
) -> Result<bool, LedgerError> {
    Ok(diesel::select(diesel::dsl::exists(
        transactions::table
            .filter(store::open_hold())
            .filter(transactions::type_.eq(TransactionType::Withdraw))
            .filter(transactions::status.eq(TransactionStatus::Processing))
            .filter(transactions::network.eq(network))
            .filter(transactions::from_address.eq(address))
            .filter(transactions::block_number.is_null())
            .filter(transactions::id.ne(except)),
    ))
    .get_result(tx)
    .await?)
}

#[derive(QueryableByName)]
struct Wei {
    #[diesel(sql_type = diesel::sql_types::Numeric)]
    wei: Decimal,
}

/// The most gas (wei) `address`'s withdrawals signed but not yet debited may still cost:
/// their gas is posted only when they are debited.
async fn in_flight_gas_wei(
    tx: &mut AsyncPgConnection,
    network: &str,
    address: &str,
) -> Result<u128, LedgerError> {
    let row: Wei = diesel::sql_query(
        "SELECT COALESCE(sum(worst), 0) AS wei
           FROM (SELECT max(a.gas_limit * a.max_fee_per_gas) AS worst
                   FROM withdrawal_attempts a
                   JOIN transactions t ON t.id = a.transaction_id
                  WHERE t.hold AND t.type = 'WITHDRAW' AND t.status = 'PROCESSING'
                    AND t.network = $1 AND t.from_address = $2 AND a.refused IS NULL
                  GROUP BY a.transaction_id) AS attempts",
    )
    .bind::<diesel::sql_types::Text, _>(network)
    .bind::<diesel::sql_types::Text, _>(address)
    .get_result(tx)
    .await?;
    u128::try_from(row.wei).map_err(|_| LedgerError::Internal(format!("gas of {} wei", row.wei)))
}

/// The code of the coin `network`'s gas is paid in (for messages).
fn gas_coin(currencies: &CurrencyRegistry, network: &str) -> String {
    gas_funding::coin_of(currencies, network).map_or_else(|| network.to_owned(), |c| c.code.clone())
}

/// An attempt about to be signed.
struct Attempting<'a> {
    hold: &'a JournalEntry,
    wallet: &'a Wallet,
    network: &'a str,
    from: &'a str,
    to: &'a str,
    /// The wallet's key path.
    path: &'a str,
    asset: Option<String>,
    nonce: u64,
    gas_limit: u64,
    priced: Priced,
    /// The attempt it replaces (`None` for the first).
    replaces: Option<i64>,
    /// The chain's height now.
    height: i64,
}

/// Signs an attempt with the wallet's key, locks what its fee needs beyond the lock,
/// stores it and makes it the one the hold names. Returns it, ready to broadcast.
async fn sign_attempt(
    tx: &mut AsyncPgConnection,
    custody: &Custody,
    accounts: &dyn AccountChain,
    a: Attempting<'_>,
) -> Result<SignedTransfer, LedgerError> {
    let transfer = NonceTransfer {
        from_address: a.from.to_owned(),
        to_address: a.to.to_owned(),
        amount: a.hold.amount,
        asset: a.asset,
        nonce: a.nonce,
        fees: a.priced.fees,
        gas_limit: a.gas_limit,
    };
    let key = custody
        .ethereum_signer(a.path)
        .map_err(|e| LedgerError::Internal(format!("custody: {e}")))?;
    let (hash, raw) = accounts.sign(&transfer, &key)?;
    if a.priced.extra_lock > Decimal::ZERO {
        release_lock(tx, a.wallet, -a.priced.extra_lock).await?;
    }
    diesel::insert_into(withdrawal_attempts::table)
        .values(NewAttempt {
            transaction_id: a.hold.id,
            network: a.network,
            from_address: a.from,
            nonce: as_i64(a.nonce),
            replaces: a.replaces,
            hash: &hash,
            raw: &raw,
            max_fee_per_gas: Decimal::from(transfer.fees.max_fee_per_gas),
            max_priority_fee_per_gas: Decimal::from(transfer.fees.max_priority_fee_per_gas),
            gas_limit: as_i64(a.gas_limit),
            locked_fee: Scaled(a.priced.locked_fee),
            signed_at_height: a.height,
        })
        .execute(tx)
        .await?;
    name_attempt(tx, a.hold.id, &hash, &raw).await?;
    Ok(SignedTransfer {
        network: a.network.to_owned(),
        hash,
        from_address: transfer.from_address,
        to_address: transfer.to_address,
        amount: transfer.amount,
        fee: Fee::default(),
        raw,
    })
}

/// Points the hold at one of its attempts (the newest, or the one the chain included).
async fn name_attempt(
    tx: &mut AsyncPgConnection,
    hold_id: i64,
    hash: &str,
    raw: &str,
) -> Result<(), LedgerError> {
    diesel::update(transactions::table.find(hold_id))
        .filter(transactions::chain_tx_hash.is_distinct_from(hash))
        .set((
            transactions::chain_tx_hash.eq(hash),
            transactions::raw.eq(raw),
        ))
        .execute(tx)
        .await?;
    Ok(())
}

/// The hashes of the transactions signed for each of `hold_ids`, oldest first: (hold id,
/// hash) pairs.
pub async fn attempts_of_holds(
    conn: &mut AsyncPgConnection,
    hold_ids: &[i64],
) -> Result<Vec<(i64, String)>, LedgerError> {
    Ok(withdrawal_attempts::table
        .filter(withdrawal_attempts::transaction_id.eq_any(hold_ids))
        .order(withdrawal_attempts::id)
        .select((
            withdrawal_attempts::transaction_id,
            withdrawal_attempts::hash,
        ))
        .load(conn)
        .await?)
}

async fn attempts_of(
    conn: &mut AsyncPgConnection,
    hold_id: i64,
) -> Result<Vec<Attempt>, LedgerError> {
    Ok(withdrawal_attempts::table
        .filter(withdrawal_attempts::transaction_id.eq(hold_id))
        .order(withdrawal_attempts::id)
        .select(Attempt::as_select())
        .load(conn)
        .await?)
}

/// Step 3: follows every PROCESSING withdrawal on `networks`.
pub async fn advance(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    custody: &Custody,
    chain: &dyn Chain,
    networks: &[String],
) -> Result<AdvanceReport, LedgerError> {
    let processing: Vec<JournalEntry> = transactions::table
        .filter(store::open_hold())
        .filter(transactions::type_.eq(TransactionType::Withdraw))
        .filter(transactions::status.eq(TransactionStatus::Processing))
        .filter(transactions::network.eq_any(networks))
        .order(transactions::id)
        .select(JournalEntry::as_select())
        .load(conn)
        .await?;
    let mut report = AdvanceReport::default();
    for hold in processing {
        // One withdrawal the node will not take or tell about must not stop the others.
        let outcome = advance_one(conn, currencies, custody, chain, &hold).await;
        report.count(hold.id, outcome);
    }
    Ok(report)
}

async fn advance_one(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    custody: &Custody,
    chain: &dyn Chain,
    hold: &JournalEntry,
) -> Result<Advanced, LedgerError> {
    let network = hold
        .network
        .clone()
        .ok_or_else(|| LedgerError::Internal(format!("withdrawal {} has no network", hold.id)))?;
    let attempts = attempts_of(conn, hold.id).await?;
    let Some(newest) = attempts.last() else {
        return Err(LedgerError::Internal(format!(
            "processing withdrawal {} has no signed attempt",
            hold.id
        )));
    };
    // The attempt the chain included, if any (they share a nonce: at most one is).
    let (mut newest_known, mut any_known) = (false, false);
    for attempt in attempts.iter().rev() {
        let Some(found) = chain.transfer(&network, &attempt.hash).await? else {
            continue;
        };
        any_known = true;
        newest_known |= attempt.id == newest.id;
        if found.block_number.is_some() {
            return settle(conn, currencies, hold, attempt, &found).await;
        }
    }
    if hold.block_number.is_some() {
        // Its block left the chain: back to no confirmations until it is mined again.
        unmined(conn, hold).await?;
    }
    let accounts = accounts(chain, &network)?;
    let height = chain.tip(&network).await?;
    let overdue =
        height.saturating_sub(newest.signed_at_height) >= as_i64(accounts.replace_after_blocks());
    if !newest_known {
        // Never sent, or forgotten by the node: the same bytes again. A node may refuse
        // them for good (it evicted them as underpriced): then, once due, a replacement.
        match chain.broadcast(&stored(&network, hold, newest)).await {
            Ok(_) => {
                metrics::counter!("wallet_withdrawal_rebroadcasts_total", "network" => network.clone())
                    .increment(1);
                return Ok(Advanced::Rebroadcast);
            }
            Err(e) if overdue && refused_for_its_fee(&e) => {
                tracing::info!(id = hold.id, error = %e, "stored withdrawal refused; replacing it")
            }
            // The address cannot pay it, and the node holds none of its attempts: it
            // fails, and what it locked is free again (nothing was debited).
            Err(e) if !any_known && refused_for_funds(&e) => {
                let backend = chain.backend(&network)?;
                return fail_refused(conn, &backend, hold.id, newest, &e).await;
            }
            Err(e) => return Err(e.into()),
        }
    } else if !overdue {
        return Ok(Advanced::Unchanged);
    }
    let replacement =
        match replace(conn, currencies, custody, accounts, hold, newest, height).await? {
            Replacing::Signed(replacement) => replacement,
            Replacing::Capped => return Ok(Advanced::Capped),
            Replacing::No => return Ok(Advanced::Unchanged),
        };
    tracing::info!(
        id = hold.id,
        replaces = newest.hash,
        hash = replacement.hash,
        "withdrawal not mined in time: replaced with a higher fee"
    );
    metrics::counter!("wallet_withdrawal_replacements_total", "network" => network.clone())
        .increment(1);
    chain.broadcast(&replacement).await?;
    Ok(Advanced::Replaced)
}

/// Whether a node refused a transaction for offering too little (a replacement with a
/// higher fee may pass); any other refusal (no funds for gas, a used nonce) would refuse
/// the replacement too.
fn refused_for_its_fee(e: &ChainError) -> bool {
    let ChainError::Unavailable(message) = e else {
        return false;
    };
    let message = message.to_ascii_lowercase();
    ["base fee", "underpriced", "fee cap", "too low to"]
        .iter()
        .any(|sign| message.contains(sign))
}

/// Whether a node refused a transaction because its sender cannot pay for it (the value
/// and the most its gas may cost): no fee makes it pass while the address holds what it
/// holds. Execution clients word it differently ("insufficient funds for gas * price +
/// value", "InsufficientFunds", "Upfront cost exceeds account balance").
fn refused_for_funds(e: &ChainError) -> bool {
    let ChainError::Unavailable(message) = e else {
        return false;
    };
    let words: String = message
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    ["insufficientfunds", "upfrontcostexceedsaccountbalance"]
        .iter()
        .any(|sign| words.contains(sign))
}

/// Fails a withdrawal whose newest attempt (`newest`) the node refused for want of funds
/// and holds none of the others: FAILED with the node's reason, every attempt marked
/// refused, its nonce given back to the address (no later one was given: one unmined
/// transaction per address), and all it locked released. Nothing was debited.
async fn fail_refused(
    conn: &mut AsyncPgConnection,
    backend: &str,
    hold_id: i64,
    newest: &Attempt,
    refusal: &ChainError,
) -> Result<Advanced, LedgerError> {
    let said = match refusal {
        ChainError::Unavailable(text) => crate::chain::rpc::bounded(text),
        other => other.to_string(),
    };
    store::retried!(conn, |tx| {
        let Some(hold) = relock(tx, hold_id).await? else {
            return Ok(Advanced::Unchanged);
        };
        // Read again under the hold's lock: a replacement signed since is tried first.
        let attempts = attempts_of(tx, hold.id).await?;
        if attempts.last().map(|a| a.id) != Some(newest.id) {
            return Ok(Advanced::Unchanged);
        }
        let wallet = store::lock_wallet(tx, &Scope::All, hold.wallet_id).await?;
        let (Some(network), Some(from)) = (hold.network.as_deref(), hold.from_address.as_deref())
        else {
            return Err(LedgerError::Internal(format!(
                "withdrawal {} has no network or source address",
                hold.id
            )));
        };
        lock_nonces(tx, network, backend, from, 0).await?;
        // Its nonce goes back unless a live transaction was signed with a later one (it
        // would wait forever on this one's): then it is not failed, and says so.
        let released = diesel::sql_query(
            "UPDATE chain_nonces SET next_nonce = $3
              WHERE network = $1 AND address = $2 AND backend = $4 AND next_nonce > $3
                AND NOT EXISTS (SELECT 1 FROM withdrawal_attempts a
                                 WHERE a.network = $1 AND a.from_address = $2
                                   AND a.nonce > $3 AND a.refused IS NULL)",
        )
        .bind::<diesel::sql_types::Text, _>(network)
        .bind::<diesel::sql_types::Text, _>(from)
        .bind::<diesel::sql_types::BigInt, _>(newest.nonce)
        .bind::<diesel::sql_types::Text, _>(backend)
        .execute(tx)
        .await?;
        let next: i64 = chain_nonces::table
            .find((network, backend, from))
            .select(chain_nonces::next_nonce)
            .first(tx)
            .await?;
        if released == 0 && next != newest.nonce {
            return Err(LedgerError::Internal(format!(
                "withdrawal {} was refused by the node ({said}), but a later nonce of {from} \
                 is signed: not failed",
                hold.id
            )));
        }
        diesel::update(
            withdrawal_attempts::table
                .filter(withdrawal_attempts::transaction_id.eq(hold.id))
                .filter(withdrawal_attempts::refused.is_null()),
        )
        .set(withdrawal_attempts::refused.eq(&said))
        .execute(tx)
        .await?;
        let reason = format!(
            "not sent: the node refused it, its address cannot pay for it ({said}); nothing \
             was debited and the funds are released"
        );
        fail_unsent(
            tx,
            &hold,
            &wallet,
            hold.amount + fee_lock(&hold, &attempts),
            &reason,
        )
        .await?;
        tracing::warn!(id = hold.id, refusal = %said, "withdrawal refused by the node for want of funds: failed");
        metrics::counter!("wallet_withdrawals_refused_total", "network" => network.to_owned())
            .increment(1);
        Ok(Advanced::To(TransactionStatus::Failed))
    })
}

fn stored(network: &str, hold: &JournalEntry, attempt: &Attempt) -> SignedTransfer {
    SignedTransfer {
        network: network.to_owned(),
        hash: attempt.hash.clone(),
        from_address: hold.from_address.clone().unwrap_or_default(),
        to_address: hold.to_address.clone().unwrap_or_default(),
        amount: hold.amount,
        fee: Fee::default(),
        raw: attempt.raw.clone(),
    }
}

/// The hold, locked, if it is still PROCESSING (another worker may have moved it on).
async fn relock(
    tx: &mut AsyncPgConnection,
    hold_id: i64,
) -> Result<Option<JournalEntry>, LedgerError> {
    let hold: JournalEntry = transactions::table
        .find(hold_id)
        .select(JournalEntry::as_select())
        .for_update()
        .first(tx)
        .await?;
    Ok((hold.status == TransactionStatus::Processing).then_some(hold))
}

fn chain_fields(hold: &JournalEntry, attempt: &Attempt, found: &ChainTransfer) -> ChainFields {
    ChainFields {
        network: hold.network.clone().unwrap_or_default(),
        from_address: hold.from_address.clone().unwrap_or_default(),
        to_address: hold.to_address.clone().unwrap_or_default(),
        chain_tx_hash: Some(attempt.hash.clone()),
        confirmations: i32::try_from(found.confirmations).unwrap_or(i32::MAX),
        required_confirmations: hold.required_confirmations.unwrap_or(1),
        block_number: found.block_number,
        gas_price: found.gas_price,
        gas_used: found.gas_used,
        raw: Some(attempt.raw.clone()),
    }
}

async fn unmined(conn: &mut AsyncPgConnection, hold: &JournalEntry) -> Result<(), LedgerError> {
    store::retried!(conn, |tx| {
        let Some(hold) = relock(tx, hold.id).await? else {
            return Ok(());
        };
        update_hold(tx, &hold, TransactionStatus::Processing, &off_chain(), None).await?;
        Ok(())
    })
}

/// What the debit of withdrawal `hold` charges when the chain charged `charged` (in the
/// network's coin): the user's fee and the network's, in the wallet's currency. `pays`:
/// the user pays the network's fee (its attempts locked it).
pub(crate) fn debit_fees(
    currencies: &CurrencyRegistry,
    wallet: &Wallet,
    hold: &JournalEntry,
    pays: bool,
    charged: Decimal,
) -> (Decimal, Decimal) {
    // A token's gas is paid in the network's coin: none of it in the token.
    let network_fee = match asset_of(currencies, wallet) {
        Some(_) => Decimal::ZERO,
        None => at_scale_up(charged, hold.amount.scale()),
    };
    let user_fee = if pays { network_fee } else { hold.fee };
    (user_fee, network_fee)
}

/// Whether withdrawal `hold` is still on its way: not yet debited, so the fee it will be
/// charged is not known (the chain charges it when it mines the transaction).
pub fn in_flight(hold: &JournalEntry) -> bool {
    matches!(
        hold.status,
        TransactionStatus::Pending | TransactionStatus::Processing
    )
}

/// The fee withdrawal `hold` (no longer [`in_flight`]) charged its wallet, given its
/// settlements (`settlements_of`, oldest first): that of its standing debit — the newest,
/// since a debit undone after a reorganisation is followed by the one that replaces it —
/// or zero when nothing was debited (it failed before it was sent). A refund after a
/// reverted transaction returns the amount only: the debit's fee stays charged.
pub fn charged_fee(hold: &JournalEntry, settlements: &[JournalEntry]) -> Decimal {
    let undone = |debit: &JournalEntry| {
        settlements
            .iter()
            .any(|p| p.kind == TransactionType::Reversal && p.reverses_id == Some(debit.id))
    };
    settlements
        .iter()
        .rev()
        .find(|p| p.kind == TransactionType::Withdraw && p.hold_id == Some(hold.id))
        .filter(|debit| !undone(debit))
        .map_or(Decimal::ZERO, |debit| debit.fee)
}

/// An attempt the chain included: confirmations recorded, and at the threshold the debit
/// with what the chain charged (plus, if it reverted, the amount refunded).
///
/// The lock released is read under the hold's row lock, which every replacement is
/// signed under: one another process committed after this pass listed the attempts has
/// its lock released too.
async fn settle(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    hold: &JournalEntry,
    attempt: &Attempt,
    found: &ChainTransfer,
) -> Result<Advanced, LedgerError> {
    store::retried!(conn, |tx| {
        let Some(hold) = relock(tx, hold.id).await? else {
            return Ok(Advanced::Unchanged);
        };
        let attempts = attempts_of(tx, hold.id).await?;
        name_attempt(tx, hold.id, &attempt.hash, &attempt.raw).await?;
        let fields = chain_fields(&hold, attempt, found);
        if fields.confirmations < fields.required_confirmations {
            if hold.confirmations != Some(fields.confirmations)
                || hold.block_number != fields.block_number
            {
                update_hold(tx, &hold, TransactionStatus::Processing, &fields, None).await?;
            }
            return Ok(Advanced::Unchanged);
        }
        let wallet = store::lock_wallet(tx, &Scope::All, hold.wallet_id).await?;
        let scale = hold.amount.scale();
        let pays = attempts.iter().any(|a| a.locked_fee > Decimal::ZERO);
        let (user_fee, network_fee) = debit_fees(currencies, &wallet, &hold, pays, found.fee);
        let annotation = Annotation {
            reference: hold.reference.as_deref(),
            metadata: hold.metadata.as_ref(),
        };
        let debit = NewRow {
            kind: TransactionType::Withdraw,
            amount: hold.amount,
            fee: user_fee,
            status: TransactionStatus::Completed,
            key: &hold.tx_hash,
            description: None,
            hold: false,
            settles: Some(hold.id),
            chain: Some(&fields),
            scale,
            network_fee: Some(network_fee),
            annotation,
            reverses: None,
            settles_hold: None,
        };
        // The whole lock is released into the debit: what the fee did not use is free again.
        let locked = hold.amount + fee_lock(&hold, &attempts);
        let wallet = Wallet {
            balance: store::append(tx, &wallet, &debit, -locked)
                .await?
                .balance_after,
            ..wallet
        };
        if found.status != TransferStatus::Failed {
            update_hold(tx, &hold, TransactionStatus::Completed, &fields, None).await?;
            return Ok(Advanced::To(TransactionStatus::Completed));
        }
        // Reverted: the gas was paid, the amount never left the address.
        let reason = "reverted on chain: the network fee was paid, the amount was refunded";
        let refund = NewRow {
            kind: TransactionType::Refund,
            fee: Decimal::ZERO,
            network_fee: Some(Decimal::ZERO),
            description: Some(reason),
            ..debit
        };
        store::append(tx, &wallet, &refund, Decimal::ZERO).await?;
        update_hold(tx, &hold, TransactionStatus::Failed, &fields, Some(reason)).await?;
        Ok(Advanced::To(TransactionStatus::Failed))
    })
}

/// What [`replace`] did.
enum Replacing {
    Signed(SignedTransfer),
    /// Not replaced: enough of a raise would go beyond the fee cap.
    Capped,
    /// Not replaced: another worker did, or the wallet cannot pay a higher fee.
    No,
}

/// Signs a replacement of `newest` (same nonce, higher fees, never beyond the cap) and
/// stores it, unless another worker did first or the fees cannot be raised enough.
async fn replace(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    custody: &Custody,
    accounts: &dyn AccountChain,
    hold: &JournalEntry,
    newest: &Attempt,
    height: i64,
) -> Result<Replacing, LedgerError> {
    let now = accounts.gas_fees().await?;
    let cap = accounts.max_fee_per_gas();
    let wanted = newest.fees().bumped(now.wanted).capped(cap);
    store::retried!(conn, |tx| {
        let Some(hold) = relock(tx, hold.id).await? else {
            return Ok(Replacing::No);
        };
        let attempts = attempts_of(tx, hold.id).await?;
        if attempts.last().map(|a| a.id) != Some(newest.id) {
            return Ok(Replacing::No);
        }
        let wallet = store::lock_wallet(tx, &Scope::All, hold.wallet_id).await?;
        let (network, from, to, path) = signing_details(custody, &hold, &wallet)
            .map_err(|reason| LedgerError::Internal(format!("cannot re-sign: {reason}")))?;
        let gas_limit = u64::try_from(newest.gas_limit).unwrap_or(0);
        let priced = price(
            accounts,
            wanted,
            gas_limit,
            newest.locked_fee > Decimal::ZERO,
            fee_lock(&hold, &attempts),
            &wallet,
            hold.amount.scale(),
        )?;
        if !priced.fees.replaces(newest.fees()) {
            if !wanted.replaces(newest.fees()) {
                tracing::debug!(
                    id = hold.id,
                    cap,
                    "withdrawal not mined in time, and a higher fee would exceed the cap"
                );
                return Ok(Replacing::Capped);
            }
            tracing::warn!(
                id = hold.id,
                "withdrawal not mined in time, and its wallet cannot pay a higher fee"
            );
            return Ok(Replacing::No);
        }
        let signed = sign_attempt(
            tx,
            custody,
            accounts,
            Attempting {
                hold: &hold,
                wallet: &wallet,
                network,
                from,
                to,
                path,
                asset: asset_of(currencies, &wallet),
                nonce: u64::try_from(newest.nonce).unwrap_or(0),
                gas_limit,
                priced,
                replaces: Some(newest.id),
                height,
            },
        )
        .await?;
        Ok(Replacing::Signed(signed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_for_want_of_funds_is_told_from_others() {
        let said = |m: &str| {
            ChainError::Unavailable(format!("ethereum node, eth_sendRawTransaction: {m}"))
        };
        for funds in [
            "Insufficient funds for gas * price + value",
            "insufficient funds for gas * price + value: address 0xabc have 1 want 2",
            "InsufficientFunds, Account balance: 1, cumulative cost: 2",
            "Upfront cost exceeds account balance",
        ] {
            assert!(refused_for_funds(&said(funds)), "{funds}");
            assert!(!refused_for_its_fee(&said(funds)), "{funds}");
        }
        for other in [
            "nonce too low",
            "max fee per gas less than block base fee",
            "replacement transaction underpriced",
            "no answer within 10s",
        ] {
            assert!(!refused_for_funds(&said(other)), "{other}");
        }
        assert!(!refused_for_funds(&ChainError::UnknownNetwork("x".into())));
    }
}
