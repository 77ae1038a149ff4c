//! Text a client sends: checked before it reaches a query, a batch or a log line.
//!
//! Postgres refuses U+0000 in text (so one such key would fail a whole batch's lookup),
//! and control characters have no business in keys, references or addresses. Every text
//! input is bounded so that nothing a client sends costs more than its limit to handle.

use super::LedgerError;

/// Longest idempotency key (`txHash`, `idempotencyKey`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_control_characters_and_long_text() {
        assert!(check_key("txHash", "bank-ref-0001").is_ok());
        assert!(check_key("txHash", "naïve ключ 鍵").is_ok());
        for bad in ["", "   ", "a\0b", "\u{7}", "line\nbreak", "tab\t", "\u{85}"] {
            assert!(check_key("txHash", bad).is_err(), "{bad:?}");
        }
        assert!(check_key("txHash", &"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(check_key("txHash", &"k".repeat(MAX_KEY_LEN + 1)).is_err());
        // Characters, not bytes.
        assert!(
            check_text(
                "description",
                &"é".repeat(MAX_DESCRIPTION_LEN),
                MAX_DESCRIPTION_LEN
            )
            .is_ok()
        );
        match check_text("description", "a\0", 10) {
            Err(LedgerError::BadInput(m)) => assert!(m.contains("U+0000"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
