//! The delivery worker. Every process runs a dispatcher; endpoints are taken with a lease
//! (a short, renewed claim in the endpoint's row), so one process at a time sends to an
//! endpoint, in order, and another takes over when that process dies (after the lease
//! runs out — the attempt it was making is then made again, with the same id).
//!
//! For each endpoint it holds, a worker (1) turns new feed events the endpoint wants into
//! deliveries, advancing the endpoint's position in the same transaction; (2) sends the
//! oldest pending delivery, records the attempt, and goes on only when it succeeded or
//! was refused for good — a failing delivery holds the ones after it back (order), and is
//! retried with exponential backoff and jitter. An endpoint failing for longer than
//! `disable_after` is disabled, with an event that says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::Rng;

use super::target::{GuardedResolver, TargetPolicy};
use super::{DeliveryStatus, EndpointStatus, sign};
use crate::db::PgPool;
use crate::events::feed::{self, Filter, PositionError};
use crate::events::{EventBus, body, outbox};
use crate::global_id::{NodeType, encode};
use crate::ledger::LedgerError;
use crate::schema::{webhook_attempts, webhook_deliveries, webhook_endpoints};
use crate::task::AbortOnDrop;

/// How webhooks are sent.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub policy: TargetPolicy,
    /// The longest an attempt may take (connecting, sending, the answer's head).
    pub timeout: Duration,
    /// The wait before the first retry; each next one doubles, up to `retry_max`, plus up to
    /// a quarter more at random.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// An endpoint whose oldest delivery has been failing this long is disabled.
    pub disable_after: Duration,
    /// How long a process's claim on an endpoint lasts unless renewed.
    pub lease: Duration,
    /// How often endpoints are looked at without a new event.
    pub poll: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            policy: TargetPolicy::OPEN,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            disable_after: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

impl WebhookConfig {
    /// The wait after the `n`-th failed attempt (n ≥ 1), before jitter.
    pub fn backoff(&self, n: i32) -> Duration {
        let doublings = u32::try_from(n.saturating_sub(1)).unwrap_or(0).min(30);
        self.retry_base
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max)
    }
}

/// Deliveries turned from feed events per step, and the most an endpoint's queue holds.
const FILL_PAGE: i64 = 500;
const MAX_QUEUE: i64 = 2000;
/// Deliveries sent in one run between two looks at the database.
const SEND_BATCH: i64 = 100;
/// Endpoints one process sends to at once.
const MAX_WORKERS: usize = 32;

/// Starts this process's dispatcher.
pub fn spawn_dispatcher(pool: PgPool, bus: EventBus, config: WebhookConfig) -> AbortOnDrop<()> {
    AbortOnDrop::spawn(async move {
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: config.policy.allow_private,
            }))
            .user_agent(concat!("wallet-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "webhooks: no HTTP client; nothing is delivered");
                return;
            }
        };
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let worker = Arc::new(Worker {
            pool,
            client,
            config,
            owner,
        });
        let mut head = bus.watch_head();
        let mut running: HashMap<i64, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            running.retain(|_, task| !task.is_finished());
            if running.len() < MAX_WORKERS {
                let busy: Vec<i64> = running.keys().copied().collect();
                match worker.claim(MAX_WORKERS - running.len(), &busy).await {
                    Ok(ids) => {
                        for id in ids {
                            let worker = worker.clone();
                            running.insert(id, tokio::spawn(async move { worker.serve(id).await }));
                        }
                    }
                    Err(e) => tracing::warn!(error = ?e, "webhooks: could not claim endpoints"),
                }
            }
            tokio::select! {
                _ = head.changed() => {}
                _ = tokio::time::sleep(worker.config.poll) => {}
            }
        }
    })
}

struct Worker {
    pool: PgPool,
    client: reqwest::Client,
    config: WebhookConfig,
    /// This process's name in leases.
    owner: String,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// An endpoint as its worker needs it, read when the lease is renewed.
#[derive(Queryable)]
struct Held {
    url: String,
    event_types: Vec<Option<String>>,
    wallet_ids: Option<Vec<Option<i64>>>,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_until: Option<DateTime<Utc>>,
    position: i64,
}

/// A successful attempt, not recorded yet.
struct Sent {
    id: i64,
    at: DateTime<Utc>,
    latency: Duration,
    code: u16,
}

enum Outcome {
    Delivered(u16),
    /// Refused for good: a 4xx other than 408 and 429.
    Refused(u16),
    /// Retried: an error answer, a timeout, no connection.
    Failed(Option<u16>, String),
}

impl Worker {
    /// Takes up to `n` enabled endpoints nobody holds, other than `busy` (endpoints this
    /// process still has a worker for, whose lease may have lapsed during a long step:
    /// a second worker would send to the endpoint beside the first).
    async fn claim(&self, n: usize, busy: &[i64]) -> Result<Vec<i64>, LedgerError> {
        let mut conn = self.pool.get().await?;
        let claimed: Vec<Claimed> = diesel::sql_query(
            "UPDATE webhook_endpoints SET lease_owner = $1,
                    lease_until = now() + $2 * interval '1 millisecond'
              WHERE id IN (SELECT id FROM webhook_endpoints
                            WHERE status = 'ENABLED'
                              AND (lease_until IS NULL OR lease_until < now())
                              AND id <> ALL($3)
                            ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind::<Text, _>(&self.owner)
        .bind::<BigInt, _>(self.lease_ms())
        .bind::<diesel::sql_types::Array<BigInt>, _>(busy)
        .bind::<BigInt, _>(n as i64)
        .load(&mut conn)
        .await?;
        Ok(claimed.into_iter().map(|c| c.id).collect())
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Sends to endpoint `id` while this process holds it and it has work.
    async fn serve(&self, id: i64) {
        loop {
            match self.step(id).await {
                Ok(Some(wait)) => tokio::time::sleep(wait).await,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(endpoint = id, error = ?e, "webhooks: delivery step failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One step; `None` when the endpoint is no longer this worker's or has nothing to do,
    /// else how long to wait before the next step.
    async fn step(&self, id: i64) -> Result<Option<Duration>, LedgerError> {
        let mut conn = self.pool.get().await?;
        let held: Option<Held> = diesel::update(
            webhook_endpoints::table
                .find(id)
                .filter(webhook_endpoints::lease_owner.eq(&self.owner))
                .filter(webhook_endpoints::status.eq(EndpointStatus::Enabled)),
        )
        .set(
            webhook_endpoints::lease_until
                .eq(Utc::now() + chrono::Duration::milliseconds(self.lease_ms())),
        )
        .returning((
            webhook_endpoints::url,
            webhook_endpoints::event_types,
            webhook_endpoints::wallet_ids,
            webhook_endpoints::secret,
            webhook_endpoints::previous_secret,
            webhook_endpoints::previous_secret_until,
            webhook_endpoints::position,
        ))
        .get_result(&mut conn)
        .await
        .optional()?;
        let Some(held) = held else {
            return Ok(None);
        };
        let caught_up = self.fill(&mut conn, id, &held).await?;
        let queue: Vec<super::Delivery> = webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq(id))
            .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending))
            .order((webhook_deliveries::sequence, webhook_deliveries::id))
            .limit(SEND_BATCH)
            .select(super::Delivery::as_select())
            .load(&mut conn)
            .await?;
        if queue.is_empty() {
            if caught_up {
                self.release(&mut conn, id).await?;
                return Ok(None);
            }
            return Ok(Some(Duration::ZERO));
        }
        drop(conn);
        // In order, one at a time; successes are recorded together after the run (a
        // process dying before that sends them again, with the same ids), anything else
        // at once, and the run stops there.
        let step_started = Instant::now();
        let mut delivered: Vec<Sent> = Vec::new();
        let mut wait = Duration::ZERO;
        for delivery in queue {
            let due_in = (delivery.next_attempt_at - Utc::now())
                .to_std()
                .unwrap_or_default();
            if !due_in.is_zero() {
                // Wake up in time to renew the lease.
                wait = due_in.min(self.config.lease / 3);
                break;
            }
            let at = Utc::now();
            let started = Instant::now();
            let outcome = self.send(&held, &delivery).await;
            let latency = started.elapsed();
            if let Outcome::Delivered(code) = outcome {
                delivered.push(Sent {
                    id: delivery.id,
                    at,
                    latency,
                    code,
                });
                if step_started.elapsed() < self.config.lease / 3 {
                    continue;
                }
                break;
            }
            let mut conn = self.pool.get().await?;
            self.record_delivered(&mut conn, id, std::mem::take(&mut delivered))
                .await?;
            self.record(&mut conn, id, &delivery, at, latency, outcome)
                .await?;
            return Ok(Some(Duration::ZERO));
        }
        if !delivered.is_empty() {
            let mut conn = self.pool.get().await?;
            self.record_delivered(&mut conn, id, delivered).await?;
        }
        Ok(Some(wait))
    }

    /// Records a run of successful attempts, in one transaction.
    async fn record_delivered(
        &self,
        conn: &mut AsyncPgConnection,
        endpoint: i64,
        sent: Vec<Sent>,
    ) -> Result<(), LedgerError> {
        if sent.is_empty() {
            return Ok(());
        }
        metrics::counter!("wallet_webhook_attempts_total", "outcome" => "delivered")
            .increment(sent.len() as u64);
        conn.transaction::<_, LedgerError, _>(async move |conn| {
            let attempts: Vec<_> = sent
                .iter()
                .map(|s| {
                    (
                        webhook_attempts::delivery_id.eq(s.id),
                        webhook_attempts::attempted_at.eq(s.at),
                        webhook_attempts::latency_ms
                            .eq(i32::try_from(s.latency.as_millis()).unwrap_or(i32::MAX)),
                        webhook_attempts::status_code.eq(Some(i32::from(s.code))),
                        webhook_attempts::succeeded.eq(true),
                    )
                })
                .collect();
            diesel::insert_into(webhook_attempts::table)
                .values(attempts)
                .execute(&mut *conn)
                .await?;
            crate::ledger::fixed_sql::numbered(
                "UPDATE webhook_deliveries d
                    SET status = 'SUCCEEDED', attempts = d.attempts + 1,
                        last_status_code = u.code, last_error = NULL, completed_at = now()
                   FROM unnest($1::bigint[], $2::int[]) AS u(id, code)
                  WHERE d.id = u.id",
                vec![
                    crate::ledger::fixed_sql::Bind::BigInts(sent.iter().map(|s| s.id).collect()),
                    crate::ledger::fixed_sql::Bind::OptionalInts(
                        sent.iter().map(|s| Some(i32::from(s.code))).collect(),
                    ),
                ],
            )
            .execute(&mut *conn)
            .await?;
            // The endpoint answers: it is not failing.
            diesel::update(webhook_endpoints::table.find(endpoint))
                .filter(webhook_endpoints::failing_since.is_not_null())
                .set(webhook_endpoints::failing_since.eq(None::<DateTime<Utc>>))
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// Turns feed events after the endpoint's position into deliveries; returns whether
    /// the endpoint has been given everything up to the head.
    async fn fill(
        &self,
        conn: &mut AsyncPgConnection,
        id: i64,
        held: &Held,
    ) -> Result<bool, LedgerError> {
        let queued: i64 = webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq(id))
            .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending))
            .count()
            .get_result(&mut *conn)
            .await?;
        let (after, head) = match feed::resolve(conn, held.position).await? {
            Ok(places) => places,
            Err(PositionError::Expired { oldest }) => {
                tracing::error!(
                    endpoint = id,
                    position = held.position,
                    oldest,
                    "webhooks: events this endpoint never got are past the retention; going on from the oldest kept"
                );
                match feed::resolve(conn, oldest - 1).await? {
                    Ok(places) => places,
                    Err(_) => return Ok(false),
                }
            }
            Err(PositionError::Ahead { head }) => {
                tracing::error!(
                    endpoint = id,
                    position = held.position,
                    head,
                    "webhooks: endpoint is ahead of the feed"
                );
                return Ok(true);
            }
        };
        if after >= head {
            return Ok(true);
        }
        if queued >= MAX_QUEUE {
            return Ok(false);
        }
        let types = super::event_types_of(&held.event_types);
        let wallets = super::wallet_ids_of(held.wallet_ids.as_deref());
        let filter = Filter {
            types: Some(types),
            ..Filter::default()
        };
        let page = feed::page(conn, after, head, &filter, FILL_PAGE).await?;
        let rows: Vec<_> = page
            .rows
            .into_iter()
            .filter(|r| {
                wallets
                    .as_ref()
                    .is_none_or(|w| r.wallet_id.is_some_and(|id| w.contains(&id)))
            })
            .collect();
        let notices = outbox::load_notices(conn, &rows).await?;
        let values: Vec<_> = notices
            .iter()
            .map(|n| {
                (
                    webhook_deliveries::endpoint_id.eq(id),
                    webhook_deliveries::event_id.eq(n.id),
                    webhook_deliveries::sequence.eq(n.sequence),
                    webhook_deliveries::event_type.eq(n.kind.as_str()),
                    webhook_deliveries::body.eq(body::render(n).to_string()),
                )
            })
            .collect();
        let (from, to) = (held.position, page.next.sequence);
        let owner = self.owner.clone();
        conn.transaction::<_, LedgerError, _>(async move |conn| {
            let moved = diesel::update(
                webhook_endpoints::table
                    .find(id)
                    .filter(webhook_endpoints::lease_owner.eq(&owner))
                    .filter(webhook_endpoints::position.eq(from)),
            )
            .set(webhook_endpoints::position.eq(to))
            .execute(&mut *conn)
            .await?;
            if moved == 1 && !values.is_empty() {
                diesel::insert_into(webhook_deliveries::table)
                    .values(values)
                    .on_conflict_do_nothing()
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
        .await?;
        Ok(page.next >= head)
    }

    async fn release(&self, conn: &mut AsyncPgConnection, id: i64) -> Result<(), LedgerError> {
        diesel::update(
            webhook_endpoints::table
                .find(id)
                .filter(webhook_endpoints::lease_owner.eq(&self.owner)),
        )
        .set((
            webhook_endpoints::lease_owner.eq(None::<String>),
            webhook_endpoints::lease_until.eq(None::<DateTime<Utc>>),
        ))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn send(&self, held: &Held, delivery: &super::Delivery) -> Outcome {
        // Checked again at each attempt: the rules may have changed since registration.
        let url = match self.config.policy.check_url(&held.url) {
            Ok(url) => url,
            Err(why) => return Outcome::Failed(None, format!("target refused: {why}")),
        };
        let id = encode(NodeType::Event, delivery.event_id);
        let timestamp = Utc::now().timestamp();
        let mut secrets = vec![held.secret.as_str()];
        if let (Some(previous), Some(until)) = (&held.previous_secret, held.previous_secret_until)
            && until > Utc::now()
        {
            secrets.push(previous);
        }
        let signature = sign::header(&secrets, &id, timestamp, &delivery.body);
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                match status {
                    200..=299 => Outcome::Delivered(status),
                    408 | 429 => Outcome::Failed(Some(status), format!("answered {status}")),
                    400..=499 => Outcome::Refused(status),
                    _ => Outcome::Failed(Some(status), format!("answered {status}")),
                }
            }
            Err(e) if e.is_timeout() => Outcome::Failed(None, "timed out".into()),
            Err(e) if e.is_connect() => {
                Outcome::Failed(None, format!("could not connect: {}", source_chain(&e)))
            }
            Err(e) => Outcome::Failed(None, source_chain(&e)),
        }
    }

    /// Records an attempt and its consequence, in one transaction.
    async fn record(
        &self,
        conn: &mut AsyncPgConnection,
        endpoint: i64,
        delivery: &super::Delivery,
        at: DateTime<Utc>,
        latency: Duration,
        outcome: Outcome,
    ) -> Result<(), LedgerError> {
        let latency_ms = i32::try_from(latency.as_millis()).unwrap_or(i32::MAX);
        let attempts = delivery.attempts.saturating_add(1);
        let (code, error, status) = match &outcome {
            Outcome::Delivered(code) => (Some(i32::from(*code)), None, DeliveryStatus::Succeeded),
            Outcome::Refused(code) => (
                Some(i32::from(*code)),
                Some(format!("answered {code}: not retried")),
                DeliveryStatus::Failed,
            ),
            Outcome::Failed(code, why) => (
                code.map(i32::from),
                Some(why.clone()),
                DeliveryStatus::Pending,
            ),
        };
        let label = match &outcome {
            Outcome::Delivered(_) => "delivered",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(..) => "failed",
        };
        metrics::counter!("wallet_webhook_attempts_total", "outcome" => label).increment(1);
        let retry_at = {
            let wait = self.config.backoff(attempts);
            let jitter = rand::rng().random_range(0.0..0.25);
            at + chrono::Duration::from_std(wait.mul_f64(1.0 + jitter)).unwrap_or_default()
        };
        let disable_after =
            chrono::Duration::from_std(self.config.disable_after).unwrap_or_default();
        let delivery_id = delivery.id;
        let disable = conn
            .transaction::<_, LedgerError, _>(async move |conn| {
                diesel::insert_into(webhook_attempts::table)
                    .values((
                        webhook_attempts::delivery_id.eq(delivery_id),
                        webhook_attempts::attempted_at.eq(at),
                        webhook_attempts::latency_ms.eq(latency_ms),
                        webhook_attempts::status_code.eq(code),
                        webhook_attempts::error.eq(&error),
                        webhook_attempts::succeeded.eq(status == DeliveryStatus::Succeeded),
                    ))
                    .execute(&mut *conn)
                    .await?;
                let done = status != DeliveryStatus::Pending;
                diesel::update(webhook_deliveries::table.find(delivery_id))
                    .set((
                        webhook_deliveries::status.eq(status),
                        webhook_deliveries::attempts.eq(attempts),
                        webhook_deliveries::last_status_code.eq(code),
                        webhook_deliveries::last_error.eq(&error),
                        webhook_deliveries::next_attempt_at.eq(if done { at } else { retry_at }),
                        webhook_deliveries::completed_at.eq(done.then_some(Utc::now())),
                    ))
                    .execute(&mut *conn)
                    .await?;
                if done {
                    // The endpoint answers: it is not failing.
                    diesel::update(webhook_endpoints::table.find(endpoint))
                        .filter(webhook_endpoints::failing_since.is_not_null())
                        .set(webhook_endpoints::failing_since.eq(None::<DateTime<Utc>>))
                        .execute(&mut *conn)
                        .await?;
                    return Ok(false);
                }
                let since: Option<DateTime<Utc>> =
                    diesel::update(webhook_endpoints::table.find(endpoint))
                        .set(webhook_endpoints::failing_since.eq(diesel::dsl::sql::<
                            diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
                        >(
                            "COALESCE(failing_since, now())",
                        )))
                        .returning(webhook_endpoints::failing_since)
                        .get_result(&mut *conn)
                        .await?;
                Ok(since.is_some_and(|s| Utc::now() - s >= disable_after))
            })
            .await?;
        if disable {
            tracing::warn!(
                endpoint,
                "webhooks: endpoint failing for too long; disabled"
            );
            super::disable(conn, endpoint, "FAILING").await?;
        }
        Ok(())
    }
}

/// An error with its causes, for the attempt record (reqwest's own message is terse).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(500).collect()
}
