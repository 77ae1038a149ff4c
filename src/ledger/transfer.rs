//! Transfers between wallets of the same currency: a `TRANSFER_OUT` row on the source and a
//! `TRANSFER_IN` row on the target, each with its own balances, in one database
//! transaction. The pair is one double-entry entry (it sums to zero by itself).
//!
//! Both wallets are locked in id order — the order every movement locks in — so transfers
//! A→B and B→A racing each other never deadlock. The key belongs to the source wallet,
//! like any other movement's: the same request again returns the original transfer.

use diesel_async::AsyncPgConnection;
use rust_decimal::Decimal;

use super::group_commit;
use super::judge::Request;
use super::store::Annotation;
use super::{CurrencyRegistry, JournalEntry, LedgerError, Scope};

/// A transfer a caller asks for.
#[derive(Clone, Debug)]
pub struct TransferRequest {
    pub from_wallet_id: i64,
    pub to_wallet_id: i64,
    pub amount: Decimal,
    pub key: String,
    pub description: Option<String>,
    /// The client's business reference and metadata, on both sides.
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl TransferRequest {
    pub(crate) fn annotation(&self) -> Annotation<'_> {
        Annotation {
            reference: self.reference.as_deref(),
            metadata: self.metadata.as_ref(),
        }
    }
}

/// Both sides of a transfer, and whether an earlier call with the same key made it.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub out: JournalEntry,
    pub into: JournalEntry,
    pub replayed: bool,
}

/// Moves `amount` from one wallet to another, exactly once per key of the source wallet,
/// in its own transaction (a batch of one, like [`movement::execute`](super::movement::execute)).
/// The source must be visible to the caller (`scope`); the target may be anyone's.
pub async fn execute(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &TransferRequest,
) -> Result<Transfer, LedgerError> {
    let request = Request::Transfer(request.clone());
    group_commit::execute_alone(conn, currencies, scope, &request)
        .await?
        .into_transfer()
}
