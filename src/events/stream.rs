//! The event stream on NATS JetStream: every feed event published, in feed order, to
//! subject `wallet.events.<TYPE>`, with the event's id as `Nats-Msg-Id` (JetStream drops a
//! repeat within its duplicate window) and its sequence in `Wallet-Event-Sequence`.
//!
//! The position published up to is kept in Postgres (`stream_positions`) and advanced
//! only after JetStream acknowledged everything before it, so a restart or a broker
//! outage resumes from there: what was published but not recorded is published again
//! with the same id, and dropped by the broker. One process at a time publishes (a lease
//! in the position's row); the others stand by.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::feed::{self, Filter, PositionError};
use super::{EventBus, body, outbox};
use crate::db::PgPool;
use crate::task::AbortOnDrop;

#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// `nats://host:port` (credentials, if any, in the URL).
    pub url: String,
    /// The JetStream stream, created if missing over `wallet.events.>`.
    pub stream: String,
    /// How long a process's claim on publishing lasts unless renewed.
    pub lease: Duration,
}

impl StreamConfig {
    pub fn new(url: impl Into<String>) -> Self {
        StreamConfig {
            url: url.into(),
            stream: "WALLET_EVENTS".into(),
            lease: Duration::from_secs(15),
        }
    }
}

/// The subject prefix of every event.
pub const SUBJECT_PREFIX: &str = "wallet.events";
/// Events published per round of acknowledgements.
const BATCH: i64 = 500;
/// How long a publish may wait for the broker's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle publisher checks its connection to the broker.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long JetStream keeps a message id to drop repeats of it.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// What `/readyz` and the metrics show of the stream.
#[derive(Debug, Default)]
pub struct StreamStatus {
    /// Connected to the broker and publishing (or standing by for another process).
    pub healthy: AtomicBool,
    /// Events committed but not yet acknowledged by the broker.
    pub lag: AtomicI64,
}

/// Starts this process's publisher.
pub fn spawn_publisher(
    pool: PgPool,
    bus: EventBus,
    config: StreamConfig,
    status: Arc<StreamStatus>,
) -> AbortOnDrop<()> {
    AbortOnDrop::spawn(async move {
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let mut backoff = Duration::from_millis(200);
        loop {
            let error = publish(&pool, &bus, &config, &status, &owner).await;
            // While the broker is away the lag keeps growing: keep the figure current.
            refresh_lag(&pool, &config, &status).await;
            status.healthy.store(false, Ordering::Relaxed);
            tracing::warn!(error = %format!("{error:#}"), retry_in = ?backoff, "event stream interrupted");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

/// Sets the lag from the database: the feed's head less the stream's position.
async fn refresh_lag(pool: &PgPool, config: &StreamConfig, status: &StreamStatus) {
    let Ok(mut conn) = pool.get().await else {
        return;
    };
    let Ok(head) = feed::head(&mut conn).await else {
        return;
    };
    let position: Option<i64> = crate::schema::stream_positions::table
        .find(&config.stream)
        .select(crate::schema::stream_positions::position)
        .first(&mut conn)
        .await
        .optional()
        .ok()
        .flatten();
    let lag = head.sequence - position.unwrap_or(0);
    status.lag.store(lag, Ordering::Relaxed);
    metrics::gauge!("wallet_stream_lag_events").set(lag as f64);
}

#[derive(QueryableByName)]
struct Leased {
    #[diesel(sql_type = BigInt)]
    position: i64,
}

/// Takes (or renews) the publishing lease; the position if this process holds it.
async fn lease(
    conn: &mut AsyncPgConnection,
    config: &StreamConfig,
    owner: &str,
) -> anyhow::Result<Option<i64>> {
    diesel::sql_query(
        "INSERT INTO stream_positions (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
    )
    .bind::<Text, _>(&config.stream)
    .execute(conn)
    .await?;
    let leased: Option<Leased> = diesel::sql_query(
        "UPDATE stream_positions
            SET lease_owner = $1, lease_until = now() + $2 * interval '1 millisecond'
          WHERE name = $3
            AND (lease_owner = $4 OR lease_until IS NULL OR lease_until < now())
      RETURNING position",
    )
    .bind::<Text, _>(owner)
    .bind::<BigInt, _>(i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX))
    .bind::<Text, _>(&config.stream)
    .bind::<Text, _>(owner)
    .get_result(conn)
    .await
    .optional()?;
    Ok(leased.map(|l| l.position))
}

async fn publish(
    pool: &PgPool,
    bus: &EventBus,
    config: &StreamConfig,
    status: &StreamStatus,
    owner: &str,
) -> anyhow::Error {
    match run(pool, bus, config, status, owner).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn run(
    pool: &PgPool,
    bus: &EventBus,
    config: &StreamConfig,
    status: &StreamStatus,
    owner: &str,
) -> anyhow::Result<std::convert::Infallible> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .name("wallet-event-stream")
        .connect(config.url.as_str())
        .await?;
    let mut jetstream = async_nats::jetstream::new(client.clone());
    // A broker that stopped answering is noticed within this (and the batch published
    // again, with the same ids).
    jetstream.set_timeout(ACK_TIMEOUT);
    jetstream
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the stream {}: {e}", config.stream))?;
    let mut head_changes = bus.watch_head();
    loop {
        let mut conn = pool.get().await?;
        let Some(position) = lease(&mut conn, config, owner).await? else {
            // Another process publishes: stand by (showing its lag).
            status.healthy.store(true, Ordering::Relaxed);
            drop(conn);
            refresh_lag(pool, config, status).await;
            tokio::time::sleep(config.lease / 3).await;
            continue;
        };
        let (after, head) = match feed::resolve(&mut conn, position).await.map_err(db)? {
            Ok(places) => places,
            Err(PositionError::Expired { oldest }) => {
                tracing::error!(
                    position,
                    oldest,
                    "event stream: events past the retention were never published; going on from the oldest kept"
                );
                match feed::resolve(&mut conn, oldest - 1).await.map_err(db)? {
                    Ok(places) => places,
                    Err(e) => anyhow::bail!("the feed moved: {e:?}"),
                }
            }
            Err(PositionError::Ahead { head }) => {
                anyhow::bail!("the stream's position {position} is ahead of the feed ({head})")
            }
        };
        status
            .lag
            .store(head.sequence - after.sequence, Ordering::Relaxed);
        metrics::gauge!("wallet_stream_lag_events").set((head.sequence - after.sequence) as f64);
        if client.connection_state() != async_nats::connection::State::Connected {
            anyhow::bail!("lost the connection to the broker");
        }
        if after >= head {
            status.healthy.store(true, Ordering::Relaxed);
            drop(conn);
            // Idle: wake for new events, to renew the lease, or to notice the broker gone.
            let idle = tokio::time::Instant::now();
            while idle.elapsed() < config.lease / 3 {
                tokio::select! {
                    _ = head_changes.changed() => break,
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                }
                if client.connection_state() != async_nats::connection::State::Connected {
                    anyhow::bail!("lost the connection to the broker");
                }
            }
            continue;
        }
        let page = feed::page(&mut conn, after, head, &Filter::default(), BATCH)
            .await
            .map_err(db)?;
        let notices = outbox::load_notices(&mut conn, &page.rows)
            .await
            .map_err(db)?;
        drop(conn);
        // Published in order on one connection; acknowledged in order.
        let mut acks = Vec::with_capacity(notices.len());
        for notice in &notices {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                body::event_id(notice).as_str(),
            );
            headers.insert(
                "Wallet-Event-Sequence",
                notice.sequence.to_string().as_str(),
            );
            let subject = format!("{SUBJECT_PREFIX}.{}", notice.kind.as_str());
            let payload = body::render(notice).to_string();
            acks.push(
                jetstream
                    .publish_with_headers(subject, headers, payload.into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        metrics::counter!("wallet_stream_published_total").increment(notices.len() as u64);
        let mut conn = pool.get().await?;
        let moved = diesel::update(
            crate::schema::stream_positions::table
                .find(&config.stream)
                .filter(crate::schema::stream_positions::lease_owner.eq(owner))
                .filter(crate::schema::stream_positions::position.eq(position)),
        )
        .set((
            crate::schema::stream_positions::position.eq(page.next.sequence),
            crate::schema::stream_positions::updated_at.eq(Utc::now()),
        ))
        .execute(&mut conn)
        .await?;
        if moved == 0 {
            anyhow::bail!("lost the publishing lease");
        }
        status.healthy.store(true, Ordering::Relaxed);
    }
}

/// Logged, never shown to clients: the details are wanted.
fn db(e: crate::ledger::LedgerError) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}
