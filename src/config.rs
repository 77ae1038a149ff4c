//! Runtime configuration from the environment and flags. The variables' names are fixed:
//! deployments and scripts rely on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::{TokenPolicy, parse_ttl};
use crate::custody::{Custody, CustodyError, SeedSource};
use crate::db::SessionLimits;
use crate::graphql::Limits;
use crate::graphql::document::DocumentLimits;
use crate::limits::{HttpLimits, RateLimits, WsLimits};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/wallet";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

/// Settings shared by every subcommand that talks to the database.
#[derive(Clone, Debug, Args)]
pub struct DatabaseConfig {
    /// Postgres URL; the database is created if it does not exist. Unset: the server at
    /// WALLET_DEFAULT_DATABASE_URL if one answers there, else the service's own cluster
    /// (development only).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// The server tried when DATABASE_URL is unset.
    #[arg(long, env = "WALLET_DEFAULT_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub default_database_url: String,
    /// Where the service keeps its own PostgreSQL cluster (default: ~/.local/share/wallet;
    /// /var/lib/wallet for root).
    #[arg(long, env = "WALLET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The directory holding PostgreSQL's initdb and pg_ctl for the service's own cluster
    /// (default: found on PATH or where packages install them).
    #[arg(long, env = "WALLET_POSTGRES_BIN")]
    pub postgres_bin: Option<PathBuf>,
    /// Connections for money movements (the group committer, mutations, the chain worker).
    #[arg(long, env = "WALLET_DB_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// Connections for queries and subscriptions, apart from the movements' so that no
    /// query load can delay a deposit.
    #[arg(long, env = "WALLET_DB_READ_POOL_SIZE", default_value_t = 8)]
    pub read_pool_size: usize,
    /// Milliseconds a statement waits for a row lock (a busy wallet) before the request
    /// is refused with nothing done; at most a quarter of the request timeout.
    #[arg(long, env = "WALLET_DB_LOCK_TIMEOUT_MS", default_value_t = 5_000)]
    pub lock_timeout_ms: u64,
    /// Milliseconds one statement may run.
    #[arg(long, env = "WALLET_DB_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub statement_timeout_ms: u64,
    /// Milliseconds a session may sit idle inside a transaction before Postgres ends it
    /// (and releases its locks).
    #[arg(
        long,
        env = "WALLET_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub idle_in_transaction_timeout_ms: u64,
    /// Replicas (streaming standbys) that serve queries: one URL naming one or several
    /// hosts, e.g. `postgres://u@10.0.0.2,10.0.0.3/wallet?target_session_attrs=prefer-standby`.
    /// Unset: every query reads from the primary.
    #[arg(long, env = "WALLET_DATABASE_READ_URL")]
    pub read_url: Option<String>,
    /// Milliseconds a replica may lag the primary and still serve queries.
    #[arg(long, env = "WALLET_READ_REPLICA_MAX_LAG_MS", default_value_t = 1_000)]
    pub replica_max_lag_ms: u64,
    /// Milliseconds a query presenting a consistency token waits for a replica to have
    /// replayed it before the primary serves it.
    #[arg(long, env = "WALLET_READ_CONSISTENCY_WAIT_MS", default_value_t = 500)]
    pub consistency_wait_ms: u64,
}

impl DatabaseConfig {
    /// The replicas queries are served from, when `WALLET_DATABASE_READ_URL` is set.
    pub fn replica_config(&self) -> Option<crate::replicas::ReplicaConfig> {
        self.read_url
            .as_ref()
            .map(|url| crate::replicas::ReplicaConfig {
                url: url.clone(),
                max_lag: Duration::from_millis(self.replica_max_lag_ms),
                token_wait: Duration::from_millis(self.consistency_wait_ms),
            })
    }
}

/// The database a command uses, and the service's own cluster when that is it (stopped
/// when this is dropped, if this process started it).
pub struct Database {
    pub url: String,
    pub cluster: Option<crate::local_postgres::LocalCluster>,
}

impl DatabaseConfig {
    /// DATABASE_URL when set; else the server at the default address when one answers
    /// there; else the service's own cluster, started (and made, the first time) now.
    pub async fn resolve(&self) -> anyhow::Result<Database> {
        use crate::local_postgres::{self, LocalCluster};
        if let Some(url) = &self.database_url {
            return Ok(Database {
                url: url.clone(),
                cluster: None,
            });
        }
        let default = self.default_database_url.clone();
        let address = crate::db::server_address(&default)
            .context("WALLET_DEFAULT_DATABASE_URL is not a PostgreSQL URL")?;
        let (dir, bin) = (self.data_dir.clone(), self.postgres_bin.clone());
        tokio::task::spawn_blocking(move || {
            if address.is_some_and(local_postgres::answers) {
                return Ok(Database {
                    url: default,
                    cluster: None,
                });
            }
            let dir = match dir {
                Some(dir) => dir,
                None => local_postgres::default_data_dir()?,
            };
            let cluster = LocalCluster::start(&dir, bin.as_deref())?;
            Ok(Database {
                url: cluster.url(),
                cluster: Some(cluster),
            })
        })
        .await?
    }

    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            lock_timeout: Duration::from_millis(self.lock_timeout_ms),
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            idle_in_transaction_timeout: Duration::from_millis(self.idle_in_transaction_timeout_ms),
        }
    }
}

/// Settings of the HTTP server. Secrets are not among them: they come from the
/// environment or from files (never from flags, which any local user can read in `ps`).
#[derive(Clone, Debug, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// Address and port to listen on.
    #[arg(long, env = "WALLET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub custody: CustodyConfig,
    #[command(flatten)]
    pub graphql: GraphqlConfig,
    #[command(flatten)]
    pub abuse: AbuseConfig,
    /// Per-request timeout in seconds.
    #[arg(long, env = "WALLET_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Milliseconds between reloads of token revocations: a revocation made through
    /// another process is enforced here within this time (100 to 60000).
    #[arg(long, env = "WALLET_TOKEN_REVOCATION_REFRESH_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub token_revocation_refresh_ms: u64,
    /// Run the simulated bitcoin and ethereum networks (default: on under development rules;
    /// refused under production rules).
    #[arg(long, env = "WALLET_SIMULATED_CHAIN")]
    pub simulated_chain: Option<bool>,
    /// JSON-RPC endpoint of an Ethereum node: the `ethereum` network is then served by
    /// that node instead of the simulator. `https://` (plain `http://` only to a node on
    /// this machine, e.g. anvil's `http://127.0.0.1:8545`). It may hold credentials: it
    /// is never printed unredacted.
    #[arg(long, env = "WALLET_ETHEREUM_RPC_URL", hide_env_values = true,
          value_parser = parse_node_url)]
    pub ethereum_rpc_url: Option<crate::chain::rpc::NodeUrl>,
    /// A PEM file of the certificate authorities the node's TLS certificate must chain to
    /// (only those are then trusted): for a node with a private or self-signed
    /// certificate.
    #[arg(long, env = "WALLET_ETHEREUM_CA_FILE")]
    pub ethereum_ca_file: Option<PathBuf>,
    /// The chain id the Ethereum node must report (required in production); checked at
    /// every connection, every minute, and before each pass of the chain worker.
    #[arg(long, env = "WALLET_ETHEREUM_CHAIN_ID")]
    pub ethereum_chain_id: Option<u64>,
    /// ERC-20 tokens offered as currencies, with the node: `CODE:0xCONTRACT:DECIMALS`,
    /// comma-separated (e.g. `USDC:0xA0b8…eB48:6`).
    #[arg(long, env = "WALLET_ETHEREUM_TOKENS", value_parser = parse_tokens)]
    pub ethereum_tokens: Option<EthereumTokens>,
    /// Blocks a withdrawal sent through the Ethereum node may wait unmined before it is
    /// replaced with the same nonce and a higher fee.
    #[arg(long, env = "WALLET_ETHEREUM_REPLACE_AFTER_BLOCKS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ethereum_replace_after_blocks: u64,
    /// The most the service offers per gas for any Ethereum transaction, in gwei (a
    /// withdrawal waits while the network's base fee is above it; a replacement never
    /// goes beyond it).
    #[arg(long = "ethereum-max-fee-per-gas-gwei", env = "WALLET_ETHEREUM_MAX_FEE_PER_GAS_GWEI",
          default_value = "500", value_parser = crate::chain::ethereum::parse_gwei)]
    pub ethereum_max_fee_per_gas_wei: u128,
    /// Seconds between blocks of the simulated networks (0: only on demand).
    #[arg(long, env = "WALLET_BLOCK_SECS", default_value_t = 10)]
    pub block_secs: u64,
    /// Seconds between scheduled reconciliations of every crypto wallet against the chain
    /// (0: never).
    #[arg(long, env = "WALLET_RECONCILE_SECS", default_value_t = 3600)]
    pub reconcile_secs: u64,
    /// Milliseconds between passes of the chain worker: signs and broadcasts
    /// withdrawals, follows them and incoming deposits on chain (0: never).
    #[arg(long, env = "WALLET_CHAIN_POLL_MS", default_value_t = 1000)]
    pub chain_poll_ms: u64,
    /// Seconds a hold lasts when `authorizeHold` gives no `expiresAt` (default 7 days).
    #[arg(long, env = "WALLET_HOLD_DEFAULT_EXPIRY_SECS", default_value_t = 7 * 24 * 3600)]
    pub hold_default_expiry_secs: u32,
    /// The longest a hold may last: a later `expiresAt` is refused (default 30 days).
    #[arg(long, env = "WALLET_HOLD_MAX_EXPIRY_SECS", default_value_t = 30 * 24 * 3600)]
    pub hold_max_expiry_secs: u32,
    /// Milliseconds between passes of the hold expiry worker, which releases holds past
    /// their `expiresAt` (every process runs one; each hold expires once). 0: never.
    #[arg(long, env = "WALLET_HOLD_EXPIRY_POLL_MS", default_value_t = 1000)]
    pub hold_expiry_poll_ms: u64,
    /// Days events are kept: the feed (`events`) can be resumed from any position this
    /// recent; older positions get `CURSOR_EXPIRED`.
    #[arg(long, env = "WALLET_EVENT_RETENTION_DAYS", default_value_t = 30)]
    pub event_retention_days: u32,
    /// Send webhooks from this process (every process may: endpoints are shared out).
    #[arg(long, env = "WALLET_WEBHOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhooks: bool,
    /// Let webhook endpoints be loopback, private or link-local addresses, and plain
    /// http (default: allowed under development rules, refused under production rules).
    #[arg(long, env = "WALLET_WEBHOOK_ALLOW_PRIVATE_TARGETS")]
    pub webhook_allow_private_targets: Option<bool>,
    /// Milliseconds a webhook attempt may take before it counts as failed.
    #[arg(long, env = "WALLET_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// Milliseconds before the first retry of a failed delivery; each next retry waits
    /// twice as long (up to WALLET_WEBHOOK_RETRY_MAX_MS), plus up to a quarter at random.
    #[arg(long, env = "WALLET_WEBHOOK_RETRY_BASE_MS", default_value_t = 5_000)]
    pub webhook_retry_base_ms: u64,
    #[arg(long, env = "WALLET_WEBHOOK_RETRY_MAX_MS", default_value_t = 3_600_000)]
    pub webhook_retry_max_ms: u64,
    /// Seconds an endpoint may keep failing before it is disabled (default one day).
    #[arg(
        long,
        env = "WALLET_WEBHOOK_DISABLE_AFTER_SECS",
        default_value_t = 86_400
    )]
    pub webhook_disable_after_secs: u64,
    /// Milliseconds a process's claim on an endpoint lasts unless renewed: how soon
    /// another process takes over when one dies.
    #[arg(long, env = "WALLET_WEBHOOK_LEASE_MS", default_value_t = 30_000)]
    pub webhook_lease_ms: u64,
    /// Publish every event to this NATS server's JetStream (`nats://host:4222`), subject
    /// `wallet.events.<TYPE>`.
    #[arg(long, env = "WALLET_NATS_URL")]
    pub nats_url: Option<String>,
    /// The JetStream stream events are published to (created if missing).
    #[arg(long, env = "WALLET_NATS_STREAM", default_value = "WALLET_EVENTS")]
    pub nats_stream: String,
    /// Serve GraphiQL on `/` and the example web client on `/examples/web-client/`, and
    /// answer introspection queries (default: on under development rules, off under
    /// production rules).
    #[arg(long, env = "WALLET_GRAPHIQL")]
    pub graphiql: Option<bool>,
    /// A separate address serving only `/metrics` (e.g. a private interface for
    /// Prometheus). Without it, `/metrics` is on `WALLET_LISTEN` when that is a loopback
    /// address or when `WALLET_METRICS_TOKEN` is set (then required as a bearer token).
    #[arg(long, env = "WALLET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Flat withdrawal fees per currency, credited to fee revenue, e.g. `USD=0.50,BTC=0.0001`.
    /// Fiat: charged on top of the amount. Crypto: charged instead of the network's fee,
    /// which the service then pays — so a network coin's fee must be at least the most
    /// its network may charge (checked at start). Without one, fiat withdrawals are free
    /// and crypto withdrawals pay the network's fee.
    #[arg(long, env = "WALLET_WITHDRAWAL_FEES", value_parser = parse_fees, default_value = "")]
    pub withdrawal_fees: WithdrawalFees,
}

/// Flat withdrawal fees by currency code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WithdrawalFees(pub std::collections::BTreeMap<String, rust_decimal::Decimal>);

/// `WALLET_ETHEREUM_TOKENS`, parsed.
#[derive(Clone, Debug, Default)]
pub struct EthereumTokens(pub Vec<crate::chain::ethereum::Token>);

/// Never fails: a URL is checked by [`ServeConfig::check`], whose messages show it
/// redacted (clap's would show it whole).
fn parse_node_url(text: &str) -> Result<crate::chain::rpc::NodeUrl, String> {
    Ok(crate::chain::rpc::NodeUrl::new(text))
}

fn parse_tokens(text: &str) -> Result<EthereumTokens, String> {
    crate::chain::ethereum::parse_tokens(text).map(EthereumTokens)
}

/// `CODE=AMOUNT` pairs separated by commas (empty: none).
fn parse_fees(text: &str) -> Result<WithdrawalFees, String> {
    let mut fees = std::collections::BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (code, amount) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not CODE=AMOUNT"))?;
        let amount = crate::ledger::money::parse_decimal(amount.trim())
            .map_err(|e| format!("the fee of {}: {e}", code.trim()))?;
        if fees.insert(code.trim().to_owned(), amount).is_some() {
            return Err(format!("{} has two fees", code.trim()));
        }
    }
    Ok(WithdrawalFees(fees))
}

/// Limits of the GraphQL executor.
#[derive(Clone, Debug, Args)]
pub struct GraphqlConfig {
    /// Maximum depth of a GraphQL query.
    #[arg(long, env = "WALLET_MAX_QUERY_DEPTH", default_value_t = 16)]
    pub max_depth: usize,
    /// Maximum complexity of a GraphQL query (a connection costs its page size times its
    /// selection).
    #[arg(long, env = "WALLET_MAX_QUERY_COMPLEXITY", default_value_t = 5000)]
    pub max_complexity: usize,
    /// Maximum root fields (aliases included) of one operation.
    #[arg(long, env = "WALLET_MAX_ROOT_FIELDS", default_value_t = 20)]
    pub max_root_fields: usize,
    /// Maximum fields selected by one operation, counted in the document (fragments
    /// expanded where they are spread).
    #[arg(long, env = "WALLET_MAX_FIELDS", default_value_t = 500)]
    pub max_fields: usize,
    /// Maximum directives on one field.
    #[arg(long, env = "WALLET_MAX_DIRECTIVES", default_value_t = 4)]
    pub max_directives: usize,
    /// Database connections one request may hold at once, whatever its shape.
    #[arg(long, env = "WALLET_REQUEST_DB_CONNECTIONS", default_value_t = 2)]
    pub request_connections: usize,
    /// Bytes of one GraphQL document (the query text; variables are bounded by the body).
    #[arg(long, env = "WALLET_MAX_DOCUMENT_BYTES", default_value_t = 64 * 1024)]
    pub max_document_bytes: usize,
    /// Nesting of `{`, `[` and `(` together in a document, checked before it is parsed
    /// (at most 128, what the parser is proven to survive).
    #[arg(long, env = "WALLET_MAX_DOCUMENT_NESTING", default_value_t = 64)]
    pub max_document_nesting: usize,
    /// Tokens of one document.
    #[arg(long, env = "WALLET_MAX_DOCUMENT_TOKENS", default_value_t = 4_000)]
    pub max_document_tokens: usize,
    /// Fragment definitions of one document.
    #[arg(long, env = "WALLET_MAX_FRAGMENTS", default_value_t = 256)]
    pub max_fragments: usize,
    /// Fragment spreads and inline fragments of one document, as written.
    #[arg(long, env = "WALLET_MAX_FRAGMENT_SPREADS", default_value_t = 1024)]
    pub max_fragment_spreads: usize,
    /// Selections of one document once every fragment spread is expanded.
    #[arg(long, env = "WALLET_MAX_EXPANDED_SELECTIONS", default_value_t = 5000)]
    pub max_expanded_selections: usize,
}

impl GraphqlConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_depth: self.max_depth,
            max_complexity: self.max_complexity,
            max_root_fields: self.max_root_fields,
            max_fields: self.max_fields,
            max_directives: self.max_directives,
            request_connections: self.request_connections.max(1),
            document: DocumentLimits {
                max_bytes: self.max_document_bytes,
                max_nesting: self.max_document_nesting,
                max_tokens: self.max_document_tokens,
                max_fragments: self.max_fragments,
                max_spreads: self.max_fragment_spreads,
                max_expanded: self.max_expanded_selections,
            },
        }
    }
}

/// Limits on connections and request rates.
#[derive(Clone, Debug, Args)]
pub struct AbuseConfig {
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open between requests.
    #[arg(long, env = "WALLET_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds from accepting a connection to its first complete request head, whatever
    /// the protocol; a connection that sends nothing (or only an HTTP/2 preface) is closed.
    #[arg(
        long,
        env = "WALLET_HTTP_FIRST_REQUEST_TIMEOUT_SECS",
        default_value_t = 5
    )]
    pub first_request_timeout_secs: u64,
    /// Open connections (HTTP and websocket) the server accepts at once; more are answered
    /// 503 and closed.
    #[arg(long, env = "WALLET_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64); more are answered 503
    /// and closed. Behind a reverse proxy every client has the proxy's address: raise it
    /// to `WALLET_HTTP_MAX_CONNECTIONS` there and cap clients at the proxy.
    #[arg(long, env = "WALLET_HTTP_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: usize,
    /// GraphQL requests over HTTP executing at once (counted once their body has
    /// arrived); more are answered 503 with `Retry-After` and `RATE_LIMITED`.
    #[arg(long, env = "WALLET_HTTP_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Concurrent subscriptions one websocket connection may hold.
    #[arg(long, env = "WALLET_WS_MAX_SUBSCRIPTIONS", default_value_t = 32)]
    pub ws_max_subscriptions: usize,
    /// Concurrent subscriptions one user may hold over all their websockets.
    #[arg(
        long,
        env = "WALLET_WS_MAX_SUBSCRIPTIONS_PER_USER",
        default_value_t = 64
    )]
    pub ws_max_subscriptions_per_user: usize,
    /// Websocket connections open at once, in total.
    #[arg(long, env = "WALLET_WS_MAX_CONNECTIONS", default_value_t = 512)]
    pub ws_max_connections: usize,
    /// Websocket connections open at once that have not completed `connection_init`
    /// (within the total); more get 503 before the upgrade.
    #[arg(long, env = "WALLET_WS_MAX_UNAUTHENTICATED", default_value_t = 64)]
    pub ws_max_unauthenticated: usize,
    /// Websocket connections one user may have open at once.
    #[arg(long, env = "WALLET_WS_MAX_PER_USER", default_value_t = 8)]
    pub ws_max_per_user: usize,
    /// Seconds a websocket client has to send `connection_init`.
    #[arg(long, env = "WALLET_WS_INIT_TIMEOUT_SECS", default_value_t = 10)]
    pub ws_init_timeout_secs: u64,
    /// Seconds a websocket peer has to answer a ping before the connection is closed.
    #[arg(long, env = "WALLET_WS_PONG_TIMEOUT_SECS", default_value_t = 30)]
    pub ws_pong_timeout_secs: u64,
    /// Seconds one write to a websocket peer may take; a peer that does not read is
    /// disconnected after it.
    #[arg(long, env = "WALLET_WS_SEND_TIMEOUT_SECS", default_value_t = 10)]
    pub ws_send_timeout_secs: u64,
    /// Mutations per second a user may send (sustained; 0: no limit).
    #[arg(long, env = "WALLET_RATE_LIMIT_PER_SEC", default_value_t = 10)]
    pub rate_per_sec: u32,
    /// Mutations a user may send in a burst above the sustained rate.
    #[arg(long, env = "WALLET_RATE_LIMIT_BURST", default_value_t = 50)]
    pub rate_burst: u32,
    /// Mutations per second one operator token subject may send, sustained (0: no
    /// limit). On by default, so that a leaked operator token cannot create money at the
    /// database's full speed.
    #[arg(
        long,
        env = "WALLET_OPERATOR_RATE_LIMIT_PER_SEC",
        default_value_t = 100
    )]
    pub operator_rate_per_sec: u32,
    /// Mutations an operator may send in a burst above the sustained rate (the back
    /// office batches deposits).
    #[arg(long, env = "WALLET_OPERATOR_RATE_LIMIT_BURST", default_value_t = 500)]
    pub operator_rate_burst: u32,
    /// Cost of queries and subscriptions a user may spend per second (an operation's cost
    /// is its complexity; 0: no limit). Anonymous callers share one budget of this size.
    #[arg(long, env = "WALLET_QUERY_COST_PER_SEC", default_value_t = 10_000)]
    pub query_cost_per_sec: u32,
    /// Query cost a user may spend at once above the sustained rate.
    #[arg(long, env = "WALLET_QUERY_COST_BURST", default_value_t = 50_000)]
    pub query_cost_burst: u32,
    /// Query cost per second of an operator (0: no limit; the burst is ten seconds' worth).
    #[arg(
        long,
        env = "WALLET_OPERATOR_QUERY_COST_PER_SEC",
        default_value_t = 100_000
    )]
    pub operator_query_cost_per_sec: u32,
}

impl AbuseConfig {
    pub fn http(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
            first_request_timeout: Duration::from_secs(self.first_request_timeout_secs.max(1)),
            max_connections: self.max_connections.max(1),
            max_connections_per_ip: self.max_connections_per_ip.max(1),
            max_in_flight: self.max_in_flight.max(1),
        }
    }

    pub fn ws(&self) -> WsLimits {
        WsLimits {
            max_subscriptions: self.ws_max_subscriptions,
            max_subscriptions_per_user: self.ws_max_subscriptions_per_user,
            max_connections: self.ws_max_connections,
            max_unauthenticated: self.ws_max_unauthenticated,
            max_per_user: self.ws_max_per_user,
            init_timeout: Duration::from_secs(self.ws_init_timeout_secs.max(1)),
            pong_timeout: Duration::from_secs(self.ws_pong_timeout_secs.max(1)),
            send_timeout: Duration::from_secs(self.ws_send_timeout_secs.max(1)),
        }
    }

    pub fn rates(&self) -> RateLimits {
        RateLimits {
            user_per_sec: self.rate_per_sec,
            user_burst: self.rate_burst,
            operator_per_sec: self.operator_rate_per_sec,
            operator_burst: self.operator_rate_burst,
            user_query_cost_per_sec: self.query_cost_per_sec,
            user_query_cost_burst: self.query_cost_burst,
            operator_query_cost_per_sec: self.operator_query_cost_per_sec,
        }
    }
}

/// What the server starts with once its configuration has been checked.
#[derive(Debug)]
pub struct Startup {
    /// The rules it runs under.
    pub rules: Rules,
    pub jwt_secret: SecretString,
    /// Earlier secrets that still verify tokens.
    pub jwt_previous_secrets: Vec<SecretString>,
    /// The development secret file, when no secret is configured and that one (generated
    /// at first start) signs: only then are demo tokens printed.
    pub development_secret: Option<PathBuf>,
    pub token_policy: TokenPolicy,
    pub seed: SeedSource,
    /// A development seed generated into [`dev_seed_file`] is in use.
    pub generated_seed: bool,
    pub simulated_chain: bool,
    pub graphiql: bool,
    /// Bearer token `/metrics` requires on the main listener.
    pub metrics_token: Option<SecretString>,
}

impl ServeConfig {
    /// The Ethereum node to use, when one is configured.
    pub fn ethereum(&self) -> Option<crate::chain::ethereum::NodeConfig> {
        let rpc_url = self.ethereum_rpc_url.as_ref()?;
        (!rpc_url.is_empty()).then(|| crate::chain::ethereum::NodeConfig {
            rpc_url: rpc_url.clone(),
            ca_file: self.ethereum_ca_file.clone(),
            chain_id: self.ethereum_chain_id,
            max_fee_per_gas: self.ethereum_max_fee_per_gas_wei,
            tokens: self
                .ethereum_tokens
                .clone()
                .map(|t| t.0)
                .unwrap_or_default(),
            replace_after_blocks: self.ethereum_replace_after_blocks,
        })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// How often revocations are reloaded (`WALLET_TOKEN_REVOCATION_REFRESH_MS`).
    /// How long holds last.
    pub fn hold_policy(&self) -> anyhow::Result<crate::ledger::hold::HoldPolicy> {
        let default_expiry = chrono::Duration::seconds(i64::from(self.hold_default_expiry_secs));
        let max_expiry = chrono::Duration::seconds(i64::from(self.hold_max_expiry_secs));
        if self.hold_default_expiry_secs == 0 || default_expiry > max_expiry {
            anyhow::bail!(
                "WALLET_HOLD_DEFAULT_EXPIRY_SECS must be more than 0 and at most \
                 WALLET_HOLD_MAX_EXPIRY_SECS"
            );
        }
        Ok(crate::ledger::hold::HoldPolicy {
            default_expiry,
            max_expiry,
        })
    }

    /// How webhook URLs are checked: production refuses plain http, and private targets
    /// unless WALLET_WEBHOOK_ALLOW_PRIVATE_TARGETS allows them.
    pub fn webhook_targets(&self, rules: Rules) -> crate::events::webhook::TargetPolicy {
        let production = rules.production();
        let allow_private = self.webhook_allow_private_targets.unwrap_or(!production);
        crate::events::webhook::TargetPolicy {
            require_https: production && !allow_private,
            allow_private,
        }
    }

    /// How webhooks are sent (`None`: not by this process).
    pub fn webhook_config(&self, rules: Rules) -> Option<crate::events::webhook::WebhookConfig> {
        self.webhooks
            .then(|| crate::events::webhook::WebhookConfig {
                policy: self.webhook_targets(rules),
                timeout: Duration::from_millis(self.webhook_timeout_ms.max(1)),
                retry_base: Duration::from_millis(self.webhook_retry_base_ms.max(1)),
                retry_max: Duration::from_millis(self.webhook_retry_max_ms.max(1)),
                disable_after: Duration::from_secs(self.webhook_disable_after_secs),
                lease: Duration::from_millis(self.webhook_lease_ms.max(1000)),
                ..Default::default()
            })
    }

    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.event_retention_days.max(1)) * 24 * 3600)
    }

    pub fn stream_config(&self) -> Option<crate::events::stream::StreamConfig> {
        self.nats_url
            .as_ref()
            .map(|url| crate::events::stream::StreamConfig {
                stream: self.nats_stream.clone(),
                ..crate::events::stream::StreamConfig::new(url)
            })
    }

    pub fn revocation_refresh(&self) -> Duration {
        Duration::from_millis(self.token_revocation_refresh_ms)
    }

    /// Checks the configuration and resolves its secrets. Development defaults (a
    /// generated secret and seed, the simulator, GraphiQL) apply on a loopback listener
    /// only; production — or any other listener — refuses every unsafe setting. Every
    /// problem is reported at once, one line each, naming the variable or file it comes
    /// from and saying what to set.
    pub fn check(&self) -> anyhow::Result<Startup> {
        let rules = self.auth.rules(self.listen);
        let production = rules.production();
        let mut refusals: Vec<String> = Vec::new();
        let secrets = self
            .auth
            .resolve_secrets(rules)
            .map_err(|problems| refusals.extend(problems))
            .ok();
        let token_policy = self
            .auth
            .token_policy(rules)
            .map_err(|problems| refusals.extend(problems))
            .ok();
        let seed = match self.custody.resolve(rules) {
            Ok((seed, generated)) => match Custody::load(&seed) {
                Ok(_) => Some((seed, generated)),
                Err(e) => {
                    refusals.push(seed_problem(&seed, generated, e));
                    None
                }
            },
            Err(e) => {
                refusals.push(format!("{e:#}"));
                None
            }
        };
        if production && self.db.database_url.is_none() {
            refusals.push(format!(
                "DATABASE_URL is not set ({}): production names its database server; the \
                 service's own PostgreSQL cluster is for development",
                rules.why()
            ));
        }
        let simulated_chain = self.simulated_chain.unwrap_or(!production);
        if production && simulated_chain {
            refusals.push(format!(
                "WALLET_SIMULATED_CHAIN=true: a simulated chain cannot run in production \
                 (anyone who can mine can mint deposits; {}): unset it",
                rules.why()
            ));
        }
        if let Some(node) = self.ethereum() {
            if production && node.chain_id.is_none() {
                refusals.push(
                    "WALLET_ETHEREUM_CHAIN_ID is required when WALLET_ENV=production with \
                     WALLET_ETHEREUM_RPC_URL: the node is verified, not trusted (1 for \
                     Ethereum mainnet, 11155111 for Sepolia)"
                        .into(),
                );
            }
            match node.endpoint() {
                Ok(endpoint) => refusals.extend(endpoint.client().err()),
                Err(refusal) => refusals.push(refusal),
            }
        } else if self.ethereum_ca_file.is_some() {
            refusals.push("WALLET_ETHEREUM_CA_FILE is set without WALLET_ETHEREUM_RPC_URL".into());
        }
        let metrics_token = match std::env::var("WALLET_METRICS_TOKEN") {
            Ok(token) if token.len() >= 16 => Some(SecretString::from(token)),
            Ok(token) if token.is_empty() => None,
            Ok(_) => {
                refusals.push(
                    "WALLET_METRICS_TOKEN must be at least 16 bytes (`openssl rand -hex 16`)"
                        .into(),
                );
                None
            }
            Err(_) => None,
        };
        let (Some(secrets), Some(token_policy), Some((seed, generated_seed)), true) =
            (secrets, token_policy, seed, refusals.is_empty())
        else {
            if let Rules::ProductionForPublicListener(listen) = rules {
                refusals.insert(
                    0,
                    format!(
                        "WALLET_LISTEN={listen} is not a loopback address, so production rules \
                         apply whatever WALLET_ENV says: fix what follows, or listen on \
                         127.0.0.1, or (a development container only) set \
                         WALLET_ALLOW_DEVELOPMENT_ON_PUBLIC_LISTENER=true"
                    ),
                );
            }
            anyhow::bail!(refusals.join("\n"));
        };
        match rules {
            Rules::DevelopmentOnPublicListener(listen) => tracing::warn!(
                "!!! DEVELOPMENT RULES ON A PUBLIC LISTENER ({listen}), because \
                 WALLET_ALLOW_DEVELOPMENT_ON_PUBLIC_LISTENER=true: no secret-strength check, \
                 simulated chains (anyone with an operator token mints deposits), GraphiQL \
                 and introspection, reachable from other machines. For a development \
                 container only: never with real money. !!!"
            ),
            Rules::ProductionForPublicListener(listen) => tracing::info!(
                %listen,
                "not a loopback address: production rules apply"
            ),
            Rules::Development | Rules::Production => {}
        }
        if self.auth.allow_development_on_public_listener == Some(true) && production {
            tracing::warn!(
                "WALLET_ALLOW_DEVELOPMENT_ON_PUBLIC_LISTENER is ignored: WALLET_ENV=production"
            );
        }
        if let Some(path) = &secrets.development_file {
            tracing::warn!(
                file = %path.display(),
                "no JWT secret configured: using a DEVELOPMENT secret generated into this \
                 file. Anyone who can read it can mint tokens for this server."
            );
        }
        Ok(Startup {
            rules,
            jwt_secret: secrets.current,
            jwt_previous_secrets: secrets.previous,
            development_secret: secrets.development_file,
            token_policy,
            seed,
            generated_seed,
            simulated_chain,
            graphiql: self.graphiql.unwrap_or(!production),
            metrics_token,
        })
    }
}

/// The line for a seed that does not load, naming where it came from.
fn seed_problem(seed: &SeedSource, generated: bool, error: CustodyError) -> String {
    let why = match error {
        CustodyError::SeedFile(_, why) => why,
        other => other.to_string(),
    };
    match seed {
        SeedSource::File(path) if generated => format!(
            "the development seed {}: {why} (delete it to have a new one generated)",
            path.display()
        ),
        SeedSource::File(path) => format!("WALLET_SEED_FILE {}: {why}", path.display()),
        SeedSource::Mnemonic(_) => format!("WALLET_SEED: {why}"),
        SeedSource::Generate => why,
    }
}

/// The rules a server runs under: development defaults only on a loopback listener (or by
/// an explicit opt-in), production rules everywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// `WALLET_ENV=production`.
    Production,
    /// Not production by `WALLET_ENV`, but listening on an address other machines reach.
    ProductionForPublicListener(SocketAddr),
    /// Development on a loopback listener.
    Development,
    /// Development on an address other machines reach, by
    /// `WALLET_ALLOW_DEVELOPMENT_ON_PUBLIC_LISTENER=true` (a development container).
    DevelopmentOnPublicListener(SocketAddr),
}

impl Rules {
    pub fn production(self) -> bool {
        matches!(
            self,
            Rules::Production | Rules::ProductionForPublicListener(_)
        )
    }

    /// Why these rules apply, for refusals.
    fn why(self) -> String {
        match self {
            Rules::Production => "WALLET_ENV=production".into(),
            Rules::ProductionForPublicListener(listen) => {
                format!("WALLET_LISTEN={listen} is not a loopback address")
            }
            Rules::Development | Rules::DevelopmentOnPublicListener(_) => "development".into(),
        }
    }
}

/// Where the custody seed (a BIP39 mnemonic) comes from: `WALLET_SEED` in the environment
/// (development and tests) or the file named by `WALLET_SEED_FILE`.
#[derive(Clone, Debug, Args)]
pub struct CustodyConfig {
    /// A file holding the mnemonic: a regular file owned by the service's user, mode 0600.
    #[arg(long, env = "WALLET_SEED_FILE")]
    pub seed_file: Option<PathBuf>,
}

/// The private directory development secrets are kept in between runs: one per user
/// (`~/.local/share/wallet-service` on Linux), whatever directory the server is started
/// from.
fn dev_dir() -> anyhow::Result<PathBuf> {
    let Some(data) = dirs::data_local_dir() else {
        anyhow::bail!(
            "no home directory to keep development secrets in: set WALLET_SEED_FILE and \
             WALLET_JWT_SECRET_FILE"
        );
    };
    Ok(data.join("wallet-service"))
}

/// Where a development seed is kept between runs when none is configured
/// (`~/.local/share/wallet-service/dev-seed` on Linux), so that every development server
/// of the user derives the same addresses for the same database.
pub fn dev_seed_file() -> anyhow::Result<PathBuf> {
    Ok(dev_dir()?.join("dev-seed"))
}

/// Where the development JWT secret is kept when none is configured: beside the
/// development seed (`~/.local/share/wallet-service/dev-jwt-secret`), mode 0600, so that
/// `wallet token` signs with what the development server verifies.
pub fn dev_jwt_secret_file() -> anyhow::Result<PathBuf> {
    Ok(dev_dir()?.join("dev-jwt-secret"))
}

impl CustodyConfig {
    /// The configured seed, and whether it is a generated development seed. Under
    /// development rules, with none configured, a seed is generated once into
    /// [`dev_seed_file`] (mode 0600) and reused, with a warning; under production rules a
    /// missing seed is refused.
    pub fn resolve(&self, rules: Rules) -> anyhow::Result<(SeedSource, bool)> {
        let phrase = secret_from_env("WALLET_SEED");
        match (phrase, &self.seed_file) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set one of WALLET_SEED and WALLET_SEED_FILE, not both")
            }
            (Some(phrase), None) => return Ok((SeedSource::Mnemonic(phrase), false)),
            (None, Some(path)) => return Ok((SeedSource::File(path.clone()), false)),
            (None, None) => {}
        }
        if rules.production() {
            anyhow::bail!(
                "no custody seed ({}): set WALLET_SEED_FILE to a file holding the mnemonic \
                 (mode 0600), or WALLET_SEED",
                rules.why()
            );
        }
        let path = dev_seed_file()?;
        if !path.exists() {
            let (_, phrase) = Custody::generate()?;
            create_private_once(&path, &format!("{phrase}\n"))?;
        }
        tracing::warn!(
            file = %path.display(),
            "no custody seed configured: using a DEVELOPMENT seed generated into this file. \
             Its addresses hold no real funds. Never use it in production."
        );
        Ok((SeedSource::File(path), true))
    }
}

/// A secret from the environment; unset and empty are the same.
fn secret_from_env(name: &str) -> Option<SecretString> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(SecretString::from)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Creates `path` (and its directory, mode 0700) holding `contents`, readable by its
/// owner only, unless it exists. The file is written aside and then linked into place, so
/// a process starting at the same moment finds it complete or not at all; the first to
/// link it wins and the others use it.
fn create_private_once(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let aside = path.with_extension(format!("new-{}", uuid::Uuid::new_v4().simple()));
    write_private(&aside, contents).with_context(|| format!("writing {}", aside.display()))?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

/// Settings of token verification and minting, shared by `wallet serve` and `wallet
/// token`. The secret itself is `WALLET_JWT_SECRET` in the environment, or the contents of
/// `WALLET_JWT_SECRET_FILE`.
#[derive(Clone, Debug, Args)]
pub struct AuthConfig {
    /// A file holding the HS256 secret that signs bearer tokens (instead of
    /// WALLET_JWT_SECRET).
    #[arg(long, env = "WALLET_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// A file holding earlier secrets, one per line: they no longer sign, but tokens they
    /// signed still verify until they are removed (instead of WALLET_JWT_PREVIOUS_SECRETS,
    /// comma-separated).
    #[arg(long, env = "WALLET_JWT_PREVIOUS_SECRETS_FILE")]
    pub jwt_previous_secrets_file: Option<PathBuf>,
    /// `iss` of minted tokens, required of presented ones (default: `wallet-development`
    /// under development rules, `wallet-production` under production rules).
    #[arg(long, env = "WALLET_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// `aud` of minted tokens, required of presented ones (default:
    /// `wallet-api-development` or `wallet-api-production`).
    #[arg(long, env = "WALLET_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The longest a user token may last (`exp - iat`), at mint and at verification.
    #[arg(long, env = "WALLET_JWT_MAX_USER_TTL", default_value = "24h", value_parser = parse_ttl)]
    pub jwt_max_user_ttl: Duration,
    /// The longest an operator token may last, at mint and at verification.
    #[arg(long, env = "WALLET_JWT_MAX_OPERATOR_TTL", default_value = "1h", value_parser = parse_ttl)]
    pub jwt_max_operator_ttl: Duration,
    /// `development` (default) or `production`. Development rules apply on a loopback
    /// listener only: any other gets production rules whatever this says.
    #[arg(
        long = "env",
        env = "WALLET_ENV",
        value_enum,
        default_value = "development"
    )]
    pub environment: Environment,
    /// Development rules on a listener other machines reach (a development container
    /// whose port is published): logged loudly at start; ignored in production.
    #[arg(long, env = "WALLET_ALLOW_DEVELOPMENT_ON_PUBLIC_LISTENER")]
    pub allow_development_on_public_listener: Option<bool>,
}

/// The shortest secret production accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// The least estimated entropy production accepts in a secret, in bits.
pub const MIN_SECRET_BITS: f64 = 128.0;

/// The keys tokens are signed and verified with.
#[derive(Debug)]
pub struct TokenSecrets {
    /// Signs (and verifies).
    pub current: SecretString,
    /// Verify only.
    pub previous: Vec<SecretString>,
    /// The development secret file `current` was read from (generated at first start),
    /// when no secret is configured.
    pub development_file: Option<PathBuf>,
}

/// A secret and where it came from (for messages: never the secret itself).
struct Sourced {
    secret: SecretString,
    source: String,
}

impl AuthConfig {
    /// The rules a server listening on `listen` runs under (`wallet token` asks with
    /// `WALLET_LISTEN` too, so that it mints what that server accepts).
    pub fn rules(&self, listen: SocketAddr) -> Rules {
        let opted_in = self.allow_development_on_public_listener == Some(true);
        match self.environment {
            Environment::Production => Rules::Production,
            Environment::Development if listen.ip().is_loopback() => Rules::Development,
            Environment::Development if opted_in => Rules::DevelopmentOnPublicListener(listen),
            Environment::Development => Rules::ProductionForPublicListener(listen),
        }
    }

    /// Issuer, audience and maximum lifetimes of tokens under `rules`.
    pub fn token_policy(&self, rules: Rules) -> Result<TokenPolicy, Vec<String>> {
        let defaults = match rules.production() {
            true => TokenPolicy::production(),
            false => TokenPolicy::development(),
        };
        let mut problems = Vec::new();
        let mut setting = |name: &str, value: &Option<String>, default: String| match value {
            None => default,
            Some(v) if v.trim().is_empty() || v.len() > 256 => {
                problems.push(format!("{name} must be 1 to 256 bytes (or unset)"));
                default
            }
            Some(v) => v.trim().to_owned(),
        };
        let issuer = setting("WALLET_JWT_ISSUER", &self.jwt_issuer, defaults.issuer);
        let audience = setting("WALLET_JWT_AUDIENCE", &self.jwt_audience, defaults.audience);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(TokenPolicy {
            issuer,
            audience,
            max_user_ttl: self.jwt_max_user_ttl,
            max_operator_ttl: self.jwt_max_operator_ttl,
        })
    }

    /// The secret that signs and the earlier ones that still verify. Under production
    /// rules a secret is required, and each one (previous ones too) must look random;
    /// under development rules, with none configured, one is generated once into
    /// [`dev_jwt_secret_file`] (mode 0600) and reused. Every problem is returned, each
    /// naming the variable or file it comes from.
    pub fn resolve_secrets(&self, rules: Rules) -> Result<TokenSecrets, Vec<String>> {
        let production = rules.production();
        let mut problems = Vec::new();
        let current = match (secret_from_env("WALLET_JWT_SECRET"), &self.jwt_secret_file) {
            (Some(_), Some(_)) => {
                problems.push(
                    "set one of WALLET_JWT_SECRET and WALLET_JWT_SECRET_FILE, not both".into(),
                );
                None
            }
            (Some(secret), None) => Some(Sourced {
                secret,
                source: "WALLET_JWT_SECRET".into(),
            }),
            (None, Some(path)) => {
                let source = format!("WALLET_JWT_SECRET_FILE {}", path.display());
                match read_secret_file(path, &source, production) {
                    Ok(text) => Some(Sourced {
                        secret: SecretString::from(text.trim_end_matches(['\r', '\n'])),
                        source,
                    }),
                    Err(problem) => {
                        problems.push(problem);
                        None
                    }
                }
            }
            (None, None) if production => {
                problems.push(format!(
                    "no JWT secret ({}): set WALLET_JWT_SECRET_FILE to a file holding one \
                     (`openssl rand -hex 32 > FILE; chmod 600 FILE`), or WALLET_JWT_SECRET",
                    rules.why()
                ));
                None
            }
            (None, None) => None,
        };
        let previous = self.previous_secrets(production, &mut problems);
        if production {
            for sourced in current.iter().chain(&previous) {
                if let Err(problem) =
                    check_secret_strength(sourced.secret.expose_secret(), &sourced.source)
                {
                    problems.push(problem);
                }
            }
        }
        let (current, development_file) = match current {
            Some(sourced) => (Some(sourced.secret), None),
            None if problems.is_empty() && !production => match development_secret() {
                Ok((secret, path)) => (Some(secret), Some(path)),
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    (None, None)
                }
            },
            None => (None, None),
        };
        match current {
            Some(current) if problems.is_empty() => Ok(TokenSecrets {
                current,
                previous: previous.into_iter().map(|s| s.secret).collect(),
                development_file,
            }),
            _ => Err(problems),
        }
    }

    /// `WALLET_JWT_PREVIOUS_SECRETS` (comma-separated) or the lines of
    /// `WALLET_JWT_PREVIOUS_SECRETS_FILE`; blank entries are skipped.
    fn previous_secrets(&self, production: bool, problems: &mut Vec<String>) -> Vec<Sourced> {
        let from_env = secret_from_env("WALLET_JWT_PREVIOUS_SECRETS");
        let (text, source, separator) = match (from_env, &self.jwt_previous_secrets_file) {
            (Some(_), Some(_)) => {
                problems.push(
                    "set one of WALLET_JWT_PREVIOUS_SECRETS and \
                     WALLET_JWT_PREVIOUS_SECRETS_FILE, not both"
                        .into(),
                );
                return Vec::new();
            }
            (Some(list), None) => (
                SecretString::from(list.expose_secret()),
                "WALLET_JWT_PREVIOUS_SECRETS entry".to_owned(),
                ',',
            ),
            (None, Some(path)) => {
                let source = format!("WALLET_JWT_PREVIOUS_SECRETS_FILE {}", path.display());
                match read_secret_file(path, &source, production) {
                    Ok(text) => (SecretString::from(text), format!("{source} line"), '\n'),
                    Err(problem) => {
                        problems.push(problem);
                        return Vec::new();
                    }
                }
            }
            (None, None) => return Vec::new(),
        };
        text.expose_secret()
            .split(separator)
            .enumerate()
            .map(|(i, entry)| (i + 1, entry.trim()))
            .filter(|(_, entry)| !entry.is_empty())
            .map(|(n, entry)| Sourced {
                secret: SecretString::from(entry),
                source: format!("{source} {n}"),
            })
            .collect()
    }
}

/// Reads a file holding secrets. Under production rules it must be readable by its
/// owner only (a symlink is followed: mounted secrets are often links).
fn read_secret_file(path: &Path, source: &str, production: bool) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{source}: {e}"))?;
    #[cfg(unix)]
    if production {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("{source}: {e}"))?
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{source}: must be readable by its owner only (mode {mode:o}); chmod 600 it"
            ));
        }
    }
    Ok(text)
}

/// The development secret, generated into [`dev_jwt_secret_file`] at first use: 32
/// random bytes in hex.
fn development_secret() -> anyhow::Result<(SecretString, PathBuf)> {
    let path = dev_jwt_secret_file()?;
    if !path.exists() {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        create_private_once(&path, &format!("{hex}\n"))?;
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the development secret {}", path.display()))?;
    let secret = text.trim();
    if secret.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "the development secret {} is {} bytes, not a generated one: delete it to have a \
             new one generated",
            path.display(),
            secret.len()
        );
    }
    Ok((SecretString::from(secret), path))
}

/// SHA-256 of secrets that are public: the development secret earlier versions compiled
/// into the binary. Held as hashes, so that the binary no longer carries them.
const PUBLIC_SECRET_HASHES: [&str; 1] =
    ["3e5fe68ebac6b699d02497405ef848156d424a350a60064de77d5ec87b11f629"];

/// Refuses public secrets, and secrets too short or too regular to resist guessing
/// (estimated from the frequency of their characters — a repeated or sequential string
/// scores low). `openssl rand -hex 32` passes. The refusal names `source`.
pub fn check_secret_strength(secret: &str, source: &str) -> Result<(), String> {
    use sha2::Digest as _;
    let hash: String = sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if PUBLIC_SECRET_HASHES.contains(&hash.as_str()) {
        return Err(format!(
            "{source}: is the development secret earlier versions built in, which is public: \
             generate one with `openssl rand -hex 32`"
        ));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{source}: is {} bytes; production needs at least {MIN_SECRET_BYTES} \
             (`openssl rand -hex 32`)",
            secret.len()
        ));
    }
    let bits = estimated_entropy_bits(secret);
    if bits < MIN_SECRET_BITS {
        return Err(format!(
            "{source}: looks guessable (about {bits:.0} bits of entropy; production needs \
             {MIN_SECRET_BITS:.0}): generate one with `openssl rand -hex 32`"
        ));
    }
    Ok(())
}

/// Shannon entropy of the secret's bytes times its length, with runs of consecutive
/// byte values (`abcd…`, `1234…`) counted once: an upper bound for random strings, low for
/// repeated or sequential ones.
fn estimated_entropy_bits(secret: &str) -> f64 {
    let bytes = secret.as_bytes();
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    let n = bytes.len() as f64;
    let per_byte: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    let steps = bytes
        .windows(2)
        .filter(|w| w[1].wrapping_sub(w[0]) == 1)
        .count();
    per_byte * (bytes.len() - steps) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawal_fees_parse_as_code_amount_pairs() {
        let fees = parse_fees("USD=0.50, BTC=0.0001").unwrap().0;
        assert_eq!(fees["USD"].to_string(), "0.50");
        assert_eq!(fees["BTC"].to_string(), "0.0001");
        assert!(parse_fees("").unwrap().0.is_empty());
        for bad in ["USD", "USD=abc", "USD=1,USD=2", "USD=1e3"] {
            assert!(parse_fees(bad).is_err(), "{bad}");
        }
        let usd = crate::ledger::Currency {
            code: "USD".into(),
            name: "US Dollar".into(),
            kind: crate::ledger::CurrencyKind::Fiat,
            scale: 2,
            network: None,
            enabled: true,
            reconciliation_tolerance: Default::default(),
            required_confirmations: None,
            contract_address: None,
        };
        let registry = || crate::ledger::CurrencyRegistry::from_rows(vec![usd.clone()]);
        for bad in ["EUR=1", "USD=-1", "USD=0.001"] {
            assert!(
                registry()
                    .with_withdrawal_fees(&parse_fees(bad).unwrap().0, |_| None)
                    .is_err(),
                "{bad}"
            );
        }
        let ok = registry()
            .with_withdrawal_fees(&parse_fees("USD=2").unwrap().0, |_| None)
            .unwrap();
        assert_eq!(ok.withdrawal_fee("USD").unwrap().to_string(), "2.00");

        // A coin's flat fee must cover the most its network may charge; a token's is in
        // the token (its gas comes from gas funding).
        let coin = |code: &str, contract: Option<&str>| crate::ledger::Currency {
            code: code.into(),
            name: code.into(),
            kind: crate::ledger::CurrencyKind::Crypto,
            scale: 18,
            network: Some("ethereum".into()),
            enabled: true,
            reconciliation_tolerance: Default::default(),
            required_confirmations: Some(6),
            contract_address: contract.map(str::to_owned),
        };
        let crypto = || {
            crate::ledger::CurrencyRegistry::from_rows(vec![
                coin("ETH", None),
                coin("TUSD", Some("0x5FbDB2315678afecb367f032d93F642f64180aa3")),
            ])
        };
        let most = |_: &str| Some("0.0105".parse().unwrap());
        let refused = crypto()
            .with_withdrawal_fees(&parse_fees("ETH=0.01").unwrap().0, most)
            .unwrap_err();
        assert!(refused.contains("at least 0.0105"), "{refused}");
        assert!(
            crypto()
                .with_withdrawal_fees(&parse_fees("ETH=0.0105,TUSD=0.000001").unwrap().0, most)
                .is_ok()
        );
    }

    #[test]
    fn weak_secrets_are_refused() {
        let check = |secret: &str| check_secret_strength(secret, "WALLET_JWT_SECRET");
        // The secret earlier versions built in: public, whatever its entropy.
        let public = check("wallet-development-secret-do-not-use-in-production").unwrap_err();
        assert!(public.contains("public"), "{public}");
        assert!(check("short-secret").is_err());
        assert!(check(&"a".repeat(64)).is_err());
        assert!(check(&"ab".repeat(32)).is_err());
        assert!(check("0123456789abcdef0123456789abcdef").is_err());
        assert!(check("abcdefghijklmnopqrstuvwxyz0123456789").is_err());
        // `openssl rand -hex 32` and `-base64 32` outputs.
        assert!(check("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08").is_ok());
        assert!(check("q3Jb8Xo1Vf9kLm2ZpT7rYc0sNw4GhE6uDaIxKzQvBtM=").is_ok());
        // The refusal names where the secret came from.
        let named =
            check_secret_strength(&"a".repeat(64), "WALLET_JWT_SECRET_FILE /etc/s").unwrap_err();
        assert!(
            named.starts_with("WALLET_JWT_SECRET_FILE /etc/s: looks guessable"),
            "{named}"
        );
    }

    #[test]
    fn development_rules_apply_on_loopback_only() {
        let auth = |environment, opt_in| AuthConfig {
            jwt_secret_file: None,
            jwt_previous_secrets_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_max_user_ttl: Duration::from_secs(86_400),
            jwt_max_operator_ttl: Duration::from_secs(3600),
            environment,
            allow_development_on_public_listener: opt_in,
        };
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let loopback6: SocketAddr = "[::1]:8080".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let dev = Environment::Development;
        assert_eq!(auth(dev, None).rules(loopback), Rules::Development);
        assert_eq!(auth(dev, None).rules(loopback6), Rules::Development);
        assert_eq!(
            auth(dev, None).rules(public),
            Rules::ProductionForPublicListener(public)
        );
        assert_eq!(
            auth(dev, Some(false)).rules(public),
            Rules::ProductionForPublicListener(public)
        );
        assert_eq!(
            auth(dev, Some(true)).rules(public),
            Rules::DevelopmentOnPublicListener(public)
        );
        let production = Environment::Production;
        assert_eq!(
            auth(production, Some(true)).rules(public),
            Rules::Production
        );
        assert_eq!(auth(production, None).rules(loopback), Rules::Production);
        // Issuer and audience differ per rules: a development token is no production one.
        let development = auth(dev, None).token_policy(Rules::Development).unwrap();
        let production = auth(dev, None).token_policy(Rules::Production).unwrap();
        assert_ne!(development.issuer, production.issuer);
        assert_ne!(development.audience, production.audience);
    }
}
