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
//! Authorisations, captures and voids are requests of the write path like deposits and
//! transfers ([`HoldRequest`]): group-committed with them, locked with them (the wallets
//! in id order, then the holds in id order), and judged with them in arrival order
//! against the running balances by the one judge, whose hold rules are [`decide`]. So a
//! hold racing a withdrawal is judged against the balance the withdrawal left, 50
//! captures of one hold in one batch take exactly what it holds, and a capture racing a
//! void or the expiry either wins whole or finds the hold no longer active. The expiry
//! worker ([`expire_due`]) takes the same locks in the same order, one hold at a time.
//!
//! Invariant (tested): a wallet's `held_balance` is the sum of `amount - captured` over
//! its ACTIVE holds.

pub mod credit;
pub mod decide;

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::fixed_sql::Fixed;
use super::models::{Scaled, text_enum};
use super::store;
use super::{
    JournalEntry, LedgerError, ListScope, Page, PageArgs, Scope, TransactionType, Wallet, input,
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
    /// Microseconds at most (as stored: a replay must compare equal).
    pub expires_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// The server's hold periods.
    pub policy: HoldPolicy,
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

/// `voidHold`.
#[derive(Clone, Debug)]
pub struct VoidRequest {
    pub hold_id: i64,
    /// Scoped to the hold.
    pub key: String,
}

/// What a capture or a void knows of its hold before any lock: the wallets to lock and
/// what its journal rows carry — facts of the hold that never change (the database
/// refuses to change them), so reading them unlocked is safe.
#[derive(Clone, Debug)]
pub struct Located {
    pub wallet_id: i64,
    pub to_wallet_id: Option<i64>,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl Located {
    pub fn of(hold: &Hold) -> Located {
        Located {
            wallet_id: hold.wallet_id,
            to_wallet_id: hold.to_wallet_id,
            description: hold.description.clone(),
            reference: hold.reference.clone(),
            metadata: hold.metadata.clone(),
        }
    }
}

/// A hold request of the write path.
#[derive(Clone, Debug)]
pub enum HoldOp {
    Authorize(AuthorizeRequest),
    Capture(CaptureRequest, Located),
    Void(VoidRequest, Located),
}

/// A hold request and who asked (recorded on its event).
#[derive(Clone, Debug)]
pub struct HoldRequest {
    pub op: HoldOp,
    /// The caller's token subject.
    pub actor: String,
}

impl HoldRequest {
    /// The wallet whose lock orders the request (the hold's own).
    pub fn wallet_id(&self) -> i64 {
        match &self.op {
            HoldOp::Authorize(r) => r.wallet_id,
            HoldOp::Capture(_, at) | HoldOp::Void(_, at) => at.wallet_id,
        }
    }

    /// A held transfer's target.
    pub fn to_wallet_id(&self) -> Option<i64> {
        match &self.op {
            HoldOp::Authorize(r) => r.to_wallet_id,
            HoldOp::Capture(_, at) => at.to_wallet_id,
            HoldOp::Void(..) => None,
        }
    }

    pub fn key(&self) -> &str {
        match &self.op {
            HoldOp::Authorize(r) => &r.key,
            HoldOp::Capture(r, _) => &r.key,
            HoldOp::Void(r, _) => &r.key,
        }
    }

    /// The hold a capture or void names.
    pub fn hold_id(&self) -> Option<i64> {
        match &self.op {
            HoldOp::Authorize(_) => None,
            HoldOp::Capture(r, _) => Some(r.hold_id),
            HoldOp::Void(r, _) => Some(r.hold_id),
        }
    }

    /// Precedence 0 of each (A0, C0, V0): what needs nothing read.
    pub fn check_shape(&self) -> Result<(), LedgerError> {
        match &self.op {
            HoldOp::Authorize(r) => {
                input::check_movement(
                    "idempotencyKey",
                    &r.key,
                    r.description.as_deref(),
                    r.amount,
                )?;
                input::check_annotation(r.reference.as_deref(), r.metadata.as_ref())?;
                if r.to_wallet_id == Some(r.wallet_id) {
                    return Err(LedgerError::BadInput(
                        "a held transfer needs two different wallets".into(),
                    ));
                }
                Ok(())
            }
            HoldOp::Capture(r, _) => {
                input::check_key("idempotencyKey", &r.key)?;
                match r.amount {
                    Some(amount) if amount <= Decimal::ZERO => Err(LedgerError::InvalidAmount(
                        format!("the amount must be greater than zero, got {amount}"),
                    )),
                    _ => Ok(()),
                }
            }
            HoldOp::Void(r, _) => input::check_key("idempotencyKey", &r.key),
        }
    }
}

/// The facts of hold `hold_id` a capture or void needs before its locks, if the caller may
/// see it (C1, V1): from `known` (holds located before: their facts never change), or read
/// and remembered there.
pub async fn locate(
    conn: &mut AsyncPgConnection,
    known: &LocatedHolds,
    scope: &Scope,
    hold_id: i64,
) -> Result<Located, LedgerError> {
    if let Some((owner, located)) = known.get(hold_id)
        && scope.owner().is_none_or(|o| o == owner)
    {
        return Ok(located);
    }
    let found: Option<(Hold, String)> = holds::table
        .inner_join(wallets::table.on(wallets::id.eq(holds::wallet_id)))
        .filter(holds::id.eq(hold_id))
        .select((Hold::as_select(), wallets::user_id))
        .first(conn)
        .await
        .optional()?;
    let (hold, owner) = found
        .filter(|(_, owner)| scope.owner().is_none_or(|o| o == owner))
        .ok_or(LedgerError::NotFound("hold"))?;
    let located = Located::of(&hold);
    known.put(hold_id, owner, located.clone());
    Ok(located)
}

/// Holds located recently, with their wallet's owner: a capture or void of one of them
/// needs no read before the committer (what is kept never changes). Bounded, least
/// recently used out first.
pub struct LocatedHolds(std::sync::Mutex<lru::LruCache<i64, (String, Located)>>);

impl LocatedHolds {
    pub fn new(capacity: usize) -> LocatedHolds {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        LocatedHolds(std::sync::Mutex::new(lru::LruCache::new(capacity)))
    }

    fn get(&self, id: i64) -> Option<(String, Located)> {
        self.0.lock().ok()?.get(&id).cloned()
    }

    fn put(&self, id: i64, owner: String, located: Located) {
        if let Ok(mut cache) = self.0.lock() {
            cache.put(id, (owner, located));
        }
    }

    /// Remembers a hold just authorised on a wallet of `owner`: its capture will not
    /// need to read it first.
    pub fn remember(&self, hold: &Hold, owner: &str) {
        self.put(hold.id, owner.to_owned(), Located::of(hold));
    }
}

impl Default for LocatedHolds {
    fn default() -> Self {
        LocatedHolds::new(16_384)
    }
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
