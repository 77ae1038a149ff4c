//! Noticing a changed custody seed at start-up, before any address is handed out.
//!
//! The database records the fingerprint of the seed its wallets were derived from (see
//! [`Custody::fingerprint`]). A server started with another seed refuses to start, in
//! every environment: otherwise it would derive new addresses for new wallets while the
//! existing ones could no longer be signed for — found out only at the first withdrawal.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{Chain, Custody, CustodyError};
use crate::schema::{custody_fingerprint, wallets};

/// How many existing wallets are re-derived when a database that predates fingerprints
/// gets its first one.
const SAMPLE: i64 = 32;

/// Checks `custody` against the recorded fingerprint, recording it on first use. A database
/// with crypto wallets but no fingerprint yet (created before fingerprints were kept) is
/// first checked by re-deriving some of its addresses.
pub async fn check(conn: &mut AsyncPgConnection, custody: &Custody) -> anyhow::Result<()> {
    let this = custody.fingerprint();
    let recorded: Option<String> = custody_fingerprint::table
        .select(custody_fingerprint::fingerprint)
        .first(conn)
        .await
        .optional()?;
    let recorded = match recorded {
        Some(recorded) => recorded,
        None => {
            check_existing_addresses(conn, custody).await?;
            // Several processes may start at once: the first insert wins, and every one
            // compares with what was recorded.
            diesel::insert_into(custody_fingerprint::table)
                .values(custody_fingerprint::fingerprint.eq(&this))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            custody_fingerprint::table
                .select(custody_fingerprint::fingerprint)
                .first(conn)
                .await?
        }
    };
    if recorded != this {
        return Err(CustodyError::SeedChanged { recorded, this }.into());
    }
    Ok(())
}

async fn check_existing_addresses(
    conn: &mut AsyncPgConnection,
    custody: &Custody,
) -> anyhow::Result<()> {
    let sample: Vec<(Option<String>, Option<String>, Option<String>)> = wallets::table
        .filter(wallets::derivation_path.is_not_null())
        .order(wallets::id)
        .limit(SAMPLE)
        .select((wallets::network, wallets::derivation_path, wallets::address))
        .load(conn)
        .await?;
    for (network, path, address) in sample {
        let (Some(chain), Some(path), Some(address)) = (
            network.as_deref().and_then(Chain::from_network),
            path,
            address,
        ) else {
            continue;
        };
        if custody.address_at(chain, &path)? != address {
            return Err(CustodyError::SeedChanged {
                recorded: format!("(none; the wallet at {path} has address {address})"),
                this: custody.fingerprint(),
            }
            .into());
        }
    }
    Ok(())
}
