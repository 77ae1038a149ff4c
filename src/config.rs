//! Runtime configuration from the environment and flags. The variables' names are fixed:
//! deployments and scripts rely on them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::custody::{Custody, SeedSource};
use crate::db::SessionLimits;

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
    /// Maximum connections in the pool.
    #[arg(long, env = "WALLET_DB_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
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

/// Settings of the HTTP server.
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
    /// Maximum depth of a GraphQL query.
    #[arg(long, env = "WALLET_MAX_QUERY_DEPTH", default_value_t = 16)]
    pub max_depth: usize,
    /// Maximum complexity of a GraphQL query (a connection costs its page size times its
    /// selection).
    #[arg(long, env = "WALLET_MAX_QUERY_COMPLEXITY", default_value_t = 5000)]
    pub max_complexity: usize,
    /// Per-request timeout in seconds.
    #[arg(long, env = "WALLET_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Concurrent subscriptions one websocket connection may hold.
    #[arg(long, env = "WALLET_WS_MAX_SUBSCRIPTIONS", default_value_t = 32)]
    pub ws_max_subscriptions: usize,
    /// Run the simulated bitcoin and ethereum networks (default: on in development, off
    /// in production).
    #[arg(long, env = "WALLET_SIMULATED_CHAIN")]
    pub simulated_chain: Option<bool>,
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
}

impl ServeConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// Where the custody seed (a BIP39 mnemonic) comes from.
#[derive(Clone, Debug, Args)]
pub struct CustodyConfig {
    /// The mnemonic itself (prefer WALLET_SEED_FILE outside development).
    #[arg(
        long,
        env = "WALLET_SEED",
        hide_env_values = true,
        conflicts_with = "seed_file"
    )]
    pub seed: Option<String>,
    /// A file holding the mnemonic, readable by its owner only (chmod 600).
    #[arg(long, env = "WALLET_SEED_FILE")]
    pub seed_file: Option<PathBuf>,
}

/// Where a development seed is kept between runs when none is configured.
pub const DEV_SEED_FILE: &str = ".wallet-dev-seed";

impl CustodyConfig {
    /// The configured seed. In development, with none configured, a seed is generated once
    /// into [`DEV_SEED_FILE`] (mode 0600) and reused, with a warning; in production a
    /// missing seed is an error.
    pub fn resolve(&self, environment: Environment) -> anyhow::Result<SeedSource> {
        if let Some(phrase) = self.seed.as_ref().filter(|s| !s.trim().is_empty()) {
            return Ok(SeedSource::Mnemonic(phrase.clone()));
        }
        if let Some(path) = &self.seed_file {
            return Ok(SeedSource::File(path.clone()));
        }
        if environment == Environment::Production {
            anyhow::bail!("WALLET_SEED or WALLET_SEED_FILE is required when WALLET_ENV=production");
        }
        let path = PathBuf::from(DEV_SEED_FILE);
        if !path.exists() {
            let (_, phrase) = Custody::generate()?;
            write_private(&path, &format!("{phrase}\n"))?;
        }
        tracing::warn!(
            file = %path.display(),
            "no custody seed configured: using a DEVELOPMENT seed generated into this file. \
             Its addresses hold no real funds. Never use it in production."
        );
        Ok(SeedSource::File(path))
    }
}

fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// Settings of token verification and minting.
#[derive(Clone, Debug, Args)]
pub struct AuthConfig {
    /// HS256 secret for bearer tokens. Defaults to a development secret (refused in
    /// production).
    #[arg(long, env = "WALLET_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// `development` (default) or `production`; production refuses development defaults.
    #[arg(
        long = "env",
        env = "WALLET_ENV",
        value_enum,
        default_value = "development"
    )]
    pub environment: Environment,
}

impl AuthConfig {
    /// The secret to sign and verify with. In development a missing secret falls back to
    /// [`DEV_JWT_SECRET`] (with a warning); in production it is an error.
    pub fn resolve_secret(&self) -> anyhow::Result<String> {
        match (&self.jwt_secret, self.environment) {
            (Some(s), _) if s.len() < 32 && self.environment == Environment::Production => {
                anyhow::bail!("WALLET_JWT_SECRET must be at least 32 bytes in production")
            }
            (Some(s), _) if !s.is_empty() => Ok(s.clone()),
            (_, Environment::Production) => {
                anyhow::bail!("WALLET_JWT_SECRET is required when WALLET_ENV=production")
            }
            (_, Environment::Development) => {
                tracing::warn!(
                    "WALLET_JWT_SECRET is not set: using the built-in DEVELOPMENT secret. \
                     Anyone can mint tokens for this server. Never use this in production."
                );
                Ok(DEV_JWT_SECRET.to_owned())
            }
        }
    }
}
