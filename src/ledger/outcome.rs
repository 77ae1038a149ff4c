//! Telling a client the truth about a movement it asked for.
//!
//! A money movement's answer is one of: the committed result; a refusal of a movement
//! that did not and will not commit; or — only when the service cannot know —
//! [`LedgerError::OutcomeUnknown`], which the client resolves by looking the movement up
//! by its key or sending it again with the same key.
//!
//! The work itself never belongs to the request: it runs in a task of its own
//! ([`detached`]), so a request that is cancelled or runs out of time leaves a
//! transaction that commits or rolls back on its own, promptly — never one left open.

use std::future::Future;

use tokio::time::Instant;

use super::LedgerError;
use crate::db::{PgPool, PooledConn};

/// Runs `work` on a connection of its own, in a task of its own, and waits for it until
/// `deadline`. If the deadline passes first, the work goes on (and commits or rolls back
/// by itself) and the answer is [`LedgerError::OutcomeUnknown`].
pub async fn detached<T, F, Fut>(
    pool: &PgPool,
    deadline: Instant,
    work: F,
) -> Result<T, LedgerError>
where
    F: FnOnce(PooledConn) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, LedgerError>> + Send + 'static,
    T: Send + 'static,
{
    let pool = pool.clone();
    let task = tokio::spawn(async move {
        let conn = pool.get().await?;
        work(conn).await
    });
    settle(deadline, task).await
}

/// Waits for a detached task until `deadline`.
async fn settle<T>(
    deadline: Instant,
    task: tokio::task::JoinHandle<Result<T, LedgerError>>,
) -> Result<T, LedgerError> {
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(result)) => result,
        // A panic may have come before or after the commit.
        Ok(Err(failed)) => Err(LedgerError::OutcomeUnknown(format!(
            "the work stopped: {failed}"
        ))),
        Err(_) => Err(LedgerError::OutcomeUnknown(
            "the request's deadline passed while the work was still running".into(),
        )),
    }
}

/// After a commit whose outcome is unknown was run again, a failure that is not a
/// judgement of the request (the database still away) leaves the outcome unknown.
pub fn after_unknown_commit<T>(result: Result<T, LedgerError>) -> Result<T, LedgerError> {
    match result {
        Err(e) if e.is_system() && !matches!(e, LedgerError::OutcomeUnknown(_)) => {
            Err(LedgerError::OutcomeUnknown(format!(
                "the commit failed, and so did running it again: {e:?}"
            )))
        }
        other => other,
    }
}
