//! Mutation root: each mutation takes one `input` object (SPEC §3).

use async_graphql::{Context, ID, InputObject, Object, Result};
use chrono::{DateTime, Utc};

use super::error::{bad_input, forbidden};
use super::ids::{NodeType, decode_id};
use super::scalars::DecimalScalar;
use super::types::{ReconciliationObject, TransactionObject, WalletObject};
use super::{conn, require_operator, scope, state, viewer};
use crate::ledger::movement::{self, Direction, MovementRequest};
use crate::ledger::reconciliation::{self, ExternalReconciliation};
use crate::ledger::wallet;

#[derive(InputObject)]
pub struct CreateWalletInput {
    /// Currency code, e.g. `USD`.
    pub currency: String,
    /// Owner of the new wallet; defaults to the caller. Only operators may name someone
    /// else.
    pub user_id: Option<String>,
}

#[derive(InputObject)]
pub struct DepositInput {
    pub wallet_id: ID,
    /// Positive, with at most the currency's decimals, as a string.
    pub amount: DecimalScalar,
    /// Idempotency key: the same key with the same request returns the original result.
    pub tx_hash: String,
    pub description: Option<String>,
}

#[derive(InputObject)]
pub struct WithdrawInput {
    pub wallet_id: ID,
    /// Positive, with at most the currency's decimals, as a string.
    pub amount: DecimalScalar,
    /// Idempotency key: the same key with the same request returns the original result.
    pub tx_hash: String,
    pub description: Option<String>,
}

#[derive(InputObject)]
pub struct ReconcileWalletInput {
    pub wallet_id: ID,
    /// Start of the period (inclusive).
    pub start_time: DateTime<Utc>,
    /// End of the period (inclusive).
    pub end_time: DateTime<Utc>,
    /// The balance an outside source reports at `endTime` (required for fiat).
    pub external_balance: Option<DecimalScalar>,
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// Opens the caller's (or, for operators, `userId`'s) wallet in a currency. Calling it
    /// again returns the existing wallet.
    async fn create_wallet(
        &self,
        ctx: &Context<'_>,
        input: CreateWalletInput,
    ) -> Result<WalletObject> {
        let caller = viewer(ctx)?;
        let owner = match input.user_id {
            Some(user) if user != caller.user_id && !caller.is_operator() => {
                return Err(forbidden("you may only create wallets for yourself"));
            }
            Some(user) => user,
            None => caller.user_id.clone(),
        };
        let mut c = conn(ctx).await?;
        let (w, _created) = wallet::create_wallet(
            &mut c,
            &state(ctx).currencies,
            &state(ctx).custody,
            &owner,
            &input.currency,
        )
        .await?;
        Ok(WalletObject(w))
    }

    /// Credits a fiat wallet (operators: the payment back office reports deposits).
    async fn deposit(&self, ctx: &Context<'_>, input: DepositInput) -> Result<TransactionObject> {
        require_operator(ctx, "deposit")?;
        move_money(
            ctx,
            Direction::Deposit,
            input.wallet_id,
            input.amount,
            input.tx_hash,
            input.description,
        )
        .await
    }

    /// Debits a fiat wallet; never below zero.
    async fn withdraw(&self, ctx: &Context<'_>, input: WithdrawInput) -> Result<TransactionObject> {
        move_money(
            ctx,
            Direction::Withdraw,
            input.wallet_id,
            input.amount,
            input.tx_hash,
            input.description,
        )
        .await
    }

    /// Compares the ledger over `[startTime, endTime]` with an outside balance and records
    /// the result (operators).
    async fn reconcile_wallet(
        &self,
        ctx: &Context<'_>,
        input: ReconcileWalletInput,
    ) -> Result<ReconciliationObject> {
        require_operator(ctx, "reconcile wallets")?;
        let scope = scope(ctx)?;
        let wallet_id = decode_id(&input.wallet_id, NodeType::Wallet)?;
        let Some(external) = input.external_balance else {
            return Err(bad_input(
                "externalBalance is required to reconcile a fiat wallet",
            ));
        };
        let request = ExternalReconciliation {
            wallet_id,
            start: input.start_time,
            end: input.end_time,
            external_balance: external.0,
        };
        let mut c = conn(ctx).await?;
        let row =
            reconciliation::reconcile_external(&mut c, &state(ctx).currencies, &scope, &request)
                .await?;
        Ok(ReconciliationObject(row))
    }
}

async fn move_money(
    ctx: &Context<'_>,
    direction: Direction,
    wallet_id: ID,
    amount: DecimalScalar,
    tx_hash: String,
    description: Option<String>,
) -> Result<TransactionObject> {
    let scope = scope(ctx)?;
    let request = MovementRequest {
        wallet_id: decode_id(&wallet_id, NodeType::Wallet)?,
        direction,
        amount: amount.0,
        key: tx_hash,
        description,
    };
    let mut c = conn(ctx).await?;
    let done = movement::execute(&mut c, &state(ctx).currencies, &scope, &request).await?;
    Ok(TransactionObject(done.entry))
}
