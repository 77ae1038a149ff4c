//! Holds and credit limits over GraphQL: thin views and the mutations' inputs. The rules
//! live in `ledger::hold`.

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Object, Result};
use chrono::{DateTime, SubsecRound, Utc};

use super::error::ledger_error;
use super::ids::{NodeType, decode_id, encode_id, fingerprint};
use super::pagination::{ConnectionArgs, connection};
use super::scalars::{DecimalScalar, MetadataScalar};
use super::types::{TransactionObject, WalletObject, at_currency_scale, load_wallet, scope_key};
use super::validators::Text;
use super::{conn, deadline, require_operator, scope, state, viewer};
use crate::ledger::hold::credit::{self, CreditLimitChange, CreditLimitRequest};
use crate::ledger::hold::{
    self, AuthorizeRequest, CaptureRequest, Hold, HoldOp, HoldRequest, Located, VoidRequest,
};
use crate::ledger::{Cursor, ListScope, Scope, input, outcome};

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::ledger::hold::HoldStatus")]
pub enum HoldStatus {
    /// Reserving what is not captured yet.
    Active,
    /// Fully captured, or captured with `final` (the rest given back).
    Captured,
    /// Voided: what remained was given back.
    Voided,
    /// Past `expiresAt`: what remained was given back by the service.
    Expired,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::ledger::hold::HoldEventKind")]
pub enum HoldEventKind {
    Authorized,
    Captured,
    Voided,
    Expired,
}

#[derive(InputObject)]
pub struct AuthorizeHoldInput {
    /// The wallet whose money is reserved: the caller's own (operators: any). Fiat only.
    pub wallet_id: ID,
    /// Positive, with at most the currency's decimals, as a string.
    pub amount: DecimalScalar,
    /// Scoped to the wallet: the same key with the same request returns the hold.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: String,
    /// Makes it a held transfer (escrow): captures move the money to this wallet
    /// (anyone's, same currency).
    pub to_wallet_id: Option<ID>,
    /// When what remains is given back (default: the server's hold period, 7 days unless
    /// configured; at most its cap, 30 days unless configured).
    pub expires_at: Option<DateTime<Utc>>,
    #[graphql(validator(custom = "Text(input::MAX_DESCRIPTION_LEN)"))]
    pub description: Option<String>,
    #[graphql(validator(custom = "Text(input::MAX_REFERENCE_LEN)"))]
    pub reference: Option<String>,
    pub metadata: Option<MetadataScalar>,
}

#[derive(InputObject)]
pub struct CaptureHoldInput {
    pub hold_id: ID,
    /// At most what remains (default: all of it).
    pub amount: Option<DecimalScalar>,
    /// Scoped to the hold; also the key of the capture's row in the wallet's journal (so
    /// it must differ from the keys of the wallet's other movements).
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: String,
    /// Give back what remains after this capture, ending the hold.
    pub r#final: Option<bool>,
}

#[derive(InputObject)]
pub struct VoidHoldInput {
    pub hold_id: ID,
    /// Scoped to the hold.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: String,
}

#[derive(InputObject)]
pub struct SetCreditLimitInput {
    /// A fiat wallet.
    pub wallet_id: ID,
    /// Zero or more: the balance may go down to `-limit`.
    pub limit: DecimalScalar,
    /// Scoped to the wallet.
    #[graphql(validator(custom = "Text(input::MAX_KEY_LEN)"))]
    pub idempotency_key: String,
    /// Why: kept with the change.
    #[graphql(validator(custom = "Text(input::MAX_DESCRIPTION_LEN)"))]
    pub reason: String,
}

/// Money reserved on a wallet now and settled later.
pub struct HoldObject(pub Hold);

#[Object(name = "Hold")]
impl HoldObject {
    pub async fn id(&self) -> ID {
        encode_id(NodeType::Hold, self.0.id)
    }
    async fn wallet(&self, ctx: &Context<'_>) -> Result<WalletObject> {
        load_wallet(ctx, self.0.wallet_id).await
    }
    /// A held transfer's target.
    async fn to(&self, ctx: &Context<'_>) -> Result<Option<WalletObject>> {
        match self.0.to_wallet_id {
            Some(id) => Ok(Some(load_wallet(ctx, id).await?)),
            None => Ok(None),
        }
    }
    /// What was authorised.
    async fn amount(&self, ctx: &Context<'_>) -> Result<DecimalScalar> {
        scaled(ctx, self.0.wallet_id, self.0.amount).await
    }
    /// The sum of the captures.
    async fn captured(&self, ctx: &Context<'_>) -> Result<DecimalScalar> {
        scaled(ctx, self.0.wallet_id, self.0.captured).await
    }
    /// Still reserved: `amount - captured` while `ACTIVE`, zero after.
    async fn remaining(&self, ctx: &Context<'_>) -> Result<DecimalScalar> {
        scaled(ctx, self.0.wallet_id, self.0.remaining()).await
    }
    /// Given back by a void, the expiry or a final capture.
    async fn released(&self, ctx: &Context<'_>) -> Result<DecimalScalar> {
        scaled(ctx, self.0.wallet_id, self.0.released).await
    }
    async fn status(&self) -> HoldStatus {
        self.0.status.into()
    }
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn reference(&self) -> Option<&str> {
        self.0.reference.as_deref()
    }
    async fn metadata(&self) -> Option<MetadataScalar> {
        self.0.metadata.clone().map(MetadataScalar)
    }
    /// The movements that settled it, oldest first: `WITHDRAW` rows, or a held
    /// transfer's `TRANSFER_OUT` rows (each names its `TRANSFER_IN` as `counterpart`).
    async fn captures(&self, ctx: &Context<'_>) -> Result<Vec<TransactionObject>> {
        let mut c = conn(ctx).await?;
        let mut by_hold = hold::captures_of(&mut c, &[self.0.id]).await?;
        Ok(by_hold
            .remove(&self.0.id)
            .unwrap_or_default()
            .into_iter()
            .map(TransactionObject)
            .collect())
    }
    /// Its lifecycle, oldest first (append-only).
    async fn events(&self, ctx: &Context<'_>) -> Result<Vec<HoldEventObject>> {
        let mut c = conn(ctx).await?;
        let mut by_hold = hold::events_of(&mut c, &[self.0.id]).await?;
        Ok(by_hold
            .remove(&self.0.id)
            .unwrap_or_default()
            .into_iter()
            .map(|e| HoldEventObject(e, self.0.wallet_id))
            .collect())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// An amount of wallet `wallet_id`, with exactly its currency's decimals (a zero read
/// back from Postgres has lost them).
async fn scaled(
    ctx: &Context<'_>,
    wallet_id: i64,
    amount: rust_decimal::Decimal,
) -> Result<DecimalScalar> {
    let wallet = load_wallet(ctx, wallet_id).await?;
    Ok(at_currency_scale(ctx, &wallet.0.currency, amount))
}

/// One step of a hold's lifecycle (with its hold's wallet, for the currency).
pub struct HoldEventObject(pub hold::HoldEvent, pub i64);

#[Object(name = "HoldEvent")]
impl HoldEventObject {
    async fn kind(&self) -> HoldEventKind {
        self.0.kind.into()
    }
    /// `AUTHORIZED`: the amount reserved; `CAPTURED`: the amount moved; otherwise zero.
    async fn amount(&self, ctx: &Context<'_>) -> Result<DecimalScalar> {
        scaled(ctx, self.1, self.0.amount).await
    }
    /// What this step gave back.
    async fn released(&self, ctx: &Context<'_>) -> Result<DecimalScalar> {
        scaled(ctx, self.1, self.0.released).await
    }
    /// `CAPTURED`: the movement on the hold's wallet.
    async fn transaction(&self, ctx: &Context<'_>) -> Result<Option<TransactionObject>> {
        let Some(id) = self.0.transaction_id else {
            return Ok(None);
        };
        let loader = ctx.data_unchecked::<super::loaders::Entries>();
        let row = loader.load_one(id).await.map_err(|e| ledger_error(&e))?;
        Ok(row.map(TransactionObject))
    }
    /// The token subject who asked, or `expiry` (the service).
    async fn actor(&self) -> &str {
        &self.0.actor
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// One change of a wallet's credit limit.
pub struct CreditLimitChangeObject(pub CreditLimitChange);

#[Object(name = "CreditLimitChange")]
impl CreditLimitChangeObject {
    async fn id(&self) -> ID {
        ID(format!("CreditLimitChange:{}", self.0.id))
    }
    async fn previous_limit(&self, ctx: &Context<'_>) -> Result<DecimalScalar> {
        scaled(ctx, self.0.wallet_id, self.0.previous_limit).await
    }
    async fn limit(&self, ctx: &Context<'_>) -> Result<DecimalScalar> {
        scaled(ctx, self.0.wallet_id, self.0.new_limit).await
    }
    async fn reason(&self) -> &str {
        &self.0.reason
    }
    /// The operator's token subject.
    async fn changed_by(&self) -> &str {
        &self.0.changed_by
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// `Wallet.holds`.
pub async fn holds_connection(
    ctx: &Context<'_>,
    scope: ListScope,
    status: Option<HoldStatus>,
    args: ConnectionArgs,
) -> Result<Connection<String, HoldObject>> {
    let status_key = status.map_or("any", |s| hold::HoldStatus::from(s).as_str());
    let list = fingerprint(&["holds", &scope_key(&scope), status_key]);
    let page = args.page_args(list)?;
    let mut c = conn(ctx).await?;
    let rows = hold::list(&mut c, &scope, status.map(Into::into), &page).await?;
    Ok(connection(
        list,
        rows,
        |h| Cursor {
            created_at: h.created_at,
            id: h.id,
        },
        HoldObject,
    ))
}

/// `Wallet.creditLimitChanges`.
pub async fn credit_limit_changes_connection(
    ctx: &Context<'_>,
    wallet_id: i64,
    args: ConnectionArgs,
) -> Result<Connection<String, CreditLimitChangeObject>> {
    let list = fingerprint(&["credit_limit_changes", &wallet_id.to_string()]);
    let page = args.page_args(list)?;
    let mut c = conn(ctx).await?;
    let rows = credit::changes(&mut c, wallet_id, &page).await?;
    Ok(connection(
        list,
        rows,
        |r| Cursor {
            created_at: r.created_at,
            id: r.id,
        },
        CreditLimitChangeObject,
    ))
}

pub async fn authorize_hold(ctx: &Context<'_>, input: AuthorizeHoldInput) -> Result<HoldObject> {
    let scope = scope(ctx)?;
    let request = AuthorizeRequest {
        wallet_id: decode_id(&input.wallet_id, NodeType::Wallet)?,
        to_wallet_id: input
            .to_wallet_id
            .as_ref()
            .map(|id| decode_id(id, NodeType::Wallet))
            .transpose()?,
        amount: input.amount.0,
        key: input.idempotency_key,
        // Stored with microseconds: a replay must compare equal.
        expires_at: input.expires_at.map(|at| at.trunc_subsecs(6)),
        description: input.description,
        reference: input.reference,
        metadata: input.metadata.map(|m| m.0),
        policy: state(ctx).holds,
    };
    let owner = scope.owner().map(str::to_owned);
    let hold = submit(ctx, scope, HoldOp::Authorize(request)).await?;
    // A user's own wallet: its owner is known, and its capture need not read the hold.
    if let Some(owner) = owner {
        state(ctx).located_holds.remember(&hold.0, &owner);
    }
    Ok(hold)
}

pub async fn capture_hold(ctx: &Context<'_>, input: CaptureHoldInput) -> Result<HoldObject> {
    let scope = scope(ctx)?;
    let request = CaptureRequest {
        hold_id: decode_id(&input.hold_id, NodeType::Hold)?,
        amount: input.amount.map(|a| a.0),
        key: input.idempotency_key,
        final_capture: input.r#final.unwrap_or(false),
    };
    let located = locate(ctx, &scope, request.hold_id).await?;
    submit(ctx, scope, HoldOp::Capture(request, located)).await
}

pub async fn void_hold(ctx: &Context<'_>, input: VoidHoldInput) -> Result<HoldObject> {
    let scope = scope(ctx)?;
    let request = VoidRequest {
        hold_id: decode_id(&input.hold_id, NodeType::Hold)?,
        key: input.idempotency_key,
    };
    let located = locate(ctx, &scope, request.hold_id).await?;
    submit(ctx, scope, HoldOp::Void(request, located)).await
}

/// What a capture or void needs of its hold before the committer locks it.
async fn locate(ctx: &Context<'_>, scope: &Scope, hold_id: i64) -> Result<Located> {
    let mut c = conn(ctx).await?;
    Ok(hold::locate(&mut c, &state(ctx).located_holds, scope, hold_id).await?)
}

/// Through the group committer, like every movement.
async fn submit(ctx: &Context<'_>, scope: Scope, op: HoldOp) -> Result<HoldObject> {
    let request = HoldRequest {
        op,
        actor: viewer(ctx)?.user_id.clone(),
    };
    let hold = state(ctx)
        .committer
        .hold(scope, request, deadline(ctx))
        .await?;
    Ok(HoldObject(hold))
}

pub async fn set_credit_limit(
    ctx: &Context<'_>,
    input: SetCreditLimitInput,
) -> Result<WalletObject> {
    let actor = require_operator(ctx, "set credit limits")?.user_id.clone();
    let request = CreditLimitRequest {
        wallet_id: decode_id(&input.wallet_id, NodeType::Wallet)?,
        limit: input.limit.0,
        key: input.idempotency_key,
        reason: input.reason,
    };
    let currencies = state(ctx).currencies.clone();
    let wallet = outcome::detached(&state(ctx).pool, deadline(ctx), move |mut c| async move {
        credit::set_limit(&mut c, &currencies, &actor, &request).await
    })
    .await?;
    Ok(WalletObject(wallet))
}
