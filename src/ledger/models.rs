//! Rows as stored, and the closed vocabularies stored as text.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;

use crate::schema::{reconciliations, transactions, wallets};

/// Declares an enum stored as TEXT (with a CHECK constraint in the migration), with
/// conversions to and from its SQL spelling.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $sql:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash,
                 diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $sql),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($sql => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    &mut out.reborrow(),
                )
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let s = <String as diesel::deserialize::FromSql<
                    diesel::sql_types::Text,
                    diesel::pg::Pg,
                >>::from_sql(bytes)?;
                s.parse().map_err(Into::into)
            }
        }
    };
}
pub(crate) use text_enum;

text_enum! {
    /// What a journal row records.
    pub enum TransactionType {
        Deposit => "DEPOSIT",
        Withdraw => "WITHDRAW",
        /// Compensating credit for a withdrawal that failed after its debit.
        Refund => "REFUND",
        /// The sending side of a transfer between wallets.
        TransferOut => "TRANSFER_OUT",
        /// The receiving side of a transfer between wallets.
        TransferIn => "TRANSFER_IN",
        /// Compensates one completed movement (an operator's correction): the same
        /// amount and fee, the opposite balance change.
        Reversal => "REVERSAL",
    }
}

/// How a journal row of some type moves its wallet's balance. The one place that says so:
/// reconciliation's sums, the journal check and a movement's balances all follow it (the
/// database's arithmetic check states the same rule for each row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceEffect {
    /// Adds amount + fee.
    Credit,
    /// Subtracts amount + fee.
    Debit,
    /// The opposite of the row it reverses.
    OppositeOfReversed,
}

impl TransactionType {
    pub fn effect(self) -> BalanceEffect {
        match self {
            TransactionType::Deposit | TransactionType::Refund | TransactionType::TransferIn => {
                BalanceEffect::Credit
            }
            TransactionType::Withdraw | TransactionType::TransferOut => BalanceEffect::Debit,
            TransactionType::Reversal => BalanceEffect::OppositeOfReversed,
        }
    }

    /// +1 for credits, -1 for debits; `None` for a reversal, whose direction is the
    /// opposite of the row it reverses.
    pub fn sign(self) -> Option<Decimal> {
        match self.effect() {
            BalanceEffect::Credit => Some(Decimal::ONE),
            BalanceEffect::Debit => Some(Decimal::NEGATIVE_ONE),
            BalanceEffect::OppositeOfReversed => None,
        }
    }

    /// The sign of a row that is not a hold: its own, or for a reversal the opposite of
    /// `reversed`'s (`None`: a reversal of a reversal, which the database refuses).
    pub fn sign_reversing(self, reversed: Option<TransactionType>) -> Option<Decimal> {
        self.sign()
            .or_else(|| reversed.and_then(TransactionType::sign).map(|s| -s))
    }

    /// SQL for the same rule: `+1` when the row aliased `row` credits its wallet, `-1`
    /// when it debits, where `reversed` is the alias of the row it reverses (joined on
    /// `reverses_id`; NULL for other rows). Built from [`TransactionType::effect`], so
    /// SQL sums cannot disagree with it.
    pub fn sign_sql(row: &str, reversed: &str) -> String {
        let plain = |alias: &str| {
            let arms: String = TransactionType::ALL
                .iter()
                .filter_map(|t| {
                    t.sign()
                        .map(|sign| format!(" WHEN '{}' THEN {sign}", t.as_str()))
                })
                .collect();
            format!("CASE {alias}.type{arms} END")
        };
        format!(
            "CASE {row}.type WHEN '{}' THEN -({}) ELSE {} END",
            TransactionType::Reversal.as_str(),
            plain(reversed),
            plain(row)
        )
    }
}

text_enum! {
    pub enum TransactionStatus {
        Pending => "PENDING",
        Processing => "PROCESSING",
        Completed => "COMPLETED",
        Failed => "FAILED",
        /// A chain deposit that cannot be credited as it is (see `status_reason`); it
        /// waits for an operator instead of holding up the deposits behind it.
        Parked => "PARKED",
        /// A held chain deposit whose transaction a reorganisation took off the chain and
        /// the node no longer has: nothing credited; held again if it is mined again.
        Dropped => "DROPPED",
        /// A credited chain deposit that a reorganisation deeper than the confirmation
        /// threshold removed from the chain: the credit stands, flagged for an operator.
        Reorged => "REORGED",
    }
}

text_enum! {
    /// Where the balance a reconciliation compares against came from.
    pub enum ReconciliationSource {
        External => "EXTERNAL",
        Chain => "CHAIN",
    }
}

text_enum! {
    pub enum ReconciliationStatus {
        Pending => "PENDING",
        Matched => "MATCHED",
        Mismatch => "MISMATCH",
    }
}

#[derive(Clone, Debug, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = wallets, check_for_backend(diesel::pg::Pg))]
pub struct Wallet {
    pub id: i64,
    pub user_id: String,
    pub currency: String,
    pub balance: Decimal,
    pub locked_balance: Decimal,
    pub network: Option<String>,
    pub address: Option<String>,
    pub derivation_path: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How far below zero an operator lets the (fiat) balance go.
    pub credit_limit: Decimal,
    /// Reserved by active holds: the sum of what each may still capture.
    pub held_balance: Decimal,
}

impl Wallet {
    /// What the wallet may still spend: its balance and credit, less what holds and
    /// withdrawals in flight have reserved. Every debit and authorisation is judged
    /// against it (and the database refuses a change that would take it below zero).
    pub fn available_balance(&self) -> Decimal {
        self.balance + self.credit_limit - self.locked_balance - self.held_balance
    }
}

/// One row of the journal (`transactions`).
#[derive(Clone, Debug, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = transactions, check_for_backend(diesel::pg::Pg))]
pub struct JournalEntry {
    pub id: i64,
    pub wallet_id: i64,
    #[diesel(column_name = type_)]
    pub kind: TransactionType,
    pub amount: Decimal,
    pub fee: Decimal,
    pub balance_before: Decimal,
    pub balance_after: Decimal,
    pub status: TransactionStatus,
    pub tx_hash: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub network: Option<String>,
    pub from_address: Option<String>,
    pub to_address: Option<String>,
    pub confirmations: Option<i32>,
    pub required_confirmations: Option<i32>,
    pub block_number: Option<i64>,
    pub gas_price: Option<Decimal>,
    pub gas_used: Option<i64>,
    pub raw: Option<String>,
    /// A hold: journaled with no balance effect; its postings carry the effect.
    pub hold: bool,
    /// On a posting: the hold it settles.
    pub hold_id: Option<i64>,
    /// The chain transfer's hash (crypto rows; a withdrawal's once it is signed).
    pub chain_tx_hash: Option<String>,
    /// Why a hold was parked or failed.
    pub status_reason: Option<String>,
    /// On the receiving side of a transfer (or of a transfer's reversal): the sending side.
    pub counterpart_id: Option<i64>,
    /// On a reversal: the row it reverses.
    pub reverses_id: Option<i64>,
    /// Crypto withdrawals: what our addresses pay the network, when it is not `fee` (a
    /// configured withdrawal fee is charged instead).
    pub network_fee: Option<Decimal>,
    /// The client's business reference (not unique).
    pub reference: Option<String>,
    /// The client's metadata: a JSON object of strings.
    pub metadata: Option<serde_json::Value>,
    /// On a capture: the hold it settles.
    pub settles_hold_id: Option<i64>,
}

impl JournalEntry {
    /// What the row did to the balance.
    pub fn balance_change(&self) -> Decimal {
        self.balance_after - self.balance_before
    }
}

#[derive(Clone, Debug, Queryable, Selectable, Identifiable)]
#[diesel(table_name = reconciliations, check_for_backend(diesel::pg::Pg))]
pub struct Reconciliation {
    pub id: i64,
    pub wallet_id: i64,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub system_balance: Decimal,
    pub external_balance: Decimal,
    pub source: ReconciliationSource,
    pub status: ReconciliationStatus,
    /// `external_balance - system_balance`.
    pub difference: Decimal,
    pub notes: Option<String>,
    pub mismatch_reason: Option<String>,
    pub unmatched_transactions: Vec<Option<String>>,
    pub created_at: DateTime<Utc>,
    /// Scheduled chain reconciliations: the chain height covered (the next run's start).
    pub chain_height: Option<i64>,
}

/// A `Decimal` bound as NUMERIC with its scale kept also for zero: rust_decimal encodes
/// zero with display scale 0, which would make a USD balance read back as "0", not "0.00".
#[derive(Clone, Copy, Debug, diesel::expression::AsExpression)]
#[diesel(sql_type = diesel::sql_types::Numeric)]
pub struct Scaled(pub Decimal);

impl diesel::serialize::ToSql<diesel::sql_types::Numeric, diesel::pg::Pg> for Scaled {
    fn to_sql<'b>(
        &'b self,
        out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
    ) -> diesel::serialize::Result {
        use diesel::data_types::PgNumeric;
        let numeric = if self.0.is_zero() {
            PgNumeric::Positive {
                weight: 0,
                scale: u16::try_from(self.0.scale())?,
                digits: Vec::new(),
            }
        } else {
            PgNumeric::from(self.0)
        };
        <PgNumeric as diesel::serialize::ToSql<diesel::sql_types::Numeric, diesel::pg::Pg>>::to_sql(
            &numeric,
            &mut out.reborrow(),
        )
    }
}
