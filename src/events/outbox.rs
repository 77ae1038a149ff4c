//! Reading the `events` outbox in a loss-free order, and loading what its rows name.
//!
//! Events are read in `(tx_id, id)` order, and only those whose writing transaction is
//! older than every transaction of this database still running (see `SETTLED`). Such a transaction has ended, so no event can later appear before the cursor:
//! a reader that keeps `(tx_id, id)` of the last event it delivered misses nothing and
//! repeats nothing, across restarts of its connection included.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Bool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::{Notice, Payload};
use crate::ledger::fixed_sql::{self, Bind, Fixed};
use crate::ledger::{JournalEntry, LedgerError, Reconciliation, Wallet, wallet};
use crate::schema::{events, reconciliations, transactions};

/// Position after the last delivered event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub tx_id: i64,
    pub id: i64,
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    pub id: i64,
    pub tx_id: i64,
    pub topic: String,
    pub subject_id: i64,
    pub wallet_id: i64,
    pub user_id: String,
    pub balance: Option<Decimal>,
    pub locked_balance: Option<Decimal>,
    pub created_at: DateTime<Utc>,
    pub held_balance: Option<Decimal>,
    pub credit_limit: Option<Decimal>,
}

impl EventRow {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            tx_id: self.tx_id,
            id: self.id,
        }
    }
}

/// The event was written by a transaction older than every transaction of this database
/// that was still running when the reading statement's snapshot was taken — so no event
/// can later become visible behind it.
///
/// The horizon is the snapshot's oldest in-progress xid, except that xids seen running in
/// another database are skipped: transaction ids are cluster-wide, but a transaction never
/// writes to another database's outbox, so a long job next door must not stall events here.
/// (Without the privilege to see other sessions' xids this degrades to the plain xmin.)
macro_rules! horizon {
    () => {
        "(SELECT COALESCE(min(x::text::bigint), pg_snapshot_xmax(pg_current_snapshot())::text::bigint)
            FROM pg_snapshot_xip(pg_current_snapshot()) AS x
           WHERE (x::text::bigint & 4294967295) NOT IN (
                 SELECT a.backend_xid::text::bigint FROM pg_stat_activity a
                  WHERE a.datname IS DISTINCT FROM current_database()
                    AND a.backend_xid IS NOT NULL))"
    };
}
const SETTLED: &str = concat!("events.tx_id < ", horizon!());

/// Whether any event is beyond the horizon, asked through `max(tx_id)` (one step down the
/// `(tx_id, id)` index): as `EXISTS … WHERE NOT settled` the planner scanned the whole
/// outbox, which grows all day, on every wake-up.
const HELD_BACK: &str = concat!(
    "SELECT COALESCE((SELECT max(tx_id) FROM events) >= ",
    horizon!(),
    ", FALSE) AS held"
);

/// The position of the newest settled event: where a listener that starts now begins.
/// Events of transactions still running are after it, so they are delivered too.
pub async fn head(conn: &mut AsyncPgConnection) -> Result<Cursor, LedgerError> {
    let row: Option<(i64, i64)> = events::table
        .filter(Fixed::<Bool>::new(&[SETTLED], vec![]))
        .order((events::tx_id.desc(), events::id.desc()))
        .select((events::tx_id, events::id))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map_or_else(Cursor::default, |(tx_id, id)| Cursor { tx_id, id }))
}

/// Up to `limit` settled events after `cursor`, in order.
pub async fn read_after(
    conn: &mut AsyncPgConnection,
    cursor: Cursor,
    limit: i64,
) -> Result<Vec<EventRow>, LedgerError> {
    // A row comparison is a start key on the `(tx_id, id)` index; the same condition
    // spelled with OR is not, and Postgres walked the outbox from its start on every read.
    let after = Fixed::<Bool>::new(
        &["(events.tx_id, events.id) > (", ", ", ")"],
        vec![Bind::BigInt(cursor.tx_id), Bind::BigInt(cursor.id)],
    );
    Ok(events::table
        .filter(after)
        .filter(Fixed::<Bool>::new(&[SETTLED], vec![]))
        .order((events::tx_id, events::id))
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
        .await?)
}

/// Whether committed events are being held back because an older transaction is still
/// running: the reader should look again shortly rather than wait for the next NOTIFY.
pub async fn has_held_back(conn: &mut AsyncPgConnection) -> Result<bool, LedgerError> {
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = Bool)]
        held: bool,
    }
    let row: Held = fixed_sql::statement(&[HELD_BACK], vec![])
        .get_result(conn)
        .await?;
    Ok(row.held)
}

/// Loads what the events name (one query per kind of subject) and pairs them up, in the
/// events' order. Events whose subject is gone are skipped.
pub async fn load_notices(
    conn: &mut AsyncPgConnection,
    rows: &[EventRow],
) -> Result<Vec<Notice>, LedgerError> {
    let ids = |topic: &str| -> Vec<i64> {
        rows.iter()
            .filter(|r| r.topic == topic)
            .map(|r| r.subject_id)
            .collect()
    };
    let (tx_ids, wallet_ids, rec_ids) = (ids("TRANSACTION"), ids("WALLET"), ids("RECONCILIATION"));
    let hold_ids = ids("HOLD");
    let mut holds: HashMap<i64, crate::ledger::hold::Hold> = HashMap::new();
    if !hold_ids.is_empty() {
        let loaded = crate::ledger::hold::holds_by_ids(conn, &hold_ids).await?;
        holds.extend(loaded.into_iter().map(|h| (h.id, h)));
    }

    let mut entries: HashMap<i64, JournalEntry> = HashMap::new();
    if !tx_ids.is_empty() {
        let loaded: Vec<JournalEntry> = transactions::table
            .filter(transactions::id.eq_any(&tx_ids))
            .select(JournalEntry::as_select())
            .load(conn)
            .await?;
        entries.extend(loaded.into_iter().map(|e| (e.id, e)));
    }
    let mut wallets: HashMap<i64, Wallet> = HashMap::new();
    if !wallet_ids.is_empty() {
        let loaded = wallet::wallets_by_ids(conn, &wallet_ids).await?;
        wallets.extend(loaded.into_iter().map(|w| (w.id, w)));
    }
    let mut recs: HashMap<i64, Reconciliation> = HashMap::new();
    if !rec_ids.is_empty() {
        let loaded: Vec<Reconciliation> = reconciliations::table
            .filter(reconciliations::id.eq_any(&rec_ids))
            .select(Reconciliation::as_select())
            .load(conn)
            .await?;
        recs.extend(loaded.into_iter().map(|r| (r.id, r)));
    }

    let mut notices = Vec::with_capacity(rows.len());
    for row in rows {
        let payload = match row.topic.as_str() {
            "TRANSACTION" => entries
                .get(&row.subject_id)
                .cloned()
                .map(|e| Payload::Transaction(Box::new(e))),
            // The wallet as this change left it: later changes have their own events.
            "WALLET" => wallets.get(&row.subject_id).map(|w| {
                let mut w = w.clone();
                w.balance = row.balance.unwrap_or(w.balance);
                w.locked_balance = row.locked_balance.unwrap_or(w.locked_balance);
                w.held_balance = row.held_balance.unwrap_or(w.held_balance);
                w.credit_limit = row.credit_limit.unwrap_or(w.credit_limit);
                Payload::Wallet(w)
            }),
            "HOLD" => holds.get(&row.subject_id).cloned().map(Payload::Hold),
            "RECONCILIATION" => recs
                .get(&row.subject_id)
                .cloned()
                .map(Payload::Reconciliation),
            _ => None,
        };
        match payload {
            Some(payload) => notices.push(Notice {
                id: row.id,
                wallet_id: row.wallet_id,
                user_id: row.user_id.clone(),
                payload,
            }),
            None => tracing::warn!(event = row.id, topic = %row.topic, "event names a missing row"),
        }
    }
    Ok(notices)
}

/// Deletes events older than `before` (every listener has read them long ago).
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> Result<usize, LedgerError> {
    Ok(
        diesel::delete(events::table.filter(events::created_at.lt(before)))
            .execute(conn)
            .await?,
    )
}
