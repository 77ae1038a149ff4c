//! `wallet watch`: the binary follows a subscription over the websocket and prints each
//! event as one line of JSON; Ctrl-C stops it cleanly; a refused token or a failing
//! operation is an error exit saying why.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestApp;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn watch(url: &str, token: &str, query: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallet"));
    command
        .args(["watch", "--url", url, query])
        .env("WALLET_TOKEN", token)
        .env("WALLET_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_each_event_as_a_json_line() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let wallet = t.create_wallet("alice", "USD").await;
    let query = format!(
        r#"subscription {{ transactionUpdated(walletId: "{wallet}") {{ type amount balanceAfter }} }}"#
    );
    let mut child = watch(&url, &t.user("alice"), &query).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    // Deposit until the first event arrives (the subscription may still be starting),
    // then once more: each event is its own line, in order.
    let mut first = None;
    for attempt in 0..50 {
        t.deposit(&wallet, "1.50", &format!("watch-{attempt}"))
            .await;
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await
        {
            first = line.unwrap();
            break;
        }
    }
    let first = first.expect("an event line");
    // Printed as the server sent it: fields in the query's order.
    let at = |key: &str| first.find(&format!("\"{key}\"")).unwrap();
    assert!(
        at("type") < at("amount") && at("amount") < at("balanceAfter"),
        "{first}"
    );
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["data"]["transactionUpdated"]["type"], "DEPOSIT");
    assert_eq!(first["data"]["transactionUpdated"]["amount"], "1.50");
    let before: rust_decimal::Decimal = first["data"]["transactionUpdated"]["balanceAfter"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    t.deposit(&wallet, "2.25", "watch-last").await;
    // Deposits of earlier attempts may still be on their way: read up to the last one.
    let last = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the last deposit's event")
            .unwrap()
            .expect("a line");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["data"]["transactionUpdated"]["amount"] == "2.25" {
            break event;
        }
    };
    let after: rust_decimal::Decimal = last["data"]["transactionUpdated"]["balanceAfter"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after > before);

    // Ctrl-C: the subscription is stopped and the process exits with success.
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_says_why_it_stopped() {
    let t = TestApp::new().await;
    let url = t.serve().await;

    // A token the server refuses: the close code and reason, exit status 1.
    let out = watch(
        &url,
        "not-a-token",
        "subscription { transactionUpdated { id } }",
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4401"), "{stderr}");

    // An operation the server rejects: its errors, exit status 1.
    let out = watch(&url, &t.user("alice"), "subscription { noSuchField }")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("noSuchField"), "{stderr}");

    // A query over the socket: one result line, then the server completes it: exit 0.
    let out = watch(&url, &t.user("alice"), "{ viewer { userId } }")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["data"]["viewer"]["userId"], "alice");

    // Nothing listening: a connection error naming the address.
    let port = common::process::free_port();
    let out = watch(
        &format!("ws://127.0.0.1:{port}/graphql/ws"),
        &t.user("alice"),
        "{ viewer { userId } }",
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

/// The token never goes on the command line: a file or `WALLET_TOKEN`; and what the
/// server sends cannot drive the terminal (a description with a bidirectional override is
/// printed escaped, still valid JSON).
#[tokio::test(flavor = "multi_thread")]
async fn watch_keeps_its_token_off_the_command_line_and_escapes_what_it_prints() {
    let t = TestApp::new().await;
    let url = t.serve().await;
    let wallet = t.create_wallet("alice", "USD").await;

    // `--token` is no longer a flag.
    let out = Command::new(env!("CARGO_BIN_EXE_wallet"))
        .args([
            "watch",
            "--url",
            &url,
            "--token",
            "x",
            "{ viewer { userId } }",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // Neither variable nor file: it says what to set.
    let out = Command::new(env!("CARGO_BIN_EXE_wallet"))
        .args(["watch", "--url", &url, "{ viewer { userId } }"])
        .env_remove("WALLET_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WALLET_TOKEN"));

    let dir = std::env::temp_dir().join(format!("wallet-watch-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{}\n", t.user("alice"))).unwrap();
    let description = "invoice \u{202e}fdp.exe";
    let deposit = t
        .gql(
            Some(&t.operator()),
            "mutation($w: ID!) { deposit(input: {walletId: $w, amount: \"1.00\",
               idempotencyKey: \"bidi-1\", description: \"invoice \u{202e}fdp.exe\"}) { id } }",
            serde_json::json!({"w": wallet}),
        )
        .await;
    assert!(deposit["errors"].is_null(), "{deposit}");
    let query = format!(
        r#"{{ wallet(id: "{wallet}") {{ transactions(first: 1) {{ nodes {{ description }} }} }} }}"#
    );
    let out = Command::new(env!("CARGO_BIN_EXE_wallet"))
        .args(["watch", "--url", &url, "--token-file"])
        .arg(&token_file)
        .arg(&query)
        .env_remove("WALLET_TOKEN")
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains('\u{202e}'), "{stdout}");
    assert!(stdout.contains("\\u202e"), "{stdout}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        line["data"]["wallet"]["transactions"]["nodes"][0]["description"],
        description
    );
}
