//! Keyset pagination on `(created_at, id)` — never OFFSET, so page N costs what page 1 does.

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::expression::BoxableExpression;
use diesel::pg::Pg;
use diesel::sql_types::{BigInt, Bool, Timestamptz};

/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: i64 = 100;
/// Page size when the caller gives neither `first` nor `last`.
pub const DEFAULT_PAGE_SIZE: i64 = 20;

/// A position in a list ordered by `(created_at, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: i64,
}

/// Which end of the window to fill from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The first n items after `after` (forward).
    First(i64),
    /// The last n items before `before` (backward).
    Last(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageArgs {
    pub after: Option<Cursor>,
    pub before: Option<Cursor>,
    pub limit: Limit,
}

impl Default for PageArgs {
    fn default() -> Self {
        PageArgs {
            after: None,
            before: None,
            limit: Limit::First(DEFAULT_PAGE_SIZE),
        }
    }
}

/// One window of an ordered list, oldest first.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_previous: bool,
    pub has_next: bool,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            has_previous: self.has_previous,
            has_next: self.has_next,
        }
    }
}

type BoolExpr<QS> = Box<dyn BoxableExpression<QS, Pg, SqlType = Bool>>;

impl PageArgs {
    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        match self.limit {
            Limit::First(n) | Limit::Last(n) => n + 1,
        }
    }

    pub fn is_backward(&self) -> bool {
        matches!(self.limit, Limit::Last(_))
    }

    /// Row-value comparisons (`(created_at, id) > (…)`) so Postgres walks the
    /// `(…, created_at, id)` index from the cursor instead of filtering.
    pub fn bounds<QS>(&self) -> Vec<BoolExpr<QS>> {
        let mut out: Vec<BoolExpr<QS>> = Vec::new();
        if let Some(c) = self.after {
            out.push(Box::new(
                sql::<Bool>("(created_at, id) > (")
                    .bind::<Timestamptz, _>(c.created_at)
                    .sql(", ")
                    .bind::<BigInt, _>(c.id)
                    .sql(")"),
            ));
        }
        if let Some(c) = self.before {
            out.push(Box::new(
                sql::<Bool>("(created_at, id) < (")
                    .bind::<Timestamptz, _>(c.created_at)
                    .sql(", ")
                    .bind::<BigInt, _>(c.id)
                    .sql(")"),
            ));
        }
        out
    }

    /// Turns the fetched rows (in fetch order) into a page in list order.
    pub fn finish<T>(&self, mut rows: Vec<T>) -> Page<T> {
        match self.limit {
            Limit::First(n) => {
                let more = rows.len() as i64 > n;
                rows.truncate(n as usize);
                Page {
                    items: rows,
                    // Cursors are positions of real, never-deleted rows: something precedes
                    // `after` (the row itself), something follows `before`.
                    has_previous: self.after.is_some(),
                    has_next: more || self.before.is_some(),
                }
            }
            Limit::Last(n) => {
                let more = rows.len() as i64 > n;
                rows.truncate(n as usize);
                rows.reverse();
                Page {
                    items: rows,
                    has_previous: more || self.after.is_some(),
                    has_next: self.before.is_some(),
                }
            }
        }
    }
}

/// Applies a [`PageArgs`] to a boxed diesel query on a table with `created_at` and `id`.
macro_rules! paginate {
    ($query:expr, $args:expr, $table:ident) => {{
        let args: &$crate::ledger::PageArgs = $args;
        let mut q = $query;
        for bound in args.bounds() {
            q = q.filter(bound);
        }
        if args.is_backward() {
            q.order(($table::created_at.desc(), $table::id.desc()))
        } else {
            q.order(($table::created_at.asc(), $table::id.asc()))
        }
        .limit(args.fetch_limit())
    }};
}
pub(crate) use paginate;
