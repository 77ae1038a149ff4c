//! GraphQL over HTTP conformance, limits, health endpoints, and no leaking of internals.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Options, TestApp, error_code};
use serde_json::json;
use wallet::graphql::Limits;

fn post(body: &str, content_type: &str, accept: Option<&str>) -> Request<Body> {
    let mut req = Request::post("/graphql").header("content-type", content_type);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    req.body(Body::from(body.to_owned())).unwrap()
}

const GQL: &str = "application/graphql-response+json";

#[tokio::test(flavor = "multi_thread")]
async fn content_negotiation_and_status_codes() {
    let t = TestApp::new().await;
    let ok = json!({"query": "{ currencies { code scale } }"}).to_string();

    for (accept, expected) in [
        (Some(GQL), GQL),
        (Some("application/json"), "application/json"),
        (None, "application/json"),
        (Some("*/*"), "application/json"),
        (
            Some("application/json;q=0.5, application/graphql-response+json"),
            GQL,
        ),
        (
            Some("application/graphql-response+json;q=0.1, application/json"),
            "application/json",
        ),
    ] {
        let (status, headers, body) = t.send(post(&ok, "application/json", accept)).await;
        assert_eq!(status, StatusCode::OK, "{accept:?}");
        let ct = headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with(expected), "{accept:?} → {ct}");
        let codes: Vec<_> = body["data"]["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap().to_owned())
            .collect();
        assert!(codes.contains(&"USD".to_owned()) && codes.contains(&"JPY".to_owned()));
    }
    // Nothing acceptable.
    let (status, _, _) = t
        .send(post(&ok, "application/json", Some("text/html")))
        .await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    // Wrong request media type.
    let (status, _, body) = t.send(post(&ok, "text/plain", Some(GQL))).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    // Not well-formed requests: 400 under either media type.
    for bad in [
        "{not json",
        "[]",
        "{\"query\": 1}",
        "{}",
        "{\"query\": \"{ currencies { code } }\", \"variables\": [1]}",
    ] {
        for accept in [GQL, "application/json"] {
            let (status, _, body) = t.send(post(bad, "application/json", Some(accept))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} / {accept}");
            assert_eq!(error_code(&body), "BAD_USER_INPUT");
        }
    }
    // Parse and validation errors: 400 with the GraphQL media type, 200 with legacy JSON.
    for doc in ["{ currencies { code ", "{ nope }", "{ currencies }"] {
        let body = json!({"query": doc}).to_string();
        let (status, _, b) = t.send(post(&body, "application/json", Some(GQL))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{doc}");
        assert_eq!(error_code(&b), "BAD_USER_INPUT");
        // Not executed: no `data` entry at all.
        assert!(b.get("data").is_none(), "{b}");
        let (status, _, b) = t
            .send(post(&body, "application/json", Some("application/json")))
            .await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        assert_eq!(error_code(&b), "BAD_USER_INPUT");
        assert!(b.get("data").is_none(), "{b}");
    }
    // Field errors during execution are 200 either way, with `data` (null where it failed).
    let body = json!({"query": "{ viewer { userId } }"}).to_string();
    let (status, _, b) = t.send(post(&body, "application/json", Some(GQL))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(error_code(&b), "UNAUTHENTICATED");
    assert!(b.get("data").is_some_and(|d| d.is_null()), "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_runs_queries_and_refuses_mutations() {
    let t = TestApp::new().await;
    let get = |qs: &str| {
        Request::get(format!("/graphql?{qs}"))
            .header("accept", GQL)
            .body(Body::empty())
            .unwrap()
    };
    let (status, _, body) = t
        .send(get("query=%7B%20currencies%20%7B%20code%20%7D%20%7D"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["data"]["currencies"].is_array());
    // Variables travel as JSON text.
    let (status, _, body) = t
        .send(get("query=query(%24w%3AID!)%7Bnode(id%3A%24w)%7Bid%7D%7D&variables=%7B%22w%22%3A%22x%22%7D"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
    let (status, _, _) = t
        .send(get("query=%7Bcurrencies%7Bcode%7D%7D&variables=not-json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Mutations over GET: 405 with Allow: POST, and nothing happens.
    let token = t.user("alice");
    let req = Request::get(
        "/graphql?query=mutation%7BcreateWallet(input%3A%7Bcurrency%3A%22USD%22%7D)%7Bid%7D%7D",
    )
    .header("accept", GQL)
    .header("authorization", format!("Bearer {token}"))
    .body(Body::empty())
    .unwrap();
    let (status, headers, _) = t.send(req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    let data = t
        .ok(
            &token,
            "{ viewer { wallets { edges { node { id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["viewer"]["wallets"]["edges"], json!([]));
    // …also when the mutation is one of several operations.
    let (status, _, _) = t
        .send(get("query=query%20A%7Bcurrencies%7Bcode%7D%7D%20mutation%20B%7BcreateWallet(input%3A%7Bcurrency%3A%22USD%22%7D)%7Bid%7D%7D&operationName=B"))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread")]
async fn depth_and_complexity_are_limited() {
    let t = TestApp::with(Options {
        limits: Limits {
            max_depth: 8,
            max_complexity: 500,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let op = t.operator();
    let deep = "{ wallets(first: 1) { edges { node { transactions(first: 1) { edges { node { wallet { transactions(first: 1) { edges { node { id } } } } } } } } } } }";
    let body = t.gql(Some(&op), deep, json!({})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("nested"),
        "{body}"
    );
    let wide = "{ wallets(first: 100) { edges { node { transactions(first: 100) { edges { node { id amount } } } } } } }";
    let body = t.gql(Some(&op), wide, json!({})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("complex"),
        "{body}"
    );
    // Within limits is fine.
    t.ok(
        &op,
        "{ wallets(first: 10) { edges { node { id balance } } } }",
        json!({}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn default_limits_admit_graphiql_introspection() {
    let t = TestApp::new().await;
    let introspection = include_str!("introspection.graphql");
    let body = t.gql(None, introspection, json!({})).await;
    assert!(body.get("errors").is_none(), "{body}");
    assert!(body["data"]["__schema"]["types"].as_array().unwrap().len() > 20);
}

/// The key's former name, `txHash`, is deprecated where it is the client's key (the
/// deposit and withdrawal inputs, `Transaction`), with a reason naming `idempotencyKey`; a
/// chain deposit's `txHash` is a chain hash and stays.
#[tokio::test(flavor = "multi_thread")]
async fn introspection_shows_the_tx_hash_of_keys_deprecated() {
    let t = TestApp::new().await;
    let body = t
        .gql(
            None,
            "{
              deposit: __type(name: \"DepositInput\") { ...Inputs }
              withdraw: __type(name: \"WithdrawInput\") { ...Inputs }
              chain: __type(name: \"ProcessCryptoDepositInput\") { ...Inputs }
              transaction: __type(name: \"Transaction\") {
                fields(includeDeprecated: true) {
                  name isDeprecated deprecationReason type { kind ofType { name } } } }
            }
            fragment Inputs on __Type {
              inputFields(includeDeprecated: true) {
                name isDeprecated deprecationReason type { kind name } } }",
            json!({}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let field = |of: &str, list: &str, name: &str| {
        body["data"][of][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{of}.{name}: {body}"))
            .clone()
    };
    for input in ["deposit", "withdraw"] {
        let key = field(input, "inputFields", "idempotencyKey");
        let old = field(input, "inputFields", "txHash");
        assert_eq!(key["isDeprecated"], false, "{key}");
        assert_eq!(old["isDeprecated"], true, "{old}");
        assert_eq!(
            old["deprecationReason"],
            "Use idempotencyKey; txHash will be removed in the next release."
        );
        // Optional both: one of them is required, which the resolver checks.
        assert_eq!(key["type"], json!({"kind": "SCALAR", "name": "String"}));
        assert_eq!(old["type"], json!({"kind": "SCALAR", "name": "String"}));
    }
    let chain = field("chain", "inputFields", "txHash");
    assert_eq!(chain["isDeprecated"], false, "{chain}");
    assert_eq!(chain["type"]["kind"], "NON_NULL");

    let key = field("transaction", "fields", "idempotencyKey");
    let old = field("transaction", "fields", "txHash");
    assert_eq!(key["isDeprecated"], false, "{key}");
    assert_eq!(old["isDeprecated"], true, "{old}");
    let reason = old["deprecationReason"].as_str().unwrap();
    assert!(
        reason.contains("idempotencyKey") && reason.contains("chainTxHash"),
        "{reason}"
    );
    for name in ["idempotencyKey", "currency"] {
        let f = field("transaction", "fields", name);
        assert_eq!(
            f["type"],
            json!({"kind": "NON_NULL", "ofType": {"name": "String"}})
        );
    }
    let charged = field("transaction", "fields", "chargedFee");
    assert_eq!(charged["type"]["kind"], "SCALAR", "nullable: {charged}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_graphiql() {
    let t = TestApp::new().await;
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    let resp = tower::ServiceExt::oneshot(t.router.clone(), get("/healthz"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = tower::ServiceExt::oneshot(t.router.clone(), get("/readyz"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("x-request-id").is_some());
    let resp = tower::ServiceExt::oneshot(t.router.clone(), get("/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let header = |resp: &axum::response::Response, name: &str| {
        resp.headers()[name].to_str().unwrap().to_owned()
    };
    assert!(header(&resp, "content-type").starts_with("text/html"));
    // The browser is told to fetch nothing from any other host…
    let policy = header(&resp, "content-security-policy");
    assert!(policy.starts_with("default-src 'self';"), "{policy}");
    assert!(!policy.contains("http"), "{policy}");
    // …runs no inline script, and connects to this origin only (its websocket included).
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(policy.contains("connect-src 'self';"), "{policy}");
    assert!(!policy.contains("ws:"), "{policy}");
    let page = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    // …and the page names only files the service serves itself, each of them the
    // pinned file of the repository, cacheable for good.
    let mut named: Vec<String> = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in page.match_indices(attribute) {
            let rest = &page[at + attribute.len()..];
            named.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    named.sort();
    // The page's own setup script changes with the service: fetched fresh each time.
    let setup = named.remove(
        named
            .iter()
            .position(|n| n == "/assets/wallet/graphiql.js")
            .expect("the setup script"),
    );
    let resp = tower::ServiceExt::oneshot(t.router.clone(), get(&setup))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header(&resp, "content-type").starts_with("text/javascript"));
    assert_eq!(header(&resp, "cache-control"), "no-cache");
    assert!(
        page.matches("<script").count() == page.matches("<script src=").count(),
        "no inline script"
    );
    assert_eq!(
        named,
        [
            "/assets/graphiql-4.1.2/graphiql.min.css",
            "/assets/graphiql-4.1.2/graphiql.min.js",
            "/assets/react-18.3.1/react.production.min.js",
            "/assets/react-dom-18.3.1/react-dom.production.min.js",
        ]
    );
    assert!(!page.contains("://"), "no absolute address in the page");
    for path in &named {
        let resp = tower::ServiceExt::oneshot(t.router.clone(), get(path))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let kind = if path.ends_with(".css") {
            "text/css"
        } else {
            "text/javascript"
        };
        assert!(header(&resp, "content-type").starts_with(kind), "{path}");
        assert_eq!(
            header(&resp, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let file = path.rsplit('/').next().unwrap();
        let pinned = std::fs::read(format!("assets/graphiql/{file}")).unwrap();
        assert!(body.as_ref() == pinned.as_slice(), "{path}");
        // React's production build, not the development one.
        assert!(!body.windows(11).any(|w| w == b"development"), "{path}");
    }
    for missing in [
        "/assets/graphiql-4.1.1/graphiql.min.js",
        "/assets/graphiql-4.1.2/other.js",
        "/assets/graphiql-4.1.2/../../Cargo.toml",
    ] {
        let resp = tower::ServiceExt::oneshot(t.router.clone(), get(missing))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{missing}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn database_failures_are_internal_and_leak_nothing() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "5.00", "d1").await;
    // Inject a failure the code cannot anticipate: the journal table disappears.
    t.db.client()
        .await
        .batch_execute("ALTER TABLE transactions RENAME TO transactions_gone")
        .await
        .unwrap();
    let body = t.deposit(&w, "1.00", "d2").await;
    assert_eq!(error_code(&body), "INTERNAL");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("internal error (reference "),
        "{message}"
    );
    for leak in [
        "relation",
        "transactions",
        "SELECT",
        "INSERT",
        "postgres",
        "diesel",
    ] {
        assert!(!body.to_string().contains(leak), "leaks {leak:?}: {body}");
    }
    // The failed deposit changed nothing.
    t.db.client()
        .await
        .batch_execute("ALTER TABLE transactions_gone RENAME TO transactions")
        .await
        .unwrap();
    assert_eq!(t.balance(&w).await, "5.00");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_exposed_for_prometheus() {
    let t = TestApp::new().await;
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "1.00", "metrics-dep").await;
    let resp = tower::ServiceExt::oneshot(
        t.router.clone(),
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    // The GraphQL posts above, by route and status, with their latency histogram.
    let posts = text
        .lines()
        .find(|l| {
            l.starts_with("wallet_http_requests_total{")
                && l.contains(r#"route="/graphql""#)
                && l.contains(r#"method="POST""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{text}"));
    let count: f64 = posts.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{posts}");
    assert!(text.contains("wallet_http_request_duration_seconds_bucket{"));
    for gauge in [
        "wallet_db_pool_size",
        "wallet_db_pool_available",
        "wallet_subscriptions",
        "wallet_event_listener_connected 1",
        "wallet_group_commit_batches",
        "wallet_group_commit_fallbacks",
    ] {
        assert!(text.contains(gauge), "{gauge} missing in:\n{text}");
    }
}

/// Response fields come in the query's order, whichever resolves first: database-backed
/// fields (a wallet, its transactions) interleaved with fields answered at once (the
/// viewer, a balance already loaded), at the root, nested, under aliases and through a
/// fragment.
#[tokio::test(flavor = "multi_thread")]
async fn response_fields_follow_the_query_order() {
    let t = TestApp::new().await;
    let wallet = t.create_wallet("alice", "USD").await;
    t.deposit(&wallet, "3.00", "order-1").await;
    let base = t
        .serve()
        .await
        .replace("ws://", "http://")
        .replace("/graphql/ws", "/graphql");
    let mut root = String::new();
    for i in 0..8 {
        root.push_str(&format!(
            "s{i}: viewer {{ userId }} d{i}: wallet(id: $w) {{ ...W }} "
        ));
    }
    let query = format!(
        "query($w: ID!) {{ {root} }}
         fragment W on Wallet {{ t: transactions(first: 1) {{ nodes {{ amount }} }} b: balance id }}"
    );
    let text = reqwest::Client::new()
        .post(&base)
        .bearer_auth(t.user("alice"))
        .json(&json!({"query": query, "variables": {"w": wallet}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("\"errors\""), "{text}");
    let expected: Vec<String> = (0..8)
        .flat_map(|i| [format!("\"s{i}\""), format!("\"d{i}\"")])
        .collect();
    let mut positions: Vec<usize> = expected
        .iter()
        .map(|key| {
            text.find(key.as_str())
                .unwrap_or_else(|| panic!("{key} in {text}"))
        })
        .collect();
    assert!(positions.is_sorted(), "root fields out of order: {text}");
    // Inside each wallet: t, then b, then id.
    positions = ["\"d0\":{\"t\"", "\"b\"", "\"id\""]
        .iter()
        .map(|key| text.find(key).unwrap_or_else(|| panic!("{key} in {text}")))
        .collect();
    assert!(positions.is_sorted(), "nested fields out of order: {text}");
}
