//! `wallet`: the service binary. `serve` (default), `migrate`, `token`, `schema`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wallet::app::{App, AppConfig};
use wallet::auth::{Role, TokenKeys, parse_ttl};
use wallet::config::{AuthConfig, DatabaseConfig, Environment, ServeConfig};
use wallet::graphql::Limits;
use wallet::{db, graphql, http, telemetry};

#[derive(Parser)]
#[command(
    name = "wallet",
    version,
    about = "Custodial wallet service (GraphQL over Postgres)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (the default).
    Serve(ServeConfig),
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate(DatabaseConfig),
    /// Print a signed bearer token for development and operations.
    Token {
        /// Subject (user id) of the token.
        #[arg(long)]
        sub: String,
        #[arg(long, value_parser = ["user", "operator"], default_value = "user")]
        role: String,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        #[command(flatten)]
        auth: AuthConfig,
    },
    /// Print the GraphQL schema (SDL), as committed in schema.graphql.
    Schema,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        None => Command::Serve(ServeConfig::parse_from(["wallet"])),
    };
    match command {
        Command::Serve(config) => serve(config).await,
        Command::Migrate(db_config) => {
            db::ensure_database(&db_config.database_url).await?;
            let applied = db::run_migrations(&db_config.database_url).await?;
            if applied.is_empty() {
                println!("database is up to date");
            }
            for version in applied {
                println!("applied {version}");
            }
            Ok(())
        }
        Command::Token {
            sub,
            role,
            ttl,
            auth,
        } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let keys = TokenKeys::new(auth.resolve_secret()?.as_bytes());
            println!("{}", keys.mint(&sub, role, ttl)?);
            Ok(())
        }
        Command::Schema => {
            print!("{}", graphql::sdl());
            Ok(())
        }
    }
}

/// `clap` cannot parse a flattened struct from the environment alone without a command
/// line; this gives `wallet` with no subcommand the same configuration as `wallet serve`.
trait ParseFrom {
    fn parse_from<const N: usize>(args: [&str; N]) -> Self;
}

impl ParseFrom for ServeConfig {
    fn parse_from<const N: usize>(args: [&str; N]) -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: ServeConfig,
        }
        Only::parse_from(args).config
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let secret = config.auth.resolve_secret()?;
    let app = App::start(&AppConfig {
        database_url: config.db.database_url.clone(),
        pool_size: config.db.pool_size,
        session_limits: config.db.session_limits(),
        jwt_secret: secret,
        limits: Limits {
            max_depth: config.max_depth,
            max_complexity: config.max_complexity,
        },
        request_timeout: config.request_timeout(),
        max_subscriptions: config.ws_max_subscriptions,
        seed: config.custody.resolve(config.auth.environment)?,
        simulated_chain: config
            .simulated_chain
            .unwrap_or(config.auth.environment == Environment::Development),
        block_interval: (config.block_secs > 0).then(|| Duration::from_secs(config.block_secs)),
        reconcile_interval: (config.reconcile_secs > 0)
            .then(|| Duration::from_secs(config.reconcile_secs)),
        chain_poll: (config.chain_poll_ms > 0).then(|| Duration::from_millis(config.chain_poll_ms)),
    })
    .await
    .context("starting the service")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("GraphiQL:  http://{addr}/");
    println!("GraphQL:   http://{addr}/graphql");
    println!("Subscriptions (graphql-transport-ws): ws://{addr}/graphql/ws");
    if config.auth.environment == Environment::Development {
        let day = Duration::from_secs(86_400);
        println!("Demo tokens (development only, valid 24h):");
        println!(
            "  user alice: Bearer {}",
            app.tokens.mint("alice", Role::User, day)?
        );
        println!(
            "  operator:   Bearer {}",
            app.tokens.mint("back-office", Role::Operator, day)?
        );
    }
    tracing::info!(%addr, "listening");
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; in-flight requests are then allowed to finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested: finishing requests in flight");
}
