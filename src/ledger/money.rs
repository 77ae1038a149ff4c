//! Exact amounts: parsing from their string form and checking them against a currency.

use rust_decimal::Decimal;

use super::{Currency, LedgerError, Wallet};

/// Significant digits that always fit a `Decimal` exactly (2^96 > 10^28).
const MAX_DIGITS: usize = 28;

/// Parses a plain decimal string (`-?digits(.digits)?`). Anything else — exponents,
/// underscores, `+`, spaces, more digits than fit exactly — is rejected, never rounded.
pub fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let digits_only = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(int) || !frac.is_none_or(digits_only) {
        return Err(format!(
            "{s:?} is not a decimal number (expected digits with an optional `.` and fraction, e.g. \"10.50\")"
        ));
    }
    let significant = int.trim_start_matches('0').len() + frac.map_or(0, str::len);
    if significant > MAX_DIGITS {
        return Err(format!(
            "{s:?} has more than {MAX_DIGITS} significant digits"
        ));
    }
    s.parse::<Decimal>().map_err(|e| format!("{s:?}: {e}"))
}

/// A NUMERIC computed by the database (its text), as a `Decimal` only if it is exactly
/// that: a sum over many rows can need more than 28 significant digits, and is then an
/// error naming `what`, never a rounded figure.
pub fn exact(text: &str, what: &str) -> Result<Decimal, LedgerError> {
    Decimal::from_str_exact(text).map_err(|_| {
        LedgerError::NotRepresentable(format!(
            "{what} is {text}: more than the 28 significant digits a Decimal holds"
        ))
    })
}

/// The largest balance a wallet of `currency` may hold: keeps every sum exact in
/// `Decimal` (28 significant digits) with one digit of headroom.
pub fn max_balance(currency: &Currency) -> Decimal {
    max_balance_at(currency.scale())
}

/// [`max_balance`] of a currency with `scale` decimals.
pub fn max_balance_at(scale: u32) -> Decimal {
    let int_digits = (MAX_DIGITS as u32 - 1).saturating_sub(scale);
    Decimal::from_i128_with_scale(10i128.pow(int_digits), 0)
}

/// Checks a money movement's amount against its currency and returns it at the currency's
/// scale (`10.5` USD becomes `10.50`). Trailing zeros beyond the scale are accepted
/// (`1.500` is exactly `1.50`); any other excess precision is an error, never rounded.
pub fn validate_amount(amount: Decimal, currency: &Currency) -> Result<Decimal, LedgerError> {
    if amount <= Decimal::ZERO {
        return Err(LedgerError::InvalidAmount(format!(
            "the amount must be greater than zero, got {amount}"
        )));
    }
    check_scale(amount, currency)?;
    if amount > max_balance(currency) {
        return Err(LedgerError::InvalidAmount(format!(
            "the amount exceeds the maximum of {} {}",
            max_balance(currency),
            currency.code
        )));
    }
    Ok(at_scale(amount, currency))
}

/// Refuses a debit of `needed` beyond what the wallet has available (funds locked by
/// withdrawals in flight do not count).
pub fn check_funds(wallet: &Wallet, needed: Decimal) -> Result<(), LedgerError> {
    let available = wallet.available_balance();
    if needed > available {
        return Err(LedgerError::InsufficientFunds {
            available,
            requested: needed,
        });
    }
    Ok(())
}

/// Refuses a credit that would take the balance above the currency's maximum.
pub fn check_credit(
    wallet: &Wallet,
    amount: Decimal,
    currency: &Currency,
) -> Result<(), LedgerError> {
    if wallet.balance + amount > max_balance(currency) {
        return Err(LedgerError::InvalidAmount(format!(
            "the credit would take the balance above the maximum of {} {}",
            max_balance(currency),
            currency.code
        )));
    }
    Ok(())
}

/// Rejects values with more decimals than the currency has.
pub fn check_scale(value: Decimal, currency: &Currency) -> Result<(), LedgerError> {
    if value.normalize().scale() > currency.scale() {
        return Err(LedgerError::InvalidAmount(format!(
            "{} allows at most {} decimal place{}, got {value}",
            currency.code,
            currency.scale(),
            if currency.scale() == 1 { "" } else { "s" },
        )));
    }
    Ok(())
}

/// The value written with exactly the currency's number of decimals (exact: callers have
/// checked that no precision is lost).
pub fn at_scale(value: Decimal, currency: &Currency) -> Decimal {
    let mut v = value;
    v.rescale(currency.scale());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::CurrencyKind;

    fn currency(code: &str, scale: i16) -> Currency {
        Currency::plain(code, CurrencyKind::Fiat, scale)
    }

    #[test]
    fn parses_only_plain_decimals() {
        assert_eq!(parse_decimal("10.50").unwrap().to_string(), "10.50");
        assert_eq!(parse_decimal("-0.01").unwrap().to_string(), "-0.01");
        assert_eq!(parse_decimal("7").unwrap().to_string(), "7");
        for bad in [
            "", "-", ".5", "5.", "1e3", "1_000", "+1", " 1", "1 ", "1.2.3", "0x10", "NaN", "١",
        ] {
            assert!(parse_decimal(bad).is_err(), "{bad:?} must be rejected");
        }
        // 28 significant digits fit exactly; 29 would be rounded by Decimal, so are refused.
        assert!(parse_decimal("0.1234567890123456789012345678").is_ok());
        assert!(parse_decimal("0.12345678901234567890123456789").is_err());
        assert!(parse_decimal("00000000000000000000000000000001.5").is_ok());
    }

    #[test]
    fn amounts_are_checked_against_the_currency_scale() {
        let usd = currency("USD", 2);
        let jpy = currency("JPY", 0);
        assert_eq!(
            validate_amount("10.5".parse().unwrap(), &usd)
                .unwrap()
                .to_string(),
            "10.50"
        );
        assert_eq!(
            validate_amount("1.500".parse().unwrap(), &usd)
                .unwrap()
                .to_string(),
            "1.50"
        );
        assert!(matches!(
            validate_amount("0.001".parse().unwrap(), &usd),
            Err(LedgerError::InvalidAmount(_))
        ));
        assert!(validate_amount("1.5".parse().unwrap(), &jpy).is_err());
        assert!(validate_amount(Decimal::ZERO, &usd).is_err());
        assert!(validate_amount("-1".parse().unwrap(), &usd).is_err());
        assert!(validate_amount(max_balance(&usd) + Decimal::ONE, &usd).is_err());
        let eth = currency("ETH", 18);
        assert_eq!(max_balance(&eth).to_string(), "1000000000");
        assert!(validate_amount("0.000000000000000001".parse().unwrap(), &eth).is_ok());
    }
}
