//! Currencies are reference data (seeded by migrations): loaded once at start.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::models::text_enum;
use crate::schema::currencies;

text_enum! {
    /// Traditional money or a chain asset.
    pub enum CurrencyKind {
        Fiat => "FIAT",
        Crypto => "CRYPTO",
    }
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = currencies, check_for_backend(diesel::pg::Pg))]
pub struct Currency {
    pub code: String,
    pub name: String,
    pub kind: CurrencyKind,
    /// Decimals an amount may carry.
    pub scale: i16,
    pub network: Option<String>,
    pub enabled: bool,
    pub reconciliation_tolerance: Decimal,
    /// Crypto only: confirmations before a deposit is credited.
    pub required_confirmations: Option<i32>,
}

impl Currency {
    pub fn scale(&self) -> u32 {
        u32::try_from(self.scale).unwrap_or(0)
    }
}

/// All currencies by code, and the withdrawal fees configured for them.
#[derive(Clone, Debug, Default)]
pub struct CurrencyRegistry {
    by_code: BTreeMap<String, Currency>,
    withdrawal_fees: BTreeMap<String, Decimal>,
}

impl CurrencyRegistry {
    pub async fn load(conn: &mut AsyncPgConnection) -> QueryResult<Self> {
        let rows: Vec<Currency> = currencies::table
            .select(Currency::as_select())
            .load(conn)
            .await?;
        Ok(Self::from_rows(rows))
    }

    pub fn from_rows(rows: Vec<Currency>) -> Self {
        CurrencyRegistry {
            by_code: rows.into_iter().map(|c| (c.code.clone(), c)).collect(),
            withdrawal_fees: BTreeMap::new(),
        }
    }

    /// The registry with a flat fee charged on every withdrawal of the given currencies,
    /// credited to the currency's fee revenue. Fiat: on top of the amount. Crypto: instead
    /// of the network's fee, which the service then pays. Refuses an unknown currency, a
    /// negative fee or one finer than the currency's scale.
    pub fn with_withdrawal_fees(
        mut self,
        fees: &BTreeMap<String, Decimal>,
    ) -> Result<Self, String> {
        for (code, &fee) in fees {
            let currency = self
                .by_code
                .get(code)
                .ok_or_else(|| format!("withdrawal fee for unknown currency {code:?}"))?;
            if fee.is_sign_negative() {
                return Err(format!("the withdrawal fee of {code} must not be negative"));
            }
            if fee.normalize().scale() > currency.scale() {
                return Err(format!(
                    "the withdrawal fee of {code} has more than {} decimals",
                    currency.scale()
                ));
            }
            let mut fee = fee;
            fee.rescale(currency.scale());
            self.withdrawal_fees.insert(code.clone(), fee);
        }
        Ok(self)
    }

    /// The flat fee configured for withdrawals of `code`, at the currency's scale.
    pub fn withdrawal_fee(&self, code: &str) -> Option<Decimal> {
        self.withdrawal_fees.get(code).copied()
    }

    /// The registry with every crypto currency whose network is not in `networks`
    /// disabled: a server with no backend for a chain does not hand out addresses whose
    /// deposits it could never see.
    pub fn with_networks(mut self, networks: &[&str]) -> Self {
        for currency in self.by_code.values_mut() {
            if let Some(network) = &currency.network
                && !networks.contains(&network.as_str())
            {
                currency.enabled = false;
            }
        }
        self
    }

    pub fn get(&self, code: &str) -> Option<&Currency> {
        self.by_code.get(code)
    }

    /// All currencies, ordered by code.
    pub fn all(&self) -> impl Iterator<Item = &Currency> {
        self.by_code.values()
    }
}
