//! The event feed, webhook endpoints and balance alerts over GraphQL: thin views, the
//! resumable `events` subscription, and the mutations' inputs. The rules live in
//! `events` (feed, webhooks, stream) and `ledger::alert`.

use std::collections::VecDeque;
use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{
    Context, Enum, ErrorExtensions, ID, InputObject, Object, Result, SimpleObject,
};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::error::{bad_input, coded};
use super::holds::HoldObject;
use super::ids::{NodeType, decode_id, encode_id};
use super::scalars::DecimalScalar;
use super::types::{ReconciliationObject, TransactionObject, WalletObject, load_wallet};
use super::validators::Text;
use super::{conn, require_operator, scope, state, viewer};
use crate::db::PgPool;
use crate::events::feed::{self, Filter, Position, PositionError};
use crate::events::webhook::{self, DeliveryStatus};
use crate::events::{self as ev, AlertDirection, Audience, Notice, Payload, outbox};
use crate::ledger::alert::{self, BalanceAlert};
use crate::ledger::page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::ledger::{LedgerError, wallet};

/// The position asked for is older than the feed keeps.
pub const CURSOR_EXPIRED: &str = "CURSOR_EXPIRED";

#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
#[graphql(remote = "crate::events::EventType")]
pub enum EventType {
    /// A journal row was written.
    TransactionCreated,
    /// A journal row's status or confirmations changed.
    TransactionUpdated,
    /// The wallet's balance, locked or held balance or credit limit changed.
    WalletUpdated,
    HoldAuthorized,
    /// Part or all of a hold was captured.
    HoldCaptured,
    HoldVoided,
    HoldExpired,
    ReconciliationRecorded,
    /// The available balance crossed one of the wallet's alert thresholds.
    BalanceAlert,
    /// A webhook endpoint was disabled (operators only).
    WebhookEndpointDisabled,
}

/// One committed change, at its place in the feed.
pub struct EventObject(pub Arc<Notice>);

#[Object(name = "Event")]
impl EventObject {
    /// Stable: the same in webhook deliveries (`Webhook-Id`) and stream messages
    /// (`Nats-Msg-Id`).
    async fn id(&self) -> ID {
        encode_id(NodeType::Event, self.0.id)
    }
    /// The event's position: gap-free and increasing in commit order. Pass it as `after`
    /// to resume after this event.
    async fn sequence(&self) -> String {
        self.0.sequence.to_string()
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> EventType {
        self.0.kind.into()
    }
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }
    /// The wallet the event is about: as the change left it for `WALLET_UPDATED` and
    /// `BALANCE_ALERT`, as it is now otherwise. Null only for operators' events.
    async fn wallet(&self, ctx: &Context<'_>) -> Result<Option<WalletObject>> {
        match &self.0.payload {
            Payload::Wallet(w) | Payload::Alert(_, w) => Ok(Some(WalletObject(w.clone()))),
            _ => match self.0.wallet_id {
                Some(id) => Ok(Some(load_wallet(ctx, id).await?)),
                None => Ok(None),
            },
        }
    }
    /// The journal row, with the status and confirmations this event recorded.
    async fn transaction(&self) -> Option<TransactionObject> {
        match &self.0.payload {
            Payload::Transaction(e) => Some(TransactionObject((**e).clone())),
            _ => None,
        }
    }
    /// The hold, with the status and progress this event recorded.
    async fn hold(&self) -> Option<HoldObject> {
        match &self.0.payload {
            Payload::Hold(h) => Some(HoldObject(h.clone())),
            _ => None,
        }
    }
    async fn reconciliation(&self) -> Option<ReconciliationObject> {
        match &self.0.payload {
            Payload::Reconciliation(r) => Some(ReconciliationObject(r.clone())),
            _ => None,
        }
    }
    /// For `BALANCE_ALERT`: which threshold was crossed.
    async fn alert(&self) -> Option<AlertFiredObject> {
        match &self.0.payload {
            Payload::Alert(a, _) => Some(AlertFiredObject {
                alert: encode_id(NodeType::BalanceAlert, a.alert_id),
                direction: match a.direction {
                    AlertDirection::Below => AlertDirectionGql::Below,
                    AlertDirection::Above => AlertDirectionGql::Above,
                },
                threshold: a.threshold.into(),
                available_balance: a.available.into(),
            }),
            _ => None,
        }
    }
    /// For `WEBHOOK_ENDPOINT_DISABLED`: the endpoint and why (`FAILING`, `OPERATOR`).
    async fn webhook_endpoint(&self) -> Option<DisabledEndpointObject> {
        match &self.0.payload {
            Payload::Endpoint(e) => Some(DisabledEndpointObject {
                id: encode_id(NodeType::WebhookEndpoint, e.endpoint_id),
                url: e.url.clone(),
                reason: e.reason.clone(),
            }),
            _ => None,
        }
    }
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "AlertDirection")]
pub enum AlertDirectionGql {
    /// The available balance fell under `below`.
    Below,
    /// The available balance rose over `above`.
    Above,
}

#[derive(SimpleObject)]
#[graphql(name = "AlertFired")]
pub struct AlertFiredObject {
    /// The `BalanceAlert`'s id.
    alert: ID,
    direction: AlertDirectionGql,
    threshold: DecimalScalar,
    /// After the change that crossed it.
    available_balance: DecimalScalar,
}

#[derive(SimpleObject)]
#[graphql(name = "DisabledEndpoint")]
pub struct DisabledEndpointObject {
    id: ID,
    url: String,
    reason: String,
}

/// Where a page of the feed ended.
#[derive(SimpleObject)]
pub struct EventPageFields {
    /// Pass as `after` for the next page: the last event scanned (events the filters left
    /// out included), so a filtered reader never scans them twice.
    position: String,
    /// The newest event's sequence when the page was read.
    head: String,
}

fn parse_after(after: Option<&str>) -> Result<Option<i64>> {
    after
        .map(|a| {
            a.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| bad_input(format!("after: {a:?} is not an event sequence")))
        })
        .transpose()
}

fn expired(oldest: i64) -> async_graphql::Error {
    coded(
        CURSOR_EXPIRED,
        format!(
            "events after this position are no longer kept; the oldest is {oldest} \
             (resume from it, and reconcile by querying)"
        ),
    )
    .extend_with(|_, e| e.set("oldest", oldest.to_string()))
}

fn refused(e: PositionError) -> async_graphql::Error {
    match e {
        PositionError::Expired { oldest } => expired(oldest),
        PositionError::Ahead { head } => bad_input(format!(
            "after: no event has this sequence yet (the newest is {head})"
        )),
    }
}

/// The reader's filter, checked now: a wallet the caller cannot see is `NOT_FOUND`.
async fn reader(
    ctx: &Context<'_>,
    wallet_id: Option<&ID>,
    types: Option<Vec<EventType>>,
) -> Result<(Audience, Filter)> {
    let scope = scope(ctx)?;
    let wallet_id = match wallet_id {
        Some(id) => {
            let id = decode_id(id, NodeType::Wallet)?;
            let mut c = conn(ctx).await?;
            wallet::find_wallet(&mut c, &scope, id).await?;
            Some(id)
        }
        None => None,
    };
    let types: Option<Vec<ev::EventType>> = types.map(|t| t.into_iter().map(Into::into).collect());
    let owner = scope.owner().map(str::to_owned);
    Ok((
        Audience {
            owner: owner.clone(),
            wallet_id,
            types: types.clone(),
        },
        Filter {
            wallet_id,
            owner,
            types,
        },
    ))
}

/// `Query.events`.
pub async fn events_page(
    ctx: &Context<'_>,
    after: Option<String>,
    first: Option<i32>,
    wallet_id: Option<ID>,
    types: Option<Vec<EventType>>,
) -> Result<Connection<String, EventObject, EventPageFields>> {
    let limit = i64::from(first.unwrap_or(DEFAULT_PAGE_SIZE as i32));
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(bad_input(format!(
            "first must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    let after = parse_after(after.as_deref())?;
    let (audience, filter) = reader(ctx, wallet_id.as_ref(), types).await?;
    let mut c = conn(ctx).await?;
    let start = match after {
        Some(n) => n,
        None => feed::oldest(&mut c).await? - 1,
    };
    let (from, head) = feed::resolve(&mut c, start).await?.map_err(refused)?;
    let page = feed::page(&mut c, from, head, &filter, limit).await?;
    let notices = outbox::load_notices(&mut c, &page.rows).await?;
    let mut connection = Connection::with_additional_fields(
        after.is_some_and(|a| a > 0),
        page.next < head,
        EventPageFields {
            position: page.next.sequence.to_string(),
            head: head.sequence.to_string(),
        },
    );
    connection.edges.extend(
        notices
            .into_iter()
            .filter(|n| audience.admits(n))
            .map(|n| Edge::new(n.sequence.to_string(), EventObject(Arc::new(n)))),
    );
    Ok(connection)
}

/// `Subscription.events`: every stored event after `after` (or from now), then live, with
/// no gap or repeat at the seam; a subscriber that falls behind reads from the table
/// until it has caught up again, and is never dropped.
pub async fn events_stream(
    ctx: &Context<'_>,
    after: Option<String>,
    wallet_id: Option<ID>,
    types: Option<Vec<EventType>>,
) -> Result<BoxStream<'static, Result<EventObject>>> {
    let after = parse_after(after.as_deref())?;
    let (audience, filter) = reader(ctx, wallet_id.as_ref(), types).await?;
    let app = state(ctx);
    // Subscribed before the start is read: whatever the listener publishes from now on
    // reaches this stream, and what it published before is in the table.
    let receiver = app.events.subscribe();
    let mut c = conn(ctx).await?;
    let start = match after {
        Some(n) => feed::resolve(&mut c, n).await?.map_err(refused)?.0,
        None => feed::head(&mut c).await?,
    };
    drop(c);
    let reader = FeedReader {
        pool: app.reads.clone(),
        receiver,
        audience,
        filter,
        cursor: start,
        ready: VecDeque::new(),
        live: false,
    };
    Ok(stream::unfold(reader, |mut reader| async move {
        let item = reader.next().await?;
        Some((item, reader))
    })
    .boxed())
}

struct FeedReader {
    pool: PgPool,
    receiver: tokio::sync::broadcast::Receiver<Arc<Notice>>,
    audience: Audience,
    filter: Filter,
    /// The last event passed (delivered or filtered out).
    cursor: Position,
    ready: VecDeque<Arc<Notice>>,
    /// Following the bus (else reading the table).
    live: bool,
}

/// Events read from the table per query while catching up.
const CATCH_UP_PAGE: i64 = 256;

impl FeedReader {
    async fn next(&mut self) -> Option<Result<EventObject>> {
        loop {
            if let Some(n) = self.ready.pop_front() {
                return Some(Ok(EventObject(n)));
            }
            if !self.live {
                match self.catch_up().await {
                    Ok(()) => continue,
                    Err(e) => {
                        // The database is away: wait and try again rather than end.
                        tracing::warn!(error = ?e, "event feed subscriber could not read the feed");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            match self.receiver.recv().await {
                Ok(notice) => {
                    if notice.sequence <= self.cursor.sequence {
                        continue;
                    }
                    if notice.sequence != self.cursor.sequence + 1 {
                        // Something between was not seen here: read it from the table.
                        self.live = false;
                        continue;
                    }
                    self.cursor = Position {
                        sequence: notice.sequence,
                        event_id: notice.id,
                    };
                    if self.audience.admits(&notice) {
                        return Some(Ok(EventObject(notice)));
                    }
                }
                Err(RecvError::Lagged(_)) => self.live = false,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Reads one page from the table; goes live once at the head this process has read.
    async fn catch_up(&mut self) -> Result<(), LedgerError> {
        let mut c = self.pool.get().await?;
        let head = feed::head(&mut c).await?;
        if self.cursor >= head {
            // Everything numbered is passed; the bus carries what comes next (what it
            // carried meanwhile is skipped by sequence, a gap sends the reader back here).
            self.live = true;
            return Ok(());
        }
        let page = feed::page(&mut c, self.cursor, head, &self.filter, CATCH_UP_PAGE).await?;
        let notices = outbox::load_notices(&mut c, &page.rows).await?;
        self.ready.extend(
            notices
                .into_iter()
                .filter(|n| self.audience.admits(n))
                .map(Arc::new),
        );
        self.cursor = page.next;
        Ok(())
    }
}

// --- Balance alerts ---

pub struct BalanceAlertObject(pub BalanceAlert);

#[Object(name = "BalanceAlert")]
impl BalanceAlertObject {
    async fn id(&self) -> ID {
        encode_id(NodeType::BalanceAlert, self.0.id)
    }
    async fn wallet(&self, ctx: &Context<'_>) -> Result<WalletObject> {
        load_wallet(ctx, self.0.wallet_id).await
    }
    /// Fires when the available balance falls from at or above this to under it.
    async fn below(&self) -> Option<DecimalScalar> {
        self.0.below.map(Into::into)
    }
    /// Fires when the available balance rises from at or under this to over it.
    async fn above(&self) -> Option<DecimalScalar> {
        self.0.above.map(Into::into)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(InputObject)]
pub struct CreateBalanceAlertInput {
    /// Your wallet (operators: any).
    pub wallet_id: ID,
    pub below: Option<DecimalScalar>,
    pub above: Option<DecimalScalar>,
}

pub async fn create_balance_alert(
    ctx: &Context<'_>,
    input: CreateBalanceAlertInput,
) -> Result<BalanceAlertObject> {
    let scope = scope(ctx)?;
    let actor = viewer(ctx)?.user_id.clone();
    let wallet_id = decode_id(&input.wallet_id, NodeType::Wallet)?;
    let currencies = state(ctx).currencies.clone();
    let mut c = state(ctx).pool.get().await.map_err(LedgerError::from)?;
    let alert = alert::create(
        &mut c,
        &scope,
        wallet_id,
        input.below.map(|d| d.0),
        input.above.map(|d| d.0),
        |code| currencies.get(code).map(|c| c.scale()),
        &actor,
    )
    .await?;
    Ok(BalanceAlertObject(alert))
}

pub async fn delete_balance_alert(ctx: &Context<'_>, id: ID) -> Result<BalanceAlertObject> {
    let scope = scope(ctx)?;
    let id = decode_id(&id, NodeType::BalanceAlert)?;
    let mut c = state(ctx).pool.get().await.map_err(LedgerError::from)?;
    Ok(BalanceAlertObject(alert::delete(&mut c, &scope, id).await?))
}

// --- Webhooks ---

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::events::webhook::EndpointStatus")]
pub enum WebhookEndpointStatus {
    Enabled,
    /// By an operator, or after failing for a day: nothing is sent; enabling it again
    /// delivers what happened meanwhile.
    Disabled,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::events::webhook::DeliveryStatus")]
pub enum WebhookDeliveryStatus {
    /// Waiting for its first or next attempt.
    Pending,
    Succeeded,
    /// The receiver answered 4xx (not 408 or 429): not retried.
    Failed,
}

pub struct WebhookEndpointObject {
    pub endpoint: webhook::Endpoint,
    /// Only in the answers of `createWebhookEndpoint` and `rotateWebhookSecret`.
    pub secret: Option<String>,
}

#[Object(name = "WebhookEndpoint")]
impl WebhookEndpointObject {
    async fn id(&self) -> ID {
        encode_id(NodeType::WebhookEndpoint, self.endpoint.id)
    }
    async fn url(&self) -> &str {
        &self.endpoint.url
    }
    async fn event_types(&self) -> Vec<EventType> {
        self.endpoint
            .event_types()
            .into_iter()
            .map(Into::into)
            .collect()
    }
    /// Null: every wallet.
    async fn wallet_ids(&self) -> Option<Vec<ID>> {
        self.endpoint.wallet_ids().map(|ids| {
            ids.into_iter()
                .map(|id| encode_id(NodeType::Wallet, id))
                .collect()
        })
    }
    async fn description(&self) -> Option<&str> {
        self.endpoint.description.as_deref()
    }
    async fn status(&self) -> WebhookEndpointStatus {
        self.endpoint.status.into()
    }
    /// `OPERATOR` or `FAILING`, while disabled.
    async fn disabled_reason(&self) -> Option<&str> {
        self.endpoint.disabled_reason.as_deref()
    }
    /// The signing secret (`whsec_…`, as Standard Webhooks libraries take it): shown when
    /// the endpoint is created and when it is rotated, never again.
    async fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }
    /// The feed sequence up to which deliveries were made.
    async fn position(&self) -> String {
        self.endpoint.position.to_string()
    }
    /// Since when the oldest pending delivery has been failing.
    async fn failing_since(&self) -> Option<DateTime<Utc>> {
        self.endpoint.failing_since
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.endpoint.created_at
    }
}

pub struct WebhookDeliveryObject(pub webhook::Delivery);

#[Object(name = "WebhookDelivery")]
impl WebhookDeliveryObject {
    async fn id(&self) -> ID {
        encode_id(NodeType::WebhookDelivery, self.0.id)
    }
    /// The event's id: sent as `Webhook-Id`, the same on every attempt and redelivery.
    async fn event_id(&self) -> ID {
        encode_id(NodeType::Event, self.0.event_id)
    }
    async fn sequence(&self) -> String {
        self.0.sequence.to_string()
    }
    async fn event_type(&self) -> Option<EventType> {
        self.0
            .event_type
            .parse::<ev::EventType>()
            .ok()
            .map(Into::into)
    }
    async fn status(&self) -> WebhookDeliveryStatus {
        self.0.status.into()
    }
    async fn attempt_count(&self) -> i32 {
        self.0.attempts
    }
    /// When the next attempt is due (pending deliveries).
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        (self.0.status == DeliveryStatus::Pending).then_some(self.0.next_attempt_at)
    }
    async fn last_response_code(&self) -> Option<i32> {
        self.0.last_status_code
    }
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    /// The body sent (JSON).
    async fn body(&self) -> &str {
        &self.0.body
    }
    /// A manual redelivery names the delivery it repeats.
    async fn redelivery_of(&self) -> Option<ID> {
        self.0
            .redelivery_of
            .map(|id| encode_id(NodeType::WebhookDelivery, id))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.0.completed_at
    }
    /// Every attempt, oldest first.
    async fn attempts(&self, ctx: &Context<'_>) -> Result<Vec<WebhookAttemptObject>> {
        let mut c = conn(ctx).await?;
        Ok(webhook::attempts_of(&mut c, &[self.0.id])
            .await?
            .into_iter()
            .map(|a| WebhookAttemptObject {
                attempted_at: a.attempted_at,
                latency_ms: a.latency_ms,
                response_code: a.status_code,
                error: a.error,
                succeeded: a.succeeded,
            })
            .collect())
    }
}

#[derive(SimpleObject)]
#[graphql(name = "WebhookAttempt")]
pub struct WebhookAttemptObject {
    attempted_at: DateTime<Utc>,
    latency_ms: i32,
    /// Null when no answer came (timeout, connection refused).
    response_code: Option<i32>,
    error: Option<String>,
    succeeded: bool,
}

#[derive(InputObject)]
pub struct CreateWebhookEndpointInput {
    /// `https` (production), to a public address unless the server allows private ones.
    #[graphql(validator(custom = "Text(2048)"))]
    pub url: String,
    /// At least one.
    pub event_types: Vec<EventType>,
    /// Only these wallets' events (default: every wallet).
    pub wallet_ids: Option<Vec<ID>>,
    #[graphql(validator(custom = "Text(500)"))]
    pub description: Option<String>,
}

pub async fn create_webhook_endpoint(
    ctx: &Context<'_>,
    input: CreateWebhookEndpointInput,
) -> Result<WebhookEndpointObject> {
    let actor = require_operator(ctx, "register webhook endpoints")?
        .user_id
        .clone();
    let wallet_ids = input
        .wallet_ids
        .map(|ids| {
            ids.iter()
                .map(|id| decode_id(id, NodeType::Wallet))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    let mut c = state(ctx).pool.get().await.map_err(LedgerError::from)?;
    let (endpoint, secret) = webhook::create(
        &mut c,
        state(ctx).webhook_targets,
        webhook::NewEndpoint {
            url: input.url,
            event_types: input.event_types.into_iter().map(Into::into).collect(),
            wallet_ids,
            description: input.description,
        },
        &actor,
    )
    .await?;
    Ok(WebhookEndpointObject {
        endpoint,
        secret: Some(secret),
    })
}

pub async fn rotate_webhook_secret(ctx: &Context<'_>, id: ID) -> Result<WebhookEndpointObject> {
    require_operator(ctx, "rotate webhook secrets")?;
    let id = decode_id(&id, NodeType::WebhookEndpoint)?;
    let mut c = state(ctx).pool.get().await.map_err(LedgerError::from)?;
    let (endpoint, secret) = webhook::rotate_secret(&mut c, id).await?;
    Ok(WebhookEndpointObject {
        endpoint,
        secret: Some(secret),
    })
}

pub async fn set_webhook_endpoint_enabled(
    ctx: &Context<'_>,
    id: ID,
    enabled: bool,
) -> Result<WebhookEndpointObject> {
    require_operator(ctx, "change webhook endpoints")?;
    let id = decode_id(&id, NodeType::WebhookEndpoint)?;
    let mut c = state(ctx).pool.get().await.map_err(LedgerError::from)?;
    let endpoint = match enabled {
        true => webhook::enable(&mut c, id).await?,
        false => webhook::disable(&mut c, id, "OPERATOR").await?,
    };
    Ok(WebhookEndpointObject {
        endpoint,
        secret: None,
    })
}

pub async fn redeliver_webhook(
    ctx: &Context<'_>,
    delivery_id: ID,
) -> Result<WebhookDeliveryObject> {
    require_operator(ctx, "redeliver webhooks")?;
    let id = decode_id(&delivery_id, NodeType::WebhookDelivery)?;
    let mut c = state(ctx).pool.get().await.map_err(LedgerError::from)?;
    Ok(WebhookDeliveryObject(webhook::redeliver(&mut c, id).await?))
}

pub async fn webhook_endpoints(ctx: &Context<'_>) -> Result<Vec<WebhookEndpointObject>> {
    require_operator(ctx, "list webhook endpoints")?;
    let mut c = conn(ctx).await?;
    Ok(webhook::list(&mut c)
        .await?
        .into_iter()
        .map(|endpoint| WebhookEndpointObject {
            endpoint,
            secret: None,
        })
        .collect())
}

pub async fn webhook_deliveries(
    ctx: &Context<'_>,
    endpoint_id: ID,
    status: Option<WebhookDeliveryStatus>,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Connection<String, WebhookDeliveryObject>> {
    require_operator(ctx, "list webhook deliveries")?;
    let endpoint = decode_id(&endpoint_id, NodeType::WebhookEndpoint)?;
    let limit = i64::from(first.unwrap_or(DEFAULT_PAGE_SIZE as i32));
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(bad_input(format!(
            "first must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    let after = after
        .map(|a| decode_id(&ID(a), NodeType::WebhookDelivery))
        .transpose()?;
    let mut c = conn(ctx).await?;
    webhook::get(&mut c, endpoint).await?;
    let mut rows =
        webhook::deliveries(&mut c, endpoint, status.map(Into::into), after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut connection = Connection::new(after.is_some(), more);
    connection.edges.extend(rows.into_iter().map(|d| {
        Edge::new(
            encode_id(NodeType::WebhookDelivery, d.id).0,
            WebhookDeliveryObject(d),
        )
    }));
    Ok(connection)
}
