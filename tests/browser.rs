//! GraphiQL in a real browser: headless Chromium (Debian's `chromium` package) driven by
//! Playwright (`tests/browser/graphiql.mjs`, its packages pinned in
//! `tests/browser/package-lock.json`) against this service on a local port. The page must
//! load with nothing but 127.0.0.1 reachable, take a token from its Headers tab, run a
//! query and a wallet's history, and show a subscription's event for a deposit made
//! meanwhile. `.ci/run` installs Chromium and the Node packages.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn graphiql_works_offline_in_a_browser() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir() && Path::new(&chromium).exists(),
        "the browser test needs Chromium at {chromium} and the Node packages of tests/browser: \
         run .ci/run, or `apt-get install chromium` and `npm ci --prefix tests/browser`"
    );
    let t = TestApp::new().await;
    let ws = t.serve().await;
    let base = ws
        .replace("ws://", "http://")
        .trim_end_matches("/graphql/ws")
        .to_owned();
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "5.00", "first").await;
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graphiql-failure.png");
    let _ = std::fs::remove_file(&screenshot);

    let (token, operator) = (t.user("alice"), t.operator());
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("graphiql.mjs")
            .current_dir(&browser_dir)
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
    assert!(stdout.contains("all work offline"), "{stdout}");
}
