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
#[derive(Clone)]
pub struct PgPool(Pool<AsyncPgConnection>);

impl PgPool {
    /// A connection, waiting for one to be free (up to the pool's wait timeout).
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        Ok(PooledConn {
            conn: Some(self.0.get().await?),
            in_transaction: false,
        })
    }

    pub fn status(&self) -> deadpool::Status {
        self.0.status()
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
}

impl PooledConn {
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
        if let Some(mut conn) = self.conn.take()
            && (self.in_transaction || conn.is_broken())
        {
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

/// Builds the connection pool. Every connection runs under `limits` and reports its
/// statements to `counter`.
pub fn build_pool(
    url: &str,
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
    config.custom_setup = Box::new(move |url: &str| -> BoxFuture<_> {
        let counter = counter.clone();
        let url = url.to_owned();
        async move {
            use diesel_async::SimpleAsyncConnection;
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(&limits.sql())
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            conn.set_instrumentation(counter.instrumentation());
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::new_with_config(url, config);
    let pool = Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?;
    Ok(PgPool(pool))
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
            ]
            .iter()
            .any(|m| message.contains(m))
        }
        _ => false,
    }
}

/// How many times a transaction that failed transiently is attempted in all.
pub const MAX_ATTEMPTS: u32 = 8;

/// Backoff before attempt `attempt` (1-based) of a retried transaction: short, growing,
/// jittered so that racing retries spread out.
pub fn retry_backoff(attempt: u32) -> Duration {
    let base_us = 200u64 << attempt.min(8);
    Duration::from_micros(base_us + rand::random_range(0..base_us))
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> bool {
    use diesel_async::RunQueryDsl;
    let Ok(mut conn) = pool.get().await else {
        return false;
    };
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .is_ok()
}
