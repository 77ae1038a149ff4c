//! Any text as a GraphQL document: the pre-scan, then (if it passes) the parser and the
//! measure must return — never panic, overflow the stack or take long — and whatever they
//! let through stays within the limits.
#![no_main]

use async_graphql::parser::parse_query;
use libfuzzer_sys::fuzz_target;
use wallet::graphql::document::{DocumentLimits, measure, prescan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = DocumentLimits::default();
    if prescan(text, &limits).is_err() {
        return;
    }
    // The parser runs on what the pre-scan passed: this is where a stack overflow would be.
    let Ok(doc) = parse_query(text) else {
        return;
    };
    if let Ok(measured) = measure(&doc, None, &limits) {
        assert!(measured.fields <= limits.max_expanded);
        assert!(measured.root_fields <= measured.fields);
    }
});
