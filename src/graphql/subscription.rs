//! Subscription root: live ledger events, filtered per caller.
//!
//! Access is checked twice: at subscribe time (a `walletId` the caller cannot see is
//! `NOT_FOUND`, as for queries) and on every event (a user only ever receives events of
//! their own wallets).

use std::sync::Arc;

use async_graphql::{Context, ID, Result, Subscription as SubscriptionRoot};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use async_graphql::ErrorExtensions;

use super::error::coded;
use super::ids::{NodeType, decode_id};
use super::types::{ReconciliationObject, TransactionObject, WalletObject};
use super::{conn, scope, state};
use crate::db::PgPool;
use crate::events::{Audience, Notice, Payload};
use crate::ledger::{Scope, wallet};

/// A subscriber fell further behind than the server buffers.
pub const SUBSCRIPTION_LAGGED: &str = "SUBSCRIPTION_LAGGED";

pub struct Subscription;

#[SubscriptionRoot]
impl Subscription {
    /// Journal rows of your wallets (or of `walletId`) as they are created and whenever
    /// their status or confirmations change. A subscriber that falls too far behind gets a
    /// `SUBSCRIPTION_LAGGED` error and the stream ends: reload and subscribe again.
    async fn transaction_updated(
        &self,
        ctx: &Context<'_>,
        wallet_id: Option<ID>,
    ) -> Result<BoxStream<'static, Result<TransactionObject>>> {
        let audience = audience(ctx, wallet_id.as_ref()).await?;
        Ok(follow(
            state(ctx).events.subscribe(),
            audience,
            |p| match p {
                Payload::Transaction(e) => Some(TransactionObject((**e).clone())),
                _ => None,
            },
            close_on_lag(),
        ))
    }

    /// Holds of your wallets (or of `walletId`) each time one is authorised, captured,
    /// voided or expires, as it is then.
    async fn hold_updated(
        &self,
        ctx: &Context<'_>,
        wallet_id: Option<ID>,
    ) -> Result<BoxStream<'static, Result<super::holds::HoldObject>>> {
        let audience = audience(ctx, wallet_id.as_ref()).await?;
        Ok(follow(
            state(ctx).events.subscribe(),
            audience,
            |p| match p {
                Payload::Hold(h) => Some(super::holds::HoldObject(h.clone())),
                _ => None,
            },
            close_on_lag(),
        ))
    }

    /// Reconciliations of your wallets (or of `walletId`) as they are recorded.
    async fn reconciliation_completed(
        &self,
        ctx: &Context<'_>,
        wallet_id: Option<ID>,
    ) -> Result<BoxStream<'static, Result<ReconciliationObject>>> {
        let audience = audience(ctx, wallet_id.as_ref()).await?;
        Ok(follow(
            state(ctx).events.subscribe(),
            audience,
            |p| match p {
                Payload::Reconciliation(r) => Some(ReconciliationObject(r.clone())),
                _ => None,
            },
            close_on_lag(),
        ))
    }

    /// The event feed, resumable: every stored event after `after` (an event's `sequence`;
    /// default: from now), then live, with no gap or repeat in between. Your wallets'
    /// events (operators: all), narrowed to `walletId` and `types`. A subscriber that falls
    /// behind is never dropped: it reads from the store until it has caught up.
    /// Older than the retention: `CURSOR_EXPIRED`.
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
        wallet_id: Option<ID>,
        types: Option<Vec<super::feed::EventType>>,
    ) -> Result<BoxStream<'static, Result<super::feed::EventObject>>> {
        super::feed::events_stream(ctx, after, wallet_id, types).await
    }

    /// The wallet each time its balances change, as that change left it. A subscriber that
    /// falls behind skips to the wallet's current state.
    async fn wallet_updated(
        &self,
        ctx: &Context<'_>,
        wallet_id: ID,
    ) -> Result<BoxStream<'static, Result<WalletObject>>> {
        let audience = audience(ctx, Some(&wallet_id)).await?;
        let pool = state(ctx).reads.clone();
        let id = audience.wallet_id.unwrap_or_default();
        Ok(follow(
            state(ctx).events.subscribe(),
            audience,
            |p| match p {
                Payload::Wallet(w) => Some(WalletObject(w.clone())),
                _ => None,
            },
            Arc::new(move |_| {
                let pool = pool.clone();
                Box::pin(async move { Some(current_wallet(&pool, id).await) })
            }),
        ))
    }
}

/// Who the stream is for, checked now: a wallet the caller cannot see is `NOT_FOUND`.
async fn audience(ctx: &Context<'_>, wallet_id: Option<&ID>) -> Result<Audience> {
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
    Ok(Audience {
        owner: scope.owner().map(str::to_owned),
        wallet_id,
        types: None,
    })
}

/// What a stream does when it lagged by `n` notices: yield an item (and go on unless the
/// item is an error), or end (`None`).
type OnLag<T> = Arc<dyn Fn(u64) -> BoxFuture<'static, Option<Result<T>>> + Send + Sync>;

fn close_on_lag<T: Send + 'static>() -> OnLag<T> {
    Arc::new(|skipped| {
        Box::pin(async move {
            Some(Err(coded(
                SUBSCRIPTION_LAGGED,
                format!("this subscription fell behind and {skipped} event(s) were dropped; reload and subscribe again"),
            )
            .extend_with(|_, e| e.set("skipped", skipped))))
        })
    })
}

async fn current_wallet(pool: &PgPool, id: i64) -> Result<WalletObject> {
    let mut c = pool.get().await.map_err(crate::ledger::LedgerError::from)?;
    Ok(WalletObject(
        wallet::find_wallet(&mut c, &Scope::All, id).await?,
    ))
}

/// The notices the audience may see, mapped by `pick`; ends after yielding an error.
fn follow<T: Send + 'static>(
    receiver: Receiver<Arc<Notice>>,
    audience: Audience,
    pick: fn(&Payload) -> Option<T>,
    on_lag: OnLag<T>,
) -> BoxStream<'static, Result<T>> {
    stream::unfold(Some(receiver), move |receiver| {
        let audience = audience.clone();
        let on_lag = on_lag.clone();
        async move {
            let mut receiver = receiver?;
            loop {
                match receiver.recv().await {
                    Ok(notice) => {
                        if audience.admits(&notice)
                            && let Some(item) = pick(&notice.payload)
                        {
                            return Some((Ok(item), Some(receiver)));
                        }
                    }
                    Err(RecvError::Lagged(skipped)) => {
                        let item = on_lag(skipped).await?;
                        let next = item.is_ok().then_some(receiver);
                        return Some((item, next));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
    .boxed()
}
