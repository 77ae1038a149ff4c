//! The Ethereum node is verified, not trusted, and never a single point of failure: the
//! service starts and serves without it, connects when it comes, refuses a node on
//! another chain or with other token decimals than configured, stops using one that
//! changes chains, talks to it over TLS (a private CA's certificate too), and never shows
//! the credentials in its URL. Real binary, real anvil, a real TLS endpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::anvil::{Anvil, CHAIN_ID, DEV_ACCOUNT, DEV_ACCOUNT_2, ETHER};
use common::ethereum::{connected, eth_wallet, on, pass, with_test_token};
use common::process::{free_port, post};
use common::{CRYPTO_WITHDRAW, JWT_SECRET, TestApp, TestDb, error_code, wait_until};
use serde_json::{Value, json};
use wallet::app::App;
use wallet::auth::{Role, TokenKeys};
use wallet::chain::Chain as _;

/// The password in the node URLs of these tests: it must never be seen.
const PASSWORD: &str = "n0de-Pa55word-never-shown";
/// A seed whose first addresses are not anvil's funded development accounts.
const SEED: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                    abandon abandon about";
const CREATE_WALLET: &str =
    "mutation($c: String!) { createWallet(input: {currency: $c}) { id address } }";
const BALANCE: &str = "query($w: ID!) { wallet(id: $w) { balance } }";

/// A `wallet serve` process with its output in files; killed when dropped.
struct Service {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Service {
    /// Starts the binary with the tests' secret and seed, and `env`.
    fn spawn(database_url: &str, env: &[(&str, &str)]) -> Service {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wallet-node-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wallet"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("DATABASE_URL", database_url)
            .env("WALLET_LISTEN", format!("127.0.0.1:{port}"))
            .env("WALLET_JWT_SECRET", JWT_SECRET)
            .env("WALLET_SEED", SEED)
            .env("WALLET_BLOCK_SECS", "0")
            .env("WALLET_RECONCILE_SECS", "0")
            .env("WALLET_RATE_LIMIT_PER_SEC", "0")
            .env("WALLET_LOG", "info")
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("stdout")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr")).unwrap(),
            ));
        for (name, value) in env {
            command.env(name, value);
        }
        Service {
            child: command.spawn().expect("the wallet binary runs"),
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Waits until it exits by itself: its status and what it printed.
    async fn exit(mut self) -> (i32, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the service exits");
        (status.code().unwrap_or(-1), self.output())
    }

    /// Everything it printed so far, stdout then stderr.
    fn output(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stdout"), read("stderr"))
    }

    async fn readyz(&self) -> (u16, String) {
        match reqwest::get(format!("{}/readyz", self.base)).await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Waits until `/readyz` answers 200 with a line `line`; returns the body.
    async fn ready_with(&self, line: &str, limit: Duration) -> String {
        let give_up = tokio::time::Instant::now() + limit;
        loop {
            let (status, body) = self.readyz().await;
            if status == 200 && body.lines().any(|l| l.starts_with(line)) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "/readyz did not say {line:?} within {limit:?}: {status} {body}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn token(sub: &str, role: Role) -> String {
    TokenKeys::new(JWT_SECRET.as_bytes())
        .mint(sub, role, Duration::from_secs(600))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_down_at_start_leaves_the_service_up_and_its_password_unseen() {
    let db = TestDb::new().await;
    let node_port = free_port();
    let url = format!("http://wallet:{PASSWORD}@127.0.0.1:{node_port}/");
    let service = Service::spawn(
        &db.url,
        &[
            ("WALLET_ETHEREUM_RPC_URL", &url),
            ("WALLET_ETHEREUM_CHAIN_ID", &CHAIN_ID.to_string()),
            ("WALLET_CHAIN_POLL_MS", "200"),
        ],
    );
    // Up and ready, with ethereum unavailable and bitcoin (simulated) served.
    let mut seen = service
        .ready_with("ethereum: unavailable", Duration::from_secs(60))
        .await;
    assert!(seen.contains("bitcoin: ok"), "{seen}");

    let http = reqwest::Client::new();
    let (alice, operator) = (token("alice", Role::User), token("ops", Role::Operator));
    let gql = async |token: &str, query: &str, variables: Value| {
        post(&http, &service.base, token, query, variables)
            .await
            .unwrap()
    };
    // Fiat serves: a deposit and a withdrawal.
    let usd = gql(&alice, CREATE_WALLET, json!({"c": "USD"})).await;
    let usd = usd["data"]["createWallet"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deposit = gql(
        &operator,
        common::DEPOSIT,
        json!({"w": usd, "a": "100.00", "k": "d"}),
    )
    .await;
    assert_eq!(
        deposit["data"]["deposit"]["status"], "COMPLETED",
        "{deposit}"
    );
    let withdraw = gql(
        &alice,
        common::WITHDRAW,
        json!({"w": usd, "a": "30.00", "k": "w"}),
    )
    .await;
    assert_eq!(
        withdraw["data"]["withdraw"]["status"], "COMPLETED",
        "{withdraw}"
    );
    let balance = gql(&operator, BALANCE, json!({"w": usd})).await;
    assert_eq!(balance["data"]["wallet"]["balance"], "70.00");

    // An ETH wallet can be opened (its address is derived here); what needs the node is
    // CHAIN_UNAVAILABLE.
    let eth = gql(&alice, CREATE_WALLET, json!({"c": "ETH"})).await;
    let (eth, address) = (
        eth["data"]["createWallet"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        eth["data"]["createWallet"]["address"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let withdrawal = gql(
        &alice,
        CRYPTO_WITHDRAW,
        json!({"w": eth, "to": DEV_ACCOUNT_2, "a": "0.1", "k": "x"}),
    )
    .await;
    assert_eq!(error_code(&withdrawal), "CHAIN_UNAVAILABLE", "{withdrawal}");
    let processed = gql(
        &alice,
        "mutation($w: ID!, $h: String!) {
           processCryptoDeposit(input: {walletId: $w, txHash: $h}) { id } }",
        json!({"w": eth, "h": format!("0x{}", "ab".repeat(32))}),
    )
    .await;
    assert_eq!(error_code(&processed), "CHAIN_UNAVAILABLE", "{processed}");
    seen.push_str(&format!("{usd}{deposit}{withdraw}{withdrawal}{processed}"));

    // The node comes: the network serves without a restart, and a deposit is credited.
    let anvil = Anvil::start_on(node_port, CHAIN_ID, None).await;
    seen.push_str(
        &service
            .ready_with("ethereum: ok", Duration::from_secs(90))
            .await,
    );
    anvil
        .send_from(DEV_ACCOUNT, Some(&address), &[], ETHER)
        .await;
    anvil.mine(6).await;
    wait_until(
        "the deposit is credited",
        Duration::from_secs(30),
        || async {
            let balance = gql(&operator, BALANCE, json!({"w": eth})).await;
            balance["data"]["wallet"]["balance"] == "1.000000000000000000"
        },
    )
    .await;

    // The URL went to the logs, redacted; the password nowhere.
    let output = service.output();
    assert!(
        output.contains(&format!("http://***@127.0.0.1:{node_port}/")),
        "the node's URL is logged, redacted: {output}"
    );
    assert!(output.contains("unreachable"), "{output}");
    for (what, text) in [("output", &output), ("answers", &seen)] {
        assert!(
            !text.contains(PASSWORD),
            "the password in the {what}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_url_that_is_unsafe_or_unverifiable_refuses_the_start() {
    let db = TestDb::new().await;
    let seed_dir = std::env::temp_dir().join(format!("wallet-seed-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&seed_dir).unwrap();
    let seed = seed_dir.join("seed");
    std::fs::write(&seed, format!("{SEED}\n")).unwrap();
    std::fs::set_permissions(&seed, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let seed = seed.to_str().unwrap();
    let local = format!("http://wallet:{PASSWORD}@127.0.0.1:{}/", free_port());
    let remote = format!("http://wallet:{PASSWORD}@10.11.12.13:8545/");
    let strong = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let production = [
        ("WALLET_ENV", "production"),
        ("WALLET_JWT_SECRET", strong),
        ("WALLET_SEED_FILE", seed),
    ];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        // Production: the chain id is required.
        (
            [&production[..], &[("WALLET_ETHEREUM_RPC_URL", &local)]].concat(),
            "WALLET_ETHEREUM_CHAIN_ID is required when WALLET_ENV=production",
        ),
        // Plain HTTP to another machine: in production and in development.
        (
            [
                &production[..],
                &[
                    ("WALLET_ETHEREUM_RPC_URL", &remote),
                    ("WALLET_ETHEREUM_CHAIN_ID", "1"),
                ],
            ]
            .concat(),
            "is plain HTTP to another machine",
        ),
        (
            vec![("WALLET_ETHEREUM_RPC_URL", &remote)],
            "WALLET_ETHEREUM_RPC_URL=http://***@10.11.12.13:8545/ is plain HTTP to another machine",
        ),
        // A CA file that holds no certificate.
        (
            vec![
                ("WALLET_ETHEREUM_RPC_URL", "https://localhost:1/"),
                ("WALLET_ETHEREUM_CA_FILE", seed),
            ],
            "no PEM certificate",
        ),
    ];
    for (env, says) in cases {
        let (status, output) = Service::spawn(&db.url, &env).exit().await;
        assert_ne!(status, 0, "{env:?}: {output}");
        assert!(
            output.contains(says),
            "{env:?}: expected {says:?} in {output}"
        );
        assert!(!output.contains(PASSWORD), "{output}");
    }
    let _ = std::fs::remove_dir_all(seed_dir);
}

/// `/readyz` of an in-process app: 200, and its text.
async fn readyz(t: &TestApp) -> String {
    let response = tower::ServiceExt::oneshot(
        t.router.clone(),
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::OK);
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Waits until `/readyz` has a line starting with `line`.
async fn wait_readyz(t: &TestApp, line: &str) {
    wait_until(
        &format!("/readyz says {line:?}"),
        Duration::from_secs(30),
        || async { readyz(t).await.lines().any(|l| l.starts_with(line)) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_changes_chains_is_stopped_until_it_serves_the_chain_again() {
    let state =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("anvil-{}.json", uuid::Uuid::new_v4()));
    let mut anvil = Anvil::start_keeping(Some(state.clone())).await;
    let t = TestApp::with(on(&anvil)).await;
    let (wallet, address) = eth_wallet(&t, "alice").await;
    anvil
        .send_from(DEV_ACCOUNT, Some(&address), &[], ETHER)
        .await;
    anvil.mine(6).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    let body = t
        .gql(
            Some(&t.user("alice")),
            CRYPTO_WITHDRAW,
            json!({"w": wallet, "to": DEV_ACCOUNT_2, "a": "0.1", "k": "w-1"}),
        )
        .await;
    assert_eq!(
        body["data"]["cryptoWithdraw"]["status"], "PENDING",
        "{body}"
    );

    // Another chain is served on the node's port, with a deposit to the wallet's address.
    anvil.stop();
    let other = Anvil::start_on(anvil.port(), 1, None).await;
    let foreign = other
        .send_from(DEV_ACCOUNT, Some(&address), &[], 5 * ETHER)
        .await;
    other.mine(10).await;
    // The worker checks the chain before its work: it does nothing on this node.
    let worker = t.app.chain_worker().unwrap();
    for _ in 0..3 {
        assert!(worker.pass().await.is_err());
    }
    let c = t.db.client().await;
    let attempts: i64 = c
        .query_one("SELECT count(*) FROM withdrawal_attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 0, "no withdrawal signed for another chain");
    assert_eq!(other.sent(&address).await, 0);
    let foreign_holds: i64 = c
        .query_one(
            "SELECT count(*) FROM transactions WHERE chain_tx_hash = $1",
            &[&foreign],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign_holds, 0, "nothing read from another chain");
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    wait_readyz(&t, "ethereum: unavailable").await;
    let error = t.app.state.chains.tip("ethereum").await.unwrap_err();
    assert!(
        error.to_string().contains("serves chain id 1, not 31337"),
        "{error}"
    );
    // Nothing that needs the node is taken.
    let body = t
        .gql(
            Some(&t.user("alice")),
            CRYPTO_WITHDRAW,
            json!({"w": wallet, "to": DEV_ACCOUNT_2, "a": "0.1", "k": "w-2"}),
        )
        .await;
    assert_eq!(error_code(&body), "CHAIN_UNAVAILABLE", "{body}");
    assert!(
        t.metrics()
            .await
            .contains("wallet_chain_id_mismatches_total{network=\"ethereum\"}"),
    );

    // The right chain back on the port: verified again, and the withdrawal goes out.
    drop(other);
    anvil.start_again().await;
    connected(&t.app).await;
    wait_readyz(&t, "ethereum: ok").await;
    let report = pass(&t.app).await;
    assert_eq!((report.signed, report.broadcast), (1, 1), "{report:?}");
    anvil.mine(1).await;
    assert_eq!(anvil.sent(&address).await, 1);
    let _ = std::fs::remove_file(state);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_decimals_other_than_the_contracts_refuse_the_start_or_the_node() {
    let state =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("anvil-{}.json", uuid::Uuid::new_v4()));
    let mut anvil = Anvil::start_keeping(Some(state.clone())).await;
    let (contract, mut options) = with_test_token(&anvil).await;
    if let Some(node) = &mut options.ethereum {
        node.tokens[0].decimals = 8;
    }

    // The node answers at start: refused, and the token is not registered.
    let db = TestDb::new().await;
    let refused = App::start(&options.config(&db.url))
        .await
        .err()
        .expect("refused");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains(&format!(
            "token TUSD: WALLET_ETHEREUM_TOKENS says 8 decimals, but the contract {contract} \
             reports 6"
        )),
        "{refused}"
    );
    let registered: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM currencies WHERE code = 'TUSD'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(registered, 0);
    drop(db);

    // The node down at start: the service starts (the token registered from the
    // configuration); when the node comes, the mismatch keeps ethereum unavailable.
    anvil.stop();
    let t = TestApp::with(options).await;
    assert!(t.app.state.chains.available("ethereum").is_err());
    anvil.start_again().await;
    wait_until(
        "the node is refused for the token's decimals",
        Duration::from_secs(30),
        || async {
            t.app
                .state
                .chains
                .tip("ethereum")
                .await
                .is_err_and(|e| e.to_string().contains("says 8 decimals"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(t.app.state.chains.available("ethereum").is_err());
    assert!(t.app.chain_worker().unwrap().pass().await.is_err());
    let _ = std::fs::remove_file(state);
}

/// A TLS endpoint in front of a TCP port: a certificate for `localhost` and 127.0.0.1
/// issued by a throw-away CA, whose certificate is in `ca_file`.
struct TlsProxy {
    port: u16,
    ca_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    async fn start(backend: u16) -> TlsProxy {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        use tokio_rustls::rustls;

        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "wallet tests' private CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let ca_file = std::env::temp_dir().join(format!("wallet-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust the certificate hangs up here.
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut node) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut node).await;
                });
            }
        });
        TlsProxy {
            port,
            ca_file,
            task,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_behind_tls_with_a_private_ca_is_served() {
    let anvil = Anvil::start().await;
    let proxy = TlsProxy::start(anvil.port()).await;
    let through_tls = |ca_file: Option<PathBuf>| {
        let mut options = on(&anvil);
        if let Some(node) = &mut options.ethereum {
            node.rpc_url = format!("https://wallet:{PASSWORD}@localhost:{}/", proxy.port).into();
            node.ca_file = ca_file;
        }
        options
    };
    let t = TestApp::with(through_tls(Some(proxy.ca_file.clone()))).await;
    // Verified at start through TLS: a deposit is followed and credited.
    assert!(t.app.state.chains.available("ethereum").is_ok());
    let (wallet, address) = eth_wallet(&t, "alice").await;
    anvil
        .send_from(DEV_ACCOUNT, Some(&address), &[], ETHER)
        .await;
    anvil.mine(6).await;
    pass(&t.app).await;
    assert_eq!(t.balance(&wallet).await, "1.000000000000000000");
    assert!(readyz(&t).await.contains("ethereum: ok"));

    // Without the CA, the certificate is not trusted: ethereum unavailable, saying why,
    // and the password nowhere.
    let (untrusting, _) = t.sibling_with(through_tls(None)).await;
    let error = untrusting.state.chains.tip("ethereum").await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("not connected"), "{text}");
    assert!(text.contains("certificate"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}
