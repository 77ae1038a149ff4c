//! A fuzzer nobody here wrote, against the real binary: schemathesis (pinned in
//! tests/fuzz/requirements.txt) generates GraphQL operations from `schema.graphql`, with
//! value generators for our scalars (tests/fuzz/hooks.py), as an operator and as a user,
//! for a bounded time. Any 5xx, non-JSON body, error without a code or `INTERNAL`, or
//! answer slower than 2 s fails the run; afterwards the ledger still balances.
//!
//! `WALLET_FUZZ_SECONDS` sets the time per caller (default 30).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestDb;
use common::process::{ServerProcess, post};
use serde_json::{Value, json};
use wallet::auth::{Role, TokenKeys};

fn seconds() -> u64 {
    std::env::var("WALLET_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// The schemathesis command line, or a failure saying how to install it.
fn schemathesis() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("st"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "schemathesis is not installed: `pip install -r tests/fuzz/requirements.txt` \
             (.ci/run does it)"
        )
    })
}

async fn ok(http: &reqwest::Client, base: &str, token: &str, query: &str, vars: Value) -> Value {
    let body = post(http, base, token, query, vars).await.unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error() {
    let st = schemathesis();
    let db = TestDb::new().await;
    let server = ServerProcess::start(&db.url).await;
    let http = reqwest::Client::new();
    let keys = TokenKeys::new(common::JWT_SECRET.as_bytes());
    let hour = Duration::from_secs(3600);
    let operator = keys.mint("back-office", Role::Operator, hour).unwrap();
    let alice = keys.mint("alice", Role::User, hour).unwrap();

    // Real objects for the generators to name: wallets of each kind, movements on them.
    let mut ids = Vec::new();
    for currency in ["USD", "EUR", "BTC", "ETH"] {
        let created = ok(
            &http,
            &server.base,
            &alice,
            "mutation($c: String!) { createWallet(input: {currency: $c}) { id } }",
            json!({"c": currency}),
        )
        .await;
        ids.push(created["createWallet"]["id"].as_str().unwrap().to_owned());
    }
    let bob = ok(
        &http,
        &server.base,
        &operator,
        "mutation { createWallet(input: {currency: \"USD\", userId: \"bob\"}) { id } }",
        json!({}),
    )
    .await["createWallet"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ids.push(bob.clone());
    let deposit = ok(
        &http,
        &server.base,
        &operator,
        common::DEPOSIT,
        json!({"w": ids[0], "a": "500.00", "k": "fuzz-fund"}),
    )
    .await;
    ids.push(deposit["deposit"]["id"].as_str().unwrap().to_owned());
    let transfer = ok(
        &http,
        &server.base,
        &alice,
        "mutation($f: ID!, $t: ID!) { transfer(input: {fromWalletId: $f, toWalletId: $t,
           amount: \"5.00\", idempotencyKey: \"fuzz-transfer\"}) { from { id } } }",
        json!({"f": ids[0], "t": bob}),
    )
    .await;
    ids.push(
        transfer["transfer"]["from"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    for (who, token) in [("operator", &operator), ("user", &alice)] {
        let report = std::env::temp_dir().join(format!("wallet-fuzz-{}", uuid::Uuid::new_v4()));
        let out = tokio::process::Command::new(&st)
            .arg("run")
            .arg(schema)
            .args(["--url", &format!("{}/graphql", server.base)])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--max-time", &seconds().to_string()])
            .args(["--workers", "2"])
            .args([
                "--exclude-checks",
                "not_a_server_error,positive_data_acceptance",
            ])
            .args(["--max-response-time", "2"])
            .args(["--suppress-health-check", "all"])
            .args(["--seed", "20261206"])
            .arg("--no-color")
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env(
                "PYTHONPATH",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz"),
            )
            .env("WALLET_FUZZ_IDS", ids.join(","))
            .env("HOME", &report)
            // Its cache of crashes goes to the working directory: keep it out of the tree.
            .current_dir({
                std::fs::create_dir_all(&report).expect("a scratch directory");
                &report
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .expect("schemathesis runs");
        let _ = std::fs::remove_dir_all(&report);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The summary (operations and test cases run) goes to the test's output.
        for line in stdout
            .lines()
            .filter(|l| l.contains("generated") || l.contains("Operations:"))
        {
            println!("{who}: {}", line.trim());
        }
        assert!(
            out.status.success(),
            "schemathesis found a failure as {who}:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(" generated, "),
            "schemathesis ran nothing as {who}:\n{stdout}\n{stderr}"
        );
    }

    // The process is alive and the ledger balances.
    let trial = ok(
        &http,
        &server.base,
        &operator,
        "{ trialBalance { currency imbalance } }",
        json!({}),
    )
    .await;
    for row in trial["trialBalance"].as_array().unwrap() {
        assert_eq!(row["imbalance"], "0", "{row}");
    }
}
