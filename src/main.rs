//! `wallet`: the service binary. `serve` (default), `migrate`, `token`, `revoke-tokens`,
//! `watch`, `schema`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use wallet::app::{App, AppConfig, MetricsAccess};
use wallet::auth::{Role, TokenKeys, parse_ttl, show_duration};
use wallet::config::{AuthConfig, DatabaseConfig, ServeConfig};
use wallet::{db, graphql, http, server, telemetry};

/// mimalloc instead of the system allocator: a request allocates and frees many small
/// objects across threads, and glibc's malloc spent about a sixth of the server's CPU
/// time on it under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(Box<ServeConfig>),
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate(DatabaseConfig),
    /// Print a signed bearer token for development and operations.
    Token {
        /// Subject (user id) of the token.
        #[arg(long)]
        sub: String,
        #[arg(long, value_parser = ["user", "operator"], default_value = "user")]
        role: String,
        /// Lifetime, e.g. 30m, 1h, 7d: at most the role's maximum (default: that maximum,
        /// as long as the demo tokens `serve` prints).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// The address the server listens on: as for the server, one other machines reach
        /// means production rules (and the production issuer and audience).
        #[arg(long, env = "WALLET_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        auth: AuthConfig,
    },
    /// Revoke every token of a subject issued until now (a leaked token), then exit. Every
    /// server refuses them within its revocation refresh period; tokens minted after the
    /// printed cutoff work.
    RevokeTokens {
        /// Subject (user id) whose tokens to revoke.
        #[arg(long)]
        sub: String,
        /// Why (kept with the revocation).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        db: DatabaseConfig,
    },
    /// Run a subscription (or any operation) over the websocket and print each result as a
    /// line of JSON, until the server completes it or Ctrl-C.
    Watch {
        /// The GraphQL document, e.g. 'subscription { transactionUpdated { id status } }'.
        query: String,
        /// Its variables, as a JSON object.
        #[arg(long)]
        variables: Option<String>,
        /// A file holding the bearer token (`wallet token … > file`). Without it the token
        /// is read from WALLET_TOKEN — never from the command line, which `ps` shows.
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
        /// The service's websocket endpoint: ws://ADDRESS/graphql/ws for the address the
        /// server listens on (WALLET_LISTEN), wss:// behind TLS.
        #[arg(
            long,
            env = "WALLET_WS_URL",
            default_value = "ws://127.0.0.1:8080/graphql/ws"
        )]
        url: String,
    },
    /// Print the GraphQL schema (SDL), as committed in schema.graphql.
    Schema,
}

/// Runs the command; a failure is printed as one line per cause (a refused configuration
/// lists each refusal on its own line) and the process exits with status 1.
fn main() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        for line in format!("{e:#}").lines() {
            eprintln!("error: {line}");
        }
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    telemetry::init();
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        None => Command::Serve(Box::new(ServeConfig::parse_from(["wallet"]))),
    };
    match command {
        Command::Serve(config) => serve(*config).await,
        Command::Migrate(db_config) => {
            let database = db_config.resolve().await?;
            if let Some(cluster) = &database.cluster {
                println!("{}", cluster.describe());
            }
            db::ensure_database(&database.url).await?;
            let applied = db::run_migrations(&database.url).await?;
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
            listen,
            auth,
        } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let rules = auth.rules(listen);
            let refused = |problems: Vec<String>| anyhow::anyhow!(problems.join("\n"));
            let secrets = auth.resolve_secrets(rules).map_err(refused)?;
            let policy = auth.token_policy(rules).map_err(refused)?;
            if let Some(path) = &secrets.development_file {
                eprintln!(
                    "note: signed with the development secret {}",
                    path.display()
                );
            }
            let keys =
                TokenKeys::with_keys(secrets.current.expose_secret().as_bytes(), &[], policy);
            let ttl = ttl.unwrap_or_else(|| keys.policy().max_ttl(role));
            println!("{}", keys.mint(&sub, role, ttl)?);
            Ok(())
        }
        Command::RevokeTokens { sub, reason, db } => revoke_tokens(&db, &sub, &reason).await,
        Command::Watch {
            query,
            variables,
            token_file,
            url,
        } => {
            let token = match token_file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the token from {}", path.display()))?
                    .trim()
                    .to_owned(),
                None => std::env::var("WALLET_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .context("no token: set WALLET_TOKEN or pass --token-file")?,
            };
            let variables = variables
                .map(|v| serde_json::from_str::<serde_json::Value>(&v))
                .transpose()
                .context("--variables is not JSON")?;
            let watch = wallet::watch::Watch {
                url,
                token,
                query,
                variables,
            };
            wallet::watch::run(watch, &mut std::io::stdout()).await
        }
        Command::Schema => {
            print!("{}", graphql::sdl());
            Ok(())
        }
    }
}

/// `wallet revoke-tokens`: records the revocation in the database every server reads.
async fn revoke_tokens(db: &DatabaseConfig, subject: &str, reason: &str) -> anyhow::Result<()> {
    use diesel_async::AsyncConnection as _;
    anyhow::ensure!(
        (1..=128).contains(&subject.len()),
        "--sub must be 1 to 128 bytes"
    );
    anyhow::ensure!(
        (1..=255).contains(&reason.chars().count()),
        "--reason must be 1 to 255 characters"
    );
    let database = db.resolve().await?;
    let mut conn = diesel_async::AsyncPgConnection::establish(&database.url)
        .await
        .context("connecting to the database (DATABASE_URL)")?;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let revocation = wallet::revocation::revoke(&mut conn, subject, &format!("cli:{user}"), reason)
        .await
        .context("recording the revocation (is the database migrated? `wallet migrate`)")?;
    println!(
        "revoked the tokens of {} issued before {}",
        revocation.subject,
        revocation
            .revoked_before
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    Ok(())
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
    let startup = config.check()?;
    let main_is_loopback = config.listen.ip().is_loopback();
    // `/metrics` on the main listener: behind the token when one is set; else open on a
    // loopback listener only, and not there at all when it has an address of its own.
    let metrics = match (&startup.metrics_token, config.metrics_listen) {
        (Some(token), _) => MetricsAccess::Token(token.clone()),
        (None, None) if main_is_loopback => MetricsAccess::Open,
        (None, _) => MetricsAccess::Hidden,
    };
    let database = config.db.resolve().await?;
    if let Some(cluster) = &database.cluster {
        println!("{}", cluster.describe());
    }
    let app = App::start(&AppConfig {
        database_url: database.url.clone(),
        pool_size: config.db.pool_size,
        read_pool_size: config.db.read_pool_size,
        session_limits: config.db.session_limits(),
        jwt_secret: startup.jwt_secret.clone(),
        jwt_previous_secrets: startup.jwt_previous_secrets.clone(),
        token_policy: startup.token_policy.clone(),
        revocation_refresh: config.revocation_refresh(),
        limits: config.graphql.limits(),
        request_timeout: config.request_timeout(),
        http: config.abuse.http(),
        ws: config.abuse.ws(),
        rates: config.abuse.rates(),
        seed: startup.seed.clone(),
        simulated_chain: startup.simulated_chain,
        ethereum: config.ethereum(),
        block_interval: (config.block_secs > 0).then(|| Duration::from_secs(config.block_secs)),
        reconcile_interval: (config.reconcile_secs > 0)
            .then(|| Duration::from_secs(config.reconcile_secs)),
        chain_poll: (config.chain_poll_ms > 0).then(|| Duration::from_millis(config.chain_poll_ms)),
        graphiql: startup.graphiql,
        metrics,
        withdrawal_fees: config.withdrawal_fees.0.clone(),
        holds: config.hold_policy()?,
        hold_expiry_poll: (config.hold_expiry_poll_ms > 0)
            .then(|| Duration::from_millis(config.hold_expiry_poll_ms)),
        event_retention: config.event_retention(),
        webhooks: config.webhook_config(startup.rules),
        webhook_targets: config.webhook_targets(startup.rules),
        stream: config.stream_config(),
        read_replicas: config.db.replica_config(),
    })
    .await
    .context("starting the service")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    if startup.graphiql {
        println!("GraphiQL:  http://{addr}/");
        println!("Example client: http://{addr}{}", wallet::examples::PATH);
    }
    println!("GraphQL:   http://{addr}/graphql");
    println!("Subscriptions (graphql-transport-ws): ws://{addr}/graphql/ws");
    // Only with the generated development secret, on development rules: a token signed
    // with a configured secret is a credential and never goes to stdout.
    if let Some(path) = &startup.development_secret {
        let policy = app.tokens.policy();
        let (user_ttl, operator_ttl) = (policy.max_user_ttl, policy.max_operator_ttl);
        println!("Demo tokens (development secret {}):", path.display());
        println!(
            "  user alice (valid {}): Bearer {}",
            show_duration(user_ttl),
            app.tokens.mint("alice", Role::User, user_ttl)?
        );
        println!(
            "  operator (valid {}):   Bearer {}",
            show_duration(operator_ttl),
            app.tokens
                .mint("back-office", Role::Operator, operator_ttl)?
        );
        println!(
            "  more: `wallet token --sub ID [--role operator]` or `cargo run -- token --sub ID \
             [--role operator]` (signs with the same secret)"
        );
    }
    tracing::info!(
        signing_key = app.tokens.signing_key_id(),
        previous_keys = ?app.tokens.previous_key_ids(),
        issuer = %app.tokens.policy().issuer,
        audience = %app.tokens.policy().audience,
        "token keys"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics_server = match config.metrics_listen {
        Some(metrics_addr) => {
            let listener = tokio::net::TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("binding {metrics_addr} (WALLET_METRICS_LISTEN)"))?;
            println!("Metrics:   http://{}/metrics", listener.local_addr()?);
            let mut stopped = stopped.clone();
            Some(tokio::spawn(server::serve(
                listener,
                wallet::metrics::router(app.clone()),
                app.http,
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    tracing::info!(%addr, "listening");
    let limits = app.http;
    server::serve(listener, http::router(app), limits, shutdown_signal()).await?;
    let _ = stop.send(true);
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    drop(stopped);
    // The service's own cluster, if it started one, stops after everything using it.
    if let Some(mut cluster) = database.cluster {
        cluster.stop();
    }
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
