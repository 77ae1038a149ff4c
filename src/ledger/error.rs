use rust_decimal::Decimal;

/// Why a ledger operation was refused or failed.
///
/// Deliberately not `Display`: the API layer translates each variant into a client-facing
/// message and code, and internal failures must never be shown verbatim (they may carry SQL).
#[derive(Debug)]
pub enum LedgerError {
    /// The thing does not exist or is not visible to the caller (never a hint which).
    NotFound(&'static str),
    Forbidden(String),
    InvalidAmount(String),
    InsufficientFunds {
        available: Decimal,
        requested: Decimal,
    },
    /// The idempotency key was already used for a different request.
    IdempotencyConflict(String),
    CurrencyNotSupported(String),
    /// The wallets of a transfer hold different currencies.
    CurrencyMismatch(String),
    /// The movement has been reversed already.
    AlreadyReversed(String),
    /// A capture of more than the hold still reserves.
    HoldExceeded(String),
    /// The hold was voided, expired or fully captured: nothing is reserved any more.
    HoldNotActive(String),
    BadInput(String),
    /// A destination address that is not valid for the wallet's network.
    InvalidAddress(String),
    /// The chain transaction does not pay this wallet's address.
    AddressMismatch(String),
    /// The chain transaction is not deep enough yet.
    InsufficientConfirmations {
        current: i64,
        required: i64,
    },
    /// The chain could not be asked.
    ChainUnavailable(String),
    /// The database failed; retried where that is safe before it gets here.
    Database(diesel::result::Error),
    /// The database could not serve the request now: no connection could be had, or a
    /// lock wait or statement ran out of time. Nothing was changed; trying again may work.
    Unavailable(String),
    /// A money movement that may or may not have been committed: the answer to its
    /// commit was lost, or the request's deadline passed while it ran. Looking it up, or
    /// sending it again with the same key, tells which.
    OutcomeUnknown(String),
    /// A figure (a sum over many rows) exists exactly in the database but does not fit the
    /// API's decimal type (28 significant digits): refused rather than rounded.
    NotRepresentable(String),
    /// A broken invariant (a bug): logged in full, never shown.
    Internal(String),
}

impl LedgerError {
    /// The client-facing message (internal errors are summarised, not echoed).
    pub fn message(&self) -> String {
        match self {
            LedgerError::NotFound(what) => format!("{what} not found"),
            LedgerError::Forbidden(m)
            | LedgerError::InvalidAmount(m)
            | LedgerError::IdempotencyConflict(m)
            | LedgerError::CurrencyNotSupported(m)
            | LedgerError::CurrencyMismatch(m)
            | LedgerError::AlreadyReversed(m)
            | LedgerError::HoldExceeded(m)
            | LedgerError::HoldNotActive(m)
            | LedgerError::BadInput(m)
            | LedgerError::InvalidAddress(m)
            | LedgerError::AddressMismatch(m)
            | LedgerError::NotRepresentable(m) => m.clone(),
            LedgerError::InsufficientConfirmations { current, required } => {
                format!("the transaction has {current} confirmation(s); {required} are required")
            }
            LedgerError::ChainUnavailable(_) => "the chain is unavailable, try again".into(),
            LedgerError::InsufficientFunds {
                available,
                requested,
            } => format!("insufficient funds: available {available}, requested {requested}"),
            LedgerError::Unavailable(_) => {
                "the service cannot do this right now; nothing was changed, try again".into()
            }
            LedgerError::Database(e) if crate::db::is_unavailable(e) => {
                "the service cannot do this right now; nothing was changed, try again".into()
            }
            LedgerError::OutcomeUnknown(_) => "the outcome of this request is unknown: \
                 look the movement up by its key, or send it again with the same key"
                .into(),
            LedgerError::Database(_) | LedgerError::Internal(_) => "internal error".into(),
        }
    }

    /// A failure of the system (database, chain, a bug) rather than a judgement of the
    /// request.
    pub fn is_system(&self) -> bool {
        matches!(
            self,
            LedgerError::Database(_)
                | LedgerError::Unavailable(_)
                | LedgerError::OutcomeUnknown(_)
                | LedgerError::Internal(_)
                | LedgerError::ChainUnavailable(_)
        )
    }

    /// Whether this is an [`LedgerError::Unavailable`] in substance: the database could
    /// not serve the request (a connection or a deadline failed, not the request).
    pub fn is_unavailable(&self) -> bool {
        match self {
            LedgerError::Unavailable(_) => true,
            LedgerError::Database(e) => crate::db::is_unavailable(e),
            _ => false,
        }
    }

    /// Whether the server refused to write at all (a standby, or a server made read-only):
    /// its connections are of no use for movements.
    pub fn is_read_only_refusal(&self) -> bool {
        match self {
            LedgerError::Unavailable(message) => crate::db::refused_as_read_only(message),
            LedgerError::Database(e) => crate::db::refused_as_read_only(&e.to_string()),
            _ => false,
        }
    }

    /// Whether running the same transaction again may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, LedgerError::Database(e) if crate::db::is_transient(e))
    }
}

impl From<diesel::result::Error> for LedgerError {
    fn from(e: diesel::result::Error) -> Self {
        LedgerError::Database(e)
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for LedgerError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        LedgerError::Unavailable(e.to_string())
    }
}
