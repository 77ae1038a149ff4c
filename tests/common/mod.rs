//! Shared test harness: every test gets its own database, cloned from a migrated template,
//! and talks to the service through its real HTTP router (no mocks of the database).

#![allow(dead_code)]

pub mod anvil;
pub mod binary;
pub mod ethereum;
pub mod faulty_node;
pub mod formation;
pub mod nats;
pub mod process;
pub mod receiver;
pub mod ws;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use wallet::app::{App, AppConfig};
use wallet::auth::{Role, TokenKeys};
use wallet::graphql::Limits;
use wallet::limits::{RateLimits, WsLimits};

/// The well-known development mnemonic: its addresses are published test vectors.
pub const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

/// Server URL for tests (its database name is replaced per test).
fn server_url() -> String {
    std::env::var("WALLET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn url_for(db: &str) -> String {
    let base = server_url();
    let (prefix, _) = base.rsplit_once('/').expect("a database URL with a path");
    format!("{prefix}/{db}")
}

pub async fn admin_client() -> tokio_postgres::Client {
    let config = tokio_postgres::Config::from_str(&server_url()).expect("valid test URL");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("Postgres must be running for the integration tests (see README)");
    tokio::spawn(conn);
    client
}

/// Name of the template for the current migrations: a change to any migration file makes a
/// new template, so a stale one is never cloned.
fn template_name() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut entries: Vec<_> = walk(&dir);
    entries.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in entries {
        let bytes = std::fs::read(&path).expect("readable migration");
        for b in path.to_string_lossy().bytes().chain(bytes) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("wallet_test_tmpl_{hash:016x}")
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("migrations dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A database of its own for one test; dropped (forcibly) when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin = admin_client().await;
        let template = template_name();
        // One process builds the template; the others wait on the lock, then clone it.
        admin
            .execute("SELECT pg_advisory_lock(7356)", &[])
            .await
            .unwrap();
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
            .await
            .unwrap()
            .is_some();
        if !exists {
            let building = format!("{template}_building");
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                .await
                .unwrap();
            admin
                .batch_execute(&format!("CREATE DATABASE {building}"))
                .await
                .unwrap();
            wallet::db::run_migrations(&url_for(&building))
                .await
                .expect("migrations apply");
            admin
                .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
                .await
                .unwrap();
        }
        admin
            .execute("SELECT pg_advisory_unlock(7356)", &[])
            .await
            .unwrap();
        let name = format!("wallet_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .unwrap();
        TestDb {
            url: url_for(&name),
            name,
        }
    }

    /// A plain client on this test's database, for assertions and for injecting changes
    /// the API would refuse.
    pub async fn client(&self) -> tokio_postgres::Client {
        let config = tokio_postgres::Config::from_str(&self.url).unwrap();
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context: use a runtime of its own on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = admin_client().await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// One service instance on its own database.
pub struct TestApp {
    pub db: TestDb,
    pub app: App,
    pub router: Router,
    keys: TokenKeys,
}

#[derive(Clone)]
pub struct Options {
    pub pool_size: usize,
    pub limits: Limits,
    /// Run the chain worker this often (None: tests run passes by hand).
    pub chain_poll: Option<Duration>,
    pub session_limits: wallet::db::SessionLimits,
    pub rates: RateLimits,
    pub ws: WsLimits,
    /// Run the simulated networks (without: no chain backend, crypto not offered).
    pub simulated_chain: bool,
    /// Serve ethereum from this node instead of the simulator.
    pub ethereum: Option<wallet::chain::ethereum::NodeConfig>,
    /// The custody seed.
    pub mnemonic: &'static str,
    pub graphiql: bool,
    pub metrics: wallet::app::MetricsAccess,
    pub request_timeout: Duration,
    /// Flat withdrawal fees by currency code.
    pub withdrawal_fees: std::collections::BTreeMap<String, rust_decimal::Decimal>,
    /// Run the hold expiry worker this often (None: holds never expire; tests that count
    /// statements see only their own).
    pub hold_expiry_poll: Option<Duration>,
    /// Send webhooks from this instance (None: none are sent by it).
    pub webhooks: Option<wallet::events::webhook::WebhookConfig>,
    /// Publish events to NATS JetStream.
    pub stream: Option<wallet::events::stream::StreamConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool_size: 10,
            limits: Limits::default(),
            chain_poll: None,
            session_limits: Default::default(),
            request_timeout: Duration::from_secs(30),
            withdrawal_fees: Default::default(),
            hold_expiry_poll: None,
            webhooks: None,
            stream: None,
            // Tests drive many mutations and queries as one user and as the back office;
            // the rate-limit tests set limits.
            rates: RateLimits {
                user_per_sec: 0,
                operator_per_sec: 0,
                user_query_cost_per_sec: 0,
                ..RateLimits::default()
            },
            ws: WsLimits {
                max_subscriptions: 8,
                ..WsLimits::default()
            },
            simulated_chain: true,
            ethereum: None,
            mnemonic: TEST_MNEMONIC,
            graphiql: true,
            metrics: wallet::app::MetricsAccess::Open,
        }
    }
}

impl Options {
    pub fn config(&self, database_url: &str) -> AppConfig {
        AppConfig {
            database_url: database_url.to_owned(),
            pool_size: self.pool_size,
            read_pool_size: self.pool_size,
            session_limits: self.session_limits,
            jwt_secret: JWT_SECRET.into(),
            jwt_previous_secrets: Vec::new(),
            token_policy: Default::default(),
            revocation_refresh: wallet::revocation::DEFAULT_REFRESH,
            limits: self.limits,
            request_timeout: self.request_timeout,
            http: Default::default(),
            ws: self.ws,
            rates: self.rates,
            seed: wallet::custody::SeedSource::Mnemonic(self.mnemonic.into()),
            simulated_chain: self.simulated_chain,
            ethereum: self.ethereum.clone(),
            block_interval: None,
            reconcile_interval: None,
            chain_poll: self.chain_poll,
            graphiql: self.graphiql,
            metrics: self.metrics.clone(),
            withdrawal_fees: self.withdrawal_fees.clone(),
            holds: Default::default(),
            hold_expiry_poll: self.hold_expiry_poll,
            event_retention: wallet::events::listener::DEFAULT_RETENTION,
            webhooks: self.webhooks.clone(),
            webhook_targets: wallet::events::webhook::TargetPolicy::OPEN,
            stream: self.stream.clone(),
            read_replicas: None,
        }
    }
}

impl TestApp {
    pub async fn new() -> TestApp {
        Self::with(Options::default()).await
    }

    pub async fn with(options: Options) -> TestApp {
        let db = TestDb::new().await;
        let app = App::start(&options.config(&db.url))
            .await
            .expect("app starts");
        let router = wallet::http::router(app.clone());
        TestApp {
            db,
            app,
            router,
            keys: TokenKeys::new(JWT_SECRET.as_bytes()),
        }
    }

    /// A second app instance on the same database (another "process"): separate pool,
    /// reference data loaded afresh.
    pub async fn sibling(&self) -> (App, Router) {
        self.sibling_with(Options {
            pool_size: 4,
            ..Options::default()
        })
        .await
    }

    /// Like [`sibling`](Self::sibling), with its own options.
    pub async fn sibling_with(&self, options: Options) -> (App, Router) {
        let app = App::start(&options.config(&self.db.url))
            .await
            .expect("app starts");
        let router = wallet::http::router(app.clone());
        (app, router)
    }

    /// Replaces the app by a fresh instance on the same database.
    pub async fn restart(self) -> TestApp {
        let (app, router) = self.sibling().await;
        TestApp {
            app,
            router,
            ..self
        }
    }

    /// Serves this instance on a local port; returns the websocket endpoint.
    pub async fn serve(&self) -> String {
        serve(self.router.clone()).await
    }

    pub fn token(&self, sub: &str, role: Role) -> String {
        self.keys.mint(sub, role, Duration::from_secs(600)).unwrap()
    }

    pub fn user(&self, sub: &str) -> String {
        self.token(sub, Role::User)
    }

    pub fn operator(&self) -> String {
        self.token("back-office", Role::Operator)
    }

    /// Sends any request through the router; returns status, headers and the JSON body
    /// (Null when the body is not JSON).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        send_to(&self.router, req).await
    }

    /// POSTs a GraphQL operation as `token` (None: anonymous) and returns the JSON body.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        gql_to(&self.router, token, query, variables).await
    }

    /// Like [`gql`](Self::gql) but expects success and returns `data`.
    pub async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let body = self.gql(Some(token), query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    pub async fn create_wallet(&self, owner: &str, currency: &str) -> String {
        let data = self
            .ok(
                &self.user(owner),
                "mutation($c: String!) { createWallet(input: {currency: $c}) { id } }",
                json!({ "c": currency }),
            )
            .await;
        data["createWallet"]["id"].as_str().unwrap().to_owned()
    }

    pub async fn deposit(&self, wallet: &str, amount: &str, key: &str) -> Value {
        self.gql(
            Some(&self.operator()),
            DEPOSIT,
            json!({ "w": wallet, "a": amount, "k": key }),
        )
        .await
    }

    pub async fn withdraw(&self, token: &str, wallet: &str, amount: &str, key: &str) -> Value {
        self.gql(
            Some(token),
            WITHDRAW,
            json!({ "w": wallet, "a": amount, "k": key }),
        )
        .await
    }

    /// The wallet's balance as the API reports it (as an operator).
    pub async fn balance(&self, wallet: &str) -> String {
        let data = self
            .ok(
                &self.operator(),
                "query($w: ID!) { wallet(id: $w) { balance } }",
                json!({ "w": wallet }),
            )
            .await;
        data["wallet"]["balance"].as_str().unwrap().to_owned()
    }

    /// Checks the journal chain for a wallet via the API: pages through its whole history
    /// in API order; each row starts where the previous ended, and the newest ends at the
    /// wallet's balance. Returns the number of rows.
    pub async fn assert_chain(&self, wallet: &str) -> usize {
        let op = self.operator();
        let mut after: Option<String> = None;
        let mut previous = "0".parse::<rust_decimal::Decimal>().unwrap();
        let mut rows = 0;
        loop {
            let data = self
                .ok(
                    &op,
                    "query($w: ID!, $after: String) { wallet(id: $w) { balance
                       transactions(first: 100, after: $after) {
                         pageInfo { hasNextPage endCursor }
                         edges { node { type amount fee isHold balanceBefore balanceAfter } } } } }",
                    json!({ "w": wallet, "after": after }),
                )
                .await;
            let conn = &data["wallet"]["transactions"];
            for edge in conn["edges"].as_array().unwrap() {
                let n = &edge["node"];
                let dec = |k: &str| {
                    n[k].as_str()
                        .unwrap()
                        .parse::<rust_decimal::Decimal>()
                        .unwrap()
                };
                assert_eq!(dec("balanceBefore"), previous, "chain broken at {n}");
                // A hold (a crypto movement on its way) moves nothing; any other row
                // moves its amount and fee.
                let moved = dec("amount") + dec("fee");
                let signed = match (n["isHold"].as_bool().unwrap(), n["type"].as_str().unwrap()) {
                    (true, _) => rust_decimal::Decimal::ZERO,
                    (false, "WITHDRAW" | "TRANSFER_OUT") => -moved,
                    // Its original's opposite (checked by the database against it).
                    (false, "REVERSAL") if dec("balanceAfter") < previous => -moved,
                    (false, _) => moved,
                };
                assert_eq!(
                    dec("balanceAfter"),
                    previous + signed,
                    "row does not add up: {n}"
                );
                previous = dec("balanceAfter");
                rows += 1;
            }
            if !conn["pageInfo"]["hasNextPage"].as_bool().unwrap() {
                let balance: rust_decimal::Decimal =
                    data["wallet"]["balance"].as_str().unwrap().parse().unwrap();
                assert_eq!(
                    previous, balance,
                    "newest balanceAfter must equal the balance"
                );
                return rows;
            }
            after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
        }
    }
}

/// Several service instances ("processes") on one database, as behind a load balancer.
/// Requests are spread over them by index.
pub struct Fleet {
    pub t: TestApp,
    pub nodes: Vec<(App, Router)>,
    /// Fleets of several instances take turns within a test binary: three instances with
    /// pools of 20 beside the other tests' instances can reach a default Postgres's 100
    /// connections, and a refused connection fails a request.
    pub turn: Option<tokio::sync::SemaphorePermit<'static>>,
}

static FLEETS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// How movements reach the database in a concurrency test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One process: its committer batches everything.
    OneProcess,
    /// Three processes, each batching: their batches race in the database.
    ThreeProcesses,
    /// Two processes with their committers stopped: every movement is a transaction of
    /// its own, racing the others in the database.
    Unbatched,
}

impl Topology {
    pub async fn start(self) -> Fleet {
        let turn = match self {
            Topology::OneProcess => None,
            _ => Some(
                FLEETS
                    .acquire()
                    .await
                    .expect("the fleet semaphore is never closed"),
            ),
        };
        let t = TestApp::with(Options {
            pool_size: 20,
            ..Options::default()
        })
        .await;
        let mut nodes = vec![(t.app.clone(), t.router.clone())];
        let count = match self {
            Topology::OneProcess => 1,
            Topology::ThreeProcesses => 3,
            Topology::Unbatched => 2,
        };
        for _ in 1..count {
            nodes.push(
                t.sibling_with(Options {
                    pool_size: 20,
                    ..Options::default()
                })
                .await,
            );
        }
        if self == Topology::Unbatched {
            for (app, _) in &nodes {
                app.state.committer.stop();
            }
        }
        Fleet { t, nodes, turn }
    }
}

/// Group-commit counters summed over a fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub batches: u64,
    pub movements: u64,
    pub fallbacks: u64,
    pub rerun: u64,
}

impl Fleet {
    pub fn router(&self, i: usize) -> &Router {
        &self.nodes[i % self.nodes.len()].1
    }

    pub async fn deposit(&self, i: usize, wallet: &str, amount: &str, key: &str) -> Value {
        gql_to(
            self.router(i),
            Some(&self.t.operator()),
            DEPOSIT,
            json!({ "w": wallet, "a": amount, "k": key }),
        )
        .await
    }

    pub async fn withdraw(
        &self,
        i: usize,
        token: &str,
        wallet: &str,
        amount: &str,
        key: &str,
    ) -> Value {
        gql_to(
            self.router(i),
            Some(token),
            WITHDRAW,
            json!({ "w": wallet, "a": amount, "k": key }),
        )
        .await
    }

    pub fn stats(&self) -> CommitStats {
        use std::sync::atomic::Ordering::Relaxed;
        let mut sum = CommitStats::default();
        for (app, _) in &self.nodes {
            let s = app.state.committer.stats();
            sum.batches += s.batches.load(Relaxed);
            sum.movements += s.movements.load(Relaxed);
            sum.fallbacks += s.fallbacks.load(Relaxed);
            sum.rerun += s.rerun.load(Relaxed);
        }
        sum
    }

    /// Checks which path carried `requests` movements since `before`: batches in every
    /// process when batching (each process got some), none at all when unbatched.
    pub fn assert_path(&self, topology: Topology, before: CommitStats, requests: u64) {
        let now = self.stats();
        match topology {
            Topology::Unbatched => assert_eq!(now, before, "no batch ran"),
            _ => {
                assert_eq!(
                    (now.movements - before.movements) + (now.rerun - before.rerun),
                    requests,
                    "every movement went through a batch (or its fallback)"
                );

                for (i, (app, _)) in self.nodes.iter().enumerate() {
                    let batches = app
                        .state
                        .committer
                        .stats()
                        .batches
                        .load(std::sync::atomic::Ordering::Relaxed);
                    assert!(batches > 0, "process {i} committed batches");
                }
            }
        }
    }
}

/// Sends a request to `router`; returns status, headers and the JSON body (Null when the
/// body is not JSON).
pub async fn send_to(router: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

/// POSTs a GraphQL operation to `router` as `token` (None: anonymous); returns the body.
pub async fn gql_to(router: &Router, token: Option<&str>, query: &str, variables: Value) -> Value {
    let mut req = Request::post("/graphql")
        .header("content-type", "application/json")
        .header("accept", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = json!({ "query": query, "variables": variables }).to_string();
    let (status, _, body) = send_to(router, req.body(Body::from(body)).unwrap()).await;
    assert!(
        status.is_success() || status == StatusCode::UNAUTHORIZED,
        "status {status}: {body}"
    );
    body
}

/// Serves a router on a local port for as long as the test runs; returns its websocket URL.
pub async fn serve(router: Router) -> String {
    let addr = serve_with(router, Default::default()).await;
    format!("ws://{addr}/graphql/ws")
}

/// Serves a router as the binary does (hyper with its timeouts and connection cap) on a
/// local port for as long as the test runs.
pub async fn serve_with(
    router: Router,
    limits: wallet::limits::HttpLimits,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(wallet::server::serve(
        listener,
        router,
        limits,
        std::future::pending(),
    ));
    addr
}

pub const DEPOSIT: &str = "mutation($w: ID!, $a: Decimal!, $k: String!) {
  deposit(input: {walletId: $w, amount: $a, idempotencyKey: $k}) {
    id type amount balanceBefore balanceAfter status idempotencyKey } }";

pub const WITHDRAW: &str = "mutation($w: ID!, $a: Decimal!, $k: String!) {
  withdraw(input: {walletId: $w, amount: $a, idempotencyKey: $k}) {
    id type amount balanceBefore balanceAfter status idempotencyKey } }";

/// The `extensions.code` of the first error of a response.
pub fn error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error with a code, got {body}"))
}

/// A token with arbitrary claims signed with `secret` (for expired and forged tokens):
/// the header names the secret's key id, and `iss`, `aud` and `iat` are the development
/// defaults unless `claims` has them (`null` leaves one out), so that each token differs
/// from a valid one only in what the test says.
pub fn raw_token(secret: &str, claims: Value) -> String {
    let mut claims = claims.as_object().cloned().unwrap_or_default();
    let defaults = [
        ("iss", json!(wallet::auth::DEVELOPMENT_ISSUER)),
        ("aud", json!(wallet::auth::DEVELOPMENT_AUDIENCE)),
        ("iat", json!(jsonwebtoken::get_current_timestamp())),
    ];
    for (name, value) in defaults {
        claims.entry(name).or_insert(value);
    }
    claims.retain(|_, value| !value.is_null());
    let header = jsonwebtoken::Header {
        kid: Some(wallet::auth::key_id(secret.as_bytes())),
        ..Default::default()
    };
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The database id inside a global id (`base64("Wallet:42")` → 42).
pub fn db_id(global: &str) -> i64 {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(global)
        .expect("a global id");
    let text = String::from_utf8(raw).unwrap();
    text.split_once(':').unwrap().1.parse().unwrap()
}

/// Waits until `check` holds, polling every 20 ms; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sessions of `database` waiting for a lock right now.
pub async fn lock_waiters(pg: &tokio_postgres::Client, database: &str) -> i64 {
    pg.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        &[&database],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until `n` sessions of the test's database wait for a lock.
pub async fn wait_for_lock_waiters(t: &TestApp, n: i64) {
    let pg = t.db.client().await;
    wait_until(
        &format!("{n} session(s) wait for a lock"),
        Duration::from_secs(10),
        || async { lock_waiters(&pg, &t.db.name).await == n },
    )
    .await;
}

pub const CREATE_CRYPTO: &str =
    "mutation($c: String!) { createWallet(input: {currency: $c}) { id address } }";
pub const INCOMING: &str = "mutation($n: String!, $to: String!, $a: Decimal!) {
  simulateIncomingTransfer(input: {network: $n, toAddress: $to, amount: $a}) { txHash } }";
pub const MINE: &str =
    "mutation($n: String!, $c: Int!) { mineBlocks(input: {network: $n, count: $c}) }";
pub const CRYPTO_WITHDRAW: &str = "mutation($w: ID!, $to: String!, $a: Decimal!, $k: String!) {
  cryptoWithdraw(input: {walletId: $w, toAddress: $to, amount: $a, idempotencyKey: $k}) {
    id type amount fee status isHold idempotencyKey } }";
pub const BY_KEY: &str = "query($w: ID!, $k: String!) {
  transactionByKey(walletId: $w, key: $k) { id type amount status idempotencyKey } }";

/// An outside bitcoin address (BIP173's P2WSH example).
pub const OUTSIDE_BTC: &str = "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3";

impl TestApp {
    /// A BTC wallet of `user` holding `amount`, credited through a confirmed deposit.
    /// Returns its id and address.
    pub async fn funded_btc(&self, user: &str, amount: &str) -> (String, String) {
        let w = self
            .ok(&self.user(user), CREATE_CRYPTO, json!({"c": "BTC"}))
            .await["createWallet"]
            .clone();
        let (id, address) = (
            w["id"].as_str().unwrap().to_owned(),
            w["address"].as_str().unwrap().to_owned(),
        );
        self.ok(
            &self.operator(),
            INCOMING,
            json!({"n": "bitcoin", "to": address, "a": amount}),
        )
        .await;
        self.ok(&self.operator(), MINE, json!({"n": "bitcoin", "c": 6}))
            .await;
        self.app
            .chain_worker()
            .expect("a simulated chain")
            .pass()
            .await
            .expect("a worker pass");
        assert_eq!(self.balance(&id).await, amount);
        (id, address)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self
            .router
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The movement `key` names on `wallet` (Null when there is none).
    pub async fn by_key(&self, wallet: &str, key: &str) -> Value {
        self.ok(&self.operator(), BY_KEY, json!({"w": wallet, "k": key}))
            .await["transactionByKey"]
            .clone()
    }
}

pub const TRIAL: &str = "{ trialBalance { currency customerBalance imbalance
    accounts { code currency balance } } }";

/// Per currency: (customer balance, imbalance, account code → balance).
pub type Trial = BTreeMap<String, (String, String, BTreeMap<String, String>)>;

impl TestApp {
    /// The trial balance, per currency.
    pub async fn trial_balance(&self) -> Trial {
        let data = self.ok(&self.operator(), TRIAL, json!({})).await;
        let mut out = Trial::new();
        for tb in data["trialBalance"].as_array().unwrap() {
            let accounts = tb["accounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    assert_eq!(a["currency"], tb["currency"]);
                    (
                        a["code"].as_str().unwrap().to_owned(),
                        a["balance"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            out.insert(
                tb["currency"].as_str().unwrap().to_owned(),
                (
                    tb["customerBalance"].as_str().unwrap().to_owned(),
                    tb["imbalance"].as_str().unwrap().to_owned(),
                    accounts,
                ),
            );
        }
        out
    }

    /// Every currency balances, and every journal row's entry sums to zero.
    pub async fn assert_balanced(&self) -> Trial {
        let trial = self.trial_balance().await;
        for (currency, (_, imbalance, _)) in &trial {
            assert_eq!(imbalance, "0", "{currency}: {trial:?}");
        }
        let pg = self.db.client().await;
        let unbalanced = pg
            .query(
                // A row's entry is the row, the rows that name it as their counterpart
                // (a transfer's receiving side, a transfer reversal's other side) and
                // its postings; the rows that name another have no postings of their own.
                "SELECT t.id, t.type FROM transactions t
                  WHERE NOT t.hold AND t.counterpart_id IS NULL
                    AND (t.balance_after - t.balance_before)
                        + COALESCE((SELECT sum(i.balance_after - i.balance_before)
                                      FROM transactions i WHERE i.counterpart_id = t.id), 0)
                        + COALESCE((SELECT sum(p.amount) FROM ledger_postings p
                                     WHERE p.transaction_id = t.id), 0) <> 0
                 UNION ALL
                 SELECT i.id, i.type FROM transactions i
                   JOIN transactions o ON o.id = i.counterpart_id
                   JOIN wallets wi ON wi.id = i.wallet_id
                   JOIN wallets wo ON wo.id = o.wallet_id
                  WHERE wi.currency <> wo.currency
                     OR (i.type = 'TRANSFER_IN') <> (o.type = 'TRANSFER_OUT')
                     OR EXISTS (SELECT 1 FROM ledger_postings p WHERE p.transaction_id = i.id)",
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get::<_, i64>("id"), r.get::<_, String>("type")))
            .collect::<Vec<_>>();
        assert!(
            unbalanced.is_empty(),
            "entries not summing to zero: {unbalanced:?}"
        );
        // Holds move nothing and have no postings.
        let hold_postings: i64 = pg
        .query_one(
            "SELECT count(*) FROM ledger_postings p JOIN transactions t ON t.id = p.transaction_id
              WHERE t.hold",
            &[],
        )
        .await
        .unwrap()
        .get(0);
        assert_eq!(hold_postings, 0);
        trial
    }
}

impl TestApp {
    /// Makes the simulated chain fail every transfer to `address` (mined as failed).
    pub async fn fail_transfers_to(&self, address: &str) {
        self.db
            .client()
            .await
            .execute(
                "INSERT INTO sim_failing_addresses (network, address) VALUES ('bitcoin', $1)",
                &[&address],
            )
            .await
            .unwrap();
    }

    /// `user` withdraws `amount` BTC from `wallet` to an outside address under `key`.
    pub async fn crypto_withdraw(
        &self,
        user: &str,
        wallet: &str,
        amount: &str,
        key: &str,
    ) -> Value {
        self.ok(
            &self.user(user),
            CRYPTO_WITHDRAW,
            json!({"w": wallet, "to": OUTSIDE_BTC, "a": amount, "k": key}),
        )
        .await
    }
}
