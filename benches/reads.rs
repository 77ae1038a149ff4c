//! Read benchmark: GraphQL queries served by the primary alone, then by a streaming
//! replica, against the best the same two Postgres servers do with raw SQL, in the same run.
//!
//! Creates a private primary cluster and a private streaming standby of it (never the
//! shared server), starts `wallet serve` on the primary to create the schema, loads
//! `--wallets` USD wallets with `--rows-per-wallet` journal rows each in SQL, and waits
//! for the standby to replay it all. Then, with C concurrent clients over HTTP keep-alive,
//! each request a random wallet's balance and first history page (operator token), for T
//! seconds after a 2 s warm-up:
//! - `pgbench` running the same reads as lean SQL (one pgbench transaction = the balance
//!   and the page, prepared statements), against the primary and against the standby;
//! - the service with `DATABASE_URL` only (every read on the primary);
//! - the service with `WALLET_DATABASE_READ_URL` naming the standby (the
//!   `wallet-read-source` header of each answer says who served it);
//! - the same, with one operation in ten a deposit followed by a read presenting the
//!   deposit's consistency token (what read-your-writes costs, and whether it holds).
//!
//! Prints, for each: reads per second, latency percentiles, the machine's CPU per read
//! (from `/proc/stat`) and its parts — the load generator, the service process, each
//! cluster (its postmaster and backends, not the machine's other Postgres servers) — the
//! share of the machine left idle and the ratio to pgbench; then the replica's lag at the
//! end and a table of the figures.
//!
//! cargo bench --bench reads -- [--seconds 10] [--clients 16] [--wallets 1000]
//!     [--rows-per-wallet 100]
//!
//! `cargo bench --bench reads -- --print-scripts` prints the baseline's SQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use wallet::auth::{Role, TokenKeys};
use wallet::graphql::ids::{NodeType, encode_id};

mod support;
use support::{CpuMeter, CpuUse, Server, percentile, wait_ready};

const SECRET: &str = "reads-benchmark-secret-0123456789abcdef";
/// The custody seed (BIP39's test mnemonic).
const SEED: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                    abandon abandon about";
/// The database on the private clusters (the service creates it).
const DB: &str = "wallet_bench_reads";
/// Load before each measured run, not counted.
const WARM_UP: Duration = Duration::from_secs(2);
/// The history page each read asks for.
const PAGE: usize = 20;
/// In the read-your-writes run, one operation in this many is a deposit and a read with
/// its token.
const WRITE_EVERY: u32 = 10;
/// pgbench logs this share of its transactions for the latency percentiles.
const PGBENCH_SAMPLING: f64 = 0.1;

const READ: &str = "query($w: ID!) { wallet(id: $w) { balance availableBalance \
                    transactions(first: 20) { edges { node { id amount balanceAfter createdAt } } } } }";
const DEPOSIT: &str = "mutation($w: ID!, $a: Decimal!, $k: String!) {
  deposit(input: {walletId: $w, amount: $a, idempotencyKey: $k}) { id balanceAfter } }";
const CONSISTENCY_TOKEN: &str = "wallet-consistency-token";
const READ_SOURCE: &str = "wallet-read-source";

#[derive(Clone, Debug)]
struct Args {
    seconds: u64,
    clients: usize,
    wallets: i64,
    rows_per_wallet: i64,
}

fn args() -> Args {
    let mut out = Args {
        seconds: 10,
        clients: 16,
        wallets: 1_000,
        rows_per_wallet: 100,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let number = || {
            argv.get(i + 1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{} takes a number", argv[i]))
        };
        match argv[i].as_str() {
            "--seconds" => out.seconds = number(),
            "--clients" => out.clients = number() as usize,
            "--wallets" => out.wallets = number() as i64,
            "--rows-per-wallet" => out.rows_per_wallet = number() as i64,
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    assert!(out.seconds > 0 && out.clients > 0 && out.wallets > 0);
    out
}

/// The baseline: what a team reading the tables itself would send, one pgbench
/// transaction per read. The page is walked in the service's order, (created_at, id), on
/// the index the service walks.
fn pgbench_script() -> &'static str {
    "\\set w random(:lo, :hi)
SELECT balance, balance + credit_limit - held_balance - locked_balance AS available FROM wallets WHERE id = :w;
SELECT id, amount, balance_after, created_at FROM transactions WHERE wallet_id = :w ORDER BY created_at, id LIMIT 20;
"
}

fn main() {
    if std::env::args().any(|a| a == "--print-scripts") {
        println!("{}", pgbench_script());
        return;
    }
    let args = args();
    // Made here, outside the runtime: a panic in the benchmark unwinds through `main`,
    // and dropping them stops both servers and removes their directories.
    let work = WorkDir::new();
    let primary = Cluster::primary();
    let standby = Cluster::standby_of(&primary);
    support::block_on(run(args, &primary, &standby, &work));
    drop(standby);
    drop(primary);
}

// ---------------------------------------------------------------------------------------
// Private clusters (as tests/common/process.rs `PrivateCluster` makes them).

/// A private Postgres cluster on its own port and data directory, trust authentication
/// for `postgres`. Stopped (immediate) and removed when dropped.
struct Cluster {
    port: u16,
    dir: PathBuf,
    data: String,
    bin: PathBuf,
}

impl Cluster {
    /// initdb, then start.
    fn primary() -> Cluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let cluster = Cluster::in_new_dir(bin);
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
        cluster.start();
        cluster
    }

    /// A streaming standby of `primary` (asynchronous, hot: it answers reads).
    fn standby_of(primary: &Cluster) -> Cluster {
        let standby = Cluster::in_new_dir(primary.bin.clone());
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
        standby.start();
        standby
    }

    /// A cluster value on a free port and a fresh directory under the temporary
    /// directory, owned by `postgres` when we are root (the server refuses to run as root).
    fn in_new_dir(bin: PathBuf) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "wallet-bench-reads-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a cluster directory");
        // Built before anything can fail: from here on, dropping it cleans up.
        let cluster = Cluster {
            port: free_port(),
            data: dir.join("data").to_string_lossy().into_owned(),
            dir,
            bin,
        };
        if is_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir)
                .status()
                .expect("chown runs")
                .success();
            assert!(owned, "chown of the cluster directory");
        }
        cluster
    }

    fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &["-D", &self.data, "-o", &options, "-l", &log, "-w", "start"],
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The postmaster's process id (the first line of `postmaster.pid`).
    fn postmaster(&self) -> Option<u32> {
        std::fs::read_to_string(Path::new(&self.data).join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// One of the server's tools, run as `postgres` when we are root.
    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .tool(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &self.data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free local port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The benchmark's own scratch directory (pgbench's script and logs), removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> WorkDir {
        let dir = std::env::temp_dir().join(format!(
            "wallet-bench-reads-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        WorkDir(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// CPU: the machine's and the service's (support's `CpuMeter`), and each private cluster's.

/// CPU seconds of one cluster so far: its postmaster, the children it has waited for
/// (backends that exited) and its live children (backends, the WAL sender or receiver,
/// the background processes). Other Postgres servers on the machine are not counted.
fn cluster_cpu_seconds(postmaster: u32) -> f64 {
    let (own, exited) = support::cpu_seconds(&postmaster.to_string());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return own + exited;
    };
    let children: f64 = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()))
        .filter(|pid| parent_of(pid) == Some(postmaster))
        .map(|pid| {
            let (own, exited) = support::cpu_seconds(&pid);
            own + exited
        })
        .sum();
    own + exited + children
}

/// The parent process id, from `/proc/<pid>/stat` (the field after the state).
fn parent_of(pid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU use over a measured run, in cores.
#[derive(Clone, Copy, Debug, Default)]
struct Used {
    cpu: CpuUse,
    primary: f64,
    standby: f64,
}

impl Used {
    /// What nothing measured accounts for: other processes on the machine (builds, tests,
    /// the shared Postgres), and kernel work charged to no process. (Interrupts are charged
    /// to whatever process they land in, so they are inside the parts.)
    fn other(&self) -> f64 {
        self.cpu.machine
            - self.cpu.client
            - self.cpu.children
            - self.cpu.server
            - self.primary
            - self.standby
    }
}

struct Meter {
    cpu: CpuMeter,
    clusters: [(Option<u32>, f64); 2],
}

impl Meter {
    /// `server`: the service process measured (none for the pgbench runs).
    fn start(server: Option<u32>, primary: &Cluster, standby: &Cluster) -> Meter {
        let at = |c: &Cluster| {
            let pid = c.postmaster();
            (pid, pid.map_or(0.0, cluster_cpu_seconds))
        };
        Meter {
            clusters: [at(primary), at(standby)],
            // Pid 0 has no /proc entry: no server counted.
            cpu: CpuMeter::start(server.unwrap_or(0)),
        }
    }

    fn stop(&self) -> Used {
        let cpu = self.cpu.stop();
        let share = |(pid, then): (Option<u32>, f64)| {
            pid.map_or(0.0, |p| (cluster_cpu_seconds(p) - then) / cpu.seconds)
        };
        Used {
            cpu,
            primary: share(self.clusters[0]),
            standby: share(self.clusters[1]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The runs.

/// One row of the final table.
struct Row {
    name: String,
    rate: f64,
    p50: Duration,
    p99: Duration,
    used: Used,
    /// Operations per second the CPU figures are divided by.
    per: f64,
    replica_share: Option<f64>,
    versus: Option<f64>,
}

struct Bench<'a> {
    args: Args,
    primary: &'a Cluster,
    standby: &'a Cluster,
    work: &'a WorkDir,
    http: reqwest::Client,
    token: String,
    /// Wallet ids (contiguous: made in one statement) and their global ids.
    range: (i64, i64),
    ids: Arc<Vec<String>>,
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the private cluster answers");
    tokio::spawn(conn);
    client
}

async fn run(args: Args, primary: &Cluster, standby: &Cluster, work: &WorkDir) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("HTTP client");
    let token = TokenKeys::new(SECRET.as_bytes())
        .mint("bench-operator", Role::Operator, Duration::from_secs(3600))
        .expect("token");
    println!("machine   load average at the start: {}", load_average());
    println!(
        "reads benchmark: {} s per run after {} s of warm-up, {} clients, {} wallets x {} journal rows; \
         private primary 127.0.0.1:{} and streaming standby 127.0.0.1:{}; the service's pools at their defaults",
        args.seconds,
        WARM_UP.as_secs(),
        args.clients,
        args.wallets,
        args.rows_per_wallet,
        primary.port,
        standby.port,
    );

    // The schema, by the service itself; the data in SQL; then no service running while
    // pgbench measures.
    let port = free_port();
    let server = start_server(&http, &primary.url(DB), port, None).await;
    let range = seed(&args, primary, standby).await;
    drop(server);
    let ids: Arc<Vec<String>> = Arc::new(
        (range.0..=range.1)
            .map(|id| encode_id(NodeType::Wallet, id).to_string())
            .collect(),
    );
    let bench = Bench {
        args: args.clone(),
        primary,
        standby,
        work,
        http,
        token,
        range,
        ids,
    };
    let mut rows = Vec::new();

    let on_primary = bench.pgbench("primary", primary).await;
    let on_standby = bench.pgbench("standby", standby).await;
    let (pg_primary, pg_standby) = (on_primary.rate, on_standby.rate);
    rows.push(on_primary);
    rows.push(on_standby);

    // (a) The primary serves every read.
    let port = free_port();
    let server = start_server(&bench.http, &primary.url(DB), port, None).await;
    rows.push(
        bench
            .service("primary only", &server, port, false, pg_primary)
            .await,
    );
    drop(server);

    // (b) The standby serves the reads; (c) with deposits and reads of their writes.
    let read_url = format!("{}?target_session_attrs=prefer-standby", standby.url(DB));
    let port = free_port();
    let server = start_server(&bench.http, &primary.url(DB), port, Some(&read_url)).await;
    bench.until_the_replica_serves(port).await;
    let before = bench.reads_total(port).await;
    rows.push(
        bench
            .service("replica", &server, port, false, pg_standby)
            .await,
    );
    rows.push(
        bench
            .service("replica+RYW", &server, port, true, pg_standby)
            .await,
    );
    let after = bench.reads_total(port).await;
    println!(
        "metrics   wallet_reads_total over the replica runs (warm-ups included): replica +{:.0}, primary +{:.0}",
        after.0 - before.0,
        after.1 - before.1
    );
    bench.lag(port).await;
    drop(server);

    println!("machine   load average at the end: {}", load_average());
    table(&rows);
}

/// `/proc/loadavg`'s first three fields (other work on the machine shows here).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `wallet serve` on the primary (and the replica when `read_url` is given), ready.
async fn start_server(
    http: &reqwest::Client,
    url: &str,
    port: u16,
    read_url: Option<&str>,
) -> Server {
    let mut env = vec![
        // No simulated chain: its timers would share the two cores with the measurement.
        ("WALLET_SIMULATED_CHAIN", "false"),
        ("WALLET_SEED", SEED),
        // Throughput is measured; the operators' query budget has tests of its own (at
        // its default, 100,000 a second, it refuses most of these reads).
        ("WALLET_OPERATOR_QUERY_COST_PER_SEC", "0"),
    ];
    if let Some(read_url) = read_url {
        env.push(("WALLET_DATABASE_READ_URL", read_url));
    }
    let server = Server::start(url, port, SECRET, &env);
    wait_ready(http, port).await;
    server
}

/// `wallets` USD wallets each with `rows_per_wallet` deposits of 1.00 (a consistent
/// chain of balances, the wallet's balance at its end), loaded in SQL as the load
/// benchmark's `history` scenario loads its journal; the rows of different wallets
/// interleaved as time would have written them. Then VACUUM ANALYZE, and the standby
/// has replayed it all. The wallets' id range.
async fn seed(args: &Args, primary: &Cluster, standby: &Cluster) -> (i64, i64) {
    let started = Instant::now();
    let pg = connect(&primary.url(DB)).await;
    let balance = format!("{}.00", args.rows_per_wallet);
    let range = pg
        .query_one(
            "WITH made AS (
                 INSERT INTO wallets (user_id, currency, balance)
                 SELECT 'reads-' || g, 'USD', $2::text::numeric
                   FROM generate_series(1, $1::bigint) g
                 RETURNING id)
             SELECT min(id), max(id), count(*) FROM made",
            &[&args.wallets, &balance],
        )
        .await
        .expect("wallets");
    let (lo, hi, count): (i64, i64, i64) = (range.get(0), range.get(1), range.get(2));
    assert_eq!(hi - lo + 1, count, "wallet ids are contiguous");
    pg.batch_execute("ALTER TABLE transactions DISABLE TRIGGER transactions_insert_events")
        .await
        .expect("bulk load without per-row events");
    let loaded = pg
        .execute(
            "INSERT INTO transactions (wallet_id, type, amount, balance_before, balance_after,
                                       status, tx_hash, created_at, updated_at)
             SELECT w, 'DEPOSIT', 1.00, (g - 1)::numeric(20, 2), g::numeric(20, 2), 'COMPLETED',
                    'reads-' || w || '-' || g, t, t
               FROM generate_series(1, $3::bigint) g,
                    generate_series($1::bigint, $2::bigint) w,
                    LATERAL (SELECT now() - interval '30 days' + g * interval '1 second' AS t) ts
              ORDER BY g, w",
            &[&lo, &hi, &args.rows_per_wallet],
        )
        .await
        .expect("journal rows");
    pg.batch_execute("ALTER TABLE transactions ENABLE TRIGGER transactions_insert_events")
        .await
        .expect("triggers back");
    pg.batch_execute("VACUUM (ANALYZE) wallets, transactions")
        .await
        .expect("VACUUM ANALYZE");
    let loaded_in = started.elapsed();
    // The standby has it all.
    let at: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("the primary's position")
        .get(0);
    let replica = connect(&standby.url(DB)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let replayed: bool = replica
            .query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                &[&at],
            )
            .await
            .expect("the standby's position")
            .get(0);
        if replayed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not replay the load"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "seed      {count} wallets and {loaded} journal rows loaded in {:.1} s; the standby had replayed them {:.1} s later",
        loaded_in.as_secs_f64(),
        (started.elapsed() - loaded_in).as_secs_f64(),
    );
    (lo, hi)
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Latencies of the answers that succeeded: plain reads (no token)...
    reads: Vec<Duration>,
    /// ...deposits, and the reads presenting their token.
    deposits: Vec<Duration>,
    token_reads: Vec<Duration>,
    /// Who served plain reads and token reads, by the `wallet-read-source` header.
    reads_by_replica: u64,
    reads_unlabelled: u64,
    token_reads_by_replica: u64,
    /// Token reads whose balance was below the deposit's `balanceAfter`.
    stale: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.reads.extend(other.reads);
        self.deposits.extend(other.deposits);
        self.token_reads.extend(other.token_reads);
        self.reads_by_replica += other.reads_by_replica;
        self.reads_unlabelled += other.reads_unlabelled;
        self.token_reads_by_replica += other.token_reads_by_replica;
        self.stale += other.stale;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn error(&mut self, why: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why);
        }
    }
}

/// One answer: the body, the consistency token it carried, who read it.
struct Answer {
    body: Value,
    issued: Option<String>,
    source: Option<String>,
}

async fn post(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    consistency: Option<&str>,
    query: &str,
    variables: Value,
) -> Result<Answer, String> {
    let mut request = http
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(c) = consistency {
        request = request.header(CONSISTENCY_TOKEN, c);
    }
    let resp = request.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (issued, source) = (header(CONSISTENCY_TOKEN), header(READ_SOURCE));
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() || body.get("errors").is_some() {
        return Err(format!("{status}: {body}"));
    }
    Ok(Answer {
        body,
        issued,
        source,
    })
}

/// A read's balance, once its page is checked to be full.
fn balance_of(body: &Value, page: usize) -> Result<Decimal, String> {
    let wallet = &body["data"]["wallet"];
    let edges = wallet["transactions"]["edges"].as_array().map(Vec::len);
    if edges != Some(page) {
        return Err(format!("a page of {edges:?} rows, not {page}: {body}"));
    }
    wallet["balance"]
        .as_str()
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| format!("no balance: {body}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bench<'_> {
    fn page(&self) -> usize {
        PAGE.min(self.args.rows_per_wallet as usize)
    }

    /// `clients` clients reading (and with `writes`, one operation in ten a deposit and
    /// a read presenting its token) for `duration`.
    async fn drive(&self, port: u16, writes: bool, run: &str, duration: Duration) -> Tally {
        let deadline = Instant::now() + duration;
        let seq = Arc::new(AtomicU64::new(0));
        let page = self.page();
        let tasks: Vec<_> = (0..self.args.clients)
            .map(|client| {
                let (http, token, ids, seq) = (
                    self.http.clone(),
                    self.token.clone(),
                    self.ids.clone(),
                    seq.clone(),
                );
                let run = run.to_owned();
                tokio::spawn(async move {
                    let mut out = Tally::default();
                    while Instant::now() < deadline {
                        let (wallet, write) = {
                            let mut rng = rand::rng();
                            let wallet = ids[rng.random_range(0..ids.len())].clone();
                            (wallet, writes && rng.random_ratio(1, WRITE_EVERY))
                        };
                        if !write {
                            let sent = Instant::now();
                            let answer =
                                post(&http, port, &token, None, READ, json!({"w": wallet})).await;
                            let took = sent.elapsed();
                            match answer.and_then(|a| balance_of(&a.body, page).map(|_| a)) {
                                Ok(a) => {
                                    out.reads.push(took);
                                    match a.source.as_deref() {
                                        Some("replica") => out.reads_by_replica += 1,
                                        Some(_) => {}
                                        None => out.reads_unlabelled += 1,
                                    }
                                }
                                Err(e) => out.error(e),
                            }
                            continue;
                        }
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let key = format!("reads-{run}-{client}-{n}");
                        let sent = Instant::now();
                        let deposit = post(
                            &http,
                            port,
                            &token,
                            None,
                            DEPOSIT,
                            json!({"w": wallet, "a": "1.00", "k": key}),
                        )
                        .await;
                        let took = sent.elapsed();
                        let (after, issued) = match deposit {
                            Ok(a) => {
                                out.deposits.push(took);
                                let after = a.body["data"]["deposit"]["balanceAfter"]
                                    .as_str()
                                    .and_then(|b| b.parse::<Decimal>().ok());
                                match (after, a.issued) {
                                    (Some(after), Some(issued)) => (after, issued),
                                    _ => {
                                        out.error(format!(
                                            "a deposit without its balance or token: {}",
                                            a.body
                                        ));
                                        continue;
                                    }
                                }
                            }
                            Err(e) => {
                                out.error(e);
                                continue;
                            }
                        };
                        let sent = Instant::now();
                        let read = post(
                            &http,
                            port,
                            &token,
                            Some(&issued),
                            READ,
                            json!({"w": wallet}),
                        )
                        .await;
                        let took = sent.elapsed();
                        match read.and_then(|a| balance_of(&a.body, page).map(|b| (a, b))) {
                            Ok((a, balance)) => {
                                out.token_reads.push(took);
                                out.token_reads_by_replica +=
                                    u64::from(a.source.as_deref() == Some("replica"));
                                out.stale += u64::from(balance < after);
                            }
                            Err(e) => out.error(e),
                        }
                    }
                    out
                })
            })
            .collect();
        let mut all = Tally::default();
        for t in tasks {
            all.add(t.await.expect("client task"));
        }
        all
    }

    /// Reads until one is served by the replica (its lag measured and within the bound).
    async fn until_the_replica_serves(&self, port: u16) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            let answer = post(
                &self.http,
                port,
                &self.token,
                None,
                READ,
                json!({"w": self.ids[0]}),
            )
            .await
            .expect("a read");
            if answer.source.as_deref() == Some("replica") {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never served a read");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "replica   the service's first read served by the replica came {:.2} s after it was ready",
            started.elapsed().as_secs_f64()
        );
    }

    /// A service run: warm-up, then the measured run; its lines; its row of the table.
    async fn service(
        &self,
        name: &str,
        server: &Server,
        port: u16,
        writes: bool,
        pgbench: f64,
    ) -> Row {
        let clients = self.args.clients;
        let warm = self
            .drive(port, writes, &format!("{name}-warm"), WARM_UP)
            .await;
        if let Some(e) = &warm.first_error {
            eprintln!("{name}: warm-up error: {e}");
        }
        let meter = Meter::start(Some(server.pid()), self.primary, self.standby);
        let started = Instant::now();
        let mut all = self
            .drive(port, writes, name, Duration::from_secs(self.args.seconds))
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let used = meter.stop();
        all.reads.sort();
        all.deposits.sort();
        all.token_reads.sort();
        let reads = (all.reads.len() + all.token_reads.len()) as f64 / elapsed;
        let requests =
            (all.reads.len() + all.token_reads.len() + all.deposits.len()) as f64 / elapsed;
        let labelled = all.reads.len() as u64 - all.reads_unlabelled;
        let share = |by: u64, of: usize| match of {
            0 => 0.0,
            n => by as f64 / n as f64,
        };
        let replica_share = (labelled > 0).then(|| {
            share(
                all.reads_by_replica + all.token_reads_by_replica,
                all.reads.len() + all.token_reads.len(),
            )
        });
        let served = match replica_share {
            Some(s) => format!("{:.1} % served by the replica", s * 100.0),
            None => "no read-source header (no replica configured)".to_owned(),
        };
        let (rss, peak) = server.memory();
        println!(
            "service   {name:<12} C={clients:<3} reads {reads:>7.0}/s  p50 {:>6.2} ms  p99 {:>6.2}  max {:>7.2}  \
             ({} reads, {} errors)  {served}  |  pgbench {pgbench:>7.0}/s  ratio = {:.2}  |  RSS {} MiB (peak {} MiB)",
            ms(percentile(&all.reads, 50.0)),
            ms(percentile(&all.reads, 99.0)),
            ms(all.reads.last().copied().unwrap_or_default()),
            all.reads.len() + all.token_reads.len(),
            all.errors,
            reads / pgbench,
            rss / 1024,
            peak / 1024,
        );
        if writes {
            println!(
                "service   {name:<12} C={clients:<3} one operation in {WRITE_EVERY} a deposit then a read with its token: \
                 requests {requests:>7.0}/s  |  deposits {} p50 {:.2} ms p99 {:.2}  |  reads with a token {} p50 {:.2} ms \
                 p99 {:.2}, {:.1} % by the replica, {} stale  |  reads without {} p50 {:.2} ms p99 {:.2}, {:.1} % by the replica",
                all.deposits.len(),
                ms(percentile(&all.deposits, 50.0)),
                ms(percentile(&all.deposits, 99.0)),
                all.token_reads.len(),
                ms(percentile(&all.token_reads, 50.0)),
                ms(percentile(&all.token_reads, 99.0)),
                share(all.token_reads_by_replica, all.token_reads.len()) * 100.0,
                all.stale,
                all.reads.len(),
                ms(percentile(&all.reads, 50.0)),
                ms(percentile(&all.reads, 99.0)),
                share(all.reads_by_replica, all.reads.len()) * 100.0,
            );
        }
        // CPU per read; per request when deposits are among them.
        let (per, unit) = if writes {
            (requests, "request")
        } else {
            (reads, "read")
        };
        let cost = |share: f64| share * 1000.0 / per;
        println!(
            "service   {name:<12} C={clients:<3} CPU per {unit} (ms): machine {:.3} = client {:.3} + server {:.3} \
             + primary {:.3} + standby {:.3} (+ other {:.3}), idle {:.0} %",
            cost(used.cpu.machine),
            cost(used.cpu.client),
            cost(used.cpu.server),
            cost(used.primary),
            cost(used.standby),
            cost(used.other()),
            used.cpu.idle * 100.0,
        );
        if let Some(e) = &all.first_error {
            eprintln!("{name}: first error: {e}");
        }
        Row {
            name: format!("service, {name}"),
            rate: reads,
            p50: percentile(&all.reads, 50.0),
            p99: percentile(&all.reads, 99.0),
            used,
            per,
            replica_share,
            versus: Some(reads / pgbench),
        }
    }

    /// pgbench doing the reads against `target`: a warm-up, then the measured run with a
    /// sample of its transactions logged for the percentiles.
    async fn pgbench(&self, name: &str, target: &Cluster) -> Row {
        let clients = self.args.clients;
        let script = self.work.0.join("reads.sql");
        std::fs::write(&script, pgbench_script()).expect("pgbench script");
        self.run_pgbench(target, &script, WARM_UP.as_secs(), None)
            .await;
        let prefix = self.work.0.join(format!("log-{name}"));
        let meter = Meter::start(None, self.primary, self.standby);
        let output = self
            .run_pgbench(target, &script, self.args.seconds, Some(&prefix))
            .await;
        let used = meter.stop();
        let text = String::from_utf8_lossy(&output.stdout);
        let rate = text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| {
                eprintln!(
                    "pgbench failed: {text}{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                f64::NAN
            });
        let mut latencies = self.pgbench_latencies(&prefix);
        latencies.sort();
        let cost = |share: f64| share * 1000.0 / rate;
        println!(
            "pgbench   {name:<12} C={clients:<3} reads {rate:>7.0}/s  p50 {:>6.2} ms  p99 {:>6.2}  max {:>7.2}  \
             ({} reads logged of ~{:.0})",
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
            ms(latencies.last().copied().unwrap_or_default()),
            latencies.len(),
            rate * used.cpu.seconds,
        );
        println!(
            "pgbench   {name:<12} C={clients:<3} CPU per read (ms): machine {:.3} = pgbench {:.3} + primary {:.3} \
             + standby {:.3} (+ other {:.3}), idle {:.0} %",
            cost(used.cpu.machine),
            cost(used.cpu.children),
            cost(used.primary),
            cost(used.standby),
            cost(used.other()),
            used.cpu.idle * 100.0,
        );
        Row {
            name: format!("pgbench, {name}"),
            rate,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            used,
            per: rate,
            replica_share: None,
            versus: None,
        }
    }

    async fn run_pgbench(
        &self,
        target: &Cluster,
        script: &Path,
        seconds: u64,
        log: Option<&Path>,
    ) -> std::process::Output {
        let (lo, hi) = self.range;
        let mut command = tokio::process::Command::new(target.bin.join("pgbench"));
        command
            .args(["-n", "-M", "prepared", "-j", "2"])
            .args(["-T", &seconds.to_string()])
            .args(["-c", &self.args.clients.to_string()])
            .args(["-D", &format!("lo={lo}"), "-D", &format!("hi={hi}")])
            .arg("-f")
            .arg(script);
        if let Some(prefix) = log {
            command
                .arg("-l")
                .arg(format!("--sampling-rate={PGBENCH_SAMPLING}"))
                .arg(format!("--log-prefix={}", prefix.display()));
        }
        command
            .arg(target.url(DB))
            .output()
            .await
            .expect("pgbench runs (it ships with Postgres)")
    }

    /// Latencies from pgbench's per-transaction logs `<prefix>.<pid>[.<thread>]` (the
    /// third field, in microseconds); the logs are removed.
    fn pgbench_latencies(&self, prefix: &Path) -> Vec<Duration> {
        let stem = prefix
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.work.0)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{stem}.")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
                    .map(Duration::from_micros),
            );
            let _ = std::fs::remove_file(entry.path());
        }
        out
    }

    /// `wallet_reads_total` of the service on `port`: (replica, primary).
    async fn reads_total(&self, port: u16) -> (f64, f64) {
        let text = self.metrics(port).await;
        (
            metric(&text, "wallet_reads_total{target=\"replica\"}").unwrap_or(0.0),
            metric(&text, "wallet_reads_total{target=\"primary\"}").unwrap_or(0.0),
        )
    }

    async fn metrics(&self, port: u16) -> String {
        match self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => {
                eprintln!("/metrics: {e}");
                String::new()
            }
        }
    }

    /// The replica's lag after the runs: as the service measures it, and as the primary
    /// sees its standby.
    async fn lag(&self, port: u16) {
        let text = self.metrics(port).await;
        let seconds = metric(&text, "wallet_replica_lag_seconds{");
        let bytes = metric(&text, "wallet_replica_lag_bytes{");
        let pg = connect(&self.primary.url(DB)).await;
        let seen = pg
            .query_opt(
                "SELECT coalesce(extract(epoch FROM replay_lag)::float8, 0),
                        pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8
                   FROM pg_stat_replication LIMIT 1",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| (r.get::<_, f64>(0), r.get::<_, f64>(1)));
        let show = |v: Option<f64>, scale: f64, unit: &str| {
            v.map_or("unknown".to_owned(), |v| format!("{:.1} {unit}", v * scale))
        };
        println!(
            "replica   lag at the end: the service measures {} ({} behind); pg_stat_replication: replay_lag {}, {} behind",
            show(seconds, 1000.0, "ms"),
            show(bytes, 1.0, "bytes"),
            show(seen.map(|s| s.0), 1000.0, "ms"),
            show(seen.map(|s| s.1), 1.0, "bytes"),
        );
    }
}

/// The value of the first metric line starting with `name`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn table(rows: &[Row]) {
    println!();
    println!(
        "{:<26} {:>9} {:>8} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>10}",
        "run",
        "reads/s",
        "p50 ms",
        "p99 ms",
        "CPU/op ms",
        "client",
        "server",
        "primary",
        "standby",
        "other",
        "idle",
        "replica",
        "/ pgbench",
    );
    for row in rows {
        let cost = |share: f64| share * 1000.0 / row.per;
        // The load generator: this process for the service, pgbench for the baselines.
        let client = row.used.cpu.client + row.used.cpu.children;
        println!(
            "{:<26} {:>9.0} {:>8.2} {:>8.2} {:>11.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>5.0}% {:>9} {:>10}",
            row.name,
            row.rate,
            ms(row.p50),
            ms(row.p99),
            cost(row.used.cpu.machine),
            cost(client),
            cost(row.used.cpu.server),
            cost(row.used.primary),
            cost(row.used.standby),
            cost(row.used.other()),
            row.used.cpu.idle * 100.0,
            row.replica_share
                .map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0)),
            row.versus.map_or("-".to_owned(), |v| format!("{v:.2}")),
        );
    }
    println!(
        "(CPU per operation: ms of the machine's CPU, then its parts — the load generator (this process or \
         pgbench), the service, each private cluster, and the rest (other processes on the machine, \
         the kernel); per request in the run with deposits. p50/p99 of the \
         service's runs are of reads without a token.)"
    );
}
