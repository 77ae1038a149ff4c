//! Text a client sends: checked before it reaches a query, a batch or a log line.
//!
//! Postgres refuses U+0000 in text (so one such key would fail a whole batch's lookup),
//! and control characters have no business in keys, references or addresses. Every text
//! input is bounded so that nothing a client sends costs more than its limit to handle.

use super::LedgerError;

/// Longest idempotency key (`idempotencyKey`; `txHash`, its deprecated name).
pub const MAX_KEY_LEN: usize = 128;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 255;
/// Longest user id.
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest chain address or hash (a bech32 address has at most 90 characters).
pub const MAX_ADDRESS_LEN: usize = 128;
/// Longest currency code or network name.
pub const MAX_CODE_LEN: usize = 32;

/// Why `value` is not acceptable text of at most `max` characters, if it is not.
pub fn text_problem(value: &str, max: usize) -> Option<String> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Some(format!(
            "must not contain control characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    let len = value.chars().count();
    if len > max {
        return Some(format!("must be at most {max} characters (got {len})"));
    }
    None
}

/// `value` as the input named `field`: at most `max` characters, none of them control
/// characters.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), LedgerError> {
    match text_problem(value, max) {
        Some(problem) => Err(LedgerError::BadInput(format!("{field} {problem}"))),
        None => Ok(()),
    }
}

/// An idempotency key (named `field` in the API): 1 to [`MAX_KEY_LEN`] characters, not
/// blank, no control characters.
pub fn check_key(field: &str, key: &str) -> Result<(), LedgerError> {
    check_text(field, key, MAX_KEY_LEN)?;
    if key.trim().is_empty() {
        return Err(LedgerError::BadInput(format!(
            "{field} must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    Ok(())
}

/// What every keyed fiat movement (deposit, withdrawal, transfer) checks before touching
/// the database: its key (named `key_field` in the API), its description, a positive
/// amount.
pub fn check_movement(
    key_field: &str,
    key: &str,
    description: Option<&str>,
    amount: rust_decimal::Decimal,
) -> Result<(), LedgerError> {
    check_key(key_field, key)?;
    if let Some(d) = description {
        check_text("description", d, MAX_DESCRIPTION_LEN)?;
    }
    if amount <= rust_decimal::Decimal::ZERO {
        return Err(LedgerError::InvalidAmount(format!(
            "the amount must be greater than zero, got {amount}"
        )));
    }
    Ok(())
}

/// Longest business reference.
pub const MAX_REFERENCE_LEN: usize = 128;
/// Most keys in a movement's metadata.
pub const MAX_METADATA_KEYS: usize = 32;
/// Longest metadata key and value.
pub const MAX_METADATA_KEY_LEN: usize = 64;
pub const MAX_METADATA_VALUE_LEN: usize = 512;
/// Largest metadata, as compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;

/// A movement's business reference and metadata: a reference of 1 to
/// [`MAX_REFERENCE_LEN`] characters; metadata a JSON object of at most
/// [`MAX_METADATA_KEYS`] string values, [`MAX_METADATA_BYTES`] in all. No control
/// characters anywhere.
pub fn check_annotation(
    reference: Option<&str>,
    metadata: Option<&serde_json::Value>,
) -> Result<(), LedgerError> {
    if let Some(reference) = reference {
        check_text("reference", reference, MAX_REFERENCE_LEN)?;
        if reference.trim().is_empty() {
            return Err(LedgerError::BadInput("reference must not be blank".into()));
        }
    }
    let Some(metadata) = metadata else {
        return Ok(());
    };
    let object = metadata
        .as_object()
        .ok_or_else(|| LedgerError::BadInput("metadata must be a JSON object".into()))?;
    if object.len() > MAX_METADATA_KEYS {
        return Err(LedgerError::BadInput(format!(
            "metadata may have at most {MAX_METADATA_KEYS} keys (got {})",
            object.len()
        )));
    }
    for (key, value) in object {
        check_text("a metadata key", key, MAX_METADATA_KEY_LEN)?;
        if key.is_empty() {
            return Err(LedgerError::BadInput(
                "metadata keys must not be empty".into(),
            ));
        }
        let value = value.as_str().ok_or_else(|| {
            LedgerError::BadInput(format!("metadata value of {key:?} must be a string"))
        })?;
        check_text(
            &format!("metadata value of {key:?}"),
            value,
            MAX_METADATA_VALUE_LEN,
        )?;
    }
    let size = metadata.to_string().len();
    if size > MAX_METADATA_BYTES {
        return Err(LedgerError::BadInput(format!(
            "metadata must be at most {MAX_METADATA_BYTES} bytes as JSON (got {size})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_control_characters_and_long_text() {
        assert!(check_key("idempotencyKey", "bank-ref-0001").is_ok());
        assert!(check_key("idempotencyKey", "naïve ключ 鍵").is_ok());
        for bad in ["", "   ", "a\0b", "\u{7}", "line\nbreak", "tab\t", "\u{85}"] {
            assert!(check_key("idempotencyKey", bad).is_err(), "{bad:?}");
        }
        assert!(check_key("idempotencyKey", &"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(check_key("idempotencyKey", &"k".repeat(MAX_KEY_LEN + 1)).is_err());
        // Characters, not bytes.
        assert!(
            check_text(
                "description",
                &"é".repeat(MAX_DESCRIPTION_LEN),
                MAX_DESCRIPTION_LEN
            )
            .is_ok()
        );
        let ok = serde_json::json!({"invoice": "INV-1", "note": "ünïcode"});
        assert!(check_annotation(Some("stmt-2026-11"), Some(&ok)).is_ok());
        for bad in [
            serde_json::json!(["a"]),
            serde_json::json!({"n": 1}),
            serde_json::json!({"nested": {"a": "b"}}),
            serde_json::json!({"": "empty key"}),
            serde_json::json!({"k": "nul\u{0}"}),
            serde_json::json!({"k": "v".repeat(MAX_METADATA_VALUE_LEN + 1)}),
            serde_json::Value::Object(
                (0..=MAX_METADATA_KEYS)
                    .map(|i| (format!("k{i}"), "v".into()))
                    .collect(),
            ),
            serde_json::Value::Object(
                (0..10)
                    .map(|i| (format!("k{i}"), "v".repeat(500).into()))
                    .collect(),
            ),
        ] {
            assert!(check_annotation(None, Some(&bad)).is_err(), "{bad}");
        }
        assert!(check_annotation(Some(" "), None).is_err());
        assert!(check_annotation(Some(&"r".repeat(MAX_REFERENCE_LEN + 1)), None).is_err());
        match check_text("description", "a\0", 10) {
            Err(LedgerError::BadInput(m)) => assert!(m.contains("U+0000"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
