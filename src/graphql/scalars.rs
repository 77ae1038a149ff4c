//! The `Decimal` scalar: exact amounts as JSON strings.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use rust_decimal::Decimal;

use crate::ledger::{LedgerError, input, money};

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

/// A movement's metadata: a JSON object whose values are strings, at most 32 keys and
/// 4 KiB, e.g. `{"invoice": "INV-1042"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataScalar(pub serde_json::Value);

/// A JSON object whose values are strings (at most 32 keys of up to 64 characters, values
/// up to 512 characters, 4 KiB in all), e.g. `{"invoice": "INV-1042"}`.
#[Scalar(name = "Metadata")]
impl ScalarType for MetadataScalar {
    fn parse(value: Value) -> InputValueResult<Self> {
        let json = value
            .into_json()
            .map_err(|e| InputValueError::custom(format!("metadata: {e}")))?;
        match input::check_annotation(None, Some(&json)) {
            Ok(()) => Ok(MetadataScalar(json)),
            Err(LedgerError::BadInput(m)) => Err(InputValueError::custom(m)),
            Err(_) => Err(InputValueError::custom("metadata is not acceptable")),
        }
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::Object(_))
    }

    fn to_value(&self) -> Value {
        Value::from_json(self.0.clone()).unwrap_or(Value::Null)
    }
}
