//! Live events: what changed in the ledger, delivered to subscribers of every server
//! process.
//!
//! The path is a transactional outbox: triggers write an `events` row in the same database
//! transaction as the change (see the migration), Postgres NOTIFYs at commit, and each
//! process's [`listener`] reads the outbox from its cursor, loads the rows the events name
//! once, and fans them out in-process over a bounded broadcast channel. Subscribers filter
//! what they may see; a subscriber that falls behind by more than the channel holds is told
//! so (it never slows the listener or anyone else).

pub mod listener;
pub mod outbox;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::ledger::{JournalEntry, Reconciliation, Wallet};

pub use listener::{Listener, ListenerConfig};

/// What an event is about, loaded once per process.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A journal row was created or its status/confirmations changed (current row).
    Transaction(Box<JournalEntry>),
    /// A wallet's balances changed: the wallet as that change left it.
    Wallet(Wallet),
    /// A reconciliation was recorded.
    Reconciliation(Reconciliation),
    /// A hold was authorised, captured, voided or expired (current row).
    Hold(crate::ledger::hold::Hold),
}

/// One delivered event.
#[derive(Clone, Debug)]
pub struct Notice {
    /// The outbox row's id.
    pub id: i64,
    pub wallet_id: i64,
    /// The wallet's owner, for filtering without a query per subscriber.
    pub user_id: String,
    pub payload: Payload,
}

/// In-process fan-out of notices to subscribers.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Notice>>,
}

/// Notices a subscriber may fall behind by before it is told it lagged.
pub const DEFAULT_BUS_CAPACITY: usize = 4096;

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventBus { sender }
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
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(DEFAULT_BUS_CAPACITY)
    }
}

/// Who may receive a notice: an operator sees everything, a user their own wallets; an
/// optional wallet narrows it further.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience {
    /// `None` for operators.
    pub owner: Option<String>,
    pub wallet_id: Option<i64>,
}

impl Audience {
    pub fn admits(&self, notice: &Notice) -> bool {
        self.owner.as_ref().is_none_or(|o| *o == notice.user_id)
            && self.wallet_id.is_none_or(|w| w == notice.wallet_id)
    }
}
