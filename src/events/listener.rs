//! The per-process event listener: one dedicated connection (not from the pool, so request
//! traffic never delays events and vice versa) that LISTENs for the outbox's NOTIFY,
//! numbers what became final (the feed's sequencer), reads the feed from its position and
//! publishes to the bus.
//!
//! A notification is only a wake-up; the outbox is the source of truth. So a lost
//! connection loses nothing: the listener reconnects with back-off and resumes from its
//! cursor. A slow idle poll covers a connection that dies silently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_postgres::AsyncMessage;

use super::EventBus;
use super::feed::{self, Filter, Position, Sequencer};
use super::outbox;
use crate::task::AbortOnDrop;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};

/// The NOTIFY channel the outbox trigger signals.
pub const CHANNEL: &str = "wallet_events";
/// `application_name` of the listening connection (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "wallet-events-listener";
/// Longest wait before looking again at events held back by an open older transaction.
const MAX_HELD_BACK_RETRY: Duration = Duration::from_millis(50);
/// Events read per query.
const BATCH: i64 = 500;
/// Shortest time between two reads of the outbox. Under load every group-commit batch
/// notifies; reading once per notification made the listener's queries (each working out
/// the oldest running transaction) cost more than the writes. Waiting this long at most
/// collects a few batches' events per read.
const MIN_PASS: Duration = Duration::from_millis(5);

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub database_url: String,
    /// Look at the outbox this often even without a notification (and check the
    /// listening connection is alive).
    pub idle_poll: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Events older than this are deleted from the outbox (and the feed).
    pub retention: Duration,
}

impl ListenerConfig {
    pub fn new(database_url: impl Into<String>) -> Self {
        ListenerConfig {
            database_url: database_url.into(),
            idle_poll: Duration::from_secs(1),
            // Short: after a failover the new primary is reachable within seconds, and
            // subscriptions and readiness wait for the listener.
            max_backoff: Duration::from_secs(1),
            retention: DEFAULT_RETENTION,
        }
    }
}

/// How long events are kept by default: the feed can be resumed from any position this
/// recent.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerState {
    Connecting,
    Listening,
}

/// The running listener; stops when dropped.
pub struct Listener {
    _task: AbortOnDrop<()>,
    state: watch::Receiver<ListenerState>,
}

impl Listener {
    pub fn spawn(config: ListenerConfig, bus: EventBus) -> Listener {
        let (state_tx, state) = watch::channel(ListenerState::Connecting);
        let task = AbortOnDrop::spawn(run(config, bus, state_tx));
        Listener { _task: task, state }
    }

    pub fn state(&self) -> ListenerState {
        *self.state.borrow()
    }

    /// Waits until the listener is connected and has its starting position; events
    /// committed from then on are delivered.
    pub async fn wait_listening(&self, timeout: Duration) -> bool {
        let mut state = self.state.clone();
        tokio::time::timeout(timeout, state.wait_for(|s| *s == ListenerState::Listening))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn run(config: ListenerConfig, bus: EventBus, state: watch::Sender<ListenerState>) {
    let mut cursor: Option<Position> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let error = session(&config, &bus, &mut cursor, &state).await;
        state.send_replace(ListenerState::Connecting);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        tracing::warn!(error = %format!("{error:#}"), retry_in = ?backoff, "event listener disconnected");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// One connection's life; returns why it ended.
async fn session(
    config: &ListenerConfig,
    bus: &EventBus,
    cursor: &mut Option<Position>,
    state: &watch::Sender<ListenerState>,
) -> anyhow::Error {
    match listen(config, bus, cursor, state).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn listen(
    config: &ListenerConfig,
    bus: &EventBus,
    cursor: &mut Option<Position>,
    state: &watch::Sender<ListenerState>,
) -> anyhow::Result<std::convert::Infallible> {
    let mut pg = crate::db::connection_config(&config.database_url)?;
    pg.application_name(APPLICATION_NAME);
    let (client, mut connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting the listener")?;

    // The connection delivers notifications only while it is polled: drive it in its own
    // task and turn notifications into wake-ups (many collapse into one).
    let wake = Arc::new(Notify::new());
    let mut driver = {
        let wake = wake.clone();
        AbortOnDrop::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => return anyhow::Error::new(e).context("listener connection failed"),
                }
            }
            anyhow::anyhow!("listener connection closed")
        })
    };

    // Queries share the connection; the driver task keeps polling it.
    let mut db = AsyncPgConnection::try_from(client)
        .await
        .context("preparing the listener connection")?;
    db.batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .context("LISTEN")?;
    if cursor.is_none() {
        *cursor = Some(feed::head(&mut db).await.map_err(ledger)?);
    }
    state.send_replace(ListenerState::Listening);
    tracing::info!(channel = CHANNEL, "event listener is listening");

    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    let mut retry = Duration::from_millis(5);
    let mut sequencer = Sequencer::default();
    loop {
        let position = cursor.get_or_insert_with(Position::default);
        let passed = Instant::now();
        let (head, held_back) = sequencer.pass(&mut db).await.map_err(ledger)?;
        deliver(&mut db, bus, position, head).await?;
        // Events waiting for transactions that were running at the sequencer's snapshot:
        // look again soon (their commits also notify).
        let wait = if held_back {
            retry = (retry * 2).min(MAX_HELD_BACK_RETRY);
            retry
        } else {
            retry = Duration::from_millis(5);
            config.idle_poll
        };
        tokio::select! {
            _ = wake.notified() => {
                tokio::time::sleep(MIN_PASS.saturating_sub(passed.elapsed())).await;
            }
            _ = tokio::time::sleep(wait), if held_back => {}
            _ = tokio::time::sleep(wait), if !held_back => {
                // Quiet: make sure the listening connection is still there.
                tokio::time::timeout(Duration::from_secs(5), db.batch_execute("SELECT 1"))
                    .await
                    .context("listener heartbeat timed out")?
                    .context("listener heartbeat")?;
            }
            ended = &mut driver.0 => {
                return Err(ended.unwrap_or_else(|e| anyhow::Error::new(e).context("driver")));
            }
        }
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = Instant::now();
            prune(&mut db, config.retention).await;
        }
    }
}

/// Publishes every numbered event after `cursor` up to `head`, in feed order.
async fn deliver(
    conn: &mut AsyncPgConnection,
    bus: &EventBus,
    cursor: &mut Position,
    head: Position,
) -> anyhow::Result<()> {
    if bus.subscriber_count() == 0 {
        // Nobody to tell in this process: move on without reading the events (the
        // feed's readers — webhooks, the stream, resuming subscribers — read the table).
        *cursor = (*cursor).max(head);
        bus.advance_head(cursor.sequence);
        return Ok(());
    }
    while *cursor < head {
        let page = feed::page(conn, *cursor, head, &Filter::default(), BATCH)
            .await
            .map_err(ledger)?;
        for notice in outbox::load_notices(conn, &page.rows)
            .await
            .map_err(ledger)?
        {
            bus.publish(notice);
            metrics::counter!("wallet_events_delivered_total").increment(1);
        }
        *cursor = page.next;
        bus.advance_head(cursor.sequence);
    }
    Ok(())
}

async fn prune(conn: &mut AsyncPgConnection, retention: Duration) {
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        return;
    };
    let before = chrono::Utc::now() - retention;
    let mut deleted = 0;
    loop {
        match feed::prune(conn, before, 10_000).await {
            Ok(n) => {
                deleted += n;
                if n < 10_000 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, "could not prune old events");
                break;
            }
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "pruned old events");
    }
}

/// Logged, never shown to clients: the details are wanted.
fn ledger(e: crate::ledger::LedgerError) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}
