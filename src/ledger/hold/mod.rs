//! Holds: money reserved on a fiat wallet now and settled later — a card authorisation, an
//! order held until delivery, an escrow to another wallet.
//!
//! Authorising a hold moves no money: it raises the wallet's `held_balance`, so the
//! available balance falls and the balance does not. A capture moves up to what remains
//! as a `WITHDRAW` (or, for a held transfer, a `TRANSFER_OUT`/`TRANSFER_IN` pair) whose
//! journal row names the hold (`settles_hold_id`), and lowers the balance and the held
//! balance together; several partial captures may follow until the hold is fully
//! captured, or a final one gives back the rest. A void gives back what remains; so does
//! the expiry worker once `expires_at` has passed — stored in the database, so it holds
//! across restarts and whichever process gets there first. The hold's lifecycle is
//! appended to `hold_events`.
//!
//! Every flow takes the same locks in the same order as every other movement — the
//! wallets, in id order, then the hold — reads what it needs under them, asks
//! [`decide`] and writes what was decided, in one transaction (retried on transient
//! failures). So a capture racing a void or the expiry either wins whole or finds the
//! hold no longer active, and a hold racing a withdrawal is judged against the balance
//! the withdrawal left.
//!
//! Invariant (tested): a wallet's `held_balance` is the sum of `amount - captured` over
//! its ACTIVE holds.

pub mod credit;
pub mod decide;

use std::collections::HashMap;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use self::decide::{Authorization, Capture, Void};
use super::fixed_sql::Fixed;
use super::models::{Scaled, text_enum};
use super::store::{self, NewRow};
use super::{
    CurrencyRegistry, JournalEntry, LedgerError, ListScope, Page, PageArgs, Scope, TransactionType,
    Wallet, input,
};
use crate::schema::{hold_events, holds, transactions, wallets};

text_enum! {
    pub enum HoldStatus {
        /// Reserving `amount - captured`.
        Active => "ACTIVE",
        /// Fully captured, or finally captured with the rest given back.
        Captured => "CAPTURED",
        Voided => "VOIDED",
        Expired => "EXPIRED",
    }
}

text_enum! {
    pub enum HoldEventKind {
        Authorized => "AUTHORIZED",
        Captured => "CAPTURED",
        Voided => "VOIDED",
        Expired => "EXPIRED",
    }
}

/// One hold, as stored.
#[derive(Clone, Debug, Queryable, Selectable, Identifiable)]
#[diesel(table_name = holds, check_for_backend(diesel::pg::Pg))]
pub struct Hold {
    pub id: i64,
    pub wallet_id: i64,
    /// A held transfer's target.
    pub to_wallet_id: Option<i64>,
    pub amount: Decimal,
    pub captured: Decimal,
    /// Given back by a void, the expiry or a final capture.
    pub released: Decimal,
    pub status: HoldStatus,
    pub idempotency_key: String,
    pub expires_at: DateTime<Utc>,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Hold {
    /// What it still reserves: `amount - captured` while ACTIVE, nothing after.
    pub fn remaining(&self) -> Decimal {
        match self.status {
            HoldStatus::Active => self.amount - self.captured,
            _ => Decimal::ZERO * self.amount, // a zero with the amount's scale
        }
    }
}

/// One step of a hold's lifecycle (append-only).
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = hold_events, check_for_backend(diesel::pg::Pg))]
pub struct HoldEvent {
    pub id: i64,
    pub hold_id: i64,
    pub kind: HoldEventKind,
    pub amount: Decimal,
    pub released: Decimal,
    pub transaction_id: Option<i64>,
    pub idempotency_key: Option<String>,
    /// What a capture asked for (`None`: all that remained).
    pub requested: Option<Decimal>,
    pub final_capture: bool,
    /// The token subject who asked, or [`EXPIRY_ACTOR`].
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

/// The actor of events written by the expiry worker.
pub const EXPIRY_ACTOR: &str = "expiry";

/// How long holds last.
#[derive(Clone, Copy, Debug)]
pub struct HoldPolicy {
    /// When `expiresAt` is not given.
    pub default_expiry: Duration,
    /// The latest `expiresAt` allowed, from now.
    pub max_expiry: Duration,
}

impl Default for HoldPolicy {
    fn default() -> Self {
        HoldPolicy {
            default_expiry: Duration::days(7),
            max_expiry: Duration::days(30),
        }
    }
}

/// `authorizeHold`.
#[derive(Clone, Debug)]
pub struct AuthorizeRequest {
    pub wallet_id: i64,
    pub to_wallet_id: Option<i64>,
    pub amount: Decimal,
    /// Scoped to the wallet.
    pub key: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl AuthorizeRequest {
    /// A0: what needs nothing read.
    pub fn check_shape(&mut self) -> Result<(), LedgerError> {
        input::check_movement(
            "idempotencyKey",
            &self.key,
            self.description.as_deref(),
            self.amount,
        )?;
        input::check_annotation(self.reference.as_deref(), self.metadata.as_ref())?;
        if self.to_wallet_id == Some(self.wallet_id) {
            return Err(LedgerError::BadInput(
                "a held transfer needs two different wallets".into(),
            ));
        }
        // Stored with microseconds: a replay must compare equal.
        self.expires_at = self.expires_at.map(|at| at.trunc_subsecs(6));
        Ok(())
    }
}

/// `captureHold`.
#[derive(Clone, Debug)]
pub struct CaptureRequest {
    pub hold_id: i64,
    /// `None`: all that remains.
    pub amount: Option<Decimal>,
    /// Scoped to the hold; also the key of the capture's journal row on the wallet.
    pub key: String,
    /// Give back what remains after this capture.
    pub final_capture: bool,
}

impl CaptureRequest {
    /// C0.
    pub fn check_shape(&self) -> Result<(), LedgerError> {
        input::check_key("idempotencyKey", &self.key)?;
        if let Some(amount) = self.amount
            && amount <= Decimal::ZERO
        {
            return Err(LedgerError::InvalidAmount(format!(
                "the amount must be greater than zero, got {amount}"
            )));
        }
        Ok(())
    }
}

/// `voidHold`.
#[derive(Clone, Debug)]
pub struct VoidRequest {
    pub hold_id: i64,
    /// Scoped to the hold.
    pub key: String,
}

/// Reserves money on a fiat wallet (the caller's own, or any for operators). A replay
/// answers the hold as it is now.
pub async fn authorize(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    policy: &HoldPolicy,
    (scope, actor): (&Scope, &str),
    mut request: AuthorizeRequest,
) -> Result<Hold, LedgerError> {
    request.check_shape()?;
    let request = &request;
    store::retried!(conn, |tx| {
        let mut ids = vec![(request.wallet_id, scope.owner())];
        if let Some(to) = request.to_wallet_id {
            ids.push((to, None));
        }
        let locked = lock(tx, &ids).await?;
        let wallet = locked
            .get(&request.wallet_id)
            .ok_or(LedgerError::NotFound("wallet"))?;
        let existing = hold_by_key(tx, wallet.id, &request.key).await?;
        let target = request.to_wallet_id.map(|id| locked.get(&id));
        let clock = clock(tx).await?;
        match decide::authorize(
            currencies,
            policy,
            wallet,
            target,
            existing.as_ref(),
            request,
            clock,
        )? {
            Authorization::Replay => {
                existing.ok_or_else(|| LedgerError::Internal("a replay without its hold".into()))
            }
            Authorization::New { amount, expires_at } => {
                change_held(tx, wallet.id, amount).await?;
                let hold: Hold = diesel::insert_into(holds::table)
                    .values((
                        holds::wallet_id.eq(wallet.id),
                        holds::to_wallet_id.eq(request.to_wallet_id),
                        holds::amount.eq(Scaled(amount)),
                        holds::captured.eq(Scaled(Decimal::ZERO * amount)),
                        holds::released.eq(Scaled(Decimal::ZERO * amount)),
                        holds::status.eq(HoldStatus::Active),
                        holds::idempotency_key.eq(&request.key),
                        holds::expires_at.eq(expires_at),
                        holds::description.eq(&request.description),
                        holds::reference.eq(&request.reference),
                        holds::metadata.eq(&request.metadata),
                        holds::created_by.eq(actor),
                        holds::created_at.eq(clock),
                        holds::updated_at.eq(clock),
                    ))
                    .returning(Hold::as_returning())
                    .get_result(tx)
                    .await?;
                record(
                    tx,
                    &hold,
                    HoldEventKind::Authorized,
                    (amount, Decimal::ZERO),
                    None,
                    None,
                    actor,
                    clock,
                )
                .await?;
                Ok(hold)
            }
        }
    })
}

/// Captures part or all of what a hold reserves (the caller's own wallet's hold, or any
/// for operators). A replay answers the hold as it is now.
pub async fn capture(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    (scope, actor): (&Scope, &str),
    request: &CaptureRequest,
) -> Result<Hold, LedgerError> {
    request.check_shape()?;
    store::retried!(conn, |tx| {
        let (hold, locked) = lock_hold(tx, scope, request.hold_id).await?;
        let wallet = locked
            .get(&hold.wallet_id)
            .ok_or_else(|| LedgerError::Internal("a hold's wallet is gone".into()))?;
        let target = match hold.to_wallet_id {
            Some(id) => Some(
                locked
                    .get(&id)
                    .ok_or_else(|| LedgerError::Internal("a hold's target is gone".into()))?,
            ),
            None => None,
        };
        let currency = currencies
            .get(&wallet.currency)
            .ok_or_else(|| LedgerError::CurrencyNotSupported(wallet.currency.clone()))?;
        let prior = event_by_key(tx, hold.id, &request.key).await?;
        let journaled = store::find_by_key(tx, wallet.id, &request.key).await?;
        let clock = clock(tx).await?;
        match decide::capture(
            currency,
            &hold,
            prior.as_ref(),
            journaled.as_ref(),
            target,
            request,
            clock,
        )? {
            Capture::Replay => Ok(hold),
            Capture::New {
                amount,
                release,
                ends,
            } => {
                let kind = match target {
                    Some(_) => TransactionType::TransferOut,
                    None => TransactionType::Withdraw,
                };
                let mut row = NewRow::fiat(
                    kind,
                    amount,
                    &request.key,
                    hold.description.as_deref(),
                    currency.scale(),
                );
                row.settles_hold = Some(hold.id);
                row.annotation.reference = hold.reference.as_deref();
                row.annotation.metadata = hold.metadata.as_ref();
                let out = settle(tx, wallet, target, &row, -(amount + release)).await?;
                let status = if ends {
                    HoldStatus::Captured
                } else {
                    HoldStatus::Active
                };
                let hold = advance(tx, hold.id, amount, release, status, clock).await?;
                record(
                    tx,
                    &hold,
                    HoldEventKind::Captured,
                    (amount, release),
                    Some(out.id),
                    Some(request),
                    actor,
                    clock,
                )
                .await?;
                Ok(hold)
            }
        }
    })
}

/// Gives back what a hold still reserves. A replay answers the hold as it is now.
pub async fn void(
    conn: &mut AsyncPgConnection,
    (scope, actor): (&Scope, &str),
    request: &VoidRequest,
) -> Result<Hold, LedgerError> {
    input::check_key("idempotencyKey", &request.key)?;
    store::retried!(conn, |tx| {
        let (hold, _) = lock_hold(tx, scope, request.hold_id).await?;
        let prior = event_by_key(tx, hold.id, &request.key).await?;
        let clock = clock(tx).await?;
        match decide::void(&hold, prior.as_ref(), request, clock)? {
            Void::Replay => Ok(hold),
            Void::Release(remaining) => {
                release(
                    tx,
                    &hold,
                    remaining,
                    HoldStatus::Voided,
                    Some(&request.key),
                    actor,
                    clock,
                )
                .await
            }
        }
    })
}

/// Expires the ACTIVE holds past `expires_at`, up to `limit` of them, each in its own
/// transaction under the same locks as a capture; returns how many it expired. Any number
/// of processes may run it at once: a hold another one is expiring is skipped, and one it
/// expired is no longer ACTIVE when looked at again under the locks — each expires once.
pub async fn expire_due(conn: &mut AsyncPgConnection, limit: i64) -> Result<usize, LedgerError> {
    let due: Vec<i64> = holds::table
        .filter(holds::status.eq(HoldStatus::Active))
        .filter(holds::expires_at.le(diesel::dsl::sql::<Timestamptz>("clock_timestamp()")))
        .order((holds::expires_at, holds::id))
        .select(holds::id)
        .limit(limit)
        .load(conn)
        .await?;
    let mut expired = 0;
    for id in due {
        let done = store::retried!(conn, |tx| {
            let Some(hold) = hold_by_id(tx, &Scope::All, id).await? else {
                return Ok(false);
            };
            lock(tx, &[(hold.wallet_id, None)]).await?;
            // Another process expiring (or someone capturing) it: theirs to finish.
            let Some(hold) = holds::table
                .find(id)
                .select(Hold::as_select())
                .for_update()
                .skip_locked()
                .first(tx)
                .await
                .optional()?
            else {
                return Ok(false);
            };
            let clock = clock(tx).await?;
            match decide::expiry(&hold, clock) {
                Some(remaining) => {
                    release(
                        tx,
                        &hold,
                        remaining,
                        HoldStatus::Expired,
                        None,
                        EXPIRY_ACTOR,
                        clock,
                    )
                    .await?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })?;
        if done {
            expired += 1;
            metrics::counter!("wallet_holds_expired_total").increment(1);
        }
    }
    Ok(expired)
}

/// A hold the caller may see (its wallet is theirs, or the caller is an operator).
pub async fn hold_by_id(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    id: i64,
) -> Result<Option<Hold>, LedgerError> {
    let mut q = holds::table
        .inner_join(wallets::table.on(wallets::id.eq(holds::wallet_id)))
        .filter(holds::id.eq(id))
        .select(Hold::as_select())
        .into_boxed();
    if let Some(owner) = scope.owner() {
        q = q.filter(wallets::user_id.eq(owner.to_owned()));
    }
    Ok(q.first(conn).await.optional()?)
}

/// Holds by id, unscoped: for rows the caller was already allowed to see.
pub async fn holds_by_ids(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<Vec<Hold>, LedgerError> {
    Ok(holds::table
        .filter(holds::id.eq_any(ids))
        .select(Hold::as_select())
        .load(conn)
        .await?)
}

/// A page of a wallet's holds (the caller may see the wallet), oldest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: &ListScope,
    status: Option<HoldStatus>,
    page: &PageArgs,
) -> Result<Page<Hold>, LedgerError> {
    use super::page::paginate;
    let mut q = holds::table
        .inner_join(wallets::table.on(wallets::id.eq(holds::wallet_id)))
        .select(Hold::as_select())
        .into_boxed();
    match scope {
        ListScope::Wallet(id) => q = q.filter(holds::wallet_id.eq(*id)),
        ListScope::Owner(user) => q = q.filter(wallets::user_id.eq(user.clone())),
        ListScope::All => {}
    }
    if let Some(status) = status {
        q = q.filter(holds::status.eq(status));
    }
    let rows: Vec<Hold> = paginate!(q, page, holds).load(conn).await?;
    Ok(page.finish(rows))
}

/// The lifecycles of `hold_ids`, each oldest first.
pub async fn events_of(
    conn: &mut AsyncPgConnection,
    hold_ids: &[i64],
) -> Result<HashMap<i64, Vec<HoldEvent>>, LedgerError> {
    let rows: Vec<HoldEvent> = hold_events::table
        .filter(hold_events::hold_id.eq_any(hold_ids))
        .order(hold_events::id)
        .select(HoldEvent::as_select())
        .load(conn)
        .await?;
    let mut by_hold: HashMap<i64, Vec<HoldEvent>> = HashMap::new();
    for e in rows {
        by_hold.entry(e.hold_id).or_default().push(e);
    }
    Ok(by_hold)
}

/// The journal rows on the holds' own wallets that settle `hold_ids` (a held transfer's
/// sending side), each oldest first.
pub async fn captures_of(
    conn: &mut AsyncPgConnection,
    hold_ids: &[i64],
) -> Result<HashMap<i64, Vec<JournalEntry>>, LedgerError> {
    let rows: Vec<JournalEntry> = transactions::table
        .filter(transactions::settles_hold_id.eq_any(hold_ids))
        .filter(transactions::type_.ne(TransactionType::TransferIn))
        .order(transactions::id)
        .select(JournalEntry::as_select())
        .load(conn)
        .await?;
    let mut by_hold: HashMap<i64, Vec<JournalEntry>> = HashMap::new();
    for e in rows {
        if let Some(h) = e.settles_hold_id {
            by_hold.entry(h).or_default().push(e);
        }
    }
    Ok(by_hold)
}

/// Locks the hold's wallets (in id order: the hold's own as the caller may see it, a held
/// transfer's target anyone's), then the hold; returns the hold read under the locks.
async fn lock_hold(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    id: i64,
) -> Result<(Hold, HashMap<i64, Wallet>), LedgerError> {
    let hold = hold_by_id(conn, scope, id)
        .await?
        .ok_or(LedgerError::NotFound("hold"))?;
    let mut ids = vec![(hold.wallet_id, scope.owner())];
    if let Some(to) = hold.to_wallet_id {
        ids.push((to, None));
    }
    let locked = lock(conn, &ids).await?;
    let hold = holds::table
        .find(id)
        .select(Hold::as_select())
        .for_update()
        .first(conn)
        .await?;
    Ok((hold, locked))
}

/// Locks the wallets `ids` names (each only as its owner filter allows), in id order.
async fn lock(
    conn: &mut AsyncPgConnection,
    ids: &[(i64, Option<&str>)],
) -> Result<HashMap<i64, Wallet>, LedgerError> {
    let (ids, owners) = ids
        .iter()
        .map(|(id, owner)| (*id, owner.map(str::to_owned)))
        .unzip();
    store::batch::lock_visible(conn, ids, owners).await
}

async fn clock(conn: &mut AsyncPgConnection) -> Result<DateTime<Utc>, LedgerError> {
    Ok(
        diesel::select(Fixed::<Timestamptz>::new(&["clock_timestamp()"], vec![]))
            .get_result(conn)
            .await?,
    )
}

async fn hold_by_key(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    key: &str,
) -> Result<Option<Hold>, LedgerError> {
    Ok(holds::table
        .filter(holds::wallet_id.eq(wallet_id))
        .filter(holds::idempotency_key.eq(key))
        .select(Hold::as_select())
        .first(conn)
        .await
        .optional()?)
}

async fn event_by_key(
    conn: &mut AsyncPgConnection,
    hold_id: i64,
    key: &str,
) -> Result<Option<HoldEvent>, LedgerError> {
    Ok(hold_events::table
        .filter(hold_events::hold_id.eq(hold_id))
        .filter(hold_events::idempotency_key.eq(key))
        .select(HoldEvent::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Raises (or lowers) the locked wallet's held balance.
async fn change_held(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    change: Decimal,
) -> Result<(), LedgerError> {
    diesel::update(wallets::table.find(wallet_id))
        .set((
            wallets::held_balance.eq(wallets::held_balance + Scaled(change)),
            wallets::updated_at.eq(diesel::dsl::sql::<Timestamptz>(
                "GREATEST(clock_timestamp(), updated_at)",
            )),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends a capture's row to the locked `wallet`'s journal — and, for a held transfer,
/// the receiving row to the locked `target`'s, in the same statement (the database wants
/// a transfer's two sides inserted together) — changing the wallet's balance and held
/// balance in one statement: what the wallet has is unchanged, so a capture settles even
/// where a lowered credit limit refuses new debits. Returns the wallet's row.
async fn settle(
    conn: &mut AsyncPgConnection,
    wallet: &Wallet,
    target: Option<&Wallet>,
    row: &NewRow<'_>,
    held_change: Decimal,
) -> Result<JournalEntry, LedgerError> {
    let balances = row.balances(wallet.balance);
    let at = set_balance(conn, wallet.id, balances.1, held_change).await?;
    let mut entry = row.entry(wallet.id, balances, at);
    let Some(target) = target else {
        return Ok(diesel::insert_into(transactions::table)
            .values(entry)
            .returning(JournalEntry::as_returning())
            .get_result(conn)
            .await?);
    };
    let mut into = row.clone();
    into.kind = TransactionType::TransferIn;
    let target_balances = into.balances(target.balance);
    let target_at = set_balance(conn, target.id, target_balances.1, Decimal::ZERO).await?;
    let mut into = into.entry(target.id, target_balances, target_at);
    let [out_id, in_id] = store::allocate_ids(conn, 2).await?[..] else {
        return Err(LedgerError::Internal(
            "two row ids asked, others given".into(),
        ));
    };
    entry.id = Some(out_id);
    into.id = Some(in_id);
    into.counterpart_id = Some(out_id);
    let rows = store::insert_batch(conn, &[entry, into]).await?;
    rows.into_iter()
        .find(|r| r.wallet_id == wallet.id)
        .ok_or_else(|| LedgerError::Internal("a held transfer's sending row was not stored".into()))
}

/// Sets the locked wallet's balance and changes its held balance; returns its new time.
async fn set_balance(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    balance: Decimal,
    held_change: Decimal,
) -> Result<DateTime<Utc>, LedgerError> {
    Ok(diesel::update(wallets::table.find(wallet_id))
        .set((
            wallets::balance.eq(Scaled(balance)),
            wallets::held_balance.eq(wallets::held_balance + Scaled(held_change)),
            wallets::updated_at.eq(diesel::dsl::sql::<Timestamptz>(
                "GREATEST(clock_timestamp(), updated_at)",
            )),
        ))
        .returning(wallets::updated_at)
        .get_result(conn)
        .await?)
}

/// Records a capture's progress on the hold.
async fn advance(
    conn: &mut AsyncPgConnection,
    id: i64,
    captured: Decimal,
    released: Decimal,
    status: HoldStatus,
    clock: DateTime<Utc>,
) -> Result<Hold, LedgerError> {
    Ok(diesel::update(holds::table.find(id))
        .set((
            holds::captured.eq(holds::captured + Scaled(captured)),
            holds::released.eq(Scaled(released)),
            holds::status.eq(status),
            holds::updated_at.eq(clock),
        ))
        .returning(Hold::as_returning())
        .get_result(conn)
        .await?)
}

/// Ends an ACTIVE hold as `status`, giving back `remaining`.
async fn release(
    conn: &mut AsyncPgConnection,
    hold: &Hold,
    remaining: Decimal,
    status: HoldStatus,
    key: Option<&str>,
    actor: &str,
    clock: DateTime<Utc>,
) -> Result<Hold, LedgerError> {
    change_held(conn, hold.wallet_id, -remaining).await?;
    let hold = advance(conn, hold.id, Decimal::ZERO, remaining, status, clock).await?;
    let kind = match status {
        HoldStatus::Expired => HoldEventKind::Expired,
        _ => HoldEventKind::Voided,
    };
    diesel::insert_into(hold_events::table)
        .values((
            hold_events::hold_id.eq(hold.id),
            hold_events::kind.eq(kind),
            hold_events::amount.eq(Scaled(Decimal::ZERO * remaining)),
            hold_events::released.eq(Scaled(remaining)),
            hold_events::idempotency_key.eq(key),
            hold_events::actor.eq(actor),
            hold_events::created_at.eq(clock),
        ))
        .execute(conn)
        .await?;
    Ok(hold)
}

/// Appends an AUTHORIZED or CAPTURED event.
#[allow(clippy::too_many_arguments)]
async fn record(
    conn: &mut AsyncPgConnection,
    hold: &Hold,
    kind: HoldEventKind,
    (amount, released): (Decimal, Decimal),
    transaction_id: Option<i64>,
    capture: Option<&CaptureRequest>,
    actor: &str,
    clock: DateTime<Utc>,
) -> Result<(), LedgerError> {
    diesel::insert_into(hold_events::table)
        .values((
            hold_events::hold_id.eq(hold.id),
            hold_events::kind.eq(kind),
            hold_events::amount.eq(Scaled(amount)),
            hold_events::released.eq(Scaled(released)),
            hold_events::transaction_id.eq(transaction_id),
            hold_events::idempotency_key.eq(capture.map(|c| c.key.as_str())),
            hold_events::requested.eq(capture.and_then(|c| c.amount).map(Scaled)),
            hold_events::final_capture.eq(capture.is_some_and(|c| c.final_capture)),
            hold_events::actor.eq(actor),
            hold_events::created_at.eq(clock),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
