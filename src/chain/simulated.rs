//! The simulated chain: blocks, transfers, fees and confirmations kept in Postgres
//! (`sim_*` tables), shared by every server process and surviving restarts.
//!
//! Blocks come on demand ([`SimulatedChain::mine`]) and on a timer
//! ([`SimulatedChain::mine_if_due`]: a conditional update, so however many processes run
//! the timer, one block is mined per interval).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::{Chain, ChainError, ChainTransfer, Fee, Scanned, SignedTransfer, TransferStatus};
use crate::db::{PgPool, PooledConn};
use crate::ledger::models::Scaled;
use crate::schema::{sim_blocks, sim_chains, sim_transfers};

/// Where simulated incoming transfers come from: an address outside the service.
pub fn outside_address(network: &str) -> Option<&'static str> {
    match network {
        // The BIP173 example address.
        "bitcoin" => Some("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
        "ethereum" => Some("0x000000000000000000000000000000000000dEaD"),
        _ => None,
    }
}

/// What a transfer costs its sender on each network.
pub fn fee_of(network: &str) -> Fee {
    match network {
        // A flat fee, as a bitcoin wallet would pay for a one-input, two-output spend.
        "bitcoin" => Fee {
            total: Decimal::new(1_000, 8),
            gas_price: None,
            gas_used: None,
        },
        // 21,000 gas at 20 gwei.
        "ethereum" => {
            let gas_price = Decimal::new(20, 9);
            let gas_used = 21_000_i64;
            Fee {
                total: gas_price * Decimal::from(gas_used),
                gas_price: Some(gas_price),
                gas_used: Some(gas_used),
            }
        }
        _ => Fee::default(),
    }
}

#[derive(QueryableByName)]
struct Height {
    #[diesel(sql_type = BigInt)]
    height: i64,
}

#[derive(Clone)]
pub struct SimulatedChain {
    pool: PgPool,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = sim_transfers, check_for_backend(diesel::pg::Pg))]
struct Row {
    hash: String,
    network: String,
    from_address: String,
    to_address: String,
    amount: Decimal,
    fee: Decimal,
    gas_price: Option<Decimal>,
    gas_used: Option<i64>,
    status: String,
    block_number: Option<i64>,
    raw: Option<String>,
    created_at: DateTime<Utc>,
}

impl Row {
    fn into_transfer(self, tip: i64) -> ChainTransfer {
        let confirmations = self.block_number.map_or(0, |b| (tip - b + 1).max(0));
        ChainTransfer {
            status: TransferStatus::parse(&self.status).unwrap_or(TransferStatus::Pending),
            hash: self.hash,
            network: self.network,
            asset: None,
            from_address: self.from_address,
            to_address: self.to_address,
            amount: self.amount,
            fee: self.fee,
            gas_price: self.gas_price,
            gas_used: self.gas_used,
            block_number: self.block_number,
            confirmations,
            raw: self.raw,
            created_at: self.created_at,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ChainError {
    ChainError::Unavailable(e.to_string())
}

/// A fresh transaction hash in the network's usual spelling.
fn random_hash(network: &str) -> String {
    super::hash_spelling(network, rand::random())
}

impl SimulatedChain {
    pub fn new(pool: PgPool) -> Self {
        SimulatedChain { pool }
    }

    async fn conn(&self) -> Result<PooledConn, ChainError> {
        self.pool.get().await.map_err(unavailable)
    }

    async fn tip_on(conn: &mut AsyncPgConnection, network: &str) -> Result<i64, ChainError> {
        sim_chains::table
            .find(network)
            .select(sim_chains::height)
            .first(conn)
            .await
            .optional()
            .map_err(unavailable)?
            .ok_or_else(|| ChainError::UnknownNetwork(network.to_owned()))
    }

    /// A transfer from an outside address to `to_address`, pending until the next block.
    pub async fn incoming(
        &self,
        network: &str,
        to_address: &str,
        amount: Decimal,
    ) -> Result<ChainTransfer, ChainError> {
        let from = outside_address(network)
            .ok_or_else(|| ChainError::UnknownNetwork(network.to_owned()))?;
        let mut conn = self.conn().await?;
        let tip = Self::tip_on(&mut conn, network).await?;
        let row: Row = diesel::insert_into(sim_transfers::table)
            .values((
                sim_transfers::hash.eq(random_hash(network)),
                sim_transfers::network.eq(network),
                sim_transfers::from_address.eq(from),
                sim_transfers::to_address.eq(to_address),
                sim_transfers::amount.eq(Scaled(amount)),
            ))
            .returning(Row::as_returning())
            .get_result(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(row.into_transfer(tip))
    }

    /// Mines `count` blocks now; pending transfers go into the first. Returns the height.
    pub async fn mine(&self, network: &str, count: i64) -> Result<i64, ChainError> {
        let mut conn = self.conn().await?;
        let network = network.to_owned();
        conn.transaction(async |tx| {
            let height: Option<i64> = diesel::update(sim_chains::table.find(&network))
                .set((
                    sim_chains::height.eq(sim_chains::height + count),
                    sim_chains::mined_at.eq(diesel::dsl::now),
                ))
                .returning(sim_chains::height)
                .get_result(tx)
                .await
                .optional()?;
            match height {
                Some(h) => {
                    record_blocks(tx, &network, h - count + 1, h).await?;
                    include_pending(tx, &network, h - count + 1).await?;
                    Ok(Some(h))
                }
                None => Ok(None),
            }
        })
        .await
        .map_err(|e: diesel::result::Error| unavailable(e))?
        .ok_or(ChainError::UnknownNetwork(network))
    }

    /// Mines one block if the last one is at least `interval` old (the block timer; safe
    /// to run in every process). Returns the new height when it mined.
    pub async fn mine_if_due(
        &self,
        network: &str,
        interval: Duration,
    ) -> Result<Option<i64>, ChainError> {
        let mut conn = self.conn().await?;
        let network = network.to_owned();
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        conn.transaction(async |tx| {
            let mined: Option<Height> = diesel::sql_query(
                "UPDATE sim_chains SET height = height + 1, mined_at = now()
                  WHERE network = $1 AND mined_at <= now() - $2 * interval '1 millisecond'
              RETURNING height",
            )
            .bind::<Text, _>(&network)
            .bind::<BigInt, _>(interval_ms)
            .get_result(tx)
            .await
            .optional()?;
            if let Some(Height { height }) = mined {
                record_blocks(tx, &network, height, height).await?;
                include_pending(tx, &network, height).await?;
            }
            Ok(mined.map(|m| m.height))
        })
        .await
        .map_err(|e: diesel::result::Error| unavailable(e))
    }
}

/// Transfers from or to `address` on `network`.
impl SimulatedChain {
    /// The transfers `query` selects, with confirmations counted from the tip.
    async fn load_transfers(
        &self,
        network: &str,
        query: sim_transfers::BoxedQuery<'_, diesel::pg::Pg>,
    ) -> Result<Vec<ChainTransfer>, ChainError> {
        let mut conn = self.conn().await?;
        let tip = Self::tip_on(&mut conn, network).await?;
        let rows: Vec<Row> = query
            .select(Row::as_select())
            .load(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().map(|r| r.into_transfer(tip)).collect())
    }
}

fn of_address<'a>(
    network: &'a str,
    address: &'a str,
) -> sim_transfers::BoxedQuery<'a, diesel::pg::Pg> {
    sim_transfers::table
        .filter(sim_transfers::network.eq(network))
        .filter(
            sim_transfers::to_address
                .eq(address)
                .or(sim_transfers::from_address.eq(address)),
        )
        .into_boxed()
}

/// Records blocks `first..=last` of `network` as mined now.
async fn record_blocks(
    conn: &mut AsyncPgConnection,
    network: &str,
    first: i64,
    last: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO sim_blocks (network, height, mined_at)
         SELECT $1, g, now() FROM generate_series($2::bigint, $3::bigint) AS g",
    )
    .bind::<Text, _>(network)
    .bind::<BigInt, _>(first)
    .bind::<BigInt, _>(last)
    .execute(conn)
    .await
}

/// Puts every pending transfer of `network` into block `block`: it succeeds, unless its
/// destination is listed in `sim_failing_addresses`.
async fn include_pending(
    conn: &mut AsyncPgConnection,
    network: &str,
    block: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE sim_transfers t
            SET block_number = $2,
                status = CASE WHEN EXISTS (SELECT 1 FROM sim_failing_addresses f
                                            WHERE f.network = t.network AND f.address = t.to_address)
                              THEN 'FAILED' ELSE 'SUCCESS' END
          WHERE t.network = $1 AND t.status = 'PENDING'",
    )
    .bind::<Text, _>(network)
    .bind::<BigInt, _>(block)
    .execute(conn)
    .await
}

#[async_trait::async_trait]
impl Chain for SimulatedChain {
    fn is_simulated(&self, _network: &str) -> bool {
        true
    }

    fn backend(&self, _network: &str) -> Result<String, ChainError> {
        Ok(super::backends::SIMULATOR.to_owned())
    }

    fn max_transfer_fee(&self, network: &str) -> Option<Decimal> {
        // The fee is fixed per network.
        Some(fee_of(network).total)
    }

    async fn tip(&self, network: &str) -> Result<i64, ChainError> {
        let mut conn = self.conn().await?;
        Self::tip_on(&mut conn, network).await
    }

    async fn transfer(
        &self,
        network: &str,
        hash: &str,
    ) -> Result<Option<ChainTransfer>, ChainError> {
        let mut conn = self.conn().await?;
        let tip = Self::tip_on(&mut conn, network).await?;
        let row: Option<Row> = sim_transfers::table
            .find(hash)
            .filter(sim_transfers::network.eq(network))
            .select(Row::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(unavailable)?;
        Ok(row.map(|r| r.into_transfer(tip)))
    }

    async fn balance(&self, network: &str, address: &str) -> Result<Decimal, ChainError> {
        let mut conn = self.conn().await?;
        Self::tip_on(&mut conn, network).await?;
        let received: Option<Decimal> = sim_transfers::table
            .filter(sim_transfers::network.eq(network))
            .filter(sim_transfers::to_address.eq(address))
            .filter(sim_transfers::status.eq("SUCCESS"))
            .select(diesel::dsl::sum(sim_transfers::amount))
            .first(&mut conn)
            .await
            .map_err(unavailable)?;
        let sent: Option<Decimal> = sim_transfers::table
            .filter(sim_transfers::network.eq(network))
            .filter(sim_transfers::from_address.eq(address))
            .filter(sim_transfers::status.eq("SUCCESS"))
            .select(diesel::dsl::sum(sim_transfers::amount + sim_transfers::fee))
            .first(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(received.unwrap_or_default() - sent.unwrap_or_default())
    }

    async fn height_at(&self, network: &str, at: DateTime<Utc>) -> Result<i64, ChainError> {
        let mut conn = self.conn().await?;
        Self::tip_on(&mut conn, network).await?;
        let height: Option<i64> = sim_blocks::table
            .filter(sim_blocks::network.eq(network))
            .filter(sim_blocks::mined_at.le(at))
            .select(diesel::dsl::max(sim_blocks::height))
            .first(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(height.unwrap_or(0))
    }

    async fn settled_between(
        &self,
        network: &str,
        address: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<ChainTransfer>, ChainError> {
        let query = of_address(network, address)
            .filter(sim_transfers::status.eq("SUCCESS"))
            .filter(sim_transfers::block_number.gt(after))
            .filter(sim_transfers::block_number.le(up_to))
            .order((sim_transfers::block_number, sim_transfers::hash));
        self.load_transfers(network, query).await
    }

    async fn transfers_since(
        &self,
        network: &str,
        after_block: i64,
    ) -> Result<Scanned, ChainError> {
        let query = sim_transfers::table
            .filter(sim_transfers::network.eq(network))
            .filter(
                sim_transfers::block_number
                    .gt(after_block)
                    .or(sim_transfers::status.eq("PENDING")),
            )
            .order((sim_transfers::created_at, sim_transfers::hash))
            .into_boxed();
        // The simulated chains never reorganise.
        Ok(Scanned {
            transfers: self.load_transfers(network, query).await?,
        })
    }

    async fn estimate_fee(&self, network: &str) -> Result<Fee, ChainError> {
        let mut conn = self.conn().await?;
        Self::tip_on(&mut conn, network).await?;
        Ok(fee_of(network))
    }

    async fn broadcast(&self, transfer: &SignedTransfer) -> Result<String, ChainError> {
        let mut conn = self.conn().await?;
        Self::tip_on(&mut conn, &transfer.network).await?;
        let fee = transfer.fee;
        diesel::insert_into(sim_transfers::table)
            .values((
                sim_transfers::hash.eq(&transfer.hash),
                sim_transfers::network.eq(&transfer.network),
                sim_transfers::from_address.eq(&transfer.from_address),
                sim_transfers::to_address.eq(&transfer.to_address),
                sim_transfers::amount.eq(Scaled(transfer.amount)),
                sim_transfers::fee.eq(Scaled(fee.total)),
                sim_transfers::gas_price.eq(fee.gas_price.map(Scaled)),
                sim_transfers::gas_used.eq(fee.gas_used),
                sim_transfers::raw.eq(&transfer.raw),
            ))
            // The same bytes again: already known, nothing to do.
            .on_conflict(sim_transfers::hash)
            .do_nothing()
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(transfer.hash.clone())
    }
}
