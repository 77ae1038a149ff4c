//! The feed: every outbox event numbered, gap-free, in commit order; read by position.
//!
//! Numbering (the sequencer) works in two steps, so that a number is only ever given to
//! an event whose place is final (see the migration that creates `event_runs` for why):
//! a pass notes the highest event id committed now and then the transactions
//! running now; once none of those is still running ([`Sequencer::settled`]), every id up
//! to the noted one is committed or never will be, and `sequence_events` numbers them.
//! Every process's listener runs a sequencer; an advisory lock lets one number at a time
//! and the others simply find the numbers there.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Nullable, Numeric, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::EventType;
use crate::ledger::LedgerError;
use crate::ledger::fixed_sql::{self, Bind};

/// A place in the feed: the last event's sequence and id (both 0 before the first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub sequence: i64,
    pub event_id: i64,
}

/// An event as stored, with its sequence.
#[derive(Clone, Debug, QueryableByName)]
pub struct EventRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub sequence: i64,
    #[diesel(sql_type = Text)]
    pub topic: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = BigInt)]
    pub subject_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub wallet_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_id: Option<String>,
    #[diesel(sql_type = Nullable<Numeric>)]
    pub balance: Option<Decimal>,
    #[diesel(sql_type = Nullable<Numeric>)]
    pub locked_balance: Option<Decimal>,
    #[diesel(sql_type = Nullable<Numeric>)]
    pub held_balance: Option<Decimal>,
    #[diesel(sql_type = Nullable<Numeric>)]
    pub credit_limit: Option<Decimal>,
    #[diesel(sql_type = Nullable<Text>)]
    pub status: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    pub confirmations: Option<i32>,
    #[diesel(sql_type = Nullable<Numeric>)]
    pub captured: Option<Decimal>,
    #[diesel(sql_type = Nullable<Numeric>)]
    pub released: Option<Decimal>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

impl EventRow {
    pub fn position(&self) -> Position {
        Position {
            sequence: self.sequence,
            event_id: self.id,
        }
    }
}

/// Which events a reader wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// One wallet's events.
    pub wallet_id: Option<i64>,
    /// The events of this user's wallets (a user's view; `None` for operators).
    pub owner: Option<String>,
    /// `None`: every type.
    pub types: Option<Vec<EventType>>,
}

/// A page of the feed.
#[derive(Clone, Debug)]
pub struct Page {
    pub rows: Vec<EventRow>,
    /// Where the next page starts: after the last row, or after everything scanned when
    /// the page is not full (filtered-out events are passed over once).
    pub next: Position,
}

/// Why a position cannot be read from.
#[derive(Debug, PartialEq, Eq)]
pub enum PositionError {
    /// The events after it were deleted (retention): the oldest sequence still kept.
    Expired { oldest: i64 },
    /// No event has this sequence yet.
    Ahead { head: i64 },
}

macro_rules! page_sql {
    ($filter:literal, $limit:literal) => {
        concat!(
            "SELECT e.id, r.first_sequence + (e.id - r.first_event_id) AS sequence, e.topic,
                    e.type AS kind, e.subject_id, e.wallet_id, e.user_id, e.balance,
                    e.locked_balance, e.held_balance, e.credit_limit, e.status,
                    e.confirmations, e.captured, e.released, e.created_at
               FROM events e
              CROSS JOIN LATERAL (SELECT first_sequence, first_event_id, last_event_id
                                    FROM event_runs
                                   WHERE first_event_id <= e.id
                                   ORDER BY first_event_id DESC LIMIT 1) r
              WHERE e.id > $1 AND e.id <= $2 AND r.last_event_id >= e.id
                AND e.type = ANY($3) ",
            $filter,
            " ORDER BY e.id LIMIT ",
            $limit
        )
    };
}
const PAGE_ALL: &str = page_sql!("", "$4");
const PAGE_WALLET: &str = page_sql!("AND e.wallet_id = $4", "$5");
/// A user's view: the first events of each of their wallets (each read through the
/// wallet's index, at most a page each), merged. Filtering the whole feed by owner read
/// every later event of the user's wallets and sorted them, for each page.
const PAGE_OWNER: &str = "
SELECT e.id, r.first_sequence + (e.id - r.first_event_id) AS sequence, e.topic,
       e.type AS kind, e.subject_id, e.wallet_id, e.user_id, e.balance,
       e.locked_balance, e.held_balance, e.credit_limit, e.status,
       e.confirmations, e.captured, e.released, e.created_at
  FROM (SELECT x.* FROM wallets w
         CROSS JOIN LATERAL (SELECT * FROM events e
                              WHERE e.wallet_id = w.id AND e.id > $1 AND e.id <= $2
                                AND e.type = ANY($3)
                              ORDER BY e.id LIMIT $4) x
         WHERE w.user_id = ANY($5)
         ORDER BY x.id LIMIT $6) e
 CROSS JOIN LATERAL (SELECT first_sequence, first_event_id, last_event_id
                       FROM event_runs
                      WHERE first_event_id <= e.id
                      ORDER BY first_event_id DESC LIMIT 1) r
 WHERE r.last_event_id >= e.id
 ORDER BY e.id";

/// Up to `limit` events after `after` and at or before `upto`, in feed order.
pub async fn page(
    conn: &mut AsyncPgConnection,
    after: Position,
    upto: Position,
    filter: &Filter,
    limit: i64,
) -> Result<Page, LedgerError> {
    if after >= upto {
        return Ok(Page {
            rows: Vec::new(),
            next: after,
        });
    }
    let types: Vec<String> = filter
        .types
        .as_deref()
        .unwrap_or(EventType::ALL)
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    let mut binds = vec![
        Bind::BigInt(after.event_id),
        Bind::BigInt(upto.event_id),
        Bind::Texts(types),
    ];
    let text = match (filter.wallet_id, &filter.owner) {
        (Some(wallet), _) => {
            binds.push(Bind::BigInt(wallet));
            PAGE_WALLET
        }
        (None, Some(owner)) => {
            binds.push(Bind::BigInt(limit));
            binds.push(Bind::Texts(vec![owner.clone()]));
            PAGE_OWNER
        }
        (None, None) => PAGE_ALL,
    };
    binds.push(Bind::BigInt(limit));
    let mut rows: Vec<EventRow> = fixed_sql::numbered(text, binds).load(conn).await?;
    // A wallet filter on top of an owner's view: the wallet was checked to be theirs.
    if let (Some(_), Some(owner)) = (filter.wallet_id, &filter.owner) {
        rows.retain(|r| r.user_id.as_ref() == Some(owner));
    }
    let next = match rows.last() {
        Some(last) if rows.len() as i64 >= limit => last.position(),
        _ => upto,
    };
    Ok(Page { rows, next })
}

#[derive(QueryableByName)]
struct Places {
    #[diesel(sql_type = BigInt)]
    head_sequence: i64,
    #[diesel(sql_type = BigInt)]
    head_id: i64,
    #[diesel(sql_type = BigInt)]
    oldest_sequence: i64,
    #[diesel(sql_type = BigInt)]
    after_id: i64,
}

/// The head, the oldest event kept, and the event id of sequence `$1`.
const PLACES: &str = "
WITH head AS (
    SELECT first_sequence + (last_event_id - first_event_id) AS seq, last_event_id AS id
      FROM event_runs ORDER BY first_sequence DESC LIMIT 1),
target AS (
    SELECT r.first_event_id + ($1 - r.first_sequence) AS id
      FROM event_runs r WHERE r.first_sequence <= $2 ORDER BY r.first_sequence DESC LIMIT 1),
oldest AS (
    SELECT r.first_sequence + (m.id - r.first_event_id) AS seq
      FROM (SELECT min(id) AS id FROM events) m
     CROSS JOIN LATERAL (SELECT * FROM event_runs WHERE first_event_id <= m.id
                          ORDER BY first_event_id DESC LIMIT 1) r
     WHERE r.last_event_id >= m.id)
SELECT COALESCE((SELECT seq FROM head), 0) AS head_sequence,
       COALESCE((SELECT id FROM head), 0) AS head_id,
       COALESCE((SELECT seq FROM oldest), (SELECT seq FROM head) + 1, 1) AS oldest_sequence,
       COALESCE((SELECT id FROM target), 0) AS after_id";

async fn places(conn: &mut AsyncPgConnection, sequence: i64) -> Result<Places, LedgerError> {
    Ok(
        fixed_sql::numbered(PLACES, vec![Bind::BigInt(sequence), Bind::BigInt(sequence)])
            .get_result(conn)
            .await?,
    )
}

/// The last numbered event.
pub async fn head(conn: &mut AsyncPgConnection) -> Result<Position, LedgerError> {
    let p = places(conn, 0).await?;
    Ok(Position {
        sequence: p.head_sequence,
        event_id: p.head_id,
    })
}

/// The oldest sequence still kept (the head's successor when none is).
pub async fn oldest(conn: &mut AsyncPgConnection) -> Result<i64, LedgerError> {
    Ok(places(conn, 0).await?.oldest_sequence)
}

/// The position just after the event numbered `sequence` (0: before the first), and the
/// head; refused when the events after it were deleted or it is not a number given yet.
pub async fn resolve(
    conn: &mut AsyncPgConnection,
    sequence: i64,
) -> Result<Result<(Position, Position), PositionError>, LedgerError> {
    let p = places(conn, sequence).await?;
    let head = Position {
        sequence: p.head_sequence,
        event_id: p.head_id,
    };
    if sequence > p.head_sequence {
        return Ok(Err(PositionError::Ahead {
            head: p.head_sequence,
        }));
    }
    if sequence < p.oldest_sequence - 1 {
        return Ok(Err(PositionError::Expired {
            oldest: p.oldest_sequence,
        }));
    }
    let after = Position {
        sequence,
        event_id: p.after_id,
    };
    Ok(Ok((after, head)))
}

/// Where the sequencer stands between two passes.
#[derive(Clone, Debug, Default)]
pub struct Sequencer {
    /// An id noted at a snapshot, and the transactions running then: once they have all
    /// ended, events up to the id can be numbered.
    pending: Option<(i64, Vec<i64>)>,
}

#[derive(QueryableByName)]
struct Advanced {
    #[diesel(sql_type = Bool)]
    waiting: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    upto: Option<i64>,
    #[diesel(sql_type = Nullable<Array<BigInt>>)]
    running: Option<Vec<i64>>,
    #[diesel(sql_type = BigInt)]
    head_sequence: i64,
    #[diesel(sql_type = BigInt)]
    head_id: i64,
}

impl Sequencer {
    /// One pass (one round trip, `feed_advance` in the migration): numbers what became
    /// final since the last pass, notes what to number next, and returns the head and
    /// whether events are still waiting to be numbered (look again soon rather than at
    /// the next notification).
    pub async fn pass(
        &mut self,
        conn: &mut AsyncPgConnection,
    ) -> Result<(Position, bool), LedgerError> {
        let (upto, running) = match &self.pending {
            Some((upto, running)) => (vec![*upto], running.clone()),
            None => (vec![], vec![]),
        };
        // Binds as arrays (the fixed SQL's binds are arrays): the first element or NULL.
        let advanced: Advanced = fixed_sql::numbered(
            "SELECT * FROM feed_advance(($1::bigint[])[1], $2)",
            vec![Bind::BigInts(upto), Bind::BigInts(running)],
        )
        .get_result(conn)
        .await?;
        self.pending = match (advanced.waiting, advanced.upto, advanced.running) {
            (true, Some(upto), Some(running)) => Some((upto, running)),
            _ => None,
        };
        metrics::gauge!("wallet_event_sequence").set(advanced.head_sequence as f64);
        Ok((
            Position {
                sequence: advanced.head_sequence,
                event_id: advanced.head_id,
            },
            self.pending.is_some(),
        ))
    }
}

/// Deletes the events older than `before` that are numbered, oldest first (the feed
/// keeps a contiguous tail), at most `limit` per call; returns how many.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<usize, LedgerError> {
    #[derive(QueryableByName)]
    struct Old {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    // The ids first, then a delete by id: both walk the primary key (a delete with the
    // choice in a subquery was planned as a scan of the whole outbox).
    let old: Vec<Old> = fixed_sql::numbered(
        "SELECT id FROM events
          WHERE id < COALESCE((SELECT id FROM events WHERE created_at >= ($1)[1]
                                ORDER BY id LIMIT 1),
                              9223372036854775807)
            AND id <= (SELECT COALESCE(max(last_event_id), 0) FROM event_runs)
          ORDER BY id LIMIT $2",
        vec![Bind::Times(vec![before]), Bind::BigInt(limit)],
    )
    .load(conn)
    .await?;
    if old.is_empty() {
        return Ok(0);
    }
    let deleted = fixed_sql::numbered(
        "DELETE FROM events WHERE id = ANY($1)",
        vec![Bind::BigInts(old.into_iter().map(|o| o.id).collect())],
    )
    .execute(conn)
    .await?;
    // Runs wholly before the oldest event kept go too; the last run always stays (it is
    // where numbering goes on).
    fixed_sql::numbered(
        "DELETE FROM event_runs
          WHERE last_event_id < (SELECT COALESCE(min(id), 9223372036854775807) FROM events)
            AND first_sequence < (SELECT max(first_sequence) FROM event_runs)",
        vec![],
    )
    .execute(conn)
    .await?;
    Ok(deleted)
}
