//! Ledger events: what changed, in a durable, gap-free feed, delivered to subscribers of
//! every server process, to webhook endpoints and to a message stream.
//!
//! The path is a transactional outbox: triggers write an `events` row in the same database
//! transaction as the change (see the migrations), Postgres NOTIFYs at commit, and each
//! process's [`listener`] numbers what has become final ([`feed`]: the sequencer), reads
//! the feed from its position, loads the rows the events name once, and fans them out
//! in-process over a bounded broadcast channel. Subscribers filter what they may see; a
//! live-only subscriber that falls behind is told so, a feed subscriber reads the table
//! until it catches up (neither slows the listener or anyone else).
//!
//! Guarantees: the feed (`events` query and subscription) and the stream are exactly once
//! by position — a consumer that keeps the last sequence it processed resumes without a
//! gap or a repeat. Webhooks are at least once, with the event's stable id for the
//! receiver to drop repeats.

pub mod body;
pub mod feed;
pub mod listener;
pub mod outbox;
pub mod stream;
pub mod webhook;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};

use crate::ledger::models::text_enum;
use crate::ledger::{JournalEntry, Reconciliation, Wallet};

pub use listener::{Listener, ListenerConfig};

text_enum! {
    /// What happened.
    pub enum EventType {
        /// A journal row was written.
        TransactionCreated => "TRANSACTION_CREATED",
        /// A journal row's status or confirmations changed.
        TransactionUpdated => "TRANSACTION_UPDATED",
        /// A wallet's balance, locked, held balance or credit limit changed.
        WalletUpdated => "WALLET_UPDATED",
        HoldAuthorized => "HOLD_AUTHORIZED",
        /// Part or all of a hold was captured.
        HoldCaptured => "HOLD_CAPTURED",
        HoldVoided => "HOLD_VOIDED",
        HoldExpired => "HOLD_EXPIRED",
        /// A reconciliation was recorded.
        ReconciliationRecorded => "RECONCILIATION_RECORDED",
        /// A wallet's available balance crossed one of its alerts' thresholds.
        BalanceAlert => "BALANCE_ALERT",
        /// A webhook endpoint was disabled (by an operator, or after failing for too long).
        WebhookEndpointDisabled => "WEBHOOK_ENDPOINT_DISABLED",
    }
}

/// A balance alert that fired.
#[derive(Clone, Debug)]
pub struct AlertFired {
    pub alert_id: i64,
    /// The threshold crossed: `Below` — the available balance fell under it.
    pub direction: AlertDirection,
    pub threshold: rust_decimal::Decimal,
    /// The available balance after the change.
    pub available: rust_decimal::Decimal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertDirection {
    Below,
    Above,
}

/// A webhook endpoint that was disabled.
#[derive(Clone, Debug)]
pub struct EndpointDisabled {
    pub endpoint_id: i64,
    pub url: String,
    /// `FAILING` (it failed for longer than allowed) or `OPERATOR`.
    pub reason: String,
}

/// What an event is about, loaded once per process, as the change left it.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A journal row was created or its status/confirmations changed.
    Transaction(Box<JournalEntry>),
    /// A wallet's balances changed: the wallet as that change left it.
    Wallet(Wallet),
    /// A reconciliation was recorded.
    Reconciliation(Reconciliation),
    /// A hold was authorised, captured, voided or expired.
    Hold(crate::ledger::hold::Hold),
    /// A balance alert fired; the wallet as the crossing change left it.
    Alert(AlertFired, Wallet),
    /// A webhook endpoint was disabled.
    Endpoint(EndpointDisabled),
}

/// One event of the feed.
#[derive(Clone, Debug)]
pub struct Notice {
    /// The outbox row's id: the event's stable id.
    pub id: i64,
    /// Its position in the feed: gap-free, in commit order.
    pub sequence: i64,
    pub kind: EventType,
    pub occurred_at: DateTime<Utc>,
    /// `None` only for operators' events (a webhook endpoint disabled).
    pub wallet_id: Option<i64>,
    /// The wallet's owner, for filtering without a query per subscriber.
    pub user_id: Option<String>,
    pub payload: Payload,
}

/// In-process fan-out of notices to subscribers, and the feed's head as this process last
/// read it.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Notice>>,
    head: watch::Sender<i64>,
}

/// Notices a subscriber may fall behind by before it is told it lagged (live-only
/// subscriptions) or goes back to reading the table (the feed).
pub const DEFAULT_BUS_CAPACITY: usize = 4096;

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventBus {
            sender,
            head: watch::Sender::new(0),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.sender.subscribe()
    }

    /// Delivers to the current subscribers (none is fine).
    pub fn publish(&self, notice: Notice) {
        let _ = self.sender.send(Arc::new(notice));
    }

    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }

    /// The last sequence this process's listener has read (0 before the first).
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// Wakes on every advance of [`EventBus::head`].
    pub fn watch_head(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    pub(crate) fn advance_head(&self, sequence: i64) {
        self.head.send_if_modified(|h| {
            let moved = sequence > *h;
            if moved {
                *h = sequence;
            }
            moved
        });
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(DEFAULT_BUS_CAPACITY)
    }
}

/// Who may receive a notice: an operator sees everything, a user their own wallets'
/// events; an optional wallet and set of types narrow it further.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience {
    /// `None` for operators.
    pub owner: Option<String>,
    pub wallet_id: Option<i64>,
    /// `None`: every type.
    pub types: Option<Vec<EventType>>,
}

impl Audience {
    pub fn admits(&self, notice: &Notice) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|o| notice.user_id.as_ref() == Some(o))
            && self.wallet_id.is_none_or(|w| notice.wallet_id == Some(w))
            && self.types.as_ref().is_none_or(|t| t.contains(&notice.kind))
    }
}
