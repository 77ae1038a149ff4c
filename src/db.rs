//! Database plumbing: create the database if missing, apply embedded migrations under an
//! advisory lock, build the connection pool, and run transactions with retry.

use std::str::FromStr;
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

pub type PgPool = Pool<AsyncPgConnection>;
pub type PooledConn = Object<AsyncPgConnection>;

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
    let config = tokio_postgres::Config::from_str(url)?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Ok(()); // defaults to the user's database, which exists or cannot be made
    };
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(tokio_postgres::NoTls).await?;
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

/// Builds the connection pool. Every connection reports its statements to `counter`.
pub fn build_pool(url: &str, size: usize, counter: QueryCounter) -> anyhow::Result<PgPool> {
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.custom_setup = Box::new(move |url: &str| -> BoxFuture<_> {
        let counter = counter.clone();
        let url = url.to_owned();
        async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
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
    Ok(pool)
}

/// Whether a failed transaction may succeed when simply run again.
pub fn is_transient(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        // SQLSTATE 40P01 has no kind of its own in diesel.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            info.message().contains("deadlock detected")
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
