//! Poison input: NUL and other control characters, lone surrogates, oversized strings and
//! numbers where strings belong, in every string input of every mutation. Each is a clear
//! BAD_USER_INPUT that changes nothing, never fails a batch, and never disturbs the
//! requests running beside it.

mod common;

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::Request;
use common::{Options, TestApp};
use serde_json::{Value, json};

/// Stands in for the poison in a request's JSON text before it is sent.
const MARK: &str = "@@POISON@@";

/// How a poison value is written into the JSON text of a variable.
#[derive(Clone, Copy, Debug)]
enum Poison {
    Nul,
    Bell,
    /// `\ud800` alone: not a character at all.
    LoneSurrogate,
    /// Over every field's limit, under the body limit.
    Long,
    /// Over the body limit.
    Huge,
    Number,
}

impl Poison {
    const ALL: [Poison; 6] = [
        Poison::Nul,
        Poison::Bell,
        Poison::LoneSurrogate,
        Poison::Long,
        Poison::Huge,
        Poison::Number,
    ];

    /// The JSON text that replaces `"MARK"` (quotes included).
    fn json(self) -> String {
        match self {
            Poison::Nul => r#""key\u0000poison""#.into(),
            Poison::Bell => r#""key\u0007poison""#.into(),
            Poison::LoneSurrogate => r#""key\ud800poison""#.into(),
            Poison::Long => format!("\"{}\"", "k".repeat(200 * 1024)),
            Poison::Huge => format!("\"{}\"", "k".repeat(1024 * 1024)),
            Poison::Number => "12345".into(),
        }
    }
}

/// Counts of everything a mutation could change.
async fn state_of(t: &TestApp) -> Vec<i64> {
    let pg = t.db.client().await;
    let mut out = Vec::new();
    for sql in [
        "SELECT count(*) FROM wallets",
        "SELECT count(*) FROM transactions",
        "SELECT count(*) FROM reconciliations",
        "SELECT count(*) FROM sim_transfers",
        "SELECT coalesce(sum(height), 0)::bigint FROM sim_chains",
        "SELECT count(*) FROM events WHERE topic <> 'WALLET'",
    ] {
        out.push(pg.query_one(sql, &[]).await.unwrap().get(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_in_any_string_input_is_refused_and_changes_nothing() {
    let t = TestApp::with(Options {
        pool_size: 20,
        ..Options::default()
    })
    .await;
    let usd = t.create_wallet("alice", "USD").await;
    t.deposit(&usd, "100.00", "funding").await;
    let (btc, address) = t.funded_btc("alice", "1.00000000").await;
    let other = t.create_wallet("bob", "USD").await;

    // Every mutation, with each of its string inputs in turn poisoned. (Ids and Decimals
    // travel as strings too.)
    let cases: Vec<(&str, &str, Value)> = vec![
        (
            "createWallet.currency",
            "mutation($v: String!) { createWallet(input: {currency: $v}) { id } }",
            json!({}),
        ),
        (
            "createWallet.userId",
            "mutation($v: String) { createWallet(input: {currency: \"EUR\", userId: $v}) { id } }",
            json!({}),
        ),
        (
            "deposit.idempotencyKey",
            "mutation($w: ID!, $v: String!) { deposit(input: {walletId: $w, amount: \"1.00\", idempotencyKey: $v}) { id } }",
            json!({"w": usd}),
        ),
        // The key's deprecated name is checked as the key is.
        (
            "deposit.txHash",
            "mutation($w: ID!, $v: String!) { deposit(input: {walletId: $w, amount: \"1.00\", txHash: $v}) { id } }",
            json!({"w": usd}),
        ),
        (
            "deposit.description",
            "mutation($w: ID!, $v: String) { deposit(input: {walletId: $w, amount: \"1.00\", idempotencyKey: \"d-desc\", description: $v}) { id } }",
            json!({"w": usd}),
        ),
        (
            "deposit.walletId",
            "mutation($v: ID!) { deposit(input: {walletId: $v, amount: \"1.00\", idempotencyKey: \"d-id\"}) { id } }",
            json!({}),
        ),
        (
            "deposit.amount",
            "mutation($w: ID!, $v: Decimal!) { deposit(input: {walletId: $w, amount: $v, idempotencyKey: \"d-amount\"}) { id } }",
            json!({"w": usd}),
        ),
        (
            "withdraw.idempotencyKey",
            "mutation($w: ID!, $v: String!) { withdraw(input: {walletId: $w, amount: \"1.00\", idempotencyKey: $v}) { id } }",
            json!({"w": usd}),
        ),
        (
            "withdraw.txHash",
            "mutation($w: ID!, $v: String!) { withdraw(input: {walletId: $w, amount: \"1.00\", txHash: $v}) { id } }",
            json!({"w": usd}),
        ),
        (
            "withdraw.description",
            "mutation($w: ID!, $v: String) { withdraw(input: {walletId: $w, amount: \"1.00\", idempotencyKey: \"w-desc\", description: $v}) { id } }",
            json!({"w": usd}),
        ),
        (
            "reconcileWallet.walletId",
            "mutation($v: ID!) { reconcileWallet(input: {walletId: $v, startTime: \"2020-01-01T00:00:00Z\", endTime: \"2099-01-01T00:00:00Z\", externalBalance: \"1\"}) { id } }",
            json!({}),
        ),
        (
            "reconcileWallet.externalBalance",
            "mutation($w: ID!, $v: Decimal) { reconcileWallet(input: {walletId: $w, startTime: \"2020-01-01T00:00:00Z\", endTime: \"2099-01-01T00:00:00Z\", externalBalance: $v}) { id } }",
            json!({"w": usd}),
        ),
        (
            "processCryptoDeposit.txHash",
            "mutation($w: ID!, $v: String!) { processCryptoDeposit(input: {walletId: $w, txHash: $v}) { id } }",
            json!({"w": btc}),
        ),
        (
            "cryptoWithdraw.toAddress",
            "mutation($w: ID!, $v: String!) { cryptoWithdraw(input: {walletId: $w, toAddress: $v, amount: \"0.1\", idempotencyKey: \"c-to\"}) { id } }",
            json!({"w": btc}),
        ),
        (
            "cryptoWithdraw.idempotencyKey",
            "mutation($w: ID!, $v: String!) { cryptoWithdraw(input: {walletId: $w, toAddress: \"bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3\", amount: \"0.1\", idempotencyKey: $v}) { id } }",
            json!({"w": btc}),
        ),
        (
            "simulateIncomingTransfer.network",
            "mutation($a: String!, $v: String!) { simulateIncomingTransfer(input: {network: $v, toAddress: $a, amount: \"0.1\"}) { txHash } }",
            json!({"a": address}),
        ),
        (
            "simulateIncomingTransfer.toAddress",
            "mutation($v: String!) { simulateIncomingTransfer(input: {network: \"bitcoin\", toAddress: $v, amount: \"0.1\"}) { txHash } }",
            json!({}),
        ),
        (
            "mineBlocks.network",
            "mutation($v: String!) { mineBlocks(input: {network: $v, count: 1}) }",
            json!({}),
        ),
    ];
    let before = state_of(&t).await;
    let stats = t.app.state.committer.stats();
    let fallbacks = stats.fallbacks.load(Ordering::Relaxed);

    // Honest deposits to another wallet run all along, in the same batches.
    let honest = {
        let (router, token, other) = (t.router.clone(), t.operator(), other.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for n in 0..40 {
                use tower::ServiceExt;
                let body = json!({"query": common::DEPOSIT, "variables": {"w": other, "a": "1.00", "k": format!("honest-{n}")}});
                let req = Request::post("/graphql")
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::from(body.to_string()))
                    .unwrap();
                let resp = router.clone().oneshot(req).await.unwrap();
                let bytes = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                answers.push(serde_json::from_slice::<Value>(&bytes).unwrap());
            }
            answers
        })
    };

    let t = &t;
    let sends = cases.iter().flat_map(|(name, query, vars)| {
        Poison::ALL.into_iter().map(move |poison| async move {
            let mut vars = vars.clone();
            vars["v"] = json!(MARK);
            let text = json!({"query": query, "variables": vars})
                .to_string()
                .replace(&format!("\"{MARK}\""), &poison.json());
            let req = Request::post("/graphql")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {}", t.operator()))
                .body(Body::from(text))
                .unwrap();
            let (status, _, body) = t.send(req).await;
            (name, poison, status, body)
        })
    });
    for (name, poison, status, body) in futures_util::future::join_all(sends).await {
        assert_eq!(
            body["errors"][0]["extensions"]["code"],
            "BAD_USER_INPUT",
            "{name} with {poison:?}: {status} {}",
            body.to_string().chars().take(300).collect::<String>()
        );
        assert!(
            body.get("data").is_none_or(Value::is_null),
            "{name} with {poison:?}: {body}"
        );
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("SQL") && !message.contains("internal"),
            "{name} with {poison:?}: {message}"
        );
    }
    // The same poison written into the query text itself, not a variable.
    let literal = format!(
        r#"{{"query": "mutation {{ deposit(input: {{walletId: \"{usd}\", amount: \"1.00\", idempotencyKey: \"a\\u0000b\"}}) {{ id }} }}"}}"#
    );
    let req = Request::post("/graphql")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", t.operator()))
        .body(Body::from(literal))
        .unwrap();
    let (_, _, body) = t.send(req).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );

    for (n, answer) in honest.await.unwrap().iter().enumerate() {
        assert_eq!(
            answer["data"]["deposit"]["idempotencyKey"],
            format!("honest-{n}"),
            "{answer}"
        );
    }
    assert_eq!(
        stats.fallbacks.load(Ordering::Relaxed),
        fallbacks,
        "no batch fell back"
    );
    // Nothing but the honest deposits (40 rows and their events) changed.
    let mut expected = before.clone();
    expected[1] += 40;
    expected[5] += 40;
    assert_eq!(state_of(t).await, expected);
    assert_eq!(t.balance(&other).await, "40.00");
    assert_eq!(t.balance(&usd).await, "100.00");
}
