//! Group commit of fiat movements, transfers and holds (authorisations, captures, voids).
//!
//! One database transaction per deposit spends most of its time waiting: for the wallet
//! lock behind the previous deposit, and for its own commit to reach the disk. Here every
//! movement goes through one committer per process, which takes the requests waiting at
//! that moment and applies them in **one** transaction: the wallets are locked in id
//! order with one statement, each request is judged in arrival order against the running
//! balances by the one [`judge`] every fiat path uses — a request applied alone is a batch
//! of one ([`apply_alone`]) — (a refused request changes nothing and does not fail the
//! others), the balances are written with one statement, the journal
//! rows inserted with one multi-row insert, and one commit makes them all durable — in
//! two round trips, the statements before and after the judging each sent together (see
//! [`commit_batch`]). A request is answered only after that commit, so an acknowledged
//! movement is committed.
//!
//! Normally one batch runs at a time and the next one takes everything that arrived
//! meanwhile. When many requests wait (a deep queue: the machine has CPU to spare that
//! one batch at a time cannot use) or a batch stalls (a wallet locked elsewhere, say),
//! further batches start beside it, up to one per *lane*, each on its own connection. A
//! wallet is in at most one running batch: requests for a wallet whose batch is still
//! running wait for the next, in arrival order, and a transfer joins a batch only when
//! neither of its wallets is in another. So batches running side by side never wait on
//! each other's rows, one slow or blocked wallet holds up its own requests only, and a
//! process never contends with itself for a wallet lock.
//!
//! If a batch's transaction fails as a whole (a lost race on a key with another process,
//! a deadlock, a lock wait past the timeout), each of its requests runs again on its own.
//! If its *commit* failed, the batch may have committed: running each request again
//! replays it by its key if so, and a request that cannot be run again is answered
//! `OutcomeUnknown`.
//!
//! A transfer takes part like any movement, with both its wallets: both are locked with
//! the batch's others, it is judged against both running balances, and its two rows are
//! inserted with the batch's. Its receiving row names the sending row's id, so a batch with
//! transfers takes its row ids from the sequence first, in arrival order.
//!
//! A hold request takes part the same way: its wallets are locked with the batch's, then
//! the holds the batch's captures and voids name (in id order, after every wallet — the
//! order the expiry worker locks in too), and it is judged against the running balances,
//! held balances and holds; the holds, their events and the held balances are written
//! with the batch's other statements.
//!
//! A hot wallet so pays one lock wait and one disk flush per batch instead of per deposit.
//! Rows of one batch and wallet share a timestamp and are ordered by id, which follows
//! arrival order, so the journal chain holds as before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fixed_sql;
use super::hold::{Hold, HoldRequest};
use super::judge::{self, Decided, Done, Judge, Request, Verdict};
use super::movement::{Movement, MovementRequest};
use super::store::{self, batch as batch_store};
use super::transfer::{Transfer, TransferRequest};
use super::{CurrencyRegistry, JournalEntry, LedgerError, Scope, outcome};
use crate::db::{PgPool, PooledConn};
use crate::task::AbortOnDrop;

/// Requests one transaction takes at most.
const MAX_BATCH: usize = 256;

/// Where a queued request is: waiting, taken by a batch, or withdrawn by its caller.
/// Whichever of "taken" and "withdrawn" happens first is the truth: a caller that
/// withdrew its request may say nothing was done.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

struct Job {
    scope: Scope,
    request: Request,
    reply: oneshot::Sender<Result<Done, LedgerError>>,
    state: Arc<AtomicU8>,
}

fn advance(state: &AtomicU8, to: u8) -> bool {
    state
        .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
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
    /// Requests of those batches, each run again on its own.
    pub rerun: AtomicU64,
    /// Requests withdrawn by their callers before a batch took them (deadline passed).
    pub withdrawn: AtomicU64,
    /// The most batches that have run at once.
    pub most_in_flight: AtomicU64,
}

/// What every batch needs.
struct Shared {
    pool: PgPool,
    currencies: Arc<CurrencyRegistry>,
    stats: Arc<Stats>,
}

impl Committer {
    /// Starts the committer with up to `lanes` batches in flight at once.
    pub fn spawn(pool: PgPool, currencies: Arc<CurrencyRegistry>, lanes: usize) -> Committer {
        let (jobs, queue) = mpsc::channel::<Job>(4 * MAX_BATCH);
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            currencies: currencies.clone(),
            stats: stats.clone(),
        });
        let task = AbortOnDrop::spawn(run(queue, shared, lanes.max(1)));
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
    /// transaction (the path taken if the batching task ever died). Batches in flight
    /// are abandoned: their requests are run again on their own (a replay, by key, of
    /// whatever those batches had committed).
    pub fn stop(&self) {
        self.task.0.abort();
    }

    /// Applies a movement exactly once per key, as [`movement::execute`](super::movement::execute) does, answering
    /// by `deadline`: with the committed result, a refusal of a movement that did not and
    /// will not happen, or [`LedgerError::OutcomeUnknown`] when a batch holding it has not
    /// finished by then.
    pub async fn execute(
        &self,
        scope: Scope,
        request: MovementRequest,
        deadline: Instant,
    ) -> Result<Movement, LedgerError> {
        let request = Request::Movement(request);
        request.check_shape()?;
        self.submit(scope, request, deadline).await?.into_movement()
    }

    /// Applies a transfer exactly once per key of its source wallet, as
    /// [`transfer::execute`](super::transfer::execute) does, answering by `deadline` like [`Committer::execute`].
    pub async fn transfer(
        &self,
        scope: Scope,
        request: TransferRequest,
        deadline: Instant,
    ) -> Result<Transfer, LedgerError> {
        let request = Request::Transfer(request);
        request.check_shape()?;
        self.submit(scope, request, deadline).await?.into_transfer()
    }

    /// Applies an authorisation, capture or void of a hold exactly once per key, as part
    /// of a batch like any movement, answering by `deadline` like [`Committer::execute`].
    pub async fn hold(
        &self,
        scope: Scope,
        request: HoldRequest,
        deadline: Instant,
    ) -> Result<Hold, LedgerError> {
        let request = Request::Hold(Box::new(request));
        request.check_shape()?;
        self.submit(scope, request, deadline).await?.into_hold()
    }

    async fn submit(
        &self,
        scope: Scope,
        request: Request,
        deadline: Instant,
    ) -> Result<Done, LedgerError> {
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            scope: scope.clone(),
            request: request.clone(),
            reply,
            state: state.clone(),
        };
        match tokio::time::timeout_at(deadline, self.jobs.send(job)).await {
            Ok(Ok(())) => {}
            // The committer is gone (stopped, or a bug killed it): nothing was queued.
            Ok(Err(_)) => return self.alone(scope, request, deadline, false).await,
            Err(_) => {
                return Err(LedgerError::Unavailable(
                    "too many movements are waiting to be committed; nothing was done".into(),
                ));
            }
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            // Dropped unanswered: the committer stopped. If a batch had taken the request,
            // it may have committed it; running it again replays it by key if so.
            Ok(Err(_)) => {
                let taken = !advance(&state, WITHDRAWN);
                tracing::error!("the group committer stopped; applying a movement on its own");
                self.alone(scope, request, deadline, taken).await
            }
            Err(_) if advance(&state, WITHDRAWN) => {
                self.stats.withdrawn.fetch_add(1, Ordering::Relaxed);
                Err(LedgerError::Unavailable(
                    "the wallet is busy: the movement waited past the request's deadline \
                     and was withdrawn; nothing was done"
                        .into(),
                ))
            }
            Err(_) => Err(LedgerError::OutcomeUnknown(
                "the request's deadline passed while its batch was being committed".into(),
            )),
        }
    }

    /// Applies one request in a transaction of its own (in a task of its own).
    async fn alone(
        &self,
        scope: Scope,
        request: Request,
        deadline: Instant,
        maybe_committed: bool,
    ) -> Result<Done, LedgerError> {
        let currencies = self.currencies.clone();
        let result = outcome::detached(&self.pool, deadline, move |mut conn| async move {
            execute_alone(&mut conn, &currencies, &scope, &request).await
        })
        .await;
        if maybe_committed {
            outcome::after_unknown_commit(result)
        } else {
            result
        }
    }
}

/// How long a batch may run before requests for other wallets stop waiting for it and
/// start a batch of their own. A batch takes a few milliseconds; one that takes longer is
/// blocked (a wallet locked elsewhere) or slow, and must not hold up everyone.
const STALLED: Duration = Duration::from_millis(20);

/// How many requests must be waiting before a further batch starts beside the running
/// ones. Each batch costs Postgres about a millisecond of CPU whatever its size (its
/// statements, triggers and commit); batches smaller than this would spend more on that
/// than the second connection wins (measured: 16 clients of deposits, batches of four
/// beside each other cost 0.32 ms of Postgres CPU per deposit instead of 0.23, for the
/// same rate). With this many waiting, a second batch is big enough to pay for itself
/// and uses the CPU a single batch at a time leaves idle (64 clients: 6,150 → 6,992
/// deposits/s, idle 32 → 11 %).
const DEEP_QUEUE: usize = 16;

/// The committer's loop: collects requests and starts a batch when none is running —
/// or, when a lane is free and either the running batches have stalled or
/// [`DEEP_QUEUE`] requests wait, for the waiting requests whose wallets are not in a
/// running batch — and frees wallets as batches end. Waiting for the running batch is
/// what makes batches big; starting another when the queue is deep uses the machine's
/// other cores; starting one when the running ones stall keeps one blocked wallet from
/// holding up the rest.
async fn run(mut queue: mpsc::Receiver<Job>, shared: Arc<Shared>, lanes: usize) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut busy: HashSet<i64> = HashSet::new();
    let mut running: JoinSet<()> = JoinSet::new();
    // The wallets of each running batch, and when it started.
    let mut batches: HashMap<tokio::task::Id, (Vec<i64>, Instant)> = HashMap::new();
    let mut open = true;
    loop {
        // The running batches have all stalled once the youngest has.
        let youngest = batches.values().map(|(_, at)| *at).max();
        let stalled_at = youngest.unwrap_or_else(Instant::now) + STALLED;
        let may_spill = !running.is_empty() && running.len() < lanes && !pending.is_empty();
        tokio::select! {
            job = queue.recv(), if open => match job {
                Some(job) => {
                    pending.push_back(job);
                    // Let requests that are on their way join this batch.
                    tokio::task::yield_now().await;
                }
                None => open = false,
            },
            Some(done) = running.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!(error = %e, "a group-commit batch failed");
                        e.id()
                    }
                };
                if let Some((wallets, _)) = batches.remove(&id) {
                    for wallet in wallets {
                        busy.remove(&wallet);
                    }
                }
            }
            () = tokio::time::sleep_until(stalled_at), if may_spill => {}
            else => break,
        }
        while let Ok(job) = queue.try_recv() {
            pending.push_back(job);
        }
        while running.is_empty()
            || (running.len() < lanes && (stalled(&batches) || pending.len() >= DEEP_QUEUE))
        {
            let batch = take_batch(&mut pending, &busy);
            if batch.is_empty() {
                break;
            }
            let mut wallets: Vec<i64> = batch.iter().flat_map(|j| j.request.wallets()).collect();
            wallets.sort_unstable();
            wallets.dedup();
            busy.extend(&wallets);
            let shared = shared.clone();
            let stats = shared.stats.clone();
            let handle = running.spawn(async move { run_batch(&shared, batch).await });
            stats
                .most_in_flight
                .fetch_max(running.len() as u64, Ordering::Relaxed);
            batches.insert(handle.id(), (wallets, Instant::now()));
        }
    }
}

/// Whether every running batch has run for [`STALLED`] or longer.
fn stalled(batches: &HashMap<tokio::task::Id, (Vec<i64>, Instant)>) -> bool {
    let youngest = batches.values().map(|(_, at)| *at).max();
    youngest.is_some_and(|at| at.elapsed() >= STALLED)
}

/// The next batch: waiting requests in arrival order none of whose wallets is in a batch
/// already (the others keep their place, and so do the requests behind them for the same
/// wallets), at most [`MAX_BATCH`]. Requests their callers withdrew are dropped.
fn take_batch(pending: &mut VecDeque<Job>, busy: &HashSet<i64>) -> Vec<Job> {
    let mut batch = Vec::new();
    let mut left = VecDeque::with_capacity(pending.len());
    let mut waiting: HashSet<i64> = HashSet::new();
    while let Some(job) = pending.pop_front() {
        let wallets = job.request.wallets();
        let held = wallets
            .iter()
            .any(|w| busy.contains(w) || waiting.contains(w));
        if batch.len() == MAX_BATCH || held {
            waiting.extend(wallets);
            left.push_back(job);
        } else if advance(&job.state, TAKEN) {
            batch.push(job);
        }
    }
    *pending = left;
    batch
}

async fn run_batch(shared: &Shared, batch: Vec<Job>) {
    let mut conn = match shared.pool.get().await {
        Ok(conn) => conn,
        Err(e) => {
            // Nothing was begun.
            let why = format!("no database connection: {e}");
            for job in batch {
                let _ = job.reply.send(Err(LedgerError::Unavailable(why.clone())));
            }
            return;
        }
    };
    let outcome = commit_batch(&mut conn, &shared.currencies, &batch).await;
    match &outcome {
        // The server will not write (a standby, or made read-only): the pool's
        // connections to it are of no use; the requests run again on new ones.
        Err(failed) if failed.error.is_read_only_refusal() => conn.discard(),
        _ => drop(conn),
    }
    match outcome {
        Ok(results) => {
            let stats = &shared.stats;
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats
                .movements
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(failed) => {
            // Rolled back — unless the commit itself failed, in which case it may have
            // committed. Either way each request runs again on its own, with the usual
            // retries: its key makes it a replay of whatever did commit. The wallets stay
            // in this batch until all of them are answered, which keeps their order.
            let maybe_committed = failed.maybe_committed;
            tracing::debug!(error = ?failed.error, size = batch.len(), maybe_committed, "batch failed; running its requests one by one");
            shared.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .rerun
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            futures_util::future::join_all(batch.into_iter().map(|job| async move {
                let result = match shared.pool.get().await {
                    Ok(mut conn) => {
                        execute_alone(&mut conn, &shared.currencies, &job.scope, &job.request).await
                    }
                    Err(e) => Err(LedgerError::from(e)),
                };
                let result = if maybe_committed {
                    outcome::after_unknown_commit(result)
                } else {
                    result
                };
                let _ = job.reply.send(result);
            }))
            .await;
        }
    }
}

/// Why a batch's transaction did not commit as a whole, and whether it may have.
struct BatchFailed {
    error: LedgerError,
    maybe_committed: bool,
}

impl BatchFailed {
    fn rolled_back(error: impl Into<LedgerError>) -> BatchFailed {
        BatchFailed {
            error: error.into(),
            maybe_committed: false,
        }
    }
}

/// Runs the batch's transaction in two round trips: `BEGIN` and the prefetch (locks,
/// keys, clock) sent together; then, after the batch is judged here, the writes and
/// `COMMIT` sent together.
///
/// Postgres runs pipelined statements one after the other, in the order sent, and the
/// connection sends them in the order their futures are first polled (`join!` polls in
/// argument order; a statement being prepared holds the connection's statement cache,
/// so the next one cannot overtake it). So the keys are read after the wallets are locked,
/// as in a transaction of its own — and a key another process committed meanwhile would
/// still be caught by the journal's unique key, failing this batch into the one-by-one
/// path, which replays it.
async fn commit_batch(
    conn: &mut PooledConn,
    currencies: &CurrencyRegistry,
    batch: &[Job],
) -> Result<Vec<Result<Done, LedgerError>>, BatchFailed> {
    let asked: Vec<(&Scope, &Request)> = batch.iter().map(|j| (&j.scope, &j.request)).collect();
    conn.set_in_transaction(true);
    let fetched = {
        let mut pipe: &AsyncPgConnection = conn;
        let begin = fixed_sql::statement(&["BEGIN"], vec![]).execute(&mut pipe);
        let (begun, fetched) = futures_util::join!(begin, batch_store::prefetch(conn, &asked));
        begun.map_err(LedgerError::from).and(fetched)
    };
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(e) => {
            rollback(conn).await;
            return Err(BatchFailed::rolled_back(e));
        }
    };
    let mut judge = Judge::new(currencies, fetched.state);
    let verdicts: Vec<Verdict> = asked
        .iter()
        .map(|(scope, request)| judge.judge(scope, request))
        .collect();
    let decided = judge.decided(fetched.clock);
    let stored = write_and_commit(conn, &decided, &fetched.ids).await?;
    Ok(judge::answers(verdicts, &decided.rows, &stored))
}

/// Applies one request in the caller's transaction: the batch of one that every request
/// applied alone is (prefetch, judge, write — the statements and judge of a batch).
pub(crate) async fn apply_alone(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &Request,
) -> Result<Done, LedgerError> {
    let fetched = batch_store::prefetch(conn, &[(scope, request)]).await?;
    let mut judge = Judge::new(currencies, fetched.state);
    let verdict = judge.judge(scope, request);
    let decided = judge.decided(fetched.clock);
    let stored = match decided.is_empty() {
        true => Vec::new(),
        false => batch_store::write(conn, &decided, &fetched.ids).await?,
    };
    judge::answers(vec![verdict], &decided.rows, &stored)
        .pop()
        .unwrap_or_else(|| Err(LedgerError::Internal("a request was not answered".into())))
}

/// Applies one request exactly once per key in a transaction of its own, retried when
/// Postgres reports a transient failure or a concurrent use of the same key.
pub(crate) async fn execute_alone(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    scope: &Scope,
    request: &Request,
) -> Result<Done, LedgerError> {
    request.check_shape()?;
    store::retried!(conn, |tx| {
        apply_alone(tx, currencies, scope, request).await
    })
}

/// Ends a transaction that failed; a connection whose state is then unknown is closed
/// when dropped (which rolls back whatever is open).
async fn rollback(conn: &mut PooledConn) {
    use diesel_async::SimpleAsyncConnection;
    if conn.batch_execute("ROLLBACK").await.is_ok() {
        conn.set_in_transaction(false);
    }
}

/// Writes the judged batch and commits, in one round trip; returns the stored rows, in
/// the order of `decided.rows`. Ends the transaction, or leaves the connection marked as
/// inside one (to be closed) when its state is unknown.
async fn write_and_commit(
    conn: &mut PooledConn,
    decided: &Decided<'_>,
    ids: &[i64],
) -> Result<Vec<JournalEntry>, BatchFailed> {
    let mut pipe: &AsyncPgConnection = conn;
    let commit = fixed_sql::statement(&["COMMIT"], vec![]);
    if decided.is_empty() {
        // Only replays and refusals: nothing to write.
        commit
            .execute(&mut pipe)
            .await
            .map_err(BatchFailed::rolled_back)?;
        conn.set_in_transaction(false);
        return Ok(Vec::new());
    }
    let write = batch_store::write(conn, decided, ids);
    let commit = commit.execute(&mut pipe);
    let (written, committed) = futures_util::join!(write, commit);
    match (written, committed) {
        (Ok(stored), Ok(_)) => {
            conn.set_in_transaction(false);
            Ok(stored)
        }
        // `COMMIT` after a failed statement rolls back (and says so without an error) —
        // unless the statements did run and wrote other than judged (see `write`).
        (Err(error), Ok(_)) => {
            conn.set_in_transaction(false);
            let maybe_committed = matches!(error, LedgerError::OutcomeUnknown(_));
            Err(BatchFailed {
                error,
                maybe_committed,
            })
        }
        // No answer to `COMMIT`. Unless Postgres itself refused a statement before it
        // (then the transaction was aborted), the batch may have committed.
        (written, Err(e)) => {
            let refused = written
                .err()
                .is_some_and(|e| matches!(e, LedgerError::Database(_)) && !e.is_unavailable());
            Err(BatchFailed {
                error: e.into(),
                maybe_committed: !refused,
            })
        }
    }
}
