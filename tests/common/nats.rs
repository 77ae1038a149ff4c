//! A private NATS server with JetStream for tests: `nats-server` (Debian's package, which
//! .ci/run installs) on a free port of 127.0.0.1 with its store in a scratch directory. It
//! can be stopped and started again on the same port and store (streams and their messages
//! survive). Killed, and its directory removed, when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::process::free_port;

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// The server binary: `$NATS_SERVER`, `nats-server` on PATH, or Debian's /usr/sbin one.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("nats-server is not installed: run .ci/run, or `apt-get install nats-server`")
        })
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and waits until it serves clients.
    pub async fn new() -> NatsServer {
        let dir =
            std::env::temp_dir().join(format!("wallet-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("store")).unwrap();
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            dir,
        };
        server.start().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// JetStream's store directory (kept across a stop and a start).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The server's log (appended to across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server (again, after [`stop`](Self::stop)) on the same port and store,
    /// and waits until it greets a client with JetStream enabled. Retries a while when
    /// the port is taken.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "nats-server is running");
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(binary())
                .arg("--jetstream")
                .args(["--addr", "127.0.0.1"])
                .args(["--port", &self.port.to_string()])
                .arg("--store_dir")
                .arg(self.store_dir())
                // A fixed name: JetStream's state belongs to the server by name.
                .args(["--server_name", "wallet-test-nats"])
                .arg("--log")
                .arg(self.log_path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", binary().display()));
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    // Exited: the port may be taken for now (or it cannot start at all).
                    assert!(
                        tokio::time::Instant::now() < give_up,
                        "nats-server exited ({status}):\n{}",
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                if greets(self.port).await {
                    self.child = Some(child);
                    return;
                }
                if tokio::time::Instant::now() >= give_up {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nats-server did not serve in 30 s:\n{}", self.log());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Stops the server cleanly (SIGTERM, then waits; SIGKILL after 10 s): clients see
    /// the connection close, and connecting is refused until [`start`](Self::start).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, rustix::process::Signal::TERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Kills the server (SIGKILL: no shutdown; JetStream recovers its store on the next
    /// start).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    if let Ok(pid) = i32::try_from(child.id())
        && let Some(pid) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Whether a NATS server on `port` accepts a connection and announces JetStream in its
/// INFO greeting.
async fn greets(port: u16) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.ok()?;
        Some(line.starts_with("INFO ") && line.contains("\"jetstream\":true"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
