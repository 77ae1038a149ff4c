//! Which backend a network's chain history belongs to.
//!
//! Everything the service derives from a chain — the deposit watcher's position
//! (`chain_scan_cursors`), the blocks it remembers (`chain_blocks`), the reorganisations it
//! follows (`chain_reorgs`), the nonces it gave (`chain_nonces`) — is keyed by the backend
//! that served it: [`SIMULATOR`], or a node of one chain ([`node`]: its chain id and the
//! hash of its genesis block — as block 1 names it, once there is one — so that a node
//! reset to a fresh chain with the same chain id is another backend). Switching a network to another backend never reuses the other's
//! position: the new backend's watcher starts where a first watcher starts.
//!
//! `chain_backends` says which backend serves each network. A process claims its backend
//! for each network it serves ([`claim`]) before it uses it. A claim by another backend
//! is taken over only while the network's wallets have no movements; otherwise it is
//! refused, saying why — the journal's deposits, withdrawals and balances are that chain's,
//! and the other chain does not have them.
//!
//! State written before backends were recorded is keyed `''`: the first backend shown to
//! have produced it ([`Legacy::Mine`]) adopts it; a backend that is not is refused while
//! the network has movements, and the old state is dropped while it has none.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::schema::{chain_backends, chain_blocks, chain_nonces, chain_scan_cursors, transactions};

/// The simulated chain (its state is in this database).
pub const SIMULATOR: &str = "simulator";

/// A node's backend: its chain id and genesis block hash.
pub fn node(chain_id: u64, genesis: &str) -> String {
    format!("node:{chain_id}:{genesis}")
}

/// A backend as people read it, with the setting that selects it.
pub fn describe(backend: &str) -> String {
    match backend.split(':').collect::<Vec<_>>()[..] {
        ["simulator"] => "the simulated chain (started without WALLET_ETHEREUM_RPC_URL)".into(),
        ["node", chain_id, genesis] => format!(
            "the node of chain id {chain_id} with genesis block {genesis} \
             (WALLET_ETHEREUM_RPC_URL)"
        ),
        _ => format!("backend {backend:?}"),
    }
}

/// Whether state from before backends were recorded was produced by the backend claiming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Legacy {
    Mine,
    NotMine,
}

/// Why [`claim`] did not claim.
#[derive(Debug)]
pub enum ClaimError {
    /// The network's history belongs to another chain: what to do.
    Refused(String),
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for ClaimError {
    fn from(e: diesel::result::Error) -> Self {
        ClaimError::Database(e)
    }
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Refused(why) => f.write_str(why),
            ClaimError::Database(e) => write!(f, "recording the network's backend: {e}"),
        }
    }
}

/// The backend serving `network` now, if any has claimed it.
pub async fn claimed(conn: &mut AsyncPgConnection, network: &str) -> QueryResult<Option<String>> {
    chain_backends::table
        .find(network)
        .select(chain_backends::backend)
        .first(conn)
        .await
        .optional()
}

/// Whether any wallet on `network` has a journal row.
async fn has_history(conn: &mut AsyncPgConnection, network: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = Bool)]
        found: bool,
    }
    // Per wallet of the network, one probe of the journal's wallet index.
    let found: Found = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM wallets w WHERE w.network = $1
                          AND EXISTS (SELECT 1 FROM transactions t WHERE t.wallet_id = w.id))
                AS found",
    )
    .bind::<Text, _>(network)
    .get_result(conn)
    .await?;
    Ok(found.found)
}

/// Claims `network` for `backend`, or says why not. `legacy` matters only for the first
/// claim of a database that kept chain state before backends were recorded.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    network: &str,
    backend: &str,
    legacy: Legacy,
) -> Result<(), ClaimError> {
    conn.transaction(async |tx| {
        // One claim of a network at a time (processes may start together).
        diesel::sql_query("SELECT pg_advisory_xact_lock(7357, hashtext($1))")
            .bind::<Text, _>(network)
            .execute(tx)
            .await?;
        let current = claimed(tx, network).await?;
        if current.as_deref() == Some(backend) {
            return Ok(());
        }
        let history = has_history(tx, network).await?;
        match (&current, history, legacy) {
            (Some(other), true, _) => {
                return Err(ClaimError::Refused(format!(
                    "the {network} wallets in this database have movements made on {}, but \
                     this process would serve {network} from {}, whose chain does not have \
                     them: their deposits would be missed or misread and their balances \
                     would not be that chain's. Serve {network} from {} again, or give the \
                     other backend a database of its own",
                    describe(other),
                    describe(backend),
                    describe(other),
                )));
            }
            (None, true, Legacy::NotMine) => {
                return Err(ClaimError::Refused(format!(
                    "the {network} wallets in this database have movements recorded before \
                     it noted which backend served them, and nothing shows they were made on \
                     {}: their deposits would be missed or misread. Serve {network} from the \
                     backend that made them",
                    describe(backend),
                )));
            }
            (_, _, Legacy::Mine) if current.is_none() => adopt_legacy(tx, network, backend).await?,
            _ => drop_legacy(tx, network).await?,
        }
        if let Some(other) = &current {
            tracing::warn!(
                network,
                from = %describe(other),
                to = %describe(backend),
                "the network changes backend (its wallets have no movements): the new \
                 backend's history starts afresh"
            );
        }
        diesel::insert_into(chain_backends::table)
            .values((
                chain_backends::network.eq(network),
                chain_backends::backend.eq(backend),
            ))
            .on_conflict(chain_backends::network)
            .do_update()
            .set((
                chain_backends::backend.eq(backend),
                chain_backends::claimed_at.eq(diesel::dsl::now),
            ))
            .execute(tx)
            .await?;
        Ok(())
    })
    .await
}

/// State from before backends were recorded becomes `backend`'s.
async fn adopt_legacy(tx: &mut AsyncPgConnection, network: &str, backend: &str) -> QueryResult<()> {
    diesel::update(
        chain_scan_cursors::table
            .filter(chain_scan_cursors::network.eq(network))
            .filter(chain_scan_cursors::backend.eq("")),
    )
    .set(chain_scan_cursors::backend.eq(backend))
    .execute(tx)
    .await?;
    diesel::update(
        chain_blocks::table
            .filter(chain_blocks::network.eq(network))
            .filter(chain_blocks::backend.eq("")),
    )
    .set(chain_blocks::backend.eq(backend))
    .execute(tx)
    .await?;
    diesel::update(
        chain_nonces::table
            .filter(chain_nonces::network.eq(network))
            .filter(chain_nonces::backend.eq("")),
    )
    .set(chain_nonces::backend.eq(backend))
    .execute(tx)
    .await?;
    Ok(())
}

/// State from before backends were recorded that no backend is shown to own.
async fn drop_legacy(tx: &mut AsyncPgConnection, network: &str) -> QueryResult<()> {
    diesel::delete(
        chain_scan_cursors::table
            .filter(chain_scan_cursors::network.eq(network))
            .filter(chain_scan_cursors::backend.eq("")),
    )
    .execute(tx)
    .await?;
    diesel::delete(
        chain_blocks::table
            .filter(chain_blocks::network.eq(network))
            .filter(chain_blocks::backend.eq("")),
    )
    .execute(tx)
    .await?;
    diesel::delete(
        chain_nonces::table
            .filter(chain_nonces::network.eq(network))
            .filter(chain_nonces::backend.eq("")),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Whether `backend` is the one serving `network` now.
pub async fn serves(
    conn: &mut AsyncPgConnection,
    network: &str,
    backend: &str,
) -> QueryResult<bool> {
    Ok(claimed(conn, network).await?.as_deref() == Some(backend))
}

/// Chain hashes the journal holds on `network` (a sample: evidence of which chain made
/// them).
pub async fn journaled_hashes(
    conn: &mut AsyncPgConnection,
    network: &str,
) -> QueryResult<Vec<String>> {
    transactions::table
        .filter(transactions::network.eq(network))
        .filter(transactions::chain_tx_hash.is_not_null())
        .select(transactions::chain_tx_hash.assume_not_null())
        .limit(20)
        .load(conn)
        .await
}

/// The newest and the oldest block remembered before backends were recorded.
pub async fn legacy_blocks(
    conn: &mut AsyncPgConnection,
    network: &str,
) -> QueryResult<Vec<(i64, String)>> {
    let of_network = || {
        chain_blocks::table
            .filter(chain_blocks::network.eq(network))
            .filter(chain_blocks::backend.eq(""))
            .select((chain_blocks::number, chain_blocks::hash))
    };
    let mut blocks: Vec<(i64, String)> = of_network()
        .order(chain_blocks::number.desc())
        .limit(1)
        .load(conn)
        .await?;
    blocks.extend(
        of_network()
            .order(chain_blocks::number.asc())
            .limit(1)
            .load::<(i64, String)>(conn)
            .await?,
    );
    blocks.dedup();
    Ok(blocks)
}

/// Whether the simulator made `network`'s state from before backends were recorded: no
/// node remembered blocks of it, and the chain hashes the journal holds are simulated
/// transfers.
pub async fn simulator_legacy(conn: &mut AsyncPgConnection, network: &str) -> QueryResult<Legacy> {
    if !legacy_blocks(conn, network).await?.is_empty() {
        return Ok(Legacy::NotMine);
    }
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let hashes = journaled_hashes(conn, network).await?;
    let known: Count = diesel::sql_query(
        "SELECT count(*) AS count FROM sim_transfers WHERE network = $1 AND hash = ANY($2)",
    )
    .bind::<Text, _>(network)
    .bind::<diesel::sql_types::Array<Text>, _>(&hashes)
    .get_result(conn)
    .await?;
    let all_known = usize::try_from(known.count).is_ok_and(|k| k >= hashes.len());
    Ok(if all_known {
        Legacy::Mine
    } else {
        Legacy::NotMine
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_described_with_the_setting_that_selects_them() {
        assert!(describe(SIMULATOR).contains("the simulated chain"));
        let node = node(31337, "0xabc");
        assert_eq!(node, "node:31337:0xabc");
        let text = describe(&node);
        assert!(text.contains("chain id 31337") && text.contains("genesis block 0xabc"));
        assert!(text.contains("WALLET_ETHEREUM_RPC_URL"));
    }
}
