//! Response fields in the order the query selected them.
//!
//! GraphQL orders a response object's fields as its selection set orders them (fragments
//! expanded where they are spread). async-graphql resolves sibling fields concurrently and
//! inserts each as it completes, so a slow field moves to the end: `{ a: x, b: y }` can
//! come back as `{ b, a }`. Clients that compare or display responses field by field
//! (snapshot tests, GraphiQL, generated code reading positionally) see the difference.
//!
//! This extension keeps the parsed document of each request and puts every object of the
//! response (and of each subscription event) back in selection order. Response keys are
//! ordered by their first appearance; a type condition is not evaluated, so when two
//! fragments on different types select the same fields in different orders, the first
//! fragment's order is used for both.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextSubscribe,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Selection, SelectionSet,
};
use async_graphql::{Name, Request, Response, ServerResult, Value, Variables};
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;

use super::document::Prepared;

/// Installs [`FieldOrderExtension`] on every request.
pub struct FieldOrder;

impl ExtensionFactory for FieldOrder {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(FieldOrderExtension::default())
    }
}

/// What one request needs to restore its order: its document and chosen operation.
#[derive(Default)]
pub struct FieldOrderExtension {
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    operation_name: Option<String>,
    document: Option<Arc<ExecutableDocument>>,
}

impl Seen {
    fn restore(&self, response: &mut Response) {
        if let Some(document) = &self.document {
            restore(document, self.operation_name.as_deref(), &mut response.data);
        }
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for FieldOrderExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let request = next.run(ctx, request).await?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.operation_name = request.operation_name.clone();
        }
        Ok(request)
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        // The prepared document is this one, already shared: no copy needed.
        let shared = match ctx.data_opt::<Arc<Prepared>>() {
            Some(prepared) if prepared.query == query => prepared.document.clone(),
            _ => Arc::new(document.clone()),
        };
        if let Ok(mut seen) = self.seen.lock() {
            seen.document = Some(shared);
        }
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        if let Ok(seen) = self.seen.lock() {
            seen.restore(&mut response);
        }
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let seen = self.seen.clone();
        next.run(ctx, stream)
            .map(move |mut response| {
                if let Ok(seen) = seen.lock() {
                    seen.restore(&mut response);
                }
                response
            })
            .boxed()
    }
}

/// Reorders `data`, the result of `operation_name` in `document`, into selection order.
pub fn restore(document: &ExecutableDocument, operation_name: Option<&str>, data: &mut Value) {
    let operation = match (&document.operations, operation_name) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => match operations.get(name) {
            Some(operation) => operation,
            None => return,
        },
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            match operations.values().next() {
                Some(operation) => operation,
                None => return,
            }
        }
        (DocumentOperations::Multiple(_), None) => return,
    };
    reorder(document, &[&operation.node.selection_set.node], data);
}

/// Puts `value`'s fields (and, in turn, theirs) in the order of `selections`: the
/// selection sets that apply to it (one per field of the parent with its response key).
fn reorder(document: &ExecutableDocument, selections: &[&SelectionSet], value: &mut Value) {
    match value {
        Value::List(items) => {
            for item in items {
                reorder(document, selections, item);
            }
        }
        Value::Object(fields) => {
            let mut keys: Vec<(&Name, Vec<&SelectionSet>)> = Vec::with_capacity(fields.len());
            let mut spread = HashSet::new();
            for set in selections {
                collect(document, set, &mut keys, &mut spread);
            }
            let in_order = fields.len() == keys.len()
                && fields
                    .keys()
                    .zip(&keys)
                    .all(|(have, (want, _))| have == *want);
            if !in_order {
                let mut rest = std::mem::take(fields);
                for (key, _) in &keys {
                    if let Some(value) = rest.swap_remove(*key) {
                        fields.insert((*key).clone(), value);
                    }
                }
                // Keys the document does not explain (none expected) keep their place at
                // the end rather than being lost.
                fields.extend(rest);
            }
            for (key, sets) in &keys {
                if sets.is_empty() {
                    continue;
                }
                if let Some(value) = fields.get_mut(*key) {
                    reorder(document, sets, value);
                }
            }
        }
        _ => {}
    }
}

/// Appends the response keys `set` selects, in order (first appearance wins), each with
/// the sub-selection sets of its fields.
fn collect<'d>(
    document: &'d ExecutableDocument,
    set: &'d SelectionSet,
    keys: &mut Vec<(&'d Name, Vec<&'d SelectionSet>)>,
    spread: &mut HashSet<&'d Name>,
) {
    for selection in &set.items {
        match &selection.node {
            Selection::Field(field) => {
                let key = &field.node.response_key().node;
                let sub = &field.node.selection_set.node;
                let position = match keys.iter().position(|(k, _)| *k == key) {
                    Some(position) => position,
                    None => {
                        keys.push((key, Vec::new()));
                        keys.len() - 1
                    }
                };
                if !sub.items.is_empty() {
                    keys[position].1.push(sub);
                }
            }
            Selection::FragmentSpread(fragment) => {
                let name = &fragment.node.fragment_name.node;
                if spread.insert(name)
                    && let Some(definition) = document.fragments.get(name)
                {
                    collect(document, &definition.node.selection_set.node, keys, spread);
                }
            }
            Selection::InlineFragment(fragment) => {
                collect(document, &fragment.node.selection_set.node, keys, spread);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(pairs: &[(&str, Value)]) -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (Name::new(k), v.clone()))
                .collect(),
        )
    }

    fn keys(value: &Value) -> Vec<String> {
        match value {
            Value::Object(fields) => fields.keys().map(|k| k.to_string()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn restores_selection_order_through_lists_aliases_and_fragments() {
        let document = async_graphql::parser::parse_query(
            "query Q { b: x { ...F } a { z y } }
             fragment F on T { q ... on T { p q } r }",
        )
        .unwrap();
        let inner = object(&[("r", Value::Null), ("p", Value::Null), ("q", Value::Null)]);
        let mut data = object(&[
            (
                "a",
                Value::List(vec![object(&[("y", Value::Null), ("z", Value::Null)])]),
            ),
            ("b", inner),
        ]);
        restore(&document, Some("Q"), &mut data);
        assert_eq!(keys(&data), ["b", "a"]);
        let Value::Object(fields) = &data else {
            unreachable!()
        };
        assert_eq!(keys(&fields["b"]), ["q", "p", "r"]);
        let Value::List(items) = &fields["a"] else {
            unreachable!()
        };
        assert_eq!(keys(&items[0]), ["z", "y"]);
    }
}
