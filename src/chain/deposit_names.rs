//! The names token deposits were given before, and their names now.
//!
//! A chain deposit's hold is keyed by its network and its name ([`ChainTransfer::hash`]):
//! the transaction hash, or for a token transfer the hash and the log's place among the
//! transaction's logs (`0x…:1`) — what survives a reorganisation that mines the
//! transaction again in another block. Token deposits recorded before were named by the
//! log's index in its *block* (`0x…:7`), which such a reorganisation changes, and which
//! cannot be turned into the new name without the chain.
//!
//! Those holds keep their old name (a journal row never changes). Each is listed in
//! `legacy_token_deposits`, and its name now is resolved from the chain ([`resolve`]):
//! before any deposit of its transaction is looked up by name, and at the watcher's
//! passes until done. Looked up by name ([`crate::ledger::store::find_chain_deposit`]),
//! a listed hold answers to its name now only — never to its old one, which may be
//! another log's name now — so a name means one log, and a log one hold.
//!
//! [`ChainTransfer::hash`]: crate::chain::ChainTransfer::hash

use diesel::prelude::*;
use diesel::sql_types::{Nullable, Numeric, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use crate::chain::{Chain, ChainTransfer};
use crate::ledger::{JournalEntry, LedgerError};
use crate::schema::legacy_token_deposits;

/// A hold's name now: its chain hash, or for a hold named before, the name resolved for
/// it (`None` while it is not resolved).
pub async fn name_of(
    conn: &mut AsyncPgConnection,
    hold: &JournalEntry,
) -> Result<Option<String>, LedgerError> {
    let legacy: Option<Option<String>> = legacy_token_deposits::table
        .find(hold.id)
        .select(legacy_token_deposits::name)
        .first(conn)
        .await
        .optional()?;
    Ok(match legacy {
        Some(name) => name,
        None => hold.chain_tx_hash.clone(),
    })
}

/// The name now of `hold`, resolved from the chain if need be: `None` when it was named
/// before and its transaction is not on the canonical chain now.
pub async fn current_name(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    network: &str,
    hold: &JournalEntry,
) -> Result<Option<String>, LedgerError> {
    if let Some(name) = name_of(conn, hold).await? {
        return Ok(Some(name));
    }
    let tx_hash = hold
        .chain_tx_hash
        .as_deref()
        .and_then(|name| name.split_once(':'))
        .map(|(hash, _)| hash.to_owned())
        .unwrap_or_default();
    resolve(conn, chain, network, &tx_hash).await?;
    name_of(conn, hold).await
}

/// A hold named before, as resolution needs it.
#[derive(QueryableByName)]
struct Legacy {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    hold_id: i64,
    /// Its old name.
    #[diesel(sql_type = Text)]
    old: String,
    #[diesel(sql_type = Nullable<Text>)]
    to_address: Option<String>,
    #[diesel(sql_type = Numeric)]
    amount: Decimal,
    /// Its currency's token contract.
    #[diesel(sql_type = Nullable<Text>)]
    contract: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
}

impl Legacy {
    /// The log's index in its block, from the old name.
    fn block_index(&self) -> u64 {
        self.old
            .rsplit_once(':')
            .and_then(|(_, index)| index.parse().ok())
            .unwrap_or(u64::MAX)
    }

    fn is_paid_by(&self, transfer: &ChainTransfer) -> bool {
        self.to_address.as_deref() == Some(transfer.to_address.as_str())
            && self.contract.is_some()
            && self.contract == transfer.asset
            && self.amount == transfer.amount
    }
}

async fn legacy_of(
    conn: &mut AsyncPgConnection,
    network: &str,
    tx_hash: &str,
    lock: bool,
) -> Result<Vec<Legacy>, LedgerError> {
    let sql = format!(
        "SELECT l.hold_id, t.chain_tx_hash AS old, t.to_address, t.amount,
                c.contract_address AS contract, l.name
           FROM legacy_token_deposits l
           JOIN transactions t ON t.id = l.hold_id
           JOIN wallets w ON w.id = t.wallet_id
           JOIN currencies c ON c.code = w.currency
          WHERE l.network = $1 AND l.tx_hash = $2
          ORDER BY l.hold_id{}",
        if lock { " FOR UPDATE OF l" } else { "" }
    );
    Ok(diesel::sql_query(sql)
        .bind::<Text, _>(network)
        .bind::<Text, _>(tx_hash)
        .load(conn)
        .await?)
}

/// Resolves the name now of every hold of transaction `tx_hash` named before, while the
/// transaction is on the canonical chain (else nothing changes). Its token transfers are
/// matched by wallet address, token and amount; where several match, in the order of
/// their logs (which the old block indices kept). Safe to run in several processes.
pub async fn resolve(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    network: &str,
    tx_hash: &str,
) -> Result<(), LedgerError> {
    if tx_hash.is_empty()
        || legacy_of(conn, network, tx_hash, false)
            .await?
            .iter()
            .all(|l| l.name.is_some())
    {
        return Ok(());
    }
    // The chain is asked outside the database transaction.
    let Some(mut transfers) = chain.token_transfers_of(network, tx_hash).await? else {
        return Ok(());
    };
    transfers.sort_by_key(|t| position(&t.hash));
    crate::ledger::store::retried!(conn, |tx| {
        let mut legacy = legacy_of(tx, network, tx_hash, true).await?;
        let names: Vec<String> = transfers.iter().map(|t| t.hash.clone()).collect();
        // Names already given: resolved before, or holds recorded under them since.
        let mut taken: Vec<String> = legacy.iter().filter_map(|l| l.name.clone()).collect();
        taken.extend(
            crate::ledger::store::chain_deposits_named(tx, network, &names)
                .await?
                .into_iter()
                .filter_map(|h| h.chain_tx_hash),
        );
        legacy.sort_by_key(Legacy::block_index);
        for hold in legacy.iter().filter(|l| l.name.is_none()) {
            let Some(transfer) = transfers
                .iter()
                .find(|t| !taken.contains(&t.hash) && hold.is_paid_by(t))
            else {
                tracing::warn!(
                    hold = hold.hold_id,
                    name = hold.old,
                    "a token deposit named before has no transfer in its transaction on \
                     the chain: left as it is"
                );
                continue;
            };
            diesel::update(legacy_token_deposits::table.find(hold.hold_id))
                .filter(legacy_token_deposits::name.is_null())
                .set(legacy_token_deposits::name.eq(&transfer.hash))
                .execute(tx)
                .await?;
            tracing::info!(
                hold = hold.hold_id,
                before = hold.old,
                now = transfer.hash,
                "a token deposit named by its block's log index is named by its place in \
                 its transaction now"
            );
            taken.push(transfer.hash.clone());
        }
        Ok(())
    })
}

/// A token transfer's place in its transaction, from its name.
fn position(name: &str) -> u64 {
    name.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Resolves, a few at a time, the holds named before whose transactions should be on the
/// chain (not dropped or removed by a reorganisation): what the watcher does each pass,
/// so that every old name is resolved soon after an upgrade.
pub async fn resolve_some(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    network: &str,
) -> Result<(), LedgerError> {
    let pending: Vec<String> = legacy_token_deposits::table
        .inner_join(crate::schema::transactions::table)
        .filter(legacy_token_deposits::network.eq(network))
        .filter(legacy_token_deposits::name.is_null())
        .filter(crate::schema::transactions::status.ne_all([
            crate::ledger::TransactionStatus::Reorged,
            crate::ledger::TransactionStatus::Dropped,
        ]))
        .select(legacy_token_deposits::tx_hash)
        .distinct()
        .limit(20)
        .load(conn)
        .await?;
    for tx_hash in pending {
        resolve(conn, chain, network, &tx_hash).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::position;

    #[test]
    fn a_token_transfer_is_placed_by_its_name() {
        assert_eq!(position("0xab:0"), 0);
        assert_eq!(position("0xab:12"), 12);
        assert_eq!(position("0xab"), u64::MAX);
    }
}
