//! Limits on the shape of an operation and the rate of mutations, checked once the
//! document is parsed and before anything runs.
//!
//! async-graphql limits depth, complexity, recursion and directives; it does not limit
//! how many fields an operation selects in total or at its root. Root fields of a query run
//! concurrently, so 2,500 aliased `node(id:)` lookups would be 2,500 resolvers at once
//! (each within the complexity limit). Root mutation fields are what the rate limit counts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{Request, ServerError, ServerResult, Variables};

use super::error::{BAD_USER_INPUT, RATE_LIMITED, server_error};
use crate::auth::Viewer;
use crate::limits::MutationLimiter;

/// The limits [`Guard`] enforces.
#[derive(Clone)]
pub struct Guard {
    pub max_root_fields: usize,
    pub max_fields: usize,
    pub limiter: Option<Arc<MutationLimiter>>,
}

impl ExtensionFactory for Guard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GuardRun {
            guard: self.clone(),
            operation_name: Mutex::new(None),
        })
    }
}

/// One request's run of the guard.
struct GuardRun {
    guard: Guard,
    operation_name: Mutex<Option<String>>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for GuardRun {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *self
            .operation_name
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = request.operation_name.clone();
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
        let name = self
            .operation_name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(operation) = selected(&doc, name.as_deref()) else {
            return Ok(doc); // validation names the problem
        };
        let shape = Shape::of(&doc, &operation.selection_set.node);
        if shape.root > self.guard.max_root_fields {
            return Err(refusal(format!(
                "the operation selects {} root fields; at most {} are allowed (aliases count)",
                shape.root, self.guard.max_root_fields
            )));
        }
        if shape.total > self.guard.max_fields {
            return Err(refusal(format!(
                "the operation selects {} fields; at most {} are allowed",
                shape.total, self.guard.max_fields
            )));
        }
        if operation.ty == OperationType::Mutation
            && let (Some(limiter), Some(viewer)) = (&self.guard.limiter, ctx.data_opt::<Viewer>())
            && let Err(wait) = limiter.check(viewer, shape.root.try_into().unwrap_or(u32::MAX))
        {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut error = ServerError::new(
                format!("too many mutations: try again in {seconds} s"),
                None,
            );
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", RATE_LIMITED);
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("retryAfter", seconds.max(1));
            return Err(error);
        }
        Ok(doc)
    }
}

fn refusal(message: String) -> ServerError {
    server_error(BAD_USER_INPUT, message)
}

/// The operation a request runs: the named one, or the only one.
fn selected<'a>(
    doc: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    match &doc.operations {
        DocumentOperations::Single(op) => Some(&op.node),
        DocumentOperations::Multiple(ops) => match name {
            Some(name) => ops.get(name).map(|op| &op.node),
            None if ops.len() == 1 => ops.values().next().map(|op| &op.node),
            None => None,
        },
    }
}

/// Fields an operation selects, with fragments expanded where they are spread.
struct Shape {
    root: usize,
    total: usize,
}

impl Shape {
    fn of(doc: &ExecutableDocument, root: &SelectionSet) -> Shape {
        let mut shape = Shape { root: 0, total: 0 };
        let mut spreading = HashSet::new();
        shape.walk(doc, root, true, &mut spreading);
        shape
    }

    fn walk<'d>(
        &mut self,
        doc: &'d ExecutableDocument,
        set: &'d SelectionSet,
        at_root: bool,
        spreading: &mut HashSet<&'d str>,
    ) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => {
                    self.total += 1;
                    if at_root {
                        self.root += 1;
                    }
                    self.walk(doc, &field.node.selection_set.node, false, spreading);
                }
                Selection::InlineFragment(fragment) => {
                    self.walk(doc, &fragment.node.selection_set.node, at_root, spreading);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    // A fragment that spreads itself is refused by validation; do not
                    // recurse forever before it gets there.
                    let Some(fragment) = doc.fragments.get(name) else {
                        continue;
                    };
                    if !spreading.insert(name) {
                        continue;
                    }
                    self.walk(doc, &fragment.node.selection_set.node, at_root, spreading);
                    spreading.remove(name);
                }
            }
            if self.total > 100_000 {
                return; // far past any limit: stop counting
            }
        }
    }
}
