//! Input validators: every text argument is checked before its resolver runs, so a bad
//! value is `BAD_USER_INPUT` and never reaches the ledger, a batch or the database.

use async_graphql::{CustomValidator, InputValueError};

use crate::ledger::input;

/// Text of at most this many characters, with no control characters.
pub struct Text(pub usize);

impl CustomValidator<String> for Text {
    fn check(&self, value: &String) -> Result<(), InputValueError<String>> {
        match input::text_problem(value, self.0) {
            Some(problem) => Err(InputValueError::custom(problem)),
            None => Ok(()),
        }
    }
}
