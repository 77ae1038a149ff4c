//! Readiness (`/readyz`): a money movement can commit, and each chain network's backend
//! reports its tip.
//!
//! "Can commit" is checked the way a movement commits: a connection from the pool the
//! group committer uses, and a transaction that is given an id and commits — so a commit
//! that cannot complete (a primary waiting for a synchronous standby that is gone, a
//! server that went read-only, a pool that cannot reach the primary) makes the service
//! not ready, where a `SELECT 1` on a side connection would still answer.
//!
//! `/readyz` is anonymous (probes carry no token), so what a hit costs is bounded here: a
//! verdict is reused for [`FRESH_FOR`], and callers arriving while one is being made wait
//! for it rather than starting their own (one check in flight). A commit probe that does
//! not finish within the check's time is left running (Postgres cannot abandon a commit
//! waiting for its standby) and no other is started until it ends: at most one
//! connection is ever held by probes. The chain backends are asked at most once per
//! [`FRESH_FOR`]. Answers name no error: the details (which may hold a node URL with its
//! credentials) go to the log only.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::app::AppState;

/// How long a verdict is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long the database and each chain backend get to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// What the last check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// A transaction committed through the money-movement pool.
    pub database: bool,
    /// One line per chain network: `bitcoin: ok (height N)` or `ethereum: unavailable`.
    pub chains: Vec<String>,
}

/// The last verdict, shared by every caller.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Verdict)>>,
    /// The commit probe still running, if the last one outlived its check.
    probe: Mutex<Option<JoinHandle<bool>>>,
}

impl Readiness {
    /// A verdict at most [`FRESH_FOR`] old: the last one, or a new one made by this caller
    /// while the others wait for it.
    pub async fn verdict(&self, state: &AppState) -> Verdict {
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return verdict.clone();
        }
        let verdict = self.check(state).await;
        *last = Some((Instant::now(), verdict.clone()));
        verdict
    }

    /// Whether a transaction commits through the money-movement pool within
    /// [`CHECK_TIMEOUT`]: the probe in flight if one is, else a new one.
    async fn can_commit(&self, state: &AppState) -> bool {
        let mut probe = self.probe.lock().await;
        // A probe left running by an earlier check is waited for (no second one while it
        // holds a connection); one that has finished since is old news.
        let mut running = match probe.take() {
            Some(running) if !running.is_finished() => running,
            _ => {
                let pool = state.pool.clone();
                tokio::spawn(async move { crate::db::commit_probe(&pool).await })
            }
        };
        match tokio::time::timeout(CHECK_TIMEOUT, &mut running).await {
            Ok(Ok(true)) => true,
            Ok(_) => {
                tracing::warn!("readiness: a transaction could not commit through the pool");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "readiness: a commit did not complete within 1s (is the primary \
                     waiting for its synchronous standby?)"
                );
                *probe = Some(running);
                false
            }
        }
    }

    /// A new verdict: the commit probe and every chain's tip, at once.
    async fn check(&self, state: &AppState) -> Verdict {
        let (database, chains) = tokio::join!(self.can_commit(state), chain_lines(state));
        Verdict { database, chains }
    }
}

/// One line per chain network: its tip, or that it is unavailable.
async fn chain_lines(state: &AppState) -> Vec<String> {
    use crate::chain::Chain as _;
    let chains = &state.chains;
    let networks = chains.names().map(|network| async move {
        match tokio::time::timeout(CHECK_TIMEOUT, chains.tip(network)).await {
            Ok(Ok(height)) => format!("{network}: ok (height {height})"),
            Ok(Err(e)) => {
                tracing::warn!(network, error = %e, "readiness: the chain backend failed");
                format!("{network}: unavailable")
            }
            Err(_) => {
                tracing::warn!(
                    network,
                    "readiness: the chain backend did not answer within 1s"
                );
                format!("{network}: unavailable")
            }
        }
    });
    futures_util::future::join_all(networks).await
}
