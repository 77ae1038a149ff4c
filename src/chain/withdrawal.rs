//! Crypto withdrawals: a state machine kept in the journal, each step committed before
//! the side effect that follows it.
//!
//! 1. [`request`] (`cryptoWithdraw`): one database transaction locks amount + fee
//!    (`lockedBalance`) and journals the withdrawal as a hold, PENDING. The fee is the
//!    network's, or the currency's configured withdrawal fee (the service then pays the
//!    network's fee, recorded apart as `network_fee`).
//! 2. [`sign_next`]: a worker claims a PENDING withdrawal (`FOR UPDATE SKIP LOCKED`, so
//!    several processes share the work), signs it, and in one transaction stores the raw
//!    transaction and its hash, posts the debit (amount + fee; the lock is released into
//!    it) and moves the hold to PROCESSING. Nothing has left the building yet.
//! 3. Broadcast the stored bytes. Sending them again is harmless: the chain knows a
//!    transaction by its hash.
//! 4. [`advance`]: for every PROCESSING withdrawal, rebroadcast if the chain does not know
//!    it (a crash between 2 and 3), record confirmations block by block, complete it at
//!    the network's threshold, or — if the chain failed it — post a compensating REFUND
//!    and mark it FAILED.
//!
//! A process that dies between any two steps leaves a state the next worker pass picks up:
//! the withdrawal is neither lost nor sent twice, and it is debited once.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use crate::chain::deposit::update_hold;
use crate::chain::{self, Chain, Fee, SignedTransfer, TransferStatus};
use crate::custody::{self, Custody};
use crate::ledger::judge;
use crate::ledger::models::Scaled;
use crate::ledger::movement::Movement;
use crate::ledger::store::{self, Annotation, ChainFields, NewRow};
use crate::ledger::{
    CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionStatus, TransactionType, Wallet,
    input, money, wallet,
};
use crate::schema::{transactions, wallets};

/// `cryptoWithdraw`.
#[derive(Clone, Debug)]
pub struct WithdrawalRequest {
    pub wallet_id: i64,
    pub to_address: String,
    pub amount: Decimal,
    /// The client's idempotency key.
    pub key: String,
    /// The client's business reference and metadata.
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl WithdrawalRequest {
    fn annotation(&self) -> Annotation<'_> {
        Annotation {
            reference: self.reference.as_deref(),
            metadata: self.metadata.as_ref(),
        }
    }
}

/// Step 1: validates the request, locks amount + the network's fee and journals the
/// withdrawal (PENDING). A replay of the same key and request returns the original.
pub async fn request(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    chain: &dyn Chain,
    scope: &Scope,
    request: &WithdrawalRequest,
) -> Result<Movement, LedgerError> {
    input::check_key("idempotencyKey", &request.key)?;
    input::check_annotation(request.reference.as_deref(), request.metadata.as_ref())?;
    let (wallet, currency, network, from_address) =
        wallet::find_crypto_wallet(conn, currencies, scope, request.wallet_id, "withdrawals")
            .await?;
    let custody_chain = custody::Chain::from_network(&network).ok_or_else(|| {
        LedgerError::CurrencyNotSupported(format!("no custody for network {network:?}"))
    })?;
    let to_address = custody::validate_address(custody_chain, &request.to_address)
        .map_err(LedgerError::InvalidAddress)?;
    let amount = money::validate_amount(request.amount, currency)?;
    // A network whose node is not connected (or not verified) takes no withdrawal, also
    // one that needs nothing from the node now (a token's).
    chain.available(&network)?;
    // A token's network fee is paid in the network's coin, not in the token: the
    // withdrawal's own currency carries none of it.
    let fee = match currency.contract_address {
        None => chain.estimate_fee(&network).await?,
        Some(_) => Fee::default(),
    };
    let network_fee = money::at_scale(fee.total, currency);
    // The user pays the network's fee, or the currency's configured withdrawal fee
    // instead (then the network's fee is the service's expense).
    let user_fee = currencies
        .withdrawal_fee(&currency.code)
        .unwrap_or(network_fee);
    let chain_fields = ChainFields {
        network,
        from_address,
        to_address,
        confirmations: 0,
        required_confirmations: currency.required_confirmations.unwrap_or(1),
        gas_price: fee.gas_price,
        gas_used: fee.gas_used,
        ..ChainFields::default()
    };

    store::retried!(conn, |tx| {
        let wallet = store::lock_wallet(tx, scope, wallet.id).await?;
        if let Some(existing) = store::find_by_key(tx, wallet.id, &request.key).await? {
            let same = existing.wallet_id == wallet.id
                && existing.kind == TransactionType::Withdraw
                && existing.amount == amount
                && existing.to_address.as_deref() == Some(chain_fields.to_address.as_str())
                && request.annotation().matches(&existing);
            return judge::replay_or_conflict(existing, same, "idempotencyKey", &request.key);
        }
        let needed = amount + user_fee;
        money::check_funds(&wallet, needed)?;
        let row = NewRow {
            kind: TransactionType::Withdraw,
            amount,
            fee: user_fee,
            status: TransactionStatus::Pending,
            key: &request.key,
            description: None,
            hold: true,
            settles: None,
            chain: Some(&chain_fields),
            scale: currency.scale(),
            network_fee: Some(network_fee),
            annotation: request.annotation(),
            reverses: None,
            settles_hold: None,
        };
        let entry = store::append(tx, &wallet, &row, needed).await?;
        Ok(Movement {
            entry,
            replayed: false,
        })
    })
}

/// A withdrawal's reference and metadata, carried by its debit and refund.
fn annotation_of(hold: &JournalEntry) -> Annotation<'_> {
    Annotation {
        reference: hold.reference.as_deref(),
        metadata: hold.metadata.as_ref(),
    }
}

/// The network fee a withdrawal signs with (the user's fee, unless recorded apart).
fn fee_of(hold: &JournalEntry) -> Fee {
    Fee {
        total: hold.network_fee.unwrap_or(hold.fee),
        gas_price: hold.gas_price,
        gas_used: hold.gas_used,
    }
}

/// The signed transfer a PROCESSING withdrawal stored, rebuilt for (re)broadcasting.
fn stored_transfer(hold: &JournalEntry) -> Option<SignedTransfer> {
    Some(SignedTransfer {
        network: hold.network.clone()?,
        hash: hold.chain_tx_hash.clone()?,
        from_address: hold.from_address.clone()?,
        to_address: hold.to_address.clone()?,
        amount: hold.amount,
        fee: fee_of(hold),
        raw: hold.raw.clone()?,
    })
}

/// Step 2: claims the oldest PENDING withdrawal after `after` that no other worker
/// holds, signs it, stores the signed bytes and posts the debit, all in one transaction.
/// Returns the transfer to broadcast, or `None` when no withdrawal waits.
///
/// `after` moves to each withdrawal tried, also when trying it failed: a pass that
/// calls this until `None` tries every waiting withdrawal once, and one that cannot be
/// signed now (say, the database refused its debit) does not hold up those behind it.
/// A withdrawal custody cannot sign for at all — its key does not give its source
/// address (a different seed configured), or its details are damaged — is marked FAILED
/// with its funds released.
pub async fn sign_next(
    conn: &mut AsyncPgConnection,
    custody: &Custody,
    except: &[String],
    after: &mut i64,
) -> Result<Option<SignedTransfer>, LedgerError> {
    loop {
        let tried = std::sync::atomic::AtomicI64::new(*after);
        let signing = sign_one(conn, custody, except, *after, &tried).await;
        *after = tried.into_inner();
        match signing? {
            Signing::Idle => return Ok(None),
            Signing::Signed(signed) => return Ok(Some(signed)),
            Signing::Refused => continue,
        }
    }
}

enum Signing {
    Idle,
    Signed(SignedTransfer),
    Refused,
}

async fn sign_one(
    conn: &mut AsyncPgConnection,
    custody: &Custody,
    except: &[String],
    after: i64,
    tried: &std::sync::atomic::AtomicI64,
) -> Result<Signing, LedgerError> {
    store::retried!(conn, |tx| {
        let Some(hold) = transactions::table
            .filter(store::open_hold())
            .filter(transactions::type_.eq(TransactionType::Withdraw))
            .filter(transactions::status.eq(TransactionStatus::Pending))
            .filter(transactions::network.ne_all(except))
            .filter(transactions::id.gt(after))
            .order(transactions::id)
            .select(JournalEntry::as_select())
            .for_update()
            .skip_locked()
            .first(tx)
            .await
            .optional()?
        else {
            return Ok(Signing::Idle);
        };
        tried.store(hold.id, std::sync::atomic::Ordering::Relaxed);
        let wallet = store::lock_wallet(tx, &Scope::All, hold.wallet_id).await?;
        let (network, from, to, path) = match signing_details(custody, &hold, &wallet) {
            Ok(details) => details,
            Err(reason) => {
                fail_unsigned(tx, &hold, &wallet, reason).await?;
                return Ok(Signing::Refused);
            }
        };
        let fee = fee_of(&hold);
        let payload = chain::transfer_payload(network, from, to, hold.amount, &fee, hold.id);
        let signature = custody
            .sign(path, chain::digest(network, &payload))
            .map_err(|e| LedgerError::Internal(format!("custody: {e}")))?;
        let (hash, raw) = chain::assemble(network, &payload, &signature);

        let chain_fields = ChainFields {
            network: network.to_owned(),
            from_address: from.to_owned(),
            to_address: to.to_owned(),
            chain_tx_hash: Some(hash.clone()),
            confirmations: 0,
            required_confirmations: hold.required_confirmations.unwrap_or(1),
            block_number: None,
            gas_price: fee.gas_price,
            gas_used: fee.gas_used,
            raw: Some(raw.clone()),
        };
        let debit = NewRow {
            kind: TransactionType::Withdraw,
            amount: hold.amount,
            fee: hold.fee,
            status: TransactionStatus::Completed,
            key: &hold.tx_hash,
            description: None,
            hold: false,
            settles: Some(hold.id),
            chain: Some(&chain_fields),
            scale: hold.amount.scale(),
            network_fee: hold.network_fee,
            annotation: annotation_of(&hold),
            reverses: None,
            settles_hold: None,
        };
        // The reservation becomes the debit.
        store::append(tx, &wallet, &debit, -(hold.amount + hold.fee)).await?;
        diesel::update(transactions::table.find(hold.id))
            .set((
                transactions::status.eq(TransactionStatus::Processing),
                transactions::chain_tx_hash.eq(&hash),
                transactions::raw.eq(&raw),
                transactions::updated_at.eq(diesel::dsl::now),
            ))
            .execute(tx)
            .await?;
        Ok(Signing::Signed(SignedTransfer {
            network: network.to_owned(),
            hash,
            from_address: from.to_owned(),
            to_address: to.to_owned(),
            amount: hold.amount,
            fee,
            raw,
        }))
    })
}

/// A withdrawal's network, source, destination and key path, once custody is known to hold
/// the key of its source address; otherwise why it cannot be signed at all.
pub(super) fn signing_details<'h>(
    custody: &Custody,
    hold: &'h JournalEntry,
    wallet: &'h Wallet,
) -> Result<(&'h str, &'h str, &'h str, &'h str), &'static str> {
    let (Some(network), Some(from), Some(to), Some(path)) = (
        hold.network.as_deref(),
        hold.from_address.as_deref(),
        hold.to_address.as_deref(),
        wallet.derivation_path.as_deref(),
    ) else {
        return Err("its chain details are incomplete");
    };
    let chain = custody::Chain::from_network(network).ok_or("unknown network")?;
    match custody.address_at(chain, path) {
        Ok(address) if address == from => Ok((network, from, to, path)),
        Ok(_) => Err("the custody seed does not hold the key of its source address"),
        Err(_) => Err("its derivation path is not valid"),
    }
}

/// Marks a withdrawal custody cannot sign FAILED and releases what it locked.
pub(super) async fn fail_unsigned(
    tx: &mut AsyncPgConnection,
    hold: &JournalEntry,
    wallet: &Wallet,
    reason: &str,
) -> Result<(), LedgerError> {
    tracing::error!(
        id = hold.id,
        reason,
        "withdrawal cannot be signed; failing it"
    );
    fail_unsent(
        tx,
        hold,
        wallet,
        hold.amount + hold.fee,
        &format!("not sent: custody cannot sign it ({reason})"),
    )
    .await
}

/// Marks a withdrawal that nothing was debited for (nothing left the address) FAILED
/// with `reason`, and releases `locked`, all it had locked.
pub(super) async fn fail_unsent(
    tx: &mut AsyncPgConnection,
    hold: &JournalEntry,
    wallet: &Wallet,
    locked: Decimal,
    reason: &str,
) -> Result<(), LedgerError> {
    release_lock(tx, wallet, locked).await?;
    diesel::update(transactions::table.find(hold.id))
        .set((
            transactions::status.eq(TransactionStatus::Failed),
            transactions::status_reason.eq(reason),
            transactions::updated_at.eq(diesel::dsl::now),
        ))
        .execute(tx)
        .await?;
    Ok(())
}

/// Takes `amount` off a wallet's locked balance (negative: locks more).
pub(super) async fn release_lock(
    tx: &mut AsyncPgConnection,
    wallet: &Wallet,
    amount: Decimal,
) -> Result<(), LedgerError> {
    diesel::update(wallets::table.find(wallet.id))
        .set((
            wallets::locked_balance.eq(wallets::locked_balance - Scaled(amount)),
            wallets::updated_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                "GREATEST(clock_timestamp(), updated_at)",
            )),
        ))
        .execute(tx)
        .await?;
    Ok(())
}

/// What one [`advance`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdvanceReport {
    pub rebroadcast: usize,
    /// Replaced with a higher fee (node-served networks).
    pub replaced: usize,
    pub completed: usize,
    pub failed: usize,
    /// Withdrawals that could not be followed this time (retried next pass).
    pub errors: usize,
    /// Withdrawals due for a replacement that would exceed the fee cap (node-served
    /// networks): their sent attempt waits for fees to fall.
    pub fee_capped: Vec<i64>,
}

/// Step 4: follows every PROCESSING withdrawal on chain (but those on `except`).
pub async fn advance(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    except: &[String],
) -> Result<AdvanceReport, LedgerError> {
    let processing: Vec<JournalEntry> = transactions::table
        .filter(store::open_hold())
        .filter(transactions::type_.eq(TransactionType::Withdraw))
        .filter(transactions::status.eq(TransactionStatus::Processing))
        .filter(transactions::network.ne_all(except))
        .order(transactions::id)
        .select(JournalEntry::as_select())
        .load(conn)
        .await?;
    let mut report = AdvanceReport::default();
    for hold in processing {
        // One withdrawal the chain will not take or tell about must not stop the others.
        report.count(hold.id, advance_one(conn, chain, &hold).await);
    }
    Ok(report)
}

/// What following one withdrawal did.
pub(super) enum Advanced {
    Rebroadcast,
    /// Replaced with a higher fee (node-served networks).
    Replaced,
    /// Due for a replacement that would exceed the fee cap (node-served networks).
    Capped,
    To(TransactionStatus),
    Unchanged,
}

impl AdvanceReport {
    /// Adds what another pass over other withdrawals did.
    pub fn add(&mut self, other: AdvanceReport) {
        self.rebroadcast += other.rebroadcast;
        self.replaced += other.replaced;
        self.completed += other.completed;
        self.failed += other.failed;
        self.errors += other.errors;
        self.fee_capped.extend(other.fee_capped);
    }

    /// Counts one withdrawal's outcome; a failure is logged (it is tried again next pass).
    pub(super) fn count(&mut self, id: i64, outcome: Result<Advanced, LedgerError>) {
        match outcome {
            Ok(Advanced::Rebroadcast) => self.rebroadcast += 1,
            Ok(Advanced::Replaced) => self.replaced += 1,
            Ok(Advanced::Capped) => self.fee_capped.push(id),
            Ok(Advanced::To(TransactionStatus::Completed)) => self.completed += 1,
            Ok(Advanced::To(TransactionStatus::Failed)) => self.failed += 1,
            Ok(_) => {}
            Err(e) => {
                self.errors += 1;
                tracing::warn!(id, error = ?e, "could not follow a withdrawal");
            }
        }
    }
}

async fn advance_one(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    hold: &JournalEntry,
) -> Result<Advanced, LedgerError> {
    let Some(signed) = stored_transfer(hold) else {
        return Err(LedgerError::Internal(format!(
            "processing withdrawal {} lacks its signed bytes",
            hold.id
        )));
    };
    let Some(transfer) = chain.transfer(&signed.network, &signed.hash).await? else {
        // Stored but never sent (or lost by the node): the same bytes again.
        chain.broadcast(&signed).await?;
        return Ok(Advanced::Rebroadcast);
    };
    store::retried!(conn, |tx| {
        // Another worker may have moved it on since we listed it.
        let hold: JournalEntry = transactions::table
            .find(hold.id)
            .select(JournalEntry::as_select())
            .for_update()
            .first(tx)
            .await?;
        if hold.status != TransactionStatus::Processing {
            return Ok(Advanced::Unchanged);
        }
        let mut fields = ChainFields {
            network: signed.network.clone(),
            from_address: signed.from_address.clone(),
            to_address: signed.to_address.clone(),
            chain_tx_hash: Some(signed.hash.clone()),
            confirmations: i32::try_from(transfer.confirmations).unwrap_or(i32::MAX),
            required_confirmations: hold.required_confirmations.unwrap_or(1),
            block_number: transfer.block_number,
            gas_price: transfer.gas_price,
            gas_used: transfer.gas_used,
            raw: None,
        };
        match transfer.status {
            TransferStatus::Failed => {
                // Nothing left the address: the debit is compensated, not erased.
                let wallet = store::lock_wallet(tx, &Scope::All, hold.wallet_id).await?;
                fields.raw = hold.raw.clone();
                let refund = NewRow {
                    kind: TransactionType::Refund,
                    amount: hold.amount,
                    fee: hold.fee,
                    status: TransactionStatus::Completed,
                    key: &hold.tx_hash,
                    description: Some("the chain failed the withdrawal"),
                    hold: false,
                    settles: Some(hold.id),
                    chain: Some(&fields),
                    scale: hold.amount.scale(),
                    network_fee: hold.network_fee,
                    annotation: annotation_of(&hold),
                    reverses: None,
                    settles_hold: None,
                };
                store::append(tx, &wallet, &refund, Decimal::ZERO).await?;
                update_hold(
                    tx,
                    &hold,
                    TransactionStatus::Failed,
                    &fields,
                    Some("the chain failed the withdrawal"),
                )
                .await?;
                Ok(Advanced::To(TransactionStatus::Failed))
            }
            TransferStatus::Success if fields.confirmations >= fields.required_confirmations => {
                update_hold(tx, &hold, TransactionStatus::Completed, &fields, None).await?;
                Ok(Advanced::To(TransactionStatus::Completed))
            }
            TransferStatus::Success | TransferStatus::Pending => {
                if hold.confirmations != Some(fields.confirmations)
                    || hold.block_number != fields.block_number
                {
                    update_hold(tx, &hold, TransactionStatus::Processing, &fields, None).await?;
                }
                Ok(Advanced::Unchanged)
            }
        }
    })
}
