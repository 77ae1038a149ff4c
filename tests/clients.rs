//! The API through the GraphQL clients frontends use, unchanged: `tests/node/clients.mjs`
//! (its packages pinned in `tests/node/package-lock.json`) runs Apollo Client 3 and urql in
//! Node against this service on a local port, both subscribing through the `graphql-ws`
//! client (`graphql-transport-ws`, the token in `connection_init`).
//!
//! Apollo (an HttpLink with the token as a header and a GraphQLWsLink, split by operation
//! type) must run a query; an operator's deposit whose answer updates the cached wallet,
//! whose idempotency key replayed changes nothing, and which a user is refused with
//! `FORBIDDEN` where Apollo looks for it; page through a wallet's history two at a time with
//! `fetchMore` into one list merged by `relayStylePagination` (every row, in order, no
//! duplicates, ending on `hasNextPage: false`, in the cache and in the watched query); and
//! receive the `transactionUpdated` event of a deposit made after subscribing — with no
//! complaint from its cache. urql (`cacheExchange`, `fetchExchange`, `subscriptionExchange`)
//! must run a query (sent as GET), see a user's deposit refused with `FORBIDDEN`, and
//! receive such an event too. `.ci/run` installs the Node packages.

mod common;

use std::path::Path;
use std::time::Duration;

use common::TestApp;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn apollo_and_urql_work() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        ["@apollo/client", "@urql/core", "graphql-ws", "ws"]
            .iter()
            .all(|p| node_dir.join("node_modules").join(p).is_dir()),
        "the clients test needs the Node packages of tests/node: run .ci/run, or \
         `npm ci --prefix tests/node`"
    );
    let t = TestApp::new().await;
    let ws = t.serve().await;
    let base = ws
        .replace("ws://", "http://")
        .trim_end_matches("/graphql/ws")
        .to_owned();
    let wallet = t.create_wallet("alice", "USD").await;
    // A history long enough for pages of two (the script adds one more deposit).
    for (amount, key) in [
        ("5.00", "first"),
        ("2.50", "second"),
        ("1.25", "third"),
        ("0.10", "fourth"),
    ] {
        let body = t.deposit(&wallet, amount, key).await;
        assert!(body.get("errors").is_none(), "{body}");
    }

    let run = Command::new("node")
        .arg("clients.mjs")
        .current_dir(&node_dir)
        .env("WALLET_URL", base)
        .env("WALLET_TOKEN", t.user("alice"))
        .env("WALLET_OPERATOR", t.operator())
        .env("WALLET_ID", &wallet)
        .kill_on_drop(true)
        .output();
    // The script gives up after 60 s by itself; this is for a node that does not.
    let run = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("clients.mjs finishes within 90 s")
        .expect("node runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    // Shown with --nocapture: the clients' warnings, if any.
    eprint!("{stdout}{stderr}");
    assert!(run.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last(),
        Some("apollo and urql work"),
        "{stdout}{stderr}"
    );
}
