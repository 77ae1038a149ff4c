//! Assembling a running service from configuration: database, pool, schema, keys.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Notify, Semaphore};

use crate::auth::{TokenError, TokenKeys, TokenPolicy, Verified};
use crate::chain::ethereum::{self, ConnectError, EthereumNode, NodeConfig};
use crate::chain::{Chain as _, Networks, SimulatedChain, backends};
use crate::chain_worker::ChainWorker;
use crate::custody::{Custody, SeedSource};
use crate::db::{self, PgPool, QueryCounter, SessionLimits};
use crate::events::stream::{StreamConfig, StreamStatus, spawn_publisher};
use crate::events::webhook::{TargetPolicy, WebhookConfig, spawn_dispatcher};
use crate::events::{EventBus, Listener, ListenerConfig};
use crate::graphql::{self, AppSchema, Limits};
use crate::ledger::CurrencyRegistry;
use crate::ledger::currency::{TokenCurrency, register_tokens};
use crate::ledger::group_commit::Committer;
use crate::ledger::hold::{self, HoldPolicy};
use crate::limits::{HttpLimits, RateLimits, WsLimits, WsSlots};
use crate::readiness::Readiness;
use crate::replicas::{ReplicaConfig, Replicas};
use crate::revocation::Revocations;
use crate::task::AbortOnDrop;

/// What resolvers need: shared by every request.
#[derive(Clone)]
pub struct AppState {
    /// Connections for money movements (the group committer, mutations, the chain
    /// worker): queries never take one of these.
    pub pool: PgPool,
    /// Connections for queries and subscriptions.
    pub reads: PgPool,
    pub currencies: Arc<CurrencyRegistry>,
    /// Statements sent to Postgres by the pool (for metrics and tests).
    pub queries: QueryCounter,
    /// Ledger events of every process, fanned out to this process's subscribers.
    pub events: EventBus,
    /// The HD master key: derives crypto addresses.
    pub custody: Arc<Custody>,
    /// The simulated chain, when enabled (development): its dev-only mutations work.
    pub simulator: Option<SimulatedChain>,
    /// The chain backend of each network with one (the simulator, a node client): crypto
    /// movements go through it.
    pub chains: Networks,
    /// Applies fiat movements in batches, one database transaction per batch.
    pub committer: Committer,
    /// Wakes this process's chain worker (a withdrawal to sign, blocks to follow).
    pub chain_wakeup: Arc<Notify>,
    /// How long a request may take: a movement not settled by then is answered
    /// `OUTCOME_UNKNOWN` (or refused, if it never started).
    pub request_timeout: Duration,
    /// Revoked tokens, as this process last loaded them.
    pub revocations: Arc<Revocations>,
    /// How long holds last.
    pub holds: HoldPolicy,
    /// Holds captured or voided recently: what a capture needs of them before the locks.
    pub located_holds: Arc<hold::LocatedHolds>,
    /// Which URLs webhook endpoints may have.
    pub webhook_targets: TargetPolicy,
    /// The event stream's health and lag, when one is configured.
    pub stream: Option<Arc<StreamStatus>>,
    /// Replicas that serve queries, when configured (else queries read from `reads`).
    pub replicas: Option<Arc<Replicas>>,
}

/// Everything needed to start one service instance. `Debug` shows no secret.
#[derive(Clone, Debug)]
pub struct AppConfig {
    pub database_url: String,
    /// Connections for money movements.
    pub pool_size: usize,
    /// Connections for queries and subscriptions.
    pub read_pool_size: usize,
    /// Limits every pooled database session runs under (lock and statement timeouts).
    pub session_limits: SessionLimits,
    /// Signs tokens (and verifies them).
    pub jwt_secret: SecretString,
    /// Earlier secrets: verify only, so that tokens they signed stay good after a rotation.
    pub jwt_previous_secrets: Vec<SecretString>,
    /// Issuer, audience and maximum lifetimes of tokens.
    pub token_policy: TokenPolicy,
    /// How often revocations are reloaded: how long one made elsewhere takes to apply.
    pub revocation_refresh: Duration,
    pub limits: Limits,
    pub request_timeout: Duration,
    pub http: HttpLimits,
    pub ws: WsLimits,
    pub rates: RateLimits,
    pub seed: SeedSource,
    /// Run the simulated bitcoin and ethereum networks (ethereum only without a node).
    pub simulated_chain: bool,
    /// Serve the ethereum network from this JSON-RPC node instead of the simulator.
    pub ethereum: Option<NodeConfig>,
    /// Mine a block this often (`None`: only on demand, with `mineBlocks`).
    pub block_interval: Option<Duration>,
    /// Reconcile every crypto wallet against the chain this often (`None`: never).
    pub reconcile_interval: Option<Duration>,
    /// Run the chain worker (withdrawals, deposit watcher) this often (`None`: never).
    pub chain_poll: Option<Duration>,
    /// Serve GraphiQL and answer introspection.
    pub graphiql: bool,
    /// Who may read `/metrics` on the main listener.
    pub metrics: MetricsAccess,
    /// Flat withdrawal fees by currency code (see `WALLET_WITHDRAWAL_FEES`).
    pub withdrawal_fees: std::collections::BTreeMap<String, rust_decimal::Decimal>,
    /// How long holds last.
    pub holds: HoldPolicy,
    /// Run the hold expiry worker this often (`None`: never).
    pub hold_expiry_poll: Option<Duration>,
    /// How long events are kept (the feed can be resumed from any position this recent).
    pub event_retention: Duration,
    /// How webhooks are sent (`None`: this process sends none; others may).
    pub webhooks: Option<WebhookConfig>,
    /// Which URLs webhook endpoints may have.
    pub webhook_targets: TargetPolicy,
    /// Publish every event to NATS JetStream.
    pub stream: Option<StreamConfig>,
    /// Serve queries from these replicas (`WALLET_DATABASE_READ_URL`).
    pub read_replicas: Option<ReplicaConfig>,
}

/// Who may read `/metrics` on the main listener.
#[derive(Clone, Debug)]
pub enum MetricsAccess {
    /// Anyone (a loopback listener).
    Open,
    /// Callers presenting this bearer token.
    Token(SecretString),
    /// Nobody: served on a separate address, or not at all.
    Hidden,
}

impl AppConfig {
    /// The session limits, with the lock timeout kept within a quarter of the request
    /// timeout: a movement blocked on a wallet lock is refused (nothing done) while its
    /// request can still say so, rather than answered `OUTCOME_UNKNOWN`.
    pub fn effective_session_limits(&self) -> SessionLimits {
        SessionLimits {
            lock_timeout: self
                .session_limits
                .lock_timeout
                .min(self.request_timeout / 4),
            ..self.session_limits
        }
    }
}

/// A service instance: the router is built from it by [`crate::http::router`]. A handle
/// (one `Arc`), so that handing it to each request costs a reference count, not a copy
/// of the whole.
#[derive(Clone)]
pub struct App(Arc<Service>);

impl std::ops::Deref for App {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.0
    }
}

/// What an [`App`] holds: everything a request handler reads.
pub struct Service {
    pub state: AppState,
    pub schema: AppSchema,
    pub tokens: TokenKeys,
    pub request_timeout: Duration,
    pub limits: Limits,
    pub http: HttpLimits,
    pub ws: WsLimits,
    /// Websocket connections open, in total and per user.
    pub ws_slots: Arc<WsSlots>,
    /// The last readiness verdict, shared by every `/readyz` caller.
    pub readiness: Arc<Readiness>,
    /// Places for GraphQL requests over HTTP executing at once (`max_in_flight`).
    pub in_flight: Arc<Semaphore>,
    pub graphiql: bool,
    pub metrics: MetricsAccess,
    /// Stops when the last clone of the app is dropped.
    pub listener: Arc<Listener>,
    /// The simulated chain's block timer, when it runs.
    pub miner: Option<Arc<AbortOnDrop<()>>>,
    /// The scheduled chain reconciliation, when it runs.
    pub reconciler: Option<Arc<AbortOnDrop<()>>>,
    /// The chain worker, when it runs.
    pub chain_worker: Option<Arc<AbortOnDrop<()>>>,
    /// Releases holds past their expiry, when it runs.
    pub hold_expirer: Option<Arc<AbortOnDrop<()>>>,
    /// Sends webhooks, when it runs.
    pub webhook_dispatcher: Option<Arc<AbortOnDrop<()>>>,
    /// Publishes events to NATS JetStream, when configured.
    pub stream_publisher: Option<Arc<AbortOnDrop<()>>>,
    /// Keeps the Ethereum node connected (reconnects, re-checks its chain id), when one
    /// is configured.
    pub node_supervisor: Option<Arc<AbortOnDrop<()>>>,
}

impl App {
    /// Creates the database if missing, applies migrations (under an advisory lock, so
    /// several processes may start at once), and builds the pool and schema.
    pub async fn start(config: &AppConfig) -> anyhow::Result<App> {
        crate::metrics::handle();
        let custody = Arc::new(Custody::load(&config.seed)?);
        db::ensure_database(&config.database_url).await?;
        let applied = db::run_migrations(&config.database_url).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied migrations");
        }
        let queries = QueryCounter::default();
        let limits = config.effective_session_limits();
        let pool = db::build_pool(
            &config.database_url,
            config.pool_size,
            limits,
            queries.clone(),
        )?;
        let reads = db::build_pool(
            &config.database_url,
            config.read_pool_size.max(1),
            limits,
            queries.clone(),
        )?;
        let replicas = match &config.read_replicas {
            Some(replicas) => Some(Arc::new(Replicas::start(
                replicas,
                reads.clone(),
                config.read_pool_size.max(1),
                limits,
                queries.clone(),
            )?)),
            None => None,
        };
        // The chain backend of each network: the simulator (its own connections, as a node
        // client would have: a request holding a pooled connection never waits on the pool
        // for the chain), and a node client where one is configured.
        let simulator = match config.simulated_chain {
            true => Some(SimulatedChain::new(db::build_pool(
                &config.database_url,
                4,
                limits,
                QueryCounter::default(),
            )?)),
            false => None,
        };
        let mut chains = Networks::default();
        if let Some(simulator) = &simulator {
            for network in ["bitcoin", ethereum::NETWORK] {
                chains = chains.with(network, Arc::new(simulator.clone()));
            }
        }
        let mut node_supervisor = None;
        if let Some(node) = &config.ethereum {
            let pool = db::build_pool(&config.database_url, 2, limits, QueryCounter::default())?;
            let node = EthereumNode::new(node, pool)?;
            connect_at_start(&node).await?;
            node_supervisor = Some(Arc::new(node.supervise()));
            chains = chains.with(ethereum::NETWORK, Arc::new(node));
        }
        // Each network the simulator serves (not one a node serves) is claimed for it:
        // refused if the network's wallets have movements made on a node.
        if simulator.is_some() {
            let mut conn = pool.get().await?;
            for network in chains.names().filter(|n| chains.is_simulated(n)) {
                claim_for_simulator(&mut conn, network).await?;
            }
        }
        // Crypto currencies of networks without a backend are not offered.
        let networks: Vec<&str> = chains.names().collect();
        let currencies = {
            let mut conn = pool.get().await?;
            crate::custody::fingerprint::check(&mut conn, &custody).await?;
            if let Some(node) = &config.ethereum {
                let tokens: Vec<TokenCurrency> = node
                    .tokens
                    .iter()
                    .map(|t| TokenCurrency {
                        code: &t.code,
                        contract: &t.contract,
                        decimals: t.decimals,
                    })
                    .collect();
                register_tokens(&mut conn, ethereum::NETWORK, &tokens)
                    .await
                    .map_err(|e| anyhow::anyhow!("WALLET_ETHEREUM_TOKENS: {e:?}"))?;
            }
            Arc::new(
                CurrencyRegistry::load(&mut conn)
                    .await?
                    .with_networks(&networks)
                    .with_withdrawal_fees(&config.withdrawal_fees, |network| {
                        chains.max_transfer_fee(network)
                    })
                    .map_err(|e| anyhow::anyhow!(e))?,
            )
        };
        // Connections of their own: checking a token never waits behind queries.
        let revocations = Arc::new(Revocations::new(
            db::build_pool(&config.database_url, 2, limits, QueryCounter::default())?,
            config.revocation_refresh,
            config.token_policy.revocation_horizon(),
        ));
        let events = EventBus::default();
        let listener = Listener::spawn(
            ListenerConfig {
                retention: config.event_retention,
                ..ListenerConfig::new(&config.database_url)
            },
            events.clone(),
        );
        // Webhooks and the stream have connections of their own: a slow receiver or broker
        // never holds one a money movement needs.
        let delivery_pool = match config.webhooks.is_some() || config.stream.is_some() {
            true => Some(db::build_pool(
                &config.database_url,
                4,
                limits,
                QueryCounter::default(),
            )?),
            false => None,
        };
        let stream_status = config
            .stream
            .as_ref()
            .map(|_| Arc::new(StreamStatus::default()));
        // Subscriptions opened from now on see every event committed from now on.
        if !listener.wait_listening(Duration::from_secs(10)).await {
            tracing::warn!("the event listener is not connected yet; subscriptions wait for it");
        }
        let state = AppState {
            // A quarter of the pool for batches in flight; the rest serves everything else.
            committer: Committer::spawn(
                pool.clone(),
                currencies.clone(),
                (config.pool_size / 4).clamp(1, 8),
            ),
            request_timeout: config.request_timeout,
            chain_wakeup: Arc::new(Notify::new()),
            pool,
            reads,
            currencies,
            queries,
            events,
            custody,
            simulator,
            chains,
            revocations,
            holds: config.holds,
            located_holds: Arc::default(),
            webhook_targets: config.webhook_targets,
            stream: stream_status.clone(),
            replicas,
        };
        let webhook_dispatcher = match (&delivery_pool, &config.webhooks) {
            (Some(pool), Some(webhooks)) => Some(Arc::new(spawn_dispatcher(
                pool.clone(),
                state.events.clone(),
                webhooks.clone(),
            ))),
            _ => None,
        };
        let stream_publisher = match (&delivery_pool, &config.stream, &stream_status) {
            (Some(pool), Some(stream), Some(status)) => Some(Arc::new(spawn_publisher(
                pool.clone(),
                state.events.clone(),
                stream.clone(),
                status.clone(),
            ))),
            _ => None,
        };
        let miner = match (&state.simulator, config.block_interval) {
            (Some(simulator), Some(interval)) => {
                // Only the networks the simulator serves.
                let mined: Vec<String> = state
                    .chains
                    .names()
                    .filter(|n| state.chains.is_simulated(n))
                    .map(str::to_owned)
                    .collect();
                Some(Arc::new(spawn_miner(simulator.clone(), mined, interval)))
            }
            _ => None,
        };
        let reconciler = match (state.chains.is_empty(), config.reconcile_interval) {
            (false, Some(interval)) => Some(Arc::new(spawn_reconciler(state.clone(), interval))),
            _ => None,
        };
        let hold_expirer = config
            .hold_expiry_poll
            .map(|interval| Arc::new(spawn_hold_expirer(state.pool.clone(), interval)));
        let chain_worker = match (App::worker_of(&state), config.chain_poll) {
            (Some(worker), Some(interval)) => {
                Some(Arc::new(worker.spawn(interval, state.chain_wakeup.clone())))
            }
            _ => None,
        };
        let schema = graphql::build_schema(
            state.clone(),
            config.limits,
            Some(config.rates),
            config.graphiql,
        );
        let previous: Vec<&[u8]> = config
            .jwt_previous_secrets
            .iter()
            .map(|s| s.expose_secret().as_bytes())
            .collect();
        let tokens = TokenKeys::with_keys(
            config.jwt_secret.expose_secret().as_bytes(),
            &previous,
            config.token_policy.clone(),
        );
        Ok(App(Arc::new(Service {
            state,
            schema,
            tokens,
            request_timeout: config.request_timeout,
            limits: config.limits,
            http: config.http,
            ws: config.ws,
            ws_slots: Arc::new(WsSlots::new(config.ws)),
            readiness: Arc::default(),
            in_flight: Arc::new(Semaphore::new(config.http.max_in_flight.max(1))),
            graphiql: config.graphiql,
            metrics: config.metrics.clone(),
            listener: Arc::new(listener),
            miner,
            reconciler,
            chain_worker,
            hold_expirer,
            webhook_dispatcher,
            stream_publisher,
            node_supervisor,
        })))
    }

    /// The caller an Authorization header value names: a token that verifies
    /// ([`TokenKeys::verify_header`]) and whose subject's tokens were not revoked since.
    pub async fn authenticate(&self, header: &str) -> Result<Verified, TokenError> {
        let verified = self.tokens.verify_header(header)?;
        self.state
            .revocations
            .check(&verified.viewer.user_id, verified.issued_at)
            .await?;
        Ok(verified)
    }

    /// A chain worker over this app's chain (none without one).
    pub fn worker_of(state: &AppState) -> Option<ChainWorker> {
        if state.chains.is_empty() {
            return None;
        }
        Some(ChainWorker {
            pool: state.pool.clone(),
            currencies: state.currencies.clone(),
            chain: Arc::new(state.chains.clone()),
            custody: state.custody.clone(),
        })
    }

    /// This app's chain worker, for running a pass by hand (tests, tools).
    pub fn chain_worker(&self) -> Option<ChainWorker> {
        App::worker_of(&self.state)
    }
}

/// Claims `network`'s chain history for the simulator ([`backends::claim`]).
async fn claim_for_simulator(
    conn: &mut crate::db::PooledConn,
    network: &str,
) -> anyhow::Result<()> {
    let legacy = match backends::claimed(conn, network).await? {
        Some(_) => backends::Legacy::NotMine,
        None => backends::simulator_legacy(conn, network).await?,
    };
    backends::claim(conn, network, backends::SIMULATOR, legacy)
        .await
        .map_err(|e| anyhow::anyhow!("{network}: {e}"))
}

/// How long the start waits for the node to answer before starting without it.
const NODE_WAIT_AT_START: Duration = Duration::from_secs(10);

/// Connects to the node once before serving. A node that answers but is not what the
/// configuration says refuses the start (nothing is registered from a wrong
/// configuration); one that does not answer leaves its network unavailable while the
/// rest of the service starts, and the supervisor keeps trying.
async fn connect_at_start(node: &EthereumNode) -> anyhow::Result<()> {
    let unreachable = match tokio::time::timeout(NODE_WAIT_AT_START, node.connect()).await {
        Ok(Ok(chain_id)) => {
            tracing::info!(chain_id, "ethereum served by a JSON-RPC node, verified");
            return Ok(());
        }
        Ok(Err(ConnectError::Refused(why))) => {
            anyhow::bail!("the ethereum node is refused: {why}")
        }
        Ok(Err(ConnectError::Unreachable(why))) => why,
        Err(_) => format!("no answer within {NODE_WAIT_AT_START:?}"),
    };
    tracing::warn!(
        error = %unreachable,
        "the ethereum node is unreachable at start: serving without it (ethereum is \
         unavailable) and connecting in the background"
    );
    Ok(())
}

/// The simulated chain's block timer. Every process runs it; the conditional update in
/// [`SimulatedChain::mine_if_due`] mines one block per interval between them.
fn spawn_miner(
    chain: SimulatedChain,
    networks: Vec<String>,
    interval: Duration,
) -> AbortOnDrop<()> {
    AbortOnDrop::spawn(async move {
        let mut tick = tokio::time::interval(interval / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            for network in &networks {
                match chain.mine_if_due(network, interval).await {
                    Ok(Some(height)) => tracing::debug!(network, height, "mined a block"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(network, error = %e, "could not mine"),
                }
            }
        }
    })
}

/// The hold expiry worker: every process runs one, and each hold expires once (see
/// [`hold::expire_due`]). A pass takes up to a few hundred holds; a full pass runs the next
/// one at once.
fn spawn_hold_expirer(pool: PgPool, interval: Duration) -> AbortOnDrop<()> {
    const PASS: i64 = 256;
    AbortOnDrop::spawn(async move {
        loop {
            let expired = match pool.get().await {
                Ok(mut conn) => match hold::expire_due(&mut conn, PASS).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = ?e, "hold expiry pass failed");
                        0
                    }
                },
                Err(_) => 0,
            };
            if (expired as i64) < PASS {
                tokio::time::sleep(interval).await;
            }
        }
    })
}

/// The scheduled chain reconciliation. Every process runs the timer; [`claim_job`] lets
/// one of them do each interval's run.
///
/// [`claim_job`]: crate::chain::reconciliation::claim_job
fn spawn_reconciler(state: AppState, interval: Duration) -> AbortOnDrop<()> {
    use crate::chain::reconciliation::{claim_job, reconcile_all_crypto};
    AbortOnDrop::spawn(async move {
        let mut tick = tokio::time::interval((interval / 4).max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Ok(mut conn) = state.pool.get().await else {
                continue;
            };
            match claim_job(&mut conn, "chain_reconciliation", interval).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = ?e, "could not claim the reconciliation job");
                    continue;
                }
            }
            drop(conn);
            match reconcile_all_crypto(&state.pool, &state.currencies, &state.chains).await {
                Ok(run) => tracing::info!(
                    reconciled = run.reconciled,
                    mismatched = run.mismatched,
                    failed = run.failed,
                    "scheduled chain reconciliation"
                ),
                Err(e) => tracing::warn!(error = ?e, "scheduled chain reconciliation failed"),
            }
        }
    })
}
