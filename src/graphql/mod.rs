//! The GraphQL API: schema assembly and the helpers resolvers share.
//!
//! Resolvers stay thin: decode ids and arguments, check the caller, call one ledger
//! function, wrap the result.

pub mod document;
pub mod error;
pub mod feed;
pub mod field_order;
pub mod guard;
pub mod holds;
pub mod ids;
pub mod loaders;
pub mod mutation;
pub mod pagination;
pub mod query;
pub mod scalars;
pub mod subscription;
pub mod types;
pub mod validators;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute};
use async_graphql::{Context, Response, Schema, SchemaBuilder};
use diesel_async::AsyncPgConnection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::AppState;
use crate::auth::Viewer;
use crate::db::{PgPool, PooledConn};
use crate::ledger::{LedgerError, Scope};
use crate::limits::{MutationLimiter, QueryCostLimiter, RateLimits};

pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Limits applied to every operation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_depth: usize,
    pub max_complexity: usize,
    /// Root fields (aliases included) of one operation.
    pub max_root_fields: usize,
    /// Fields of one operation, fragments expanded.
    pub max_fields: usize,
    /// Directives on one field.
    pub max_directives: usize,
    /// Database connections one request's resolvers may hold at once.
    pub request_connections: usize,
    /// Bounds on a document's text and shape, checked before async-graphql works on it.
    pub document: document::DocumentLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 16,
            max_complexity: 5000,
            max_root_fields: 20,
            max_fields: 500,
            max_directives: 4,
            request_connections: 2,
            document: document::DocumentLimits::default(),
        }
    }
}

/// The schema without runtime data: for exporting the SDL.
pub fn schema_builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query, Mutation, Subscription)
}

/// The running schema. `rates` limits root mutation fields and the cost of reads per
/// caller (`None`: no rate limits); without `introspection`, `__schema` and `__type` are
/// refused (production default).
pub fn build_schema(
    state: AppState,
    limits: Limits,
    rates: Option<RateLimits>,
    introspection: bool,
) -> AppSchema {
    let builder = schema_builder()
        .data(state)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_directives(limits.max_directives)
        .extension(guard::Guard {
            max_root_fields: limits.max_root_fields,
            max_fields: limits.max_fields,
            document: limits.document,
            mutations: rates.map(|r| Arc::new(MutationLimiter::new(r))),
            read_cost: rates.map(|r| Arc::new(QueryCostLimiter::new(r, limits.max_complexity))),
        })
        .extension(ExecutionMarker)
        .extension(field_order::FieldOrder);
    match introspection {
        true => builder.finish(),
        false => builder.disable_introspection().finish(),
    }
}

/// The schema as SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    schema_builder().finish().sdl_with_options(
        async_graphql::SDLExportOptions::new()
            .sorted_fields()
            .sorted_arguments()
            .sorted_enum_items(),
    )
}

pub(crate) fn state<'a>(ctx: &Context<'a>) -> &'a AppState {
    ctx.data_unchecked::<AppState>()
}

/// The authenticated caller, or `UNAUTHENTICATED`.
pub(crate) fn viewer<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Viewer> {
    ctx.data_opt::<Viewer>().ok_or_else(error::unauthenticated)
}

/// What the caller may see.
pub(crate) fn scope(ctx: &Context<'_>) -> async_graphql::Result<Scope> {
    let v = viewer(ctx)?;
    Ok(if v.is_operator() {
        Scope::All
    } else {
        Scope::Owner(v.user_id.clone())
    })
}

pub(crate) fn require_operator<'a>(
    ctx: &Context<'a>,
    action: &str,
) -> async_graphql::Result<&'a Viewer> {
    let v = viewer(ctx)?;
    if !v.is_operator() {
        return Err(error::forbidden(format!("only operators may {action}")));
    }
    Ok(v)
}

/// How long after its deadline an operation is cut off if its resolvers have not answered
/// (they answer by the deadline themselves; this is the backstop).
pub const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The error code and message for an operation cut off at its deadline. A mutation's work
/// goes on in its own task, so its outcome is unknown; a query changed nothing.
pub fn ran_out_of_time(mutation: bool) -> (&'static str, &'static str) {
    match mutation {
        true => (
            error::OUTCOME_UNKNOWN,
            "the request ran out of time: its movements may or may not have happened; \
             look them up by their keys, or send them again with the same keys",
        ),
        false => (
            error::UNAVAILABLE,
            "the request ran out of time; nothing was changed, try again",
        ),
    }
}

/// When the request must be answered by: set by the transport when the request arrives.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub tokio::time::Instant);

/// The request's deadline (operations sent without one, e.g. over a websocket, get the
/// request timeout from now).
pub(crate) fn deadline(ctx: &Context<'_>) -> tokio::time::Instant {
    ctx.data_opt::<Deadline>()
        .map(|d| d.0)
        .unwrap_or_else(|| tokio::time::Instant::now() + state(ctx).request_timeout)
}

/// The database connections one request (or one websocket connection) may use: its
/// resolvers hold at most `limit` at once, whatever the shape of the operation — root
/// fields of a query run concurrently, and without this a request with many aliases would
/// take every pooled connection. Queries use the read pool; money movements have their own.
#[derive(Clone)]
pub struct RequestDb {
    pool: PgPool,
    resolvers: Arc<Semaphore>,
}

impl RequestDb {
    pub fn new(pool: PgPool, limit: usize) -> Self {
        RequestDb {
            pool,
            resolvers: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn get(&self) -> Result<RequestConn, LedgerError> {
        let permit =
            self.resolvers.clone().acquire_owned().await.map_err(|_| {
                LedgerError::Internal("the request's connection budget closed".into())
            })?;
        let conn = self.pool.get().await?;
        Ok(RequestConn {
            conn,
            _permit: Some(permit),
        })
    }
}

/// A pooled connection counted against its request's budget until dropped.
pub struct RequestConn {
    conn: PooledConn,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for RequestConn {
    type Target = AsyncPgConnection;
    fn deref(&self) -> &AsyncPgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for RequestConn {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        &mut self.conn
    }
}

/// A read connection for a resolver, within the request's budget.
pub(crate) async fn conn(ctx: &Context<'_>) -> async_graphql::Result<RequestConn> {
    let conn = match ctx.data_opt::<RequestDb>() {
        Some(db) => db.get().await,
        // Executed without a transport (tools, tests): no budget to count against.
        None => state(ctx)
            .reads
            .get()
            .await
            .map(|conn| RequestConn {
                conn,
                _permit: None,
            })
            .map_err(LedgerError::from),
    };
    conn.map_err(Into::into)
}

/// Set by [`ExecutionMarker`] when an operation got past parsing and validation: the
/// transport answers 400 for requests that never started executing (GraphQL over HTTP).
#[derive(Clone, Debug, Default)]
pub struct ExecutionStarted(Arc<AtomicBool>);

impl ExecutionStarted {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct ExecutionMarker;

impl ExtensionFactory for ExecutionMarker {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ExecutionMarker)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ExecutionMarker {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        if let Some(marker) = ctx.data_opt::<ExecutionStarted>() {
            marker.0.store(true, Ordering::Relaxed);
        }
        next.run(ctx, operation_name).await
    }
}
