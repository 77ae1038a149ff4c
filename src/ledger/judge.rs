//! The decisions of the fiat write path, pure: no database, no clock, no async.
//!
//! Every deposit, withdrawal and transfer — applied alone or in a group-commit batch — goes
//! through the same three steps (the shape TigerBeetle gives its state machine):
//!
//! 1. **prefetch** (`store::batch`): lock the wallets in id order, read the rows already
//!    journaled under the requests' keys and the receiving sides of the transfers among
//!    them;
//! 2. **judge** (here): decide each request in arrival order against the running
//!    balances — a new row or two, a replay of what its key already names, or a refusal
//!    that changes nothing and does not fail the others;
//! 3. **commit** (`store::batch`): write the new balances and the journal rows with one
//!    statement each.
//!
//! A request applied alone is a batch of one, so there is one judge and one order of
//! refusals. Holds' authorisations, captures and voids are judged here too, against the
//! running balances, held balances and holds (their own orders of refusals are in
//! [`decide`]). Reversals (operators' corrections, not batched) are decided here too, by
//! [`reversal`], with their own order of refusals. For each request, the first refusal that applies wins, in this order:
//!
//! | # | check | refusal |
//! |---|-------|---------|
//! | 0 | the request's own shape: key, description, amount > 0, reference, metadata; a transfer's two wallets differ ([`Request::check_shape`], before anything is read) | `BadInput`, `InvalidAmount` |
//! | 1 | the keyed wallet (a movement's, a transfer's source) exists and the caller may see it | `NotFound` |
//! | 2 | its key already names a row: the same request replays it, another is a conflict — including a request earlier in the same batch | `IdempotencyConflict` |
//! | 3 | a transfer's target exists (anyone's) | `NotFound` |
//! | 4 | a transfer's wallets hold one currency | `CurrencyMismatch` |
//! | 5 | the currency is known and moved this way (fiat; crypto moves with a chain transfer) | `CurrencyNotSupported` |
//! | 6 | the amount fits the currency: its decimals, its maximum | `InvalidAmount` |
//! | 7 | a debit (withdrawal plus its fee, a transfer's source) is available | `InsufficientFunds` |
//! | 8 | a credit (deposit, a transfer's target) keeps the balance under the ceiling | `InvalidAmount` |
//!
//! Invariants: a refused request writes nothing; a wallet's rows start where its previous
//! row ended (`balance_before` of one is `balance_after` of the one before); a transfer's
//! two rows are adjacent, sending side first; the same key on the same wallet is judged
//! once per batch and replayed after.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::hold::{Hold, HoldEvent, HoldEventKind, HoldOp, HoldRequest, HoldStatus, decide};
use super::models::Scaled;
use super::movement::{Direction, Movement, MovementRequest};
use super::reversal::ReversalRequest;
use super::store::NewRow;
use super::transfer::{Transfer, TransferRequest};
use super::{
    CurrencyKind, CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionType, Wallet,
    input, money,
};

/// What the write path applies: a movement of one wallet, or a transfer between two.
#[derive(Clone, Debug)]
pub enum Request {
    Movement(MovementRequest),
    Transfer(TransferRequest),
    /// An authorisation, capture or void of a fiat hold (see [`super::hold`]).
    Hold(Box<HoldRequest>),
}

/// What a request did. (One per request, moved once: the size difference between the
/// variants costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Done {
    Movement(Movement),
    Transfer(Transfer),
    /// The hold as the request left it (a replay: as it is now).
    Hold(Box<Hold>),
}

impl Request {
    /// The wallet whose key names the request (a transfer's source).
    pub fn keyed_wallet(&self) -> i64 {
        match self {
            Request::Movement(m) => m.wallet_id,
            Request::Transfer(t) => t.from_wallet_id,
            Request::Hold(h) => h.wallet_id(),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Request::Movement(m) => &m.key,
            Request::Transfer(t) => &t.key,
            Request::Hold(h) => h.key(),
        }
    }

    /// Every wallet the request changes (the keyed one first).
    pub fn wallets(&self) -> Vec<i64> {
        match self {
            Request::Movement(m) => vec![m.wallet_id],
            Request::Transfer(t) => vec![t.from_wallet_id, t.to_wallet_id],
            Request::Hold(h) => std::iter::once(h.wallet_id())
                .chain(h.to_wallet_id())
                .collect(),
        }
    }

    /// The other wallet the request touches, anyone's: a transfer's target, a held
    /// transfer's.
    pub fn target(&self) -> Option<i64> {
        match self {
            Request::Movement(_) => None,
            Request::Transfer(t) => Some(t.to_wallet_id),
            Request::Hold(h) => h.to_wallet_id(),
        }
    }

    /// The most journal rows the request writes.
    pub fn rows_at_most(&self) -> usize {
        match self {
            Request::Movement(_) => 1,
            Request::Transfer(_) => 2,
            Request::Hold(h) => match h.op {
                HoldOp::Capture(..) => 2,
                HoldOp::Authorize(_) | HoldOp::Void(..) => 0,
            },
        }
    }

    /// Precedence 0: the checks that need nothing read. A request that passes them cannot
    /// fail a batch.
    pub fn check_shape(&self) -> Result<(), LedgerError> {
        let (key, description, amount, reference, metadata) = match self {
            Request::Movement(m) => (&m.key, &m.description, m.amount, &m.reference, &m.metadata),
            Request::Transfer(t) => (&t.key, &t.description, t.amount, &t.reference, &t.metadata),
            Request::Hold(h) => return h.check_shape(),
        };
        input::check_movement("idempotencyKey", key, description.as_deref(), amount)?;
        input::check_annotation(reference.as_deref(), metadata.as_ref())?;
        if let Request::Transfer(t) = self
            && t.from_wallet_id == t.to_wallet_id
        {
            return Err(LedgerError::BadInput(
                "a transfer needs two different wallets".into(),
            ));
        }
        Ok(())
    }
}

impl Done {
    pub fn into_movement(self) -> Result<Movement, LedgerError> {
        match self {
            Done::Movement(m) => Ok(m),
            _ => Err(LedgerError::Internal(
                "a movement answered as something else".into(),
            )),
        }
    }

    pub fn into_transfer(self) -> Result<Transfer, LedgerError> {
        match self {
            Done::Transfer(t) => Ok(t),
            _ => Err(LedgerError::Internal(
                "a transfer answered as something else".into(),
            )),
        }
    }

    pub fn into_hold(self) -> Result<Hold, LedgerError> {
        match self {
            Done::Hold(h) => Ok(*h),
            _ => Err(LedgerError::Internal(
                "a hold request answered as something else".into(),
            )),
        }
    }
}

/// What the judge reads, prefetched under the wallets' locks.
#[derive(Clone, Debug, Default)]
pub struct Prefetched {
    /// The requests' wallets that some caller naming them may see, locked, by id.
    pub wallets: HashMap<i64, Wallet>,
    /// Rows already journaled under the requests' keys, by (wallet, key).
    pub journaled: HashMap<(i64, String), JournalEntry>,
    /// The receiving sides of the transfers among `journaled`, by sending row id.
    pub received: HashMap<i64, JournalEntry>,
    /// The holds captures and voids name, locked (after the wallets), by id.
    pub holds: HashMap<i64, Hold>,
    /// Holds already authorised under the authorisations' keys, by (wallet, key).
    pub holds_by_key: HashMap<(i64, String), Hold>,
    /// Events already recorded under the captures' and voids' keys, by (hold, key).
    pub hold_events: HashMap<(i64, String), HoldEvent>,
    /// Ids for the holds the batch may authorise, ascending.
    pub hold_ids: Vec<i64>,
    /// The database's clock after the locks: the batch's time.
    pub clock: DateTime<Utc>,
}

/// A step of a hold's lifecycle the batch records.
#[derive(Clone, Debug)]
pub struct NewHoldEvent<'a> {
    pub hold_id: i64,
    pub kind: HoldEventKind,
    pub amount: Decimal,
    pub released: Decimal,
    /// A capture's row: its index among the batch's rows.
    pub row: Option<usize>,
    pub key: Option<&'a str>,
    pub requested: Option<Decimal>,
    pub final_capture: bool,
    pub actor: &'a str,
}

/// A wallet the batch changes: its new balance, held balance and time.
#[derive(Clone, Copy, Debug)]
pub struct Touched {
    pub wallet_id: i64,
    pub balance: Scaled,
    pub held: Scaled,
    pub at: DateTime<Utc>,
}

/// A journal row a batch writes.
#[derive(Clone, Debug)]
pub struct Row<'a> {
    pub wallet_id: i64,
    pub row: NewRow<'a>,
    /// The balances before and after it.
    pub around: (Decimal, Decimal),
    /// On a transfer's receiving row: the index of its sending row.
    pub counterpart: Option<usize>,
}

/// What the judge decided for one request.
#[derive(Debug)]
pub enum Verdict {
    /// New journal rows: the index of the first among the batch's rows.
    Insert(usize),
    /// The key's movement is journaled already: the original.
    Replay(Box<Done>),
    /// The same key and request earlier in this batch: its rows.
    ReplayOfInsert(usize),
    /// A hold request's answer: the hold as it left it (or as it is, for a replay).
    Hold(Box<Hold>),
    Refused(LedgerError),
}

/// Judges requests one after another against running balances.
pub struct Judge<'a> {
    currencies: &'a CurrencyRegistry,
    state: Prefetched,
    rows: Vec<Row<'a>>,
    /// The first row of each request this batch inserts, by (wallet, key).
    earlier: HashMap<(i64, &'a str), usize>,
    /// Wallets whose balance or held balance the batch changes, in first-touched order.
    touched: Vec<i64>,
    /// Holds the batch authorises, in order.
    new_holds: Vec<Hold>,
    /// Each authorisation of this batch, by (wallet, key): its index in `new_holds`.
    earlier_holds: HashMap<(i64, &'a str), usize>,
    /// Prefetched holds the batch changes, in first-changed order.
    changed_holds: Vec<i64>,
    events: Vec<NewHoldEvent<'a>>,
    /// Each capture's and void's event of this batch, by (hold, key).
    earlier_events: HashMap<(i64, &'a str), usize>,
}

/// A judged batch: the rows to write, each touched wallet's new balances, and the holds.
#[derive(Debug)]
pub struct Decided<'a> {
    pub rows: Vec<Row<'a>>,
    /// Each touched wallet's new balances and time, in first-touched order.
    pub touched: Vec<Touched>,
    /// Holds authorised, to insert.
    pub new_holds: Vec<Hold>,
    /// Holds captured or voided, as the batch leaves them.
    pub changed_holds: Vec<Hold>,
    /// Their lifecycles' new steps, in order.
    pub events: Vec<NewHoldEvent<'a>>,
    /// The batch's time.
    pub clock: DateTime<Utc>,
}

impl Decided<'_> {
    /// Whether the batch writes nothing (replays and refusals only).
    pub fn is_empty(&self) -> bool {
        self.touched.is_empty() && self.changed_holds.is_empty()
    }
}

impl<'a> Judge<'a> {
    pub fn new(currencies: &'a CurrencyRegistry, state: Prefetched) -> Judge<'a> {
        Judge {
            currencies,
            state,
            rows: Vec::new(),
            earlier: HashMap::new(),
            touched: Vec::new(),
            new_holds: Vec::new(),
            earlier_holds: HashMap::new(),
            changed_holds: Vec::new(),
            events: Vec::new(),
            earlier_events: HashMap::new(),
        }
    }

    /// Decides `request` (its shape already checked) made by a caller with `scope`, and
    /// applies its rows to the running balances.
    pub fn judge(&mut self, scope: &Scope, request: &'a Request) -> Verdict {
        if let Request::Hold(hold) = request {
            return match self.judge_hold(scope, hold) {
                Ok(hold) => Verdict::Hold(Box::new(hold)),
                Err(e) => Verdict::Refused(e),
            };
        }
        match self.decide(scope, request) {
            Ok(Decision::New(new_rows)) => match self.append(new_rows) {
                Ok(first) => {
                    self.earlier
                        .insert((request.keyed_wallet(), request.key()), first);
                    Verdict::Insert(first)
                }
                Err(e) => Verdict::Refused(e),
            },
            Ok(Decision::Replay(done)) => Verdict::Replay(done),
            Ok(Decision::ReplayOfInsert(i)) => Verdict::ReplayOfInsert(i),
            Err(e) => Verdict::Refused(e),
        }
    }

    /// Appends rows to the batch, each to its wallet's running balance; returns the index
    /// of the first.
    fn append(&mut self, new_rows: Vec<(i64, NewRow<'a>)>) -> Result<usize, LedgerError> {
        let first = self.rows.len();
        for (wallet_id, row) in new_rows {
            let Some(wallet) = self.state.wallets.get_mut(&wallet_id) else {
                return Err(LedgerError::Internal(
                    "a judged wallet is not locked".into(),
                ));
            };
            let around = row.balances(wallet.balance);
            wallet.balance = around.1;
            // A transfer's receiving row names the sending row just before it.
            let counterpart = (row.kind == TransactionType::TransferIn)
                .then(|| self.rows.len().checked_sub(1))
                .flatten();
            self.rows.push(Row {
                wallet_id,
                row,
                around,
                counterpart,
            });
            self.touch(wallet_id);
        }
        Ok(first)
    }

    fn touch(&mut self, wallet_id: i64) {
        if !self.touched.contains(&wallet_id) {
            self.touched.push(wallet_id);
        }
    }

    /// Changes the running held balance of a locked wallet.
    fn hold_funds(&mut self, wallet_id: i64, change: Decimal) -> Result<(), LedgerError> {
        let wallet = self
            .state
            .wallets
            .get_mut(&wallet_id)
            .ok_or_else(|| LedgerError::Internal("a judged wallet is not locked".into()))?;
        wallet.held_balance += change;
        self.touch(wallet_id);
        Ok(())
    }

    /// The rows to write, the new balances and the holds. Each touched wallet's time is
    /// `clock` (the batch's, read from the database after the locks) or the wallet's own
    /// if that is later: a wallet's time never runs backwards.
    pub fn decided(self, clock: DateTime<Utc>) -> Decided<'a> {
        let touched = self
            .touched
            .iter()
            .filter_map(|id| self.state.wallets.get(id))
            .map(|w| Touched {
                wallet_id: w.id,
                balance: Scaled(w.balance),
                held: Scaled(w.held_balance),
                at: clock.max(w.updated_at),
            })
            .collect();
        let changed_holds = self
            .changed_holds
            .iter()
            .filter_map(|id| self.state.holds.get(id).cloned())
            .collect();
        Decided {
            rows: self.rows,
            touched,
            new_holds: self.new_holds,
            changed_holds,
            events: self.events,
            clock,
        }
    }

    /// A hold request, judged against the running balances and holds (see [`decide`] for
    /// each one's order of refusals).
    fn judge_hold(&mut self, scope: &Scope, request: &'a HoldRequest) -> Result<Hold, LedgerError> {
        let clock = self.state.clock;
        let missing = match request.op {
            HoldOp::Authorize(_) => "wallet",
            HoldOp::Capture(..) | HoldOp::Void(..) => "hold",
        };
        let wallet = self
            .state
            .wallets
            .get(&request.wallet_id())
            .filter(|w| scope.owner().is_none_or(|owner| w.user_id == owner))
            .ok_or(LedgerError::NotFound(missing))?
            .clone();
        let actor = request.actor.as_str();
        match &request.op {
            HoldOp::Authorize(r) => {
                if let Some(&i) = self.earlier_holds.get(&(wallet.id, r.key.as_str())) {
                    let earlier = &self.new_holds[i];
                    // The same key earlier in this batch: the hold it made, as it is.
                    return match decide::authorize(
                        self.currencies,
                        &r.policy,
                        &wallet,
                        None,
                        Some(earlier),
                        r,
                        clock,
                    )? {
                        decide::Authorization::Replay => Ok(earlier.clone()),
                        decide::Authorization::New { .. } => {
                            Err(LedgerError::Internal("a key decided twice".into()))
                        }
                    };
                }
                let existing = self.state.holds_by_key.get(&(wallet.id, r.key.clone()));
                let target = r.to_wallet_id.map(|id| self.state.wallets.get(&id));
                match decide::authorize(
                    self.currencies,
                    &r.policy,
                    &wallet,
                    target,
                    existing,
                    r,
                    clock,
                )? {
                    decide::Authorization::Replay => existing
                        .cloned()
                        .ok_or_else(|| LedgerError::Internal("a replay without its hold".into())),
                    decide::Authorization::New { amount, expires_at } => {
                        let id = self
                            .state
                            .hold_ids
                            .get(self.new_holds.len())
                            .copied()
                            .ok_or_else(|| {
                                LedgerError::Internal("fewer hold ids taken than holds".into())
                            })?;
                        self.hold_funds(wallet.id, amount)?;
                        let zero = Decimal::ZERO * amount;
                        let hold = Hold {
                            id,
                            wallet_id: wallet.id,
                            to_wallet_id: r.to_wallet_id,
                            amount,
                            captured: zero,
                            released: zero,
                            status: HoldStatus::Active,
                            idempotency_key: r.key.clone(),
                            expires_at,
                            description: r.description.clone(),
                            reference: r.reference.clone(),
                            metadata: r.metadata.clone(),
                            created_by: actor.to_owned(),
                            created_at: clock,
                            updated_at: clock,
                        };
                        self.events.push(NewHoldEvent {
                            hold_id: id,
                            kind: HoldEventKind::Authorized,
                            amount,
                            released: zero,
                            row: None,
                            key: None,
                            requested: None,
                            final_capture: false,
                            actor,
                        });
                        self.earlier_holds
                            .insert((wallet.id, r.key.as_str()), self.new_holds.len());
                        self.new_holds.push(hold.clone());
                        Ok(hold)
                    }
                }
            }
            HoldOp::Capture(r, located) => {
                let hold = self.locked_hold(r.hold_id, wallet.id)?;
                let prior = self.prior_event(hold.id, &r.key);
                // The key names another row of the wallet: journaled, or earlier here.
                let key_used = self
                    .state
                    .journaled
                    .contains_key(&(wallet.id, r.key.clone()))
                    || self.earlier.contains_key(&(wallet.id, r.key.as_str()));
                let currency = self
                    .currencies
                    .get(&wallet.currency)
                    .ok_or_else(|| LedgerError::CurrencyNotSupported(wallet.currency.clone()))?;
                let target = match hold.to_wallet_id {
                    Some(id) => Some(
                        self.state
                            .wallets
                            .get(&id)
                            .ok_or_else(|| {
                                LedgerError::Internal("a hold's target is not locked".into())
                            })?
                            .clone(),
                    ),
                    None => None,
                };
                match decide::capture(
                    currency,
                    &hold,
                    prior.as_ref(),
                    key_used,
                    target.as_ref(),
                    r,
                    clock,
                )? {
                    decide::Capture::Replay => Ok(hold),
                    decide::Capture::New {
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
                            &r.key,
                            located.description.as_deref(),
                            currency.scale(),
                        );
                        row.settles_hold = Some(hold.id);
                        row.annotation.reference = located.reference.as_deref();
                        row.annotation.metadata = located.metadata.as_ref();
                        let mut rows = vec![(wallet.id, row.clone())];
                        if let Some(t) = &target {
                            row.kind = TransactionType::TransferIn;
                            rows.push((t.id, row));
                        }
                        let first = self.append(rows)?;
                        self.earlier.insert((wallet.id, r.key.as_str()), first);
                        self.hold_funds(wallet.id, -(amount + release))?;
                        let hold = self.change_hold(
                            hold.id,
                            |h| {
                                h.captured += amount;
                                h.released = release;
                                if ends {
                                    h.status = HoldStatus::Captured;
                                }
                            },
                            clock,
                        )?;
                        self.record(NewHoldEvent {
                            hold_id: hold.id,
                            kind: HoldEventKind::Captured,
                            amount,
                            released: release,
                            row: Some(first),
                            key: Some(&r.key),
                            requested: r.amount,
                            final_capture: r.final_capture,
                            actor,
                        });
                        Ok(hold)
                    }
                }
            }
            HoldOp::Void(r, _) => {
                let hold = self.locked_hold(r.hold_id, wallet.id)?;
                let prior = self.prior_event(hold.id, &r.key);
                match decide::void(&hold, prior.as_ref(), r, clock)? {
                    decide::Void::Replay => Ok(hold),
                    decide::Void::Release(remaining) => {
                        self.hold_funds(wallet.id, -remaining)?;
                        let hold = self.change_hold(
                            hold.id,
                            |h| {
                                h.released = remaining;
                                h.status = HoldStatus::Voided;
                            },
                            clock,
                        )?;
                        self.record(NewHoldEvent {
                            hold_id: hold.id,
                            kind: HoldEventKind::Voided,
                            amount: Decimal::ZERO * remaining,
                            released: remaining,
                            row: None,
                            key: Some(&r.key),
                            requested: None,
                            final_capture: false,
                            actor,
                        });
                        Ok(hold)
                    }
                }
            }
        }
    }

    /// The locked hold a capture or void names, as the batch has left it so far.
    fn locked_hold(&self, id: i64, wallet_id: i64) -> Result<Hold, LedgerError> {
        self.state
            .holds
            .get(&id)
            .filter(|h| h.wallet_id == wallet_id)
            .cloned()
            .ok_or(LedgerError::NotFound("hold"))
    }

    /// The event a capture's or void's key already names on the hold: earlier in this
    /// batch, or recorded before.
    fn prior_event(&self, hold_id: i64, key: &str) -> Option<HoldEvent> {
        if let Some(&i) = self.earlier_events.get(&(hold_id, key)) {
            let e = &self.events[i];
            return Some(HoldEvent {
                id: 0,
                hold_id,
                kind: e.kind,
                amount: e.amount,
                released: e.released,
                transaction_id: None,
                idempotency_key: e.key.map(str::to_owned),
                requested: e.requested,
                final_capture: e.final_capture,
                actor: e.actor.to_owned(),
                created_at: self.state.clock,
            });
        }
        self.state
            .hold_events
            .get(&(hold_id, key.to_owned()))
            .cloned()
    }

    fn change_hold(
        &mut self,
        id: i64,
        change: impl FnOnce(&mut Hold),
        clock: DateTime<Utc>,
    ) -> Result<Hold, LedgerError> {
        let hold = self
            .state
            .holds
            .get_mut(&id)
            .ok_or_else(|| LedgerError::Internal("a judged hold is not locked".into()))?;
        change(hold);
        hold.updated_at = clock.max(hold.updated_at);
        let hold = hold.clone();
        if !self.changed_holds.contains(&id) {
            self.changed_holds.push(id);
        }
        Ok(hold)
    }

    fn record(&mut self, event: NewHoldEvent<'a>) {
        if let Some(key) = event.key {
            self.earlier_events
                .insert((event.hold_id, key), self.events.len());
        }
        self.events.push(event);
    }

    /// Precedence 1 to 8 (see the module's table).
    fn decide(&self, scope: &Scope, request: &'a Request) -> Result<Decision<'a>, LedgerError> {
        let keyed = request.keyed_wallet();
        let wallet = self
            .state
            .wallets
            .get(&keyed)
            .filter(|w| scope.owner().is_none_or(|owner| w.user_id == owner))
            .ok_or(LedgerError::NotFound("wallet"))?;
        let journaled = self.state.journaled.get(&(keyed, request.key().to_owned()));
        let earlier = self.earlier.get(&(keyed, request.key())).copied();
        match request {
            Request::Movement(request) => {
                if let Some(e) = journaled {
                    let same = same_movement(e, request);
                    return replay_or_conflict(e.clone(), same, "idempotencyKey", &request.key)
                        .map(|m| Decision::Replay(Box::new(Done::Movement(m))));
                }
                if let Some(i) = earlier {
                    let same = self.rows[i].row.records(
                        request.direction.transaction_type(),
                        request.amount,
                        request.description.as_deref(),
                        request.annotation(),
                    );
                    return match same {
                        true => Ok(Decision::ReplayOfInsert(i)),
                        false => Err(key_conflict("idempotencyKey", &request.key)),
                    };
                }
                movement_row(self.currencies, wallet, request)
                    .map(|row| Decision::New(vec![(wallet.id, row)]))
            }
            Request::Transfer(request) => {
                if let Some(out) = journaled {
                    let into = self.state.received.get(&out.id).cloned();
                    return transfer_replay(out.clone(), into, request)
                        .map(|t| Decision::Replay(Box::new(Done::Transfer(t))));
                }
                if let Some(i) = earlier {
                    let (out, into) = (&self.rows[i], self.rows.get(i + 1));
                    let same = out.row.records(
                        TransactionType::TransferOut,
                        request.amount,
                        request.description.as_deref(),
                        request.annotation(),
                    ) && into.is_some_and(|r| r.wallet_id == request.to_wallet_id);
                    return match same {
                        true => Ok(Decision::ReplayOfInsert(i)),
                        false => Err(key_conflict("idempotencyKey", &request.key)),
                    };
                }
                let to = self
                    .state
                    .wallets
                    .get(&request.to_wallet_id)
                    .ok_or(LedgerError::NotFound("wallet"))?;
                let (out, into) = transfer_rows(self.currencies, wallet, to, request)?;
                Ok(Decision::New(vec![(wallet.id, out), (to.id, into)]))
            }
            Request::Hold(_) => Err(LedgerError::Internal(
                "a hold request is judged by judge_hold".into(),
            )),
        }
    }
}

enum Decision<'a> {
    /// The rows to append, each with its wallet.
    New(Vec<(i64, NewRow<'a>)>),
    Replay(Box<Done>),
    ReplayOfInsert(usize),
}

/// Each request's answer, in batch order, given the batch's rows as stored (in the order
/// of [`Decided::rows`]).
pub fn answers(
    verdicts: Vec<Verdict>,
    rows: &[Row<'_>],
    stored: &[JournalEntry],
) -> Vec<Result<Done, LedgerError>> {
    // A new transfer's rows are at `i` and `i + 1`.
    let done = |i: usize, replayed: bool| -> Result<Done, LedgerError> {
        let stored_at = |i: usize| {
            stored
                .get(i)
                .cloned()
                .ok_or_else(|| LedgerError::Internal("a judged row was not stored".into()))
        };
        Ok(match rows.get(i).map(|r| r.row.kind) {
            Some(TransactionType::TransferOut) => Done::Transfer(Transfer {
                out: stored_at(i)?,
                into: stored_at(i + 1)?,
                replayed,
            }),
            _ => Done::Movement(Movement {
                entry: stored_at(i)?,
                replayed,
            }),
        })
    };
    verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Insert(i) => done(i, false),
            Verdict::ReplayOfInsert(i) => done(i, true),
            Verdict::Replay(done) => Ok(*done),
            Verdict::Hold(hold) => Ok(Done::Hold(hold)),
            Verdict::Refused(e) => Err(e),
        })
        .collect()
}

/// Precedence 5 to 8 for a movement: the row it appends to `wallet` (holding the running
/// balance), or why not.
fn movement_row<'r>(
    currencies: &CurrencyRegistry,
    wallet: &Wallet,
    request: &'r MovementRequest,
) -> Result<NewRow<'r>, LedgerError> {
    // Crypto moves only with a chain transfer behind it (processCryptoDeposit,
    // cryptoWithdraw).
    let currency = currencies
        .get(&wallet.currency)
        .filter(|c| c.kind == CurrencyKind::Fiat)
        .ok_or_else(|| {
            LedgerError::CurrencyNotSupported(format!(
                "{} wallets are not moved with deposit/withdraw",
                wallet.currency
            ))
        })?;
    let amount = money::validate_amount(request.amount, currency)?;
    let mut fee = Decimal::ZERO;
    match request.direction {
        Direction::Deposit => money::check_credit(wallet, amount, currency)?,
        Direction::Withdraw => {
            // A configured withdrawal fee is paid on top, to fee revenue.
            fee = currencies
                .withdrawal_fee(&currency.code)
                .unwrap_or_default();
            money::check_funds(wallet, amount + fee)?;
        }
    }
    let mut row = NewRow::fiat(
        request.direction.transaction_type(),
        amount,
        &request.key,
        request.description.as_deref(),
        currency.scale(),
    );
    row.fee = fee;
    row.annotation = request.annotation();
    Ok(row)
}

/// Precedence 4 to 8 for a transfer: the two rows it appends to `from` and `to`, or why
/// not.
fn transfer_rows<'r>(
    currencies: &CurrencyRegistry,
    from: &Wallet,
    to: &Wallet,
    request: &'r TransferRequest,
) -> Result<(NewRow<'r>, NewRow<'r>), LedgerError> {
    if from.currency != to.currency {
        return Err(LedgerError::CurrencyMismatch(format!(
            "the source wallet holds {} and the target {}",
            from.currency, to.currency
        )));
    }
    let currency = currencies
        .get(&from.currency)
        .ok_or_else(|| LedgerError::CurrencyNotSupported(from.currency.clone()))?;
    if currency.kind == CurrencyKind::Crypto {
        // Withdrawals are signed from each wallet's own address: a book transfer would
        // leave the receiver with a balance its address cannot pay out.
        return Err(LedgerError::CurrencyNotSupported(format!(
            "transfers of {} between wallets are not supported",
            currency.code
        )));
    }
    let amount = money::validate_amount(request.amount, currency)?;
    money::check_funds(from, amount)?;
    money::check_credit(to, amount, currency)?;
    let side = |kind| {
        let mut row = NewRow::fiat(
            kind,
            amount,
            &request.key,
            request.description.as_deref(),
            currency.scale(),
        );
        row.annotation = request.annotation();
        row
    };
    Ok((
        side(TransactionType::TransferOut),
        side(TransactionType::TransferIn),
    ))
}

/// Whether `existing` is what `request` would have written (a hold's capture never is:
/// it shares the wallet's keys, not its request).
fn same_movement(existing: &JournalEntry, request: &MovementRequest) -> bool {
    existing.settles_hold_id.is_none()
        && existing.wallet_id == request.wallet_id
        && existing.kind == request.direction.transaction_type()
        && existing.amount == request.amount
        && existing.description == request.description
        && request.annotation().matches(existing)
}

/// The answer to a transfer whose key names `out` on the source wallet: the original
/// transfer if it is the same request to the same wallet, a conflict otherwise.
fn transfer_replay(
    out: JournalEntry,
    into: Option<JournalEntry>,
    request: &TransferRequest,
) -> Result<Transfer, LedgerError> {
    let same_out = out.kind == TransactionType::TransferOut
        && out.settles_hold_id.is_none()
        && out.amount == request.amount
        && out.description == request.description
        && request.annotation().matches(&out);
    match into {
        Some(into) if same_out && into.wallet_id == request.to_wallet_id => Ok(Transfer {
            out,
            into,
            replayed: true,
        }),
        _ => Err(key_conflict("idempotencyKey", &request.key)),
    }
}

/// What a reversal's judge reads: the reversed row, read first; then, under the locks of
/// its wallet and its partner's, what the key names, an earlier reversal, and a chain
/// deposit's flag.
#[derive(Clone, Debug)]
pub struct ReversalPrefetched {
    pub original: JournalEntry,
    /// A transfer's other side and its wallet (locked), reversed with it.
    pub partner: Option<(JournalEntry, Wallet)>,
    /// The original's wallet, locked.
    pub wallet: Wallet,
    /// The row the request's key already names on that wallet.
    pub journaled: Option<JournalEntry>,
    /// An earlier reversal of the original.
    pub reversed_by: Option<JournalEntry>,
    /// A chain deposit's credit: whether the deposit is flagged `REORGED` now.
    pub deposit_flagged: bool,
}

/// What the judge decided for a reversal.
#[derive(Debug)]
pub enum ReversalDecision<'r> {
    /// The key's reversal exists already: the original.
    Replay(Movement),
    /// The row on the original's wallet, and on its partner's for a transfer.
    New(NewRow<'r>, Option<NewRow<'r>>),
}

/// Decides a reversal (its request's shape already checked). The first refusal that
/// applies wins, in this order:
///
/// | # | check | refusal |
/// |---|-------|---------|
/// | R1 | the original is reversible: not a reversal or a refund, not part of a movement in progress, not a chain movement — except a chain deposit's credit ([`check_reversible`]) | `BadInput` |
/// | R2 | the key already names a row: the same reversal replays it, anything else is a conflict | `IdempotencyConflict` |
/// | R3 | the original was not reversed already | `AlreadyReversed` |
/// | R4 | a chain deposit's credit only while the deposit is flagged `REORGED` | `BadInput` |
/// | R5 | the currency is known | `CurrencyNotSupported` |
/// | R6 | undoing a credit leaves the funds (each side: the original's wallet first) | `InsufficientFunds` |
/// | R7 | undoing a debit keeps the balance under the ceiling | `InvalidAmount` |
pub fn reversal<'r>(
    currencies: &CurrencyRegistry,
    state: &ReversalPrefetched,
    request: &'r ReversalRequest,
) -> Result<ReversalDecision<'r>, LedgerError> {
    let original = &state.original;
    check_reversible(original)?;
    if let Some(existing) = &state.journaled {
        let same = existing.kind == TransactionType::Reversal
            && existing.reverses_id == Some(original.id)
            && existing.description.as_deref() == Some(request.reason.as_str());
        return replay_or_conflict(existing.clone(), same, "idempotencyKey", &request.key)
            .map(ReversalDecision::Replay);
    }
    if let Some(earlier) = &state.reversed_by {
        return Err(LedgerError::AlreadyReversed(format!(
            "the transaction was already reversed (by {})",
            earlier.tx_hash
        )));
    }
    if chain_credit(original).is_some() && !state.deposit_flagged {
        return Err(LedgerError::BadInput(
            "the transaction credited a chain deposit: it can be reversed only while \
             the deposit is flagged REORGED (a reorganisation took its transaction off \
             the chain after it was credited)"
                .into(),
        ));
    }
    let first = reversal_row(currencies, &state.wallet, original, request)?;
    let second = match &state.partner {
        Some((partner, wallet)) => Some(reversal_row(currencies, wallet, partner, request)?),
        None => None,
    };
    Ok(ReversalDecision::New(first, second))
}

/// The deposit hold whose credit `original` is, if it is a chain deposit's credit.
pub fn chain_credit(original: &JournalEntry) -> Option<i64> {
    original
        .hold_id
        .filter(|_| original.kind == TransactionType::Deposit && original.network.is_some())
}

/// R1: only completed fiat movements and transfers are reversed — and a chain deposit's
/// credit while the deposit is flagged REORGED (R4, checked once its wallet is locked).
pub fn check_reversible(original: &JournalEntry) -> Result<(), LedgerError> {
    let refuse = |why: &str| {
        Err(LedgerError::BadInput(format!(
            "{why}: it cannot be reversed"
        )))
    };
    match original.kind {
        TransactionType::Reversal => return refuse("the transaction is a reversal"),
        TransactionType::Refund => return refuse("the transaction is a refund"),
        _ => {}
    }
    if original.hold {
        return refuse("the transaction is part of a movement in progress");
    }
    if chain_credit(original).is_some() {
        return Ok(());
    }
    if original.network.is_some() {
        return refuse("the transaction moved money on a chain");
    }
    if original.hold_id.is_some() {
        return refuse("the transaction is part of a movement in progress");
    }
    Ok(())
}

/// R5 to R7: the row that undoes `original` on its (locked) `wallet`, if the wallet can
/// take it.
fn reversal_row<'r>(
    currencies: &CurrencyRegistry,
    wallet: &Wallet,
    original: &JournalEntry,
    request: &'r ReversalRequest,
) -> Result<NewRow<'r>, LedgerError> {
    let currency = currencies
        .get(&wallet.currency)
        .ok_or_else(|| LedgerError::CurrencyNotSupported(wallet.currency.clone()))?;
    let change = -original.balance_change();
    if change < Decimal::ZERO {
        money::check_funds(wallet, -change)?;
    }
    if change > Decimal::ZERO {
        money::check_credit(wallet, change, currency)?;
    }
    let mut row = NewRow::fiat(
        TransactionType::Reversal,
        original.amount,
        &request.key,
        Some(request.reason.as_str()),
        currency.scale(),
    );
    row.fee = original.fee;
    row.reverses = Some((original.id, original.balance_change()));
    Ok(row)
}

/// The answer to a request whose key (`key_field` in the API) already names `existing`:
/// the original when `same` (the request is what wrote it), a conflict otherwise.
pub fn replay_or_conflict(
    existing: JournalEntry,
    same: bool,
    key_field: &str,
    key: &str,
) -> Result<Movement, LedgerError> {
    if same {
        Ok(Movement {
            entry: existing,
            replayed: true,
        })
    } else {
        Err(key_conflict(key_field, key))
    }
}

/// A key (`key_field` in the API) already used on the wallet for another request.
pub fn key_conflict(key_field: &str, key: &str) -> LedgerError {
    LedgerError::IdempotencyConflict(format!(
        "{key_field} {key:?} was already used for a different request"
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    //! The judge's refusals, each tested in order of precedence: a request that breaks
    //! every rule is refused by the first; mend that one and the next answers, down the
    //! table in the module's documentation. Then what a batch adds: running balances,
    //! keys repeated within it, replays of what is journaled.

    use std::collections::BTreeMap;

    use super::*;
    use crate::ledger::{Currency, TransactionStatus};

    fn currencies() -> CurrencyRegistry {
        CurrencyRegistry::from_rows(vec![
            Currency::plain("USD", CurrencyKind::Fiat, 2),
            Currency::plain("BTC", CurrencyKind::Crypto, 8),
        ])
        .with_withdrawal_fees(&BTreeMap::from([("USD".into(), dec("1"))]), |_| None)
        .expect("fees")
    }

    pub(crate) fn dec(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    pub(crate) fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    pub(crate) fn wallet(id: i64, user: &str, currency: &str, balance: &str) -> Wallet {
        Wallet {
            id,
            user_id: user.into(),
            currency: currency.into(),
            balance: dec(balance),
            locked_balance: Decimal::ZERO,
            network: None,
            address: None,
            derivation_path: None,
            created_at: at(0),
            updated_at: at(0),
            credit_limit: Decimal::ZERO,
            held_balance: Decimal::ZERO,
        }
    }

    pub(crate) fn entry(
        id: i64,
        wallet_id: i64,
        kind: TransactionType,
        amount: &str,
        key: &str,
    ) -> JournalEntry {
        JournalEntry {
            id,
            wallet_id,
            kind,
            amount: dec(amount),
            fee: Decimal::ZERO,
            balance_before: Decimal::ZERO,
            balance_after: Decimal::ZERO,
            status: TransactionStatus::Completed,
            tx_hash: key.into(),
            description: None,
            created_at: at(0),
            updated_at: at(0),
            network: None,
            from_address: None,
            to_address: None,
            confirmations: None,
            required_confirmations: None,
            block_number: None,
            gas_price: None,
            gas_used: None,
            raw: None,
            hold: false,
            hold_id: None,
            chain_tx_hash: None,
            status_reason: None,
            counterpart_id: None,
            reverses_id: None,
            network_fee: None,
            reference: None,
            metadata: None,
            settles_hold_id: None,
        }
    }

    /// USD wallets 1 (alice, 100.00), 2 (bob, empty), 6 (bob, at the ceiling's edge);
    /// BTC wallets 3 (alice) and 5 (bob); wallet 4 in a currency nobody configured.
    /// Journaled: a deposit under key `used` on wallet 1, and a transfer 1 → 2 under
    /// `sent`.
    fn state() -> Prefetched {
        let wallets = [
            wallet(1, "alice", "USD", "100.00"),
            wallet(2, "bob", "USD", "0.00"),
            wallet(3, "alice", "BTC", "1.00000000"),
            wallet(4, "alice", "XYZ", "50"),
            wallet(5, "bob", "BTC", "0"),
            wallet(6, "bob", "USD", "9999999999999999999999999.50"),
        ];
        let mut out = entry(11, 1, TransactionType::TransferOut, "7.00", "sent");
        out.balance_before = dec("107.00");
        out.balance_after = dec("100.00");
        let mut into = entry(12, 2, TransactionType::TransferIn, "7.00", "sent");
        into.counterpart_id = Some(11);
        Prefetched {
            wallets: wallets.into_iter().map(|w| (w.id, w)).collect(),
            journaled: HashMap::from([
                (
                    (1, "used".into()),
                    entry(10, 1, TransactionType::Deposit, "5.00", "used"),
                ),
                ((1, "sent".into()), out),
            ]),
            received: HashMap::from([(11, into)]),
            ..Prefetched::default()
        }
    }

    fn movement(wallet_id: i64, direction: Direction, amount: &str, key: &str) -> Request {
        Request::Movement(MovementRequest {
            wallet_id,
            direction,
            amount: dec(amount),
            key: key.into(),
            description: None,
            reference: None,
            metadata: None,
        })
    }

    fn transfer(from: i64, to: i64, amount: &str, key: &str) -> Request {
        Request::Transfer(TransferRequest {
            from_wallet_id: from,
            to_wallet_id: to,
            amount: dec(amount),
            key: key.into(),
            description: None,
            reference: None,
            metadata: None,
        })
    }

    fn alice() -> Scope {
        Scope::Owner("alice".into())
    }

    /// The name of a verdict, as the API's error codes name refusals.
    fn named(verdict: &Verdict) -> &'static str {
        match verdict {
            Verdict::Insert(_) => "insert",
            Verdict::Replay(_) => "replay",
            Verdict::ReplayOfInsert(_) => "replay of insert",
            Verdict::Hold(_) => "hold",
            Verdict::Refused(e) => refusal(e),
        }
    }

    fn refusal(e: &LedgerError) -> &'static str {
        match e {
            LedgerError::NotFound(_) => "NOT_FOUND",
            LedgerError::BadInput(_) => "BAD_INPUT",
            LedgerError::InvalidAmount(_) => "INVALID_AMOUNT",
            LedgerError::InsufficientFunds { .. } => "INSUFFICIENT_FUNDS",
            LedgerError::IdempotencyConflict(_) => "IDEMPOTENCY_CONFLICT",
            LedgerError::CurrencyNotSupported(_) => "CURRENCY_NOT_SUPPORTED",
            LedgerError::CurrencyMismatch(_) => "CURRENCY_MISMATCH",
            LedgerError::AlreadyReversed(_) => "ALREADY_REVERSED",
            LedgerError::HoldExceeded(_) => "HOLD_EXCEEDED",
            LedgerError::HoldNotActive(_) => "HOLD_NOT_ACTIVE",
            other => panic!("unexpected refusal {other:?}"),
        }
    }

    /// Judges each request alone (a batch of one) against a fresh state.
    fn alone(scope: &Scope, request: &Request) -> &'static str {
        let currencies = currencies();
        let mut judge = Judge::new(&currencies, state());
        named(&judge.judge(scope, request))
    }

    #[test]
    fn shape_is_judged_before_anything_is_read() {
        let cases = [
            (movement(1, Direction::Deposit, "1", " "), "BAD_INPUT"),
            (movement(1, Direction::Deposit, "1", "k\u{0}"), "BAD_INPUT"),
            (movement(1, Direction::Deposit, "0", "k"), "INVALID_AMOUNT"),
            (movement(1, Direction::Deposit, "-1", "k"), "INVALID_AMOUNT"),
            (transfer(1, 1, "1", "k"), "BAD_INPUT"),
            (transfer(1, 2, "0", "k"), "INVALID_AMOUNT"),
        ];
        for (request, expected) in cases {
            let got = request.check_shape().map_err(|e| refusal(&e));
            assert_eq!(got, Err(expected), "{request:?}");
        }
        assert!(
            movement(1, Direction::Deposit, "1", "k")
                .check_shape()
                .is_ok()
        );
        assert!(transfer(1, 2, "1", "k").check_shape().is_ok());
    }

    #[test]
    fn a_withdrawal_is_refused_by_the_first_rule_it_breaks() {
        use Direction::Withdraw;
        // Each line mends the one refusal the line before got.
        let cases = [
            // 1: a wallet the caller may not see (and everything else wrong too).
            (
                Scope::Owner("mallory".into()),
                movement(1, Withdraw, "100.001", "used"),
                "NOT_FOUND",
            ),
            (
                alice(),
                movement(99, Withdraw, "100.001", "used"),
                "NOT_FOUND",
            ),
            // 2: the key names another movement.
            (
                alice(),
                movement(1, Withdraw, "100.001", "used"),
                "IDEMPOTENCY_CONFLICT",
            ),
            // 5: crypto is not moved by withdraw; an unconfigured currency not at all.
            (
                alice(),
                movement(3, Withdraw, "100.001", "k"),
                "CURRENCY_NOT_SUPPORTED",
            ),
            (
                alice(),
                movement(4, Withdraw, "100.001", "k"),
                "CURRENCY_NOT_SUPPORTED",
            ),
            // 6: finer than the currency.
            (
                alice(),
                movement(1, Withdraw, "100.001", "k"),
                "INVALID_AMOUNT",
            ),
            // 7: 100.00 plus the 1.00 fee is more than the 100.00 there.
            (
                alice(),
                movement(1, Withdraw, "100.00", "k"),
                "INSUFFICIENT_FUNDS",
            ),
            (alice(), movement(1, Withdraw, "99.00", "k"), "insert"),
            (Scope::All, movement(1, Withdraw, "99.00", "k"), "insert"),
        ];
        for (scope, request, expected) in cases {
            assert_eq!(alone(&scope, &request), expected, "{scope:?} {request:?}");
        }
    }

    #[test]
    fn a_deposit_is_refused_by_the_first_rule_it_breaks() {
        use Direction::Deposit;
        let cases = [
            (
                Scope::Owner("alice".into()),
                movement(6, Deposit, "0.001", "used"),
                "NOT_FOUND",
            ),
            (
                Scope::All,
                movement(1, Deposit, "0.001", "used"),
                "IDEMPOTENCY_CONFLICT",
            ),
            (Scope::All, movement(1, Deposit, "5.00", "used"), "replay"),
            (
                Scope::All,
                movement(3, Deposit, "0.001", "k"),
                "CURRENCY_NOT_SUPPORTED",
            ),
            (
                Scope::All,
                movement(6, Deposit, "0.001", "k"),
                "INVALID_AMOUNT",
            ),
            // 6: above the largest amount at all; 8: above the ceiling with the balance.
            (
                Scope::All,
                movement(6, Deposit, "100000000000000000000000000", "k"),
                "INVALID_AMOUNT",
            ),
            (
                Scope::All,
                movement(6, Deposit, "1.00", "k"),
                "INVALID_AMOUNT",
            ),
            (Scope::All, movement(2, Deposit, "1.00", "k"), "insert"),
        ];
        for (scope, request, expected) in cases {
            assert_eq!(alone(&scope, &request), expected, "{scope:?} {request:?}");
        }
    }

    #[test]
    fn a_transfer_is_refused_by_the_first_rule_it_breaks() {
        let cases = [
            // 1: the source as the caller may see it.
            (
                Scope::Owner("bob".into()),
                transfer(1, 99, "100.001", "used"),
                "NOT_FOUND",
            ),
            // 2: its key names a deposit.
            (
                alice(),
                transfer(1, 99, "100.001", "used"),
                "IDEMPOTENCY_CONFLICT",
            ),
            // 3: the target, anyone's, must exist.
            (alice(), transfer(1, 99, "100.001", "k"), "NOT_FOUND"),
            // 4: one currency.
            (alice(), transfer(1, 3, "100.001", "k"), "CURRENCY_MISMATCH"),
            // 5: crypto is not moved between wallets; nor an unconfigured currency.
            (
                alice(),
                transfer(3, 5, "100.001", "k"),
                "CURRENCY_NOT_SUPPORTED",
            ),
            // 6, 7, 8.
            (alice(), transfer(1, 6, "100.001", "k"), "INVALID_AMOUNT"),
            (alice(), transfer(1, 6, "100.01", "k"), "INSUFFICIENT_FUNDS"),
            (alice(), transfer(1, 6, "100.00", "k"), "INVALID_AMOUNT"),
            // The target may be anyone's; no fee on transfers.
            (alice(), transfer(1, 2, "100.00", "k"), "insert"),
        ];
        for (scope, request, expected) in cases {
            assert_eq!(alone(&scope, &request), expected, "{scope:?} {request:?}");
        }
        let currencies = currencies();
        let mut state = state();
        state.wallets.insert(7, wallet(7, "carol", "XYZ", "1"));
        let mut judge = Judge::new(&currencies, state);
        let request = transfer(4, 7, "1", "k");
        assert_eq!(
            named(&judge.judge(&alice(), &request)),
            "CURRENCY_NOT_SUPPORTED"
        );
    }

    #[test]
    fn a_key_already_journaled_replays_only_the_same_request() {
        let cases = [
            (movement(1, Direction::Deposit, "5.00", "used"), "replay"),
            (movement(1, Direction::Deposit, "5", "used"), "replay"),
            (
                movement(1, Direction::Withdraw, "5.00", "used"),
                "IDEMPOTENCY_CONFLICT",
            ),
            (
                movement(1, Direction::Deposit, "5.01", "used"),
                "IDEMPOTENCY_CONFLICT",
            ),
            (transfer(1, 2, "7.00", "sent"), "replay"),
            (transfer(1, 6, "7.00", "sent"), "IDEMPOTENCY_CONFLICT"),
            (transfer(1, 2, "7.01", "sent"), "IDEMPOTENCY_CONFLICT"),
            (
                movement(1, Direction::Withdraw, "7.00", "sent"),
                "IDEMPOTENCY_CONFLICT",
            ),
            (transfer(1, 2, "5.00", "used"), "IDEMPOTENCY_CONFLICT"),
        ];
        for (request, expected) in cases {
            assert_eq!(alone(&Scope::All, &request), expected, "{request:?}");
        }
        // A replay is the original, marked as such: nothing is written for it.
        let currencies = currencies();
        let mut judge = Judge::new(&currencies, state());
        let request = transfer(1, 2, "7.00", "sent");
        match judge.judge(&alice(), &request) {
            Verdict::Replay(done) => match *done {
                Done::Transfer(t) => {
                    assert!(t.replayed);
                    assert_eq!((t.out.id, t.into.id), (11, 12));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert!(judge.decided(at(5)).rows.is_empty());
        // A key is the wallet's: the same key on another wallet is another movement.
        assert_eq!(
            alone(&Scope::All, &movement(2, Direction::Deposit, "1", "used")),
            "insert"
        );
    }

    #[test]
    fn a_batch_judges_each_request_against_the_balances_before_it() {
        let currencies = currencies();
        let mut judge = Judge::new(&currencies, state());
        let requests = [
            movement(1, Direction::Withdraw, "50.00", "a"), // 100 → 49 (fee 1)
            movement(1, Direction::Withdraw, "50.00", "b"), // refused: 49 left
            transfer(1, 2, "49.00", "c"),                   // 49 → 0, bob 0 → 49
            movement(2, Direction::Withdraw, "47.00", "d"), // bob 49 → 1
            transfer(2, 1, "2.00", "e"),                    // refused: bob has 1
            movement(1, Direction::Deposit, "10", "f"),     // 0 → 10
        ];
        let verdicts: Vec<&str> = requests
            .iter()
            .map(|r| named(&judge.judge(&Scope::All, r)))
            .collect();
        assert_eq!(
            verdicts,
            [
                "insert",
                "INSUFFICIENT_FUNDS",
                "insert",
                "insert",
                "INSUFFICIENT_FUNDS",
                "insert"
            ]
        );
        let decided = judge.decided(at(5));
        let chain: Vec<(i64, TransactionType, String, String, Option<usize>)> = decided
            .rows
            .iter()
            .map(|r| {
                (
                    r.wallet_id,
                    r.row.kind,
                    r.around.0.to_string(),
                    r.around.1.to_string(),
                    r.counterpart,
                )
            })
            .collect();
        use TransactionType::*;
        let s = |v: &str| v.to_owned();
        assert_eq!(
            chain,
            [
                (1, Withdraw, s("100.00"), s("49.00"), None),
                (1, TransferOut, s("49.00"), s("0.00"), None),
                (2, TransferIn, s("0.00"), s("49.00"), Some(1)),
                (2, Withdraw, s("49.00"), s("1.00"), None),
                (1, Deposit, s("0.00"), s("10.00"), None),
            ]
        );
        let touched: Vec<(i64, String)> = decided
            .touched
            .iter()
            .map(|t| {
                assert_eq!(t.at, at(5));
                (t.wallet_id, t.balance.0.to_string())
            })
            .collect();
        assert_eq!(touched, [(1, s("10.00")), (2, s("1.00"))]);
    }

    #[test]
    fn a_key_repeated_in_a_batch_is_judged_once() {
        let currencies = currencies();
        let mut judge = Judge::new(&currencies, state());
        let requests = [
            transfer(1, 2, "10.00", "t"),
            movement(1, Direction::Deposit, "3.00", "m"),
            transfer(1, 2, "10", "t"),    // the same: its rows
            transfer(1, 6, "10.00", "t"), // another target: a conflict
            movement(1, Direction::Deposit, "3.00", "m"),
            movement(1, Direction::Deposit, "4.00", "m"),
            movement(1, Direction::Withdraw, "3.00", "t"), // a transfer's key
        ];
        let verdicts: Vec<Verdict> = requests
            .iter()
            .map(|r| judge.judge(&Scope::All, r))
            .collect();
        let names: Vec<&str> = verdicts.iter().map(named).collect();
        assert_eq!(
            names,
            [
                "insert",
                "insert",
                "replay of insert",
                "IDEMPOTENCY_CONFLICT",
                "replay of insert",
                "IDEMPOTENCY_CONFLICT",
                "IDEMPOTENCY_CONFLICT",
            ]
        );
        let decided = judge.decided(at(5));
        assert_eq!(decided.rows.len(), 3, "one transfer and one deposit");

        // The answers point every request at its rows as stored.
        let stored: Vec<JournalEntry> = decided
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| entry(100 + i as i64, r.wallet_id, r.row.kind, "0", r.row.key))
            .collect();
        let answers = answers(verdicts, &decided.rows, &stored);
        let shown: Vec<String> = answers
            .iter()
            .map(|a| match a {
                Ok(Done::Transfer(t)) => {
                    format!("transfer {} {} {}", t.out.id, t.into.id, t.replayed)
                }
                Ok(Done::Movement(m)) => format!("movement {} {}", m.entry.id, m.replayed),
                Ok(Done::Hold(h)) => format!("hold {}", h.id),
                Err(e) => refusal(e).to_owned(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "transfer 100 101 false",
                "movement 102 false",
                "transfer 100 101 true",
                "IDEMPOTENCY_CONFLICT",
                "movement 102 true",
                "IDEMPOTENCY_CONFLICT",
                "IDEMPOTENCY_CONFLICT",
            ]
        );
    }

    #[test]
    fn a_wallet_keeps_its_own_time_when_it_is_later_than_the_batch() {
        let currencies = currencies();
        let mut state = state();
        if let Some(w) = state.wallets.get_mut(&2) {
            w.updated_at = at(60);
        }
        let mut judge = Judge::new(&currencies, state);
        let request = transfer(1, 2, "1.00", "k");
        judge.judge(&Scope::All, &request);
        let times: Vec<(i64, DateTime<Utc>)> = judge
            .decided(at(5))
            .touched
            .iter()
            .map(|t| (t.wallet_id, t.at))
            .collect();
        assert_eq!(times, [(1, at(5)), (2, at(60))]);
    }

    fn reversal_of(original: JournalEntry, wallet: Wallet) -> ReversalPrefetched {
        ReversalPrefetched {
            original,
            partner: None,
            wallet,
            journaled: None,
            reversed_by: None,
            deposit_flagged: false,
        }
    }

    fn reverse(state: &ReversalPrefetched) -> &'static str {
        let currencies = currencies();
        let request = ReversalRequest {
            transaction_id: state.original.id,
            key: "undo".into(),
            reason: "wrong amount".into(),
        };
        match reversal(&currencies, state, &request) {
            Ok(ReversalDecision::Replay(_)) => "replay",
            Ok(ReversalDecision::New(_, None)) => "insert",
            Ok(ReversalDecision::New(_, Some(_))) => "insert pair",
            Err(e) => refusal(&e),
        }
    }

    /// A deposit of 50.00 that took wallet 1 from 0.00 to 50.00.
    fn deposit_of_50() -> JournalEntry {
        let mut e = entry(20, 1, TransactionType::Deposit, "50.00", "d");
        e.balance_after = dec("50.00");
        e
    }

    #[test]
    fn a_reversal_is_refused_by_the_first_rule_it_breaks() {
        let mut reorged_credit = deposit_of_50();
        reorged_credit.network = Some("bitcoin".into());
        reorged_credit.hold_id = Some(19);
        let mut earlier = entry(21, 1, TransactionType::Reversal, "50.00", "earlier");
        earlier.reverses_id = Some(20);
        let mut conflicting = entry(22, 1, TransactionType::Deposit, "1.00", "undo");
        conflicting.reverses_id = None;

        // Start with everything wrong and mend one rule per step.
        let mut state = reversal_of(reorged_credit, wallet(1, "alice", "XYZ", "10.00"));
        state.journaled = Some(conflicting);
        state.reversed_by = Some(earlier);
        let mut steps: Vec<&str> = Vec::new();
        // R1: a reversal, a refund, a hold, a chain movement, a posting of a hold.
        for kind in [TransactionType::Reversal, TransactionType::Refund] {
            let mut s = state.clone();
            s.original.kind = kind;
            steps.push(reverse(&s));
        }
        let mut s = state.clone();
        s.original.hold = true;
        steps.push(reverse(&s));
        let mut s = state.clone();
        s.original.kind = TransactionType::Withdraw;
        steps.push(reverse(&s));
        let mut s = state.clone();
        s.original.network = None;
        steps.push(reverse(&s));
        // R2 onwards, on the chain deposit's credit.
        steps.push(reverse(&state));
        state.journaled = None;
        steps.push(reverse(&state));
        state.reversed_by = None;
        steps.push(reverse(&state));
        state.deposit_flagged = true;
        steps.push(reverse(&state));
        state.wallet.currency = "USD".into();
        steps.push(reverse(&state));
        state.wallet.balance = dec("50.00");
        steps.push(reverse(&state));
        assert_eq!(
            steps,
            [
                "BAD_INPUT",
                "BAD_INPUT",
                "BAD_INPUT",
                "BAD_INPUT",
                "BAD_INPUT",
                "IDEMPOTENCY_CONFLICT",
                "ALREADY_REVERSED",
                "BAD_INPUT",
                "CURRENCY_NOT_SUPPORTED",
                "INSUFFICIENT_FUNDS",
                "insert",
            ]
        );

        // R7: undoing a withdrawal credits the wallet, held to the ceiling.
        let mut withdrawal = entry(30, 6, TransactionType::Withdraw, "1.00", "w");
        withdrawal.balance_before = dec("1.00");
        let at_ceiling = wallet(6, "bob", "USD", "9999999999999999999999999.50");
        assert_eq!(
            reverse(&reversal_of(withdrawal.clone(), at_ceiling)),
            "INVALID_AMOUNT"
        );
        let room = wallet(6, "bob", "USD", "0.00");
        assert_eq!(reverse(&reversal_of(withdrawal, room)), "insert");
    }

    #[test]
    fn a_reversal_replays_only_itself_and_reverses_a_transfer_as_a_pair() {
        let currencies = currencies();
        let request = ReversalRequest {
            transaction_id: 20,
            key: "undo".into(),
            reason: "wrong amount".into(),
        };
        let mut done = entry(23, 1, TransactionType::Reversal, "50.00", "undo");
        done.reverses_id = Some(20);
        done.description = Some("wrong amount".into());
        let mut state = reversal_of(deposit_of_50(), wallet(1, "alice", "USD", "50.00"));
        state.journaled = Some(done.clone());
        // Replayed even though the original now counts as reversed (by this very row).
        state.reversed_by = Some(done.clone());
        assert_eq!(reverse(&state), "replay");
        state.journaled = Some(JournalEntry {
            description: Some("another reason".into()),
            ..done
        });
        assert_eq!(reverse(&state), "IDEMPOTENCY_CONFLICT");

        // A transfer: both sides undone, each judged against its own wallet.
        let mut out = entry(40, 1, TransactionType::TransferOut, "30.00", "t");
        out.balance_before = dec("30.00");
        let mut into = entry(41, 2, TransactionType::TransferIn, "30.00", "t");
        into.balance_after = dec("30.00");
        into.counterpart_id = Some(40);
        let mut state = reversal_of(out, wallet(1, "alice", "USD", "0.00"));
        state.partner = Some((into, wallet(2, "bob", "USD", "29.99")));
        assert_eq!(
            reverse(&state),
            "INSUFFICIENT_FUNDS",
            "bob spent a cent of it"
        );
        if let Some((_, w)) = state.partner.as_mut() {
            w.balance = dec("30.00");
        }
        match reversal(&currencies, &state, &request) {
            Ok(ReversalDecision::New(first, Some(second))) => {
                assert_eq!(first.balance_change(), dec("30.00"));
                assert_eq!(second.balance_change(), dec("-30.00"));
                assert_eq!(first.reverses.map(|r| r.0), Some(40));
                assert_eq!(second.reverses.map(|r| r.0), Some(41));
            }
            other => panic!("{other:?}"),
        }
    }

    fn hold_request(op: HoldOp) -> Request {
        Request::Hold(Box::new(HoldRequest {
            op,
            actor: "alice".into(),
        }))
    }

    fn authorization(amount: &str, key: &str) -> Request {
        hold_request(HoldOp::Authorize(crate::ledger::hold::AuthorizeRequest {
            wallet_id: 1,
            to_wallet_id: None,
            amount: dec(amount),
            key: key.into(),
            expires_at: None,
            description: None,
            reference: None,
            metadata: None,
            policy: Default::default(),
        }))
    }

    fn located() -> crate::ledger::hold::Located {
        crate::ledger::hold::Located {
            wallet_id: 1,
            to_wallet_id: None,
            description: None,
            reference: None,
            metadata: None,
        }
    }

    fn capture(amount: Option<&str>, key: &str) -> Request {
        let request = crate::ledger::hold::CaptureRequest {
            hold_id: 7,
            amount: amount.map(dec),
            key: key.into(),
            final_capture: false,
        };
        hold_request(HoldOp::Capture(request, located()))
    }

    fn void(key: &str) -> Request {
        let request = crate::ledger::hold::VoidRequest {
            hold_id: 7,
            key: key.into(),
        };
        hold_request(HoldOp::Void(request, located()))
    }

    /// Holds are judged in a batch like movements: against the running balance and held
    /// balance, each capture against what the ones before it left of the hold, keys
    /// repeated within the batch replayed.
    #[test]
    fn holds_are_judged_against_the_running_balances_and_holds() {
        let s = |v: &str| v.to_owned();
        let currencies = currencies();
        let mut state = state();
        // Wallet 1: 100.00, of which 30.00 held by hold 7.
        if let Some(w) = state.wallets.get_mut(&1) {
            w.held_balance = dec("30.00");
        }
        state.holds.insert(
            7,
            Hold {
                id: 7,
                wallet_id: 1,
                to_wallet_id: None,
                amount: dec("30.00"),
                captured: dec("0.00"),
                released: dec("0.00"),
                status: HoldStatus::Active,
                idempotency_key: "h".into(),
                expires_at: at(1000),
                description: None,
                reference: None,
                metadata: None,
                created_by: "alice".into(),
                created_at: at(0),
                updated_at: at(0),
            },
        );
        state.hold_ids = vec![50, 51, 52];
        state.clock = at(5);
        let requests = [
            movement(1, Direction::Withdraw, "60.00", "w"),
            authorization("20.00", "a"),
            capture(Some("25.00"), "c1"),
            capture(Some("10.00"), "c2"),
            capture(Some("25.00"), "c1"),
            authorization("9.00", "b"),
            authorization("9.00", "b"),
            authorization("9.01", "b"),
            capture(Some("1.00"), "w"),
            void("v"),
            capture(Some("1.00"), "c3"),
        ];
        let mut judge = Judge::new(&currencies, state);
        let verdicts: Vec<&str> = requests
            .iter()
            .map(|r| named(&judge.judge(&alice(), r)))
            .collect();
        assert_eq!(
            verdicts,
            [
                "insert",
                "INSUFFICIENT_FUNDS",
                "hold",
                "HOLD_EXCEEDED",
                "hold",
                "hold",
                "hold",
                "IDEMPOTENCY_CONFLICT",
                "IDEMPOTENCY_CONFLICT",
                "hold",
                "HOLD_NOT_ACTIVE",
            ]
        );
        let decided = judge.decided(at(5));
        let rows: Vec<(TransactionType, String, Option<i64>)> = decided
            .rows
            .iter()
            .map(|r| (r.row.kind, r.around.1.to_string(), r.row.settles_hold))
            .collect();
        assert_eq!(
            rows,
            [
                (TransactionType::Withdraw, s("39.00"), None),
                (TransactionType::Withdraw, s("14.00"), Some(7)),
            ]
        );
        let touched: Vec<(i64, String, String)> = decided
            .touched
            .iter()
            .map(|t| (t.wallet_id, t.balance.0.to_string(), t.held.0.to_string()))
            .collect();
        // 100.00 - 60.00 - 1.00 (the withdrawal fee) - 25.00 captured; 30.00 held - 25.00
        // captured - 5.00 voided + 9.00 authorised.
        assert_eq!(touched, [(1, s("14.00"), s("9.00"))]);
        let new: Vec<(i64, String)> = decided
            .new_holds
            .iter()
            .map(|h| (h.id, h.amount.to_string()))
            .collect();
        assert_eq!(new, [(50, s("9.00"))]);
        let changed: Vec<(i64, String, String, HoldStatus)> = decided
            .changed_holds
            .iter()
            .map(|h| {
                (
                    h.id,
                    h.captured.to_string(),
                    h.released.to_string(),
                    h.status,
                )
            })
            .collect();
        assert_eq!(changed, [(7, s("25.00"), s("5.00"), HoldStatus::Voided)]);
        let events: Vec<(i64, HoldEventKind, Option<usize>, Option<&str>)> = decided
            .events
            .iter()
            .map(|e| (e.hold_id, e.kind, e.row, e.key))
            .collect();
        assert_eq!(
            events,
            [
                (7, HoldEventKind::Captured, Some(1), Some("c1")),
                (50, HoldEventKind::Authorized, None, None),
                (7, HoldEventKind::Voided, None, Some("v")),
            ]
        );
    }
}
