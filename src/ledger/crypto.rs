//! Crypto deposits: a chain transfer to a wallet's address is credited once it is deep
//! enough, exactly once (the chain hash is the journal's idempotency key).

use diesel_async::AsyncPgConnection;

use super::movement::{self, ChainDetails, Direction, Movement, MovementRequest};
use super::{CurrencyRegistry, LedgerError, Scope, wallet};
use crate::chain::{Chain, ChainError, TransferStatus};

impl From<ChainError> for LedgerError {
    fn from(e: ChainError) -> Self {
        LedgerError::ChainUnavailable(e.to_string())
    }
}

/// `processCryptoDeposit`: checks the transfer on chain — it exists, succeeded, pays this
/// wallet's address and has the network's confirmations — and credits it once. Calling
/// it again (or racing another call) returns the same journal row.
pub async fn process_deposit(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    chain: &dyn Chain,
    scope: &Scope,
    wallet_id: i64,
    hash: &str,
) -> Result<Movement, LedgerError> {
    let (_, currency, network, address) =
        wallet::find_crypto_wallet(conn, currencies, scope, wallet_id, "chain deposits").await?;
    let hash = hash.trim();
    if hash.is_empty() || hash.len() > movement::MAX_KEY_LEN {
        return Err(LedgerError::BadInput(
            "txHash must be 1 to 128 characters".into(),
        ));
    }
    let transfer = chain
        .transfer(&network, hash)
        .await?
        .ok_or(LedgerError::NotFound("chain transaction"))?;
    if transfer.to_address != address {
        return Err(LedgerError::AddressMismatch(format!(
            "transaction {hash} pays {}, not this wallet's address {address}",
            transfer.to_address
        )));
    }
    if transfer.status == TransferStatus::Failed {
        return Err(LedgerError::BadInput(format!(
            "transaction {hash} failed on chain"
        )));
    }
    let required = i64::from(currency.required_confirmations.unwrap_or(1));
    if transfer.confirmations < required {
        return Err(LedgerError::InsufficientConfirmations {
            current: transfer.confirmations,
            required,
        });
    }
    let request = MovementRequest {
        wallet_id,
        direction: Direction::Deposit,
        amount: transfer.amount,
        key: transfer.hash.clone(),
        description: None,
        chain: Some(ChainDetails {
            network,
            from_address: transfer.from_address,
            to_address: transfer.to_address,
            confirmations: i32::try_from(transfer.confirmations).unwrap_or(i32::MAX),
            required_confirmations: i32::try_from(required).unwrap_or(i32::MAX),
            block_number: transfer.block_number,
        }),
    };
    movement::execute(conn, currencies, scope, &request).await
}
