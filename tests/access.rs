//! Access control: users see and touch only their own wallets; another user's
//! wallet is NOT_FOUND, never a hint that it exists. Bad tokens are refused.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{JWT_SECRET, TestApp, error_code, raw_token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn users_cannot_reach_each_others_wallets() {
    let t = TestApp::new().await;
    let a = t.create_wallet("alice", "USD").await;
    let b = t.create_wallet("bob", "USD").await;
    t.deposit(&a, "10.00", "a1").await;
    let b_tx = t.deposit(&b, "20.00", "b1").await["data"]["deposit"]["id"].clone();
    t.ok(
        &t.operator(),
        "mutation($w: ID!) { reconcileWallet(input: {walletId: $w, startTime: \"2000-01-01T00:00:00Z\", endTime: \"2100-01-01T00:00:00Z\", externalBalance: \"20.00\"}) { id } }",
        json!({"w": b}),
    )
    .await;
    let alice = t.user("alice");

    // Reads.
    let body = t
        .gql(
            Some(&alice),
            "query($w: ID!) { wallet(id: $w) { id } }",
            json!({"w": b}),
        )
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    let body = t
        .gql(
            Some(&alice),
            "query($w: ID!) { node(id: $w) { id } }",
            json!({"w": b}),
        )
        .await;
    assert!(
        body["data"]["node"].is_null() && body.get("errors").is_none(),
        "{body}"
    );
    let body = t
        .gql(
            Some(&alice),
            "query($x: ID!) { transaction(id: $x) { id } }",
            json!({"x": b_tx}),
        )
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    let body = t
        .gql(
            Some(&alice),
            "query($x: ID!) { node(id: $x) { id } }",
            json!({"x": b_tx}),
        )
        .await;
    assert!(body["data"]["node"].is_null());
    // Paging through B's journal or reconciliations.
    let body = t
        .gql(
            Some(&alice),
            "query($w: ID!) { transactions(walletId: $w) { edges { node { id } } } }",
            json!({"w": b}),
        )
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    let body = t
        .gql(
            Some(&alice),
            "query($w: ID!) { reconciliations(walletId: $w) { edges { node { id } } } }",
            json!({"w": b}),
        )
        .await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    // Unfiltered lists show only her own.
    let data = t
        .ok(&alice, "{ wallets { edges { node { userId } } } transactions { edges { node { idempotencyKey } } }
                     reconciliations { edges { node { id } } } viewer { userId role wallets { edges { node { id } } } } }", json!({}))
        .await;
    assert_eq!(
        data["wallets"]["edges"],
        json!([{"node": {"userId": "alice"}}])
    );
    assert_eq!(
        data["transactions"]["edges"],
        json!([{"node": {"idempotencyKey": "a1"}}])
    );
    assert_eq!(data["reconciliations"]["edges"], json!([]));
    assert_eq!(data["viewer"]["userId"], "alice");
    assert_eq!(data["viewer"]["role"], "USER");
    // Asking to filter by another user changes nothing for a user.
    let data = t
        .ok(
            &alice,
            "{ wallets(userId: \"bob\") { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["wallets"]["edges"], json!([]));

    // Writes.
    let body = t.withdraw(&alice, &b, "1.00", "steal").await;
    assert_eq!(error_code(&body), "NOT_FOUND");
    let body = t
        .gql(
            Some(&alice),
            common::DEPOSIT,
            json!({"w": a, "a": "1.00", "k": "self-credit"}),
        )
        .await;
    assert_eq!(
        error_code(&body),
        "FORBIDDEN",
        "users cannot deposit, even to themselves"
    );
    assert_eq!(t.balance(&a).await, "10.00");
    assert_eq!(t.balance(&b).await, "20.00");

    // Operators see everything.
    let data = t
        .ok(
            &t.operator(),
            "{ wallets { edges { node { userId } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["wallets"]["edges"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_expired_and_forged_tokens_are_rejected() {
    let t = TestApp::new().await;
    let now = jsonwebtoken::get_current_timestamp();
    let query = json!({"query": "{ viewer { userId } }"}).to_string();
    let send = |auth: Option<String>| {
        let mut req = Request::post("/graphql")
            .header("content-type", "application/json")
            .header("accept", "application/graphql-response+json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.body(Body::from(query.clone())).unwrap()
    };

    // No token: a GraphQL error, not an HTTP failure (public fields stay usable).
    let (status, _, body) = t.send(send(None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(error_code(&body), "UNAUTHENTICATED");

    let refused = [
        // Expired beyond the leeway.
        format!("Bearer {}", raw_token(JWT_SECRET, json!({"sub": "alice", "role": "user", "exp": now - 120}))),
        // Signed with another secret.
        format!("Bearer {}", raw_token("not-the-secret-not-the-secret-xx", json!({"sub": "alice", "role": "operator", "exp": now + 600}))),
        // Unknown role, missing expiry.
        format!("Bearer {}", raw_token(JWT_SECRET, json!({"sub": "alice", "role": "admin", "exp": now + 600}))),
        format!("Bearer {}", raw_token(JWT_SECRET, json!({"sub": "alice", "role": "user"}))),
        // alg=none.
        "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsInJvbGUiOiJvcGVyYXRvciIsImV4cCI6OTk5OTk5OTk5OX0.".into(),
        "Bearer not-a-jwt".into(),
        "Basic YWxpY2U6cGFzc3dvcmQ=".into(),
    ];
    for auth in refused {
        let (status, headers, body) = t.send(send(Some(auth.clone()))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth}: {body}");
        assert_eq!(error_code(&body), "UNAUTHENTICATED");
        assert!(headers.get("www-authenticate").is_some());
    }
    // A tampered payload with the original signature.
    let good = t.user("alice");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload =
        base64_url(&json!({"sub": "alice", "role": "operator", "exp": now + 600}).to_string());
    parts[1] = &forged_payload;
    let (status, _, _) = t
        .send(send(Some(format!("Bearer {}", parts.join(".")))))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // And the genuine token works.
    let (status, _, body) = t.send(send(Some(format!("Bearer {good}")))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["viewer"]["userId"], "alice");
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
