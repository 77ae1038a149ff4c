//! Fiat money movements: deposits (credits reported by the payment back office) and
//! withdrawals (debits). Each is one database transaction that locks the wallet row,
//! honours the idempotency key, updates the balance and appends the journal row.

use diesel_async::AsyncPgConnection;
use rust_decimal::Decimal;

use super::group_commit;
use super::judge::Request;
use super::store::Annotation;
use super::{CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Deposit,
    Withdraw,
}

impl Direction {
    pub(crate) fn transaction_type(self) -> TransactionType {
        match self {
            Direction::Deposit => TransactionType::Deposit,
            Direction::Withdraw => TransactionType::Withdraw,
        }
    }
}

/// A request to move money into or out of a fiat wallet.
#[derive(Clone, Debug)]
pub struct MovementRequest {
    pub wallet_id: i64,
    pub direction: Direction,
    pub amount: Decimal,
    /// The client's idempotency key (`idempotencyKey`).
    pub key: String,
    pub description: Option<String>,
    /// The client's business reference and metadata.
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl MovementRequest {
    pub(crate) fn annotation(&self) -> Annotation<'_> {
        Annotation {
            reference: self.reference.as_deref(),
            metadata: self.metadata.as_ref(),
        }
    }
}

/// The journal row a request produced, and whether it was produced by an earlier call
/// with the same key (a replay has no second effect).
#[derive(Clone, Debug)]
pub struct Movement {
    pub entry: JournalEntry,
    pub replayed: bool,
}

/// Applies a movement exactly once per idempotency key, in its own transaction (a batch
/// of one: the prefetch, [`judge`](super::judge) and writes of a group-commit batch),
/// retried when Postgres reports a transient failure or a concurrent use of the same key.
pub async fn execute(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &MovementRequest,
) -> Result<Movement, LedgerError> {
    let request = Request::Movement(request.clone());
    group_commit::execute_alone(conn, currencies, scope, &request)
        .await?
        .into_movement()
}
