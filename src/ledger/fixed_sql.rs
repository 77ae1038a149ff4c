//! SQL text that stays prepared.
//!
//! diesel treats every statement containing SQL it did not build (`sql_query`, `sql`
//! literals) as possibly assembled at run time, and never keeps it prepared: each run
//! costs a Parse/Describe round trip and a fresh plan before it executes — and a statement
//! being prepared holds the connection's statement cache, so statements sent together
//! wait for each other's preparation instead of travelling in one round trip. A
//! [`Fixed`] fragment is a `'static` text with its bind values between the pieces, so a
//! statement built from it (alone, or as a `filter` or `select` of a diesel query) always
//! has the same text, and diesel-async keeps it prepared per connection under that text.
//! Used on the paths that run many times a second: the group committer and the event
//! listener.

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use diesel::expression::{AppearsOnTable, Expression, SelectableExpression, ValidGrouping};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Jsonb, Nullable, Numeric, Text, Timestamptz, Untyped,
};

use super::models::Scaled;

/// A value bound between two pieces of a [`Fixed`] text.
pub enum Bind {
    BigInt(i64),
    BigInts(Vec<i64>),
    Texts(Vec<String>),
    OptionalTexts(Vec<Option<String>>),
    Numerics(Vec<Scaled>),
    OptionalNumerics(Vec<Option<Scaled>>),
    Times(Vec<DateTime<Utc>>),
    Bools(Vec<bool>),
    OptionalBigInts(Vec<Option<i64>>),
    OptionalInts(Vec<Option<i32>>),
    OptionalJson(Vec<Option<serde_json::Value>>),
}

/// `'static` SQL pieces with one bind between each two, of SQL type `ST`.
pub struct Fixed<ST> {
    pieces: Pieces,
    binds: Vec<Bind>,
    _type: PhantomData<ST>,
}

/// The text of a [`Fixed`]: pieces split at the binds, or one text (a `.sql` file) whose
/// binds are written `$1`, `$2`, … once each, in order.
enum Pieces {
    Split(&'static [&'static str]),
    Numbered(&'static str),
}

impl<ST> Fixed<ST> {
    /// `pieces.len()` must be `binds.len() + 1`: the text is `pieces[0] $1 pieces[1] …`.
    pub fn new(pieces: &'static [&'static str], binds: Vec<Bind>) -> Fixed<ST> {
        debug_assert_eq!(pieces.len(), binds.len() + 1, "one bind between two pieces");
        Fixed {
            pieces: Pieces::Split(pieces),
            binds,
            _type: PhantomData,
        }
    }

    /// A text with numbered binds (`$1`, `$2`, … once each, in order: the text of a
    /// `.sql` file kept next to the code that runs it). A text whose numbers do not match
    /// `binds` is an error when the statement is built, never a statement.
    pub fn numbered(text: &'static str, binds: Vec<Bind>) -> Fixed<ST> {
        Fixed {
            pieces: Pieces::Numbered(text),
            binds,
            _type: PhantomData,
        }
    }
}

/// A whole statement (`BEGIN`, `UPDATE …`); one that returns rows loads them by column
/// name (`QueryableByName`).
pub fn statement(pieces: &'static [&'static str], binds: Vec<Bind>) -> Fixed<Untyped> {
    Fixed::new(pieces, binds)
}

/// A whole statement with numbered binds (see [`Fixed::numbered`]).
pub fn numbered(text: &'static str, binds: Vec<Bind>) -> Fixed<Untyped> {
    Fixed::numbered(text, binds)
}

/// A part of a numbered text: SQL, or the place of the next bind.
enum Segment {
    Sql(&'static str),
    Bind,
}

/// `text` split at its numbered binds, without its `--` comments (which may name binds),
/// checked to number `1..=binds` once each, in order.
fn split_numbered(text: &'static str, binds: usize) -> QueryResult<Vec<Segment>> {
    let bad = |why: &str| Err(diesel::result::Error::QueryBuilderError(why.into()));
    let mut segments = Vec::with_capacity(2 * binds + 1);
    let mut seen = 0;
    let mut rest = text;
    loop {
        let next = rest.find(['$', '-']);
        let Some(at) = next else {
            segments.push(Segment::Sql(rest));
            break;
        };
        segments.push(Segment::Sql(&rest[..at]));
        let after = &rest[at + 1..];
        if rest.as_bytes()[at] == b'-' {
            if after.starts_with('-') {
                // A comment, to the end of its line.
                rest = after.find('\n').map_or("", |nl| &after[nl..]);
            } else {
                segments.push(Segment::Sql("-"));
                rest = after;
            }
            continue;
        }
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) if n == seen + 1 => seen = n,
            Ok(_) => return bad("a numbered SQL text's binds out of order"),
            Err(_) => return bad("a `$` in a numbered SQL text that is not a bind"),
        }
        segments.push(Segment::Bind);
        rest = &after[digits..];
    }
    if seen != binds {
        return bad("a numbered SQL text with another number of binds than given");
    }
    Ok(segments)
}

impl diesel::query_builder::Query for Fixed<Untyped> {
    type SqlType = Untyped;
}

impl<ST> QueryFragment<Pg> for Fixed<ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut binds = self.binds.iter();
        match self.pieces {
            Pieces::Split(pieces) => {
                for (i, piece) in pieces.iter().enumerate() {
                    if i > 0 {
                        push_bind(&mut out, binds.next())?;
                    }
                    out.push_sql(piece);
                }
            }
            Pieces::Numbered(text) => {
                for segment in split_numbered(text, self.binds.len())? {
                    match segment {
                        Segment::Sql(sql) => out.push_sql(sql),
                        Segment::Bind => push_bind(&mut out, binds.next())?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// Binds the next value of a [`Fixed`] (none left: the text has more gaps than values).
fn push_bind<'b>(out: &mut AstPass<'_, 'b, Pg>, bind: Option<&'b Bind>) -> QueryResult<()> {
    match bind {
        Some(Bind::BigInt(v)) => out.push_bind_param::<BigInt, _>(v)?,
        Some(Bind::BigInts(v)) => out.push_bind_param::<Array<BigInt>, _>(v)?,
        Some(Bind::Texts(v)) => out.push_bind_param::<Array<Text>, _>(v)?,
        Some(Bind::OptionalTexts(v)) => out.push_bind_param::<Array<Nullable<Text>>, _>(v)?,
        Some(Bind::Numerics(v)) => out.push_bind_param::<Array<Numeric>, _>(v)?,
        Some(Bind::Times(v)) => out.push_bind_param::<Array<Timestamptz>, _>(v)?,
        Some(Bind::OptionalNumerics(v)) => out.push_bind_param::<Array<Nullable<Numeric>>, _>(v)?,
        Some(Bind::Bools(v)) => out.push_bind_param::<Array<Bool>, _>(v)?,
        Some(Bind::OptionalBigInts(v)) => out.push_bind_param::<Array<Nullable<BigInt>>, _>(v)?,
        Some(Bind::OptionalInts(v)) => out.push_bind_param::<Array<Nullable<Integer>>, _>(v)?,
        Some(Bind::OptionalJson(v)) => out.push_bind_param::<Array<Nullable<Jsonb>>, _>(v)?,
        None => {
            return Err(diesel::result::Error::QueryBuilderError(
                "a fixed SQL text with fewer binds than gaps".into(),
            ));
        }
    }
    Ok(())
}

// Not a static id: diesel-async then keys its statement cache by the SQL text, which is
// fixed.
impl<ST> QueryId for Fixed<ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<ST: diesel::sql_types::SqlType + diesel::expression::TypedExpressionType> Expression
    for Fixed<ST>
{
    type SqlType = ST;
}

impl<ST, QS> AppearsOnTable<QS> for Fixed<ST> where Fixed<ST>: Expression {}

impl<ST, QS> SelectableExpression<QS> for Fixed<ST> where Fixed<ST>: Expression {}

impl<ST, GB> ValidGrouping<GB> for Fixed<ST> {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::Bool;

    #[test]
    fn binds_go_between_the_pieces_in_order() {
        let fixed = Fixed::<Bool>::new(
            &["id = ANY(", ") AND key = ANY(", "::text[])"],
            vec![Bind::BigInts(vec![1, 2]), Bind::Texts(vec!["k".into()])],
        );
        let sql = diesel::debug_query::<Pg, _>(&fixed).to_string();
        assert!(
            sql.starts_with("id = ANY($1) AND key = ANY($2::text[])"),
            "{sql}"
        );
        assert!(sql.contains("[1, 2]") && sql.contains("[\"k\"]"), "{sql}");
    }

    #[test]
    fn a_gap_without_a_bind_is_an_error_not_a_statement() {
        let fixed = Fixed::<Untyped> {
            pieces: Pieces::Split(&["a = ", " AND b = ", ""]),
            binds: vec![Bind::BigInt(1)],
            _type: PhantomData,
        };
        let mut out = String::new();
        use std::fmt::Write;
        let rendered = write!(out, "{}", diesel::debug_query::<Pg, _>(&fixed));
        assert!(rendered.is_err(), "rendered {out:?}");
    }

    #[test]
    fn numbered_binds_are_split_in_order() {
        let fixed = numbered(
            "SELECT * FROM unnest($1::bigint[], $2::text[]) WHERE x = $3",
            vec![
                Bind::BigInts(vec![1]),
                Bind::Texts(vec!["k".into()]),
                Bind::BigInt(7),
            ],
        );
        let sql = diesel::debug_query::<Pg, _>(&fixed).to_string();
        assert!(
            sql.starts_with("SELECT * FROM unnest($1::bigint[], $2::text[]) WHERE x = $3"),
            "{sql}"
        );
    }

    #[test]
    fn numbered_text_that_does_not_match_its_binds_is_an_error() {
        use std::fmt::Write;
        for (text, binds) in [
            ("a = $2 AND b = $1", 2),
            ("a = $1", 2),
            ("a = $1 AND b = $2", 1),
            ("a = $x", 0),
        ] {
            let fixed = numbered(text, (0..binds).map(Bind::BigInt).collect());
            let mut out = String::new();
            let rendered = write!(out, "{}", diesel::debug_query::<Pg, _>(&fixed));
            assert!(rendered.is_err(), "{text}: rendered {out:?}");
        }
    }
}
