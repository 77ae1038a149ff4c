//! Gas funding: a network's coin (ether) that the operator puts at a wallet's address to
//! pay network fees — recorded as the service's own money in custody, never as the
//! customer's deposit.
//!
//! A token wallet's address pays its withdrawals' gas in ether, and an ether wallet's
//! address may hold less than its wallet (withdrawals signed before flat fees had to
//! cover the gas left the difference there). Ether sent to such an address would
//! otherwise be nobody's (a token wallet's) or the customer's (an ether wallet's
//! deposit). Here:
//!
//! 1. [`request`] (`fundGas`, operators): records the transfer about to be sent — from
//!    the operator's own address, to the wallet's address, exactly this amount — as
//!    EXPECTED.
//! 2. [`claim`] (the deposit watcher, before it looks for deposits): a transfer matching
//!    an expected funding becomes that funding (CONFIRMING, its hash recorded) and is no
//!    deposit. The decision is taken under the receiving wallet's row lock, the
//!    lock every deposit writer takes: a transfer is either a deposit or a funding, never
//!    both (the database refuses both ways as well).
//! 3. [`advance`] (every chain worker pass): confirmations are counted like a deposit's;
//!    at the network's threshold the funding is COMPLETED and the database posts it:
//!    `custody` −amount (our addresses received it) and `gas_funding` +amount (the
//!    service's own money), in the coin. A funding whose transfer leaves the chain before
//!    then is EXPECTED again (matched again if it is mined again).
//!
//! What the ledger says an address holds beyond its wallet is then explained: completed
//! fundings, less the gas its token withdrawals paid ([`float_of_address`], which a token
//! withdrawal must be covered by before it is signed).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Numeric, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use crate::chain::{Chain, ChainTransfer, TransferStatus};
use crate::custody;
use crate::ledger::models::{Scaled, text_enum};
use crate::ledger::page::paginate;
use crate::ledger::{
    Currency, CurrencyKind, CurrencyRegistry, LedgerError, ListScope, Page, PageArgs, Scope, input,
    money, store, wallet,
};
use crate::schema::{gas_fundings, wallets};

text_enum! {
    /// Where a gas funding stands.
    pub enum GasFundingStatus {
        /// Recorded; its transfer has not been seen on chain.
        Expected => "EXPECTED",
        /// Its transfer is mined; counting confirmations.
        Confirming => "CONFIRMING",
        /// Confirmed and posted.
        Completed => "COMPLETED",
        /// Withdrawn by an operator before its transfer was seen.
        Cancelled => "CANCELLED",
    }
}

/// A gas funding as stored.
#[derive(Clone, Debug, Queryable, Selectable, Identifiable)]
#[diesel(table_name = gas_fundings, check_for_backend(diesel::pg::Pg))]
pub struct GasFunding {
    pub id: i64,
    pub wallet_id: i64,
    pub network: String,
    /// The network's coin.
    pub currency: String,
    pub from_address: String,
    pub to_address: String,
    pub amount: Decimal,
    pub idempotency_key: String,
    pub requested_by: String,
    pub status: GasFundingStatus,
    pub status_reason: Option<String>,
    pub chain_tx_hash: Option<String>,
    pub block_number: Option<i64>,
    pub confirmations: i32,
    pub required_confirmations: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `fundGas`.
#[derive(Clone, Debug)]
pub struct FundingRequest {
    pub wallet_id: i64,
    /// The operator's address the ether comes from.
    pub from_address: String,
    pub amount: Decimal,
    /// The operator's idempotency key, scoped to the wallet.
    pub key: String,
    /// Who asked (the operator's token subject).
    pub requested_by: String,
}

/// The coin of `network` (not a token): what gas is paid in.
pub fn coin_of<'c>(currencies: &'c CurrencyRegistry, network: &str) -> Option<&'c Currency> {
    currencies.all().find(|c| {
        c.kind == CurrencyKind::Crypto
            && c.network.as_deref() == Some(network)
            && c.contract_address.is_none()
    })
}

/// Step 1: records an expected gas funding of a wallet's address. The same key with the
/// same request returns the original (`true`: a replay); with another request it is
/// `IDEMPOTENCY_CONFLICT`.
pub async fn request(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    request: &FundingRequest,
) -> Result<(GasFunding, bool), LedgerError> {
    input::check_key("idempotencyKey", &request.key)?;
    let (wallet, _, network, to_address) =
        wallet::find_crypto_wallet(conn, currencies, &Scope::All, request.wallet_id, "gas").await?;
    let coin = coin_of(currencies, &network).ok_or_else(|| {
        LedgerError::CurrencyNotSupported(format!("{network} has no coin to pay gas with"))
    })?;
    let custody_chain = custody::Chain::from_network(&network).ok_or_else(|| {
        LedgerError::CurrencyNotSupported(format!("no custody for network {network:?}"))
    })?;
    let from_address = custody::validate_address(custody_chain, &request.from_address)
        .map_err(LedgerError::InvalidAddress)?;
    let amount = money::validate_amount(request.amount, coin)?;
    // A transfer between two of our own addresses is a customer's withdrawal and another
    // customer's deposit: never gas funding.
    let ours: bool = diesel::select(diesel::dsl::exists(
        wallets::table.filter(wallets::address.eq(&from_address)),
    ))
    .get_result(conn)
    .await?;
    if ours {
        return Err(LedgerError::BadInput(
            "fromAddress is a wallet's address: gas funding comes from the operator's own \
             address"
                .into(),
        ));
    }
    let inserted = diesel::insert_into(gas_fundings::table)
        .values((
            gas_fundings::wallet_id.eq(wallet.id),
            gas_fundings::network.eq(&network),
            gas_fundings::currency.eq(&coin.code),
            gas_fundings::from_address.eq(&from_address),
            gas_fundings::to_address.eq(&to_address),
            gas_fundings::amount.eq(Scaled(amount)),
            gas_fundings::idempotency_key.eq(&request.key),
            gas_fundings::requested_by.eq(&request.requested_by),
            gas_fundings::status.eq(GasFundingStatus::Expected),
            gas_fundings::required_confirmations.eq(coin.required_confirmations.unwrap_or(1)),
        ))
        .on_conflict((gas_fundings::wallet_id, gas_fundings::idempotency_key))
        .do_nothing()
        .returning(GasFunding::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    if let Some(funding) = inserted {
        tracing::info!(
            id = funding.id,
            wallet = wallet.id,
            %amount,
            from = from_address,
            requested_by = request.requested_by,
            "gas funding expected"
        );
        return Ok((funding, false));
    }
    let existing: GasFunding = gas_fundings::table
        .filter(gas_fundings::wallet_id.eq(wallet.id))
        .filter(gas_fundings::idempotency_key.eq(&request.key))
        .select(GasFunding::as_select())
        .first(conn)
        .await?;
    if existing.from_address != from_address || existing.amount != amount {
        return Err(LedgerError::IdempotencyConflict(format!(
            "idempotencyKey {:?} was used for another gas funding of this wallet",
            request.key
        )));
    }
    Ok((existing, true))
}

/// Withdraws an expected funding whose transfer will not come (a mistyped amount, say):
/// once cancelled, no transfer matches it. One whose transfer was seen cannot be.
pub async fn cancel(conn: &mut AsyncPgConnection, id: i64) -> Result<GasFunding, LedgerError> {
    store::retried!(conn, |tx| {
        let funding: GasFunding = gas_fundings::table
            .find(id)
            .select(GasFunding::as_select())
            .for_update()
            .first(tx)
            .await
            .optional()?
            .ok_or(LedgerError::NotFound("gas funding"))?;
        match funding.status {
            GasFundingStatus::Cancelled => Ok(funding),
            GasFundingStatus::Expected => Ok(diesel::update(gas_fundings::table.find(id))
                .set((
                    gas_fundings::status.eq(GasFundingStatus::Cancelled),
                    gas_fundings::status_reason.eq("cancelled by an operator"),
                    gas_fundings::updated_at.eq(diesel::dsl::now),
                ))
                .returning(GasFunding::as_returning())
                .get_result(tx)
                .await?),
            status => Err(LedgerError::BadInput(format!(
                "gas funding {id} is {status}: its transfer is on chain and cannot be cancelled"
            ))),
        }
    })
}

/// A gas funding by id.
pub async fn find(conn: &mut AsyncPgConnection, id: i64) -> Result<GasFunding, LedgerError> {
    gas_fundings::table
        .find(id)
        .select(GasFunding::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("gas funding"))
}

/// A page of gas fundings (of one wallet, or all), oldest first. Operators only: the
/// caller checks.
pub async fn list(
    conn: &mut AsyncPgConnection,
    scope: &ListScope,
    page: &PageArgs,
) -> Result<Page<GasFunding>, LedgerError> {
    let mut q = gas_fundings::table
        .select(GasFunding::as_select())
        .into_boxed();
    match scope {
        ListScope::Wallet(id) => q = q.filter(gas_fundings::wallet_id.eq(*id)),
        ListScope::Owner(user) => {
            q = q.filter(
                gas_fundings::wallet_id.eq_any(
                    wallets::table
                        .filter(wallets::user_id.eq(user.clone()))
                        .select(wallets::id),
                ),
            )
        }
        ListScope::All => {}
    }
    let rows = paginate!(q, page, gas_fundings).load(conn).await?;
    Ok(page.finish(rows))
}

/// Step 2, called by the deposit watcher with the transfers it scanned on `network`:
/// takes out those that are gas fundings (recorded before, or matching an expected one
/// now), so that none of them is held as a deposit. Returns how many it took out.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    network: &str,
    transfers: &mut Vec<ChainTransfer>,
) -> Result<usize, LedgerError> {
    let coin_transfers: Vec<&ChainTransfer> = transfers
        .iter()
        .filter(|t| t.asset.is_none() && t.amount > Decimal::ZERO)
        .collect();
    if coin_transfers.is_empty() {
        return Ok(0);
    }
    let hashes: Vec<String> = coin_transfers.iter().map(|t| t.hash.clone()).collect();
    let to: Vec<String> = coin_transfers
        .iter()
        .map(|t| t.to_address.clone())
        .collect();
    // Usually nothing: one indexed look-up per scan. (Seen in either state — expected, or
    // already holding the hash — so a claim committed meanwhile is not missed.)
    let candidates: Vec<GasFunding> = gas_fundings::table
        .filter(gas_fundings::network.eq(network))
        .filter(
            gas_fundings::chain_tx_hash
                .eq_any(&hashes)
                .or(gas_fundings::status
                    .eq(GasFundingStatus::Expected)
                    .and(gas_fundings::to_address.eq_any(&to))),
        )
        .select(GasFunding::as_select())
        .load(conn)
        .await?;
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut funding: Vec<String> = Vec::new();
    for t in coin_transfers {
        let known = candidates
            .iter()
            .any(|f| f.chain_tx_hash.as_deref() == Some(t.hash.as_str()));
        let expected = candidates.iter().find(|f| {
            f.status == GasFundingStatus::Expected
                && f.to_address == t.to_address
                && f.from_address == t.from_address
                && f.amount == t.amount
        });
        let claimed = match (known, expected) {
            (true, _) => true,
            (false, Some(f)) if t.status != TransferStatus::Failed => {
                claim_one(conn, f.wallet_id, t).await?
            }
            _ => false,
        };
        if claimed {
            funding.push(t.hash.clone());
        }
    }
    transfers.retain(|t| !(t.asset.is_none() && funding.contains(&t.hash)));
    Ok(funding.len())
}

/// Records `t` as the oldest expected funding it matches, under the receiving wallet's
/// row lock (the lock every deposit writer takes first). Whether it is a funding now.
async fn claim_one(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    t: &ChainTransfer,
) -> Result<bool, LedgerError> {
    store::retried!(conn, |tx| {
        store::lock_wallet(tx, &Scope::All, wallet_id).await?;
        let already: bool = diesel::select(diesel::dsl::exists(
            gas_fundings::table
                .filter(gas_fundings::network.eq(&t.network))
                .filter(gas_fundings::chain_tx_hash.eq(&t.hash)),
        ))
        .get_result(tx)
        .await?;
        if already {
            return Ok(true);
        }
        // Held as a deposit first: the customer's, whatever was expected.
        if store::find_chain_deposit(tx, &t.network, &t.hash)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let matched = diesel::sql_query(
            "UPDATE gas_fundings
                SET status = 'CONFIRMING', status_reason = NULL, chain_tx_hash = $5,
                    block_number = $6, confirmations = $7, updated_at = now()
              WHERE id = (SELECT id FROM gas_fundings
                           WHERE network = $1 AND status = 'EXPECTED' AND to_address = $2
                             AND from_address = $3 AND amount = $4
                           ORDER BY id LIMIT 1 FOR UPDATE)
                AND status = 'EXPECTED'",
        )
        .bind::<Text, _>(&t.network)
        .bind::<Text, _>(&t.to_address)
        .bind::<Text, _>(&t.from_address)
        .bind::<Numeric, _>(t.amount)
        .bind::<Text, _>(&t.hash)
        .bind::<diesel::sql_types::Nullable<BigInt>, _>(t.block_number)
        .bind::<diesel::sql_types::Integer, _>(i32::try_from(t.confirmations).unwrap_or(i32::MAX))
        .execute(tx)
        .await?;
        if matched == 1 {
            tracing::info!(hash = t.hash, to = t.to_address, amount = %t.amount, "gas funding seen on chain");
        }
        Ok(matched == 1)
    })
}

/// What one [`advance`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FundingReport {
    pub completed: usize,
    /// Back to EXPECTED: their transfer left the chain.
    pub unmined: usize,
    /// Fundings that could not be followed this time (tried again next pass).
    pub errors: usize,
}

/// Step 3: follows every funding whose transfer is mined on `networks`, and posts those
/// that reached their confirmations.
pub async fn advance(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    networks: &[String],
) -> Result<FundingReport, LedgerError> {
    let confirming: Vec<GasFunding> = gas_fundings::table
        .filter(gas_fundings::status.eq(GasFundingStatus::Confirming))
        .filter(gas_fundings::network.eq_any(networks))
        .order(gas_fundings::id)
        .select(GasFunding::as_select())
        .load(conn)
        .await?;
    let mut report = FundingReport::default();
    for funding in confirming {
        match advance_one(conn, chain, &funding).await {
            Ok(Followed::Completed) => report.completed += 1,
            Ok(Followed::Unmined) => report.unmined += 1,
            Ok(Followed::Unchanged) => {}
            Err(e) => {
                report.errors += 1;
                tracing::warn!(id = funding.id, error = ?e, "could not follow a gas funding");
            }
        }
    }
    Ok(report)
}

enum Followed {
    Completed,
    Unmined,
    Unchanged,
}

async fn advance_one(
    conn: &mut AsyncPgConnection,
    chain: &dyn Chain,
    funding: &GasFunding,
) -> Result<Followed, LedgerError> {
    let Some(hash) = funding.chain_tx_hash.as_deref() else {
        return Ok(Followed::Unchanged);
    };
    let found = chain.transfer(&funding.network, hash).await?;
    store::retried!(conn, |tx| {
        let Some(current) = gas_fundings::table
            .find(funding.id)
            .filter(gas_fundings::status.eq(GasFundingStatus::Confirming))
            .select(GasFunding::as_select())
            .for_update()
            .first(tx)
            .await
            .optional()?
        else {
            return Ok(Followed::Unchanged);
        };
        // Pending (not mined yet, or mined again after a reorganisation) counts as 0.
        let known = found
            .as_ref()
            .filter(|t| t.status != TransferStatus::Failed);
        let Some(t) = known else {
            // Gone (a reorganisation, a node that dropped it): expected again, matched
            // again if it is mined again.
            tracing::warn!(
                id = current.id,
                hash,
                "a gas funding's transfer is gone from the chain before it was confirmed"
            );
            diesel::update(gas_fundings::table.find(current.id))
                .set((
                    gas_fundings::status.eq(GasFundingStatus::Expected),
                    gas_fundings::status_reason.eq(format!(
                        "its transfer {hash} left the chain before it was confirmed: \
                         expected again"
                    )),
                    gas_fundings::chain_tx_hash.eq(None::<String>),
                    gas_fundings::block_number.eq(None::<i64>),
                    gas_fundings::confirmations.eq(0),
                    gas_fundings::updated_at.eq(diesel::dsl::now),
                ))
                .execute(tx)
                .await?;
            return Ok(Followed::Unmined);
        };
        let confirmations = i32::try_from(t.confirmations).unwrap_or(i32::MAX);
        if t.block_number.is_some() && confirmations >= current.required_confirmations {
            // The database posts it (custody −amount, gas_funding +amount).
            diesel::update(gas_fundings::table.find(current.id))
                .set((
                    gas_fundings::status.eq(GasFundingStatus::Completed),
                    gas_fundings::block_number.eq(t.block_number),
                    gas_fundings::confirmations.eq(confirmations),
                    gas_fundings::updated_at.eq(diesel::dsl::now),
                ))
                .execute(tx)
                .await?;
            tracing::info!(id = current.id, hash, amount = %current.amount, "gas funding posted");
            return Ok(Followed::Completed);
        }
        if current.confirmations != confirmations || current.block_number != t.block_number {
            diesel::update(gas_fundings::table.find(current.id))
                .set((
                    gas_fundings::block_number.eq(t.block_number),
                    gas_fundings::confirmations.eq(confirmations),
                    gas_fundings::updated_at.eq(diesel::dsl::now),
                ))
                .execute(tx)
                .await?;
        }
        Ok(Followed::Unchanged)
    })
}

/// Refuses to treat a gas funding's transfer as a deposit (`processCryptoDeposit`).
pub async fn refuse_as_deposit(
    conn: &mut AsyncPgConnection,
    network: &str,
    hash: &str,
) -> Result<(), LedgerError> {
    let funding: bool = diesel::select(diesel::dsl::exists(
        gas_fundings::table
            .filter(gas_fundings::network.eq(network))
            .filter(gas_fundings::chain_tx_hash.eq(hash)),
    ))
    .get_result(conn)
    .await?;
    if funding {
        return Err(LedgerError::BadInput(format!(
            "transaction {hash} is gas funding recorded by an operator, not a deposit"
        )));
    }
    Ok(())
}

#[derive(QueryableByName)]
struct Sum {
    #[diesel(sql_type = Numeric)]
    total: Decimal,
}

/// The network's coin the ledger says `address` holds for gas: its completed fundings,
/// less the gas its token withdrawals paid (posted at their debit). What a token
/// withdrawal's gas must come from.
pub async fn float_of_address(
    conn: &mut AsyncPgConnection,
    network: &str,
    address: &str,
) -> Result<Decimal, LedgerError> {
    let sum: Sum = diesel::sql_query(
        "SELECT COALESCE((SELECT sum(amount) FROM gas_fundings
                           WHERE network = $1 AND to_address = $2 AND status = 'COMPLETED'), 0)
              - COALESCE((SELECT sum(t.gas_price * t.gas_used)
                            FROM transactions t
                            JOIN wallets w ON w.id = t.wallet_id
                            JOIN currencies c ON c.code = w.currency
                           WHERE w.network = $1 AND w.address = $2
                             AND c.contract_address IS NOT NULL
                             AND t.type = 'WITHDRAW' AND NOT t.hold), 0) AS total",
    )
    .bind::<Text, _>(network)
    .bind::<Text, _>(address)
    .get_result(conn)
    .await?;
    Ok(sum.total)
}

/// What the ledger explains of a wallet's address holding more of the coin than the
/// wallet: the gas fundings whose transfer was mined at or below `height` (the chain's
/// height a reconciliation compares with). For reconciliation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FundedAt {
    pub amount: Decimal,
    /// Their transfers' hashes: on chain, and not deposits.
    pub hashes: Vec<String>,
}

/// See [`FundedAt`].
pub async fn funded_at(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    height: i64,
) -> Result<FundedAt, LedgerError> {
    let rows: Vec<(Option<String>, Decimal)> = gas_fundings::table
        .filter(gas_fundings::wallet_id.eq(wallet_id))
        .filter(
            gas_fundings::status
                .eq_any([GasFundingStatus::Confirming, GasFundingStatus::Completed]),
        )
        .filter(gas_fundings::block_number.le(height))
        .select((gas_fundings::chain_tx_hash, gas_fundings::amount))
        .load(conn)
        .await?;
    Ok(FundedAt {
        amount: rows.iter().map(|(_, a)| *a).sum(),
        hashes: rows.into_iter().filter_map(|(h, _)| h).collect(),
    })
}
