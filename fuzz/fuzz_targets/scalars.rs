//! Any JSON as a `Decimal` or `Metadata` argument: parsing returns, and what it accepts is
//! exact (a decimal prints back to the same value) and within the documented bounds.
#![no_main]

use async_graphql::{InputType, Value};
use libfuzzer_sys::fuzz_target;
use wallet::graphql::scalars::{DecimalScalar, MetadataScalar};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(DecimalScalar(amount)) =
            <DecimalScalar as InputType>::parse(Some(Value::String(text.to_owned())))
    {
        // Never rounded: the value reads back as itself.
        let again: rust_decimal::Decimal = amount.to_string().parse().expect("prints a decimal");
        assert_eq!(again, amount);
        assert_eq!(text.trim_start_matches('-').parse::<rust_decimal::Decimal>().ok().map(|d| d.abs()), Some(amount.abs()));
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(value) = Value::from_json(json) else {
        return;
    };
    if let Ok(MetadataScalar(metadata)) = <MetadataScalar as InputType>::parse(Some(value)) {
        let object = metadata.as_object().expect("metadata is an object");
        assert!(object.len() <= 32);
        assert!(object.values().all(serde_json::Value::is_string));
        assert!(metadata.to_string().len() <= 4096);
    }
});
