//! Start-up: the database is created when missing and migrations are applied once, also
//! when several processes start at the same moment.

mod common;

use std::time::Duration;

use common::binary::{Scratch, launch, mint, run_binary, wallet};
use serde_json::json;
use wallet::app::{App, AppConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_create_and_migrate_once() {
    // A name nobody created yet.
    let db = common::TestDb::new().await;
    let fresh_name = format!("{}_fresh", db.name);
    let url = db.url.replace(&db.name, &fresh_name);
    let config = AppConfig {
        database_url: url.clone(),
        pool_size: 2,
        ..common::Options::default().config(&url)
    };
    let starts = (0..4).map(|_| {
        let config = config.clone();
        tokio::spawn(async move { App::start(&config).await.map(|_| ()) })
    });
    for r in futures_util::future::join_all(starts).await {
        r.unwrap().expect("every process starts");
    }
    let fresh = common::TestDb {
        name: fresh_name,
        url,
    };
    let c = fresh.client().await;
    let versions = c
        .query("SELECT version FROM __diesel_schema_migrations", &[])
        .await
        .unwrap();
    let migration_dirs = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(
        versions.len(),
        migration_dirs,
        "each migration recorded once"
    );
    let currencies: i64 = c
        .query_one("SELECT count(*) FROM currencies", &[])
        .await
        .unwrap()
        .get(0);
    assert!(currencies >= 6);
    drop(db);
}

/// Strong secrets, as `openssl rand -hex 32` makes.
const STRONG_SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const STRONG_SECRET2: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
/// The development secret earlier versions compiled into the binary (public ever since).
const PREVIOUSLY_BUILT_IN_SECRET: &str = "wallet-development-secret-do-not-use-in-production";
/// A valid mnemonic other than the tests' one (BIP39's "abandon … about").
const OTHER_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

/// A scratch directory with a seed file of the given mode.
fn seed_dir(mode: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("wallet-start-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = dir.join("seed");
    std::fs::write(&seed, format!("{}\n", common::TEST_MNEMONIC)).unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_refuses_unsafe_settings() {
    let db = common::TestDb::new().await;
    let (dir, seed) = seed_dir(0o600);
    let seed = seed.to_str().unwrap().to_owned();
    let url = db.url.as_str();
    let production = |extra: &[(&'static str, String)]| {
        let mut env: Vec<(&str, String)> = vec![
            ("WALLET_ENV", "production".into()),
            ("DATABASE_URL", url.to_owned()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    let loose = {
        let (_, loose) = seed_dir(0o644);
        loose.to_str().unwrap().to_owned()
    };
    let link = dir.join("link");
    std::os::unix::fs::symlink(&seed, &link).unwrap();
    let link = link.to_str().unwrap().to_owned();
    let secret = ("WALLET_JWT_SECRET", STRONG_SECRET.to_owned());
    let seed_file = ("WALLET_SEED_FILE", seed.clone());
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            production(std::slice::from_ref(&seed_file)),
            "no JWT secret",
        ),
        (
            // The development secret earlier versions compiled into the binary: public.
            production(&[
                ("WALLET_JWT_SECRET", PREVIOUSLY_BUILT_IN_SECRET.into()),
                seed_file.clone(),
            ]),
            "WALLET_JWT_SECRET: is the development secret earlier versions built in",
        ),
        (
            production(&[("WALLET_JWT_SECRET", "x7Kp2".into()), seed_file.clone()]),
            "production needs at least 32",
        ),
        (
            production(&[("WALLET_JWT_SECRET", "a".repeat(64)), seed_file.clone()]),
            "WALLET_JWT_SECRET: looks guessable",
        ),
        (
            // A previous secret verifies tokens too: it must be as strong.
            production(&[
                secret.clone(),
                seed_file.clone(),
                (
                    "WALLET_JWT_PREVIOUS_SECRETS",
                    format!("{STRONG_SECRET2}, short"),
                ),
            ]),
            "WALLET_JWT_PREVIOUS_SECRETS entry 2: is 5 bytes",
        ),
        (
            production(&[
                secret.clone(),
                seed_file.clone(),
                ("WALLET_JWT_ISSUER", " ".into()),
            ]),
            "WALLET_JWT_ISSUER must be 1 to 256 bytes",
        ),
        (
            production(&[
                secret.clone(),
                seed_file.clone(),
                ("WALLET_SIMULATED_CHAIN", "true".into()),
            ]),
            "a simulated chain cannot run in production",
        ),
        (production(std::slice::from_ref(&secret)), "no custody seed"),
        (
            production(&[secret.clone(), ("WALLET_SEED_FILE", link)]),
            "is a symlink",
        ),
        (
            production(&[secret.clone(), ("WALLET_SEED_FILE", loose.clone())]),
            "chmod 600",
        ),
        (
            production(&[
                secret.clone(),
                seed_file.clone(),
                ("WALLET_METRICS_TOKEN", "short".into()),
            ]),
            "WALLET_METRICS_TOKEN must be at least 16 bytes",
        ),
    ];
    let runs = futures_util::future::join_all(cases.iter().map(|(env, _)| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let dir = dir.clone();
        async move { run_binary(&dir, &env).await }
    }))
    .await;
    for (run, (_, needle)) in runs.iter().zip(&cases) {
        run.refused(needle);
    }
    // Several problems at once: one line each.
    let run = run_binary(&dir, &[("WALLET_ENV", "production"), ("DATABASE_URL", url)]).await;
    run.refused("no JWT secret (WALLET_ENV=production): set WALLET_JWT_SECRET_FILE");
    run.refused("no custody seed (WALLET_ENV=production): set WALLET_SEED_FILE");
    assert_eq!(run.errors().len(), 2, "{}", run.stderr);
    // Every unsafe setting together — a guessable secret read from a file, a weak previous
    // secret, an empty issuer, the simulator, a seed file others can read, a short metrics
    // token, a node without a chain id, no DATABASE_URL: all in the first refusal, one
    // line each, each naming the variable or file it comes from.
    let guessable = dir.join("jwt-secret");
    std::fs::write(&guessable, "a".repeat(64)).unwrap();
    std::fs::set_permissions(
        &guessable,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let guessable = guessable.to_str().unwrap();
    let run = run_binary(
        &dir,
        &[
            ("WALLET_ENV", "production"),
            ("WALLET_JWT_SECRET_FILE", guessable),
            ("WALLET_JWT_PREVIOUS_SECRETS", "short"),
            ("WALLET_JWT_ISSUER", " "),
            ("WALLET_SIMULATED_CHAIN", "true"),
            ("WALLET_SEED_FILE", &loose),
            ("WALLET_METRICS_TOKEN", "short"),
            ("WALLET_ETHEREUM_RPC_URL", "https://node.example:8545"),
        ],
    )
    .await;
    let expected = [
        format!("WALLET_JWT_SECRET_FILE {guessable}: looks guessable"),
        "WALLET_JWT_PREVIOUS_SECRETS entry 1: is 5 bytes".into(),
        "WALLET_JWT_ISSUER must be 1 to 256 bytes".into(),
        "WALLET_SIMULATED_CHAIN=true: a simulated chain cannot run in production".into(),
        format!("WALLET_SEED_FILE {loose}: must be readable by its owner only"),
        "WALLET_METRICS_TOKEN must be at least 16 bytes".into(),
        "WALLET_ETHEREUM_CHAIN_ID is required".into(),
        "DATABASE_URL is not set (WALLET_ENV=production)".into(),
    ];
    for needle in &expected {
        run.refused(needle);
    }
    assert_eq!(run.errors().len(), expected.len(), "{}", run.stderr);
    // A secret file others can read is refused like a seed file.
    let readable = {
        let (_, readable) = seed_dir(0o644);
        std::fs::write(&readable, STRONG_SECRET).unwrap();
        readable.to_str().unwrap().to_owned()
    };
    run_binary(
        &dir,
        &[
            ("WALLET_ENV", "production"),
            ("DATABASE_URL", url),
            ("WALLET_JWT_SECRET_FILE", &readable),
            ("WALLET_SEED_FILE", &seed),
        ],
    )
    .await
    .refused(&format!(
        "WALLET_JWT_SECRET_FILE {readable}: must be readable by its owner only (mode 644)"
    ));

    // Owned by another user (only root can give a file away).
    if rustix::process::geteuid().is_root() {
        let (_, foreign) = seed_dir(0o600);
        std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
        let foreign = foreign.to_str().unwrap().to_owned();
        run_binary(
            &dir,
            &[
                ("WALLET_ENV", "production"),
                ("DATABASE_URL", url),
                ("WALLET_JWT_SECRET", STRONG_SECRET),
                ("WALLET_SEED_FILE", &foreign),
            ],
        )
        .await
        .refused("not by the service's user");
    }

    // A safe production configuration starts: no token printed, no GraphiQL, no
    // introspection, no crypto without a chain.
    let port_env = [
        ("WALLET_ENV", "production"),
        ("DATABASE_URL", url),
        ("WALLET_JWT_SECRET", STRONG_SECRET),
        ("WALLET_SEED_FILE", seed.as_str()),
    ];
    let run = run_binary(&dir, &port_env).await;
    run.started();
    assert!(!run.stdout.contains("Bearer"), "{}", run.stdout);
    assert!(!run.stdout.contains("GraphiQL"), "{}", run.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Signs `claims` with `secret` under the key id `kid` (a forger who knows a secret sets
/// every claim and header field as a genuine token has them).
fn forge(secret: &str, kid: &str, claims: serde_json::Value) -> String {
    let header = jsonwebtoken::Header {
        kid: Some(kid.to_owned()),
        ..Default::default()
    };
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The one-command development service on loopback: a JWT secret generated at first start
/// beside the development seed (both private to their owner) and reused, demo tokens and
/// `wallet token` signed with it, and nothing signed with the secret earlier versions
/// built in accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn development_defaults_stay_on_loopback() {
    let db = common::TestDb::new().await;
    let home = Scratch::new("wallet-dev");
    let dir = home.path();
    let url = db.url.as_str();
    let private = dir.join(".local/share/wallet-service");
    let secret_file = private.join("dev-jwt-secret");
    let server = launch(dir, &[("DATABASE_URL", url), ("WALLET_LOG", "warn")]).await;
    server
        .stdout_line(&format!(
            "Demo tokens (development secret {}):",
            secret_file.display()
        ))
        .await;
    server.stdout_line("GraphiQL:  http://127.0.0.1:").await;
    let alice = server.printed_token("user alice (valid 24h):").await;
    let operator = server.printed_token("operator (valid 1h):").await;
    assert_eq!(server.whoami(&alice).await, (200, Some("alice".into())));
    assert_eq!(
        server.whoami(&operator).await,
        (200, Some("back-office".into()))
    );
    // Signed with the secret earlier versions built in: refused, under that secret's key
    // id or under the one genuine tokens carry.
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"sub": "back-office", "role": "operator", "iat": now, "exp": now + 600,
                        "iss": wallet::auth::DEVELOPMENT_ISSUER,
                        "aud": wallet::auth::DEVELOPMENT_AUDIENCE});
    let genuine_kid = jsonwebtoken::decode_header(&operator).unwrap().kid.unwrap();
    for kid in [
        wallet::auth::key_id(PREVIOUSLY_BUILT_IN_SECRET.as_bytes()),
        genuine_kid,
    ] {
        let forged = forge(PREVIOUSLY_BUILT_IN_SECRET, &kid, claims.clone());
        let (status, body) = server
            .gql(
                Some(&forged),
                common::DEPOSIT,
                json!({"w": "V2FsbGV0OjE", "a": "1000000.00", "k": "free-money"}),
            )
            .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(common::error_code(&body), "UNAUTHENTICATED");
    }
    // `wallet token` signs with the same secret, read from its file.
    let bob = mint(dir, "bob", &[], &[]).unwrap();
    assert_eq!(server.whoami(&bob).await, (200, Some("bob".into())));
    let run = server.stop().await;
    run.started();
    // Kept per user, private to their owner, beside the development seed.
    assert_eq!(mode(&private), 0o700);
    assert_eq!(mode(&secret_file), 0o600);
    assert_eq!(mode(&private.join("dev-seed")), 0o600);
    // The warnings are said, and logs on a pipe carry no terminal colour codes.
    assert!(run.stderr.contains("DEVELOPMENT secret"), "{}", run.stderr);
    assert!(run.stderr.contains("DEVELOPMENT seed"), "{}", run.stderr);
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);

    // Started again from another directory by the same user: the same secret and seed
    // (the database's fingerprint refuses any other seed), so earlier tokens still work.
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let server = launch(
        &elsewhere,
        &[("DATABASE_URL", url), ("HOME", dir.to_str().unwrap())],
    )
    .await;
    assert_eq!(server.whoami(&alice).await, (200, Some("alice".into())));
    server.stop().await.started();
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);

    // With a real secret configured, tokens are credentials: never printed; and the
    // development secret's tokens are unknown.
    let server = launch(
        dir,
        &[("DATABASE_URL", url), ("WALLET_JWT_SECRET", STRONG_SECRET)],
    )
    .await;
    assert_eq!(server.whoami(&alice).await.0, 401);
    let run = server.stop().await;
    run.started();
    assert!(!run.stdout.contains("Bearer"), "{}", run.stdout);
}

/// Any listener but loopback gets production rules whatever `WALLET_ENV` says, with every
/// problem in the first refusal; development there takes an explicit opt-in, said loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_listeners_get_production_rules() {
    let db = common::TestDb::new().await;
    let home = Scratch::new("wallet-public");
    let dir = home.path();
    let url = db.url.as_str();
    let public = ("WALLET_LISTEN", "0.0.0.0:{port}");
    // Nothing configured: what to set, and how else to start.
    let run = run_binary(dir, &[("DATABASE_URL", url), public]).await;
    run.refused("is not a loopback address, so production rules apply whatever WALLET_ENV says");
    run.refused("listen on 127.0.0.1, or (a development container only) set WALLET_ALLOW_DEVELOPMENT_ON_PUBLIC_LISTENER=true");
    run.refused("no JWT secret (WALLET_LISTEN=0.0.0.0:");
    run.refused("no custody seed (WALLET_LISTEN=0.0.0.0:");
    assert_eq!(run.errors().len(), 3, "{}", run.stderr);
    // Nothing development-only was generated for it.
    assert!(!dir.join(".local/share/wallet-service").exists());
    // `WALLET_ENV=development` changes nothing: a short secret, the simulator and no seed
    // are refused together.
    let run = run_binary(
        dir,
        &[
            ("DATABASE_URL", url),
            public,
            ("WALLET_ENV", "development"),
            ("WALLET_JWT_SECRET", "x7Kp2"),
            ("WALLET_SIMULATED_CHAIN", "true"),
        ],
    )
    .await;
    run.refused("WALLET_JWT_SECRET: is 5 bytes; production needs at least 32");
    run.refused("WALLET_SIMULATED_CHAIN=true: a simulated chain cannot run in production");
    run.refused("no custody seed");
    assert_eq!(run.errors().len(), 4, "{}", run.stderr);

    // Safe settings start, under production rules: no demo tokens, no GraphiQL, no
    // introspection, production issuer and audience.
    let seed = home.file("seed", &format!("{}\n", common::TEST_MNEMONIC), 0o600);
    let server = launch(
        dir,
        &[
            ("DATABASE_URL", url),
            public,
            ("WALLET_JWT_SECRET", STRONG_SECRET),
            ("WALLET_SEED_FILE", &seed),
        ],
    )
    .await;
    let (_, body) = server
        .gql(None, "{ __schema { queryType { name } } }", json!({}))
        .await;
    assert!(body["data"]["__schema"].is_null(), "{body}");
    // `wallet token` under the same settings mints what it accepts; the same secret
    // under development rules mints a development token, which it refuses.
    let same = [
        ("WALLET_LISTEN", "0.0.0.0:8080"),
        ("WALLET_JWT_SECRET", STRONG_SECRET),
    ];
    let production = mint(dir, "alice", &[], &same).unwrap();
    assert_eq!(
        server.whoami(&production).await,
        (200, Some("alice".into()))
    );
    let development = mint(dir, "alice", &[], &[("WALLET_JWT_SECRET", STRONG_SECRET)]).unwrap();
    assert_eq!(server.whoami(&development).await.0, 401);
    let run = server.stop().await;
    run.started();
    assert!(!run.stdout.contains("Bearer"), "{}", run.stdout);
    assert!(!run.stdout.contains("GraphiQL"), "{}", run.stdout);

    // The opt-in for a development container: development rules, logged loudly.
    let server = launch(
        dir,
        &[
            ("DATABASE_URL", url),
            public,
            ("WALLET_ALLOW_DEVELOPMENT_ON_PUBLIC_LISTENER", "true"),
            ("WALLET_SEED", common::TEST_MNEMONIC),
            ("WALLET_LOG", "warn"),
        ],
    )
    .await;
    let alice = server.printed_token("user alice").await;
    assert_eq!(server.whoami(&alice).await, (200, Some("alice".into())));
    let run = server.stop().await;
    run.started();
    assert!(run.stdout.contains("GraphiQL"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("DEVELOPMENT RULES ON A PUBLIC LISTENER"),
        "{}",
        run.stderr
    );
    // Ignored in production.
    let run = run_binary(
        dir,
        &[
            ("DATABASE_URL", url),
            public,
            ("WALLET_ENV", "production"),
            ("WALLET_ALLOW_DEVELOPMENT_ON_PUBLIC_LISTENER", "true"),
        ],
    )
    .await;
    run.refused("no JWT secret (WALLET_ENV=production)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_seed_is_refused_in_any_mode() {
    let db = common::TestDb::new().await;
    let dir = std::env::temp_dir();
    let url = db.url.as_str();
    let with_seed = |mnemonic| {
        vec![
            ("DATABASE_URL", url),
            ("WALLET_JWT_SECRET", STRONG_SECRET),
            ("WALLET_SEED", mnemonic),
        ]
    };
    run_binary(&dir, &with_seed(common::TEST_MNEMONIC))
        .await
        .started();
    run_binary(&dir, &with_seed(OTHER_MNEMONIC))
        .await
        .refused("restore the original seed");
    let mut production = with_seed(OTHER_MNEMONIC);
    production.push(("WALLET_ENV", "production"));
    run_binary(&dir, &production)
        .await
        .refused("restore the original seed");
    // The right seed still starts.
    run_binary(&dir, &with_seed(common::TEST_MNEMONIC))
        .await
        .started();

    // A database from before fingerprints: its wallets' addresses are re-derived.
    let other = common::TestDb::new().await;
    let app = App::start(&common::Options::default().config(&other.url))
        .await
        .unwrap();
    let alice = app
        .tokens
        .mint("alice", wallet::auth::Role::User, Duration::from_secs(60))
        .unwrap();
    let router = wallet::http::router(app.clone());
    let created = common::gql_to(
        &router,
        Some(&alice),
        common::CREATE_CRYPTO,
        serde_json::json!({"c": "BTC"}),
    )
    .await;
    assert!(created["errors"].is_null(), "{created}");
    drop((router, app));
    other
        .client()
        .await
        .batch_execute("DELETE FROM custody_fingerprint")
        .await
        .unwrap();
    run_binary(
        &dir,
        &[
            ("DATABASE_URL", other.url.as_str()),
            ("WALLET_JWT_SECRET", STRONG_SECRET),
            ("WALLET_SEED", OTHER_MNEMONIC),
        ],
    )
    .await
    .refused("restore the original seed");
}

#[test]
fn configuration_never_shows_secrets() {
    let config = common::Options::default().config("postgres://localhost/x");
    let shown = format!("{config:?}");
    assert!(!shown.contains(common::JWT_SECRET), "{shown}");
    assert!(!shown.contains("junk"), "{shown}");
    let access =
        wallet::app::MetricsAccess::Token("metrics-token-of-at-least-16".to_owned().into());
    assert!(!format!("{access:?}").contains("metrics-token"));
}

/// The lifetime (`exp - iat`) of a token.
fn lifetime(token: &str) -> i64 {
    use base64::Engine;
    let payload = token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap()
}

/// `wallet token` lasts as long as its role allows by default: a user token as long as
/// the demo tokens (a walkthrough paused for an hour must not fail on one of them), an
/// operator token an hour; longer is refused, saying which setting bounds it.
#[test]
fn cli_tokens_last_as_long_as_their_role_allows() {
    let home = Scratch::new("wallet-cli");
    let env = [("WALLET_JWT_SECRET", STRONG_SECRET)];
    let user = mint(home.path(), "alice", &[], &env).unwrap();
    assert_eq!(lifetime(&user), 24 * 3600);
    let operator = mint(home.path(), "ops", &["--role", "operator"], &env).unwrap();
    assert_eq!(lifetime(&operator), 3600);
    let refused = mint(
        home.path(),
        "ops",
        &["--role", "operator", "--ttl", "2h"],
        &env,
    )
    .unwrap_err();
    assert!(
        refused.contains(
            "operator tokens may last at most 1h (WALLET_JWT_MAX_OPERATOR_TTL); 2h asked for"
        ),
        "{refused}"
    );
    let refused = mint(home.path(), "alice", &["--ttl", "25h"], &env).unwrap_err();
    assert!(refused.contains("WALLET_JWT_MAX_USER_TTL"), "{refused}");
}

#[test]
fn cli_tokens_say_once_and_briefly_when_signed_with_the_development_secret() {
    let home = Scratch::new("wallet-cli");
    let out = wallet(home.path(), &["token", "--sub", "alice"], &[]);
    assert!(out.success, "{}", out.stderr);
    let file = home
        .path()
        .join(".local/share/wallet-service/dev-jwt-secret");
    assert_eq!(
        out.stderr,
        format!(
            "note: signed with the development secret {}\n",
            file.display()
        )
    );
    assert_eq!(mode(&file), 0o600);
    let out = wallet(
        home.path(),
        &["token", "--sub", "alice"],
        &[("WALLET_JWT_SECRET", STRONG_SECRET)],
    );
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    // Production rules and no secret: refused, saying what to set; nothing generated.
    let fresh = Scratch::new("wallet-cli");
    let out = wallet(
        fresh.path(),
        &["token", "--sub", "alice"],
        &[("WALLET_ENV", "production")],
    );
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("no JWT secret (WALLET_ENV=production): set WALLET_JWT_SECRET_FILE"),
        "{}",
        out.stderr
    );
    assert!(!fresh.path().join(".local").exists());
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// A port nothing listens on (taken and let go).
fn closed_port() -> u16 {
    let port = common::process::free_port();
    assert!(!answers(port));
    port
}

/// No DATABASE_URL and nothing on the default address: the service makes its own cluster,
/// serves from it, stops it on shutdown, and uses the same one at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_database_server_the_service_runs_its_own() {
    let home = Scratch::new("wallet-own-pg");
    // Run by root, the cluster belongs to the postgres user, who must reach the directory.
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = home.path().join("data");
    let default = format!("postgres://postgres@127.0.0.1:{}/wallet", closed_port());
    let env = [
        ("WALLET_DEFAULT_DATABASE_URL", default.as_str()),
        ("WALLET_DATA_DIR", data.to_str().unwrap()),
    ];
    let cluster = data.join("postgres");

    let server = launch(home.path(), &env).await;
    let line = server.stdout_line("Database:").await;
    assert!(
        line.contains(&format!("own PostgreSQL cluster in {}", cluster.display()))
            && line.contains("set DATABASE_URL"),
        "{line}"
    );
    let port: u16 = std::fs::read_to_string(cluster.join("wallet-port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(answers(port), "the cluster listens on its own port");
    assert_eq!(mode(&cluster), 0o700, "only its owner reads the cluster");
    let operator = server.printed_token("operator").await;
    let (_, body) = server
        .gql(
            Some(&operator),
            "mutation { createWallet(input: {currency: \"USD\", userId: \"alice\"}) { id } }",
            json!({}),
        )
        .await;
    let wallet_id = body["data"]["createWallet"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let (_, body) = server
        .gql(
            Some(&operator),
            common::DEPOSIT,
            json!({"w": wallet_id, "a": "12.34", "k": "own-cluster-1"}),
        )
        .await;
    assert_eq!(body["data"]["deposit"]["balanceAfter"], "12.34", "{body}");
    let run = server.terminate().await;
    assert_eq!(run.exit, Some(0), "{run:?}");
    assert!(!answers(port), "stopped with the service");
    assert!(!cluster.join("postmaster.pid").exists());

    // The next start uses the same cluster: the deposit is there.
    let server = launch(home.path(), &env).await;
    let operator = server.printed_token("operator").await;
    let (_, body) = server
        .gql(
            Some(&operator),
            "query($w: ID!) { wallet(id: $w) { balance } }",
            json!({"w": wallet_id}),
        )
        .await;
    assert_eq!(body["data"]["wallet"]["balance"], "12.34", "{body}");
    assert!(answers(port));
    server.terminate().await;
    assert!(!answers(port));

    // A first start interrupted before the cluster was finished (no port file yet) is
    // made again from nothing, not refused.
    std::fs::remove_file(cluster.join("wallet-port")).unwrap();
    let server = launch(home.path(), &env).await;
    server.stdout_line("Database:").await;
    assert!(cluster.join("wallet-port").is_file());
    server.terminate().await;

    // No PostgreSQL programs anywhere it looks: how to install them, or what to set.
    let empty = home.path().join("no-postgres");
    std::fs::create_dir_all(&empty).unwrap();
    let run = run_binary(
        home.path(),
        &[
            ("WALLET_DEFAULT_DATABASE_URL", default.as_str()),
            ("WALLET_DATA_DIR", data.to_str().unwrap()),
            ("PATH", empty.to_str().unwrap()),
            ("WALLET_POSTGRES_BIN", empty.to_str().unwrap()),
        ],
    )
    .await;
    run.refused("no PostgreSQL server programs (initdb, pg_ctl) were found");
    run.refused("Debian/Ubuntu: sudo apt-get install postgresql");
    run.refused("macOS:         brew install postgresql@16");
    run.refused("or set DATABASE_URL to a server you run");

    // A server that does not answer at DATABASE_URL: where, which database, which
    // variable — and never the password.
    let closed = closed_port();
    let url = format!("postgres://postgres:hunter2secret@127.0.0.1:{closed}/books");
    let run = run_binary(home.path(), &[("DATABASE_URL", url.as_str())]).await;
    run.refused(&format!(
        "cannot connect to PostgreSQL at 127.0.0.1:{closed} (database books, user postgres)"
    ));
    run.refused("Set DATABASE_URL to a server that answers");
    assert!(!run.stderr.contains("hunter2secret"), "{}", run.stderr);
}
