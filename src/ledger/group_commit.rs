//! Group commit of fiat movements and transfers.
//!
//! One database transaction per deposit spends most of its time waiting: for the wallet
//! lock behind the previous deposit, and for its own commit to reach the disk. Here every
//! movement goes through one committer per process, which takes the requests waiting at
//! that moment and applies them in **one** transaction: the wallets are locked in id
//! order with one statement, each request is judged in arrival order against the running
//! balances exactly as [`movement::execute`] would (a refused request changes nothing and
//! does not fail the others), the balances are written with one statement, the journal
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
//! A hot wallet so pays one lock wait and one disk flush per batch instead of per deposit.
//! Rows of one batch and wallet share a timestamp and are ordered by id, which follows
//! arrival order, so the journal chain holds as before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use diesel::prelude::*;
use diesel::sql_types::{Bool, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fixed_sql::{self, Bind, Fixed};
use super::models::Scaled;
use super::movement::{self, Movement, MovementRequest};
use super::posting::{self, NewEntry, NewRow};
use super::transfer::{self, Transfer, TransferRequest};
use super::{CurrencyRegistry, JournalEntry, LedgerError, Scope, TransactionType, Wallet, outcome};
use crate::db::{PgPool, PooledConn};
use crate::schema::wallets;
use crate::task::AbortOnDrop;

/// Requests one transaction takes at most.
const MAX_BATCH: usize = 256;

/// Where a queued request is: waiting, taken by a batch, or withdrawn by its caller.
/// Whichever of "taken" and "withdrawn" happens first is the truth: a caller that
/// withdrew its request may say nothing was done.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// What a batch applies: a movement of one wallet, or a transfer between two.
#[derive(Clone, Debug)]
enum Request {
    Movement(MovementRequest),
    Transfer(TransferRequest),
}

/// What a batch answers. (One per request, moved once: the size difference between the
/// variants costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
enum Done {
    Movement(Movement),
    Transfer(Transfer),
}

impl Request {
    /// The wallet whose key names the request (a transfer's source).
    fn keyed_wallet(&self) -> i64 {
        match self {
            Request::Movement(m) => m.wallet_id,
            Request::Transfer(t) => t.from_wallet_id,
        }
    }

    fn key(&self) -> &str {
        match self {
            Request::Movement(m) => &m.key,
            Request::Transfer(t) => &t.key,
        }
    }

    /// Every wallet the request changes.
    fn wallets(&self) -> Vec<i64> {
        match self {
            Request::Movement(m) => vec![m.wallet_id],
            Request::Transfer(t) => vec![t.from_wallet_id, t.to_wallet_id],
        }
    }

    /// Applies the request in a transaction of its own.
    async fn alone(
        &self,
        conn: &mut AsyncPgConnection,
        currencies: &CurrencyRegistry,
        scope: &Scope,
    ) -> Result<Done, LedgerError> {
        match self {
            Request::Movement(m) => movement::execute(conn, currencies, scope, m)
                .await
                .map(Done::Movement),
            Request::Transfer(t) => transfer::execute(conn, currencies, scope, t)
                .await
                .map(Done::Transfer),
        }
    }
}

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

    /// Applies a movement exactly once per key, as [`movement::execute`] does, answering
    /// by `deadline`: with the committed result, a refusal of a movement that did not and
    /// will not happen, or [`LedgerError::OutcomeUnknown`] when a batch holding it has not
    /// finished by then.
    pub async fn execute(
        &self,
        scope: Scope,
        request: MovementRequest,
        deadline: Instant,
    ) -> Result<Movement, LedgerError> {
        movement::validate_shape(&request)?;
        match self
            .submit(scope, Request::Movement(request), deadline)
            .await?
        {
            Done::Movement(m) => Ok(m),
            Done::Transfer(_) => Err(LedgerError::Internal(
                "a movement answered as a transfer".into(),
            )),
        }
    }

    /// Applies a transfer exactly once per key of its source wallet, as
    /// [`transfer::execute`] does, answering by `deadline` like [`Committer::execute`].
    pub async fn transfer(
        &self,
        scope: Scope,
        request: TransferRequest,
        deadline: Instant,
    ) -> Result<Transfer, LedgerError> {
        transfer::validate_shape(&request)?;
        match self
            .submit(scope, Request::Transfer(request), deadline)
            .await?
        {
            Done::Transfer(t) => Ok(t),
            Done::Movement(_) => Err(LedgerError::Internal(
                "a transfer answered as a movement".into(),
            )),
        }
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
            request.alone(&mut conn, &currencies, &scope).await
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
    drop(conn);
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
                        job.request
                            .alone(&mut conn, &shared.currencies, &job.scope)
                            .await
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

/// Runs the batch's transaction in two round trips: `BEGIN`, the locks, the keys and the
/// clock sent together; then, after the batch is judged here, the balances, the journal
/// rows and `COMMIT` sent together.
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
    conn.set_in_transaction(true);
    let judged = async {
        let read = begin_and_read(conn, batch).await?;
        judge_batch(conn, currencies, batch, read).await
    }
    .await;
    let judged = match judged {
        Ok(judged) => judged,
        Err(e) => {
            rollback(conn).await;
            return Err(BatchFailed::rolled_back(e));
        }
    };
    let inserted = write_and_commit(conn, &judged).await?;
    Ok(judged.answers(inserted))
}

/// Ends a transaction that failed; a connection whose state is then unknown is closed
/// when dropped (which rolls back whatever is open).
async fn rollback(conn: &mut PooledConn) {
    use diesel_async::SimpleAsyncConnection;
    if conn.batch_execute("ROLLBACK").await.is_ok() {
        conn.set_in_transaction(false);
    }
}

/// What the batch reads before judging.
struct Read {
    /// The batch's wallets the callers may touch, locked.
    balances: HashMap<i64, Wallet>,
    /// Rows already journaled under the batch's keys.
    existing: HashMap<(i64, String), JournalEntry>,
    /// The database's clock after the locks were taken: the batch's time.
    clock: chrono::DateTime<chrono::Utc>,
    /// Journal row ids taken beforehand, ascending — a transfer's receiving row names
    /// its sending row by id in the same insert — enough for every row the batch could
    /// write (unused ones are gaps, as a rolled-back insert leaves).
    ids: Vec<i64>,
}

async fn begin_and_read(conn: &AsyncPgConnection, batch: &[Job]) -> Result<Read, LedgerError> {
    let keys: Vec<(i64, &str)> = batch
        .iter()
        .map(|j| (j.request.keyed_wallet(), j.request.key()))
        .collect();
    let rows_at_most: usize = batch
        .iter()
        .map(|j| match j.request {
            Request::Movement(_) => 1,
            Request::Transfer(_) => 2,
        })
        .sum();
    let mut pipe = conn;
    let begin = fixed_sql::statement(&["BEGIN"], vec![]).execute(&mut pipe);
    let locked = lock_visible_wallets(conn, batch);
    let existing = posting::find_by_keys(conn, &keys);
    let clock = diesel::select(Fixed::<Timestamptz>::new(&["clock_timestamp()"], vec![]))
        .get_result::<chrono::DateTime<chrono::Utc>>(&mut pipe);
    let ids = posting::allocate_ids(conn, rows_at_most);
    let (begun, locked, existing, clock, ids) =
        futures_util::join!(begin, locked, existing, clock, ids);
    begun?;
    Ok(Read {
        balances: locked?,
        existing: existing?
            .into_iter()
            .map(|e| ((e.wallet_id, e.tx_hash.clone()), e))
            .collect(),
        clock: clock?,
        ids: ids?,
    })
}

/// Locks, in id order, the wallets of the batch that the request naming them may touch.
/// A wallet named only by callers who may not see it is never locked.
async fn lock_visible_wallets(
    mut conn: &AsyncPgConnection,
    batch: &[Job],
) -> Result<HashMap<i64, Wallet>, LedgerError> {
    // A movement's wallet and a transfer's source as the caller may see them; a
    // transfer's target is anyone's.
    let mut ids: Vec<i64> = Vec::with_capacity(batch.len());
    let mut owners: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    for job in batch {
        ids.push(job.request.keyed_wallet());
        owners.push(job.scope.owner());
        if let Request::Transfer(t) = &job.request {
            ids.push(t.to_wallet_id);
            owners.push(None);
        }
    }
    let owners: Vec<Option<String>> = owners.into_iter().map(|o| o.map(str::to_owned)).collect();
    let visible = Fixed::<Bool>::new(
        &[
            "wallets.id = ANY (",
            ") AND EXISTS (SELECT 1 FROM unnest(",
            "::bigint[], ",
            "::text[]) AS r (id, owner)
              WHERE r.id = wallets.id AND (r.owner IS NULL OR r.owner = wallets.user_id))",
        ],
        vec![
            Bind::BigInts(ids.clone()),
            Bind::BigInts(ids),
            Bind::OptionalTexts(owners),
        ],
    );
    let locked: Vec<Wallet> = wallets::table
        .filter(visible)
        .order(wallets::id)
        .select(Wallet::as_select())
        .for_no_key_update()
        .load(&mut conn)
        .await?;
    Ok(locked.into_iter().map(|w| (w.id, w)).collect())
}

/// The batch as judged: each request's verdict and the rows to write.
struct Judged<'a> {
    verdicts: Vec<Verdict>,
    rows: Vec<BatchRow<'a>>,
    /// Each touched wallet's new balance and time, in first-touched order.
    touched: Vec<(i64, Scaled, chrono::DateTime<chrono::Utc>)>,
    ids: Vec<i64>,
}

/// Judges each request in arrival order against the running balances.
async fn judge_batch<'a>(
    conn: &mut AsyncPgConnection,
    currencies: &CurrencyRegistry,
    batch: &'a [Job],
    read: Read,
) -> Result<Judged<'a>, LedgerError> {
    let Read {
        mut balances,
        existing,
        clock,
        ids,
    } = read;
    // The receiving sides of transfers sent before under the batch's keys (a replay).
    let sent: Vec<i64> = existing
        .values()
        .filter(|e| e.kind == TransactionType::TransferOut)
        .map(|e| e.id)
        .collect();
    let received: HashMap<i64, JournalEntry> = match sent.is_empty() {
        true => HashMap::new(),
        false => transfer::receiving_sides(conn, &sent)
            .await?
            .into_iter()
            .filter_map(|e| e.counterpart_id.map(|out| (out, e)))
            .collect(),
    };

    let mut verdicts = Vec::with_capacity(batch.len());
    let mut rows: Vec<BatchRow<'a>> = Vec::new();
    let mut earlier: HashMap<(i64, &str), usize> = HashMap::new();
    for job in batch {
        let judged = judge(
            currencies,
            job,
            &balances,
            (&existing, &received),
            &earlier,
            &rows,
        );
        let verdict = match judged {
            Ok(Judgement::New(new_rows)) => {
                let first = rows.len();
                for (wallet_id, row) in new_rows {
                    let Some(wallet) = balances.get_mut(&wallet_id) else {
                        return Err(LedgerError::Internal(
                            "a judged wallet is not locked".into(),
                        ));
                    };
                    let around = row.balances(wallet.balance);
                    wallet.balance = around.1;
                    // A transfer's receiving row names the sending row just before it.
                    let counterpart =
                        (row.kind == TransactionType::TransferIn).then(|| rows.len() - 1);
                    rows.push(BatchRow {
                        wallet_id,
                        row,
                        around,
                        counterpart,
                    });
                }
                earlier.insert((job.request.keyed_wallet(), job.request.key()), first);
                Verdict::Insert(first)
            }
            Ok(Judgement::Replay(done)) => Verdict::Replay(done),
            Ok(Judgement::ReplayOfInsert(i)) => Verdict::ReplayOfInsert(i),
            Err(e) => Verdict::Refused(e),
        };
        verdicts.push(verdict);
    }

    // Each touched wallet's new balance, and its time: the batch's clock, or the wallet's
    // own if that is later (a wallet's time never runs backwards).
    let mut touched = Vec::new();
    for r in &rows {
        if !touched.iter().any(|(id, _, _)| *id == r.wallet_id)
            && let Some(w) = balances.get(&r.wallet_id)
        {
            touched.push((r.wallet_id, Scaled(w.balance), clock.max(w.updated_at)));
        }
    }
    Ok(Judged {
        verdicts,
        rows,
        touched,
        ids,
    })
}

/// Writes the judged batch and commits, in one round trip; returns the inserted rows, in
/// the order of `judged.rows`. Ends the transaction, or leaves the connection marked as
/// inside one (to be closed) when its state is unknown.
async fn write_and_commit(
    conn: &mut PooledConn,
    judged: &Judged<'_>,
) -> Result<Vec<JournalEntry>, BatchFailed> {
    let mut pipe: &AsyncPgConnection = conn;
    if judged.rows.is_empty() {
        // Only replays and refusals: nothing to write.
        fixed_sql::statement(&["COMMIT"], vec![])
            .execute(&mut pipe)
            .await
            .map_err(BatchFailed::rolled_back)?;
        conn.set_in_transaction(false);
        return Ok(Vec::new());
    }
    let mut entries: Vec<NewEntry<'_>> = Vec::with_capacity(judged.rows.len());
    for (i, r) in judged.rows.iter().enumerate() {
        let Some(&(_, _, time)) = judged.touched.iter().find(|t| t.0 == r.wallet_id) else {
            return Err(BatchFailed::rolled_back(LedgerError::Internal(
                "a batch row's wallet has no new balance".into(),
            )));
        };
        let mut entry = r.row.entry(r.wallet_id, r.around, time);
        // Ids in batch order, so the journal's order is arrival order.
        let id = |i: usize| {
            judged.ids.get(i).copied().ok_or_else(|| {
                BatchFailed::rolled_back(LedgerError::Internal(
                    "fewer row ids taken than rows".into(),
                ))
            })
        };
        entry.id = Some(id(i)?);
        entry.counterpart_id = r.counterpart.map(id).transpose()?;
        entries.push(entry);
    }
    let update = fixed_sql::statement(
        &[
            "UPDATE wallets w
                SET balance = v.balance, updated_at = v.at
               FROM unnest(",
            "::bigint[], ",
            "::numeric[], ",
            "::timestamptz[]) AS v (id, balance, at)
              WHERE w.id = v.id",
        ],
        vec![
            Bind::BigInts(judged.touched.iter().map(|t| t.0).collect()),
            Bind::Numerics(judged.touched.iter().map(|t| t.1).collect()),
            Bind::Times(judged.touched.iter().map(|t| t.2).collect()),
        ],
    )
    .execute(&mut pipe);
    let insert = posting::insert_batch(conn, &entries);
    let commit = fixed_sql::statement(&["COMMIT"], vec![]).execute(&mut pipe);
    let (updated, inserted, committed) = futures_util::join!(update, insert, commit);
    let (updated, inserted) = match (updated.map_err(LedgerError::from), inserted, committed) {
        (Ok(updated), Ok(inserted), Ok(_)) => (updated, inserted),
        // `COMMIT` after a failed statement rolls back (and says so without an error).
        (Err(e), _, Ok(_)) | (_, Err(e), Ok(_)) => {
            conn.set_in_transaction(false);
            return Err(BatchFailed::rolled_back(e));
        }
        // No answer to `COMMIT`. Unless Postgres itself refused a statement before it
        // (then the transaction was aborted), the batch may have committed.
        (updated, inserted, Err(e)) => {
            let refused = [updated.err(), inserted.err()]
                .into_iter()
                .flatten()
                .any(|e| matches!(e, LedgerError::Database(_)) && !e.is_unavailable());
            return Err(BatchFailed {
                error: e.into(),
                maybe_committed: !refused,
            });
        }
    };
    conn.set_in_transaction(false);
    if updated != judged.touched.len() || inserted.len() != judged.rows.len() {
        // Cannot happen with the wallets locked; if it did, the batch committed something
        // other than judged: its requests run again on their own and replay what is there.
        return Err(BatchFailed {
            error: LedgerError::Internal("a batch wrote other rows than it judged".into()),
            maybe_committed: true,
        });
    }
    Ok(inserted)
}

impl Judged<'_> {
    /// Each request's answer, in batch order, given the rows as inserted.
    fn answers(self, inserted: Vec<JournalEntry>) -> Vec<Result<Done, LedgerError>> {
        let Judged { verdicts, rows, .. } = self;
        // A new transfer's rows are at `i` and `i + 1`.
        let done = |i: usize, replayed: bool| match rows[i].row.kind {
            TransactionType::TransferOut => Done::Transfer(Transfer {
                out: inserted[i].clone(),
                into: inserted[i + 1].clone(),
                replayed,
            }),
            _ => Done::Movement(Movement {
                entry: inserted[i].clone(),
                replayed,
            }),
        };
        verdicts
            .into_iter()
            .map(|v| match v {
                Verdict::Insert(i) => Ok(done(i, false)),
                Verdict::ReplayOfInsert(i) => Ok(done(i, true)),
                Verdict::Replay(done) => Ok(*done),
                Verdict::Refused(e) => Err(e),
            })
            .collect()
    }
}

/// A journal row the batch inserts.
struct BatchRow<'a> {
    wallet_id: i64,
    row: NewRow<'a>,
    /// The balances before and after it.
    around: (Decimal, Decimal),
    /// A transfer's receiving row: the index of its sending row.
    counterpart: Option<usize>,
}

/// What the batch decided for one request before anything is written.
enum Verdict {
    /// New journal rows: the index of the first of them among the batch's inserts.
    Insert(usize),
    /// The key's movement exists already.
    Replay(Box<Done>),
    /// The same key and request earlier in this batch: its inserts.
    ReplayOfInsert(usize),
    Refused(LedgerError),
}

enum Judgement<'a> {
    /// The rows to append, each with its wallet.
    New(Vec<(i64, NewRow<'a>)>),
    Replay(Box<Done>),
    ReplayOfInsert(usize),
}

/// Rows already journaled under the batch's keys, and the receiving sides of the
/// transfers among them (by sending row id).
type Journaled<'e> = (
    &'e HashMap<(i64, String), JournalEntry>,
    &'e HashMap<i64, JournalEntry>,
);

/// One request against the batch so far, in the order and with the checks of
/// `movement::apply` or `transfer::apply`: visible wallet, key, currency, amount, funds.
fn judge<'a>(
    currencies: &CurrencyRegistry,
    job: &'a Job,
    balances: &HashMap<i64, Wallet>,
    (existing, received): Journaled<'_>,
    earlier: &HashMap<(i64, &str), usize>,
    rows: &[BatchRow<'_>],
) -> Result<Judgement<'a>, LedgerError> {
    let keyed = job.request.keyed_wallet();
    let wallet = balances
        .get(&keyed)
        .filter(|w| job.scope.owner().is_none_or(|owner| w.user_id == owner))
        .ok_or(LedgerError::NotFound("wallet"))?;
    let key = (keyed, job.request.key());
    match &job.request {
        Request::Movement(request) => {
            // Keys are scoped to the wallet.
            if let Some(e) = existing.get(&(key.0, key.1.to_owned())) {
                let same = movement::same_request(e, request);
                return movement::replay_or_conflict(
                    e.clone(),
                    same,
                    "idempotencyKey",
                    &request.key,
                )
                .map(|m| Judgement::Replay(Box::new(Done::Movement(m))));
            }
            if let Some(&i) = earlier.get(&key) {
                let same = rows[i].row.records(
                    request.direction.transaction_type(),
                    request.amount,
                    request.description.as_deref(),
                    request.annotation(),
                );
                return match same {
                    true => Ok(Judgement::ReplayOfInsert(i)),
                    false => Err(movement::key_conflict("idempotencyKey", &request.key)),
                };
            }
            movement::journal_row(currencies, wallet, request)
                .map(|row| Judgement::New(vec![(wallet.id, row)]))
        }
        Request::Transfer(request) => {
            if let Some(out) = existing.get(&(key.0, key.1.to_owned())) {
                let into = received.get(&out.id).cloned();
                return transfer::replay(out.clone(), into, request)
                    .map(|t| Judgement::Replay(Box::new(Done::Transfer(t))));
            }
            if let Some(&i) = earlier.get(&key) {
                let (out, into) = (&rows[i], rows.get(i + 1));
                let same = out.row.records(
                    TransactionType::TransferOut,
                    request.amount,
                    request.description.as_deref(),
                    request.annotation(),
                ) && into.is_some_and(|r| r.wallet_id == request.to_wallet_id);
                return match same {
                    true => Ok(Judgement::ReplayOfInsert(i)),
                    false => Err(movement::key_conflict("idempotencyKey", &request.key)),
                };
            }
            let to = balances
                .get(&request.to_wallet_id)
                .ok_or(LedgerError::NotFound("wallet"))?;
            let (out, into) = transfer::journal_rows(currencies, wallet, to, request)?;
            Ok(Judgement::New(vec![(wallet.id, out), (to.id, into)]))
        }
    }
}
