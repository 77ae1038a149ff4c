//! The `wallet` binary run with exactly the environment a test gives it: `serve` until it
//! exits or becomes ready (and then for as long as the test needs it), and one-shot
//! commands (`token`, `revoke-tokens`). Nothing of the test's own environment leaks in:
//! only PATH, and a HOME of the test's choosing, so the user's real files are untouched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// How a run of the server ended.
#[derive(Debug)]
pub struct Run {
    /// The exit status, when it exited by itself; `None` when it became ready (and was
    /// stopped by the test).
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn refused(&self, needle: &str) {
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

    pub fn started(&self) {
        assert!(
            self.exit.is_none(),
            "expected the service to start: {self:?}"
        );
    }

    /// The `error: ` lines of a refusal.
    pub fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("error: "))
            .collect()
    }
}

/// A scratch directory (used as HOME), removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A file in the directory with `contents` and `mode`; returns its path.
    pub fn file(&self, name: &str, contents: &str, mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `wallet serve` process (killed when dropped), with what it printed so far.
pub struct Server {
    child: tokio::process::Child,
    pub port: u16,
    /// Set when it exited by itself before becoming ready.
    pub exit: Option<i32>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts `wallet serve` in `dir` with only `env` (and PATH, `dir` as HOME, quiet logs,
/// no background chain work, `WALLET_LISTEN=127.0.0.1:{port}`) set — `{port}` in a value
/// is replaced by the port — and waits until it answers `/healthz` or exits.
pub async fn launch(dir: &Path, env: &[(&str, &str)]) -> Server {
    let port = super::process::free_port();
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
        command.env(name, value.replace("{port}", &port.to_string()));
    }
    let mut child = command.spawn().expect("the wallet binary runs");
    let (stdout, stderr) = (Arc::default(), Arc::default());
    let readers = vec![
        collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
        collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
    ];
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
    Server {
        child,
        port,
        exit,
        stdout,
        stderr,
        readers,
    }
}

/// Appends each line of `pipe` to `into` as it arrives.
fn collect(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = into.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    })
}

/// Runs `wallet serve` until it exits or becomes ready (then stops it).
pub async fn run_binary(dir: &Path, env: &[(&str, &str)]) -> Run {
    launch(dir, env).await.stop().await
}

impl Server {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn websocket(&self) -> String {
        format!("ws://127.0.0.1:{}/graphql/ws", self.port)
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stdout has a line containing `needle` (printed before it was ready,
    /// but maybe not read yet) and returns that line.
    pub async fn stdout_line(&self, needle: &str) -> String {
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.stdout().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < give_up,
                "no {needle:?} on stdout: {}",
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bearer token on the stdout line containing `needle` (a demo token).
    pub async fn printed_token(&self, needle: &str) -> String {
        let line = self.stdout_line(needle).await;
        let (_, token) = line.split_once("Bearer ").expect("a bearer token");
        token.trim().to_owned()
    }

    /// POSTs `query` as `token`: the HTTP status and the JSON body.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}/graphql", self.base()))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The status of `{ viewer { userId } }` as `token`, and the user id it names.
    pub async fn whoami(&self, token: &str) -> (u16, Option<String>) {
        let (status, body) = self
            .gql(Some(token), "{ viewer { userId } }", json!({}))
            .await;
        let user = body["data"]["viewer"]["userId"].as_str().map(str::to_owned);
        (status, user)
    }

    /// Asks it to shut down (SIGTERM), waits until it has, and returns what it printed.
    pub async fn terminate(mut self) -> Run {
        if let Some(pid) = self.child.id() {
            let pid = rustix::process::Pid::from_raw(pid as i32).expect("a process id");
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("it shuts down within a minute")
            .unwrap();
        self.exit = Some(status.code().unwrap_or(-1));
        self.stop().await
    }

    /// Stops it (if it is running) and returns what it printed.
    pub async fn stop(mut self) -> Run {
        if self.exit.is_none() {
            self.child.start_kill().unwrap();
        }
        let _ = self.child.wait().await;
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.await;
        }
        Run {
            exit: self.exit,
            stdout: self.stdout(),
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }
}

/// Output of a one-shot `wallet` command.
#[derive(Debug)]
pub struct Cli {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `wallet ARGS` with only `env` (and PATH, `home` as HOME) set.
pub fn wallet(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Cli {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wallet"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .envs(env.iter().copied())
        .output()
        .expect("the wallet binary runs");
    Cli {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `wallet token --sub SUB ARGS…`: the token, or the refusal on stderr.
pub fn mint(home: &Path, sub: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let mut all = vec!["token", "--sub", sub];
    all.extend_from_slice(args);
    let out = wallet(home, &all, env);
    match out.success {
        true => Ok(out.stdout.trim().to_owned()),
        false => Err(out.stderr),
    }
}
