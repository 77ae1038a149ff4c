//! Readiness (`/readyz`): the database answers through the read pool, and each chain
//! network's backend reports its tip.
//!
//! `/readyz` is anonymous (probes carry no token), so what a hit costs is bounded here: a
//! verdict is reused for [`FRESH_FOR`], and callers arriving while one is being made wait
//! for it rather than starting their own (one check in flight). The database is asked
//! through the read pool, never the money-movement pool, and the chain backends at most
//! once per [`FRESH_FOR`]. Answers name no error: the details (which may hold a node URL
//! with its credentials) go to the log only.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::app::AppState;

/// How long a verdict is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long the database and each chain backend get to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// What the last check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The database answered.
    pub database: bool,
    /// One line per chain network: `bitcoin: ok (height N)` or `ethereum: unavailable`.
    pub chains: Vec<String>,
}

/// The last verdict, shared by every caller.
#[derive(Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Verdict)>>,
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
        let verdict = check(state).await;
        *last = Some((Instant::now(), verdict.clone()));
        verdict
    }
}

async fn check(state: &AppState) -> Verdict {
    use crate::chain::Chain as _;
    let database = async {
        match tokio::time::timeout(CHECK_TIMEOUT, crate::db::ping(&state.reads)).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!("readiness: the database did not answer through the read pool");
                false
            }
            Err(_) => {
                tracing::warn!("readiness: the database did not answer within 1s");
                false
            }
        }
    };
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
    let (database, chains) = tokio::join!(database, futures_util::future::join_all(networks));
    Verdict { database, chains }
}
