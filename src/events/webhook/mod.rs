//! Webhook endpoints: operators register URLs, and every feed event of the types (and
//! wallets) an endpoint names is delivered to it — signed (Standard Webhooks), at least
//! once, in feed order, retried with backoff, every attempt recorded. See [`deliver`] for
//! the delivery worker.
//!
//! State lives in Postgres: an endpoint's feed position (what it has been given
//! deliveries for), its queue of deliveries, and a lease naming the process sending to it.
//! So delivery survives restarts of every process, and processes share endpoints without
//! two of them sending to one endpoint at once.

pub mod deliver;
pub mod sign;
pub mod target;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::EventType;
use super::feed;
use crate::ledger::LedgerError;
use crate::ledger::models::text_enum;
use crate::schema::{events, wallets, webhook_attempts, webhook_deliveries, webhook_endpoints};

pub use deliver::{WebhookConfig, spawn_dispatcher};
pub use target::TargetPolicy;

text_enum! {
    pub enum EndpointStatus {
        Enabled => "ENABLED",
        Disabled => "DISABLED",
    }
}

text_enum! {
    pub enum DeliveryStatus {
        /// Waiting for its (next) attempt.
        Pending => "PENDING",
        Succeeded => "SUCCEEDED",
        /// Refused by the receiver (a 4xx other than 408 and 429): not retried.
        Failed => "FAILED",
    }
}

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);
/// Endpoints per service (a bound on delivery work an operator can create by mistake).
pub const MAX_ENDPOINTS: i64 = 100;

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = webhook_endpoints, check_for_backend(diesel::pg::Pg))]
pub struct Endpoint {
    pub id: i64,
    pub url: String,
    event_types: Vec<Option<String>>,
    wallet_ids: Option<Vec<Option<i64>>>,
    pub description: Option<String>,
    pub status: EndpointStatus,
    pub disabled_reason: Option<String>,
    /// The feed sequence up to which deliveries were made.
    pub position: i64,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    pub fn event_types(&self) -> Vec<EventType> {
        event_types_of(&self.event_types)
    }

    /// `None`: every wallet.
    pub fn wallet_ids(&self) -> Option<Vec<i64>> {
        wallet_ids_of(self.wallet_ids.as_deref())
    }
}

/// The types of an endpoint row's `event_types` column.
fn event_types_of(column: &[Option<String>]) -> Vec<EventType> {
    column
        .iter()
        .flatten()
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// The wallets of an endpoint row's `wallet_ids` column (`None`: every wallet).
fn wallet_ids_of(column: Option<&[Option<i64>]>) -> Option<Vec<i64>> {
    column.map(|ids| ids.iter().flatten().copied().collect())
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    pub id: i64,
    pub endpoint_id: i64,
    pub event_id: i64,
    pub sequence: i64,
    pub event_type: String,
    pub body: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub redelivery_of: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = webhook_attempts, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    pub id: i64,
    pub delivery_id: i64,
    pub attempted_at: DateTime<Utc>,
    pub latency_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub succeeded: bool,
}

/// What `createWebhookEndpoint` asks for.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<EventType>,
    pub wallet_ids: Option<Vec<i64>>,
    pub description: Option<String>,
}

/// Registers an endpoint; it receives the events committed from now on. Returns it with
/// its secret (shown this once).
pub async fn create(
    conn: &mut AsyncPgConnection,
    policy: TargetPolicy,
    new: NewEndpoint,
    actor: &str,
) -> Result<(Endpoint, String), LedgerError> {
    let url = policy
        .check_url(new.url.trim())
        .map_err(LedgerError::BadInput)?;
    if new.event_types.is_empty() {
        return Err(LedgerError::BadInput(
            "eventTypes must name at least one type".into(),
        ));
    }
    if new
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        return Err(LedgerError::BadInput(
            "description is longer than 500 characters".into(),
        ));
    }
    let mut types: Vec<String> = new
        .event_types
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();
    types.sort();
    types.dedup();
    let wallet_ids = match new.wallet_ids {
        Some(mut ids) => {
            if ids.is_empty() || ids.len() > 1000 {
                return Err(LedgerError::BadInput(
                    "walletIds must name 1 to 1000 wallets".into(),
                ));
            }
            ids.sort_unstable();
            ids.dedup();
            let found: i64 = wallets::table
                .filter(wallets::id.eq_any(&ids))
                .count()
                .get_result(&mut *conn)
                .await?;
            if found != ids.len() as i64 {
                return Err(LedgerError::NotFound("Wallet"));
            }
            Some(ids.into_iter().map(Some).collect::<Vec<_>>())
        }
        None => None,
    };
    let count: i64 = webhook_endpoints::table
        .count()
        .get_result(&mut *conn)
        .await?;
    if count >= MAX_ENDPOINTS {
        return Err(LedgerError::BadInput(format!(
            "at most {MAX_ENDPOINTS} webhook endpoints may be registered"
        )));
    }
    let secret = sign::new_secret();
    let head = feed::head(conn).await?;
    let endpoint = diesel::insert_into(webhook_endpoints::table)
        .values((
            webhook_endpoints::url.eq(url.as_str()),
            webhook_endpoints::event_types.eq(types.into_iter().map(Some).collect::<Vec<_>>()),
            webhook_endpoints::wallet_ids.eq(wallet_ids),
            webhook_endpoints::description.eq(new.description),
            webhook_endpoints::secret.eq(&secret),
            webhook_endpoints::position.eq(head.sequence),
            webhook_endpoints::created_by.eq(actor),
        ))
        .returning(Endpoint::as_returning())
        .get_result(&mut *conn)
        .await?;
    Ok((endpoint, secret))
}

pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<Endpoint>, LedgerError> {
    Ok(webhook_endpoints::table
        .order(webhook_endpoints::id)
        .select(Endpoint::as_select())
        .load(conn)
        .await?)
}

pub async fn get(conn: &mut AsyncPgConnection, id: i64) -> Result<Endpoint, LedgerError> {
    webhook_endpoints::table
        .find(id)
        .select(Endpoint::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("WebhookEndpoint"))
}

/// A new secret; the old one keeps signing beside it for [`ROTATION_OVERLAP`].
pub async fn rotate_secret(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<(Endpoint, String), LedgerError> {
    let secret = sign::new_secret();
    let endpoint = diesel::update(webhook_endpoints::table.find(id))
        .set((
            webhook_endpoints::previous_secret.eq(webhook_endpoints::secret.nullable()),
            webhook_endpoints::previous_secret_until.eq(Utc::now() + ROTATION_OVERLAP),
            webhook_endpoints::secret.eq(&secret),
            webhook_endpoints::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Endpoint::as_returning())
        .get_result(&mut *conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("WebhookEndpoint"))?;
    Ok((endpoint, secret))
}

/// Stops deliveries to the endpoint (it keeps its place: enabling it again delivers what
/// happened meanwhile, within the feed's retention), and records a
/// `WEBHOOK_ENDPOINT_DISABLED` event — in one transaction. `reason`: `OPERATOR` or
/// `FAILING`. Disabling a disabled endpoint changes nothing.
pub async fn disable(
    conn: &mut AsyncPgConnection,
    id: i64,
    reason: &'static str,
) -> Result<Endpoint, LedgerError> {
    conn.transaction::<_, LedgerError, _>(async move |conn| {
        let changed = diesel::update(
            webhook_endpoints::table
                .find(id)
                .filter(webhook_endpoints::status.eq(EndpointStatus::Enabled)),
        )
        .set((
            webhook_endpoints::status.eq(EndpointStatus::Disabled),
            webhook_endpoints::disabled_reason.eq(reason),
            webhook_endpoints::lease_owner.eq(None::<String>),
            webhook_endpoints::lease_until.eq(None::<DateTime<Utc>>),
            webhook_endpoints::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Endpoint::as_returning())
        .get_result(&mut *conn)
        .await
        .optional()?;
        match changed {
            Some(endpoint) => {
                diesel::insert_into(events::table)
                    .values((
                        events::topic.eq("WEBHOOK_ENDPOINT"),
                        events::type_.eq(EventType::WebhookEndpointDisabled.as_str()),
                        events::subject_id.eq(id),
                        events::status.eq(reason),
                    ))
                    .execute(&mut *conn)
                    .await?;
                Ok(endpoint)
            }
            None => get(conn, id).await,
        }
    })
    .await
}

/// Delivers again: from the endpoint's place in the feed, the oldest pending delivery
/// first, now.
pub async fn enable(conn: &mut AsyncPgConnection, id: i64) -> Result<Endpoint, LedgerError> {
    let endpoint = diesel::update(webhook_endpoints::table.find(id))
        .set((
            webhook_endpoints::status.eq(EndpointStatus::Enabled),
            webhook_endpoints::disabled_reason.eq(None::<String>),
            webhook_endpoints::failing_since.eq(None::<DateTime<Utc>>),
            webhook_endpoints::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Endpoint::as_returning())
        .get_result(&mut *conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("WebhookEndpoint"))?;
    diesel::update(
        webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq(id))
            .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending)),
    )
    .set(webhook_deliveries::next_attempt_at.eq(diesel::dsl::now))
    .execute(&mut *conn)
    .await?;
    Ok(endpoint)
}

/// An endpoint's deliveries, oldest first, after delivery id `after`.
pub async fn deliveries(
    conn: &mut AsyncPgConnection,
    endpoint_id: i64,
    status: Option<DeliveryStatus>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Delivery>, LedgerError> {
    let mut query = webhook_deliveries::table
        .filter(webhook_deliveries::endpoint_id.eq(endpoint_id))
        .filter(webhook_deliveries::id.gt(after.unwrap_or(0)))
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(webhook_deliveries::status.eq(status));
    }
    Ok(query
        .order(webhook_deliveries::id)
        .limit(limit)
        .select(Delivery::as_select())
        .load(conn)
        .await?)
}

pub async fn delivery(conn: &mut AsyncPgConnection, id: i64) -> Result<Delivery, LedgerError> {
    webhook_deliveries::table
        .find(id)
        .select(Delivery::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or(LedgerError::NotFound("WebhookDelivery"))
}

/// The attempts of each delivery, oldest first.
pub async fn attempts_of(
    conn: &mut AsyncPgConnection,
    delivery_ids: &[i64],
) -> Result<Vec<Attempt>, LedgerError> {
    Ok(webhook_attempts::table
        .filter(webhook_attempts::delivery_id.eq_any(delivery_ids))
        .order(webhook_attempts::id)
        .select(Attempt::as_select())
        .load(conn)
        .await?)
}

/// Sends a delivery's event again (the same id and body): a new delivery, at the head of
/// the endpoint's queue.
pub async fn redeliver(conn: &mut AsyncPgConnection, id: i64) -> Result<Delivery, LedgerError> {
    let original = delivery(conn, id).await?;
    let first = original.redelivery_of.unwrap_or(original.id);
    Ok(diesel::insert_into(webhook_deliveries::table)
        .values((
            webhook_deliveries::endpoint_id.eq(original.endpoint_id),
            webhook_deliveries::event_id.eq(original.event_id),
            webhook_deliveries::sequence.eq(original.sequence),
            webhook_deliveries::event_type.eq(&original.event_type),
            webhook_deliveries::body.eq(&original.body),
            webhook_deliveries::redelivery_of.eq(first),
        ))
        .returning(Delivery::as_returning())
        .get_result(&mut *conn)
        .await?)
}
