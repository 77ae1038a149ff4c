//! Currencies are reference data (seeded by migrations, plus the tokens configured for a
//! node-backed network): loaded once at start.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

use super::LedgerError;
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
    /// A token's contract on its network (`None`: the network's own coin).
    pub contract_address: Option<String>,
}

impl Currency {
    pub fn scale(&self) -> u32 {
        u32::try_from(self.scale).unwrap_or(0)
    }

    /// Whether a chain transfer of `asset` (a token contract, or `None` for the network's
    /// own coin) moves this currency.
    pub fn is_asset(&self, asset: Option<&str>) -> bool {
        match (&self.contract_address, asset) {
            (None, None) => true,
            (Some(ours), Some(theirs)) => ours.eq_ignore_ascii_case(theirs),
            _ => false,
        }
    }

    /// An enabled currency of `kind` with `scale` decimals and nothing else configured
    /// (unit tests' fixture).
    #[cfg(test)]
    pub(crate) fn plain(code: &str, kind: CurrencyKind, scale: i16) -> Currency {
        Currency {
            code: code.into(),
            name: code.into(),
            kind,
            scale,
            network: None,
            enabled: true,
            reconciliation_tolerance: Decimal::ZERO,
            required_confirmations: None,
            contract_address: None,
        }
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
    /// negative fee or one finer than the currency's scale — and, for a network's own
    /// coin, a fee below the most the network may charge for the withdrawal
    /// (`max_network_fee` of its network: its address pays that fee, and a smaller flat
    /// fee would leave it paying the rest out of the customer's money). A token's fee is
    /// in the token; its gas is paid from gas funding (`fundGas`).
    pub fn with_withdrawal_fees(
        mut self,
        fees: &BTreeMap<String, Decimal>,
        max_network_fee: impl Fn(&str) -> Option<Decimal>,
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
            if let Some(network) = currency.network.as_deref()
                && currency.enabled
                && currency.contract_address.is_none()
                && let Some(most) = max_network_fee(network)
                && fee < most
            {
                let most = most.normalize();
                return Err(format!(
                    "the withdrawal fee of {code} ({fee}) is below the most the {network} \
                     network may charge for a withdrawal ({most} {code}): the service pays \
                     the network's fee from the customer's address, so the address would \
                     pay the rest out of the customer's money. Set it to at least {most}{}",
                    if network == crate::chain::ethereum::NETWORK {
                        " or lower WALLET_ETHEREUM_MAX_FEE_PER_GAS_GWEI (the most is its gas \
                         limit of 21000 at that cap)"
                    } else {
                        ""
                    }
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

/// A token to offer as a currency of its network: code, contract (canonical spelling)
/// and decimals.
pub struct TokenCurrency<'a> {
    pub code: &'a str,
    pub contract: &'a str,
    pub decimals: u8,
}

/// Makes each token a currency of `network`, added the first time it is configured (with
/// the confirmations of the network's own coin, and its system accounts). A code that
/// already names something else — another contract, other decimals, a fiat currency — is
/// refused: a currency's meaning never changes under its wallets.
pub async fn register_tokens(
    conn: &mut AsyncPgConnection,
    network: &str,
    tokens: &[TokenCurrency<'_>],
) -> Result<(), LedgerError> {
    for token in tokens {
        diesel::sql_query(
            "INSERT INTO currencies
                 (code, name, kind, scale, network, enabled, required_confirmations,
                  contract_address)
             SELECT $1, $1 || ' (token)', 'CRYPTO', $2, network, TRUE,
                    required_confirmations, $3
               FROM currencies
              WHERE network = $4 AND contract_address IS NULL AND kind = 'CRYPTO'
             ON CONFLICT (code) DO NOTHING",
        )
        .bind::<diesel::sql_types::Text, _>(token.code)
        .bind::<diesel::sql_types::SmallInt, _>(i16::from(token.decimals))
        .bind::<diesel::sql_types::Text, _>(token.contract)
        .bind::<diesel::sql_types::Text, _>(network)
        .execute(conn)
        .await?;
        let found: Option<Currency> = currencies::table
            .find(token.code)
            .select(Currency::as_select())
            .first(conn)
            .await
            .optional()?;
        let same = found.as_ref().is_some_and(|c| {
            c.kind == CurrencyKind::Crypto
                && c.network.as_deref() == Some(network)
                && c.scale == i16::from(token.decimals)
                && c.contract_address
                    .as_deref()
                    .is_some_and(|a| a.eq_ignore_ascii_case(token.contract))
        });
        if !same {
            return Err(LedgerError::BadInput(format!(
                "token {}: the currency {} already exists and is not contract {} with {} \
                 decimals on {network}",
                token.code, token.code, token.contract, token.decimals
            )));
        }
    }
    Ok(())
}
