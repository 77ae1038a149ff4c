//! A webhook endpoint for delivery tests: `tests/node/webhook-receiver.mjs` (Node.js, with
//! the reference Standard Webhooks library pinned in `tests/node/package.json`, installed by
//! `npm ci --prefix tests/node`) on a local port. It verifies each delivery's signature,
//! logs it as one JSON line, and answers as the test sets it: `ok` (204, or 401 when the
//! signature does not verify), `fail` (503 or a chosen status), `hang` (never answers) or
//! `gone` (410). Killed when dropped; its log lives in a scratch directory removed then.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One delivery as the receiver logged it.
#[derive(Clone, Debug)]
pub struct Record {
    /// When it arrived (ms since the epoch, the receiver's clock).
    pub received_at_ms: i64,
    /// The request path (with its query string).
    pub path: String,
    /// The `webhook-id` header ("" when missing).
    pub id: String,
    /// The `webhook-timestamp` header ("" when missing).
    pub timestamp: String,
    /// The `webhook-signature` header ("" when missing).
    pub signature: String,
    /// Whether the signature verified against (any of) the receiver's secret(s).
    pub verified: bool,
    /// Why it did not verify.
    pub error: Option<String>,
    /// The status the receiver answered; 0 when it never answered (mode `hang`).
    pub status: u16,
    /// The body parsed as JSON (a JSON string holding the raw body when it is not JSON).
    pub body: Value,
}

impl Record {
    fn parse(line: &str) -> Record {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a receiver log line that is not JSON ({e}): {line}"));
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let raw = text("body");
        Record {
            received_at_ms: v["receivedAt"].as_i64().expect("receivedAt"),
            path: text("path"),
            id: text("id"),
            timestamp: text("timestamp"),
            signature: text("signature"),
            verified: v["verified"].as_bool().expect("verified"),
            error: v["error"].as_str().map(str::to_owned),
            status: u16::try_from(v["status"].as_u64().expect("status")).expect("a status"),
            body: serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
        }
    }
}

/// A fresh Standard Webhooks secret: `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// What the receiver is told to do; kept so that a restart comes back the same.
#[derive(Clone, Debug)]
struct State {
    mode: String,
    status: Option<u16>,
    secret: String,
}

pub struct Receiver {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    state: Mutex<State>,
    http: reqwest::Client,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/webhook-receiver.mjs")
}

impl Receiver {
    /// Starts a receiver on a free port, verifying with `secret` (a `whsec_…` secret, or
    /// several separated by commas), in mode `ok`; waits until it listens.
    pub async fn start(secret: &str) -> Receiver {
        Self::start_with(secret, "ok", None).await
    }

    /// Like [`start`](Self::start), in `mode` (`ok`, `fail`, `hang`, `gone`) answering
    /// `status` where the mode takes one.
    pub async fn start_with(secret: &str, mode: &str, status: Option<u16>) -> Receiver {
        let dir =
            std::env::temp_dir().join(format!("wallet-webhooks-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut receiver = Receiver {
            child: None,
            port: 0,
            log: dir.join("deliveries.jsonl"),
            dir,
            state: Mutex::new(State {
                mode: mode.to_owned(),
                status,
                secret: secret.to_owned(),
            }),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        receiver.run().await;
        receiver
    }

    /// Spawns the receiver on `self.port` (0: a free one) with the current state, and
    /// waits for its `LISTENING <port>` line. Retries a while when the port is taken.
    async fn run(&mut self) {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn_once().await {
                Ok((child, port)) => {
                    self.child = Some(child);
                    self.port = port;
                    return;
                }
                Err(why) => {
                    assert!(
                        self.port != 0 && tokio::time::Instant::now() < give_up,
                        "the webhook receiver did not start: {why}\n\
                         (it needs Node.js 20+ on PATH and `npm ci --prefix tests/node`, as .ci/run does)"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn spawn_once(&self) -> Result<(Child, u16), String> {
        let state = self.state.lock().unwrap().clone();
        let stderr_path = self.dir.join("receiver.stderr");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        let mut command = Command::new("node");
        command
            .arg(script())
            .args(["--port", &self.port.to_string()])
            .args(["--secret", &state.secret])
            .arg("--log")
            .arg(&self.log)
            .args(["--mode", &state.mode])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some(status) = state.status {
            command.args(["--status", &status.to_string()]);
        }
        let mut child = command.spawn().map_err(|e| format!("node: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let line = match first {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let _ = child.wait().await;
                return Err(format!("it exited: {}", stderr()));
            }
            Err(_) => return Err(format!("no LISTENING line in 30 s: {}", stderr())),
        };
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .ok_or_else(|| format!("unexpected first line {line:?}: {}", stderr()))?;
        // Keep reading its stdout so that the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((child, port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The secret(s) it verifies with now.
    pub fn secret(&self) -> String {
        self.state.lock().unwrap().secret.clone()
    }

    /// The JSON-lines log of the deliveries.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    async fn control(&self, body: Value) {
        let response = self
            .http
            .post(self.url("/_control"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("webhook receiver /_control {body}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "webhook receiver /_control {body}: {status} {text}"
        );
    }

    /// Sets how it answers from now on: `ok` (204, or `status`; 401 when the signature
    /// does not verify), `fail` (`status`, default 503), `hang` (never), `gone` (410).
    pub async fn set_mode(&self, mode: &str, status: Option<u16>) {
        self.control(json!({ "mode": mode, "status": status }))
            .await;
        let mut state = self.state.lock().unwrap();
        state.mode = mode.to_owned();
        state.status = status;
    }

    /// Verifies with `secret` from now on (several, separated by commas: a delivery
    /// verifies when any of them does).
    pub async fn set_secret(&self, secret: &str) {
        self.control(json!({ "secret": secret })).await;
        self.state.lock().unwrap().secret = secret.to_owned();
    }

    /// Every delivery logged so far, in arrival order (across restarts).
    pub fn records(&self) -> Vec<Record> {
        let text = match std::fs::read_to_string(&self.log) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("{}: {e}", self.log.display()),
        };
        // Only whole lines: a line being written has no newline yet.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => return Vec::new(),
        };
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(Record::parse)
            .collect()
    }

    /// Polls the records until `pred` holds for them; returns them. Panics (showing the
    /// records) after `timeout`.
    pub async fn wait_for(
        &self,
        mut pred: impl FnMut(&[Record]) -> bool,
        timeout: Duration,
    ) -> Vec<Record> {
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            let records = self.records();
            if pred(&records) {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "timed out after {timeout:?} waiting for webhook deliveries; received so far:\n{records:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the receiver (SIGKILL): connections to its port are refused until
    /// [`start_again`](Self::start_again). Hung requests see their connection reset.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the receiver again on the same port, with the same log, mode and secret.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the webhook receiver is running");
        self.run().await;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
