//! Assembling a running service from configuration: database, pool, schema, keys.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::TokenKeys;
use crate::custody::{Custody, SeedSource};
use crate::db::{self, PgPool, QueryCounter};
use crate::events::{EventBus, Listener, ListenerConfig};
use crate::graphql::{self, AppSchema, Limits};
use crate::ledger::CurrencyRegistry;

/// What resolvers need: shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub currencies: Arc<CurrencyRegistry>,
    /// Statements sent to Postgres by the pool (for metrics and tests).
    pub queries: QueryCounter,
    /// Ledger events of every process, fanned out to this process's subscribers.
    pub events: EventBus,
    /// The HD master key: derives crypto addresses.
    pub custody: Arc<Custody>,
}

/// Everything needed to start one service instance.
#[derive(Clone, Debug)]
pub struct AppConfig {
    pub database_url: String,
    pub pool_size: usize,
    pub jwt_secret: String,
    pub limits: Limits,
    pub request_timeout: Duration,
    /// Concurrent subscriptions one websocket connection may hold.
    pub max_subscriptions: usize,
    pub seed: SeedSource,
}

/// A service instance: the router is built from it by [`crate::http::router`].
#[derive(Clone)]
pub struct App {
    pub state: AppState,
    pub schema: AppSchema,
    pub tokens: TokenKeys,
    pub request_timeout: Duration,
    pub max_subscriptions: usize,
    /// Stops when the last clone of the app is dropped.
    pub listener: Arc<Listener>,
}

impl App {
    /// Creates the database if missing, applies migrations (under an advisory lock, so
    /// several processes may start at once), and builds the pool and schema.
    pub async fn start(config: &AppConfig) -> anyhow::Result<App> {
        let custody = Arc::new(Custody::load(&config.seed)?);
        db::ensure_database(&config.database_url).await?;
        let applied = db::run_migrations(&config.database_url).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied migrations");
        }
        let queries = QueryCounter::default();
        let pool = db::build_pool(&config.database_url, config.pool_size, queries.clone())?;
        let currencies = {
            let mut conn = pool.get().await?;
            Arc::new(CurrencyRegistry::load(&mut conn).await?)
        };
        let events = EventBus::default();
        let listener = Listener::spawn(ListenerConfig::new(&config.database_url), events.clone());
        // Subscriptions opened from now on see every event committed from now on.
        if !listener.wait_listening(Duration::from_secs(10)).await {
            tracing::warn!("the event listener is not connected yet; subscriptions wait for it");
        }
        let state = AppState {
            pool,
            currencies,
            queries,
            events,
            custody,
        };
        let schema = graphql::build_schema(state.clone(), config.limits);
        Ok(App {
            state,
            schema,
            tokens: TokenKeys::new(config.jwt_secret.as_bytes()),
            request_timeout: config.request_timeout,
            max_subscriptions: config.max_subscriptions,
            listener: Arc::new(listener),
        })
    }
}
