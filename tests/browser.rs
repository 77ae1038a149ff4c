//! The service's pages in a real browser: headless Chromium (Debian's `chromium` package)
//! driven by Playwright (scripts in `tests/node/`, their packages pinned in
//! `tests/node/package-lock.json`) against this service on a local port, with nothing but
//! 127.0.0.1 reachable.
//!
//! - GraphiQL (`graphiql.mjs`): the page loads, takes a token from its Headers tab, runs a
//!   query and a wallet's history, and shows a subscription's event for a deposit made
//!   meanwhile.
//! - The example web client (`example-client.mjs`): sign-in with a token, a wallet's
//!   transactions newest first and page by page, and a live deposit with its balance.
//!
//! `.ci/run` installs Chromium and the Node packages.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestApp;

/// The directory of the Node scripts, and Chromium; fails saying what to install.
fn browser() -> (PathBuf, String) {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        node_dir.join("node_modules/playwright-core").is_dir() && Path::new(&chromium).exists(),
        "the browser tests need Chromium at {chromium} and the Node packages of tests/node: \
         run .ci/run, or `apt-get install chromium` and `npm ci --prefix tests/node`"
    );
    (node_dir, chromium)
}

/// Runs `script` against `t`'s server on behalf of alice, for `wallet`; asserts it passed
/// and printed `success`.
async fn run_script(t: &TestApp, script: &'static str, wallet: String, success: &str) {
    let (node_dir, chromium) = browser();
    let ws = t.serve().await;
    let base = ws
        .replace("ws://", "http://")
        .trim_end_matches("/graphql/ws")
        .to_owned();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-failure.png", script.trim_end_matches(".mjs")));
    let _ = std::fs::remove_file(&screenshot);
    let (token, operator) = (t.user("alice"), t.operator());
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .current_dir(&node_dir)
            .env("WALLET_URL", base)
            .env("WALLET_TOKEN", token)
            .env("WALLET_OPERATOR", operator)
            .env("WALLET_ID", wallet)
            .env("WALLET_SCREENSHOT", &screenshot)
            .env("CHROMIUM", chromium)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(success), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn graphiql_works_offline_in_a_browser() {
    let t = TestApp::new().await;
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "5.00", "first").await;
    run_script(&t, "graphiql.mjs", wallet, "all work offline").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_client_works_offline_in_a_browser() {
    let t = TestApp::new().await;
    let wallet = t.create_wallet("alice", "USD").await;
    for i in 1..=7 {
        t.deposit(&wallet, &format!("{i}.00"), &format!("seed-{i}"))
            .await;
    }
    run_script(&t, "example-client.mjs", wallet, "all work offline").await;
}
