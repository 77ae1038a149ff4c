//! Query root.

use async_graphql::connection::Connection;
use async_graphql::{Context, ID, Object, Result};

use super::ids::{NodeType, decode_any, decode_id, fingerprint};
use super::pagination::{ConnectionArgs, connection, page_cost};
use super::types::{
    CurrencyObject, GasFundingObject, LedgerAccountObject, Node, ReconciliationObject,
    TransactionFilterInput, TransactionObject, TrialBalanceObject, ViewerObject, WalletObject,
    gas_fundings_connection, reconciliations_connection, transactions_connection,
};
use super::validators::Text;
use super::{conn, require_operator, scope, state, viewer};
use crate::chain::gas_funding;
use crate::ledger::wallet::{self, WalletFilter};
use crate::ledger::{
    Cursor, LedgerError, ListScope, Scope, accounts, input, journal, reconciliation,
};
use crate::replicas::ReadTarget;

pub struct Query;

#[Object]
impl Query {
    /// Fetches any object by its global id; null when it does not exist or is not yours.
    async fn node(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Node>> {
        let scope = scope(ctx)?;
        let (kind, num) = decode_any(&id)?;
        let mut c = conn(ctx).await?;
        let found = match kind {
            NodeType::Wallet => wallet::find_wallet(&mut c, &scope, num)
                .await
                .map(|w| Node::Wallet(WalletObject(w))),
            NodeType::Transaction => journal::find_transaction(&mut c, &scope, num)
                .await
                .map(|t| Node::Transaction(TransactionObject(t))),
            NodeType::Reconciliation => reconciliation::find_reconciliation(&mut c, &scope, num)
                .await
                .map(|r| Node::Reconciliation(ReconciliationObject(r))),
            // Operators' records.
            NodeType::GasFunding if scope == Scope::All => gas_funding::find(&mut c, num)
                .await
                .map(|f| Node::GasFunding(GasFundingObject(f))),
            NodeType::GasFunding => Err(LedgerError::NotFound("gas funding")),
            NodeType::Hold => crate::ledger::hold::hold_by_id(&mut c, &scope, num)
                .await
                .and_then(|h| h.ok_or(LedgerError::NotFound("hold")))
                .map(|h| Node::Hold(super::holds::HoldObject(h))),
            // Reached through their lists (`events`, `webhookEndpoints`, `Wallet.balanceAlerts`).
            NodeType::Event
            | NodeType::WebhookEndpoint
            | NodeType::WebhookDelivery
            | NodeType::BalanceAlert => Err(LedgerError::NotFound("node")),
        };
        match found {
            Ok(node) => Ok(Some(node)),
            Err(LedgerError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The event feed, a page at a time: every committed change after `after` (an event's
    /// `sequence`; default: the oldest kept), oldest first, narrowed to a wallet and/or
    /// types. Your wallets' events (operators: all). Resume from `position`, even when the
    /// page is empty. Older than the retention: `CURSOR_EXPIRED`.
    #[graphql(complexity = "1 + first.unwrap_or(20).clamp(1, 100) as usize * child_complexity")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        first: Option<i32>,
        wallet_id: Option<ID>,
        types: Option<Vec<super::feed::EventType>>,
    ) -> Result<Connection<String, super::feed::EventObject, super::feed::EventPageFields>> {
        super::feed::events_page(ctx, after, first, wallet_id, types).await
    }

    /// Registered webhook endpoints (operators).
    async fn webhook_endpoints(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<super::feed::WebhookEndpointObject>> {
        super::feed::webhook_endpoints(ctx).await
    }

    /// What was sent to an endpoint, oldest first, with every attempt (operators).
    #[graphql(complexity = "1 + first.unwrap_or(20).clamp(1, 100) as usize * child_complexity")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        endpoint_id: ID,
        status: Option<super::feed::WebhookDeliveryStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, super::feed::WebhookDeliveryObject>> {
        super::feed::webhook_deliveries(ctx, endpoint_id, status, first, after).await
    }

    /// The caller.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<ViewerObject> {
        Ok(ViewerObject(viewer(ctx)?.clone()))
    }

    /// One wallet (yours, or any for operators).
    async fn wallet(&self, ctx: &Context<'_>, id: ID) -> Result<WalletObject> {
        let scope = scope(ctx)?;
        let id = decode_id(&id, NodeType::Wallet)?;
        let mut c = conn(ctx).await?;
        Ok(WalletObject(wallet::find_wallet(&mut c, &scope, id).await?))
    }

    /// Wallets visible to the caller, oldest first. `userId` narrows an operator's view.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn wallets(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        #[graphql(validator(custom = "Text(input::MAX_CODE_LEN)"))] currency: Option<String>,
        #[graphql(validator(custom = "Text(input::MAX_USER_ID_LEN)"))] user_id: Option<String>,
    ) -> Result<Connection<String, WalletObject>> {
        let scope = scope(ctx)?;
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        wallets_connection(ctx, &scope, user_id, currency, args).await
    }

    async fn transaction(&self, ctx: &Context<'_>, id: ID) -> Result<TransactionObject> {
        let scope = scope(ctx)?;
        let id = decode_id(&id, NodeType::Transaction)?;
        let mut c = conn(ctx).await?;
        Ok(TransactionObject(
            journal::find_transaction(&mut c, &scope, id).await?,
        ))
    }

    /// The movement a key names on a wallet: the client's idempotency key (a movement's
    /// `idempotencyKey`, also one sent as `txHash`), or a chain deposit's hash. Null when
    /// there is none (yet). A client that lost an answer (a timeout, `OUTCOME_UNKNOWN`)
    /// finds out here whether it happened; sending the same request again with the same
    /// key is always safe too.
    async fn transaction_by_key(
        &self,
        ctx: &Context<'_>,
        wallet_id: ID,
        #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))] key: String,
    ) -> Result<Option<TransactionObject>> {
        let scope = scope(ctx)?;
        let wallet_id = decode_id(&wallet_id, NodeType::Wallet)?;
        let mut c = conn(ctx).await?;
        let found = journal::find_by_key(&mut c, &scope, wallet_id, &key).await?;
        drop(c);
        // Not on a replica may mean not there *yet*: the primary says for sure.
        let found = match (found, ctx.data_opt::<ReadTarget>()) {
            (None, Some(ReadTarget::Replica)) => {
                let mut primary = state(ctx).reads.get().await.map_err(LedgerError::from)?;
                journal::find_by_key(&mut primary, &scope, wallet_id, &key).await?
            }
            (found, _) => found,
        };
        Ok(found.map(TransactionObject))
    }

    /// Journal rows, oldest first: of one wallet, or of every wallet the caller sees.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn transactions(
        &self,
        ctx: &Context<'_>,
        wallet_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
        filter: Option<TransactionFilterInput>,
    ) -> Result<Connection<String, TransactionObject>> {
        let list = visible_list(ctx, wallet_id).await?;
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        transactions_connection(ctx, list, args, filter).await
    }

    /// Reconciliations, oldest first: of one wallet, or of every wallet the caller sees.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    async fn reconciliations(
        &self,
        ctx: &Context<'_>,
        wallet_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, ReconciliationObject>> {
        let list = visible_list(ctx, wallet_id).await?;
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        reconciliations_connection(ctx, list, args).await
    }

    /// Gas fundings, oldest first: of one wallet, or all (operators). See `fundGas`.
    #[graphql(complexity = "page_cost(first, last, child_complexity)")]
    async fn gas_fundings(
        &self,
        ctx: &Context<'_>,
        wallet_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, GasFundingObject>> {
        require_operator(ctx, "read gas fundings")?;
        let list = visible_list(ctx, wallet_id).await?;
        let args = ConnectionArgs {
            first,
            after,
            last,
            before,
        };
        gas_fundings_connection(ctx, list, args).await
    }

    /// The double-entry check, per currency: the customers' total, each system account,
    /// and their sum — `imbalance`, exactly "0" in a healthy ledger (operators).
    async fn trial_balance(&self, ctx: &Context<'_>) -> Result<Vec<TrialBalanceObject>> {
        require_operator(ctx, "read the trial balance")?;
        let mut c = conn(ctx).await?;
        Ok(accounts::trial_balance(&mut c)
            .await?
            .into_iter()
            .map(TrialBalanceObject)
            .collect())
    }

    /// The ledger's system accounts with their balances and postings, by currency and
    /// code; `currency` and `code` narrow the list (operators).
    async fn ledger_accounts(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(custom = "Text(input::MAX_CODE_LEN)"))] currency: Option<String>,
        #[graphql(validator(custom = "Text(input::MAX_CODE_LEN)"))] code: Option<String>,
    ) -> Result<Vec<LedgerAccountObject>> {
        require_operator(ctx, "read the ledger's accounts")?;
        let mut c = conn(ctx).await?;
        Ok(accounts::account_balances(&mut c, currency.as_deref())
            .await?
            .into_iter()
            .filter(|a| code.as_ref().is_none_or(|code| &a.code == code))
            .map(LedgerAccountObject)
            .collect())
    }

    /// Supported currencies and their scales (no authentication needed).
    async fn currencies(&self, ctx: &Context<'_>) -> Vec<CurrencyObject> {
        state(ctx)
            .currencies
            .all()
            .cloned()
            .map(CurrencyObject)
            .collect()
    }
}

/// The list a `walletId` argument names, after checking the caller may see that wallet.
async fn visible_list(ctx: &Context<'_>, wallet_id: Option<ID>) -> Result<ListScope> {
    let scope = scope(ctx)?;
    match wallet_id {
        None => Ok(ListScope::from(&scope)),
        Some(id) => {
            let id = decode_id(&id, NodeType::Wallet)?;
            let mut c = conn(ctx).await?;
            let w = wallet::find_wallet(&mut c, &scope, id).await?;
            Ok(ListScope::Wallet(w.id))
        }
    }
}

pub(crate) async fn wallets_connection(
    ctx: &Context<'_>,
    scope: &Scope,
    user_id: Option<String>,
    currency: Option<String>,
    args: ConnectionArgs,
) -> Result<Connection<String, WalletObject>> {
    let list = fingerprint(&[
        "wallets",
        scope.owner().unwrap_or("*"),
        user_id.as_deref().unwrap_or("*"),
        currency.as_deref().unwrap_or("*"),
    ]);
    let page = args.page_args(list)?;
    let filter = WalletFilter { user_id, currency };
    let mut c = conn(ctx).await?;
    let rows = wallet::list_wallets(&mut c, scope, &filter, &page).await?;
    Ok(connection(
        list,
        rows,
        |w| Cursor {
            created_at: w.created_at,
            id: w.id,
        },
        WalletObject,
    ))
}
