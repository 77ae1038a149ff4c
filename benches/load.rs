//! Load benchmark: the service against the best the same Postgres does with raw
//! SQL, in the same run.
//!
//! Starts one `wallet serve` process on a fresh database, prepares the data, drives the
//! service over HTTP keep-alive with GraphQL mutations from C concurrent clients for T
//! seconds per scenario, and runs `pgbench` doing the same work one movement per SQL
//! transaction against the same wallets: on a lean schema (a deposit is `UPDATE …
//! RETURNING` of the balance and a journal insert with a unique key; a transfer is one
//! call of a double-entry transfer function, see `lean_copy`) and on the service's own
//! tables. Prints throughput, latency percentiles, the ratios, the server's memory, and
//! each side's CPU per operation (the machine's, from `/proc/stat`, and its parts) with
//! the share of the machine left idle.
//!
//! cargo bench --bench load -- [--scenario all|ceiling|spread|hot|mixed|transfer|transfer-hot|holds|credit|history|reconcile]
//!     [--seconds 10] [--clients 16] [--wallets 10000] [--history-rows 1000000]
//!     [--deep-page 10000] [--deposits 2000]
//!
//! `holds` compares an authorisation followed by its capture (two requests, one pair)
//! with a transfer, on the same 2,000 wallets in the same run: pairs per second against
//! transfers per second, and the machine's CPU per pair and per transfer.
//!
//! `credit` is the crypto deposit watcher's rate: a second server with the simulated
//! chain, `--deposits` transfers to as many wallets' addresses mined in one block, then
//! the blocks that confirm them; it reports how fast the holds are recorded and then
//! credited.
//!
//! `WALLET_BENCH_DATABASE_URL` names the Postgres server (default
//! postgres://postgres@127.0.0.1:5432); the benchmark creates and drops its own database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use wallet::auth::{Role, TokenKeys};
use wallet::graphql::ids::{NodeType, encode_id};

mod support;
use support::{CpuMeter, CpuUse, Server, gql, percentile, wait_ready};

const SECRET: &str = "load-benchmark-secret-0123456789abcdef";
/// The custody seed of both servers (BIP39's test mnemonic).
const SEED: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                    abandon abandon about";
const PORT: u16 = 18093;
/// The `credit` scenario's server, with the simulated chain.
const CHAIN_PORT: u16 = 18094;
const DB: &str = "wallet_bench_load";
/// Load before each measured run, not counted.
const WARM_UP: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct Args {
    scenarios: Vec<String>,
    seconds: u64,
    clients: usize,
    wallets: i64,
    history_rows: i64,
    deep_page: usize,
    deposits: i64,
}

fn args() -> Args {
    let mut out = Args {
        scenarios: vec![],
        seconds: 10,
        clients: 16,
        wallets: 10_000,
        history_rows: 1_000_000,
        deep_page: 10_000,
        deposits: 2_000,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).cloned().unwrap_or_default();
        let number = || value().parse::<u64>().expect("a number");
        match argv[i].as_str() {
            "--scenario" => out.scenarios.push(value()),
            "--seconds" => out.seconds = number(),
            "--clients" => out.clients = number() as usize,
            "--wallets" => out.wallets = number() as i64,
            "--history-rows" => out.history_rows = number() as i64,
            "--deep-page" => out.deep_page = number() as usize,
            "--deposits" => out.deposits = number() as i64,
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    if out.scenarios.is_empty() || out.scenarios.iter().any(|s| s == "all") {
        out.scenarios = [
            "ceiling",
            "spread",
            "hot",
            "mixed",
            "transfer",
            "transfer-hot",
            "holds",
            "credit",
            "history",
            "reconcile",
        ]
        .map(String::from)
        .to_vec();
    }
    out
}

fn main() {
    // The baselines' SQL, for reading: `cargo bench --bench load -- --print-scripts`.
    if std::env::args().any(|a| a == "--print-scripts") {
        for work in [Work::Deposits, Work::Mixed(50), Work::Transfers] {
            for tables in [Tables::Lean, Tables::Service] {
                println!(
                    "-- {work:?} on the {tables:?} tables\n{}",
                    pgbench_script(work, tables)
                );
            }
        }
        return;
    }
    support::block_on(run(args()));
}

struct Bench {
    args: Args,
    url: String,
    http: reqwest::Client,
    token: String,
    pg: tokio_postgres::Client,
    server: Server,
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("Postgres is running");
    tokio::spawn(conn);
    client
}

async fn run(args: Args) {
    let base = std::env::var("WALLET_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let admin = connect(&format!("{base}/postgres")).await;
    for statement in [
        format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"),
        format!("CREATE DATABASE {DB}"),
    ] {
        admin
            .batch_execute(&statement)
            .await
            .expect("a fresh database");
    }
    let url = format!("{base}/{DB}");
    // No simulated chain: its timers would share the two cores with the measurement.
    let server = Server::start(
        &url,
        PORT,
        SECRET,
        &[("WALLET_SIMULATED_CHAIN", "false"), ("WALLET_SEED", SEED)],
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("HTTP client");
    wait_ready(&http, PORT).await;
    let token = TokenKeys::new(SECRET.as_bytes())
        // The longest an operator token may last.
        .mint("bench-operator", Role::Operator, Duration::from_secs(3600))
        .expect("token");
    let pg = connect(&url).await;
    // For experiments: SQL run on the benchmark's database before the scenarios.
    if let Ok(setup) = std::env::var("WALLET_BENCH_SETUP_SQL") {
        pg.batch_execute(&setup)
            .await
            .expect("WALLET_BENCH_SETUP_SQL");
    }
    let bench = Bench {
        args: args.clone(),
        url,
        http,
        token,
        pg,
        server,
    };
    println!(
        "load benchmark: {} s per scenario, {} clients, service on 127.0.0.1:{PORT}, database {DB}",
        args.seconds, args.clients
    );
    for scenario in &args.scenarios {
        match scenario.as_str() {
            "spread" => {
                let ids = bench.wallets("spread", args.wallets, "1000000.00").await;
                bench
                    .throughput("spread", &ids, args.clients, Work::Deposits)
                    .await;
            }
            "hot" => {
                let ids = bench.wallets("hot", 1, "1000000.00").await;
                bench
                    .throughput("hot", &ids, args.clients, Work::Deposits)
                    .await;
                bench.throughput("hot", &ids, 64, Work::Deposits).await;
            }
            "mixed" => {
                // Empty wallets: early withdrawals fail for insufficient funds, later ones
                // mostly find the deposits before them.
                let ids = bench.wallets("mixed", 1_000, "0.00").await;
                bench
                    .throughput("mixed", &ids, args.clients, Work::Mixed(50))
                    .await;
            }
            "transfer" => {
                let ids = bench.wallets("transfer", 2_000, "1000000.00").await;
                bench
                    .throughput("transfer", &ids, args.clients, Work::Transfers)
                    .await;
            }
            "transfer-hot" => {
                // Transfers among 10 accounts: most of them wait on each other's locks.
                let ids = bench.wallets("transfer-hot", 10, "1000000.00").await;
                bench
                    .throughput("xfer-hot", &ids, args.clients, Work::Transfers)
                    .await;
            }
            "holds" => {
                let ids = bench.wallets("holds", 2_000, "1000000.00").await;
                bench.holds(&ids, args.clients).await;
            }
            "credit" => bench.credit(args.deposits).await,
            "ceiling" => bench.ceiling(args.clients).await,
            "history" => bench.history().await,
            "reconcile" => {
                bench.reconcile().await;
                bench.scheduled_reconciliation(args.wallets).await;
            }
            other => eprintln!("unknown scenario {other:?}"),
        }
    }
    drop(bench);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await
        .ok();
}

/// What a throughput scenario's clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Deposits,
    /// Deposits, and this percentage of withdrawals.
    Mixed(u32),
    /// Transfers between two distinct random wallets.
    Transfers,
    /// An authorisation of 1.00 on a random wallet, then its capture (the pair is one
    /// operation).
    Holds,
    /// `{ __typename }`: HTTP, authentication and GraphQL with no database work — the
    /// ceiling any request of the service runs under on this machine.
    Typename,
}

const TRANSFER: &str = "mutation($from: ID!, $to: ID!, $a: Decimal!, $k: String!) {
  transfer(input: {fromWalletId: $from, toWalletId: $to, amount: $a, idempotencyKey: $k}) { id } }";
const AUTHORIZE: &str = "mutation($w: ID!, $a: Decimal!, $k: String!) {
  authorizeHold(input: {walletId: $w, amount: $a, idempotencyKey: $k}) { id } }";
const CAPTURE: &str = "mutation($h: ID!, $k: String!) {
  captureHold(input: {holdId: $h, idempotencyKey: $k}) { id status } }";
const DEPOSIT: &str = "mutation($w: ID!, $a: Decimal!, $k: String!) {
  deposit(input: {walletId: $w, amount: $a, idempotencyKey: $k}) { id balanceAfter } }";
const WITHDRAW: &str = "mutation($w: ID!, $a: Decimal!, $k: String!) {
  withdraw(input: {walletId: $w, amount: $a, idempotencyKey: $k}) { id balanceAfter } }";

#[derive(Default)]
struct Outcomes {
    latencies: Vec<Duration>,
    ok: u64,
    refused: u64,
    errors: u64,
}

impl Bench {
    /// `count` USD wallets of users `<prefix>-<n>`, each holding `balance`; their ids.
    async fn wallets(&self, prefix: &str, count: i64, balance: &str) -> Vec<i64> {
        let rows = self
            .pg
            .query(
                "INSERT INTO wallets (user_id, currency, balance)
                 SELECT $1 || '-' || g, 'USD', $2::text::numeric FROM generate_series(1, $3::bigint) g
                 RETURNING id",
                &[&prefix, &balance, &count],
            )
            .await
            .expect("wallets");
        rows.iter().map(|r| r.get(0)).collect()
    }

    fn rss(&self) -> String {
        let (rss, peak) = self.server.memory();
        format!("RSS {} MiB (peak {} MiB)", rss / 1024, peak / 1024)
    }

    /// C clients for T seconds sending `work`; then pgbench doing the same work, on the
    /// lean schema and on the service's own tables.
    async fn throughput(&self, name: &str, ids: &[i64], clients: usize, work: Work) {
        // Created in one statement: a contiguous range for pgbench.
        let range = (
            ids.iter().copied().min().unwrap_or(1),
            ids.iter().copied().max().unwrap_or(1),
        );
        let ids: Arc<Vec<String>> = Arc::new(
            ids.iter()
                .map(|&id| encode_id(NodeType::Wallet, id).to_string())
                .collect(),
        );
        // Warm up (connections, prepared statements), then let the planner see the
        // tables as they now are — as autovacuum would on a running system, and as
        // pgbench's own initialisation does.
        self.drive(&format!("{name}-warm"), &ids, clients, work, WARM_UP)
            .await;
        self.pg.batch_execute("ANALYZE").await.expect("ANALYZE");
        let cpu = CpuMeter::start(self.server.pid());
        let started = Instant::now();
        let seconds = Duration::from_secs(self.args.seconds);
        let mut all = self.drive(name, &ids, clients, work, seconds).await;
        let elapsed = started.elapsed().as_secs_f64();
        let used = cpu.stop();
        all.latencies.sort();
        let requests = all.latencies.len() as f64;
        let tps = requests / elapsed;
        self.lean_copy(range).await;
        let (lean, lean_cpu) = self.pgbench(range, clients, work, Tables::Lean).await;
        let (own, own_cpu) = self.pgbench(range, clients, work, Tables::Service).await;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name:<9} C={clients:<3} service {tps:>7.0}/s  p50 {:>6.2} ms  p95 {:>6.2}  p99 {:>6.2}  max {:>7.2}  \
             ({} ok, {} refused, {} errors)  |  lean pgbench {lean:>6.0}/s  ratio = {:.2}  |  \
             pgbench on the service's tables {own:>6.0}/s  ratio = {:.2}  |  {}",
            ms(percentile(&all.latencies, 50.0)),
            ms(percentile(&all.latencies, 95.0)),
            ms(percentile(&all.latencies, 99.0)),
            ms(all.latencies.last().copied().unwrap_or_default()),
            all.ok,
            all.refused,
            all.errors,
            tps / lean,
            tps / own,
            self.rss(),
        );
        let per = |share: f64, rate: f64| share * 1000.0 / rate;
        println!(
            "{name:<9} C={clients:<3} CPU per operation (ms): service: machine {:.3} = client {:.3} + server {:.3} \
             + Postgres {:.3} (+ other {:.3}), idle {:.0} %  |  lean pgbench: machine {:.3} = pgbench {:.3} \
             + Postgres {:.3}, idle {:.0} %  |  pgbench on the service's tables: machine {:.3}, Postgres {:.3}  \
             |  machine CPU ratio (service / lean) = {:.2}",
            per(used.machine, tps),
            per(used.client, tps),
            per(used.server, tps),
            per(used.postgres, tps),
            per(
                used.machine - used.client - used.server - used.postgres,
                tps
            ),
            used.idle * 100.0,
            per(lean_cpu.machine, lean),
            per(lean_cpu.children, lean),
            per(lean_cpu.postgres, lean),
            lean_cpu.idle * 100.0,
            per(own_cpu.machine, own),
            per(own_cpu.postgres, own),
            per(used.machine, tps) / per(lean_cpu.machine, lean),
        );
    }

    /// Authorisation + capture pairs against transfers, on the same wallets, back to back.
    async fn holds(&self, ids: &[i64], clients: usize) {
        let ids: Arc<Vec<String>> = Arc::new(
            ids.iter()
                .map(|&id| encode_id(NodeType::Wallet, id).to_string())
                .collect(),
        );
        let seconds = Duration::from_secs(self.args.seconds);
        let mut rates = Vec::new();
        for (name, work) in [("xfer", Work::Transfers), ("hold+cap", Work::Holds)] {
            self.drive(&format!("{name}-warm"), &ids, clients, work, WARM_UP)
                .await;
            self.pg.batch_execute("ANALYZE").await.expect("ANALYZE");
            let cpu = CpuMeter::start(self.server.pid());
            let started = Instant::now();
            let mut all = self.drive(name, &ids, clients, work, seconds).await;
            let rate = all.latencies.len() as f64 / started.elapsed().as_secs_f64();
            let used = cpu.stop();
            all.latencies.sort();
            println!(
                "holds     C={clients:<3} {name:<8} {rate:>7.0}/s  p50 {:>6.2} ms  p99 {:>6.2}  ({} ok, {} refused, \
                 {} errors)  |  CPU per operation (ms): machine {:.3} = client {:.3} + server {:.3} + Postgres \
                 {:.3}, idle {:.0} %",
                percentile(&all.latencies, 50.0).as_secs_f64() * 1000.0,
                percentile(&all.latencies, 99.0).as_secs_f64() * 1000.0,
                all.ok,
                all.refused,
                all.errors,
                used.machine * 1000.0 / rate,
                used.client * 1000.0 / rate,
                used.server * 1000.0 / rate,
                used.postgres * 1000.0 / rate,
                used.idle * 100.0,
            );
            rates.push(rate);
        }
        println!(
            "holds     C={clients:<3} authorise+capture pairs per transfer = {:.2}  |  {}",
            rates[1] / rates[0],
            self.rss()
        );
    }

    /// The transport's ceiling: requests that do no database work, and the CPU each takes.
    async fn ceiling(&self, clients: usize) {
        let none = Arc::new(vec![String::new()]);
        self.drive("ceiling-warm", &none, clients, Work::Typename, WARM_UP)
            .await;
        let cpu = CpuMeter::start(self.server.pid());
        let started = Instant::now();
        let seconds = Duration::from_secs(self.args.seconds);
        let mut all = self
            .drive("ceiling", &none, clients, Work::Typename, seconds)
            .await;
        let rate = all.latencies.len() as f64 / started.elapsed().as_secs_f64();
        let used = cpu.stop();
        all.latencies.sort();
        println!(
            "ceiling   C={clients:<3} {{ __typename }} {rate:>7.0}/s  p50 {:.2} ms  p99 {:.2} ms  ({} errors)  |  \
             CPU (cores): client {:.2} ({:.3} ms/request), server {:.2} ({:.3} ms/request)",
            percentile(&all.latencies, 50.0).as_secs_f64() * 1000.0,
            percentile(&all.latencies, 99.0).as_secs_f64() * 1000.0,
            all.errors,
            used.client,
            used.client * 1000.0 / rate,
            used.server,
            used.server * 1000.0 / rate,
        );
    }

    /// `clients` clients sending `work` for `duration`; every answer's latency and kind.
    async fn drive(
        &self,
        name: &str,
        ids: &Arc<Vec<String>>,
        clients: usize,
        work: Work,
        duration: Duration,
    ) -> Outcomes {
        let deadline = Instant::now() + duration;
        let seq = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let (http, token, ids, seq, name) = (
                    self.http.clone(),
                    self.token.clone(),
                    ids.clone(),
                    seq.clone(),
                    name.to_owned(),
                );
                tokio::spawn(async move {
                    let mut out = Outcomes::default();
                    while Instant::now() < deadline {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let key = format!("{name}-{client}-{n}");
                        let (query, variables) = {
                            let mut rng = rand::rng();
                            let a = rng.random_range(0..ids.len());
                            match work {
                                Work::Transfers => {
                                    let b = (a + rng.random_range(1..ids.len())) % ids.len();
                                    (
                                        TRANSFER,
                                        json!({"from": ids[a], "to": ids[b], "a": "1.00", "k": key}),
                                    )
                                }
                                Work::Mixed(p) if rng.random_range(0..100) < p => {
                                    (WITHDRAW, json!({"w": ids[a], "a": "1.00", "k": key}))
                                }
                                Work::Typename => ("{ __typename }", json!({})),
                                Work::Holds => {
                                    (AUTHORIZE, json!({"w": ids[a], "a": "1.00", "k": key}))
                                }
                                _ => (DEPOSIT, json!({"w": ids[a], "a": "1.00", "k": key})),
                            }
                        };
                        let sent = Instant::now();
                        let mut body = gql(&http, PORT, &token, query, variables).await;
                        if work == Work::Holds
                            && let Some(hold) = body["data"]["authorizeHold"]["id"].as_str()
                        {
                            let capture = json!({"h": hold, "k": format!("{key}-c")});
                            body = gql(&http, PORT, &token, CAPTURE, capture).await;
                        }
                        out.latencies.push(sent.elapsed());
                        match body["errors"][0]["extensions"]["code"].as_str() {
                            None => out.ok += 1,
                            Some("INSUFFICIENT_FUNDS") => out.refused += 1,
                            Some(_) => {
                                out.errors += 1;
                                if out.errors == 1 {
                                    eprintln!("error: {body}");
                                }
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        let mut all = Outcomes::default();
        for t in tasks {
            let out = t.await.expect("client task");
            all.latencies.extend(out.latencies);
            all.ok += out.ok;
            all.refused += out.refused;
            all.errors += out.errors;
        }
        all
    }

    /// The lean schema a team writing the SQL themselves would use — a wallets table and
    /// a journal with a unique key per wallet and the history index, no triggers — holding
    /// the scenario's wallets (same ids and balances).
    async fn lean_copy(&self, (lo, hi): (i64, i64)) {
        self.pg
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS lean_wallets (
                     id         BIGINT PRIMARY KEY,
                     balance    NUMERIC NOT NULL CHECK (balance >= 0),
                     updated_at TIMESTAMPTZ NOT NULL);
                 CREATE TABLE IF NOT EXISTS lean_journal (
                     id             BIGSERIAL PRIMARY KEY,
                     wallet_id      BIGINT NOT NULL REFERENCES lean_wallets (id),
                     kind           TEXT NOT NULL,
                     amount         NUMERIC NOT NULL,
                     balance_before NUMERIC NOT NULL,
                     balance_after  NUMERIC NOT NULL,
                     key            TEXT NOT NULL,
                     created_at     TIMESTAMPTZ NOT NULL,
                     UNIQUE (wallet_id, key));
                 CREATE INDEX IF NOT EXISTS lean_journal_history
                     ON lean_journal (wallet_id, created_at, id);
                 -- A double-entry transfer as a published Postgres ledger writes it: a
                 -- transfer row and one entry per account with its balances before and
                 -- after, both accounts locked in id order, in one function call.
                 CREATE TABLE IF NOT EXISTS lean_transfers (
                     id             BIGSERIAL PRIMARY KEY,
                     from_wallet_id BIGINT NOT NULL REFERENCES lean_wallets (id),
                     to_wallet_id   BIGINT NOT NULL REFERENCES lean_wallets (id),
                     amount         NUMERIC NOT NULL CHECK (amount > 0),
                     key            TEXT NOT NULL,
                     created_at     TIMESTAMPTZ NOT NULL,
                     UNIQUE (from_wallet_id, key));
                 CREATE TABLE IF NOT EXISTS lean_entries (
                     id             BIGSERIAL PRIMARY KEY,
                     wallet_id      BIGINT NOT NULL REFERENCES lean_wallets (id),
                     transfer_id    BIGINT NOT NULL REFERENCES lean_transfers (id),
                     amount         NUMERIC NOT NULL,
                     balance_before NUMERIC NOT NULL,
                     balance_after  NUMERIC NOT NULL,
                     created_at     TIMESTAMPTZ NOT NULL);
                 CREATE INDEX IF NOT EXISTS lean_entries_history
                     ON lean_entries (wallet_id, created_at, id);
                 CREATE INDEX IF NOT EXISTS lean_entries_transfer ON lean_entries (transfer_id);
                 CREATE INDEX IF NOT EXISTS lean_transfers_to ON lean_transfers (to_wallet_id);
                 CREATE INDEX IF NOT EXISTS lean_transfers_created ON lean_transfers (created_at);
                 CREATE OR REPLACE FUNCTION lean_transfer(
                     from_id BIGINT, to_id BIGINT, moved NUMERIC, request_key TEXT)
                 RETURNS BIGINT LANGUAGE plpgsql AS $$
                 DECLARE
                     transfer_id BIGINT;
                     from_after NUMERIC;
                     to_after NUMERIC;
                 BEGIN
                     PERFORM 1 FROM lean_wallets WHERE id IN (from_id, to_id)
                       ORDER BY id FOR NO KEY UPDATE;
                     UPDATE lean_wallets SET balance = balance - moved, updated_at = now()
                      WHERE id = from_id RETURNING balance INTO from_after;
                     UPDATE lean_wallets SET balance = balance + moved, updated_at = now()
                      WHERE id = to_id RETURNING balance INTO to_after;
                     INSERT INTO lean_transfers (from_wallet_id, to_wallet_id, amount, key, created_at)
                     VALUES (from_id, to_id, moved, request_key, now())
                     RETURNING id INTO transfer_id;
                     INSERT INTO lean_entries
                         (wallet_id, transfer_id, amount, balance_before, balance_after, created_at)
                     VALUES (from_id, transfer_id, -moved, from_after + moved, from_after, now()),
                            (to_id, transfer_id, moved, to_after - moved, to_after, now());
                     RETURN transfer_id;
                 END $$;",
            )
            .await
            .expect("lean schema");
        self.pg
            .execute(
                "INSERT INTO lean_wallets (id, balance, updated_at)
                 SELECT id, balance, updated_at FROM wallets WHERE id BETWEEN $1 AND $2
                 ON CONFLICT (id) DO NOTHING",
                &[&lo, &hi],
            )
            .await
            .expect("lean wallets");
        self.pg
            .batch_execute("ANALYZE lean_wallets, lean_journal, lean_transfers, lean_entries")
            .await
            .expect("ANALYZE");
    }

    /// Transactions per second of `pgbench` doing the scenario's work, one movement per
    /// SQL transaction, on the wallets `lo..=hi` of `tables`, with `clients` connections
    /// for the scenario's duration; and the CPU it took.
    async fn pgbench(
        &self,
        (lo, hi): (i64, i64),
        clients: usize,
        work: Work,
        tables: Tables,
    ) -> (f64, CpuUse) {
        let script = std::env::temp_dir().join(format!("wallet-bench-{}.sql", std::process::id()));
        std::fs::write(&script, pgbench_script(work, tables)).expect("pgbench script");
        // The same warm-up and fresh statistics the service gets: a plan made against an
        // empty journal (a foreign-key check by sequential scan, say) would slow the
        // baseline down as its tables grow.
        self.run_pgbench(&script, (lo, hi), clients, work, WARM_UP.as_secs())
            .await;
        self.pg.batch_execute("ANALYZE").await.expect("ANALYZE");
        let cpu = CpuMeter::start(self.server.pid());
        let output = self
            .run_pgbench(&script, (lo, hi), clients, work, self.args.seconds)
            .await;
        let used = cpu.stop();
        let _ = std::fs::remove_file(&script);
        let text = String::from_utf8_lossy(&output.stdout);
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok());
        match tps {
            Some(tps) => (tps, used),
            None => {
                eprintln!(
                    "pgbench failed: {text}{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                (f64::NAN, used)
            }
        }
    }

    async fn run_pgbench(
        &self,
        script: &std::path::Path,
        (lo, hi): (i64, i64),
        clients: usize,
        work: Work,
        seconds: u64,
    ) -> std::process::Output {
        let url = self.url.clone();
        let seconds = seconds.to_string();
        tokio::process::Command::new("pgbench")
            .args(["-n", "-j", "2", "-T", &seconds, "-c", &clients.to_string()])
            .args(["-D", &format!("lo={lo}"), "-D", &format!("hi={hi}")])
            .args([
                "-D",
                &format!(
                    "pct={}",
                    match work {
                        Work::Mixed(p) => p,
                        _ => 0,
                    }
                ),
            ])
            .arg("-f")
            .arg(script)
            .arg(&url)
            .output()
            .await
            .expect("pgbench runs (it ships with Postgres)")
    }

    /// A wallet with `history_rows` journal rows (a consistent chain), loaded in SQL.
    async fn history_wallet(&self) -> (i64, String) {
        let id = self.wallets("history", 1, "0.00").await[0];
        let rows = self.args.history_rows;
        let started = Instant::now();
        self.pg
            .batch_execute("ALTER TABLE transactions DISABLE TRIGGER transactions_insert_events")
            .await
            .expect("bulk load without per-row events");
        self.pg
            .execute(
                "INSERT INTO transactions (wallet_id, type, amount, balance_before, balance_after,
                                           status, tx_hash, created_at, updated_at)
                 SELECT $1, 'DEPOSIT', 1.00, (g - 1)::numeric(20, 2), g::numeric(20, 2), 'COMPLETED',
                        'history-' || g, t, t
                   FROM generate_series(1, $2::bigint) g,
                        LATERAL (SELECT now() - interval '30 days' + g * interval '1 millisecond' AS t) ts",
                &[&id, &rows],
            )
            .await
            .expect("history rows");
        self.pg
            .batch_execute(
                "ALTER TABLE transactions ENABLE TRIGGER transactions_insert_events; ANALYZE transactions",
            )
            .await
            .expect("triggers back");
        let balance = format!("{rows}.00");
        self.pg
            .execute(
                "UPDATE wallets SET balance = $2::text::numeric, updated_at = now() WHERE id = $1",
                &[&id, &balance],
            )
            .await
            .expect("balance");
        println!(
            "history   loaded {rows} journal rows in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        (id, balance)
    }

    async fn history(&self) {
        const PAGE: &str = "query($w: ID!, $after: String) { wallet(id: $w) {
          transactions(first: 50, after: $after) { pageInfo { hasNextPage endCursor }
            edges { node { id amount balanceAfter createdAt } } } } }";
        let (id, _) = self.history_wallet().await;
        let wallet = encode_id(NodeType::Wallet, id).to_string();
        let deep = self.args.deep_page;
        let marks = [1, 100, deep];
        let page_at = |after: Option<String>| {
            gql(
                &self.http,
                PORT,
                &self.token,
                PAGE,
                json!({"w": wallet, "after": after}),
            )
        };
        let mut after: Option<String> = None;
        let walk = Instant::now();
        for page in 1..=deep {
            if marks.contains(&page) {
                let mut samples = Vec::new();
                for _ in 0..25 {
                    let sent = Instant::now();
                    page_at(after.clone()).await;
                    samples.push(sent.elapsed());
                }
                samples.sort();
                println!(
                    "history   transactions(first: 50) page {page:>6}: p50 {:.2} ms  p99 {:.2} ms  (25 requests)  |  {}",
                    percentile(&samples, 50.0).as_secs_f64() * 1000.0,
                    percentile(&samples, 99.0).as_secs_f64() * 1000.0,
                    self.rss()
                );
            }
            let body = page_at(after.clone()).await;
            let info = &body["data"]["wallet"]["transactions"]["pageInfo"];
            after = info["endCursor"].as_str().map(str::to_owned);
            if !info["hasNextPage"].as_bool().unwrap_or(false) {
                println!("history   the journal ended at page {page}");
                break;
            }
        }
        println!(
            "history   walked {deep} pages in {:.1} s",
            walk.elapsed().as_secs_f64()
        );
        self.filtered_listing(&wallet).await;
        self.own_listing().await;
    }

    /// Filtered listings of the million-row wallet: a type and a status no row has, and a
    /// one-second window deep in its history (about a thousand rows: the rows were loaded
    /// one millisecond apart from 30 days ago).
    async fn filtered_listing(&self, wallet: &str) {
        const FILTERED: &str = "query($w: ID!, $f: TransactionFilter) { wallet(id: $w) {
          transactions(first: 50, filter: $f) { edges { node { id } } } } }";
        let from = chrono::Utc::now() - chrono::Duration::days(30) + chrono::Duration::seconds(900);
        let to = from + chrono::Duration::seconds(1);
        for (name, filter) in [
            ("a rare type (REFUND)", json!({"types": ["REFUND"]})),
            ("a rare status (FAILED)", json!({"statuses": ["FAILED"]})),
            (
                "one second deep in history",
                json!({"createdFrom": from.to_rfc3339(), "createdTo": to.to_rfc3339()}),
            ),
        ] {
            let mut samples = Vec::new();
            for _ in 0..25 {
                let sent = Instant::now();
                let body = gql(
                    &self.http,
                    PORT,
                    &self.token,
                    FILTERED,
                    json!({"w": wallet, "f": filter}),
                )
                .await;
                samples.push(sent.elapsed());
                assert!(body["errors"].is_null(), "{body}");
            }
            samples.sort();
            println!(
                "history   transactions(first: 50) filtered by {name}: p50 {:.2} ms  p99 {:.2} ms",
                percentile(&samples, 50.0).as_secs_f64() * 1000.0,
                percentile(&samples, 99.0).as_secs_f64() * 1000.0,
            );
        }
    }

    /// A user with one transaction lists their own (no `walletId`) beside the million rows
    /// of another user: the cost must be the page's, not the journal's.
    async fn own_listing(&self) {
        let w = self.wallets("lonely", 1, "0.00").await[0];
        let wallet = encode_id(NodeType::Wallet, w).to_string();
        gql(
            &self.http,
            PORT,
            &self.token,
            DEPOSIT,
            json!({"w": wallet, "a": "1.00", "k": "lonely-1"}),
        )
        .await;
        let user = TokenKeys::new(SECRET.as_bytes())
            .mint("lonely-1", Role::User, Duration::from_secs(3600))
            .expect("token");
        for (name, query) in [
            (
                "first: 10",
                "{ transactions(first: 10) { edges { node { id } } } }",
            ),
            (
                "last: 10",
                "{ transactions(last: 10) { edges { node { id } } } }",
            ),
        ] {
            let mut samples = Vec::new();
            for _ in 0..25 {
                let sent = Instant::now();
                let body = gql(&self.http, PORT, &user, query, json!({})).await;
                samples.push(sent.elapsed());
                assert_eq!(
                    body["data"]["transactions"]["edges"]
                        .as_array()
                        .map(Vec::len),
                    Some(1),
                    "{body}"
                );
            }
            samples.sort();
            println!(
                "history   a user's own transactions({name}) beside {} rows of another user: p50 {:.2} ms  p99 {:.2} ms",
                self.args.history_rows,
                percentile(&samples, 50.0).as_secs_f64() * 1000.0,
                percentile(&samples, 99.0).as_secs_f64() * 1000.0,
            );
        }
    }

    /// The deposit watcher's rate: `count` wallets each receive one transfer, all mined in
    /// one block; then the blocks that confirm them. Times from each `mineBlocks` until
    /// every hold is recorded, and until every deposit is credited, in a server of its own
    /// running the simulated chain with blocks mined only on demand.
    async fn credit(&self, count: i64) {
        const CREATE: &str = "mutation { createWallet(input: {currency: \"ETH\"}) { address } }";
        const MINE: &str =
            "mutation($c: Int!) { mineBlocks(input: {network: \"ethereum\", count: $c}) }";
        let chain_server = Server::start(
            &self.url,
            CHAIN_PORT,
            SECRET,
            &[
                ("WALLET_SIMULATED_CHAIN", "true"),
                ("WALLET_BLOCK_SECS", "0"),
                ("WALLET_SEED", SEED),
                // Users here create one wallet each; the limit is not what is measured.
                ("WALLET_RATE_LIMIT_BURST", "1000000"),
            ],
        );
        wait_ready(&self.http, CHAIN_PORT).await;
        let keys = TokenKeys::new(SECRET.as_bytes());
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let creators: Vec<_> = (0..self.args.clients)
            .map(|_| {
                let (http, keys, next) = (self.http.clone(), keys.clone(), next.clone());
                tokio::spawn(async move {
                    let mut addresses = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= count as u64 {
                            return addresses;
                        }
                        let token = keys
                            .mint(
                                &format!("credit-{n}"),
                                Role::User,
                                Duration::from_secs(3600),
                            )
                            .expect("token");
                        let body = gql(&http, CHAIN_PORT, &token, CREATE, json!({})).await;
                        let address = body["data"]["createWallet"]["address"].as_str();
                        addresses.push(address.expect("an address").to_owned());
                    }
                })
            })
            .collect();
        let mut addresses = Vec::new();
        for c in creators {
            addresses.extend(c.await.expect("creator task"));
        }
        println!(
            "credit    {count} ETH wallets created in {:.1} s ({:.0}/s, 16 clients)",
            started.elapsed().as_secs_f64(),
            count as f64 / started.elapsed().as_secs_f64()
        );
        // The transfers arrive from outside: written into the simulated chain directly.
        self.pg
            .execute(
                "INSERT INTO sim_transfers (hash, network, from_address, to_address, amount)
                 SELECT '0x' || md5(a) || md5(a || '-'), 'ethereum', '0x' || repeat('ab', 20),
                        a, 0.5
                   FROM unnest($1::text[]) a",
                &[&addresses],
            )
            .await
            .expect("incoming transfers");
        let required: i32 = self
            .pg
            .query_one(
                "SELECT required_confirmations FROM currencies WHERE code = 'ETH'",
                &[],
            )
            .await
            .expect("confirmations")
            .get(0);
        // Deposits still open (held, not yet credited): a walk of a small partial index,
        // so that watching costs Postgres next to nothing.
        let open = || async {
            self.pg
                .query_one(
                    "SELECT count(*) FROM transactions
                      WHERE hold AND type = 'DEPOSIT' AND status IN ('PENDING', 'PROCESSING')",
                    &[],
                )
                .await
                .expect("count")
                .get::<_, i64>(0)
        };
        let cpu = CpuMeter::start(chain_server.pid());
        for (stage, blocks, held_when_done) in [
            ("recorded as holds", 1, count),
            ("credited", required - 1, 0),
        ] {
            let started = Instant::now();
            let body = gql(
                &self.http,
                CHAIN_PORT,
                &self.token,
                MINE,
                json!({"c": blocks}),
            )
            .await;
            assert!(body["errors"].is_null(), "{body}");
            let deadline = started + Duration::from_secs(600);
            let mut held = open().await;
            while held != held_when_done && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                held = open().await;
            }
            let done = if held_when_done == 0 {
                count - held
            } else {
                held
            };
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "credit    {done} of {count} deposits {stage} in {seconds:.2} s after mining {blocks} \
                 block(s): {:.0}/s",
                done as f64 / seconds
            );
        }
        let used = cpu.stop();
        let (rss, _) = chain_server.memory();
        println!(
            "credit    CPU (cores) while watching: server {:.2}, Postgres {:.2}  |  RSS {} MiB",
            used.server,
            used.postgres,
            rss / 1024
        );
    }

    async fn reconcile(&self) {
        const RECONCILE: &str = "mutation($w: ID!, $b: Decimal!) { reconcileWallet(input: {
          walletId: $w, startTime: \"2000-01-01T00:00:00Z\", endTime: \"2100-01-01T00:00:00Z\",
          externalBalance: $b}) { status systemBalance notes } }";
        let existing: Option<(i64, String)> = self
            .pg
            .query_opt(
                "SELECT id, balance::text FROM wallets WHERE user_id = 'history-1'",
                &[],
            )
            .await
            .expect("history wallet")
            .map(|r| (r.get(0), r.get(1)));
        let (id, balance) = match existing {
            Some(found) => found,
            None => self.history_wallet().await,
        };
        let wallet = encode_id(NodeType::Wallet, id).to_string();
        for run in 1..=3 {
            let sent = Instant::now();
            let body: Value = gql(
                &self.http,
                PORT,
                &self.token,
                RECONCILE,
                json!({"w": wallet, "b": balance}),
            )
            .await;
            println!(
                "reconcile run {run}: {} rows in {:.0} ms → {}  |  {}",
                self.args.history_rows,
                sent.elapsed().as_secs_f64() * 1000.0,
                body["data"]["reconcileWallet"]["status"],
                self.rss()
            );
        }
    }

    /// The scheduled job over `count` crypto wallets, run in this process against the
    /// benchmark database: a first (full) run, then an incremental one from its checkpoints.
    async fn scheduled_reconciliation(&self, count: i64) {
        use wallet::chain::reconciliation::reconcile_all_crypto;
        use wallet::db::{QueryCounter, build_pool};
        use wallet::ledger::CurrencyRegistry;
        // Addresses only need to be distinct here: the simulated chain does not check them.
        self.pg
            .execute(
                "INSERT INTO wallets (user_id, currency, network, address, derivation_path)
                 SELECT 'scheduled-' || g, 'BTC', 'bitcoin', 'bench-address-' || g,
                        'm/84''/0''/0''/0/' || g
                   FROM generate_series(1, $1::bigint) g",
                &[&count],
            )
            .await
            .expect("crypto wallets");
        // As in the service: the job's pool, and the chain client's own connections.
        let pool =
            build_pool(&self.url, 8, Default::default(), QueryCounter::default()).expect("pool");
        let chain = wallet::chain::SimulatedChain::new(
            build_pool(&self.url, 4, Default::default(), QueryCounter::default()).expect("pool"),
        );
        let currencies = {
            let mut conn = pool.get().await.expect("connection");
            CurrencyRegistry::load(&mut conn).await.expect("currencies")
        };
        for run in ["first (full)", "second (incremental)"] {
            let started = Instant::now();
            let result = reconcile_all_crypto(&pool, &currencies, &chain)
                .await
                .expect("scheduled reconciliation");
            println!(
                "reconcile scheduled, {run}: {} crypto wallets in {:.1} s ({} mismatched, {} failed)",
                result.reconciled,
                started.elapsed().as_secs_f64(),
                result.mismatched,
                result.failed
            );
        }
    }
}

/// Which tables a pgbench baseline writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tables {
    /// `lean_wallets` and `lean_journal`: what a team would write instead of the service.
    Lean,
    /// The service's own `wallets` and `transactions`, with their triggers.
    Service,
}

/// One movement per SQL transaction, as a team would write it: `UPDATE … RETURNING` of the
/// balance and the journal insert (a withdrawal only if the funds are there; a transfer
/// locks both wallets in id order first).
fn pgbench_script(work: Work, tables: Tables) -> String {
    let (wallets, stamp, journal) = match tables {
        Tables::Lean => ("lean_wallets", "updated_at = now()", "lean_journal"),
        Tables::Service => (
            "wallets",
            "updated_at = GREATEST(clock_timestamp(), updated_at)",
            "transactions",
        ),
    };
    let row = |wallet: &str, kind: &str, before: &str, after: &str, extra: (&str, &str)| {
        match tables {
            Tables::Lean => format!(
                "INSERT INTO {journal} (wallet_id, kind, amount, balance_before, balance_after, key, created_at) \
             VALUES ({wallet}, '{kind}', 1.00, {before}, {after}, 'pgbench-' || gen_random_uuid(), now())"
            ),
            Tables::Service => format!(
                "INSERT INTO {journal} (wallet_id, type, amount, balance_before, balance_after, status, tx_hash, \
             created_at, updated_at{}) VALUES ({wallet}, '{kind}', 1.00, {before}, {after}, 'COMPLETED', \
             'pgbench-' || gen_random_uuid(), now(), now(){})",
                extra.0, extra.1
            ),
        }
    };
    let deposit = format!(
        "BEGIN;
UPDATE {wallets} SET balance = balance + 1.00, {stamp} WHERE id = :wid RETURNING balance AS after \\gset
{};
COMMIT;
",
        row(":wid", "DEPOSIT", ":after - 1.00", ":after", ("", ""))
    );
    match work {
        // (The ceiling and holds have no SQL; they are never compared with pgbench.)
        Work::Deposits | Work::Typename | Work::Holds => {
            format!("\\set wid random(:lo, :hi)\n{deposit}")
        }
        Work::Mixed(_) => {
            let available = match tables {
                Tables::Lean => "balance",
                Tables::Service => "balance - locked_balance",
            };
            let withdrawn = "w.id";
            // The same row, selected from the update (none when the funds are not there).
            let values = row(
                withdrawn,
                "WITHDRAW",
                "w.balance + 1.00",
                "w.balance",
                ("", ""),
            );
            let insert = values
                .strip_suffix(')')
                .unwrap_or(&values)
                .replace(" VALUES (", " SELECT ");
            format!(
                "\\set wid random(:lo, :hi)
\\set r random(0, 99)
\\if :r < :pct
BEGIN;
WITH w AS (UPDATE {wallets} SET balance = balance - 1.00, {stamp}
            WHERE id = :wid AND {available} >= 1.00 RETURNING id, balance)
{insert} FROM w;
COMMIT;
\\else
{deposit}\\endif
"
            )
        }
        Work::Transfers => {
            let pick = "\\set a random(:lo, :hi)
\\set b :lo + (:a - :lo + random(1, :hi - :lo)) % (:hi - :lo + 1)
";
            if tables == Tables::Lean {
                // The double-entry transfer function of the lean schema (`lean_copy`).
                return format!(
                    "{pick}SELECT lean_transfer(:a, :b, 1.00, 'pgbench-' || gen_random_uuid());\n"
                );
            }
            // The database takes a transfer's two sides only from one statement, the
            // receiving side naming the sending side's id (taken first, as the service
            // does).
            let sides = format!(
                "SELECT nextval(pg_get_serial_sequence('{journal}', 'id')) AS out_id \\gset
INSERT INTO {journal} (id, wallet_id, type, amount, balance_before, balance_after, status, tx_hash, \
created_at, updated_at, counterpart_id) VALUES \
(:out_id, :a, 'TRANSFER_OUT', 1.00, :a_after + 1.00, :a_after, 'COMPLETED', 'pgbench-' || gen_random_uuid(), now(), now(), NULL), \
(DEFAULT, :b, 'TRANSFER_IN', 1.00, :b_after - 1.00, :b_after, 'COMPLETED', 'pgbench-' || gen_random_uuid(), now(), now(), :out_id);"
            );
            format!(
                "{pick}BEGIN;
SELECT id FROM {wallets} WHERE id IN (:a, :b) ORDER BY id FOR NO KEY UPDATE;
UPDATE {wallets} SET balance = balance - 1.00, {stamp} WHERE id = :a RETURNING balance AS a_after \\gset
UPDATE {wallets} SET balance = balance + 1.00, {stamp} WHERE id = :b RETURNING balance AS b_after \\gset
{sides}
COMMIT;
"
            )
        }
    }
}
