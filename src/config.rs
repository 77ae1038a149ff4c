//! Runtime configuration from the environment and flags. The variables' names are fixed:
//! deployments and scripts rely on them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

use crate::custody::{Custody, SeedSource};
use crate::db::SessionLimits;
use crate::graphql::Limits;
use crate::graphql::document::DocumentLimits;
use crate::limits::{HttpLimits, RateLimits, WsLimits};

/// Development fallback for `WALLET_JWT_SECRET`; refused in production.
pub const DEV_JWT_SECRET: &str = "wallet-development-secret-do-not-use-in-production";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/wallet";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

/// Settings shared by every subcommand that talks to the database.
#[derive(Clone, Debug, Args)]
pub struct DatabaseConfig {
    /// Postgres URL; the database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
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
}

impl DatabaseConfig {
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
    /// Run the simulated bitcoin and ethereum networks (default: on in development; refused
    /// in production).
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
    /// Serve GraphiQL on `/` and the example web client on `/examples/web-client/`, and
    /// answer introspection queries (default: on in development, off in production).
    #[arg(long, env = "WALLET_GRAPHIQL")]
    pub graphiql: Option<bool>,
    /// A separate address serving only `/metrics` (e.g. a private interface for
    /// Prometheus). Without it, `/metrics` is on `WALLET_LISTEN` when that is a loopback
    /// address or when `WALLET_METRICS_TOKEN` is set (then required as a bearer token).
    #[arg(long, env = "WALLET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Flat withdrawal fees per currency, credited to fee revenue, e.g. `USD=0.50,BTC=0.0001`.
    /// Fiat: charged on top of the amount. Crypto: charged instead of the network's fee,
    /// which the service then pays. Without one, fiat withdrawals are free and crypto
    /// withdrawals pay the network's fee.
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
    /// Open connections (HTTP and websocket) the server accepts at once; more are answered
    /// 503 and closed.
    #[arg(long, env = "WALLET_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Concurrent subscriptions one websocket connection may hold.
    #[arg(long, env = "WALLET_WS_MAX_SUBSCRIPTIONS", default_value_t = 32)]
    pub ws_max_subscriptions: usize,
    /// Websocket connections open at once, in total.
    #[arg(long, env = "WALLET_WS_MAX_CONNECTIONS", default_value_t = 512)]
    pub ws_max_connections: usize,
    /// Websocket connections one user may have open at once.
    #[arg(long, env = "WALLET_WS_MAX_PER_USER", default_value_t = 8)]
    pub ws_max_per_user: usize,
    /// Seconds a websocket peer has to answer a ping before the connection is closed.
    #[arg(long, env = "WALLET_WS_PONG_TIMEOUT_SECS", default_value_t = 30)]
    pub ws_pong_timeout_secs: u64,
    /// Mutations per second a user may send (sustained; 0: no limit).
    #[arg(long, env = "WALLET_RATE_LIMIT_PER_SEC", default_value_t = 10)]
    pub rate_per_sec: u32,
    /// Mutations a user may send in a burst above the sustained rate.
    #[arg(long, env = "WALLET_RATE_LIMIT_BURST", default_value_t = 50)]
    pub rate_burst: u32,
    /// Mutations per second an operator token may send (0: no limit; the back office is
    /// trusted and batches deposits).
    #[arg(long, env = "WALLET_OPERATOR_RATE_LIMIT_PER_SEC", default_value_t = 0)]
    pub operator_rate_per_sec: u32,
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
            max_connections: self.max_connections.max(1),
        }
    }

    pub fn ws(&self) -> WsLimits {
        WsLimits {
            max_subscriptions: self.ws_max_subscriptions,
            max_connections: self.ws_max_connections,
            max_per_user: self.ws_max_per_user,
            pong_timeout: Duration::from_secs(self.ws_pong_timeout_secs.max(1)),
        }
    }

    pub fn rates(&self) -> RateLimits {
        RateLimits {
            user_per_sec: self.rate_per_sec,
            user_burst: self.rate_burst,
            operator_per_sec: self.operator_rate_per_sec,
            user_query_cost_per_sec: self.query_cost_per_sec,
            user_query_cost_burst: self.query_cost_burst,
            operator_query_cost_per_sec: self.operator_query_cost_per_sec,
        }
    }
}

/// What the server starts with once its configuration has been checked.
#[derive(Debug)]
pub struct Startup {
    pub jwt_secret: SecretString,
    /// The development secret compiled into the binary is in use.
    pub built_in_secret: bool,
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

    fn production(&self) -> bool {
        self.auth.environment == Environment::Production
    }

    /// Checks the configuration and resolves its secrets. Production refuses every unsafe
    /// setting, and development defaults (the built-in secret, a generated seed) serve a
    /// loopback address only. Every refusal is one line saying what to set.
    pub fn check(&self) -> anyhow::Result<Startup> {
        let mut refusals: Vec<String> = Vec::new();
        let production = self.production();
        let secret = self.auth.resolve_secret();
        let seed = self.custody.resolve(self.auth.environment);
        let simulated_chain = self.simulated_chain.unwrap_or(!production);
        if production && simulated_chain {
            refusals.push(
                "WALLET_SIMULATED_CHAIN=true: a simulated chain cannot run in production \
                 (anyone who can mine can mint deposits)"
                    .into(),
            );
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
                refusals.push("WALLET_METRICS_TOKEN must be at least 16 bytes".into());
                None
            }
            Err(_) => None,
        };
        let (secret, seed) = match (secret, seed) {
            (Ok(secret), Ok(seed)) => (secret, seed),
            (secret, seed) => {
                refusals.extend(secret.err().map(|e| e.to_string()));
                refusals.extend(seed.err().map(|e| e.to_string()));
                anyhow::bail!(refusals.join("\n"));
            }
        };
        let (jwt_secret, built_in_secret) = secret;
        let (seed, generated_seed) = seed;
        if (built_in_secret || generated_seed) && !self.listen.ip().is_loopback() {
            let which = match (built_in_secret, generated_seed) {
                (true, true) => "the built-in JWT secret and a generated custody seed",
                (true, false) => "the built-in JWT secret",
                _ => "a generated custody seed",
            };
            refusals.push(format!(
                "WALLET_LISTEN={} is reachable from other machines, but this server runs on \
                 development defaults ({which}): set WALLET_JWT_SECRET (or \
                 WALLET_JWT_SECRET_FILE) and WALLET_SEED_FILE, or listen on 127.0.0.1",
                self.listen
            ));
        }
        if !refusals.is_empty() {
            anyhow::bail!(refusals.join("\n"));
        }
        if built_in_secret {
            tracing::warn!(
                "WALLET_JWT_SECRET is not set: using the built-in DEVELOPMENT secret. \
                 Anyone can mint tokens for this server. Never use this in production."
            );
        }
        Ok(Startup {
            jwt_secret,
            built_in_secret,
            seed,
            generated_seed,
            simulated_chain,
            graphiql: self.graphiql.unwrap_or(!production),
            metrics_token,
        })
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

/// Where a development seed is kept between runs when none is configured: one file per
/// user (`~/.local/share/wallet-service/dev-seed` on Linux), whatever directory the
/// server is started from, so that every development server on the machine derives the
/// same addresses for the same database.
pub fn dev_seed_file() -> anyhow::Result<PathBuf> {
    let Some(data) = dirs::data_local_dir() else {
        anyhow::bail!(
            "no home directory to keep a development custody seed in: set WALLET_SEED_FILE"
        );
    };
    Ok(data.join("wallet-service").join("dev-seed"))
}

impl CustodyConfig {
    /// The configured seed, and whether it is a generated development seed. In
    /// development, with none configured, a seed is generated once into
    /// [`dev_seed_file`] (mode 0600) and reused, with a warning; in production a missing
    /// seed is refused.
    pub fn resolve(&self, environment: Environment) -> anyhow::Result<(SeedSource, bool)> {
        let phrase = secret_from_env("WALLET_SEED");
        match (phrase, &self.seed_file) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set one of WALLET_SEED and WALLET_SEED_FILE, not both")
            }
            (Some(phrase), None) => return Ok((SeedSource::Mnemonic(phrase), false)),
            (None, Some(path)) => return Ok((SeedSource::File(path.clone()), false)),
            (None, None) => {}
        }
        if environment == Environment::Production {
            anyhow::bail!(
                "no custody seed: WALLET_SEED_FILE (or WALLET_SEED) is required when \
                 WALLET_ENV=production"
            );
        }
        let path = dev_seed_file()?;
        if !path.exists() {
            if let Some(dir) = path.parent() {
                create_private_dir(dir)?;
            }
            let (_, phrase) = Custody::generate()?;
            // Two servers starting at once: the first write wins, the other reads it.
            match write_private(&path, &format!("{phrase}\n")) {
                Err(e) if !path.exists() => {
                    return Err(e.context(format!("writing {}", path.display())));
                }
                _ => {}
            }
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
    Ok(())
}

/// Settings of token verification and minting. The secret itself is `WALLET_JWT_SECRET`
/// in the environment, or the contents of `WALLET_JWT_SECRET_FILE`.
#[derive(Clone, Debug, Args)]
pub struct AuthConfig {
    /// A file holding the HS256 secret for bearer tokens (instead of WALLET_JWT_SECRET).
    #[arg(long, env = "WALLET_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// `development` (default) or `production`; production refuses development defaults.
    #[arg(
        long = "env",
        env = "WALLET_ENV",
        value_enum,
        default_value = "development"
    )]
    pub environment: Environment,
}

/// The shortest secret production accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// The least estimated entropy production accepts in a secret, in bits.
pub const MIN_SECRET_BITS: f64 = 128.0;

impl AuthConfig {
    /// The secret to sign and verify with, and whether it is the built-in development
    /// secret. In development a missing secret falls back to [`DEV_JWT_SECRET`] (with a
    /// warning); production refuses a missing, built-in, short or low-entropy secret.
    pub fn resolve_secret(&self) -> anyhow::Result<(SecretString, bool)> {
        let from_env = secret_from_env("WALLET_JWT_SECRET");
        let secret = match (from_env, &self.jwt_secret_file) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set one of WALLET_JWT_SECRET and WALLET_JWT_SECRET_FILE, not both")
            }
            (Some(secret), None) => Some(secret),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("WALLET_JWT_SECRET_FILE {}: {e}", path.display())
                })?;
                Some(SecretString::from(
                    text.trim_end_matches(['\r', '\n']).to_owned(),
                ))
            }
            (None, None) => None,
        };
        let production = self.environment == Environment::Production;
        match secret {
            Some(secret) if production => {
                check_secret_strength(secret.expose_secret())?;
                Ok((secret, false))
            }
            Some(secret) => {
                let built_in = secret.expose_secret() == DEV_JWT_SECRET;
                Ok((secret, built_in))
            }
            None if production => anyhow::bail!(
                "no JWT secret: WALLET_JWT_SECRET or WALLET_JWT_SECRET_FILE is required when \
                 WALLET_ENV=production"
            ),
            None => Ok((SecretString::from(DEV_JWT_SECRET), true)),
        }
    }
}

/// Refuses the built-in secret, and secrets too short or too regular to resist guessing
/// (estimated from the frequency of their characters — a repeated or sequential string
/// scores low). `openssl rand -hex 32` passes.
pub fn check_secret_strength(secret: &str) -> anyhow::Result<()> {
    if secret == DEV_JWT_SECRET {
        anyhow::bail!(
            "WALLET_JWT_SECRET is the built-in development secret, which is public: \
             generate one with `openssl rand -hex 32`"
        );
    }
    if secret.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "WALLET_JWT_SECRET is {} bytes; production needs at least {MIN_SECRET_BYTES} \
             (`openssl rand -hex 32`)",
            secret.len()
        );
    }
    let bits = estimated_entropy_bits(secret);
    if bits < MIN_SECRET_BITS {
        anyhow::bail!(
            "WALLET_JWT_SECRET looks guessable (about {bits:.0} bits of entropy; production \
             needs {MIN_SECRET_BITS:.0}): generate one with `openssl rand -hex 32`"
        );
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
                    .with_withdrawal_fees(&parse_fees(bad).unwrap().0)
                    .is_err(),
                "{bad}"
            );
        }
        let ok = registry()
            .with_withdrawal_fees(&parse_fees("USD=2").unwrap().0)
            .unwrap();
        assert_eq!(ok.withdrawal_fee("USD").unwrap().to_string(), "2.00");
    }

    #[test]
    fn weak_secrets_are_refused() {
        assert!(check_secret_strength(DEV_JWT_SECRET).is_err());
        assert!(check_secret_strength("short-secret").is_err());
        assert!(check_secret_strength(&"a".repeat(64)).is_err());
        assert!(check_secret_strength(&"ab".repeat(32)).is_err());
        assert!(check_secret_strength("0123456789abcdef0123456789abcdef").is_err());
        assert!(check_secret_strength("abcdefghijklmnopqrstuvwxyz0123456789").is_err());
        // `openssl rand -hex 32` and `-base64 32` outputs.
        assert!(
            check_secret_strength(
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            )
            .is_ok()
        );
        assert!(check_secret_strength("q3Jb8Xo1Vf9kLm2ZpT7rYc0sNw4GhE6uDaIxKzQvBtM=").is_ok());
    }
}
