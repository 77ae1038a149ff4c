//! The SQL of the fiat write path: what [`judge`](crate::ledger::judge) reads before it
//! decides (prefetch) and what it decided, written (commit). The same statements serve a
//! request applied alone (a batch of one, in the caller's transaction) and a group-commit
//! batch (which sends `BEGIN` before the prefetch and `COMMIT` after the writes, each in
//! the same round trip).
//!
//! Every statement has a fixed text (the long ones in the `.sql` files next to this one),
//! so each connection keeps it prepared; statements sent together travel in one round
//! trip and Postgres runs them in the order sent.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::ledger::fixed_sql::{self, Bind, Fixed};
use crate::ledger::hold::{Hold, HoldEvent};
use crate::ledger::judge::{Decided, Prefetched, Request};
use crate::ledger::models::Scaled;
use crate::ledger::{JournalEntry, LedgerError, Scope, TransactionType, Wallet};
use crate::schema::transactions;

/// What a batch reads before it is judged.
pub struct Prefetch {
    pub state: Prefetched,
    /// The database's clock after the locks were taken: the batch's time.
    pub clock: DateTime<Utc>,
    /// Journal row ids taken beforehand, ascending — a transfer's receiving row names its
    /// sending row by id in the same insert — enough for every row the batch could write
    /// (unused ones are gaps, as a rolled-back insert leaves).
    pub ids: Vec<i64>,
}

/// Locks the requests' wallets (in id order, each only if a request naming it may touch
/// it), reads the rows journaled under their keys, the clock and enough row ids: one round
/// trip, the keys read after the locks (as a request alone would read them), plus one
/// more when a key names a transfer already made (its receiving side).
pub async fn prefetch(
    conn: &AsyncPgConnection,
    asked: &[(&Scope, &Request)],
) -> Result<Prefetch, LedgerError> {
    let keys: Vec<(i64, &str)> = asked
        .iter()
        .map(|(_, r)| (r.keyed_wallet(), r.key()))
        .collect();
    let rows_at_most = asked.iter().map(|(_, r)| r.rows_at_most()).sum();
    let holds = HoldKeys::of(asked);
    let mut pipe = conn;
    let locked = lock_wallets(conn, asked);
    let journaled = super::find_by_keys(conn, &keys);
    let clock = diesel::select(Fixed::<Timestamptz>::new(&["clock_timestamp()"], vec![]))
        .get_result::<DateTime<Utc>>(&mut pipe);
    let ids = super::allocate_ids(conn, rows_at_most);
    // Holds after the wallets, in id order: the order every flow locks in. Nothing is
    // sent for a batch without hold requests.
    let held = holds.read(conn);
    let (locked, journaled, clock, ids, held) =
        futures_util::join!(locked, journaled, clock, ids, held);
    // The first failure in the order sent is the cause: the statements after it only
    // report the transaction aborted.
    let (wallets, journaled, clock, ids, held) = (locked?, journaled?, clock?, ids?, held?);
    let journaled: HashMap<(i64, String), JournalEntry> = journaled
        .into_iter()
        .map(|e| ((e.wallet_id, e.tx_hash.clone()), e))
        .collect();
    // The receiving sides of transfers sent before under these keys (a replay).
    let sent: Vec<i64> = journaled
        .values()
        .filter(|e| e.kind == TransactionType::TransferOut)
        .map(|e| e.id)
        .collect();
    let received = match sent.is_empty() {
        true => HashMap::new(),
        false => receiving_sides(conn, &sent)
            .await?
            .into_iter()
            .filter_map(|e| e.counterpart_id.map(|out| (out, e)))
            .collect(),
    };
    Ok(Prefetch {
        state: Prefetched {
            wallets,
            journaled,
            received,
            holds: held.locked,
            holds_by_key: held.by_key,
            hold_events: held.events,
            hold_ids: held.ids,
            clock,
        },
        clock,
        ids,
    })
}

/// What a batch's hold requests name: the holds captures and voids change, the keys of
/// authorisations (per wallet) and of captures and voids (per hold), and how many holds
/// may be authorised.
struct HoldKeys {
    locked: Vec<i64>,
    authorizations: Vec<(i64, String)>,
    steps: Vec<(i64, String)>,
}

/// What [`HoldKeys::read`] found.
#[derive(Default)]
struct HeldNow {
    locked: HashMap<i64, Hold>,
    by_key: HashMap<(i64, String), Hold>,
    events: HashMap<(i64, String), HoldEvent>,
    ids: Vec<i64>,
}

impl HoldKeys {
    fn of(asked: &[(&Scope, &Request)]) -> HoldKeys {
        let mut keys = HoldKeys {
            locked: Vec::new(),
            authorizations: Vec::new(),
            steps: Vec::new(),
        };
        for (_, request) in asked {
            let Request::Hold(h) = request else { continue };
            match h.hold_id() {
                Some(id) => {
                    keys.locked.push(id);
                    keys.steps.push((id, h.key().to_owned()));
                }
                None => keys
                    .authorizations
                    .push((h.wallet_id(), h.key().to_owned())),
            }
        }
        keys.locked.sort_unstable();
        keys.locked.dedup();
        keys
    }

    /// Sent after the wallets' lock, in one round trip with it (nothing for a batch
    /// without holds). The key lookups take every hold (event) of the named wallets
    /// (holds) with one of the keys, and keep the pairs asked for.
    async fn read(&self, conn: &AsyncPgConnection) -> Result<HeldNow, LedgerError> {
        use crate::schema::{hold_events, holds};
        let mut pipe = conn;
        let mut pipe2 = conn;
        let mut pipe3 = conn;
        let locked = async {
            if self.locked.is_empty() {
                return Ok(Vec::new());
            }
            holds::table
                .filter(holds::id.eq_any(&self.locked))
                .order(holds::id)
                .select(Hold::as_select())
                .for_update()
                .load::<Hold>(&mut pipe)
                .await
        };
        let by_key = async {
            if self.authorizations.is_empty() {
                return Ok(Vec::new());
            }
            let wallets: Vec<i64> = self.authorizations.iter().map(|(w, _)| *w).collect();
            let keys: Vec<&str> = self
                .authorizations
                .iter()
                .map(|(_, k)| k.as_str())
                .collect();
            holds::table
                .filter(holds::wallet_id.eq_any(wallets))
                .filter(holds::idempotency_key.eq_any(keys))
                .select(Hold::as_select())
                .load::<Hold>(&mut pipe2)
                .await
        };
        let events = async {
            if self.steps.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<i64> = self.steps.iter().map(|(h, _)| *h).collect();
            let keys: Vec<&str> = self.steps.iter().map(|(_, k)| k.as_str()).collect();
            hold_events::table
                .filter(hold_events::hold_id.eq_any(ids))
                .filter(hold_events::idempotency_key.eq_any(keys))
                .select(HoldEvent::as_select())
                .load::<HoldEvent>(&mut pipe3)
                .await
        };
        let ids = async {
            match self.authorizations.len() {
                0 => Ok(Vec::new()),
                n => super::allocate_hold_ids(conn, n).await,
            }
        };
        let (locked, by_key, events, ids) = futures_util::join!(locked, by_key, events, ids);
        let (locked, by_key, events, ids) = (locked?, by_key?, events?, ids?);
        let asked_pair = |pairs: &[(i64, String)], id: i64, key: &str| {
            pairs.iter().any(|(i, k)| *i == id && k == key)
        };
        Ok(HeldNow {
            locked: locked.into_iter().map(|h| (h.id, h)).collect(),
            by_key: by_key
                .into_iter()
                .filter(|h| asked_pair(&self.authorizations, h.wallet_id, &h.idempotency_key))
                .map(|h| ((h.wallet_id, h.idempotency_key.clone()), h))
                .collect(),
            events: events
                .into_iter()
                .filter_map(|e| {
                    let key = e.idempotency_key.clone()?;
                    asked_pair(&self.steps, e.hold_id, &key).then_some(((e.hold_id, key), e))
                })
                .collect(),
            ids,
        })
    }
}

/// Locks, in id order, the wallets of `asked` that the request naming them may touch: a
/// movement's wallet and a transfer's source as its caller may see them, a transfer's
/// target anyone's.
async fn lock_wallets(
    conn: &AsyncPgConnection,
    asked: &[(&Scope, &Request)],
) -> Result<HashMap<i64, Wallet>, LedgerError> {
    let mut ids: Vec<i64> = Vec::with_capacity(asked.len());
    let mut owners: Vec<Option<String>> = Vec::with_capacity(asked.len());
    for (scope, request) in asked {
        ids.push(request.keyed_wallet());
        owners.push(scope.owner().map(str::to_owned));
        if let Some(target) = request.target() {
            ids.push(target);
            owners.push(None);
        }
    }
    lock_visible(conn, ids, owners).await
}

/// Locks, in id order, the wallets `ids` that the owner paired with each (`None`:
/// anyone's) may touch.
pub async fn lock_visible(
    mut conn: &AsyncPgConnection,
    ids: Vec<i64>,
    owners: Vec<Option<String>>,
) -> Result<HashMap<i64, Wallet>, LedgerError> {
    let locked: Vec<Wallet> = fixed_sql::numbered(
        include_str!("lock_wallets.sql"),
        vec![
            Bind::BigInts(ids.clone()),
            Bind::BigInts(ids),
            Bind::OptionalTexts(owners),
        ],
    )
    .load(&mut conn)
    .await?;
    Ok(locked.into_iter().map(|w| (w.id, w)).collect())
}

/// Runs the statement `build` makes of `items` when there are any (a batch without holds
/// sends none of the holds' statements); the rows it changed.
async fn write_some<T>(
    mut conn: &AsyncPgConnection,
    items: &[T],
    build: impl FnOnce(&[T]) -> Fixed<diesel::sql_types::Untyped>,
) -> Result<usize, LedgerError> {
    if items.is_empty() {
        return Ok(0);
    }
    Ok(build(items).execute(&mut conn).await?)
}

/// The receiving sides of the transfers whose sending sides are `out_ids`.
pub async fn receiving_sides(
    mut conn: &AsyncPgConnection,
    out_ids: &[i64],
) -> Result<Vec<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::counterpart_id.eq_any(out_ids))
        .filter(transactions::type_.eq(TransactionType::TransferIn))
        .select(JournalEntry::as_select())
        .load(&mut conn)
        .await?)
}

/// Writes `decided` — the new balances with one statement, the journal rows with another
/// (ids from `ids`, in row order, so the journal's order is the order judged) — and
/// returns the rows as stored, in the order of `decided.rows`. Sent together; the caller
/// may send `COMMIT` behind them in the same round trip.
pub async fn write(
    conn: &AsyncPgConnection,
    decided: &Decided<'_>,
    ids: &[i64],
) -> Result<Vec<JournalEntry>, LedgerError> {
    let mut entries = Vec::with_capacity(decided.rows.len());
    for (i, r) in decided.rows.iter().enumerate() {
        let Some(time) = decided
            .touched
            .iter()
            .find(|t| t.wallet_id == r.wallet_id)
            .map(|t| t.at)
        else {
            return Err(LedgerError::Internal(
                "a batch row's wallet has no new balance".into(),
            ));
        };
        let mut entry = r.row.entry(r.wallet_id, r.around, time);
        let id = |i: usize| {
            ids.get(i)
                .copied()
                .ok_or_else(|| LedgerError::Internal("fewer row ids taken than rows".into()))
        };
        entry.id = Some(id(i)?);
        entry.counterpart_id = r.counterpart.map(id).transpose()?;
        entries.push(entry);
    }
    let row_id = |i: Option<usize>| match i {
        None => Ok(None),
        Some(i) => ids
            .get(i)
            .copied()
            .map(Some)
            .ok_or_else(|| LedgerError::Internal("a hold event names no row".into())),
    };
    let event_rows = decided
        .events
        .iter()
        .map(|e| row_id(e.row))
        .collect::<Result<Vec<_>, _>>()?;
    let mut pipe = conn;
    let update = fixed_sql::numbered(
        include_str!("update_balances.sql"),
        vec![
            Bind::BigInts(decided.touched.iter().map(|t| t.wallet_id).collect()),
            Bind::Numerics(decided.touched.iter().map(|t| t.balance).collect()),
            Bind::Numerics(decided.touched.iter().map(|t| t.held).collect()),
            Bind::Times(decided.touched.iter().map(|t| t.at).collect()),
        ],
    )
    .execute(&mut pipe);
    // In this order: a new hold before its event, a capture's row before its event.
    let new_holds = write_some(conn, &decided.new_holds, |holds| {
        fixed_sql::numbered(
            include_str!("insert_holds.sql"),
            vec![
                Bind::BigInts(holds.iter().map(|h| h.id).collect()),
                Bind::BigInts(holds.iter().map(|h| h.wallet_id).collect()),
                Bind::OptionalBigInts(holds.iter().map(|h| h.to_wallet_id).collect()),
                Bind::Numerics(holds.iter().map(|h| Scaled(h.amount)).collect()),
                Bind::Texts(holds.iter().map(|h| h.idempotency_key.clone()).collect()),
                Bind::Times(holds.iter().map(|h| h.expires_at).collect()),
                Bind::OptionalTexts(holds.iter().map(|h| h.description.clone()).collect()),
                Bind::OptionalTexts(holds.iter().map(|h| h.reference.clone()).collect()),
                Bind::OptionalJson(holds.iter().map(|h| h.metadata.clone()).collect()),
                Bind::Texts(holds.iter().map(|h| h.created_by.clone()).collect()),
                Bind::Times(holds.iter().map(|h| h.created_at).collect()),
            ],
        )
    });
    let insert = async {
        match entries.is_empty() {
            true => Ok(Vec::new()),
            false => super::insert_batch(conn, &entries).await,
        }
    };
    let changed_holds = write_some(conn, &decided.changed_holds, |holds| {
        fixed_sql::numbered(
            include_str!("update_holds.sql"),
            vec![
                Bind::BigInts(holds.iter().map(|h| h.id).collect()),
                Bind::Numerics(holds.iter().map(|h| Scaled(h.captured)).collect()),
                Bind::Numerics(holds.iter().map(|h| Scaled(h.released)).collect()),
                Bind::Texts(holds.iter().map(|h| h.status.as_str().to_owned()).collect()),
                Bind::Times(holds.iter().map(|h| h.updated_at).collect()),
            ],
        )
    });
    let events = write_some(conn, &decided.events, |events| {
        fixed_sql::numbered(
            include_str!("insert_hold_events.sql"),
            vec![
                Bind::BigInts(events.iter().map(|e| e.hold_id).collect()),
                Bind::Texts(events.iter().map(|e| e.kind.as_str().to_owned()).collect()),
                Bind::Numerics(events.iter().map(|e| Scaled(e.amount)).collect()),
                Bind::Numerics(events.iter().map(|e| Scaled(e.released)).collect()),
                Bind::OptionalBigInts(event_rows.clone()),
                Bind::OptionalTexts(events.iter().map(|e| e.key.map(str::to_owned)).collect()),
                Bind::OptionalNumerics(events.iter().map(|e| e.requested.map(Scaled)).collect()),
                Bind::Bools(events.iter().map(|e| e.final_capture).collect()),
                Bind::Texts(events.iter().map(|e| e.actor.to_owned()).collect()),
                Bind::Times(events.iter().map(|_| decided.clock).collect()),
            ],
        )
    });
    let (updated, new_holds, inserted, changed_holds, events) =
        futures_util::join!(update, new_holds, insert, changed_holds, events);
    let (updated, inserted) = (updated?, inserted?);
    let (new_holds, changed_holds, events) = (new_holds?, changed_holds?, events?);
    if updated != decided.touched.len()
        || inserted.len() != decided.rows.len()
        || new_holds != decided.new_holds.len()
        || changed_holds != decided.changed_holds.len()
        || events != decided.events.len()
    {
        // Cannot happen with the wallets locked. If it did, what commits is not what was
        // judged: the requests run again on their own and replay what is there.
        return Err(LedgerError::OutcomeUnknown(
            "a batch wrote other rows than it judged".into(),
        ));
    }
    Ok(inserted)
}
