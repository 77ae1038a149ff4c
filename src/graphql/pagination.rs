//! Relay connection arguments → keyset [`PageArgs`], and pages → connections.

use async_graphql::OutputType;
use async_graphql::connection::{Connection, Edge};

use super::error::bad_input;
use super::ids::{decode_cursor, encode_cursor};
use crate::ledger::page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::ledger::{Cursor, Limit, Page, PageArgs};

/// The four Relay arguments as received.
#[derive(Clone, Debug, Default)]
pub struct ConnectionArgs {
    pub first: Option<i32>,
    pub after: Option<String>,
    pub last: Option<i32>,
    pub before: Option<String>,
}

impl ConnectionArgs {
    /// Validates the arguments for the list identified by `list` (a fingerprint of the
    /// list's parent and filters).
    pub fn page_args(&self, list: u64) -> async_graphql::Result<PageArgs> {
        let size = |name: &str, n: i32| -> async_graphql::Result<i64> {
            let n = i64::from(n);
            if !(0..=MAX_PAGE_SIZE).contains(&n) {
                return Err(bad_input(format!(
                    "`{name}` must be between 0 and {MAX_PAGE_SIZE}, got {n}"
                )));
            }
            Ok(n)
        };
        let limit = match (self.first, self.last) {
            (Some(_), Some(_)) => {
                return Err(bad_input("pass either `first` or `last`, not both"));
            }
            (Some(n), None) => Limit::First(size("first", n)?),
            (None, Some(n)) => Limit::Last(size("last", n)?),
            (None, None) if self.before.is_some() => Limit::Last(DEFAULT_PAGE_SIZE),
            (None, None) => Limit::First(DEFAULT_PAGE_SIZE),
        };
        let cursor = |c: &Option<String>| c.as_deref().map(|s| decode_cursor(list, s)).transpose();
        Ok(PageArgs {
            after: cursor(&self.after)?,
            before: cursor(&self.before)?,
            limit,
        })
    }
}

/// Query cost of a connection field: its page size times the cost of one node.
pub fn page_cost(first: Option<i32>, last: Option<i32>, child_complexity: usize) -> usize {
    let n = first.or(last).map_or(DEFAULT_PAGE_SIZE as usize, |n| {
        n.clamp(0, MAX_PAGE_SIZE as i32) as usize
    });
    1 + n.max(1) * child_complexity
}

/// Builds the Relay connection for a page, with cursors bound to `list`.
pub fn connection<T, N: OutputType>(
    list: u64,
    page: Page<T>,
    position: impl Fn(&T) -> Cursor,
    node: impl Fn(T) -> N,
) -> Connection<String, N> {
    let mut conn = Connection::new(page.has_previous, page.has_next);
    conn.edges.extend(
        page.items
            .into_iter()
            .map(|item| Edge::new(encode_cursor(list, &position(&item)), node(item))),
    );
    conn
}
