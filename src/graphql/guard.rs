//! Limits on the cost of an operation and on the rate of operations, checked before
//! anything runs.
//!
//! Before async-graphql parses a document, [`document::prepare`] bounds its text and,
//! once parsed, its size with fragments expanded (see that module for why). After that
//! async-graphql limits depth, complexity, recursion and directives; it does not limit how
//! many fields an operation selects in total or at its root. Root fields of a query run
//! concurrently, so 2,500 aliased `node(id:)` lookups would be 2,500 resolvers at once
//! (each within the complexity limit). Root mutation fields are what the mutation rate
//! limit counts; the complexity of queries and subscriptions is spent from a read budget
//! per caller.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
    NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{Request, ServerError, ServerResult, ValidationResult, Variables};

use super::document::{self, DocumentLimits, Measured};
use super::error::{BAD_USER_INPUT, RATE_LIMITED, server_error};
use crate::auth::Viewer;
use crate::limits::{MutationLimiter, QueryCostLimiter};

/// The limits [`Guard`] enforces.
#[derive(Clone)]
pub struct Guard {
    pub max_root_fields: usize,
    pub max_fields: usize,
    pub document: DocumentLimits,
    pub mutations: Option<Arc<MutationLimiter>>,
    pub read_cost: Option<Arc<QueryCostLimiter>>,
}

impl ExtensionFactory for Guard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GuardRun {
            guard: self.clone(),
            measured: Mutex::new(Measured::default()),
        })
    }
}

/// One request's run of the guard.
struct GuardRun {
    guard: Guard,
    /// The operation's measure, taken before parsing.
    measured: Mutex<Measured>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for GuardRun {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // The transports prepare requests already (to know their kind); this covers any
        // other caller of the schema, for the cost of a pre-scan.
        let measured = document::prepare(&mut request, &self.guard.document)?;
        *self.measured.lock().unwrap_or_else(|p| p.into_inner()) = measured;
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let measured = *self.measured.lock().unwrap_or_else(|p| p.into_inner());
        if measured.root_fields > self.guard.max_root_fields {
            return Err(refusal(format!(
                "the operation selects {} root fields; at most {} are allowed (aliases count)",
                measured.root_fields, self.guard.max_root_fields
            )));
        }
        if measured.fields > self.guard.max_fields {
            return Err(refusal(format!(
                "the operation selects {} fields; at most {} are allowed",
                measured.fields, self.guard.max_fields
            )));
        }
        if measured.operation == Some(OperationType::Mutation)
            && let (Some(limiter), Some(viewer)) = (&self.guard.mutations, ctx.data_opt::<Viewer>())
            && let Err(wait) =
                limiter.check(viewer, measured.root_fields.try_into().unwrap_or(u32::MAX))
        {
            return Err(rate_limited("too many mutations", wait));
        }
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        let measured = *self.measured.lock().unwrap_or_else(|p| p.into_inner());
        // Mutations have a rate of their own; reads spend what they cost.
        if measured.operation != Some(OperationType::Mutation)
            && let Some(budget) = &self.guard.read_cost
            && let Err(wait) = budget.spend(ctx.data_opt::<Viewer>(), result.complexity)
        {
            return Err(vec![rate_limited("too many queries", wait)]);
        }
        Ok(result)
    }
}

fn refusal(message: String) -> ServerError {
    server_error(BAD_USER_INPUT, message)
}

/// `RATE_LIMITED`, with the whole seconds to wait in `extensions.retryAfter` (the HTTP
/// transport turns it into 429 and `Retry-After`).
fn rate_limited(what: &str, wait: Duration) -> ServerError {
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut error = server_error(RATE_LIMITED, format!("{what}: try again in {seconds} s"));
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("retryAfter", seconds);
    error
}
