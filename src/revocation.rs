//! Revoking bearer tokens: every token of a subject issued before a cutoff is refused.
//!
//! Revocations live in `token_revocations`, so that every process sees them. Each process
//! keeps the ones that can still matter in memory and reloads them, at the first request
//! that needs them, once they are older than the refresh period
//! (`WALLET_TOKEN_REVOCATION_REFRESH_MS`, 2 s by default): a revocation made anywhere is
//! enforced by every process within that period. A process that cannot reload them
//! refuses authenticated requests (`UNAVAILABLE`) rather than serve a revoked token; one
//! failed reload is not retried for a second, so a database outage costs a request no
//! more than a quick refusal.
//!
//! The cutoff is the database's clock rounded up to the next whole second: `iat` is in
//! whole seconds, so every token issued before the revocation has `iat` below it. A token
//! minted in the same second after the revocation is refused too; mint replacements once
//! the cutoff has passed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Text, Timestamptz};
use diesel::{ExpressionMethods, QueryDsl, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::time::Instant;

use crate::auth::TokenError;
use crate::db::PgPool;
use crate::schema::token_revocations;

/// How long one reload may take before the requests waiting for it are refused.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a failed reload the next is tried (requests meanwhile are refused).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Kept beyond the longest token lifetime: clocks of the database and of the hosts that
/// mint tokens may differ a little.
const CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// The default refresh period.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(2);

/// How many subjects may have a revocation that still matters (a cutoff within the
/// longest token lifetime) before `revokeTokens` refuses more: every process holds them
/// all and reloads them every refresh period, so their number must stay small. Beyond
/// it, rotating the secret is the remedy.
pub const MAX_RECENT_REVOCATIONS: usize = 10_000;

/// A revocation as recorded.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct Revocation {
    #[diesel(sql_type = Text)]
    pub subject: String,
    /// Tokens of `subject` issued before this are refused.
    #[diesel(sql_type = Timestamptz)]
    pub revoked_before: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub revoked_by: String,
    #[diesel(sql_type = Text)]
    pub reason: String,
}

/// Revokes every token of `subject` issued until now (see the module's note on the
/// cutoff). Revoking again moves the cutoff forward, never back. Returns the revocation.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    subject: &str,
    revoked_by: &str,
    reason: &str,
) -> Result<Revocation, diesel::result::Error> {
    diesel::sql_query(
        "INSERT INTO token_revocations (subject, revoked_before, revoked_by, reason)
         VALUES ($1, date_trunc('second', now()) + interval '1 second', $2, $3)
         ON CONFLICT (subject) DO UPDATE
            SET revoked_before = GREATEST(token_revocations.revoked_before,
                                          EXCLUDED.revoked_before),
                revoked_by = EXCLUDED.revoked_by,
                reason = EXCLUDED.reason,
                created_at = now()
         RETURNING subject, revoked_before, revoked_by, reason",
    )
    .bind::<Text, _>(subject)
    .bind::<Text, _>(revoked_by)
    .bind::<Text, _>(reason)
    .get_result(conn)
    .await
}

/// The cutoffs of revocations newer than `horizon` (Unix seconds, by subject).
async fn load(
    conn: &mut AsyncPgConnection,
    horizon: Duration,
) -> Result<HashMap<String, u64>, diesel::result::Error> {
    use token_revocations::dsl;
    let since = Utc::now()
        - chrono::Duration::from_std(horizon + CLOCK_MARGIN).unwrap_or(chrono::Duration::MAX);
    let rows: Vec<(String, DateTime<Utc>)> = dsl::token_revocations
        .filter(dsl::revoked_before.gt(since))
        .select((dsl::subject, dsl::revoked_before))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(subject, cutoff)| (subject, u64::try_from(cutoff.timestamp()).unwrap_or(0)))
        .collect())
}

/// The revocations a process enforces, reloaded from the database at most once per
/// refresh period.
pub struct Revocations {
    pool: PgPool,
    refresh: Duration,
    horizon: Duration,
    cache: RwLock<Cache>,
    /// Held while reloading: one reload at a time, the others wait for its result.
    reloading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    /// When the load now held was sent (`None`: never loaded).
    loaded: Option<Instant>,
    /// When a reload last failed, if it did after the last success.
    failed: Option<Instant>,
    cutoffs: Arc<HashMap<String, u64>>,
    /// Revocations made by this process, with when: re-applied over a reload sent before
    /// them, whose snapshot may not hold them yet.
    recorded: Vec<(Instant, String, u64)>,
}

impl Cache {
    fn apply(cutoffs: &mut HashMap<String, u64>, subject: &str, cutoff: u64) {
        let entry = cutoffs.entry(subject.to_owned()).or_insert(cutoff);
        *entry = (*entry).max(cutoff);
    }
}

impl Revocations {
    /// Revocations read through `pool`, reloaded every `refresh`; `horizon` is how old a
    /// cutoff may be and still refuse a token (the longest token lifetime).
    pub fn new(pool: PgPool, refresh: Duration, horizon: Duration) -> Self {
        Revocations {
            pool,
            refresh,
            horizon,
            cache: RwLock::new(Cache::default()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// How long a revocation made elsewhere may take to be enforced here.
    pub fn refresh_period(&self) -> Duration {
        self.refresh
    }

    /// Whether one more subject may be revoked (see [`MAX_RECENT_REVOCATIONS`]); a
    /// subject revoked already may always be revoked again.
    pub async fn room_for(&self, subject: &str) -> Result<bool, TokenError> {
        let cutoffs = self.current().await?;
        Ok(cutoffs.len() < MAX_RECENT_REVOCATIONS || cutoffs.contains_key(subject))
    }

    /// Refuses a token of `subject` issued at `issued_at` (Unix seconds) if it was
    /// revoked; `Unavailable` if the revocations cannot be known.
    pub async fn check(&self, subject: &str, issued_at: u64) -> Result<(), TokenError> {
        let cutoffs = self.current().await?;
        match cutoffs.get(subject) {
            Some(&cutoff) if issued_at < cutoff => Err(TokenError::Revoked),
            _ => Ok(()),
        }
    }

    /// Enforces a revocation made by this process at once (others reload it).
    pub fn record(&self, revocation: &Revocation) {
        let cutoff = u64::try_from(revocation.revoked_before.timestamp()).unwrap_or(0);
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let mut cutoffs = (*cache.cutoffs).clone();
        Cache::apply(&mut cutoffs, &revocation.subject, cutoff);
        cache.cutoffs = Arc::new(cutoffs);
        cache
            .recorded
            .push((Instant::now(), revocation.subject.clone(), cutoff));
    }

    /// The cutoffs, reloaded first if they are older than the refresh period.
    async fn current(&self) -> Result<Arc<HashMap<String, u64>>, TokenError> {
        if let Some(cutoffs) = self.fresh()? {
            return Ok(cutoffs);
        }
        let _reloading = self.reloading.lock().await;
        // Someone else may have reloaded (or failed to) while this one waited.
        if let Some(cutoffs) = self.fresh()? {
            return Ok(cutoffs);
        }
        let sent = Instant::now();
        let loaded = tokio::time::timeout(RELOAD_TIMEOUT, async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            load(&mut conn, self.horizon)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()));
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(mut cutoffs) => {
                cache.recorded.retain(|(at, _, _)| *at >= sent);
                for (_, subject, cutoff) in &cache.recorded {
                    Cache::apply(&mut cutoffs, subject, *cutoff);
                }
                cache.cutoffs = Arc::new(cutoffs);
                cache.loaded = Some(sent);
                cache.failed = None;
                Ok(cache.cutoffs.clone())
            }
            Err(error) => {
                tracing::warn!(%error, "could not reload token revocations");
                cache.failed = Some(Instant::now());
                Err(TokenError::Unavailable)
            }
        }
    }

    /// The cutoffs if they are recent enough (`Ok(None)`: reload them); refused outright
    /// shortly after a failed reload.
    fn fresh(&self) -> Result<Option<Arc<HashMap<String, u64>>>, TokenError> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if cache.loaded.is_some_and(|at| now < at + self.refresh) {
            return Ok(Some(cache.cutoffs.clone()));
        }
        if cache
            .failed
            .is_some_and(|at| now < at + RETRY_AFTER_FAILURE)
        {
            return Err(TokenError::Unavailable);
        }
        Ok(None)
    }
}

impl Revocations {
    /// Resolves once a token of `subject` issued at `issued_at` is revoked, checking every
    /// refresh period (an open websocket session ends then). Revocations that cannot be
    /// loaded leave it waiting: the session is not ended for a database outage.
    pub async fn until_revoked(self: Arc<Self>, subject: String, issued_at: u64) {
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.check(&subject, issued_at).await == Err(TokenError::Revoked) {
                return;
            }
        }
    }
}
