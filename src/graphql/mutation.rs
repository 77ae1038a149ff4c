//! Mutation root: each mutation takes one `input` object.

use async_graphql::{Context, ID, InputObject, Object, Result};
use chrono::{DateTime, Utc};

use super::error::{bad_input, forbidden};
use super::ids::{NodeType, decode_id};
use super::scalars::{DecimalScalar, MetadataScalar};
use super::types::ChainTransferObject;
use super::types::{
    GasFundingObject, ReconciliationObject, TokenRevocationObject, TransactionObject,
    TransferObject, WalletObject,
};
use super::validators::Text;
use super::{deadline, require_operator, scope, state, viewer};
use crate::chain::reconciliation::ChainReconciliation;
use crate::chain::withdrawal::{self, WithdrawalRequest};
use crate::chain::{Networks, SimulatedChain};
use crate::chain::{deposit, gas_funding};
use crate::custody::{Chain, validate_address};
use crate::ledger::movement::{Direction, MovementRequest};
use crate::ledger::reconciliation::{self, ExternalReconciliation};
use crate::ledger::reversal::{self, ReversalRequest};
use crate::ledger::transfer::TransferRequest;
use crate::ledger::{Currency, LedgerError, input, money, outcome, wallet};

#[derive(InputObject)]
pub struct CreateWalletInput {
    /// Currency code, e.g. `USD`.
    #[graphql(validator(custom = "Text(input::MAX_CODE_LEN)"))]
    pub currency: String,
    /// Owner of the new wallet; defaults to the caller. Only operators may name someone
    /// else.
    #[graphql(validator(custom = "Text(input::MAX_USER_ID_LEN)"))]
    pub user_id: Option<String>,
}

#[derive(InputObject)]
pub struct DepositInput {
    pub wallet_id: ID,
    /// Positive, with at most the currency's decimals, as a string.
    pub amount: DecimalScalar,
    /// Idempotency key, scoped to the wallet: the same key with the same request returns
    /// the original result; with a different request it is `IDEMPOTENCY_CONFLICT`.
    /// Required: this, or its deprecated name `txHash`.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: Option<String>,
    /// The former name of `idempotencyKey`: the same key. Give one of them (or both,
    /// equal).
    #[graphql(
        validator(custom = "Text(input::MAX_KEY_LEN)"),
        deprecation = "Use idempotencyKey; txHash will be removed in the next release."
    )]
    pub tx_hash: Option<String>,
    #[graphql(validator(custom = "Text(input::MAX_DESCRIPTION_LEN)"))]
    pub description: Option<String>,
    /// A business reference (e.g. the bank's statement id): not unique, searchable with
    /// `TransactionFilter.reference`.
    #[graphql(validator(custom = "Text(input::MAX_REFERENCE_LEN)"))]
    pub reference: Option<String>,
    pub metadata: Option<MetadataScalar>,
}

#[derive(InputObject)]
pub struct WithdrawInput {
    pub wallet_id: ID,
    /// Positive, with at most the currency's decimals, as a string.
    pub amount: DecimalScalar,
    /// Idempotency key, scoped to the wallet: the same key with the same request returns
    /// the original result; with a different request it is `IDEMPOTENCY_CONFLICT`.
    /// Required: this, or its deprecated name `txHash`.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: Option<String>,
    /// The former name of `idempotencyKey`: the same key. Give one of them (or both,
    /// equal).
    #[graphql(
        validator(custom = "Text(input::MAX_KEY_LEN)"),
        deprecation = "Use idempotencyKey; txHash will be removed in the next release."
    )]
    pub tx_hash: Option<String>,
    #[graphql(validator(custom = "Text(input::MAX_DESCRIPTION_LEN)"))]
    pub description: Option<String>,
    /// A business reference (e.g. the bank's statement id): not unique, searchable with
    /// `TransactionFilter.reference`.
    #[graphql(validator(custom = "Text(input::MAX_REFERENCE_LEN)"))]
    pub reference: Option<String>,
    pub metadata: Option<MetadataScalar>,
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

#[derive(InputObject)]
pub struct ProcessCryptoDepositInput {
    pub wallet_id: ID,
    /// The chain transaction's hash.
    #[graphql(validator(custom = "Text(input::MAX_ADDRESS_LEN)"))]
    pub tx_hash: String,
}

#[derive(InputObject)]
pub struct CryptoWithdrawInput {
    pub wallet_id: ID,
    /// Destination on the wallet's network (bech32 for bitcoin; 0x… for ethereum, EIP-55
    /// checked when mixed case).
    #[graphql(validator(custom = "Text(input::MAX_ADDRESS_LEN)"))]
    pub to_address: String,
    /// Positive, with at most the currency's decimals, as a string. The fee (the
    /// network's, or the currency's `withdrawalFee`) is added on top and locked with it.
    pub amount: DecimalScalar,
    /// The same key with the same request returns the original withdrawal.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: String,
    /// A business reference (e.g. the bank's statement id): not unique, searchable with
    /// `TransactionFilter.reference`.
    #[graphql(validator(custom = "Text(input::MAX_REFERENCE_LEN)"))]
    pub reference: Option<String>,
    pub metadata: Option<MetadataScalar>,
}

#[derive(InputObject)]
pub struct TransferInput {
    /// The wallet the money leaves: the caller's own (operators: any).
    pub from_wallet_id: ID,
    /// The wallet the money reaches: anyone's, in the same currency.
    pub to_wallet_id: ID,
    /// Positive, with at most the currency's decimals, as a string.
    pub amount: DecimalScalar,
    /// Scoped to the source wallet: the same key with the same request returns the
    /// original transfer.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: String,
    #[graphql(validator(custom = "Text(input::MAX_DESCRIPTION_LEN)"))]
    pub description: Option<String>,
    /// A business reference (e.g. the bank's statement id): not unique, searchable with
    /// `TransactionFilter.reference`.
    #[graphql(validator(custom = "Text(input::MAX_REFERENCE_LEN)"))]
    pub reference: Option<String>,
    pub metadata: Option<MetadataScalar>,
}

#[derive(InputObject)]
pub struct ReverseTransactionInput {
    /// The completed fiat movement or transfer (either side) to undo.
    pub transaction_id: ID,
    /// Scoped to the reversed transaction's wallet: the same key with the same request
    /// returns the original reversal.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: String,
    /// Why: kept as the reversal's description.
    #[graphql(validator(custom = "Text(input::MAX_DESCRIPTION_LEN)"))]
    pub reason: String,
}

#[derive(InputObject)]
pub struct SimulateIncomingTransferInput {
    /// `bitcoin` or `ethereum`.
    #[graphql(validator(custom = "Text(input::MAX_CODE_LEN)"))]
    pub network: String,
    #[graphql(validator(custom = "Text(input::MAX_ADDRESS_LEN)"))]
    pub to_address: String,
    pub amount: DecimalScalar,
}

#[derive(InputObject)]
pub struct MineBlocksInput {
    #[graphql(validator(custom = "Text(input::MAX_CODE_LEN)"))]
    pub network: String,
    /// 1 to 1000.
    pub count: i32,
}

#[derive(InputObject)]
pub struct RevokeTokensInput {
    /// The token subject (`sub`) whose tokens to revoke.
    #[graphql(validator(custom = "Text(input::MAX_USER_ID_LEN)"))]
    pub user_id: String,
    /// Why: kept with the revocation.
    #[graphql(validator(custom = "Text(input::MAX_DESCRIPTION_LEN)"))]
    pub reason: String,
}

#[derive(InputObject)]
pub struct FundGasInput {
    /// The wallet whose address receives the gas (ether or token wallet).
    pub wallet_id: ID,
    /// The operator's own address the transfer will come from (not a wallet's).
    #[graphql(validator(custom = "Text(input::MAX_ADDRESS_LEN)"))]
    pub from_address: String,
    /// Exactly what the transfer will send, in the network's coin (e.g. ETH).
    pub amount: DecimalScalar,
    /// Scoped to the wallet: the same key with the same request returns the original.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: String,
}

#[derive(InputObject)]
pub struct CancelGasFundingInput {
    /// A gas funding still `EXPECTED`.
    pub id: ID,
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
        let (currencies, custody) = (state(ctx).currencies.clone(), state(ctx).custody.clone());
        let (w, _created) =
            outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
                wallet::create_wallet(&mut c, &currencies, &custody, &owner, &input.currency).await
            })
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
            (input.idempotency_key, input.tx_hash),
            input.description,
            (input.reference, input.metadata),
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
            (input.idempotency_key, input.tx_hash),
            input.description,
            (input.reference, input.metadata),
        )
        .await
    }

    /// Credits a chain transfer to a crypto wallet's address once it has the network's
    /// confirmations (the wallet's owner, or operators). Exactly once per transaction.
    async fn process_crypto_deposit(
        &self,
        ctx: &Context<'_>,
        input: ProcessCryptoDepositInput,
    ) -> Result<TransactionObject> {
        let scope = scope(ctx)?;
        let wallet_id = decode_id(&input.wallet_id, NodeType::Wallet)?;
        let chain = chain(ctx)?;
        let currencies = state(ctx).currencies.clone();
        let done = outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
            deposit::process_deposit(
                &mut c,
                &currencies,
                &chain,
                &scope,
                wallet_id,
                &input.tx_hash,
            )
            .await
        })
        .await?;
        Ok(TransactionObject(done.entry))
    }

    /// Sends crypto to an outside address (the wallet's owner, or operators). Amount + fee
    /// are locked at once and the withdrawal is returned PENDING; a worker signs and
    /// broadcasts it (PROCESSING, debited) and completes it after the network's
    /// confirmations, or marks it FAILED and refunds it if the chain fails it.
    async fn crypto_withdraw(
        &self,
        ctx: &Context<'_>,
        input: CryptoWithdrawInput,
    ) -> Result<TransactionObject> {
        let scope = scope(ctx)?;
        let request = WithdrawalRequest {
            wallet_id: decode_id(&input.wallet_id, NodeType::Wallet)?,
            to_address: input.to_address,
            amount: input.amount.0,
            key: input.idempotency_key,
            reference: input.reference,
            metadata: input.metadata.map(|m| m.0),
        };
        let chain = chain(ctx)?;
        let currencies = state(ctx).currencies.clone();
        let done = outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
            withdrawal::request(&mut c, &currencies, &chain, &scope, &request).await
        })
        .await?;
        // Sign and send it now rather than at the next poll.
        state(ctx).chain_wakeup.notify_one();
        Ok(TransactionObject(done.entry))
    }

    /// Moves money between two wallets of the same currency (fiat): a `TRANSFER_OUT` row
    /// on the source and a `TRANSFER_IN` row on the target, in one database transaction
    /// (group-committed with other movements).
    /// The source's owner or an operator may send, to any wallet.
    async fn transfer(&self, ctx: &Context<'_>, input: TransferInput) -> Result<TransferObject> {
        let scope = scope(ctx)?;
        let request = TransferRequest {
            from_wallet_id: decode_id(&input.from_wallet_id, NodeType::Wallet)?,
            to_wallet_id: decode_id(&input.to_wallet_id, NodeType::Wallet)?,
            amount: input.amount.0,
            key: input.idempotency_key,
            description: input.description,
            reference: input.reference,
            metadata: input.metadata.map(|m| m.0),
        };
        let done = state(ctx)
            .committer
            .transfer(scope, request, deadline(ctx))
            .await?;
        Ok(TransferObject(done))
    }

    /// Undoes a completed fiat movement or transfer (operators) with a `REVERSAL` row that
    /// moves the same amount and fee the other way; a transfer is reversed on both sides.
    /// Also the credit of a chain deposit, only while the deposit is `REORGED` (its
    /// transaction left the chain after it was credited). Once per transaction
    /// (`ALREADY_REVERSED`); refused if a wallet would go below its locked funds
    /// (`INSUFFICIENT_FUNDS`). Returns the reversal on the given transaction's wallet.
    async fn reverse_transaction(
        &self,
        ctx: &Context<'_>,
        input: ReverseTransactionInput,
    ) -> Result<TransactionObject> {
        require_operator(ctx, "reverse transactions")?;
        let request = ReversalRequest {
            transaction_id: decode_id(&input.transaction_id, NodeType::Transaction)?,
            key: input.idempotency_key,
            reason: input.reason,
        };
        let currencies = state(ctx).currencies.clone();
        let done = outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
            reversal::execute(&mut c, &currencies, &request).await
        })
        .await?;
        Ok(TransactionObject(done.entry))
    }

    /// Reserves money on a fiat wallet (the caller's own, or any for operators): the
    /// available balance falls, the balance does not, and nothing is posted. With
    /// `toWalletId`, a held transfer to that wallet. What is not captured is given back
    /// at `expiresAt`. The same key returns the hold.
    async fn authorize_hold(
        &self,
        ctx: &Context<'_>,
        input: super::holds::AuthorizeHoldInput,
    ) -> Result<super::holds::HoldObject> {
        super::holds::authorize_hold(ctx, input).await
    }

    /// Moves up to what a hold still reserves (default: all of it) as a `WITHDRAW`, or a
    /// transfer to the hold's target; partial captures until it is fully captured, or
    /// `final: true` gives back the rest. More than remains is `HOLD_EXCEEDED`; a hold
    /// voided, expired or fully captured is `HOLD_NOT_ACTIVE`.
    async fn capture_hold(
        &self,
        ctx: &Context<'_>,
        input: super::holds::CaptureHoldInput,
    ) -> Result<super::holds::HoldObject> {
        super::holds::capture_hold(ctx, input).await
    }

    /// Registers a webhook endpoint (operators): every later event of `eventTypes` (of
    /// `walletIds`, if given) is POSTed to `url`, signed (Standard Webhooks), in order, at
    /// least once. The answer carries the signing secret, shown this once.
    async fn create_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: super::feed::CreateWebhookEndpointInput,
    ) -> Result<super::feed::WebhookEndpointObject> {
        super::feed::create_webhook_endpoint(ctx, input).await
    }

    /// A new signing secret (shown this once); the old one keeps signing beside it for 24
    /// hours (operators).
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<super::feed::WebhookEndpointObject> {
        super::feed::rotate_webhook_secret(ctx, id).await
    }

    /// Stops deliveries to an endpoint (operators); a `WEBHOOK_ENDPOINT_DISABLED` event
    /// says so.
    async fn disable_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<super::feed::WebhookEndpointObject> {
        super::feed::set_webhook_endpoint_enabled(ctx, id, false).await
    }

    /// Delivers to an endpoint again, starting with what it has not received (operators).
    async fn enable_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<super::feed::WebhookEndpointObject> {
        super::feed::set_webhook_endpoint_enabled(ctx, id, true).await
    }

    /// Sends a delivery's event again, with the same id and body, before the endpoint's
    /// other pending deliveries (operators).
    async fn redeliver_webhook(
        &self,
        ctx: &Context<'_>,
        delivery_id: ID,
    ) -> Result<super::feed::WebhookDeliveryObject> {
        super::feed::redeliver_webhook(ctx, delivery_id).await
    }

    /// Watches a wallet's available balance (yours; operators: any): a `BALANCE_ALERT`
    /// event each time it crosses `below` downwards or `above` upwards — once per
    /// crossing, re-armed by crossing back.
    async fn create_balance_alert(
        &self,
        ctx: &Context<'_>,
        input: super::feed::CreateBalanceAlertInput,
    ) -> Result<super::feed::BalanceAlertObject> {
        super::feed::create_balance_alert(ctx, input).await
    }

    /// Removes a balance alert.
    async fn delete_balance_alert(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<super::feed::BalanceAlertObject> {
        super::feed::delete_balance_alert(ctx, id).await
    }

    /// Gives back what a hold still reserves.
    async fn void_hold(
        &self,
        ctx: &Context<'_>,
        input: super::holds::VoidHoldInput,
    ) -> Result<super::holds::HoldObject> {
        super::holds::void_hold(ctx, input).await
    }

    /// Sets how far below zero a fiat wallet's balance may go (operators); every change is
    /// recorded (`Wallet.creditLimitChanges`). A limit below what is already used is
    /// allowed: new debits are then refused until the balance recovers.
    async fn set_credit_limit(
        &self,
        ctx: &Context<'_>,
        input: super::holds::SetCreditLimitInput,
    ) -> Result<WalletObject> {
        super::holds::set_credit_limit(ctx, input).await
    }

    /// Simulated chain only (operators): a transfer from an outside address, pending until
    /// the next block.
    #[graphql(visible = "simulator_enabled")]
    async fn simulate_incoming_transfer(
        &self,
        ctx: &Context<'_>,
        input: SimulateIncomingTransferInput,
    ) -> Result<ChainTransferObject> {
        require_operator(ctx, "simulate chain transfers")?;
        let chain = simulator(ctx)?;
        let currency = network_currency(ctx, &input.network)?;
        let amount = money::validate_amount(input.amount.0, currency)?;
        let custody_chain =
            Chain::from_network(&input.network).ok_or_else(|| bad_input("unknown network"))?;
        let to = validate_address(custody_chain, &input.to_address)
            .map_err(LedgerError::InvalidAddress)?;
        let transfer = chain
            .incoming(&input.network, &to, amount)
            .await
            .map_err(LedgerError::from)?;
        Ok(ChainTransferObject(transfer))
    }

    /// Simulated chain only (operators): mines `count` blocks now and returns the new
    /// height.
    #[graphql(visible = "simulator_enabled")]
    async fn mine_blocks(&self, ctx: &Context<'_>, input: MineBlocksInput) -> Result<i64> {
        require_operator(ctx, "mine blocks")?;
        let chain = simulator(ctx)?;
        network_currency(ctx, &input.network)?;
        if !(1..=1000).contains(&input.count) {
            return Err(bad_input("count must be 1 to 1000"));
        }
        let height = chain
            .mine(&input.network, i64::from(input.count))
            .await
            .map_err(LedgerError::from)?;
        state(ctx).chain_wakeup.notify_one();
        Ok(height)
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
        let currencies = state(ctx).currencies.clone();
        let Some(external) = input.external_balance else {
            // No outside balance: a crypto wallet is compared with the chain.
            let chain = state(ctx).chains.clone();
            if chain.is_empty() {
                return Err(bad_input(
                    "externalBalance is required: this server has no chain to compare with",
                ));
            }
            let request = ChainReconciliation {
                wallet_id,
                start: input.start_time,
                end: input.end_time,
            };
            let row = outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
                crate::chain::reconciliation::reconcile_chain(
                    &mut c,
                    &currencies,
                    &chain,
                    &scope,
                    &request,
                )
                .await
            })
            .await?;
            return Ok(ReconciliationObject(row));
        };
        let request = ExternalReconciliation {
            wallet_id,
            start: input.start_time,
            end: input.end_time,
            external_balance: external.0,
        };
        let row = outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
            reconciliation::reconcile_external(&mut c, &currencies, &scope, &request).await
        })
        .await?;
        Ok(ReconciliationObject(row))
    }

    /// Records the network's coin an operator is about to send to a wallet's address to
    /// pay gas (operators): a token wallet's withdrawals pay their gas from it, and an
    /// ether wallet's address short of its wallet is made whole by it. The transfer —
    /// from `fromAddress` to the wallet's address, exactly `amount` — is recognised on
    /// chain and is never the customer's deposit: at the network's confirmations it is
    /// posted to `custody` (−) and `gas_funding` (+); the wallet's balance does not
    /// change. Record it first, then send it (a transfer seen before it is recorded is a
    /// deposit). Returns it `EXPECTED`.
    async fn fund_gas(&self, ctx: &Context<'_>, input: FundGasInput) -> Result<GasFundingObject> {
        let operator = require_operator(ctx, "fund gas")?.user_id.clone();
        let request = gas_funding::FundingRequest {
            wallet_id: decode_id(&input.wallet_id, NodeType::Wallet)?,
            from_address: input.from_address,
            amount: input.amount.0,
            key: input.idempotency_key,
            requested_by: operator,
        };
        let currencies = state(ctx).currencies.clone();
        let (funding, _) =
            outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
                gas_funding::request(&mut c, &currencies, &request).await
            })
            .await?;
        Ok(GasFundingObject(funding))
    }

    /// Withdraws a gas funding whose transfer will not come (operators): only while it is
    /// `EXPECTED`; no transfer matches it afterwards.
    async fn cancel_gas_funding(
        &self,
        ctx: &Context<'_>,
        input: CancelGasFundingInput,
    ) -> Result<GasFundingObject> {
        require_operator(ctx, "cancel gas fundings")?;
        let id = decode_id(&input.id, NodeType::GasFunding)?;
        let funding = outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
            gas_funding::cancel(&mut c, id).await
        })
        .await?;
        Ok(GasFundingObject(funding))
    }

    /// Revokes every token of `userId` issued until now (operators): a leaked token stops
    /// working without changing the secret. This server refuses them at once, every other
    /// within its revocation refresh period (2 s by default). Tokens minted after
    /// `revokedBefore` work. Revoking again moves the cutoff forward.
    async fn revoke_tokens(
        &self,
        ctx: &Context<'_>,
        input: RevokeTokensInput,
    ) -> Result<TokenRevocationObject> {
        let operator = require_operator(ctx, "revoke tokens")?.user_id.clone();
        // A subject no token can carry has nothing to revoke; a revocation says why.
        if input.user_id.is_empty() || input.user_id.len() > crate::auth::MAX_SUBJECT_LEN {
            return Err(bad_input(format!(
                "userId must be 1 to {} bytes",
                crate::auth::MAX_SUBJECT_LEN
            )));
        }
        if input.reason.trim().is_empty() {
            return Err(bad_input("reason must not be blank"));
        }
        let revocations = &state(ctx).revocations;
        match revocations.room_for(&input.user_id).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(bad_input(format!(
                    "more than {} subjects are revoked within the longest token lifetime: \
                     rotate the JWT secret instead",
                    crate::revocation::MAX_RECENT_REVOCATIONS
                )));
            }
            Err(_) => {
                return Err(
                    LedgerError::Unavailable("token revocations cannot be read".into()).into(),
                );
            }
        }
        let revocation =
            outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
                Ok::<_, LedgerError>(
                    crate::revocation::revoke(&mut c, &input.user_id, &operator, &input.reason)
                        .await?,
                )
            })
            .await?;
        revocations.record(&revocation);
        tracing::warn!(
            subject = %revocation.subject,
            revoked_before = %revocation.revoked_before,
            revoked_by = %revocation.revoked_by,
            reason = %revocation.reason,
            "tokens revoked"
        );
        Ok(TokenRevocationObject(revocation))
    }
}

/// The chain behind crypto movements.
fn chain(ctx: &Context<'_>) -> Result<Networks> {
    let chains = state(ctx).chains.clone();
    if chains.is_empty() {
        return Err(LedgerError::ChainUnavailable("no chain is configured".into()).into());
    }
    Ok(chains)
}

fn simulator_enabled(ctx: &Context<'_>) -> bool {
    ctx.data_opt::<crate::app::AppState>()
        .is_none_or(|s| s.simulator.is_some())
}

fn simulator<'a>(ctx: &Context<'a>) -> Result<&'a SimulatedChain> {
    state(ctx)
        .simulator
        .as_ref()
        .ok_or_else(|| forbidden("no simulated network is enabled on this server"))
}

/// The enabled coin of a simulated network (not one of its tokens), or `BAD_USER_INPUT`.
fn network_currency<'a>(ctx: &Context<'a>, network: &str) -> Result<&'a Currency> {
    use crate::chain::Chain as _;
    let currency = state(ctx)
        .currencies
        .all()
        .find(|c| {
            c.enabled && c.network.as_deref() == Some(network) && c.contract_address.is_none()
        })
        .ok_or_else(|| bad_input(format!("unknown network {network:?} (bitcoin or ethereum)")))?;
    if !state(ctx).chains.is_simulated(network) {
        return Err(bad_input(format!(
            "{network} is served by a node on this server, not by the simulator: send a real \
             transfer and mine with the node"
        )));
    }
    Ok(currency)
}

/// The client's idempotency key of an input that also takes it under its deprecated name
/// `txHash`: one key, given once (or twice, the same).
fn idempotency_key(key: Option<String>, tx_hash: Option<String>) -> Result<String> {
    match (key, tx_hash) {
        (Some(key), None) | (None, Some(key)) => Ok(key),
        (Some(key), Some(tx_hash)) if key == tx_hash => Ok(key),
        (Some(_), Some(_)) => Err(bad_input(
            "give one of idempotencyKey and txHash (its deprecated name): they differ",
        )),
        (None, None) => Err(bad_input("idempotencyKey is required")),
    }
}

async fn move_money(
    ctx: &Context<'_>,
    direction: Direction,
    wallet_id: ID,
    amount: DecimalScalar,
    (key, tx_hash): (Option<String>, Option<String>),
    description: Option<String>,
    (reference, metadata): (Option<String>, Option<MetadataScalar>),
) -> Result<TransactionObject> {
    let scope = scope(ctx)?;
    let key = idempotency_key(key, tx_hash)?;
    let request = MovementRequest {
        wallet_id: decode_id(&wallet_id, NodeType::Wallet)?,
        direction,
        amount: amount.0,
        key,
        description,
        reference,
        metadata: metadata.map(|m| m.0),
    };
    let done = state(ctx)
        .committer
        .execute(scope, request, deadline(ctx))
        .await?;
    Ok(TransactionObject(done.entry))
}
