//! The `Decimal` scalar: exact amounts as JSON strings.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use rust_decimal::Decimal;

use crate::ledger::money;

/// An exact decimal number written as a JSON string, e.g. `"10.50"`. JSON numbers are
/// refused: they may have passed through binary floating point on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecimalScalar(pub Decimal);

/// An exact decimal number written as a JSON string, e.g. `"10.50"`. JSON numbers are
/// refused: they may have passed through binary floating point on the way.
#[Scalar(name = "Decimal")]
impl ScalarType for DecimalScalar {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(s) => money::parse_decimal(&s)
                .map(DecimalScalar)
                .map_err(InputValueError::custom),
            Value::Number(n) => Err(InputValueError::custom(format!(
                "Decimal values are strings: send \"{n}\" instead of the number {n}"
            ))),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(s) if money::parse_decimal(s).is_ok())
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

impl From<Decimal> for DecimalScalar {
    fn from(d: Decimal) -> Self {
        DecimalScalar(d)
    }
}
