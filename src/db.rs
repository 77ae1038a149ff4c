//! Database plumbing: create the database if missing, apply embedded migrations under an
//! advisory lock, build the connection pool, and run transactions with retry.

use std::str::FromStr;

use anyhow::Context as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Arbitrary but fixed key of the advisory lock that serialises migrations when several
/// processes start at once.
const MIGRATION_LOCK_KEY: i64 = 0x7761_6c6c_6574; // "wallet"

/// The connection pool. Connections it hands out are [`PooledConn`]s.
///
/// When one of its connections is found broken (the server went away: it crashed, was
/// restarted, or failed over), every connection made before that moment is presumed
/// broken too and is closed instead of handed out: the first failure costs one request,
/// not one per idle connection, and new connections go to whichever server now answers
/// as the URL asks (the new primary).
#[derive(Clone)]
pub struct PgPool {
    pool: Pool<AsyncPgConnection>,
    /// When a broken connection was last seen.
    broken_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl PgPool {
    /// A connection, waiting for one to be free (up to the pool's wait timeout).
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        loop {
            let conn = self.pool.get().await?;
            let broken_at = *self.broken_at.lock().unwrap_or_else(|e| e.into_inner());
            if broken_at.is_some_and(|at| Object::metrics(&conn).created < at) {
                drop(Object::take(conn));
                continue;
            }
            return Ok(PooledConn {
                conn: Some(conn),
                in_transaction: false,
                broken_at: self.broken_at.clone(),
            });
        }
    }

    pub fn status(&self) -> deadpool::Status {
        self.pool.status()
    }
}

pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

/// A pooled connection. One dropped inside a transaction — its future was cancelled — is
/// closed instead of returned: parked in the pool, its transaction would keep its locks
/// (and its snapshot) until the pool happened to hand it out again. Closing it makes
/// Postgres roll the transaction back at once.
pub struct PooledConn {
    conn: Option<Object<AsyncPgConnection>>,
    /// A transaction begun with a plain `BEGIN` statement (which diesel's transaction
    /// manager does not see) and not known to be ended.
    in_transaction: bool,
    /// The pool's mark of the last broken connection: set when this one is.
    broken_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl PooledConn {
    /// Closes the connection and every other made before it: its server refused to write
    /// (it is, or was made, read-only), so new connections must find the primary.
    pub fn discard(mut self) {
        if let Some(conn) = self.conn.take() {
            *self.broken_at.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now());
            drop(Object::take(conn));
        }
    }

    /// Says whether a transaction begun and ended by hand (`BEGIN` … `COMMIT` sent as
    /// statements, to pipeline them with others) is open: one dropped while open is
    /// closed, like one dropped inside a diesel transaction.
    pub fn set_in_transaction(&mut self, open: bool) {
        self.in_transaction = open;
    }
}

impl std::ops::Deref for PooledConn {
    type Target = AsyncPgConnection;
    fn deref(&self) -> &AsyncPgConnection {
        self.conn.as_ref().expect("a connection until dropped")
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.conn.as_mut().expect("a connection until dropped")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        use diesel_async::pooled_connection::PoolableConnection;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.is_broken() {
            tracing::debug!("a broken connection: closing the ones made before it too");
            *self.broken_at.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now());
            drop(Object::take(conn));
        } else if self.in_transaction {
            tracing::debug!("closing a connection dropped inside a transaction");
            drop(Object::take(conn));
        }
    }
}

/// Limits every pooled session runs under, so that no statement, lock wait or forgotten
/// transaction holds a wallet for long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// How long a statement waits for a row lock before giving up (`lock_timeout`).
    pub lock_timeout: Duration,
    /// How long one statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
    /// How long a session may sit idle inside a transaction before Postgres ends it
    /// (`idle_in_transaction_session_timeout`).
    pub idle_in_transaction_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(10),
        }
    }
}

impl SessionLimits {
    /// The `SET`s for a new session (zero: no limit, as in Postgres).
    fn sql(&self) -> String {
        let ms = |d: Duration| d.as_millis();
        format!(
            "SET lock_timeout = {}; SET statement_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}",
            ms(self.lock_timeout),
            ms(self.statement_timeout),
            ms(self.idle_in_transaction_timeout)
        )
    }
}

/// Counts statements sent to Postgres by the pool's connections (exported as a metric, and
/// used by tests to prove that DataLoader batching keeps query counts constant).
#[derive(Clone, Debug, Default)]
pub struct QueryCounter(Arc<AtomicU64>);

impl QueryCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn instrumentation(&self) -> impl Instrumentation {
        let counter = self.0.clone();
        move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { .. } = event {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Creates the database named in `url` if it does not exist yet. Safe to race: a
/// concurrent creator's success counts as ours.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let config = tokio_postgres::Config::from_str(url).context(
        "DATABASE_URL is not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
    )?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Ok(()); // defaults to the user's database, which exists or cannot be made
    };
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(tokio_postgres::NoTls).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to {}: {e}. Set DATABASE_URL to a server that answers \
             (postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
            describe_server(&config)
        )
    })?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(&name));
        match client.batch_execute(&sql).await {
            Ok(()) => tracing::info!(database = %name, "created database"),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// "PostgreSQL at HOST:PORT (database D, user U)" — never the password.
pub fn describe_server(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432 (the default)".to_owned()
    } else {
        hosts.join(", ")
    };
    format!(
        "PostgreSQL at {hosts} (database {}, user {})",
        config.get_dbname().unwrap_or("(the user's)"),
        config.get_user().unwrap_or("(the system user's)")
    )
}

/// The TCP address of `url`'s first host (resolved), if it names one.
pub fn server_address(url: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs as _;
    use tokio_postgres::config::Host;
    let config = tokio_postgres::Config::from_str(url)?;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    Ok(match config.get_hosts().first() {
        Some(Host::Tcp(name)) => (name.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next()),
        _ => None,
    })
}

/// Double-quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Applies pending embedded migrations, holding an advisory lock so that concurrent starts
/// apply each migration once. Returns the versions applied by this call.
pub async fn run_migrations(url: &str) -> anyhow::Result<Vec<String>> {
    let url = url.to_owned();
    // diesel_migrations is synchronous: run it on a plain thread (the wrapper drives the
    // async connection on its own runtime there), whatever runtime flavour called us.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(migrate_blocking(&url));
    });
    rx.await?
}

fn migrate_blocking(url: &str) -> anyhow::Result<Vec<String>> {
    use diesel::connection::{Connection, SimpleConnection};
    let mut conn = <AsyncConnectionWrapper<AsyncPgConnection> as Connection>::establish(url)?;
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"));
    conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))?;
    result
}

/// How the service connects: `url`'s settings, with what following a failover needs
/// where the URL says nothing — a bounded attempt per host (a host that is down is passed
/// over, not waited on), keepalives that notice a server gone without a word, and a bound
/// on data the server has not acknowledged. A URL may name several hosts
/// (`postgres://u@h1:5432,h2:5432/db?target_session_attrs=read-write`): each new
/// connection goes to the first that answers as asked, so after a failover new
/// connections reach the new primary.
pub fn connection_config(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut config = tokio_postgres::Config::from_str(url).context(
        "DATABASE_URL is not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE)",
    )?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(30));
    }
    // tokio-postgres's default (two hours) is the kernel's: far too late to notice.
    if config.get_keepalives_idle() >= Duration::from_secs(2 * 3600) {
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
    }
    Ok(config)
}

/// One connection made with `config`, as diesel's async connection.
pub async fn connect(
    config: &tokio_postgres::Config,
) -> Result<AsyncPgConnection, diesel::ConnectionError> {
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// Builds the connection pool. Every connection runs under `limits` and reports its
/// statements to `counter`.
pub fn build_pool(
    url: &str,
    size: usize,
    limits: SessionLimits,
    counter: QueryCounter,
) -> anyhow::Result<PgPool> {
    build_pool_with(connection_config(url)?, url, size, limits, counter)
}

/// Like [`build_pool`], connecting with `config` (`label` names it in errors: never
/// shown with a password).
pub fn build_pool_with(
    connection: tokio_postgres::Config,
    label: &str,
    size: usize,
    limits: SessionLimits,
    counter: QueryCounter,
) -> anyhow::Result<PgPool> {
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    // No test query at every checkout (a round trip per request and per batch): a
    // connection whose socket closed, or that was left inside a transaction, is still
    // refused, and one that died silently fails its next statement, which every caller
    // treats as the database being unavailable (and the retry takes a fresh connection).
    config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
    let connection = Arc::new(connection);
    config.custom_setup = Box::new(move |_url: &str| -> BoxFuture<_> {
        let counter = counter.clone();
        let connection = connection.clone();
        async move {
            use diesel_async::SimpleAsyncConnection;
            let mut conn = connect(&connection).await?;
            conn.batch_execute(&limits.sql())
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            conn.set_instrumentation(counter.instrumentation());
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::new_with_config(label, config);
    let pool = Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?;
    Ok(PgPool {
        pool,
        broken_at: Arc::default(),
    })
}

/// Whether a failed transaction may succeed when simply run again.
pub fn is_transient(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        // SQLSTATE 40P01 has no kind of its own in diesel (nor does diesel expose the
        // SQLSTATE): the server's message names it.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            info.message().contains("deadlock detected")
        }
        _ => false,
    }
}

/// Whether a statement failed because the database could not serve it now — the
/// connection is gone, the server is shutting down, or a lock wait or the statement
/// itself ran out of time — rather than because of what it asked. Said of a statement
/// inside a transaction, the transaction did not commit.
pub fn is_unavailable(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        // A replica's query cancelled by replay: 40001, but no transaction of ours to rerun.
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, info)
            if info.message().contains(CONFLICT_WITH_RECOVERY) =>
        {
            true
        }
        // 55P03 (lock timeout), 57014 (statement timeout), 57P01..03 and 25P03 (session
        // ended by the server): diesel gives them no kind of their own.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            [
                "lock timeout",
                "statement timeout",
                "could not obtain lock",
                "terminating connection",
                "the database system is",
                "idle-in-transaction timeout",
                // A standby, or a server made read-only: the write went nowhere.
                READ_ONLY,
                RECOVERY,
                // A replica's query cancelled by replay (some conflicts have codes of
                // their own).
                CONFLICT_WITH_RECOVERY,
            ]
            .iter()
            .any(|m| message.contains(m))
        }
        _ => false,
    }
}

/// What a standby says when it cancels a query that conflicts with replay.
const CONFLICT_WITH_RECOVERY: &str = "conflict with recovery";
/// What Postgres says when a write reaches a read-only session (SQLSTATE 25006).
const READ_ONLY: &str = "read-only transaction";
/// What a standby says to a statement that would write.
const RECOVERY: &str = "during recovery";

/// Whether `message` (an error's text) says the server would not write: a connection to
/// it is of no use for money movements.
pub fn refused_as_read_only(message: &str) -> bool {
    message.contains(READ_ONLY) || message.contains(RECOVERY)
}

/// How many times a transaction that failed transiently is attempted in all.
pub const MAX_ATTEMPTS: u32 = 8;

/// Backoff before attempt `attempt` (1-based) of a retried transaction: short, growing,
/// jittered so that racing retries spread out.
pub fn retry_backoff(attempt: u32) -> Duration {
    let base_us = 200u64 << attempt.min(8);
    Duration::from_micros(base_us + rand::random_range(0..base_us))
}

/// A transaction that refuses to run where a movement's write would be refused (a
/// standby, a server or session made read-only) and writes to the WAL — a transactional
/// message, no table — so that its commit is flushed and waits for a synchronous standby
/// exactly like a movement's. (A transaction that only takes an id writes no WAL of its
/// own, and Postgres commits it without waiting for the standby.)
const COMMIT_PROBE: &str = "BEGIN; DO $$ BEGIN \
    IF current_setting('transaction_read_only')::bool THEN \
        RAISE EXCEPTION 'cannot execute a write in a read-only transaction' \
            USING ERRCODE = 'read_only_sql_transaction'; \
    END IF; \
    PERFORM pg_logical_emit_message(true, 'wallet.readiness', ''); \
END $$; COMMIT";

/// Whether a transaction that writes (it is given a transaction id, so its commit is
/// flushed and, with synchronous replication, waits for the standby) commits through
/// `pool`: what every money movement needs. Refused by a standby or a read-only server.
pub async fn commit_probe(pool: &PgPool) -> bool {
    use diesel_async::SimpleAsyncConnection;
    let Ok(mut conn) = pool.get().await else {
        return false;
    };
    conn.set_in_transaction(true);
    let committed = conn.batch_execute(COMMIT_PROBE).await.is_ok();
    conn.set_in_transaction(!committed);
    committed
}

/// The server's current WAL write position: at or after every commit acknowledged before
/// it was asked (commits are flushed before they are acknowledged). `None` when it could
/// not be had.
pub async fn wal_position(pool: &PgPool) -> Option<crate::replicas::Lsn> {
    #[derive(diesel::QueryableByName)]
    struct Position {
        #[diesel(sql_type = diesel::sql_types::Text)]
        lsn: String,
    }
    use diesel_async::RunQueryDsl;
    let mut conn = pool.get().await.ok()?;
    let row: Position = diesel::sql_query("SELECT pg_current_wal_lsn()::text AS lsn")
        .get_result(&mut *conn)
        .await
        .ok()?;
    row.lsn.parse().ok()
}
