//! What the benchmarks share: server processes, readiness, GraphQL calls, percentiles.
#![allow(dead_code)] // each benchmark uses its own part

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A server process, killed when dropped.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// `wallet serve` on `port` against `url`, with `env` on top of the defaults.
    pub fn start(url: &str, port: u16, secret: &str, env: &[(&str, &str)]) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_wallet"))
            .arg("serve")
            .env("DATABASE_URL", url)
            .env("WALLET_LISTEN", format!("127.0.0.1:{port}"))
            .env("WALLET_JWT_SECRET", secret)
            // Benchmarks measure throughput; the operator limit has tests of its own.
            .env("WALLET_OPERATOR_RATE_LIMIT_PER_SEC", "0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("the wallet binary starts");
        Server(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Resident and peak resident memory (KiB) from /proc.
    pub fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

pub async fn wait_ready(http: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server on {port} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn gql(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    query: &str,
    variables: Value,
) -> Value {
    http.post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON response")
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs a benchmark's body on a multi-threaded runtime.
pub fn block_on(body: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body);
}

/// CPU time, in seconds, from `/proc/<pid>/stat`: the process's own (user + system) and
/// that of its children it has waited for.
pub fn cpu_seconds(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let at = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0);
    // Clock ticks: 100 per second on Linux.
    let tick = 100.0;
    ((at(14) + at(15)) / tick, (at(16) + at(17)) / tick)
}

/// CPU seconds used by every Postgres process so far, including backends that have
/// exited (the postmaster's waited-for children).
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| {
            let (own, children) = cpu_seconds(&pid);
            own + children
        })
        .sum()
}

/// CPU use over an interval, as shares of one core.
#[derive(Clone, Copy, Debug)]
pub struct CpuMeter {
    at: Instant,
    client: f64,
    children: f64,
    server: f64,
    postgres: f64,
    machine: MachineTicks,
    server_pid: u32,
}

/// The whole machine's CPU time from `/proc/stat`, in seconds summed over every core:
/// busy (everything but idle and I/O wait) and idle (both of those).
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineTicks {
    busy: f64,
    idle: f64,
}

pub fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineTicks::default();
    };
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let at = |n: usize| fields.get(n).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let idle = at(3) + at(4);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    let tick = 100.0;
    MachineTicks {
        busy: busy / tick,
        idle: idle / tick,
    }
}

/// Shares of one core used between [`CpuMeter::start`] and [`CpuMeter::stop`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub seconds: f64,
    /// This process (the load generator).
    pub client: f64,
    /// Child processes waited for meanwhile (pgbench).
    pub children: f64,
    pub server: f64,
    pub postgres: f64,
    /// Every process on the machine, in cores (so at most the number of cores).
    pub machine: f64,
    /// The share of the machine's CPU time left idle, 0–1.
    pub idle: f64,
}

impl CpuMeter {
    pub fn start(server_pid: u32) -> CpuMeter {
        let (client, children) = cpu_seconds("self");
        CpuMeter {
            at: Instant::now(),
            client,
            children,
            server: cpu_seconds(&server_pid.to_string()).0,
            postgres: postgres_cpu_seconds(),
            machine: machine_ticks(),
            server_pid,
        }
    }

    pub fn stop(&self) -> CpuUse {
        let seconds = self.at.elapsed().as_secs_f64();
        let (client, children) = cpu_seconds("self");
        let machine = machine_ticks();
        let share = |now: f64, then: f64| (now - then) / seconds;
        CpuUse {
            seconds,
            client: share(client, self.client),
            children: share(children, self.children),
            server: share(cpu_seconds(&self.server_pid.to_string()).0, self.server),
            postgres: share(postgres_cpu_seconds(), self.postgres),
            machine: share(machine.busy, self.machine.busy),
            idle: {
                let busy = machine.busy - self.machine.busy;
                let idle = machine.idle - self.machine.idle;
                if busy + idle > 0.0 {
                    idle / (busy + idle)
                } else {
                    0.0
                }
            },
        }
    }
}
