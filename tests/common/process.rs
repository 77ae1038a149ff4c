//! Real server processes for fault tests: the `wallet` binary started on a port of its
//! own, killed with SIGKILL, restarted; a load of keyed movements sent to it over HTTP; a
//! private Postgres cluster the test may stop and start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{DEPOSIT, JWT_SECRET, TEST_MNEMONIC, WITHDRAW, wait_until};

/// A free local port (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `wallet serve` process; killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub base: String,
}

impl ServerProcess {
    /// Starts the service on `database_url` and waits until it is ready.
    pub async fn start(database_url: &str) -> ServerProcess {
        Self::start_with(database_url, &[]).await
    }

    /// Like [`start`](Self::start), with more environment variables (set last: they
    /// override the defaults here).
    pub async fn start_with(database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_wallet"))
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("WALLET_LISTEN", format!("127.0.0.1:{port}"))
            .env("WALLET_JWT_SECRET", JWT_SECRET)
            .env("WALLET_SEED", TEST_MNEMONIC)
            .env("WALLET_BLOCK_SECS", "0")
            .env("WALLET_CHAIN_POLL_MS", "0")
            .env("WALLET_RECONCILE_SECS", "0")
            .env("WALLET_REQUEST_TIMEOUT_SECS", "10")
            .env("WALLET_LOG", "warn")
            // The load drivers send many mutations per user; rate limits have tests of their own.
            .env("WALLET_RATE_LIMIT_PER_SEC", "0")
            .env("WALLET_OPERATOR_RATE_LIMIT_PER_SEC", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("the wallet binary starts");
        let server = ServerProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        server.wait_ready(Duration::from_secs(60)).await;
        server
    }

    pub async fn readyz(&self) -> Option<u16> {
        reqwest::get(format!("{}/readyz", self.base))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// `/readyz`'s status and body (None when no HTTP answer came).
    pub async fn readyz_body(&self) -> Option<(u16, String)> {
        let resp = reqwest::get(format!("{}/readyz", self.base)).await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// `/metrics` as the service shows it now, read on a connection of its own (a test
    /// may hold the server's connection limit).
    pub async fn metrics(&self) -> String {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        http.get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .unwrap()
    }

    /// The sum of a metric's series (every label set) as `/metrics` shows it now; 0 when
    /// it has none.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics().await, name)
    }

    /// The process id (e.g. to tell which process holds a lease named after its pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn wait_ready(&self, limit: Duration) {
        wait_until("the server is ready", limit, || async {
            self.readyz().await == Some(200)
        })
        .await;
    }

    /// SIGKILL: no shutdown, no flush, nothing finishes.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    pub fn websocket(&self) -> String {
        format!("{}/graphql/ws", self.base.replace("http://", "ws://"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GraphQL POST to a running server; `Err` when no HTTP answer came (connection refused
/// or reset: the process is gone).
pub async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> Result<Value, String> {
    let resp = http
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|_| format!("a non-JSON answer ({status}): {text}"))
}

/// One keyed movement of a load: always sent with the same parameters.
#[derive(Clone, Debug)]
pub struct Movement {
    pub key: String,
    pub wallet: String,
    pub user: String,
    pub deposit: bool,
    pub amount: String,
    /// A transfer from `wallet` to this wallet (sent by the source's owner).
    pub to: Option<String>,
}

/// A transfer between two wallets, answered with the transfer's id.
pub const TRANSFER: &str = "mutation($w: ID!, $to: ID!, $a: Decimal!, $k: String!) {
  transfer(input: {fromWalletId: $w, toWalletId: $to, amount: $a, idempotencyKey: $k}) { id } }";

impl Movement {
    pub fn query(&self) -> (&'static str, Value) {
        if let Some(to) = &self.to {
            return (
                TRANSFER,
                json!({"w": self.wallet, "to": to, "a": self.amount, "k": self.key}),
            );
        }
        let q = if self.deposit { DEPOSIT } else { WITHDRAW };
        (
            q,
            json!({"w": self.wallet, "a": self.amount, "k": self.key}),
        )
    }

    pub fn field(&self) -> &'static str {
        match (self.deposit, &self.to) {
            (_, Some(_)) => "transfer",
            (true, None) => "deposit",
            (false, None) => "withdraw",
        }
    }

    /// Journal rows the movement writes when it commits (a transfer: one per side, both
    /// under its key).
    pub fn rows(&self) -> i64 {
        match self.to {
            Some(_) => 2,
            None => 1,
        }
    }
}

/// What a client learned from sending a movement once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Committed: the journal row's id.
    Acknowledged(String),
    /// A definite refusal, by code.
    Refused(String),
    /// No answer, or OUTCOME_UNKNOWN.
    Unknown(String),
}

pub fn hear(movement: &Movement, answer: Result<Value, String>) -> Heard {
    match answer {
        Err(e) => Heard::Unknown(e),
        Ok(body) => match body["errors"][0]["extensions"]["code"].as_str() {
            Some("OUTCOME_UNKNOWN") => Heard::Unknown("OUTCOME_UNKNOWN".into()),
            Some(code) => Heard::Refused(code.to_owned()),
            None => match body["data"][movement.field()]["id"].as_str() {
                Some(id) => Heard::Acknowledged(id.to_owned()),
                None => Heard::Unknown(format!("an answer without the movement: {body}")),
            },
        },
    }
}

/// What the clients heard, by key: the movement and its first answer.
pub type Answers = HashMap<String, (Movement, Heard)>;

/// A load of keyed movements from several clients against whatever server `base` names
/// at the moment (the test may swap it); every answer recorded.
pub struct Load {
    pub heard: Arc<Mutex<Answers>>,
    pub acknowledged: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    pub base: Arc<Mutex<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub struct Tokens {
    pub operator: String,
    pub users: HashMap<String, String>,
}

impl Tokens {
    /// An operator token and a user token for each of `users`, signed with the tests'
    /// secret (the secret `ServerProcess` gives the server).
    pub fn for_users(users: &[&str]) -> Arc<Tokens> {
        use wallet::auth::{Role, TokenKeys};
        let keys = TokenKeys::new(super::JWT_SECRET.as_bytes());
        let day = Duration::from_secs(86_400);
        // The longest an operator token may last.
        let hour = Duration::from_secs(3600);
        Arc::new(Tokens {
            operator: keys.mint("back-office", Role::Operator, hour).unwrap(),
            users: users
                .iter()
                .map(|u| (u.to_string(), keys.mint(u, Role::User, day).unwrap()))
                .collect(),
        })
    }
}

/// Opens a USD wallet for each user through the running server at `base`, funded with a
/// deposit of 1000.00; returns `(wallet id, owner)` pairs.
pub async fn funded_wallets(base: &str, tokens: &Tokens, users: &[&str]) -> Vec<(String, String)> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for user in users {
        let created = post(
            &http,
            base,
            &tokens.users[*user],
            "mutation { createWallet(input: {currency: \"USD\"}) { id } }",
            json!({}),
        )
        .await
        .unwrap();
        let id = created["data"]["createWallet"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let funded = post(
            &http,
            base,
            &tokens.operator,
            DEPOSIT,
            json!({"w": id, "a": "1000.00", "k": format!("funding-{user}")}),
        )
        .await
        .unwrap();
        assert!(funded.get("errors").is_none(), "{funded}");
        out.push((id, user.to_string()));
    }
    out
}

/// Walks a wallet's journal through the service: each row starts where the previous
/// ended and moves its amount; the newest ends at the balance. Returns the rows.
pub async fn check_chain(base: &str, token: &str, wallet: &str) -> usize {
    let http = reqwest::Client::new();
    let (mut after, mut previous, mut rows) = (None::<String>, rust_decimal::Decimal::ZERO, 0);
    loop {
        let page = post(
            &http,
            base,
            token,
            "query($w: ID!, $after: String) { wallet(id: $w) { balance
               transactions(first: 100, after: $after) { pageInfo { hasNextPage endCursor }
                 edges { node { type amount fee isHold balanceBefore balanceAfter } } } } }",
            json!({"w": wallet, "after": after}),
        )
        .await
        .unwrap();
        let w = &page["data"]["wallet"];
        let dec = |v: &Value| {
            v.as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        };
        for edge in w["transactions"]["edges"].as_array().unwrap() {
            let n = &edge["node"];
            assert_eq!(dec(&n["balanceBefore"]), previous, "chain broken at {n}");
            let moved = dec(&n["amount"]) + dec(&n["fee"]);
            // A hold (a crypto movement on its way) moves nothing.
            let signed = match (n["isHold"].as_bool().unwrap(), n["type"].as_str().unwrap()) {
                (true, _) => rust_decimal::Decimal::ZERO,
                (false, "WITHDRAW" | "TRANSFER_OUT") => -moved,
                (false, _) => moved,
            };
            assert_eq!(dec(&n["balanceAfter"]), previous + signed, "{n}");
            previous = dec(&n["balanceAfter"]);
            rows += 1;
        }
        if !w["transactions"]["pageInfo"]["hasNextPage"]
            .as_bool()
            .unwrap()
        {
            assert_eq!(
                previous,
                dec(&w["balance"]),
                "the newest row ends at the balance"
            );
            return rows;
        }
        after = w["transactions"]["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned);
    }
}

impl Load {
    /// `clients` clients, each sending movements over `wallets` (wallet id, owner) one
    /// after another with fresh keys until stopped: deposits of 1.00–9.99 and smaller
    /// withdrawals, so that most of them go through.
    pub fn start(
        base: &str,
        clients: usize,
        wallets: Vec<(String, String)>,
        tokens: Arc<Tokens>,
    ) -> Load {
        Self::start_mix(base, clients, wallets, tokens, false, "load")
    }

    /// Like [`start`](Self::start), with every fourth movement a transfer to the next
    /// wallet (deposits, withdrawals and transfers in the ratio 2:1:1); keys start with
    /// `prefix` (loads sent at once need prefixes of their own).
    pub fn start_with_transfers(
        base: &str,
        clients: usize,
        wallets: Vec<(String, String)>,
        tokens: Arc<Tokens>,
        prefix: &str,
    ) -> Load {
        Self::start_mix(base, clients, wallets, tokens, true, prefix)
    }

    fn start_mix(
        base: &str,
        clients: usize,
        wallets: Vec<(String, String)>,
        tokens: Arc<Tokens>,
        transfers: bool,
        prefix: &str,
    ) -> Load {
        let heard = Arc::new(Mutex::new(HashMap::new()));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let base = Arc::new(Mutex::new(base.to_owned()));
        let tasks = (0..clients)
            .map(|c| {
                let (heard, acknowledged, stop, base) = (
                    heard.clone(),
                    acknowledged.clone(),
                    stop.clone(),
                    base.clone(),
                );
                let (wallets, tokens) = (wallets.clone(), tokens.clone());
                let prefix = prefix.to_owned();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let (wallet, user) = &wallets[(c + n) % wallets.len()];
                        let (deposit, to) = match transfers {
                            false => (n % 3 != 2, None),
                            true => (
                                n % 4 < 2,
                                (n % 4 == 3)
                                    .then(|| wallets[(c + n + 1) % wallets.len()].0.clone()),
                            ),
                        };
                        let movement = Movement {
                            to,
                            key: format!("{prefix}-{c}-{n}"),
                            wallet: wallet.clone(),
                            user: user.clone(),
                            deposit,
                            amount: if deposit {
                                format!("{}.{:02}", 1 + n % 9, n % 100)
                            } else {
                                format!("0.{:02}", 1 + n % 99)
                            },
                        };
                        let answer = send(&http, &base, &tokens, &movement).await;
                        let what = hear(&movement, answer);
                        if matches!(what, Heard::Acknowledged(_)) {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        let failed = match &what {
                            Heard::Acknowledged(_) => false,
                            Heard::Refused(code) => code == "UNAVAILABLE",
                            Heard::Unknown(_) => true,
                        };
                        heard
                            .lock()
                            .unwrap()
                            .insert(movement.key.clone(), (movement, what));
                        n += 1;
                        if failed {
                            // The server is away: do not spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            heard,
            acknowledged,
            stop,
            base,
            tasks,
        }
    }

    pub fn point_at(&self, base: &str) {
        *self.base.lock().unwrap() = base.to_owned();
    }

    pub async fn wait_for_acknowledged(&self, count: usize, limit: Duration) {
        wait_until(
            &format!("{count} movements acknowledged"),
            limit,
            || async { self.acknowledged.load(Ordering::Relaxed) >= count },
        )
        .await;
    }

    pub async fn stop(self) -> Answers {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.heard.lock().unwrap())
    }
}

pub async fn send(
    http: &reqwest::Client,
    base: &Mutex<String>,
    tokens: &Tokens,
    movement: &Movement,
) -> Result<Value, String> {
    let base = base.lock().unwrap().clone();
    let token = if movement.deposit {
        &tokens.operator
    } else {
        &tokens.users[&movement.user]
    };
    let (query, vars) = movement.query();
    post(http, &base, token, query, vars).await
}

/// Sends every movement again with the same parameters and checks the exactly-once
/// promise: an acknowledged movement gets its original row back; one whose outcome was
/// unknown is now either a row or a definite refusal; nothing is ever a second row.
/// Returns how many movements are in the journal.
pub async fn replay_and_check(
    base: &str,
    tokens: &Tokens,
    heard: &Answers,
    pg: &tokio_postgres::Client,
) -> usize {
    // A refusal is a promise too: nothing was, or will be, committed under that key.
    for (movement, first) in heard.values() {
        if let Heard::Refused(code) = first {
            let rows = rows_under(pg, &movement.key).await;
            assert_eq!(rows, 0, "{}: refused ({code}) but committed", movement.key);
        }
    }
    let http = reqwest::Client::new();
    let base = Mutex::new(base.to_owned());
    let mut journaled = 0;
    let mut unknown = 0;
    let checks = heard.values().map(|(movement, first)| {
        let (http, base) = (&http, &base);
        async move {
            let again = hear(movement, send(http, base, tokens, movement).await);
            (movement, first, again)
        }
    });
    // A few at a time, like clients retrying.
    let results: Vec<_> = futures_util::stream::iter(checks)
        .buffer_unordered(16)
        .collect()
        .await;
    for (movement, first, again) in results {
        match (first, &again) {
            (Heard::Acknowledged(id), Heard::Acknowledged(replayed)) => {
                assert_eq!(
                    id, replayed,
                    "{}: the replay returns the original",
                    movement.key
                )
            }
            (Heard::Acknowledged(_), other) => {
                panic!("{}: acknowledged, then {other:?}", movement.key)
            }
            (Heard::Refused(_), _) => {}
            (Heard::Unknown(_), Heard::Acknowledged(_) | Heard::Refused(_)) => unknown += 1,
            (Heard::Unknown(_), other) => {
                panic!("{}: still unknown after recovery: {other:?}", movement.key)
            }
        }
        let rows = rows_under(pg, &movement.key).await;
        let expected = i64::from(matches!(again, Heard::Acknowledged(_))) * movement.rows();
        assert_eq!(rows, expected, "{}: rows under the key", movement.key);
        journaled += usize::from(rows > 0);
    }
    eprintln!(
        "{} movements sent, {journaled} journaled, {unknown} of unknown outcome resolved by replay",
        heard.len()
    );
    journaled
}

/// Journal rows recorded under a key.
async fn rows_under(pg: &tokio_postgres::Client, key: &str) -> i64 {
    pg.query_one(
        "SELECT count(*) FROM transactions WHERE tx_hash = $1",
        &[&key],
    )
    .await
    .unwrap()
    .get(0)
}

/// A private Postgres cluster on its own port and data directory, for tests that stop
/// and start the database server. Never the shared one. Stopped and removed on drop.
pub struct PrivateCluster {
    pub port: u16,
    dir: PathBuf,
    data: String,
    bin: PathBuf,
}

impl PrivateCluster {
    /// Creates and starts a cluster with trust authentication for `postgres`.
    pub fn start() -> PrivateCluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (Debian's postgresql package)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = server_dir("wallet-pg");
        let cluster = PrivateCluster {
            port: free_port(),
            data: dir.join("data").to_string_lossy().into_owned(),
            dir,
            bin,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        cluster.pg_ctl_start();
        cluster
    }

    /// A streaming standby of `primary` (asynchronous, hot: it answers reads), on its
    /// own port and data directory.
    pub fn standby_of(primary: &PrivateCluster) -> PrivateCluster {
        let dir = server_dir("wallet-pg");
        let standby = PrivateCluster {
            port: free_port(),
            data: dir.join("data").to_string_lossy().into_owned(),
            dir,
            bin: primary.bin.clone(),
        };
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                &standby.data,
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        standby.pg_ctl_start();
        standby
    }

    /// Runs one SQL statement on the cluster as `postgres` (psql).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        psql(self.tool("psql"), self.port, database, sql)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (fast shutdown: sessions are terminated).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data, "-m", "fast", "-w", "stop"]);
    }

    pub fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &["-D", &self.data, "-o", &options, "-l", &log, "-w", "start"],
        );
    }

    /// One of the server's tools, run as `postgres` when we are root.
    fn tool(&self, name: &str) -> Command {
        let mut command = as_postgres(self.bin.join(name));
        command.stdout(Stdio::null());
        command
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let status = self
            .tool(tool)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(status.success(), "{tool} {args:?} failed");
    }
}

/// A fresh directory under the system's temporary one, named `<prefix>-<uuid>`, for a
/// server the test runs: owned by `postgres` when we are root (PostgreSQL refuses to run
/// as root, so its files and the programs run on them belong to `postgres`).
pub fn server_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let owned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(owned, "chown of {}", dir.display());
    }
    dir
}

/// `program`, run as `postgres` when we are root.
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs one SQL statement with `psql` (a command for the psql program, run as the right
/// user) on the server at 127.0.0.1:`port`; its unaligned, tuples-only output, trimmed.
pub fn psql(mut psql: Command, port: u16, database: &str, sql: &str) -> String {
    let out = psql
        .args(["-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &port.to_string(), "-d", database, "-c", sql])
        .stdout(Stdio::piped())
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql on {port}: {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &self.data, "-m", "immediate", "stop"])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sum of a metric's series (every label set) in a Prometheus text; 0 when it has none.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of an unlabelled gauge in a Prometheus text.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
