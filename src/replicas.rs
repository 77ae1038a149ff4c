//! Reads from replicas: streaming standbys serve queries (listings, history, lookups,
//! reconciliation reads, the trial balance) so that they do not compete with money
//! movements on the primary.
//!
//! A replica is only ever *behind* the primary. Two rules keep what a client reads
//! honest:
//! - **Bounded staleness.** Every replica's lag is measured ([`MONITOR_EVERY`]): the
//!   primary's WAL position is sampled, and a replica's lag is the age of the oldest
//!   sampled position it has not replayed. A replica lagging more than the bound, not
//!   answering, or not a standby (say, promoted) serves nothing; reads then go to the
//!   primary.
//! - **Read-your-writes.** A mutation's response carries a *consistency token*: a WAL
//!   position at or after its commit. A read that presents it is served by a replica
//!   that has replayed that far — waiting for one, within a bound — else by the primary.
//!
//! A lookup that finds nothing on a replica may be asked again of the primary by its
//! caller (the thing may have just been written).
//!
//! Without replicas configured, everything reads from the primary.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use diesel::QueryableByName;
use diesel::sql_types::{Bool, Nullable, Text};
use diesel_async::RunQueryDsl;

use crate::db::{PgPool, QueryCounter, SessionLimits};
use crate::task::AbortOnDrop;

/// How often the primary's position and every replica's are read.
pub const MONITOR_EVERY: Duration = Duration::from_millis(100);
/// How long one position read may take before the replica counts as not answering.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a read waiting for a replica to reach its token asks again.
const TOKEN_POLL: Duration = Duration::from_millis(2);

/// A WAL position (Postgres's `pg_lsn`): a byte offset in the write-ahead log, written
/// `X/Y` in hexadecimal. Positions only grow, across a failover too (a promoted standby
/// continues from where it replayed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = InvalidLsn;

    fn from_str(text: &str) -> Result<Lsn, InvalidLsn> {
        let (high, low) = text.split_once('/').ok_or(InvalidLsn)?;
        let part = |p: &str| match p.len() {
            1..=8 => u32::from_str_radix(p, 16).map_err(|_| InvalidLsn),
            _ => Err(InvalidLsn),
        };
        Ok(Lsn((u64::from(part(high)?) << 32) | u64::from(part(low)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Not a WAL position (`X/Y`, each at most 8 hexadecimal digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidLsn;

impl fmt::Display for InvalidLsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a consistency token (a WAL position such as 0/16B3748)")
    }
}

impl std::error::Error for InvalidLsn {}

/// Where reads may go, and how stale they may be.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// One URL naming one or several standbys (`postgres://u@h1:5432,h2:5432/db`); a
    /// `target_session_attrs` of `prefer-standby`, `read-only`, `standby` or `any` is
    /// accepted (only standbys ever serve reads here; the primary is the fallback).
    pub url: String,
    /// A replica lagging more than this serves nothing.
    pub max_lag: Duration,
    /// How long a read presenting a consistency token waits for a replica to reach it
    /// before the primary serves it.
    pub token_wait: Duration,
}

/// What one replica was last seen as.
#[derive(Clone, Debug, Default)]
pub struct ReplicaStatus {
    /// It answered the last check.
    pub answering: bool,
    /// It is a standby (in recovery).
    pub standby: bool,
    /// The last position it had replayed.
    pub replayed: Option<Lsn>,
    /// How far behind the primary it is in time (`None`: not known).
    pub lag: Option<Duration>,
    /// How far behind the primary's last sampled position it is, in bytes of WAL.
    pub lag_bytes: u64,
}

/// One replica: a host of the read URL, with its own connections.
pub struct Replica {
    /// `host:port`, as metrics and `/readyz` name it.
    pub label: String,
    pool: PgPool,
    status: std::sync::Mutex<ReplicaStatus>,
}

impl Replica {
    pub fn status(&self) -> ReplicaStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, status: ReplicaStatus) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

/// Who served a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadTarget {
    Replica,
    Primary,
}

impl ReadTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadTarget::Replica => "replica",
            ReadTarget::Primary => "primary",
        }
    }
}

/// The replicas of one process, kept measured by a background task.
pub struct Replicas {
    members: Vec<Arc<Replica>>,
    /// The primary's read pool: where reads go when no replica may serve them.
    primary: PgPool,
    max_lag: Duration,
    token_wait: Duration,
    next: AtomicUsize,
    _monitor: AbortOnDrop<()>,
}

impl Replicas {
    /// Connects lazily to every host of `config.url` (each host its own pool of `size`)
    /// and starts measuring their lag against `primary`.
    pub fn start(
        config: &ReplicaConfig,
        primary: PgPool,
        size: usize,
        limits: SessionLimits,
        counter: QueryCounter,
    ) -> anyhow::Result<Replicas> {
        let hosts = split_hosts(&config.url)?;
        let mut members = Vec::new();
        for (label, connection) in hosts {
            let pool =
                crate::db::build_pool_with(connection, &label, size, limits, counter.clone())?;
            members.push(Arc::new(Replica {
                label,
                pool,
                status: std::sync::Mutex::default(),
            }));
        }
        let monitor = AbortOnDrop::spawn(monitor(
            members.clone(),
            primary.clone(),
            config.max_lag,
            config.max_lag.max(MONITOR_EVERY) * 4 + Duration::from_secs(10),
        ));
        Ok(Replicas {
            members,
            primary,
            max_lag: config.max_lag,
            token_wait: config.token_wait,
            next: AtomicUsize::new(0),
            _monitor: monitor,
        })
    }

    pub fn members(&self) -> &[Arc<Replica>] {
        &self.members
    }

    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }

    /// Whether a replica may serve reads now: a standby that answered its last check
    /// and lags no more than the bound.
    fn usable(&self, status: &ReplicaStatus) -> bool {
        status.answering && status.standby && status.lag.is_some_and(|lag| lag <= self.max_lag)
    }

    /// One replica's state in words (for `/readyz`).
    pub fn describe(&self, status: &ReplicaStatus) -> String {
        let lag = |l: Option<Duration>| {
            l.map_or("unknown".to_owned(), |l| format!("{:.3}s", l.as_secs_f64()))
        };
        match status {
            s if self.usable(s) => format!("ok (lag {}, {} bytes)", lag(s.lag), s.lag_bytes),
            s if !s.answering => "unavailable (skipped)".to_owned(),
            s if !s.standby => "not a standby (skipped)".to_owned(),
            s => format!(
                "lagging (lag {} over the {}ms bound, {} bytes; skipped)",
                lag(s.lag),
                self.max_lag.as_millis(),
                s.lag_bytes
            ),
        }
    }

    /// The usable replicas, starting at a different one each call (reads spread out).
    fn candidates(&self) -> Vec<(Arc<Replica>, ReplicaStatus)> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .map(|r| (r.clone(), r.status()))
            .filter(|(_, status)| self.usable(status))
            .collect()
    }

    /// The pool a read is served from: a usable replica — one that has replayed `token`,
    /// when one is given, waiting up to the configured bound for one to get there — else
    /// the primary.
    pub async fn pool_for_read(&self, token: Option<Lsn>) -> (PgPool, ReadTarget) {
        let candidates = self.candidates();
        let chosen = match token {
            None => candidates.into_iter().next().map(|(r, _)| r),
            Some(token) => self.reached(candidates, token).await,
        };
        let (pool, target) = match chosen {
            Some(replica) => (replica.pool.clone(), ReadTarget::Replica),
            None => (self.primary.clone(), ReadTarget::Primary),
        };
        metrics::counter!("wallet_reads_total", "target" => target.as_str()).increment(1);
        (pool, target)
    }

    /// A candidate that has replayed `token`: one already seen there, else the first to
    /// get there within the wait (asked directly, not at the monitor's pace).
    async fn reached(
        &self,
        candidates: Vec<(Arc<Replica>, ReplicaStatus)>,
        token: Lsn,
    ) -> Option<Arc<Replica>> {
        if let Some((replica, _)) = candidates
            .iter()
            .find(|(_, status)| status.replayed.is_some_and(|at| at >= token))
        {
            return Some(replica.clone());
        }
        let (replica, _) = candidates.into_iter().next()?;
        let deadline = Instant::now() + self.token_wait;
        let waited = async {
            loop {
                if replay_position(&replica.pool)
                    .await
                    .is_ok_and(|p| p.replayed.is_some_and(|at| at >= token))
                {
                    return;
                }
                tokio::time::sleep(TOKEN_POLL).await;
            }
        };
        tokio::time::timeout_at(deadline.into(), waited)
            .await
            .ok()
            .map(|()| replica)
    }
}

/// Each host of a read URL with the URL's other settings, named `host:port`. The
/// `target_session_attrs` the URL may carry is taken out (tokio-postgres knows only some
/// of libpq's values; here every host is checked to be a standby anyway).
fn split_hosts(url: &str) -> anyhow::Result<Vec<(String, tokio_postgres::Config)>> {
    use tokio_postgres::config::Host;
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => match value {
                "prefer-standby" | "read-only" | "standby" | "any" => {}
                other => anyhow::bail!(
                    "WALLET_DATABASE_READ_URL: target_session_attrs={other} is not for \
                     replicas (use prefer-standby or read-only)"
                ),
            },
            _ => kept.push(pair),
        }
    }
    let cleaned = match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    };
    let config = crate::db::connection_config(&cleaned).context("WALLET_DATABASE_READ_URL")?;
    let ports = config.get_ports();
    let hosts = config.get_hosts();
    anyhow::ensure!(
        !hosts.is_empty(),
        "WALLET_DATABASE_READ_URL names no host (postgres://USER@HOST:PORT/DATABASE)"
    );
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            // The URL's settings, with this host only.
            let mut single = tokio_postgres::Config::new();
            copy_settings(&config, &mut single);
            let label = match host {
                Host::Tcp(name) => {
                    single.host(name);
                    format!("{name}:{port}")
                }
                #[cfg(unix)]
                Host::Unix(dir) => {
                    single.host_path(dir);
                    format!("{}:{port}", dir.display())
                }
            };
            single.port(port);
            (label, single)
        })
        .collect())
}

/// Copies the settings a replica connection needs (not the hosts) from `from` to `to`.
fn copy_settings(from: &tokio_postgres::Config, to: &mut tokio_postgres::Config) {
    if let Some(user) = from.get_user() {
        to.user(user);
    }
    if let Some(password) = from.get_password() {
        to.password(password);
    }
    if let Some(dbname) = from.get_dbname() {
        to.dbname(dbname);
    }
    if let Some(options) = from.get_options() {
        to.options(options);
    }
    if let Some(name) = from.get_application_name() {
        to.application_name(name);
    }
    if let Some(timeout) = from.get_connect_timeout() {
        to.connect_timeout(*timeout);
    }
    if let Some(timeout) = from.get_tcp_user_timeout() {
        to.tcp_user_timeout(*timeout);
    }
    to.ssl_mode(from.get_ssl_mode())
        .keepalives(from.get_keepalives())
        .keepalives_idle(from.get_keepalives_idle());
    if let Some(interval) = from.get_keepalives_interval() {
        to.keepalives_interval(interval);
    }
    if let Some(retries) = from.get_keepalives_retries() {
        to.keepalives_retries(retries);
    }
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = Bool)]
    standby: bool,
    #[diesel(sql_type = Nullable<Text>)]
    replayed: Option<String>,
}

struct Replayed {
    standby: bool,
    replayed: Option<Lsn>,
}

/// Whether the server behind `pool` is a standby, and what it has replayed.
async fn replay_position(pool: &PgPool) -> anyhow::Result<Replayed> {
    let mut conn = pool.get().await?;
    let row: Position = diesel::sql_query(
        "SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS replayed",
    )
    .get_result(&mut *conn)
    .await?;
    Ok(Replayed {
        standby: row.standby,
        replayed: row.replayed.as_deref().map(str::parse).transpose()?,
    })
}

/// Samples of the primary's position, oldest first: how long ago it was at each.
#[derive(Default)]
struct PrimaryHistory {
    samples: VecDeque<(Instant, Lsn)>,
}

impl PrimaryHistory {
    fn record(&mut self, at: Instant, lsn: Lsn, keep: Duration) {
        if self.samples.back().is_none_or(|(_, last)| *last < lsn) {
            self.samples.push_back((at, lsn));
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > keep)
            && self.samples.len() > 1
        {
            self.samples.pop_front();
        }
    }

    /// How far behind a replica that has replayed `replayed` is: zero if it has the
    /// newest sampled position, else the age of the oldest sample it lacks.
    fn lag(&self, replayed: Lsn, now: Instant) -> (Duration, u64) {
        let newest = self.samples.back().map(|(_, l)| *l).unwrap_or(replayed);
        let bytes = newest.0.saturating_sub(replayed.0);
        let lag = self
            .samples
            .iter()
            .find(|(_, lsn)| *lsn > replayed)
            .map(|(t, _)| now.duration_since(*t))
            .unwrap_or_default();
        (lag, bytes)
    }
}

/// Measures every replica each [`MONITOR_EVERY`], forever.
async fn monitor(members: Vec<Arc<Replica>>, primary: PgPool, max_lag: Duration, keep: Duration) {
    let mut history = PrimaryHistory::default();
    let mut tick = tokio::time::interval(MONITOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The primary first: a replica's position read after it can only be fresher.
        let sampled_at = Instant::now();
        match tokio::time::timeout(CHECK_TIMEOUT, crate::db::wal_position(&primary)).await {
            Ok(Some(lsn)) => history.record(sampled_at, lsn, keep),
            _ => tracing::debug!("replicas: the primary's position could not be read"),
        }
        let checks = members.iter().map(|replica| async move {
            let seen = tokio::time::timeout(CHECK_TIMEOUT, replay_position(&replica.pool)).await;
            (replica, seen)
        });
        let now = Instant::now();
        for (replica, seen) in futures_util::future::join_all(checks).await {
            let status = match seen {
                Ok(Ok(Replayed {
                    standby,
                    replayed: Some(replayed),
                })) => {
                    let (lag, lag_bytes) = history.lag(replayed, now);
                    ReplicaStatus {
                        answering: true,
                        standby,
                        replayed: Some(replayed),
                        lag: Some(lag),
                        lag_bytes,
                    }
                }
                // Not a standby (never was, or promoted): it serves no reads.
                Ok(Ok(Replayed { standby, .. })) => ReplicaStatus {
                    answering: true,
                    standby,
                    ..ReplicaStatus::default()
                },
                Ok(Err(e)) => {
                    tracing::debug!(replica = %replica.label, error = %e, "replica check failed");
                    ReplicaStatus::default()
                }
                Err(_) => ReplicaStatus::default(),
            };
            let labels = [("replica", replica.label.clone())];
            metrics::gauge!("wallet_replica_lag_seconds", &labels)
                .set(status.lag.map_or(f64::NAN, |l| l.as_secs_f64()));
            metrics::gauge!("wallet_replica_lag_bytes", &labels).set(status.lag_bytes as f64);
            let usable =
                status.answering && status.standby && status.lag.is_some_and(|lag| lag <= max_lag);
            metrics::gauge!("wallet_replica_usable", &labels).set(f64::from(u8::from(usable)));
            replica.set_status(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_print_as_postgres_writes_them() {
        for text in ["0/0", "0/16B3748", "1/0", "FFFFFFFF/FFFFFFFF", "A/B"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x016B_3748));
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert!("1/0".parse::<Lsn>().unwrap() > "0/FFFFFFFF".parse::<Lsn>().unwrap());
        for bad in [
            "",
            "0",
            "/",
            "0/",
            "/0",
            "x/0",
            "0/123456789",
            "-1/0",
            "0/0/0",
            " 0/0",
        ] {
            assert_eq!(bad.parse::<Lsn>(), Err(InvalidLsn), "{bad:?}");
        }
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_position_not_replayed() {
        let start = Instant::now();
        let mut history = PrimaryHistory::default();
        let keep = Duration::from_secs(60);
        for (ms, lsn) in [(0, 100), (100, 200), (200, 200), (300, 400)] {
            history.record(start + Duration::from_millis(ms), Lsn(lsn), keep);
        }
        let now = start + Duration::from_millis(500);
        assert_eq!(history.lag(Lsn(400), now), (Duration::ZERO, 0));
        assert_eq!(history.lag(Lsn(500), now), (Duration::ZERO, 0));
        assert_eq!(
            history.lag(Lsn(250), now),
            (Duration::from_millis(200), 150)
        );
        assert_eq!(
            history.lag(Lsn(150), now),
            (Duration::from_millis(400), 250)
        );
        assert_eq!(history.lag(Lsn(50), now), (Duration::from_millis(500), 350));
        // Old samples go, the newest stays.
        history.record(start + Duration::from_secs(120), Lsn(400), keep);
        assert_eq!(history.samples.len(), 1);
    }

    #[test]
    fn a_read_url_becomes_one_connection_per_host() {
        let hosts = split_hosts(
            "postgres://reader:pw@10.0.0.2:5433,10.0.0.3/wallet?target_session_attrs=prefer-standby&application_name=w",
        )
        .unwrap();
        let labels: Vec<&str> = hosts.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["10.0.0.2:5433", "10.0.0.3:5432"]);
        let (_, first) = &hosts[0];
        assert_eq!(first.get_user(), Some("reader"));
        assert_eq!(first.get_dbname(), Some("wallet"));
        assert_eq!(first.get_application_name(), Some("w"));
        assert_eq!(first.get_hosts().len(), 1);
        assert!(split_hosts("postgres://u@h/db?target_session_attrs=read-write").is_err());
    }
}
