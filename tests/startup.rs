//! Start-up: the database is created when missing and migrations are applied once, also
//! when several processes start at the same moment.

mod common;

use std::time::{Duration, Instant};

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

/// A strong secret, as `openssl rand -hex 32` makes.
const STRONG_SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// A valid mnemonic other than the tests' one (BIP39's "abandon … about").
const OTHER_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

/// How a run of the binary ended.
#[derive(Debug)]
struct Run {
    /// The exit status, when it exited by itself; `None` when it became ready (and was
    /// stopped by the test).
    exit: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn refused(&self, needle: &str) {
        assert!(
            self.exit.is_some_and(|code| code != 0),
            "expected a refusal to start, got {self:?}"
        );
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} in stderr: {}",
            self.stderr
        );
    }

    fn started(&self) {
        assert!(
            self.exit.is_none(),
            "expected the service to start: {self:?}"
        );
    }
}

/// Runs `wallet serve` in `dir` with only `env` (and PATH, and `dir` as HOME) set, until
/// it exits or answers `/healthz`.
async fn run_binary(dir: &std::path::Path, env: &[(&str, &str)]) -> Run {
    let port = common::process::free_port();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wallet"));
    command
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("WALLET_LOG", "error")
        .env("WALLET_BLOCK_SECS", "0")
        .env("WALLET_CHAIN_POLL_MS", "0")
        .env("WALLET_RECONCILE_SECS", "0")
        .env("WALLET_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        let value = value.replace("{port}", &port.to_string());
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the wallet binary runs");
    let health = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut exit = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            exit = Some(status.code().unwrap_or(-1));
            break;
        }
        if reqwest::get(&health).await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "neither ready nor exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if exit.is_none() {
        // Ready: stop it and read what it printed.
        child.start_kill().unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    Run {
        exit,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

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
            production(&[
                ("WALLET_JWT_SECRET", wallet::config::DEV_JWT_SECRET.into()),
                seed_file.clone(),
            ]),
            "built-in development secret",
        ),
        (
            production(&[("WALLET_JWT_SECRET", "x7Kp2".into()), seed_file.clone()]),
            "production needs at least 32",
        ),
        (
            production(&[("WALLET_JWT_SECRET", "a".repeat(64)), seed_file.clone()]),
            "looks guessable",
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
            production(&[secret.clone(), ("WALLET_SEED_FILE", loose)]),
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
    run.refused("no JWT secret");
    run.refused("no custody seed");
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .count(),
        2,
        "{}",
        run.stderr
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn development_defaults_stay_on_loopback() {
    let db = common::TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("wallet-dev-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = db.url.as_str();
    // Built-in secret and a generated seed on every interface: refused, saying what to set.
    let run = run_binary(
        &dir,
        &[("DATABASE_URL", url), ("WALLET_LISTEN", "0.0.0.0:{port}")],
    )
    .await;
    run.refused("reachable from other machines");
    run.refused("set WALLET_JWT_SECRET");
    // A real secret but still a generated seed: refused too.
    let run = run_binary(
        &dir,
        &[
            ("DATABASE_URL", url),
            ("WALLET_LISTEN", "0.0.0.0:{port}"),
            ("WALLET_JWT_SECRET", STRONG_SECRET),
        ],
    )
    .await;
    run.refused("a generated custody seed");
    // On loopback: the one-command development service, with demo tokens.
    let run = run_binary(&dir, &[("DATABASE_URL", url), ("WALLET_LOG", "warn")]).await;
    run.started();
    assert!(
        run.stdout
            .contains("Demo tokens (built-in development secret, valid 24h)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Bearer ey"), "{}", run.stdout);
    assert!(run.stdout.contains("GraphiQL"), "{}", run.stdout);
    // The generated seed is kept per user, not per working directory, private to its owner.
    let seed_file = dir.join(".local/share/wallet-service/dev-seed");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&seed_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The warnings are said, and logs on a pipe carry no terminal colour codes.
    assert!(run.stderr.contains("DEVELOPMENT secret"), "{}", run.stderr);
    assert!(run.stderr.contains("DEVELOPMENT seed"), "{}", run.stderr);
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
    // Started from another directory by the same user: the same seed, so it starts (the
    // database's fingerprint refuses any other).
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let home = dir.to_str().unwrap();
    run_binary(&elsewhere, &[("DATABASE_URL", url), ("HOME", home)])
        .await
        .started();
    // With a real secret configured, tokens are credentials: never printed.
    let run = run_binary(
        &dir,
        &[("DATABASE_URL", url), ("WALLET_JWT_SECRET", STRONG_SECRET)],
    )
    .await;
    run.started();
    assert!(!run.stdout.contains("Bearer"), "{}", run.stdout);
    // Configured secret and seed: any interface.
    let run = run_binary(
        &dir,
        &[
            ("DATABASE_URL", url),
            ("WALLET_LISTEN", "0.0.0.0:{port}"),
            ("WALLET_JWT_SECRET", STRONG_SECRET),
            ("WALLET_SEED", common::TEST_MNEMONIC),
        ],
    )
    .await;
    // The generated seed in `dir` made the database's fingerprint: another seed is refused.
    run.refused("not the one this database's wallets were derived from");
    std::fs::remove_dir_all(&dir).unwrap();
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

/// `wallet token` lasts as long as the demo tokens by default: a walkthrough paused for an
/// hour must not fail on one of them.
#[test]
fn cli_tokens_last_as_long_as_the_demo_tokens() {
    use base64::Engine;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wallet"))
        .args(["token", "--sub", "alice"])
        .env(
            "WALLET_JWT_SECRET",
            "a-test-secret-that-is-long-enough-0123456789",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let payload = token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 24 * 3600, "{claims}");
}

#[test]
fn cli_tokens_say_once_and_briefly_when_signed_with_the_built_in_secret() {
    let token = |secret: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wallet"));
        command
            .args(["token", "--sub", "alice"])
            .env_remove("WALLET_JWT_SECRET")
            .env_remove("WALLET_LOG");
        if let Some(secret) = secret {
            command.env("WALLET_JWT_SECRET", secret);
        }
        let out = command.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    assert_eq!(
        token(None),
        "note: signed with the built-in development secret\n"
    );
    assert_eq!(token(Some(STRONG_SECRET)), "");
}
