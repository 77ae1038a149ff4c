//! The ledger: money rules (stated as guarantees in `docs/money.md`), free of transport
//! types.
//!
//! Every function takes a connection (or pool) and returns [`LedgerError`]; callers decide
//! how to present it. Visibility is passed in as a [`Scope`] so that access control is
//! applied in the same query that reads the data.

pub mod accounts;
pub mod alert;
pub mod currency;
mod error;
pub mod fixed_sql;
pub mod group_commit;
pub mod hold;
pub mod input;
pub mod journal;
pub mod judge;
pub mod models;
pub mod money;
pub mod movement;
pub mod outcome;
pub mod page;
pub mod reconciliation;
pub mod reversal;
pub mod store;
pub mod transfer;
pub mod wallet;

pub use currency::{Currency, CurrencyKind, CurrencyRegistry};
pub use error::LedgerError;
pub use models::{JournalEntry, Reconciliation, TransactionStatus, TransactionType, Wallet};
pub use page::{Cursor, Limit, Page, PageArgs};

/// Whose data a caller may see: everything (operators) or one user's wallets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Owner(String),
}

impl Scope {
    pub fn owner(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Owner(user) => Some(user),
        }
    }
}

/// Which rows a listing covers. Build `Wallet` only after checking that the caller may
/// see that wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListScope {
    Wallet(i64),
    Owner(String),
    All,
}

impl From<&Scope> for ListScope {
    fn from(scope: &Scope) -> Self {
        match scope {
            Scope::All => ListScope::All,
            Scope::Owner(user) => ListScope::Owner(user.clone()),
        }
    }
}
