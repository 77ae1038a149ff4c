//! The GraphQL API: schema assembly and the helpers resolvers share.
//!
//! Resolvers stay thin: decode ids and arguments, check the caller, call one ledger
//! function, wrap the result.

pub mod error;
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::app::AppState;
use crate::auth::Viewer;
use crate::db::PooledConn;
use crate::ledger::{LedgerError, Scope};

pub use mutation::Mutation;
pub use query::Query;
pub use subscription::Subscription;

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Limits applied to every operation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 16,
            max_complexity: 5000,
        }
    }
}

/// The schema without runtime data: for exporting the SDL.
pub fn schema_builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query, Mutation, Subscription)
}

pub fn build_schema(state: AppState, limits: Limits) -> AppSchema {
    schema_builder()
        .data(state)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .extension(ExecutionMarker)
        .finish()
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

pub(crate) async fn conn(ctx: &Context<'_>) -> async_graphql::Result<PooledConn> {
    state(ctx)
        .pool
        .get()
        .await
        .map_err(|e| LedgerError::from(e).into())
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
