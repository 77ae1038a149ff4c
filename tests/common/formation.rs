//! A pg_auto_failover formation on private ports and data directories: a monitor and two
//! data nodes with synchronous replication, each run by its own `pg_autoctl run` keeper
//! as `postgres`. A node can be killed (SIGKILL of its keeper and its postmaster: the
//! machine is gone) and started again (it rejoins as a standby). Never the shared server.
//! Everything is stopped and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{as_postgres, free_port, server_dir};

/// The formation's failure detection, made quick for a test: a node is checked every
/// second and declared failed after two seconds without an answer; the standby is
/// promoted three seconds after the primary was lost (the default is about 30 s).
const MONITOR_SETTINGS: &[(&str, &str)] = &[
    ("pgautofailover.health_check_period", "1000"),
    ("pgautofailover.health_check_timeout", "1000"),
    ("pgautofailover.health_check_retry_delay", "500"),
    ("pgautofailover.health_check_max_retries", "1"),
    ("pgautofailover.node_considered_unhealthy_timeout", "2000"),
    ("pgautofailover.primary_demote_timeout", "3000"),
];

pub struct Formation {
    dir: PathBuf,
    pub monitor_port: u16,
    pub node_ports: [u16; 2],
    /// The keepers (`runuser … pg_autoctl run`), each the leader of its process group.
    keepers: Vec<Option<Child>>,
    pub database: String,
}

/// Where a node stands, as the monitor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub port: u16,
    pub reported: String,
    pub assigned: String,
}

impl Formation {
    /// Creates the monitor and both nodes, and waits until node 1 is the primary and
    /// node 2 its synchronous standby. `database` is created on the nodes.
    pub fn start(database: &str) -> Formation {
        let dir = server_dir("wallet-ha");
        let mut formation = Formation {
            dir,
            monitor_port: free_port(),
            node_ports: [free_port(), free_port()],
            keepers: vec![None, None, None],
            database: database.to_owned(),
        };
        let monitor = formation.pgdata("monitor");
        formation.autoctl(&[
            "create",
            "monitor",
            "--pgdata",
            &monitor,
            "--pgport",
            &formation.monitor_port.to_string(),
            "--hostname",
            "127.0.0.1",
            "--auth",
            "trust",
            "--no-ssl",
        ]);
        formation.run_keeper(0);
        formation.wait_for_sql(formation.monitor_port, "pg_auto_failover");
        for (name, value) in MONITOR_SETTINGS {
            formation.psql(
                formation.monitor_port,
                "pg_auto_failover",
                &format!("ALTER SYSTEM SET {name} = {value}"),
            );
        }
        formation.psql(
            formation.monitor_port,
            "pg_auto_failover",
            "SELECT pg_reload_conf()",
        );
        for node in 1..=2 {
            formation.create_node(node);
            formation.run_keeper(node);
            // One at a time: the first to register becomes the primary.
            formation.wait_for_states(Duration::from_secs(120), |states| {
                let settled =
                    states.len() == node && states.iter().all(|s| s.reported == s.assigned);
                match node {
                    1 => settled && states[0].reported == "single",
                    _ => {
                        settled
                            && states[0].reported == "primary"
                            && states[1].reported == "secondary"
                    }
                }
            });
        }
        formation
    }

    /// The multi-host URL the service is given: the primary, whichever node it is.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
            self.node_ports[0], self.node_ports[1], self.database
        )
    }

    /// One node's URL (for checks made straight on it).
    pub fn node_url(&self, node: usize) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.node_ports[node - 1],
            self.database
        )
    }

    /// The nodes as the monitor sees them, in node order.
    pub fn states(&self) -> Vec<NodeState> {
        let out = self.psql_output(
            self.monitor_port,
            "pg_auto_failover",
            "SELECT nodename, nodeport, reportedstate, goalstate FROM pgautofailover.node \
             ORDER BY nodeid",
        );
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let cols: Vec<&str> = line.split('|').collect();
                NodeState {
                    name: cols[0].to_owned(),
                    port: cols[1].parse().unwrap(),
                    reported: cols[2].to_owned(),
                    assigned: cols[3].to_owned(),
                }
            })
            .collect()
    }

    /// Waits until the monitor's view satisfies `ok`; panics with the last view otherwise.
    pub fn wait_for_states(&self, limit: Duration, ok: impl Fn(&[NodeState]) -> bool) {
        let started = Instant::now();
        loop {
            let states = self.states();
            if ok(&states) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "the formation did not settle within {limit:?}: {states:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node (1 or 2) the monitor has as primary.
    pub fn primary(&self) -> usize {
        self.states()
            .iter()
            .position(|s| s.reported == "primary" && s.assigned == "primary")
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("no primary: {:?}", self.states()))
    }

    /// SIGKILL of a node's keeper and its postmaster at once (their process group): the
    /// node is gone, as if its machine had died. Its backends end on their postmaster's
    /// death.
    pub fn kill_node(&mut self, node: usize) {
        let mut keeper = self.keepers[node].take().expect("the node is running");
        let group = keeper.id();
        let killed = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status()
            .unwrap()
            .success();
        assert!(killed, "kill -9 of node {node}'s process group");
        let _ = keeper.wait();
    }

    /// Starts a killed node's keeper again: pg_auto_failover rejoins it as a standby.
    pub fn restart_node(&mut self, node: usize) {
        // The killed postmaster left its pid file; the keeper starts it again.
        self.run_keeper(node);
    }

    /// The last lines of every keeper's log (for a failure message).
    pub fn logs(&self) -> String {
        ["monitor", "node1", "node2"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {name}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs SQL on one port as `postgres`; returns unaligned, tuples-only output.
    pub fn psql_output(&self, port: u16, database: &str, sql: &str) -> String {
        super::process::psql(self.as_postgres("psql"), port, database, sql)
    }

    fn psql(&self, port: u16, database: &str, sql: &str) {
        self.psql_output(port, database, sql);
    }

    fn wait_for_sql(&self, port: u16, database: &str) {
        let started = Instant::now();
        while !self
            .as_postgres("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &port.to_string(),
            ])
            .args(["-d", database, "-c", "SELECT 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "port {port} did not answer:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn create_node(&self, node: usize) {
        let monitor = format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.monitor_port
        );
        self.autoctl(&[
            "create",
            "postgres",
            "--pgdata",
            &self.pgdata(&format!("node{node}")),
            "--pgport",
            &self.node_ports[node - 1].to_string(),
            "--hostname",
            "127.0.0.1",
            "--name",
            &format!("node{node}"),
            "--monitor",
            &monitor,
            "--auth",
            "trust",
            "--no-ssl",
            "--dbname",
            &self.database,
        ]);
    }

    /// Starts `pg_autoctl run` for the monitor (0) or a node (1, 2) in a process group of
    /// its own, logging to `<name>.log`.
    fn run_keeper(&mut self, which: usize) {
        let name = match which {
            0 => "monitor".to_owned(),
            n => format!("node{n}"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
        use std::os::unix::process::CommandExt as _;
        let child = self
            .as_postgres("pg_autoctl")
            .args(["run", "--pgdata", &self.pgdata(&name)])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("pg_autoctl (Debian package postgresql-15-auto-failover) runs");
        self.keepers[which] = Some(child);
    }

    fn autoctl(&self, args: &[&str]) {
        let out = self
            .as_postgres("pg_autoctl")
            .args(args)
            .output()
            .expect("pg_autoctl (Debian package postgresql-15-auto-failover) runs");
        assert!(
            out.status.success(),
            "pg_autoctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pgdata(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A command run as `postgres` (when we are root), with the formation's own
    /// configuration and state directories and the server binaries on its path.
    fn as_postgres(&self, program: &str) -> Command {
        let bin = server_bin();
        let mut command = as_postgres(program);
        command
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_DATA_HOME", self.dir.join("share"))
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("PG_CONFIG", bin.join("pg_config"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .current_dir(&self.dir);
        command
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        for keeper in self.keepers.iter_mut().rev() {
            if let Some(mut child) = keeper.take() {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.wait();
            }
        }
        // Postmasters are in their keepers' groups; their children end with them. Give
        // them a moment before the files go.
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest PostgreSQL server binaries Debian installed.
fn server_bin() -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .max()
        .expect("a server installation")
}
