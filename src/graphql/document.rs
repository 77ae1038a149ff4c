//! What a GraphQL document may cost before anything works on it.
//!
//! async-graphql's parser recurses into list and object values without a limit (a value
//! nested about 1,500 deep overflows a worker thread's stack and aborts the process), and
//! its checks after parsing — recursion depth, directives per field, validation — walk
//! every path of the document with fragment spreads expanded, never remembering a fragment
//! they have already sized: `fragment F0 on Query { ...F1 ...F1 ...F1 }` thirty deep is
//! 3³⁰ visits from 1.4 KB. All of that is synchronous, so no deadline can cut it short.
//!
//! Every document therefore goes through two linear steps first, whatever the transport:
//!
//! 1. [`prescan`]: one pass over the raw text, outside strings and comments — its length,
//!    the nesting of `{`, `[` and `(` together, its tokens, fragment definitions and
//!    spreads. The nesting bound ([`PARSER_SAFE_NESTING`] at most) is far below what the
//!    parser survives on a worker thread's stack: a test parses the deepest document
//!    allowed, of every kind of nesting, on a thread with a quarter of that stack.
//! 2. [`measure`]: after parsing, each fragment is sized once (in dependency order, never
//!    recursively through spreads), cycles and unknown fragments are refused, and the size
//!    of the whole document with every spread expanded is capped. Every later walk of
//!    async-graphql's (depth, directives, validation, complexity) is bounded by that size.
//!
//! Refusals are `BAD_USER_INPUT` and cost microseconds for anything the body limit allows.
//!
//! Clients send the same few documents again and again, with other variables; parsing
//! (a PEG parser) and measuring them was a large part of what a small mutation cost the
//! server. So documents that passed are kept, prepared, in a small cache keyed by their
//! text, operation name and the limits they passed ([`DocumentCache`]); a request that
//! sends one of them again gets a copy of the parsed document without either step.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock, Mutex};

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{Request, ServerError};

use super::error::{BAD_USER_INPUT, server_error};

/// The deepest nesting of `{`, `[` and `(` a document may have, whatever is configured:
/// proven safe for the parser by `the_deepest_document_allowed_parses_on_a_small_stack`.
pub const PARSER_SAFE_NESTING: usize = 128;

/// Bounds on the text and shape of one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DocumentLimits {
    /// Bytes of query text.
    pub max_bytes: usize,
    /// Nesting of `{`, `[` and `(` together (capped at [`PARSER_SAFE_NESTING`]).
    pub max_nesting: usize,
    /// Tokens (names, punctuation, numbers, strings) outside comments.
    pub max_tokens: usize,
    /// Fragment definitions.
    pub max_fragments: usize,
    /// Fragment spreads and inline fragments, as written.
    pub max_spreads: usize,
    /// Selections (fields, spreads, inline fragments) of every operation and fragment
    /// definition with each spread replaced by what it spreads.
    pub max_expanded: usize,
}

impl Default for DocumentLimits {
    fn default() -> Self {
        DocumentLimits {
            max_bytes: 64 * 1024,
            max_nesting: 64,
            max_tokens: 4_000,
            max_fragments: 256,
            max_spreads: 1_024,
            max_expanded: 5_000,
        }
    }
}

/// What [`prepare`] learnt of the operation a request runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    /// Query, mutation or subscription; `None` when the request names no operation of its
    /// document (validation says so).
    pub operation: Option<OperationType>,
    /// Root fields of that operation, aliases and spread fragments included.
    pub root_fields: usize,
    /// Fields of that operation, every spread expanded.
    pub fields: usize,
}

/// Pre-scans, parses and measures the request's document, leaving the parsed document in
/// the request (async-graphql does not parse it again). The measure is left in the
/// request's data too, with the parsed document shared ([`Prepared`]), so preparing a
/// request again (the schema's guard does, for callers other than the transports) costs
/// a lookup.
pub fn prepare(request: &mut Request, limits: &DocumentLimits) -> Result<Measured, ServerError> {
    if let Some(prepared) = prepared(request)
        && prepared.limits == *limits
        && prepared.query == request.query
        && prepared.operation_name == request.operation_name
    {
        return Ok(prepared.measured);
    }
    let cache = &*DOCUMENTS;
    if let Some(prepared) = cache.get(request, limits) {
        request.set_parsed_query(prepared.document.as_ref().clone());
        let measured = prepared.measured;
        request.data.insert(prepared);
        return Ok(measured);
    }
    let refuse = |why: String| server_error(BAD_USER_INPUT, why);
    prescan(&request.query, limits).map_err(refuse)?;
    let document = Arc::new(request.parsed_query()?.clone());
    let measured = measure(&document, request.operation_name.as_deref(), limits).map_err(refuse)?;
    let prepared = Arc::new(Prepared {
        query: request.query.clone(),
        operation_name: request.operation_name.clone(),
        limits: *limits,
        document,
        measured,
    });
    cache.put(&prepared);
    request.data.insert(prepared);
    Ok(measured)
}

/// What [`prepare`] left in the request.
pub fn prepared(request: &Request) -> Option<&Arc<Prepared>> {
    request
        .data
        .get(&std::any::TypeId::of::<Arc<Prepared>>())
        .and_then(|d| d.downcast_ref::<Arc<Prepared>>())
}

/// A document that passed [`prescan`] and [`measure`] under `limits`, parsed.
#[derive(Debug)]
pub struct Prepared {
    pub query: String,
    operation_name: Option<String>,
    limits: DocumentLimits,
    /// Shared with the cache and with the extensions that need the document after
    /// async-graphql took its own copy.
    pub document: Arc<ExecutableDocument>,
    pub measured: Measured,
}

/// The process's cache of prepared documents.
static DOCUMENTS: LazyLock<DocumentCache> = LazyLock::new(DocumentCache::new);

/// Prepared documents by text, operation name and limits, least recently used dropped
/// first. Only short documents are kept, and at most [`DocumentCache::MAX_TEXT`] bytes of
/// text in all (a parsed document takes a few times its text), so a client sending a
/// new document each time costs the cache a bounded amount of memory and everyone else
/// only their own documents' next parse.
pub struct DocumentCache {
    /// Keyed by a hash with a per-process random key (so nobody can aim collisions); an
    /// entry is used only if its text, operation name and limits are the request's.
    entries: Mutex<(lru::LruCache<u64, Arc<Prepared>>, usize)>,
    hasher: std::collections::hash_map::RandomState,
}

impl DocumentCache {
    /// The longest document kept.
    pub const MAX_DOCUMENT: usize = 4 * 1024;
    /// Bytes of text kept in all.
    pub const MAX_TEXT: usize = 1024 * 1024;
    const MAX_ENTRIES: usize = 4096;

    fn new() -> DocumentCache {
        DocumentCache {
            entries: Mutex::new((
                lru::LruCache::new(
                    NonZeroUsize::new(Self::MAX_ENTRIES).unwrap_or(NonZeroUsize::MIN),
                ),
                0,
            )),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(&self, query: &str, operation_name: Option<&str>, limits: &DocumentLimits) -> u64 {
        let mut state = self.hasher.build_hasher();
        query.hash(&mut state);
        operation_name.hash(&mut state);
        limits.hash(&mut state);
        std::hash::Hasher::finish(&state)
    }

    fn get(&self, request: &Request, limits: &DocumentLimits) -> Option<Arc<Prepared>> {
        if request.query.len() > Self::MAX_DOCUMENT {
            return None;
        }
        let key = self.key(&request.query, request.operation_name.as_deref(), limits);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let found = entries.0.get(&key)?;
        (found.query == request.query
            && found.operation_name == request.operation_name
            && found.limits == *limits)
            .then(|| found.clone())
    }

    fn put(&self, prepared: &Arc<Prepared>) {
        if prepared.query.len() > Self::MAX_DOCUMENT {
            return;
        }
        let key = self.key(
            &prepared.query,
            prepared.operation_name.as_deref(),
            &prepared.limits,
        );
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (entries, text) = &mut *guard;
        if let Some((_, old)) = entries.push(key, prepared.clone()) {
            *text -= old.query.len();
        }
        *text += prepared.query.len();
        while *text > Self::MAX_TEXT {
            match entries.pop_lru() {
                Some((_, old)) => *text -= old.query.len(),
                None => break,
            }
        }
    }
}

/// One pass over the text: refuses it, saying why, if it is longer, deeper or has more
/// tokens, fragments or spreads than `limits` allow. Strings (block strings too) and
/// comments are skipped, so brackets inside them do not count.
pub fn prescan(text: &str, limits: &DocumentLimits) -> Result<(), String> {
    if text.len() > limits.max_bytes {
        return Err(format!(
            "the document is {} bytes; at most {} are allowed",
            text.len(),
            limits.max_bytes
        ));
    }
    let max_nesting = limits.max_nesting.min(PARSER_SAFE_NESTING);
    let bytes = text.as_bytes();
    let (mut at, mut depth, mut tokens, mut fragments, mut spreads) = (0, 0usize, 0, 0, 0);
    while at < bytes.len() {
        let byte = bytes[at];
        at += 1;
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => continue,
            b'#' => {
                at = skip_while(bytes, at, |b| b != b'\n' && b != b'\r');
                continue;
            }
            b'"' => at = skip_string(bytes, at),
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max_nesting {
                    return Err(format!(
                        "the document nests braces, brackets and parentheses more than \
                         {max_nesting} deep"
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'.' if bytes[at..].starts_with(b"..") => {
                at += 2;
                spreads += 1;
            }
            b if b == b'_' || b.is_ascii_alphabetic() => {
                let end = skip_while(bytes, at, |b| b == b'_' || b.is_ascii_alphanumeric());
                // A field named `fragment` counts too: erring towards refusal is safe.
                if &bytes[at - 1..end] == b"fragment" {
                    fragments += 1;
                }
                at = end;
            }
            b if b == b'-' || b.is_ascii_digit() => {
                at = skip_while(bytes, at, |b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-')
                });
            }
            _ => {} // other punctuation (`:`, `$`, `@`, `!`, `=`, `|`, `&`) and stray bytes
        }
        tokens += 1;
        if tokens > limits.max_tokens {
            return Err(format!(
                "the document has more than {} tokens",
                limits.max_tokens
            ));
        }
    }
    if fragments > limits.max_fragments {
        return Err(format!(
            "the document defines {fragments} fragments; at most {} are allowed",
            limits.max_fragments
        ));
    }
    if spreads > limits.max_spreads {
        return Err(format!(
            "the document has {spreads} fragment spreads and inline fragments; at most {} \
             are allowed",
            limits.max_spreads
        ));
    }
    Ok(())
}

fn skip_while(bytes: &[u8], from: usize, keep: impl Fn(u8) -> bool) -> usize {
    bytes[from..]
        .iter()
        .position(|&b| !keep(b))
        .map_or(bytes.len(), |n| from + n)
}

/// The position after the string whose opening quote ends just before `at` (or the end
/// of a line or of the text, for a string left open: the parser will refuse it).
fn skip_string(bytes: &[u8], mut at: usize) -> usize {
    if bytes[at..].starts_with(b"\"\"") {
        // A block string: it ends at `"""`; `\"""` is an escaped triple quote.
        at += 2;
        while at < bytes.len() {
            if bytes[at..].starts_with(b"\\\"\"\"") {
                at += 4;
            } else if bytes[at..].starts_with(b"\"\"\"") {
                return at + 3;
            } else {
                at += 1;
            }
        }
        return at;
    }
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return at + 1,
            b'\n' | b'\r' => return at,
            _ => at += 1,
        }
    }
    bytes.len()
}

/// The size of a selection set with every spread expanded.
#[derive(Clone, Copy, Debug, Default)]
struct Size {
    /// Fields, inline fragments and spreads.
    selections: usize,
    fields: usize,
    /// Fields at the set's own level (through inline fragments and spreads there).
    top_fields: usize,
}

impl Size {
    fn add(&mut self, other: Size, at_top: bool) {
        self.selections = self.selections.saturating_add(other.selections);
        self.fields = self.fields.saturating_add(other.fields);
        if at_top {
            self.top_fields = self.top_fields.saturating_add(other.top_fields);
        }
    }
}

/// A selection set sized without following spreads, and the spreads it makes.
#[derive(Default)]
struct Local<'d> {
    size: Size,
    /// Spread fragments by name, and whether each is at the set's own level.
    spreads: Vec<(&'d str, bool)>,
}

impl<'d> Local<'d> {
    fn of(set: &'d SelectionSet) -> Local<'d> {
        let mut local = Local::default();
        local.walk(set, true);
        local
    }

    /// Recursion is bounded by the nesting the pre-scan allowed.
    fn walk(&mut self, set: &'d SelectionSet, at_top: bool) {
        for selection in &set.items {
            self.size.selections += 1;
            match &selection.node {
                Selection::Field(field) => {
                    self.size.fields += 1;
                    if at_top {
                        self.size.top_fields += 1;
                    }
                    self.walk(&field.node.selection_set.node, false);
                }
                Selection::InlineFragment(inline) => {
                    self.walk(&inline.node.selection_set.node, at_top);
                }
                Selection::FragmentSpread(spread) => {
                    self.spreads
                        .push((spread.node.fragment_name.node.as_str(), at_top));
                }
            }
        }
    }

    fn expanded(&self, sizes: &HashMap<&str, Size>) -> Size {
        let mut size = self.size;
        for (name, at_top) in &self.spreads {
            size.add(sizes.get(name).copied().unwrap_or_default(), *at_top);
        }
        size
    }
}

/// Sizes the document with every spread expanded — each fragment once, in dependency
/// order — and refuses cycles, unknown fragments and documents beyond `max_expanded`.
/// Returns the measure of the operation `operation_name` selects.
pub fn measure(
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
    limits: &DocumentLimits,
) -> Result<Measured, String> {
    let locals: HashMap<&str, Local> = doc
        .fragments
        .iter()
        .map(|(name, fragment)| (name.as_str(), Local::of(&fragment.node.selection_set.node)))
        .collect();
    let operations: Vec<(Option<&str>, &OperationDefinition, Local)> = operations(doc)
        .map(|(name, op)| (name, op, Local::of(&op.selection_set.node)))
        .collect();
    for (name, _) in locals
        .values()
        .chain(operations.iter().map(|(_, _, local)| local))
        .flat_map(|local| &local.spreads)
    {
        if !locals.contains_key(name) {
            return Err(format!("unknown fragment \"{name}\""));
        }
    }

    // Kahn's algorithm over "fragment spreads fragment": a fragment is sized once all the
    // fragments it spreads are; what is left unsized at the end lies on a cycle.
    let mut waiting_on: HashMap<&str, usize> = HashMap::new();
    let mut spread_by: HashMap<&str, Vec<&str>> = HashMap::new();
    for (&name, local) in &locals {
        waiting_on.insert(name, local.spreads.len());
        for (spread, _) in &local.spreads {
            spread_by.entry(spread).or_default().push(name);
        }
    }
    let mut ready: Vec<&str> = waiting_on
        .iter()
        .filter(|&(_, &n)| n == 0)
        .map(|(&name, _)| name)
        .collect();
    let mut sizes: HashMap<&str, Size> = HashMap::with_capacity(locals.len());
    while let Some(name) = ready.pop() {
        sizes.insert(name, locals[name].expanded(&sizes));
        for &user in spread_by.get(name).into_iter().flatten() {
            if let Some(n) = waiting_on.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    ready.push(user);
                }
            }
        }
    }
    if let Some(name) = locals.keys().find(|name| !sizes.contains_key(*name)) {
        return Err(format!(
            "fragment \"{name}\" spreads itself, directly or not"
        ));
    }

    let mut total = sizes
        .values()
        .fold(0usize, |sum, size| sum.saturating_add(size.selections));
    let mut selected = None;
    let only = operations.len() == 1;
    for (name, op, local) in &operations {
        let size = local.expanded(&sizes);
        total = total.saturating_add(size.selections);
        let chosen = match (operation_name, name) {
            (Some(wanted), Some(name)) => wanted == *name,
            (Some(_), None) => false,
            (None, _) => only,
        };
        if chosen {
            selected = Some(Measured {
                operation: Some(op.ty),
                root_fields: size.top_fields,
                fields: size.fields,
            });
        }
    }
    if total > limits.max_expanded {
        return Err(format!(
            "the document selects more than {} fields and fragments once its fragments \
             are expanded",
            limits.max_expanded
        ));
    }
    Ok(selected.unwrap_or_default())
}

/// The document's operations, with their names.
fn operations(
    doc: &ExecutableDocument,
) -> impl Iterator<Item = (Option<&str>, &OperationDefinition)> {
    let (single, multiple) = match &doc.operations {
        DocumentOperations::Single(op) => (Some(&op.node), None),
        DocumentOperations::Multiple(ops) => (None, Some(ops)),
    };
    single.map(|op| (None, op)).into_iter().chain(
        multiple
            .into_iter()
            .flatten()
            .map(|(name, op)| (Some(name.as_str()), &op.node)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DocumentLimits {
        DocumentLimits::default()
    }

    /// A document prepared once is served from the cache under the same limits only:
    /// stricter limits see it scanned and refused as if it were new.
    #[test]
    fn the_cache_never_lets_a_document_past_stricter_limits() {
        let text = "query CacheProbe { a { b { c { d } } } }";
        let loose = limits();
        let mut first = Request::new(text);
        let measured = prepare(&mut first, &loose).expect("passes the default limits");
        let mut again = Request::new(text);
        assert_eq!(prepare(&mut again, &loose).ok(), Some(measured));
        assert!(
            prepared(&again).is_some(),
            "the second request is served from the cache"
        );
        let strict = DocumentLimits {
            max_nesting: 2,
            ..loose
        };
        let mut strict_request = Request::new(text);
        let refused = prepare(&mut strict_request, &strict).expect_err("too deep for 2");
        assert!(refused.message.contains("nests"), "{}", refused.message);
        // Another operation name of the same text is measured on its own.
        let mut named = Request::new(text).operation_name("Missing");
        assert_eq!(
            prepare(&mut named, &loose).ok().map(|m| m.operation),
            Some(None)
        );
    }

    /// However many different documents arrive, the cache keeps at most its bound of text.
    #[test]
    fn the_cache_holds_a_bounded_amount_of_text() {
        let cache = DocumentCache::new();
        let filler = "x".repeat(DocumentCache::MAX_DOCUMENT - 64);
        for n in 0..(2 * DocumentCache::MAX_TEXT / DocumentCache::MAX_DOCUMENT) {
            let text = format!("{{ a{n} # {filler}\n}}");
            let mut request = Request::new(text.as_str());
            let document = Arc::new(request.parsed_query().expect("parses").clone());
            cache.put(&Arc::new(Prepared {
                query: text,
                operation_name: None,
                limits: limits(),
                document,
                measured: Measured::default(),
            }));
        }
        let (entries, text) = &*cache.entries.lock().expect("not poisoned");
        assert!(*text <= DocumentCache::MAX_TEXT, "{text} bytes kept");
        assert_eq!(
            *text,
            entries.iter().map(|(_, e)| e.query.len()).sum::<usize>()
        );
        // Too long to keep at all.
        let long = format!("{{ a # {}\n}}", "x".repeat(DocumentCache::MAX_DOCUMENT));
        let mut request = Request::new(long.as_str());
        prepare(&mut request, &limits()).expect("passes");
        assert!(DOCUMENTS.get(&request, &limits()).is_none());
    }

    fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
        format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
    }

    #[test]
    fn nesting_counts_every_bracket_outside_strings_and_comments() {
        let max = limits().max_nesting;
        // A list value as deep as allowed passes; one more level is refused.
        let list = |depth| format!("{{ a(x: {}) }}", nested("[", "1", "]", depth));
        assert!(prescan(&list(max - 2), &limits()).is_ok());
        assert!(prescan(&list(max - 1), &limits()).is_err());
        let object = |depth| format!("{{ a(x: {}) }}", nested("{a:", "1", "}", depth));
        assert!(prescan(&object(max - 2), &limits()).is_ok());
        assert!(prescan(&object(max - 1), &limits()).is_err());
        // Brackets in strings, block strings and comments are text.
        let quoted = format!(
            "{{ a(x: \"{}\", y: \"\"\"{} \\\"\"\" ]]]\"\"\") # {}\n }}",
            "[".repeat(1000),
            "{".repeat(1000),
            "(".repeat(1000)
        );
        assert!(prescan(&quoted, &limits()).is_ok(), "{quoted}");
        // An escaped quote does not end a string.
        assert!(
            prescan(
                &format!("{{ a(x: \"\\\" {}\") }}", "[".repeat(500)),
                &limits()
            )
            .is_ok()
        );
        // Nor can configuration raise the bound past what the parser survives.
        let generous = DocumentLimits {
            max_nesting: 100_000,
            ..limits()
        };
        assert!(prescan(&list(PARSER_SAFE_NESTING + 1), &generous).is_err());
    }

    #[test]
    fn tokens_fragments_spreads_and_length_are_counted() {
        let small = DocumentLimits {
            max_tokens: 11,
            max_fragments: 1,
            max_spreads: 2,
            max_bytes: 100,
            ..limits()
        };
        assert!(prescan("{ a b c }", &small).is_ok());
        assert!(prescan("{ a b c d e f g h i j }", &small).is_err());
        assert!(prescan("{ ...F } fragment F on Q { a }", &small).is_ok());
        assert!(prescan("fragment A on Q { a } fragment B on Q { a }", &small).is_err());
        assert!(prescan("{ ...F ... on Q { a } ...G }", &small).is_err());
        assert!(prescan(&format!("{{ a(x: \"{}\") }}", "x".repeat(100)), &small).is_err());
    }

    fn measured(query: &str) -> Result<Measured, String> {
        let doc = async_graphql::parser::parse_query(query).map_err(|e| e.to_string())?;
        measure(&doc, None, &limits())
    }

    #[test]
    fn fields_are_counted_with_fragments_expanded() {
        let m = measured(
            "query { a { b c } ...F ... on Query { d } } fragment F on Query { e f { ...G } } \
             fragment G on F { g h }",
        )
        .unwrap();
        assert_eq!(m.operation, Some(OperationType::Query));
        // a, d (inline at root), e, f (from F at root): 4 root fields.
        assert_eq!(m.root_fields, 4);
        // a b c d e f g h.
        assert_eq!(m.fields, 8);
    }

    #[test]
    fn the_named_operation_is_measured() {
        let doc = async_graphql::parser::parse_query(
            "query A { a } mutation B { b c } subscription C { d }",
        )
        .unwrap();
        let m = measure(&doc, Some("B"), &limits()).unwrap();
        assert_eq!(
            (m.operation, m.root_fields),
            (Some(OperationType::Mutation), 2)
        );
        assert_eq!(measure(&doc, None, &limits()).unwrap().operation, None);
        assert_eq!(measure(&doc, Some("Z"), &limits()).unwrap().operation, None);
    }

    #[test]
    fn an_exploding_fragment_chain_is_sized_without_expanding_it() {
        let mut query = String::from("query { ...F0 }");
        for i in 0..30 {
            query.push_str(&format!(
                " fragment F{i} on Query {{ ...F{n} ...F{n} ...F{n} }}",
                n = i + 1
            ));
        }
        query.push_str(" fragment F30 on Query { __typename }");
        let started = std::time::Instant::now();
        let refused = measured(&query).unwrap_err();
        assert!(refused.contains("more than"), "{refused}");
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn cycles_and_unknown_fragments_are_refused() {
        let cycle = measured("{ ...A } fragment A on Q { ...B } fragment B on Q { a ...A }");
        assert!(cycle.unwrap_err().contains("spreads itself"));
        let own = measured("{ ...A } fragment A on Q { a { ...A } }");
        assert!(own.unwrap_err().contains("spreads itself"));
        let unknown = measured("{ ...A } fragment B on Q { a }");
        assert!(unknown.unwrap_err().contains("unknown fragment"));
    }

    /// The proof behind [`PARSER_SAFE_NESTING`]: the deepest document any configuration
    /// allows, of each kind of nesting, parses on a thread with a quarter of a worker
    /// thread's stack (tokio's default is 2 MiB). Should the parser use more stack per
    /// level, this test aborts the process rather than passing.
    #[test]
    fn the_deepest_document_allowed_parses_on_a_small_stack() {
        let d = PARSER_SAFE_NESTING;
        let documents = [
            format!("{{ a(x: {}) }}", nested("[", "1", "]", d - 2)),
            format!("{{ a(x: {}) }}", nested("{a: ", "1", "}", d - 2)),
            format!("{{ a @include(if: {}) }}", nested("[", "true", "]", d - 2)),
            format!("query($v: T = {}) {{ a }}", nested("[", "1", "]", d - 2)),
            nested("{ a ", "", "}", d),
            format!("{{ a(x: {}) }}", nested("[{a: ", "1", "}]", (d - 2) / 2)),
        ];
        for doc in documents {
            assert!(
                prescan(
                    &doc,
                    &DocumentLimits {
                        max_nesting: d,
                        ..limits()
                    }
                )
                .is_ok()
            );
            std::thread::Builder::new()
                .stack_size(512 * 1024)
                .spawn(move || {
                    // Parsed or refused (the selection-set limit), never a crash.
                    let _ = async_graphql::parser::parse_query(&doc);
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }
}
