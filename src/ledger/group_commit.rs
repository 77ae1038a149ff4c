//! Group commit of fiat movements (issue #5).
//!
//! One database transaction per deposit spends most of its time waiting: for the wallet
//! lock behind the previous deposit, and for its own commit to reach the disk. Here every
//! movement goes through one committer per process, which takes all requests waiting at
//! that moment and applies them in **one** transaction: the wallets are locked in id
//! order with one statement, each request is judged in arrival order against the running
//! balances exactly as [`movement::execute`] would (a refused request changes nothing and
//! does not fail the others), the balances are written with one statement, the journal
//! rows inserted with one multi-row insert, and one commit makes them all durable. A
//! request is answered only after that commit, so an acknowledged movement is committed,
//! as before. If the batch's transaction fails as a whole (a lost race on a key with
//! another process, a deadlock), each request is run again on its own.
//!
//! A hot wallet so pays one lock wait and one disk flush per batch instead of per deposit.
//! Rows of one batch and wallet share a timestamp and are ordered by id, which follows
//! arrival order, so the journal chain holds as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Numeric};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot};

use super::models::Scaled;
use super::movement::{self, Movement, MovementRequest};
use super::posting::{self, NewEntry, NewRow};
use super::{CurrencyRegistry, JournalEntry, LedgerError, Scope, Wallet};
use crate::db::PgPool;
use crate::schema::{transactions, wallets};
use crate::task::AbortOnDrop;

/// Requests one transaction takes at most.
const MAX_BATCH: usize = 256;

struct Job {
    scope: Scope,
    request: MovementRequest,
    reply: oneshot::Sender<Result<Movement, LedgerError>>,
}

/// The process's committer: cheap to clone, stops when the last clone is dropped.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
    stats: Arc<Stats>,
    pool: PgPool,
    currencies: Arc<CurrencyRegistry>,
    task: Arc<AbortOnDrop<()>>,
}

/// Counters since start (for metrics and tests).
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches committed as one transaction.
    pub batches: AtomicU64,
    /// Requests answered by those batches.
    pub movements: AtomicU64,
    /// Batches that failed as a whole and were run request by request.
    pub fallbacks: AtomicU64,
}

impl Committer {
    pub fn spawn(pool: PgPool, currencies: Arc<CurrencyRegistry>) -> Committer {
        let (jobs, mut queue) = mpsc::channel::<Job>(4 * MAX_BATCH);
        let stats = Arc::new(Stats::default());
        let counters = stats.clone();
        let (batch_pool, batch_currencies) = (pool.clone(), currencies.clone());
        let task = AbortOnDrop::spawn(async move {
            let (pool, currencies) = (batch_pool, batch_currencies);
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                // Let requests that are on their way join this batch.
                tokio::task::yield_now().await;
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                run_batch(&pool, &currencies, &counters, batch).await;
            }
        });
        Committer {
            jobs,
            stats,
            pool,
            currencies,
            task: Arc::new(task),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stops batching: later movements are applied one by one, each in its own
    /// transaction (the path taken if the batching task ever died).
    pub fn stop(&self) {
        self.task.0.abort();
    }

    /// Applies a movement exactly once per key, as [`movement::execute`] does.
    pub async fn execute(
        &self,
        scope: Scope,
        request: MovementRequest,
    ) -> Result<Movement, LedgerError> {
        movement::validate_shape(&request)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            scope: scope.clone(),
            request: request.clone(),
            reply,
        };
        if self.jobs.send(job).await.is_ok()
            && let Ok(result) = answer.await
        {
            return result;
        }
        // The committer is gone (a bug killed it): apply the movement on its own. Whether
        // or not a batch committed it before dying, its key makes this a replay then.
        tracing::error!("the group committer is not running; applying a movement on its own");
        let mut conn = self.pool.get().await?;
        movement::execute(&mut conn, &self.currencies, &scope, &request).await
    }
}

/// What the batch decided for one request before anything is written.
enum Verdict {
    /// A new journal row: the index into the batch's inserts.
    Insert(usize),
    /// The key's movement exists already.
    Replay(Box<JournalEntry>),
    /// The same key and request earlier in this batch: its insert.
    ReplayOfInsert(usize),
    Refused(LedgerError),
}

async fn run_batch(
    pool: &PgPool,
    currencies: &Arc<CurrencyRegistry>,
    stats: &Stats,
    batch: Vec<Job>,
) {
    let outcome = match pool.get().await {
        Ok(mut conn) => {
            conn.transaction(async |tx| apply_batch(tx, currencies, &batch).await)
                .await
        }
        Err(e) => Err(LedgerError::from(e)),
    };
    match outcome {
        Ok(results) => {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats
                .movements
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            // The transaction failed as a whole: nothing was written. Each request runs
            // again on its own, with the usual retries.
            tracing::debug!(error = ?e, size = batch.len(), "batch failed; running its requests one by one");
            stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            for job in batch {
                let (pool, currencies) = (pool.clone(), currencies.clone());
                tokio::spawn(async move {
                    let result = match pool.get().await {
                        Ok(mut conn) => {
                            movement::execute(&mut conn, &currencies, &job.scope, &job.request)
                                .await
                        }
                        Err(e) => Err(LedgerError::from(e)),
                    };
                    let _ = job.reply.send(result);
                });
            }
        }
    }
}

#[derive(QueryableByName)]
struct Stamp {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    updated_at: chrono::DateTime<chrono::Utc>,
}

async fn apply_batch(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    batch: &[Job],
) -> Result<Vec<Result<Movement, LedgerError>>, LedgerError> {
    // Every wallet of the batch, locked in id order (the order every movement locks in).
    let mut ids: Vec<i64> = batch.iter().map(|j| j.request.wallet_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let locked: Vec<Wallet> = wallets::table
        .filter(wallets::id.eq_any(&ids))
        .order(wallets::id)
        .select(Wallet::as_select())
        .for_no_key_update()
        .load(conn)
        .await?;
    let mut balances: HashMap<i64, Wallet> = locked.into_iter().map(|w| (w.id, w)).collect();

    // Keys used before, read after the locks (as a single movement does).
    let keys: Vec<&str> = batch.iter().map(|j| j.request.key.as_str()).collect();
    let mut existing: HashMap<String, JournalEntry> = posting::find_by_keys(conn, &keys)
        .await?
        .into_iter()
        .map(|e| (e.tx_hash.clone(), e))
        .collect();

    // Judge each request in arrival order against the running balances.
    let mut verdicts = Vec::with_capacity(batch.len());
    let mut rows: Vec<(i64, NewRow<'_>, (Decimal, Decimal))> = Vec::new();
    let mut earlier: HashMap<&str, usize> = HashMap::new();
    for job in batch {
        let judged = judge(currencies, job, &balances, &existing, &earlier, &rows);
        let verdict = match judged {
            Ok(Judged::New(row)) => match balances.get_mut(&job.request.wallet_id) {
                Some(wallet) => {
                    let around = row.balances(wallet.balance);
                    wallet.balance = around.1;
                    earlier.insert(job.request.key.as_str(), rows.len());
                    rows.push((wallet.id, row, around));
                    Verdict::Insert(rows.len() - 1)
                }
                None => Verdict::Refused(LedgerError::NotFound("wallet")),
            },
            Ok(Judged::Replay(entry)) => Verdict::Replay(entry),
            Ok(Judged::ReplayOfInsert(i)) => Verdict::ReplayOfInsert(i),
            Err(e) => Verdict::Refused(e),
        };
        verdicts.push(verdict);
    }

    let mut inserted: Vec<JournalEntry> = Vec::new();
    if !rows.is_empty() {
        // The new balances, one statement; each wallet's time never runs backwards.
        let mut touched: Vec<(i64, Scaled)> = Vec::new();
        for (wallet_id, _, _) in &rows {
            if !touched.iter().any(|(id, _)| id == wallet_id)
                && let Some(w) = balances.get(wallet_id)
            {
                touched.push((*wallet_id, Scaled(w.balance)));
            }
        }
        let stamps: Vec<Stamp> = diesel::sql_query(
            "UPDATE wallets w
                SET balance = v.balance, updated_at = GREATEST(clock_timestamp(), w.updated_at)
               FROM unnest($1::bigint[], $2::numeric[]) AS v (id, balance)
              WHERE w.id = v.id
          RETURNING w.id, w.updated_at",
        )
        .bind::<Array<BigInt>, _>(touched.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind::<Array<Numeric>, _>(touched.iter().map(|(_, b)| *b).collect::<Vec<_>>())
        .load(conn)
        .await?;
        let at: HashMap<i64, chrono::DateTime<chrono::Utc>> =
            stamps.into_iter().map(|s| (s.id, s.updated_at)).collect();
        let entries: Vec<NewEntry<'_>> = rows
            .iter()
            .filter_map(|(wallet_id, row, around)| {
                at.get(wallet_id)
                    .map(|&time| row.entry(*wallet_id, *around, time))
            })
            .collect();
        inserted = diesel::insert_into(transactions::table)
            .values(entries)
            .returning(JournalEntry::as_returning())
            .get_results(conn)
            .await?;
        if inserted.len() != rows.len() {
            return Err(LedgerError::Unavailable(
                "the batch insert returned fewer rows than it was given".into(),
            ));
        }
        // Rows come back in the order given (one VALUES list, ids in that order).
        inserted.sort_by_key(|e| e.id);
        for e in &inserted {
            existing.insert(e.tx_hash.clone(), e.clone());
        }
    }

    Ok(verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Insert(i) => Ok(Movement {
                entry: inserted[i].clone(),
                replayed: false,
            }),
            Verdict::ReplayOfInsert(i) => Ok(Movement {
                entry: inserted[i].clone(),
                replayed: true,
            }),
            Verdict::Replay(entry) => Ok(Movement {
                entry: *entry,
                replayed: true,
            }),
            Verdict::Refused(e) => Err(e),
        })
        .collect())
}

enum Judged<'a> {
    New(NewRow<'a>),
    Replay(Box<JournalEntry>),
    ReplayOfInsert(usize),
}

/// One request against the batch so far, in the order and with the checks of
/// `movement::apply`: visible wallet, key, currency, amount, funds.
fn judge<'a>(
    currencies: &CurrencyRegistry,
    job: &'a Job,
    balances: &HashMap<i64, Wallet>,
    existing: &HashMap<String, JournalEntry>,
    earlier: &HashMap<&str, usize>,
    rows: &[(i64, NewRow<'_>, (Decimal, Decimal))],
) -> Result<Judged<'a>, LedgerError> {
    let request = &job.request;
    let wallet = balances
        .get(&request.wallet_id)
        .filter(|w| job.scope.owner().is_none_or(|owner| w.user_id == owner))
        .ok_or(LedgerError::NotFound("wallet"))?;
    if let Some(e) = existing.get(&request.key) {
        return if movement::same_request(e, request) {
            Ok(Judged::Replay(Box::new(e.clone())))
        } else {
            Err(movement::key_conflict(request))
        };
    }
    if let Some(&i) = earlier.get(request.key.as_str()) {
        let (wallet_id, row, _) = &rows[i];
        let same = *wallet_id == request.wallet_id
            && row.kind == request.direction.transaction_type()
            && row.amount == request.amount
            && row.description == request.description.as_deref();
        return if same {
            Ok(Judged::ReplayOfInsert(i))
        } else {
            Err(movement::key_conflict(request))
        };
    }
    movement::journal_row(currencies, wallet, request).map(Judged::New)
}
