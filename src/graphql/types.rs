//! Output types of the API contract: thin views over ledger rows.

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Interface, Object, Result};
use chrono::{DateTime, Utc};

use super::error::{internal, ledger_error};
use super::ids::{NodeType, encode_id, fingerprint};
use super::loaders::{self, Wallets, prefetch_wallets};
use super::pagination::{ConnectionArgs, connection, page_cost};
use super::scalars::{DecimalScalar, MetadataScalar};
use super::{conn, state};
use crate::ledger::{self, Cursor, ListScope, journal, reconciliation};

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "WalletKind", remote = "crate::ledger::CurrencyKind")]
pub enum WalletKind {
    Fiat,
    Crypto,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::ledger::TransactionType")]
pub enum TransactionType {
    Deposit,
    Withdraw,
    /// Compensating credit for a failed withdrawal.
    Refund,
    /// The sending side of a transfer between wallets.
    TransferOut,
    /// The receiving side of a transfer between wallets.
    TransferIn,
    /// An operator's correction: undoes one completed movement (`reverses`) with the same
    /// amount and fee in the opposite direction.
    Reversal,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::ledger::TransactionStatus")]
pub enum TransactionStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    /// A chain deposit that cannot be credited as it is (`statusReason` says why); it
    /// waits for an operator.
    Parked,
    /// A chain deposit whose transaction a reorganisation took off the chain (and the
    /// node no longer has): nothing credited; held again if it is mined again.
    Dropped,
    /// A credited chain deposit that a reorganisation deeper than the confirmation
    /// threshold removed from the chain: the credit stands, flagged for an operator
    /// (`statusReason` says when), who may reverse it; lifted if the transaction is mined
    /// again (credited again, once, if the credit was reversed). Also a completed
    /// withdrawal through a node that such a reorganisation removed: sent again, and
    /// `COMPLETED` again once mined.
    Reorged,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::ledger::models::ReconciliationSource")]
pub enum ReconciliationSource {
    External,
    Chain,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::ledger::models::ReconciliationStatus")]
pub enum ReconciliationStatus {
    Pending,
    Matched,
    Mismatch,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::auth::Role")]
pub enum Role {
    User,
    Operator,
}

/// Relay global object identification. (A value lives for one `node` lookup: the size
/// difference between variants costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID"))]
pub enum Node {
    Wallet(WalletObject),
    Transaction(TransactionObject),
    Reconciliation(ReconciliationObject),
    GasFunding(GasFundingObject),
    Hold(super::holds::HoldObject),
}

/// Narrows a wallet's or a viewer's transaction list. Time bounds are inclusive.
#[derive(InputObject, Clone, Default)]
#[graphql(name = "TransactionFilter")]
pub struct TransactionFilterInput {
    pub types: Option<Vec<TransactionType>>,
    pub statuses: Option<Vec<TransactionStatus>>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// Only movements with exactly this business reference.
    #[graphql(validator(custom = "super::validators::Text(ledger::input::MAX_REFERENCE_LEN)"))]
    pub reference: Option<String>,
}

impl TransactionFilterInput {
    pub fn to_ledger(&self) -> Result<journal::TransactionFilter> {
        if let (Some(from), Some(to)) = (self.created_from, self.created_to)
            && from > to
        {
            return Err(super::error::bad_input(
                "filter.createdFrom must not be after filter.createdTo",
            ));
        }
        Ok(journal::TransactionFilter {
            types: self
                .types
                .as_ref()
                .map(|v| v.iter().map(|&t| t.into()).collect()),
            statuses: self
                .statuses
                .as_ref()
                .map(|v| v.iter().map(|&s| s.into()).collect()),
            created_from: self.created_from,
            created_to: self.created_to,
            reference: self.reference.clone(),
        })
    }

    /// Canonical text of the filter, part of the cursor fingerprint.
    pub fn canonical(&self) -> String {
        let names = |v: Option<Vec<String>>| {
            v.map(|mut v| {
                v.sort();
                v.dedup();
                v.join(",")
            })
            .unwrap_or_else(|| "*".into())
        };
        format!(
            "types={};statuses={};from={};to={};reference={:?}",
            names(self.types.as_ref().map(|v| {
                v.iter()
                    .map(|&t| ledger::TransactionType::from(t).to_string())
                    .collect()
            })),
            names(self.statuses.as_ref().map(|v| {
                v.iter()
                    .map(|&s| ledger::TransactionStatus::from(s).to_string())
                    .collect()
            })),
            self.created_from
                .map_or("*".into(), |t| t.timestamp_micros().to_string()),
            self.created_to
                .map_or("*".into(), |t| t.timestamp_micros().to_string()),
            self.reference,
        )
    }
}

/// Lists the journal of `scope` as a connection.
pub async fn transactions_connection(
    ctx: &Context<'_>,
    scope: ListScope,
    args: ConnectionArgs,
    filter: Option<TransactionFilterInput>,
) -> Result<Connection<String, TransactionObject>> {
    let filter = filter.unwrap_or_default();
    let list = fingerprint(&["transactions", &scope_key(&scope), &filter.canonical()]);
    let page = args.page_args(list)?;
    let ledger_filter = filter.to_ledger()?;
    let mut c = conn(ctx).await?;
    let rows = journal::list_transactions(&mut c, &scope, &ledger_filter, &page).await?;
    drop(c);
    prefetch_wallets(
        ctx,
        &["wallet", "currency"],
        rows.items.iter().map(|t| t.wallet_id),
    )
    .await?;
    Ok(connection(list, rows, cursor_of_entry, TransactionObject))
}

/// Lists reconciliations of `scope` as a connection.
pub async fn reconciliations_connection(
    ctx: &Context<'_>,
    scope: ListScope,
    args: ConnectionArgs,
) -> Result<Connection<String, ReconciliationObject>> {
    let list = fingerprint(&["reconciliations", &scope_key(&scope)]);
    let page = args.page_args(list)?;
    let mut c = conn(ctx).await?;
    let rows = reconciliation::list_reconciliations(&mut c, &scope, &page).await?;
    drop(c);
    prefetch_wallets(ctx, &["wallet"], rows.items.iter().map(|r| r.wallet_id)).await?;
    Ok(connection(
        list,
        rows,
        |r| Cursor {
            created_at: r.created_at,
            id: r.id,
        },
        ReconciliationObject,
    ))
}

pub fn scope_key(scope: &ListScope) -> String {
    match scope {
        ListScope::Wallet(id) => format!("wallet={id}"),
        ListScope::Owner(user) => format!("owner={user}"),
        ListScope::All => "all".into(),
    }
}

fn cursor_of_entry(e: &ledger::JournalEntry) -> Cursor {
    Cursor {
        created_at: e.created_at,
        id: e.id,
    }
}

pub async fn load_wallet(ctx: &Context<'_>, id: i64) -> Result<WalletObject> {
    let loader = ctx.data_unchecked::<Wallets>();
    match loader.load_one(id).await {
        Ok(Some(w)) => Ok(WalletObject(w)),
        Ok(None) => Err(internal(&format!(
            "wallet {id} of a visible row is missing"
        ))),
        Err(e) => Err(ledger_error(&e)),
    }
}

/// A user's balance in one currency.
pub struct WalletObject(pub ledger::Wallet);

#[Object(name = "Wallet")]
impl WalletObject {
    async fn id(&self) -> ID {
        encode_id(NodeType::Wallet, self.0.id)
    }
    async fn user_id(&self) -> &str {
        &self.0.user_id
    }
    /// Currency code, e.g. `USD`.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    async fn kind(&self, ctx: &Context<'_>) -> Result<WalletKind> {
        state(ctx)
            .currencies
            .get(&self.0.currency)
            .map(|c| c.kind.into())
            .ok_or_else(|| internal(&format!("unknown currency {}", self.0.currency)))
    }
    /// Total balance, including funds locked by withdrawals in flight.
    async fn balance(&self, ctx: &Context<'_>) -> DecimalScalar {
        at_currency_scale(ctx, &self.0.currency, self.0.balance)
    }
    /// `balance + creditLimit - heldBalance - lockedBalance`: what can be withdrawn,
    /// transferred or held now.
    async fn available_balance(&self, ctx: &Context<'_>) -> DecimalScalar {
        at_currency_scale(ctx, &self.0.currency, self.0.available_balance())
    }
    /// Reserved by active holds (what they may still capture).
    async fn held_balance(&self, ctx: &Context<'_>) -> DecimalScalar {
        at_currency_scale(ctx, &self.0.currency, self.0.held_balance)
    }
    /// How far below zero the balance may go (fiat; set by operators). A negative
    /// balance is money the customer owes.
    async fn credit_limit(&self, ctx: &Context<'_>) -> DecimalScalar {
        at_currency_scale(ctx, &self.0.currency, self.0.credit_limit)
    }
    /// Holds on this wallet, oldest first; `status` narrows them.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    async fn holds(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        status: Option<super::holds::HoldStatus>,
    ) -> Result<Connection<String, super::holds::HoldObject>> {
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        super::holds::holds_connection(ctx, ListScope::Wallet(self.0.id), status, args).await
    }
    /// Every change of the credit limit, oldest first: who, when, from what, to what, why.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    async fn credit_limit_changes(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, super::holds::CreditLimitChangeObject>> {
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        super::holds::credit_limit_changes_connection(ctx, self.0.id, args).await
    }
    /// Alerts on this wallet's available balance, oldest first.
    async fn balance_alerts(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<super::feed::BalanceAlertObject>> {
        let mut c = super::conn(ctx).await?;
        Ok(crate::ledger::alert::of_wallet(&mut c, self.0.id)
            .await?
            .into_iter()
            .map(super::feed::BalanceAlertObject)
            .collect())
    }
    /// Reserved by withdrawals in flight.
    async fn locked_balance(&self) -> DecimalScalar {
        self.0.locked_balance.into()
    }
    /// Chain network (crypto only).
    async fn network(&self) -> Option<&str> {
        self.0.network.as_deref()
    }
    /// Deposit address (crypto only).
    async fn address(&self) -> Option<&str> {
        self.0.address.as_deref()
    }
    /// HD derivation path of the address (crypto only).
    async fn derivation_path(&self) -> Option<&str> {
        self.0.derivation_path.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// The wallet's journal, oldest first (the order in which the balance changed).
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    async fn transactions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        filter: Option<TransactionFilterInput>,
    ) -> Result<Connection<String, TransactionObject>> {
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        transactions_connection(ctx, ListScope::Wallet(self.0.id), args, filter).await
    }
    /// Reconciliations of this wallet, oldest first.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    async fn reconciliations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, ReconciliationObject>> {
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        reconciliations_connection(ctx, ListScope::Wallet(self.0.id), args).await
    }
}

/// The journal row `id` names, through the request's loader: a row of the same wallet as
/// the one naming it (a posting's hold, a reversal's original), so visible to whoever sees
/// that one.
async fn same_wallet_row(ctx: &Context<'_>, id: Option<i64>) -> Result<Option<TransactionObject>> {
    let Some(id) = id else {
        return Ok(None);
    };
    let row = ctx
        .data_unchecked::<loaders::Entries>()
        .load_one(id)
        .await
        .map_err(|e| ledger_error(&e))?
        .ok_or(ledger::LedgerError::NotFound("transaction"))?;
    Ok(Some(TransactionObject(row)))
}

/// One journal row: a money movement and the balances around it.
pub struct TransactionObject(pub ledger::JournalEntry);

impl TransactionObject {
    /// `idempotencyKey`: the row's key, but the receiving side of a transfer's own id.
    fn key(&self) -> String {
        match self.0.kind {
            ledger::TransactionType::TransferIn => {
                encode_id(NodeType::Transaction, self.0.id).to_string()
            }
            _ => self.0.tx_hash.clone(),
        }
    }
}

/// Whether `row` is the hold of a withdrawal through a node: on a network this server does
/// not serve with the simulator (a node's fee is known once mined). A network no backend
/// serves here is taken for a node's too: then `chargedFee` waits for the settlement
/// rather than repeat a locked maximum.
fn through_node(ctx: &Context<'_>, row: &ledger::JournalEntry) -> bool {
    use crate::chain::Chain as _;
    row.hold
        && row.kind == ledger::TransactionType::Withdraw
        && row
            .network
            .as_deref()
            .is_some_and(|network| !state(ctx).chains.is_simulated(network))
}

#[Object(name = "Transaction")]
impl TransactionObject {
    async fn id(&self) -> ID {
        encode_id(NodeType::Transaction, self.0.id)
    }
    async fn wallet_id(&self) -> ID {
        encode_id(NodeType::Wallet, self.0.wallet_id)
    }
    async fn wallet(&self, ctx: &Context<'_>) -> Result<WalletObject> {
        load_wallet(ctx, self.0.wallet_id).await
    }
    /// The wallet's currency code, e.g. `USD` (the unit of `amount` and the fees).
    async fn currency(&self, ctx: &Context<'_>) -> Result<String> {
        Ok(load_wallet(ctx, self.0.wallet_id).await?.0.currency)
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> TransactionType {
        self.0.kind.into()
    }
    async fn amount(&self) -> DecimalScalar {
        self.0.amount.into()
    }
    /// The fee of this row. On the hold of a withdrawal through a node it is what was
    /// locked for the fee when the withdrawal was requested (the most the network's fee
    /// may cost, or the flat `withdrawalFee`), not necessarily what it charged: see
    /// `chargedFee`.
    async fn fee(&self) -> DecimalScalar {
        self.0.fee.into()
    }
    /// The fee actually charged. Equal to `fee` on every row but the hold of a crypto
    /// withdrawal through a node (ethereum served by a node), whose `fee` is what was
    /// locked for the fee when it was requested. There it is null while the withdrawal
    /// is `PENDING` or `PROCESSING` (the chain's fee is known once it is mined);
    /// afterwards it is the `fee` of the withdrawal's debit (among `settlements`): the
    /// currency's flat `withdrawalFee` if it has one; otherwise, for the network's coin,
    /// what the chain charged (gas used × effective gas price, rounded up to the
    /// currency's decimals), and for a token 0 (its gas is paid in the network's coin,
    /// from its address's gas funding). A transaction that reverted on chain still paid
    /// its fee (the refund returns the amount only). A withdrawal that failed unsent
    /// (refused by the node, or never signed) charged nothing: 0. One a reorganisation
    /// removed (`REORGED`) shows what stands debited; if the chain charges another fee
    /// when it is mined again, the debit is reversed and this is the new debit's fee.
    async fn charged_fee(&self, ctx: &Context<'_>) -> Result<Option<DecimalScalar>> {
        if !through_node(ctx, &self.0) {
            return Ok(Some(self.0.fee.into()));
        }
        if crate::chain::node_withdrawal::in_flight(&self.0) {
            return Ok(None);
        }
        let settlements = ctx
            .data_unchecked::<loaders::Settlements>()
            .load_one(self.0.id)
            .await
            .map_err(|e| ledger_error(&e))?
            .unwrap_or_default();
        Ok(Some(
            crate::chain::node_withdrawal::charged_fee(&self.0, &settlements).into(),
        ))
    }
    async fn balance_before(&self) -> DecimalScalar {
        self.0.balance_before.into()
    }
    async fn balance_after(&self) -> DecimalScalar {
        self.0.balance_after.into()
    }
    async fn status(&self) -> TransactionStatus {
        self.0.status.into()
    }
    /// Why a crypto movement was parked or failed.
    async fn status_reason(&self) -> Option<&str> {
        self.0.status_reason.as_deref()
    }
    /// The client's idempotency key, as the mutation that made the row received it (as
    /// `idempotencyKey` or `txHash`); for a crypto withdrawal's postings, the
    /// withdrawal's; for a chain deposit, the chain transaction's hash (and, for a token
    /// transfer, the log's place: `0x…:1`). A key is private to the wallet it was sent
    /// for: the receiving side of a transfer shows its own id instead of the sender's key.
    async fn idempotency_key(&self) -> String {
        self.key()
    }
    /// The same as `idempotencyKey`.
    #[graphql(
        deprecation = "Use idempotencyKey (the client's key); the chain transaction's hash is chainTxHash. txHash will be removed in the next release."
    )]
    async fn tx_hash(&self) -> String {
        self.key()
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    async fn network(&self) -> Option<&str> {
        self.0.network.as_deref()
    }
    async fn from_address(&self) -> Option<&str> {
        self.0.from_address.as_deref()
    }
    async fn to_address(&self) -> Option<&str> {
        self.0.to_address.as_deref()
    }
    async fn confirmations(&self) -> Option<i32> {
        self.0.confirmations
    }
    async fn required_confirmations(&self) -> Option<i32> {
        self.0.required_confirmations
    }
    /// Block height (a string: heights can exceed 2^31).
    async fn block_number(&self) -> Option<String> {
        self.0.block_number.map(|n| n.to_string())
    }
    async fn gas_price(&self) -> Option<DecimalScalar> {
        self.0.gas_price.map(Into::into)
    }
    async fn gas_used(&self) -> Option<String> {
        self.0.gas_used.map(|n| n.to_string())
    }
    /// Raw signed transaction (hex), for crypto withdrawals.
    async fn raw(&self) -> Option<&str> {
        self.0.raw.as_deref()
    }
    /// The chain transfer's hash: a deposit's from the start, a withdrawal's once it is
    /// signed.
    async fn chain_tx_hash(&self) -> Option<&str> {
        self.0.chain_tx_hash.as_deref()
    }
    /// A withdrawal sent through a node: the hash of every transaction signed for it,
    /// oldest first — the first, and each replacement with the same nonce and a higher
    /// fee. At most one of them is ever mined; `chainTxHash` names the newest until then,
    /// and the mined one after. Empty for anything else.
    async fn chain_attempts(&self, ctx: &Context<'_>) -> Result<Vec<String>> {
        if !(self.0.hold && self.0.kind == ledger::TransactionType::Withdraw) {
            return Ok(Vec::new());
        }
        Ok(ctx
            .data_unchecked::<loaders::Attempts>()
            .load_one(self.0.id)
            .await
            .map_err(|e| ledger_error(&e))?
            .unwrap_or_default())
    }
    /// A hold: a crypto movement journaled while it is on its way, with no balance effect
    /// of its own (balanceBefore = balanceAfter). Its `settlements` carry the effect.
    async fn is_hold(&self) -> bool {
        self.0.hold
    }
    /// The client's business reference (not unique; `TransactionFilter.reference` finds
    /// it).
    async fn reference(&self) -> Option<&str> {
        self.0.reference.as_deref()
    }
    /// The client's metadata.
    async fn metadata(&self) -> Option<MetadataScalar> {
        self.0.metadata.clone().map(MetadataScalar)
    }
    /// Crypto withdrawals: what our addresses pay the network. Equal to `fee` unless the
    /// currency has a flat withdrawal fee (then `fee` is that, and the service pays this).
    async fn network_fee(&self) -> Option<DecimalScalar> {
        match (&self.0.network, self.0.kind) {
            (Some(_), ledger::TransactionType::Withdraw | ledger::TransactionType::Refund) => {
                Some(self.0.network_fee.unwrap_or(self.0.fee).into())
            }
            _ => None,
        }
    }
    /// On a reversal: the movement it undoes (same wallet).
    async fn reverses(&self, ctx: &Context<'_>) -> Result<Option<TransactionObject>> {
        same_wallet_row(ctx, self.0.reverses_id).await
    }
    /// The reversal that undid this movement, if any (same wallet).
    async fn reversed_by(&self, ctx: &Context<'_>) -> Result<Option<TransactionObject>> {
        let row = ctx
            .data_unchecked::<loaders::Reversals>()
            .load_one(self.0.id)
            .await
            .map_err(|e| ledger_error(&e))?;
        Ok(row.map(TransactionObject))
    }
    /// On a capture: the hold it settles.
    async fn settles_hold(&self, ctx: &Context<'_>) -> Result<Option<super::holds::HoldObject>> {
        let Some(id) = self.0.settles_hold_id else {
            return Ok(None);
        };
        let mut c = super::conn(ctx).await?;
        let found = ledger::hold::holds_by_ids(&mut c, &[id]).await?;
        Ok(found.into_iter().next().map(super::holds::HoldObject))
    }
    /// On a posting: the crypto movement (hold) it settles.
    async fn settles(&self, ctx: &Context<'_>) -> Result<Option<TransactionObject>> {
        same_wallet_row(ctx, self.0.hold_id).await
    }
    /// On a hold: the postings that settle it, oldest first (a deposit's credit; a
    /// withdrawal's debit and, if the chain failed it, its refund).
    async fn settlements(&self, ctx: &Context<'_>) -> Result<Vec<TransactionObject>> {
        if !self.0.hold {
            return Ok(Vec::new());
        }
        let rows = ctx
            .data_unchecked::<loaders::Settlements>()
            .load_one(self.0.id)
            .await
            .map_err(|e| ledger_error(&e))?
            .unwrap_or_default();
        Ok(rows.into_iter().map(TransactionObject).collect())
    }
}

/// The result of comparing the ledger with an outside balance over a period.
pub struct ReconciliationObject(pub ledger::Reconciliation);

#[Object(name = "Reconciliation")]
impl ReconciliationObject {
    async fn id(&self) -> ID {
        encode_id(NodeType::Reconciliation, self.0.id)
    }
    async fn wallet(&self, ctx: &Context<'_>) -> Result<WalletObject> {
        load_wallet(ctx, self.0.wallet_id).await
    }
    async fn start_time(&self) -> DateTime<Utc> {
        self.0.start_time
    }
    async fn end_time(&self) -> DateTime<Utc> {
        self.0.end_time
    }
    /// The ledger's balance at `endTime`: the balance before `startTime` plus the
    /// movements in `[startTime, endTime]`.
    async fn system_balance(&self) -> DecimalScalar {
        self.0.system_balance.into()
    }
    async fn external_balance(&self) -> DecimalScalar {
        self.0.external_balance.into()
    }
    async fn source(&self) -> ReconciliationSource {
        self.0.source.into()
    }
    async fn status(&self) -> ReconciliationStatus {
        self.0.status.into()
    }
    /// `externalBalance - systemBalance`.
    async fn difference(&self) -> DecimalScalar {
        self.0.difference.into()
    }
    async fn notes(&self) -> Option<&str> {
        self.0.notes.as_deref()
    }
    async fn mismatch_reason(&self) -> Option<&str> {
        self.0.mismatch_reason.as_deref()
    }
    /// Transaction hashes present on only one side (crypto reconciliations).
    async fn unmatched_transactions(&self) -> Vec<String> {
        self.0
            .unmatched_transactions
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A supported currency.
pub struct CurrencyObject(pub ledger::Currency);

#[Object(name = "Currency")]
impl CurrencyObject {
    async fn code(&self) -> &str {
        &self.0.code
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn kind(&self) -> WalletKind {
        self.0.kind.into()
    }
    /// Decimal places an amount may have.
    async fn scale(&self) -> i32 {
        i32::from(self.0.scale)
    }
    async fn network(&self) -> Option<&str> {
        self.0.network.as_deref()
    }
    /// A token's contract on its network (an ERC-20 on ethereum); null for a network's own
    /// coin and for fiat. Deposits of a token go to the address of a wallet in that token.
    async fn contract_address(&self) -> Option<&str> {
        self.0.contract_address.as_deref()
    }
    /// Whether wallets can be created in this currency on this server: false for a crypto
    /// currency whose network has no chain backend here (its deposits could never be
    /// seen).
    async fn enabled(&self) -> bool {
        self.0.enabled
    }
    /// A reconciliation difference up to this amount still counts as matched.
    async fn reconciliation_tolerance(&self) -> DecimalScalar {
        self.0.reconciliation_tolerance.into()
    }
    /// Crypto only: confirmations before a deposit is credited.
    async fn required_confirmations(&self) -> Option<i32> {
        self.0.required_confirmations
    }
    /// The flat fee charged on each withdrawal, credited to fee revenue: fiat on top of
    /// the amount; crypto instead of the network's fee (which the service then pays).
    /// Null: fiat withdrawals are free, crypto ones pay the network's fee.
    async fn withdrawal_fee(&self, ctx: &Context<'_>) -> Option<DecimalScalar> {
        state(ctx)
            .currencies
            .withdrawal_fee(&self.0.code)
            .map(Into::into)
    }
}

/// A transfer as the chain reports it (simulated networks).
pub struct ChainTransferObject(pub crate::chain::ChainTransfer);

#[Object(name = "ChainTransfer")]
impl ChainTransferObject {
    async fn tx_hash(&self) -> &str {
        &self.0.hash
    }
    async fn network(&self) -> &str {
        &self.0.network
    }
    async fn from_address(&self) -> &str {
        &self.0.from_address
    }
    async fn to_address(&self) -> &str {
        &self.0.to_address
    }
    async fn amount(&self) -> DecimalScalar {
        self.0.amount.into()
    }
    /// Paid by the sender.
    async fn fee(&self) -> DecimalScalar {
        self.0.fee.into()
    }
    /// `PENDING` until mined, then `SUCCESS` or `FAILED`.
    async fn status(&self) -> &'static str {
        match self.0.status {
            crate::chain::TransferStatus::Pending => "PENDING",
            crate::chain::TransferStatus::Success => "SUCCESS",
            crate::chain::TransferStatus::Failed => "FAILED",
        }
    }
    /// The including block; null while pending.
    async fn block_number(&self) -> Option<i64> {
        self.0.block_number
    }
    async fn confirmations(&self) -> i64 {
        self.0.confirmations
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// The authenticated caller.
pub struct ViewerObject(pub crate::auth::Viewer);

#[Object(name = "Viewer")]
impl ViewerObject {
    async fn user_id(&self) -> &str {
        &self.0.user_id
    }
    async fn role(&self) -> Role {
        self.0.role.into()
    }
    /// The caller's own wallets.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    async fn wallets(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        #[graphql(validator(custom = "super::validators::Text(ledger::input::MAX_CODE_LEN)"))]
        currency: Option<String>,
    ) -> Result<Connection<String, WalletObject>> {
        let scope = ledger::Scope::Owner(self.0.user_id.clone());
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        super::query::wallets_connection(ctx, &scope, None, currency, args).await
    }
}

/// A revocation of a subject's tokens.
pub struct TokenRevocationObject(pub crate::revocation::Revocation);

#[Object(name = "TokenRevocation")]
impl TokenRevocationObject {
    /// The token subject whose tokens are revoked.
    async fn user_id(&self) -> &str {
        &self.0.subject
    }
    /// Tokens of `userId` issued (`iat`) before this instant are refused: the time of the
    /// revocation rounded up to the next whole second. Mint replacements after it.
    async fn revoked_before(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.revoked_before
    }
    /// Who revoked them: an operator's token subject, or `cli:<user>`.
    async fn revoked_by(&self) -> &str {
        &self.0.revoked_by
    }
    async fn reason(&self) -> &str {
        &self.0.reason
    }
}

/// A sum shown with the currency's decimals (an empty sum reads back as a bare 0).
pub(crate) fn at_currency_scale(
    ctx: &Context<'_>,
    currency: &str,
    amount: rust_decimal::Decimal,
) -> DecimalScalar {
    match state(ctx).currencies.get(currency) {
        Some(c) => ledger::money::at_scale(amount, c).into(),
        None => amount.into(),
    }
}

/// One currency's trial balance.
pub struct TrialBalanceObject(pub ledger::accounts::TrialBalance);

#[Object(name = "TrialBalance")]
impl TrialBalanceObject {
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// The sum of every customer wallet's balance.
    async fn customer_balance(&self, ctx: &Context<'_>) -> DecimalScalar {
        at_currency_scale(ctx, &self.0.currency, self.0.customer_balance)
    }
    /// The currency's system accounts.
    async fn accounts(&self) -> Vec<LedgerAccountObject> {
        self.0
            .accounts
            .iter()
            .cloned()
            .map(LedgerAccountObject)
            .collect()
    }
    /// Customers plus system accounts: "0" in a healthy ledger.
    async fn imbalance(&self) -> DecimalScalar {
        self.0.imbalance.normalize().into()
    }
}

/// A system account of the ledger (`bank`, `custody`, `network_fees`, `fee_revenue`,
/// `gas_funding`) and its balance, the sum of its postings. Customers' wallets and all
/// system accounts of a currency sum to zero: `bank` and `custody` are minus what
/// customers (and, in custody, the operator's gas funding) brought in through them,
/// `network_fees` what custody paid the chain, `fee_revenue` fees charged, `gas_funding`
/// what the operator put at wallet addresses to pay gas.
pub struct LedgerAccountObject(pub ledger::accounts::AccountBalance);

#[Object(name = "LedgerAccount")]
impl LedgerAccountObject {
    async fn code(&self) -> &str {
        &self.0.code
    }
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    async fn balance(&self, ctx: &Context<'_>) -> DecimalScalar {
        at_currency_scale(ctx, &self.0.currency, self.0.balance)
    }
    /// The account's postings, oldest first: each is this account's part of a journal
    /// row's entry, or of a gas funding's.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    async fn postings(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, PostingObject>> {
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        let list = fingerprint(&["postings", &self.0.id.to_string()]);
        let page = args.page_args(list)?;
        let mut c = conn(ctx).await?;
        let rows = ledger::accounts::list_postings(&mut c, self.0.id, &page).await?;
        Ok(connection(
            list,
            rows,
            |p| Cursor {
                created_at: p.created_at,
                id: p.id,
            },
            PostingObject,
        ))
    }
}

/// A posting to a system account.
pub struct PostingObject(pub ledger::accounts::Posting);

#[Object(name = "Posting")]
impl PostingObject {
    /// Signed: the account's balance is the sum of its postings.
    async fn amount(&self) -> DecimalScalar {
        self.0.amount.into()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// The journal row whose entry this posting belongs to; null for a gas funding's
    /// posting (`gasFunding`).
    async fn transaction(&self, ctx: &Context<'_>) -> Result<Option<TransactionObject>> {
        let Some(id) = self.0.transaction_id else {
            return Ok(None);
        };
        let row = ctx
            .data_unchecked::<loaders::Entries>()
            .load_one(id)
            .await
            .map_err(|e| ledger_error(&e))?
            .ok_or(ledger::LedgerError::NotFound("transaction"))?;
        Ok(Some(TransactionObject(row)))
    }
    /// The gas funding whose entry this posting belongs to; null for a journal row's.
    async fn gas_funding(&self, ctx: &Context<'_>) -> Result<Option<GasFundingObject>> {
        let Some(id) = self.0.gas_funding_id else {
            return Ok(None);
        };
        let mut c = conn(ctx).await?;
        Ok(Some(GasFundingObject(
            crate::chain::gas_funding::find(&mut c, id).await?,
        )))
    }
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::chain::gas_funding::GasFundingStatus")]
pub enum GasFundingStatus {
    /// Recorded; its transfer has not been seen on chain yet.
    Expected,
    /// Its transfer is mined; counting confirmations.
    Confirming,
    /// Confirmed and posted: `custody` −amount, `gas_funding` +amount.
    Completed,
    /// Withdrawn by an operator before its transfer was seen.
    Cancelled,
}

/// The network's coin an operator put (or is about to put) at a wallet's address to pay
/// network fees: the service's own money in custody, never the customer's. Its transfer
/// is recognised by sender, receiver and exact amount, and is not a deposit.
pub struct GasFundingObject(pub crate::chain::gas_funding::GasFunding);

#[Object(name = "GasFunding")]
impl GasFundingObject {
    async fn id(&self) -> ID {
        encode_id(NodeType::GasFunding, self.0.id)
    }
    /// The wallet whose address receives it (its balance does not change).
    async fn wallet(&self, ctx: &Context<'_>) -> Result<WalletObject> {
        load_wallet(ctx, self.0.wallet_id).await
    }
    async fn network(&self) -> &str {
        &self.0.network
    }
    /// The network's coin (what gas is paid in).
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// The operator's address it comes from.
    async fn from_address(&self) -> &str {
        &self.0.from_address
    }
    /// The wallet's address.
    async fn to_address(&self) -> &str {
        &self.0.to_address
    }
    async fn amount(&self, ctx: &Context<'_>) -> DecimalScalar {
        at_currency_scale(ctx, &self.0.currency, self.0.amount)
    }
    async fn idempotency_key(&self) -> &str {
        &self.0.idempotency_key
    }
    /// The operator who recorded it (token subject).
    async fn requested_by(&self) -> &str {
        &self.0.requested_by
    }
    async fn status(&self) -> GasFundingStatus {
        self.0.status.into()
    }
    async fn status_reason(&self) -> Option<&str> {
        self.0.status_reason.as_deref()
    }
    /// Its transfer, once seen on chain.
    async fn chain_tx_hash(&self) -> Option<&str> {
        self.0.chain_tx_hash.as_deref()
    }
    async fn block_number(&self) -> Option<i64> {
        self.0.block_number
    }
    async fn confirmations(&self) -> i32 {
        self.0.confirmations
    }
    async fn required_confirmations(&self) -> i32 {
        self.0.required_confirmations
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// A page of gas fundings (operators: the caller checks).
pub async fn gas_fundings_connection(
    ctx: &Context<'_>,
    scope: ListScope,
    args: ConnectionArgs,
) -> Result<Connection<String, GasFundingObject>> {
    let list = fingerprint(&["gas_fundings", &scope_key(&scope)]);
    let page = args.page_args(list)?;
    let mut c = conn(ctx).await?;
    let rows = crate::chain::gas_funding::list(&mut c, &scope, &page).await?;
    drop(c);
    prefetch_wallets(ctx, &["wallet"], rows.items.iter().map(|r| r.wallet_id)).await?;
    Ok(connection(
        list,
        rows,
        |r| Cursor {
            created_at: r.created_at,
            id: r.id,
        },
        GasFundingObject,
    ))
}

/// A transfer between two wallets: both sides, each a journal row of its wallet.
pub struct TransferObject(pub ledger::transfer::Transfer);

#[Object(name = "Transfer")]
impl TransferObject {
    /// The transfer's id: that of its sending side.
    async fn id(&self) -> ID {
        encode_id(NodeType::Transaction, self.0.out.id)
    }
    async fn amount(&self) -> DecimalScalar {
        self.0.out.amount.into()
    }
    async fn currency(&self, ctx: &Context<'_>) -> Result<String> {
        let wallet = ctx
            .data_unchecked::<Wallets>()
            .load_one(self.0.out.wallet_id)
            .await
            .map_err(|e| ledger_error(&e))?
            .ok_or(ledger::LedgerError::NotFound("wallet"))?;
        Ok(wallet.currency)
    }
    /// The sending side (`TRANSFER_OUT`).
    async fn from(&self) -> TransactionObject {
        TransactionObject(self.0.out.clone())
    }
    /// The receiving side (`TRANSFER_IN`): null unless the caller may see the receiving
    /// wallet (its owner, or an operator) — its balances are the recipient's business.
    async fn to(&self, ctx: &Context<'_>) -> Result<Option<TransactionObject>> {
        let viewer = super::viewer(ctx)?;
        if viewer.is_operator() {
            return Ok(Some(TransactionObject(self.0.into.clone())));
        }
        let wallet = ctx
            .data_unchecked::<Wallets>()
            .load_one(self.0.into.wallet_id)
            .await
            .map_err(|e| ledger_error(&e))?;
        Ok(wallet
            .filter(|w| w.user_id == viewer.user_id)
            .map(|_| TransactionObject(self.0.into.clone())))
    }
    /// The client's business reference, on both sides.
    async fn reference(&self) -> Option<&str> {
        self.0.out.reference.as_deref()
    }
    /// The client's metadata, on both sides.
    async fn metadata(&self) -> Option<MetadataScalar> {
        self.0.out.metadata.clone().map(MetadataScalar)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.out.created_at
    }
}
