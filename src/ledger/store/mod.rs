//! Appending journal rows: the one place that turns a balance change into a row.
//!
//! Every caller holds the wallet's row lock (taken with [`lock_wallet`]), so rows of one
//! wallet are appended one at a time and each starts where the previous one ended. The
//! wallet's `updated_at` never runs backwards and becomes the row's time, so ordering by
//! `(created_at, id)` is the order in which the balance changed (the journal chain).

pub mod batch;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use crate::ledger::models::Scaled;
use crate::ledger::{JournalEntry, LedgerError, Scope, TransactionStatus, TransactionType, Wallet};
use crate::schema::{legacy_token_deposits, transactions, wallets};

/// Runs `$body` in a database transaction, again when Postgres reports a transient
/// failure (serialization, deadlock) or another transaction inserted the same key first
/// (on another wallet, so the wallet lock did not order the two: the retry finds its row
/// and judges the replay). A macro because the body is an async closure over borrowed
/// data, which diesel-async's `transaction` bounds make awkward to pass as a value.
///
/// A failure of the COMMIT itself (the body had succeeded) leaves the outcome unknown:
/// the body runs again, which for a keyed movement replays what committed or applies
/// what did not. If it cannot run again (the database is gone), the error is
/// [`LedgerError::OutcomeUnknown`] — never a failure that claims nothing happened.
macro_rules! retried {
    ($conn:expr, |$tx:ident| $body:block) => {{
        let mut attempt = 1;
        let mut maybe_committed = false;
        loop {
            let body_done = std::sync::atomic::AtomicBool::new(false);
            let result: Result<_, $crate::ledger::LedgerError> =
                diesel_async::AsyncConnection::transaction($conn, async |$tx| {
                    let result: Result<_, $crate::ledger::LedgerError> = async { $body }.await;
                    if result.is_ok() {
                        body_done.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    result
                })
                .await;
            let result = match result {
                Err(e)
                    if std::sync::atomic::AtomicBool::load(
                        &body_done,
                        std::sync::atomic::Ordering::Relaxed,
                    ) =>
                {
                    maybe_committed = true;
                    Err($crate::ledger::LedgerError::OutcomeUnknown(format!(
                        "the commit failed: {e:?}"
                    )))
                }
                // Only a judgement of the request itself (made after its key was looked
                // up again) proves the earlier commit did not happen.
                other if maybe_committed => $crate::ledger::outcome::after_unknown_commit(other),
                other => other,
            };
            match result {
                Err(e)
                    if attempt < $crate::db::MAX_ATTEMPTS
                        && $crate::ledger::store::worth_retrying(&e) =>
                {
                    tokio::time::sleep($crate::db::retry_backoff(attempt)).await;
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retried;

/// A transient failure, a lost race on a key, or a commit whose outcome is unknown (see
/// [`retried`]).
pub fn worth_retrying(e: &LedgerError) -> bool {
    e.is_transient() || is_key_race(e) || matches!(e, LedgerError::OutcomeUnknown(_))
}

fn is_key_race(e: &LedgerError) -> bool {
    matches!(
        e,
        LedgerError::Database(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
            if matches!(info.constraint_name(),
                Some("transactions_tx_hash_key"
                    | "transactions_hold_postings_key"
                    | "transactions_chain_deposit_key"))
    )
}

/// Locks a wallet the caller may see for the rest of the database transaction.
/// FOR NO KEY UPDATE: key columns do not change, so journal inserts referencing the
/// wallet are not blocked by it. A wallet the caller may not see is never locked.
pub async fn lock_wallet(
    conn: &mut AsyncPgConnection,
    scope: &Scope,
    wallet_id: i64,
) -> Result<Wallet, LedgerError> {
    let locked = match scope.owner() {
        None => {
            wallets::table
                .find(wallet_id)
                .select(Wallet::as_select())
                .for_no_key_update()
                .first(conn)
                .await
        }
        Some(owner) => {
            wallets::table
                .find(wallet_id)
                .filter(wallets::user_id.eq(owner))
                .select(Wallet::as_select())
                .for_no_key_update()
                .first(conn)
                .await
        }
    };
    locked.optional()?.ok_or(LedgerError::NotFound("wallet"))
}

/// Locks two wallets, lower id first (the order every movement locks in, so two callers
/// locking the same pair never deadlock), each as its scope may see it. Returns them in
/// argument order.
pub async fn lock_two(
    conn: &mut AsyncPgConnection,
    (first_id, first_scope): (i64, &Scope),
    (second_id, second_scope): (i64, &Scope),
) -> Result<(Wallet, Wallet), LedgerError> {
    if first_id < second_id {
        let first = lock_wallet(conn, first_scope, first_id).await?;
        let second = lock_wallet(conn, second_scope, second_id).await?;
        Ok((first, second))
    } else {
        let second = lock_wallet(conn, second_scope, second_id).await?;
        let first = lock_wallet(conn, first_scope, first_id).await?;
        Ok((first, second))
    }
}

/// The chain transfer behind a crypto row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainFields {
    pub network: String,
    pub from_address: String,
    pub to_address: String,
    pub chain_tx_hash: Option<String>,
    pub confirmations: i32,
    pub required_confirmations: i32,
    pub block_number: Option<i64>,
    pub gas_price: Option<Decimal>,
    pub gas_used: Option<i64>,
    pub raw: Option<String>,
}

/// What a row records, apart from the balances (which [`append`] computes).
#[derive(Clone, Debug)]
pub struct NewRow<'a> {
    pub kind: TransactionType,
    pub amount: Decimal,
    pub fee: Decimal,
    pub status: TransactionStatus,
    pub key: &'a str,
    pub description: Option<&'a str>,
    /// A hold: journaled now, no balance effect (its postings carry the effect).
    pub hold: bool,
    /// On a posting: the hold it settles.
    pub settles: Option<i64>,
    pub chain: Option<&'a ChainFields>,
    /// The currency's scale: balances are written with exactly this many decimals.
    pub scale: u32,
    /// Crypto withdrawals: what our addresses pay the network, when it is not `fee`.
    pub network_fee: Option<Decimal>,
    /// The client's reference and metadata.
    pub annotation: Annotation<'a>,
    /// A reversal: the row it reverses and that row's balance change.
    pub reverses: Option<(i64, Decimal)>,
    /// A capture: the (fiat) hold it settles.
    pub settles_hold: Option<i64>,
}

/// What a client may attach to a movement for its own bookkeeping.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Annotation<'a> {
    pub reference: Option<&'a str>,
    pub metadata: Option<&'a serde_json::Value>,
}

impl<'a> Annotation<'a> {
    /// Whether a stored row carries exactly this annotation (a replay's check).
    pub fn matches(&self, entry: &JournalEntry) -> bool {
        self.reference == entry.reference.as_deref() && self.metadata == entry.metadata.as_ref()
    }
}

impl<'a> NewRow<'a> {
    /// A fiat row, final when written: no fee, no chain, not a hold.
    pub fn fiat(
        kind: TransactionType,
        amount: Decimal,
        key: &'a str,
        description: Option<&'a str>,
        scale: u32,
    ) -> Self {
        NewRow {
            kind,
            amount,
            fee: Decimal::ZERO,
            status: TransactionStatus::Completed,
            key,
            description,
            hold: false,
            settles: None,
            chain: None,
            scale,
            network_fee: None,
            annotation: Annotation::default(),
            reverses: None,
            settles_hold: None,
        }
    }

    /// Whether this row is what a request for `kind`, `amount`, `description` and
    /// `annotation` writes (a replay's check against a row not yet stored).
    pub fn records(
        &self,
        kind: TransactionType,
        amount: Decimal,
        description: Option<&str>,
        annotation: Annotation<'_>,
    ) -> bool {
        self.settles_hold.is_none()
            && self.kind == kind
            && self.amount == amount
            && self.description == description
            && self.annotation == annotation
    }

    /// The balance change the row records: none for a hold, otherwise the signed
    /// amount plus fee (a withdrawal's debit includes the fee paid on chain).
    pub fn balance_change(&self) -> Decimal {
        match (self.hold, self.kind.sign(), self.reverses) {
            (true, _, _) => Decimal::ZERO,
            (false, Some(sign), _) => sign * (self.amount + self.fee),
            (false, None, Some((_, reversed_change))) => -reversed_change,
            (false, None, None) => Decimal::ZERO, // refused by the database
        }
    }

    /// The balances around this row when the wallet holds `balance`, at the currency's
    /// scale (a zero read back from Postgres has lost it: rust_decimal gives zero scale
    /// 0; and a parked deposit's amount may be finer than the currency).
    pub fn balances(&self, balance: Decimal) -> (Decimal, Decimal) {
        let mut before = balance;
        before.rescale(self.scale);
        let mut after = before + self.balance_change();
        after.rescale(self.scale);
        (before, after)
    }

    /// The row as inserted into wallet `wallet_id`'s journal at `at`.
    pub fn entry(
        &self,
        wallet_id: i64,
        (before, after): (Decimal, Decimal),
        at: DateTime<Utc>,
    ) -> NewEntry<'a> {
        let chain = self.chain;
        NewEntry {
            id: None,
            wallet_id,
            kind: self.kind,
            amount: Scaled(self.amount),
            fee: Scaled(self.fee),
            balance_before: Scaled(before),
            balance_after: Scaled(after),
            status: self.status,
            tx_hash: self.key,
            description: self.description,
            hold: self.hold,
            hold_id: self.settles,
            network: chain.map(|c| c.network.as_str()),
            from_address: chain.map(|c| c.from_address.as_str()),
            to_address: chain.map(|c| c.to_address.as_str()),
            chain_tx_hash: chain.and_then(|c| c.chain_tx_hash.as_deref()),
            confirmations: chain.map(|c| c.confirmations),
            required_confirmations: chain.map(|c| c.required_confirmations),
            block_number: chain.and_then(|c| c.block_number),
            gas_price: chain.and_then(|c| c.gas_price).map(Scaled),
            gas_used: chain.and_then(|c| c.gas_used),
            raw: chain.and_then(|c| c.raw.as_deref()),
            counterpart_id: None,
            reverses_id: self.reverses.map(|(id, _)| id),
            network_fee: self.network_fee.map(Scaled),
            reference: self.annotation.reference,
            metadata: self.annotation.metadata,
            created_at: at,
            updated_at: at,
            settles_hold_id: self.settles_hold,
        }
    }
}

/// A journal row ready to insert (one statement may insert many).
#[derive(Insertable)]
#[diesel(table_name = transactions, check_for_backend(diesel::pg::Pg))]
pub struct NewEntry<'a> {
    /// Taken beforehand ([`allocate_ids`]) when another row of the same insert names this
    /// one; otherwise the column's default.
    pub(crate) id: Option<i64>,
    wallet_id: i64,
    #[diesel(column_name = type_)]
    kind: TransactionType,
    amount: Scaled,
    fee: Scaled,
    balance_before: Scaled,
    balance_after: Scaled,
    status: TransactionStatus,
    tx_hash: &'a str,
    description: Option<&'a str>,
    hold: bool,
    hold_id: Option<i64>,
    network: Option<&'a str>,
    from_address: Option<&'a str>,
    to_address: Option<&'a str>,
    chain_tx_hash: Option<&'a str>,
    confirmations: Option<i32>,
    required_confirmations: Option<i32>,
    block_number: Option<i64>,
    gas_price: Option<Scaled>,
    gas_used: Option<i64>,
    raw: Option<&'a str>,
    pub(crate) counterpart_id: Option<i64>,
    reverses_id: Option<i64>,
    network_fee: Option<Scaled>,
    reference: Option<&'a str>,
    metadata: Option<&'a serde_json::Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    settles_hold_id: Option<i64>,
}

/// Inserts `entries` — every one with its id taken beforehand ([`allocate_ids`]) — with
/// one statement of fixed text (kept prepared), returning the rows as stored, in id order.
pub async fn insert_batch(
    mut conn: &AsyncPgConnection,
    entries: &[NewEntry<'_>],
) -> Result<Vec<JournalEntry>, LedgerError> {
    use crate::ledger::fixed_sql::{self, Bind};
    let mut ids = Vec::with_capacity(entries.len());
    for e in entries {
        ids.push(e.id.ok_or_else(|| {
            LedgerError::Internal("a batch row without an id taken beforehand".into())
        })?);
    }
    fn texts<'e>(entries: &'e [NewEntry<'e>], f: fn(&NewEntry<'e>) -> Option<&'e str>) -> Bind {
        Bind::OptionalTexts(entries.iter().map(|e| f(e).map(str::to_owned)).collect())
    }
    let binds = vec![
        Bind::BigInts(ids),
        Bind::BigInts(entries.iter().map(|e| e.wallet_id).collect()),
        Bind::Texts(entries.iter().map(|e| e.kind.as_str().to_owned()).collect()),
        Bind::Numerics(entries.iter().map(|e| e.amount).collect()),
        Bind::Numerics(entries.iter().map(|e| e.fee).collect()),
        Bind::Numerics(entries.iter().map(|e| e.balance_before).collect()),
        Bind::Numerics(entries.iter().map(|e| e.balance_after).collect()),
        Bind::Texts(
            entries
                .iter()
                .map(|e| e.status.as_str().to_owned())
                .collect(),
        ),
        Bind::Texts(entries.iter().map(|e| e.tx_hash.to_owned()).collect()),
        texts(entries, |e| e.description),
        Bind::Bools(entries.iter().map(|e| e.hold).collect()),
        Bind::OptionalBigInts(entries.iter().map(|e| e.hold_id).collect()),
        texts(entries, |e| e.network),
        texts(entries, |e| e.from_address),
        texts(entries, |e| e.to_address),
        texts(entries, |e| e.chain_tx_hash),
        Bind::OptionalInts(entries.iter().map(|e| e.confirmations).collect()),
        Bind::OptionalInts(entries.iter().map(|e| e.required_confirmations).collect()),
        Bind::OptionalBigInts(entries.iter().map(|e| e.block_number).collect()),
        Bind::OptionalNumerics(entries.iter().map(|e| e.gas_price).collect()),
        Bind::OptionalBigInts(entries.iter().map(|e| e.gas_used).collect()),
        texts(entries, |e| e.raw),
        Bind::OptionalBigInts(entries.iter().map(|e| e.counterpart_id).collect()),
        Bind::OptionalBigInts(entries.iter().map(|e| e.reverses_id).collect()),
        Bind::OptionalNumerics(entries.iter().map(|e| e.network_fee).collect()),
        texts(entries, |e| e.reference),
        Bind::OptionalJson(entries.iter().map(|e| e.metadata.cloned()).collect()),
        Bind::Times(entries.iter().map(|e| e.created_at).collect()),
        Bind::Times(entries.iter().map(|e| e.updated_at).collect()),
        Bind::OptionalBigInts(entries.iter().map(|e| e.settles_hold_id).collect()),
    ];
    let mut rows: Vec<JournalEntry> = fixed_sql::numbered(include_str!("insert_rows.sql"), binds)
        .load(&mut conn)
        .await?;
    rows.sort_by_key(|e| e.id);
    Ok(rows)
}

/// Appends `row` to the journal of the locked `wallet`, changing its balance by the row's
/// effect and its locked balance by `locked_change`. Returns the row as stored.
///
/// The CHECK constraints keep balance and locked balance within `0 ≤ locked ≤ balance`;
/// callers check first so that a violation is a bug, not a user error.
pub async fn append(
    conn: &mut AsyncPgConnection,
    wallet: &Wallet,
    row: &NewRow<'_>,
    locked_change: Decimal,
) -> Result<JournalEntry, LedgerError> {
    append_with(conn, wallet, row, locked_change, None).await
}

/// Like [`append`], for a row that names another (a reversal names what it reverses).
pub async fn append_with(
    conn: &mut AsyncPgConnection,
    wallet: &Wallet,
    row: &NewRow<'_>,
    locked_change: Decimal,
    counterpart: Option<i64>,
) -> Result<JournalEntry, LedgerError> {
    let mut entry = update_balance(conn, wallet, row, locked_change).await?;
    entry.counterpart_id = counterpart;
    Ok(diesel::insert_into(transactions::table)
        .values(entry)
        .returning(JournalEntry::as_returning())
        .get_result(conn)
        .await?)
}

/// Changes the locked `wallet`'s balance by `row`'s effect and its locked balance by
/// `locked_change`; returns the row to insert, stamped with the wallet's new time.
async fn update_balance<'a>(
    conn: &mut AsyncPgConnection,
    wallet: &Wallet,
    row: &NewRow<'a>,
    locked_change: Decimal,
) -> Result<NewEntry<'a>, LedgerError> {
    let balances = row.balances(wallet.balance);
    // Every credit, whatever its type (a settlement, a refund, a reversal), is held to the
    // same ceiling as a deposit: beyond it sums would no longer be exact.
    let ceiling = crate::ledger::money::max_balance_at(row.scale);
    if row.balance_change() > Decimal::ZERO && balances.1 > ceiling {
        return Err(LedgerError::InvalidAmount(format!(
            "the credit would take the balance above the maximum of {ceiling}"
        )));
    }
    let at: DateTime<Utc> = diesel::update(wallets::table.find(wallet.id))
        .set((
            wallets::balance.eq(Scaled(balances.1)),
            wallets::locked_balance.eq(wallets::locked_balance + Scaled(locked_change)),
            wallets::updated_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                "GREATEST(clock_timestamp(), updated_at)",
            )),
        ))
        .returning(wallets::updated_at)
        .get_result(conn)
        .await?;
    Ok(row.entry(wallet.id, balances, at))
}

/// `n` journal row ids, ascending, for rows that must name each other in one insert.
pub async fn allocate_ids(conn: &AsyncPgConnection, n: usize) -> Result<Vec<i64>, LedgerError> {
    ids_from(
        conn,
        &[
            "ARRAY(SELECT nextval(pg_get_serial_sequence('transactions', 'id'))
                     FROM generate_series(1, ",
            "))",
        ],
        n,
    )
    .await
}

/// `n` hold ids, ascending, for the holds a batch may authorise (their events name them
/// in the same insert round trip).
pub async fn allocate_hold_ids(
    conn: &AsyncPgConnection,
    n: usize,
) -> Result<Vec<i64>, LedgerError> {
    ids_from(
        conn,
        &[
            "ARRAY(SELECT nextval(pg_get_serial_sequence('holds', 'id'))
                     FROM generate_series(1, ",
            "))",
        ],
        n,
    )
    .await
}

/// `n` values of the sequence `pieces` draws from (its text fixed, so kept prepared),
/// ascending.
async fn ids_from(
    mut conn: &AsyncPgConnection,
    pieces: &'static [&'static str],
    n: usize,
) -> Result<Vec<i64>, LedgerError> {
    use crate::ledger::fixed_sql::{Bind, Fixed};
    use diesel::sql_types::{Array, BigInt};
    let count = i64::try_from(n).map_err(|_| LedgerError::Internal("too many ids".into()))?;
    let mut ids: Vec<i64> = diesel::select(Fixed::<Array<BigInt>>::new(
        pieces,
        vec![Bind::BigInt(count)],
    ))
    .get_result(&mut conn)
    .await?;
    ids.sort_unstable();
    Ok(ids)
}

// Predicates spelled exactly as in the partial indexes that serve them, with literals
// rather than bind parameters: a prepared statement's generic plan (used after a few
// executions) can only use a partial index whose predicate it can prove from the query
// text, and with `type <> $1` it cannot — it scanned the whole journal instead.

/// Rows keyed by a client's idempotency key, unique per wallet (`transactions_tx_hash_key`).
pub fn keyed_by_client() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql(keyed_by_client_sql!())
}

/// The predicate of [`keyed_by_client`] as a literal, for `concat!` into fixed SQL text.
macro_rules! keyed_by_client_sql {
    () => {
        "transactions.hold_id IS NULL \
         AND NOT (transactions.hold AND transactions.type = 'DEPOSIT') \
         AND transactions.counterpart_id IS NULL"
    };
}
use keyed_by_client_sql;

/// Holds still in flight (`transactions_open_holds_idx`).
pub fn open_hold() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql("transactions.hold AND transactions.status IN ('PENDING', 'PROCESSING')")
}

/// The movement (not a posting) recorded on `wallet_id` under a client's idempotency key,
/// if any. Keys are scoped to the wallet: the same key on another wallet is another
/// movement.
pub async fn find_by_key(
    conn: &mut AsyncPgConnection,
    wallet_id: i64,
    key: &str,
) -> Result<Option<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::wallet_id.eq(wallet_id))
        .filter(transactions::tx_hash.eq(key))
        // Chain deposits are keyed by network and hash instead.
        .filter(keyed_by_client())
        .select(JournalEntry::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The movements recorded under any of `keys`, each a wallet and a key (see
/// [`find_by_key`]).
pub async fn find_by_keys(
    mut conn: &AsyncPgConnection,
    keys: &[(i64, &str)],
) -> Result<Vec<JournalEntry>, LedgerError> {
    use crate::ledger::fixed_sql::{Bind, Fixed};
    let (wallets, texts): (Vec<i64>, Vec<String>) =
        keys.iter().map(|&(w, k)| (w, k.to_owned())).unzip();
    // One probe of the unique key per pair. (`wallet_id = ANY(…) AND tx_hash = ANY(…)` is
    // a cross product of the lists, and with a young table's stale statistics Postgres 15
    // matched only the wallets in the index and filtered the keys: every lookup read all
    // of a busy wallet's rows.)
    let pairs = Fixed::<diesel::sql_types::Bool>::new(
        &[
            "transactions.id = ANY (ARRAY(
                SELECT transactions.id
                  FROM unnest(",
            "::bigint[], ",
            concat!(
                "::text[]) AS k (wallet_id, tx_hash)
                  JOIN transactions
                    ON transactions.wallet_id = k.wallet_id AND transactions.tx_hash = k.tx_hash
                 WHERE ",
                keyed_by_client_sql!(),
                "))"
            ),
        ],
        vec![Bind::BigInts(wallets), Bind::Texts(texts)],
    );
    Ok(transactions::table
        .filter(pairs)
        .select(JournalEntry::as_select())
        .load(&mut conn)
        .await?)
}

/// The journaled deposit (a hold, or a credit from before holds) of the chain transfer
/// named `name` now. A token deposit named by its block's log index before answers to the
/// name resolved for it only (see [`crate::chain::deposit_names`]).
pub async fn find_chain_deposit(
    conn: &mut AsyncPgConnection,
    network: &str,
    name: &str,
) -> Result<Option<JournalEntry>, LedgerError> {
    if let Some(found) = chain_deposits_named(conn, network, &[name.to_owned()])
        .await?
        .into_iter()
        .next()
    {
        return Ok(Some(found));
    }
    if !name.contains(':') {
        return Ok(None);
    }
    Ok(transactions::table
        .inner_join(legacy_token_deposits::table)
        .filter(legacy_token_deposits::network.eq(network))
        .filter(legacy_token_deposits::name.eq(name))
        .select(JournalEntry::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The deposits recorded under any of `names` (not those named before under an old name
/// that may be another log's name now).
pub async fn chain_deposits_named(
    conn: &mut AsyncPgConnection,
    network: &str,
    names: &[String],
) -> Result<Vec<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::network.eq(network))
        .filter(transactions::chain_tx_hash.eq_any(names))
        .filter(transactions::type_.eq(TransactionType::Deposit))
        .filter(transactions::hold_id.is_null())
        .filter(diesel::dsl::not(diesel::dsl::exists(
            legacy_token_deposits::table
                .filter(legacy_token_deposits::hold_id.eq(transactions::id)),
        )))
        .select(JournalEntry::as_select())
        .load(conn)
        .await?)
}

/// Journal rows by id (rows the caller was already allowed to see: the holds that postings
/// settle).
pub async fn entries_by_ids(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<Vec<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::id.eq_any(ids))
        .select(JournalEntry::as_select())
        .load(conn)
        .await?)
}

/// The postings that settle each of `hold_ids`, oldest first.
pub async fn settlements_of(
    conn: &mut AsyncPgConnection,
    hold_ids: &[i64],
) -> Result<Vec<JournalEntry>, LedgerError> {
    Ok(transactions::table
        .filter(transactions::hold_id.eq_any(hold_ids))
        .order((transactions::created_at, transactions::id))
        .select(JournalEntry::as_select())
        .load(conn)
        .await?)
}
