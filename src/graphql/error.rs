//! Translation of failures into GraphQL errors with `extensions.code`.

use async_graphql::{Error, ErrorExtensions};

use crate::ledger::LedgerError;

pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
pub const FORBIDDEN: &str = "FORBIDDEN";
pub const NOT_FOUND: &str = "NOT_FOUND";
pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
pub const INVALID_AMOUNT: &str = "INVALID_AMOUNT";
pub const INSUFFICIENT_FUNDS: &str = "INSUFFICIENT_FUNDS";
pub const IDEMPOTENCY_CONFLICT: &str = "IDEMPOTENCY_CONFLICT";
pub const CURRENCY_NOT_SUPPORTED: &str = "CURRENCY_NOT_SUPPORTED";
pub const CURRENCY_MISMATCH: &str = "CURRENCY_MISMATCH";
pub const ALREADY_REVERSED: &str = "ALREADY_REVERSED";
pub const HOLD_EXCEEDED: &str = "HOLD_EXCEEDED";
pub const HOLD_NOT_ACTIVE: &str = "HOLD_NOT_ACTIVE";
pub const INVALID_ADDRESS: &str = "INVALID_ADDRESS";
pub const ADDRESS_MISMATCH: &str = "ADDRESS_MISMATCH";
pub const INSUFFICIENT_CONFIRMATIONS: &str = "INSUFFICIENT_CONFIRMATIONS";
pub const CHAIN_UNAVAILABLE: &str = "CHAIN_UNAVAILABLE";
pub const INTERNAL: &str = "INTERNAL";
/// Nothing was changed, and the service cannot do it right now (database unreachable, a
/// wallet busy beyond the lock timeout, overload): try again.
pub const UNAVAILABLE: &str = "UNAVAILABLE";
/// A money movement may or may not have been committed: look it up by its key
/// (`transactionByKey`) or send it again with the same key, which returns the original if
/// it was.
pub const OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";
/// A figure the ledger holds exactly (a sum over many rows) does not fit a `Decimal`
/// (28 significant digits): it is refused, never rounded.
pub const NOT_REPRESENTABLE: &str = "NOT_REPRESENTABLE";
/// Too many mutations from this caller: nothing was done; try again after
/// `extensions.retryAfter` seconds (HTTP: 429 with `Retry-After`).
pub const RATE_LIMITED: &str = "RATE_LIMITED";

pub fn coded(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// An error raised outside a resolver (before execution, or by a transport), with a code.
pub fn server_error(code: &'static str, message: impl Into<String>) -> async_graphql::ServerError {
    let mut error = async_graphql::ServerError::new(message, None);
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
    error
}

pub fn unauthenticated() -> Error {
    coded(
        UNAUTHENTICATED,
        "authentication required: send `Authorization: Bearer <token>`",
    )
}

pub fn forbidden(message: impl Into<String>) -> Error {
    coded(FORBIDDEN, message)
}

pub fn not_found(what: &str) -> Error {
    coded(NOT_FOUND, format!("{} not found", what.to_lowercase()))
}

pub fn bad_input(message: impl Into<String>) -> Error {
    coded(BAD_USER_INPUT, message)
}

/// Internal failures are logged in full and shown to the client as a reference only.
pub fn internal(detail: &dyn std::fmt::Debug) -> Error {
    let reference = uuid::Uuid::new_v4().simple().to_string();
    tracing::error!(error.reference = %reference, error = ?detail, "internal error");
    coded(INTERNAL, format!("internal error (reference {reference})"))
}

pub fn ledger_error(e: &LedgerError) -> Error {
    let code = match e {
        LedgerError::NotFound(_) => NOT_FOUND,
        LedgerError::Forbidden(_) => FORBIDDEN,
        LedgerError::InvalidAmount(_) => INVALID_AMOUNT,
        LedgerError::InsufficientFunds { .. } => INSUFFICIENT_FUNDS,
        LedgerError::IdempotencyConflict(_) => IDEMPOTENCY_CONFLICT,
        LedgerError::CurrencyNotSupported(_) => CURRENCY_NOT_SUPPORTED,
        LedgerError::CurrencyMismatch(_) => CURRENCY_MISMATCH,
        LedgerError::AlreadyReversed(_) => ALREADY_REVERSED,
        LedgerError::HoldExceeded(_) => HOLD_EXCEEDED,
        LedgerError::HoldNotActive(_) => HOLD_NOT_ACTIVE,
        LedgerError::BadInput(_) => BAD_USER_INPUT,
        LedgerError::InvalidAddress(_) => INVALID_ADDRESS,
        LedgerError::AddressMismatch(_) => ADDRESS_MISMATCH,
        LedgerError::NotRepresentable(detail) => {
            tracing::warn!(%detail, "a sum does not fit the API's decimal type");
            NOT_REPRESENTABLE
        }
        LedgerError::InsufficientConfirmations { .. } => INSUFFICIENT_CONFIRMATIONS,
        LedgerError::ChainUnavailable(detail) => {
            tracing::warn!(%detail, "chain unavailable");
            CHAIN_UNAVAILABLE
        }
        LedgerError::OutcomeUnknown(detail) => {
            tracing::warn!(%detail, "outcome of a movement unknown to its caller");
            OUTCOME_UNKNOWN
        }
        e if e.is_unavailable() => {
            tracing::warn!(error = ?e, "unavailable");
            UNAVAILABLE
        }
        LedgerError::Database(_) | LedgerError::Unavailable(_) | LedgerError::Internal(_) => {
            return internal(e);
        }
    };
    let err = coded(code, e.message());
    match e {
        LedgerError::InsufficientFunds {
            available,
            requested,
        } => err.extend_with(|_, x| {
            x.set("available", available.to_string());
            x.set("requested", requested.to_string());
        }),
        LedgerError::InsufficientConfirmations { current, required } => err.extend_with(|_, x| {
            x.set("current", *current);
            x.set("required", *required);
        }),
        _ => err,
    }
}

// `LedgerError` is not `Display`, so async-graphql's blanket conversion does not apply and
// `?` always goes through this mapping: no domain error reaches a client without a code.
impl From<LedgerError> for Error {
    fn from(e: LedgerError) -> Self {
        ledger_error(&e)
    }
}

/// Errors raised by async-graphql itself (syntax, validation, argument coercion, query
/// limits) carry no code: they are all about the request.
pub fn tag_request_errors(response: &mut async_graphql::Response) {
    for err in &mut response.errors {
        let ext = err.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", BAD_USER_INPUT);
        }
    }
}
