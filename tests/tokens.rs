//! Bearer tokens against real server processes: issuer and audience, key rotation, key
//! ids, lifetimes per role, and revocation across two processes sharing a database.

mod common;

use std::time::{Duration, Instant};

use common::binary::{Scratch, Server, launch, mint, wallet};
use common::ws::{Event, WsClient};
use serde_json::{Value, json};
use wallet::auth::{DEVELOPMENT_AUDIENCE, DEVELOPMENT_ISSUER, key_id};

/// Two secrets as `openssl rand -hex 32` makes them.
const SECRET_A: &str = "b83ae9d83473530e7074e6aa57fbdf2ad15192696b7eeb06a2c42fc90251469c";
const SECRET_B: &str = "c06577891fc499e8a476cf1d736b9524d64ae3a34f68c394ec453130bd5ddc9b";

const REVOKE: &str = "mutation($u: String!, $r: String!) {
  revokeTokens(input: {userId: $u, reason: $r}) { userId revokedBefore revokedBy reason } }";

/// `wallet serve` on `url` (development rules, loopback) with `env` on top.
async fn serve(home: &Scratch, url: &str, env: &[(&str, &str)]) -> Server {
    let mut all = vec![
        ("DATABASE_URL", url),
        ("WALLET_SEED", common::TEST_MNEMONIC),
    ];
    all.extend_from_slice(env);
    let server = launch(home.path(), &all).await;
    assert!(server.exit.is_none(), "{:?}", server.stop().await);
    server
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Development claims for `sub` with `role`, issued `iat` and expiring `exp`.
fn claims(sub: &str, role: &str, iat: u64, exp: u64) -> Value {
    json!({"sub": sub, "role": role, "iat": iat, "exp": exp,
           "iss": DEVELOPMENT_ISSUER, "aud": DEVELOPMENT_AUDIENCE})
}

/// `claims` signed with `secret`, the header naming `kid` (none: no `kid` at all).
fn signed(secret: &str, kid: Option<&str>, claims: &Value) -> String {
    let header = jsonwebtoken::Header {
        kid: kid.map(str::to_owned),
        ..Default::default()
    };
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The `kid` of a token's header.
fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked() {
    let db = common::TestDb::new().await;
    let home = Scratch::new("wallet-tokens");
    let secret = [("WALLET_JWT_SECRET", SECRET_A)];
    let server = serve(&home, &db.url, &secret).await;
    let kid_a = key_id(SECRET_A.as_bytes());
    let t = now();
    let good = claims("alice", "user", t, t + 600);
    assert_eq!(
        server.whoami(&signed(SECRET_A, Some(&kid_a), &good)).await,
        (200, Some("alice".into()))
    );
    // Each claim wrong or missing in turn.
    let mut refused = Vec::new();
    for (claim, value) in [
        ("iss", json!("someone-else")),
        ("aud", json!("another-api")),
        ("iss", Value::Null),
        ("aud", Value::Null),
        ("iat", Value::Null),
    ] {
        let mut claims = good.clone();
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(claim),
            value => claims.as_object_mut().unwrap().insert(claim.into(), value),
        };
        refused.push((claim, signed(SECRET_A, Some(&kid_a), &claims)));
    }
    // The same secret under production rules mints a production token: not this one's.
    let production = mint(
        home.path(),
        "alice",
        &[],
        &[
            ("WALLET_JWT_SECRET", SECRET_A),
            ("WALLET_ENV", "production"),
        ],
    )
    .unwrap();
    refused.push(("production", production));
    for (what, token) in &refused {
        let (status, body) = server
            .gql(Some(token), "{ viewer { userId } }", json!({}))
            .await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(common::error_code(&body), "UNAUTHENTICATED", "{what}");
    }
    server.stop().await.started();

    // Configured issuer and audience: `wallet token` with the same settings mints what
    // the server accepts; a token with the defaults is refused.
    let custom = [
        ("WALLET_JWT_SECRET", SECRET_A),
        ("WALLET_JWT_ISSUER", "https://auth.example.com"),
        ("WALLET_JWT_AUDIENCE", "wallet-eu"),
    ];
    let server = serve(&home, &db.url, &custom).await;
    let token = mint(home.path(), "alice", &[], &custom).unwrap();
    assert_eq!(server.whoami(&token).await, (200, Some("alice".into())));
    let default = mint(home.path(), "alice", &[], &secret).unwrap();
    assert_eq!(server.whoami(&default).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_verifies_until_it_is_removed() {
    let db = common::TestDb::new().await;
    let home = Scratch::new("wallet-tokens");
    let old_only = [("WALLET_JWT_SECRET", SECRET_A)];
    let server = serve(&home, &db.url, &old_only).await;
    let old = mint(home.path(), "alice", &[], &old_only).unwrap();
    assert_eq!(kid(&old), key_id(SECRET_A.as_bytes()));
    assert_eq!(server.whoami(&old).await, (200, Some("alice".into())));
    server.stop().await.started();

    // The new secret signs; the old one, listed as previous, still verifies.
    let rotated = [
        ("WALLET_JWT_SECRET", SECRET_B),
        ("WALLET_JWT_PREVIOUS_SECRETS", SECRET_A),
    ];
    let server = serve(&home, &db.url, &rotated).await;
    let new = mint(home.path(), "bob", &[], &rotated).unwrap();
    assert_eq!(kid(&new), key_id(SECRET_B.as_bytes()));
    assert_eq!(server.whoami(&old).await, (200, Some("alice".into())));
    assert_eq!(server.whoami(&new).await, (200, Some("bob".into())));
    server.stop().await.started();

    // The same from a file of previous secrets (one per line).
    let file = home.file("previous", &format!("\n{SECRET_A}\n"), 0o600);
    let from_file = [
        ("WALLET_JWT_SECRET", SECRET_B),
        ("WALLET_JWT_PREVIOUS_SECRETS_FILE", file.as_str()),
    ];
    let server = serve(&home, &db.url, &from_file).await;
    assert_eq!(server.whoami(&old).await, (200, Some("alice".into())));
    server.stop().await.started();

    // Removed from the list: its tokens are refused, the new ones still work.
    let new_only = [("WALLET_JWT_SECRET", SECRET_B)];
    let server = serve(&home, &db.url, &new_only).await;
    assert_eq!(server.whoami(&old).await.0, 401);
    assert_eq!(server.whoami(&new).await, (200, Some("bob".into())));
    // An unknown key id, no key id, and an old token relabelled with the new key's id.
    let t = now();
    let valid = claims("alice", "user", t, t + 600);
    let kid_b = key_id(SECRET_B.as_bytes());
    let relabelled = signed(SECRET_A, Some(&kid_b), &valid);
    for token in [
        signed(SECRET_B, Some("0123456789abcdef"), &valid),
        signed(SECRET_B, None, &valid),
        relabelled,
    ] {
        assert_eq!(server.whoami(&token).await.0, 401, "{token}");
    }
    // Control: the same claims under the right key id pass.
    assert_eq!(
        server
            .whoami(&signed(SECRET_B, Some(&kid_b), &valid))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_are_bounded_per_role() {
    let db = common::TestDb::new().await;
    let home = Scratch::new("wallet-tokens");
    let secret = [("WALLET_JWT_SECRET", SECRET_A)];
    // At mint: refused, saying the bound and the setting.
    let refused = mint(
        home.path(),
        "ops",
        &["--role", "operator", "--ttl", "2h"],
        &secret,
    )
    .unwrap_err();
    assert!(
        refused.contains("operator tokens may last at most 1h (WALLET_JWT_MAX_OPERATOR_TTL)"),
        "{refused}"
    );
    assert!(
        mint(
            home.path(),
            "ops",
            &["--role", "operator", "--ttl", "1h"],
            &secret
        )
        .is_ok()
    );

    // At verification: tokens made without `wallet token`.
    let server = serve(&home, &db.url, &secret).await;
    let kid_a = key_id(SECRET_A.as_bytes());
    let t = now();
    let hour = 3600;
    let cases = [
        (
            "operator for 1h",
            claims("ops", "operator", t, t + hour),
            200,
        ),
        (
            "operator for 2h",
            claims("ops", "operator", t, t + 2 * hour),
            401,
        ),
        // Issued an hour ago for two: valid for one more hour, but too long a lifetime.
        (
            "operator issued earlier for 2h",
            claims("ops", "operator", t - hour, t + hour),
            401,
        ),
        (
            "user for 24h",
            claims("alice", "user", t, t + 24 * hour),
            200,
        ),
        (
            "user for 25h",
            claims("alice", "user", t, t + 25 * hour),
            401,
        ),
        // Issued in the future: it would escape every revocation.
        (
            "issued in 10 min",
            claims("alice", "user", t + 600, t + 1200),
            401,
        ),
        (
            "expires before issued",
            claims("alice", "user", t, t - 1),
            401,
        ),
    ];
    for (what, claims, expected) in &cases {
        let token = signed(SECRET_A, Some(&kid_a), claims);
        assert_eq!(server.whoami(&token).await.0, *expected, "{what}");
    }
    server.stop().await.started();

    // The maxima are settings, for minting and verifying alike.
    let longer = [
        ("WALLET_JWT_SECRET", SECRET_A),
        ("WALLET_JWT_MAX_OPERATOR_TTL", "3h"),
    ];
    let server = serve(&home, &db.url, &longer).await;
    let token = signed(SECRET_A, Some(&kid_a), &cases[1].1);
    assert_eq!(server.whoami(&token).await.0, 200);
    let minted = mint(
        home.path(),
        "ops",
        &["--role", "operator", "--ttl", "2h"],
        &longer,
    )
    .unwrap();
    assert_eq!(server.whoami(&minted).await.0, 200);
}

/// Polls `server` until it refuses `token` with 401; returns how long that took.
async fn until_refused(server: &Server, token: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = server
            .gql(Some(token), "{ viewer { userId } }", json!({}))
            .await;
        if status == 401 {
            assert!(
                body["errors"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("revoked"),
                "{body}"
            );
            return started.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        assert!(started.elapsed() < limit, "still accepted after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sleeps until the wall clock has passed `cutoff` (RFC 3339).
async fn after(cutoff: &str) {
    let cutoff = chrono::DateTime::parse_from_rfc3339(cutoff).unwrap();
    let wait = (cutoff.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_are_refused_by_every_process() {
    let db = common::TestDb::new().await;
    let home = Scratch::new("wallet-tokens");
    // Both processes reload revocations at the default period.
    let secret = [("WALLET_JWT_SECRET", SECRET_A)];
    let a = serve(&home, &db.url, &secret).await;
    let b = serve(&home, &db.url, &secret).await;
    let refresh = Duration::from_secs(2);
    let token = |sub: &str, role: &str| mint(home.path(), sub, &["--role", role], &secret).unwrap();
    let alice = token("alice", "user");
    let operator = token("back-office", "operator");
    for server in [&a, &b] {
        assert_eq!(server.whoami(&alice).await, (200, Some("alice".into())));
    }
    // An open websocket of alice's on the other process.
    let mut socket = WsClient::authenticated(&b.websocket(), &alice).await;

    // Only operators revoke.
    let (_, body) = a
        .gql(Some(&alice), REVOKE, json!({"u": "bob", "r": "mine"}))
        .await;
    assert_eq!(common::error_code(&body), "FORBIDDEN");
    // A subject no token can carry, or no reason: bad input, nothing recorded (found by
    // the fuzzer: an empty subject once reached the table's check as INTERNAL).
    for (subject, reason) in [("", "x"), (&*"é".repeat(65), "x"), ("alice", "")] {
        let (_, body) = a
            .gql(Some(&operator), REVOKE, json!({"u": subject, "r": reason}))
            .await;
        assert_eq!(common::error_code(&body), "BAD_USER_INPUT", "{body}");
    }
    assert_eq!(a.whoami(&alice).await.0, 200, "nothing was revoked");

    let (status, body) = a
        .gql(
            Some(&operator),
            REVOKE,
            json!({"u": "alice", "r": "laptop stolen"}),
        )
        .await;
    let revoked_at = Instant::now();
    assert_eq!(status, 200, "{body}");
    let revocation = &body["data"]["revokeTokens"];
    assert_eq!(revocation["userId"], "alice");
    assert_eq!(revocation["revokedBy"], "back-office");
    assert_eq!(revocation["reason"], "laptop stolen");
    let cutoff = revocation["revokedBefore"].as_str().unwrap().to_owned();

    // Refused at once by the process that revoked, within the refresh period by the
    // other, and the other's open websocket is closed.
    assert_eq!(a.whoami(&alice).await.0, 401);
    let took = until_refused(&b, &alice, refresh + Duration::from_secs(2)).await;
    assert!(took <= refresh + Duration::from_secs(1), "{took:?}");
    match socket.next_within(refresh + Duration::from_secs(2)).await {
        Some(Event::Closed(code, reason)) => {
            assert_eq!(code, 4401);
            assert!(reason.contains("revoked"), "{reason}");
        }
        other => panic!("expected the websocket to close, got {other:?}"),
    }
    assert!(revoked_at.elapsed() <= refresh + Duration::from_secs(2));
    // A new websocket with the revoked token is refused too.
    let mut again = WsClient::connect(&b.websocket(), common::ws::TRANSPORT_WS).await;
    again.init(Some(&alice)).await;
    assert_eq!(again.closed().await.0, 4401);
    // Others are untouched.
    let bob = token("bob", "user");
    assert_eq!(b.whoami(&bob).await, (200, Some("bob".into())));

    // A token minted after the cutoff works everywhere.
    after(&cutoff).await;
    let fresh = token("alice", "user");
    for server in [&a, &b] {
        assert_eq!(server.whoami(&fresh).await, (200, Some("alice".into())));
    }

    // From the command line, with the database alone.
    let out = wallet(
        home.path(),
        &[
            "revoke-tokens",
            "--sub",
            "bob",
            "--reason",
            "left the company",
        ],
        &[("DATABASE_URL", &db.url), ("USER", "ops-oncall")],
    );
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("revoked the tokens of bob issued before "),
        "{}",
        out.stdout
    );
    for server in [&a, &b] {
        let took = until_refused(server, &bob, refresh + Duration::from_secs(2)).await;
        assert!(took <= refresh + Duration::from_secs(1), "{took:?}");
    }
    let recorded = db
        .client()
        .await
        .query_one(
            "SELECT revoked_by, reason FROM token_revocations WHERE subject = 'bob'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(recorded.get::<_, String>(0), "cli:ops-oncall");
    assert_eq!(recorded.get::<_, String>(1), "left the company");

    // An operator may revoke its own tokens, the one in use included.
    let (status, _) = a
        .gql(
            Some(&operator),
            REVOKE,
            json!({"u": "back-office", "r": "rotating"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(a.whoami(&operator).await.0, 401);
}

/// A process that cannot reload revocations refuses authenticated requests (503,
/// `UNAVAILABLE`) rather than serve a token it cannot check, and recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_revocations_refuse_rather_than_admit() {
    let db = common::TestDb::new().await;
    let home = Scratch::new("wallet-tokens");
    let secret = [
        ("WALLET_JWT_SECRET", SECRET_A),
        ("WALLET_TOKEN_REVOCATION_REFRESH_MS", "200"),
    ];
    let server = serve(&home, &db.url, &secret).await;
    let alice = mint(home.path(), "alice", &[], &secret).unwrap();
    assert_eq!(server.whoami(&alice).await.0, 200);
    // Injected: the table the revocations are read from disappears.
    let pg = db.client().await;
    pg.batch_execute("ALTER TABLE token_revocations RENAME TO token_revocations_gone")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = server
        .gql(Some(&alice), "{ viewer { userId } }", json!({}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(common::error_code(&body), "UNAVAILABLE");
    // Anonymous requests need no check.
    let (status, _) = server.gql(None, "{ currencies { code } }", json!({})).await;
    assert_eq!(status, 200);
    pg.batch_execute("ALTER TABLE token_revocations_gone RENAME TO token_revocations")
        .await
        .unwrap();
    common::wait_until(
        "the server checks tokens again",
        Duration::from_secs(5),
        || async { server.whoami(&alice).await.0 == 200 },
    )
    .await;
}

/// Every process holds every recent revocation: their number is bounded, and past the
/// bound `revokeTokens` refuses new subjects (the remedy then is a new secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_revocations_are_bounded() {
    let db = common::TestDb::new().await;
    let home = Scratch::new("wallet-tokens");
    let secret = [
        ("WALLET_JWT_SECRET", SECRET_A),
        ("WALLET_TOKEN_REVOCATION_REFRESH_MS", "200"),
    ];
    let server = serve(&home, &db.url, &secret).await;
    let operator = mint(home.path(), "back-office", &["--role", "operator"], &secret).unwrap();
    // Injected: as many recent revocations as allowed, less one.
    let below = wallet::revocation::MAX_RECENT_REVOCATIONS as i64 - 1;
    let pg = db.client().await;
    pg.execute(
        "INSERT INTO token_revocations (subject, revoked_before, revoked_by, reason)
         SELECT 'user-' || n, now(), 'test', 'bulk' FROM generate_series(1, $1::bigint) n",
        &[&below],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let revoke = |sub: &'static str| {
        let operator = operator.clone();
        let server = &server;
        async move {
            server
                .gql(Some(&operator), REVOKE, json!({"u": sub, "r": "test"}))
                .await
                .1
        }
    };
    // The last one allowed; then no new subject, but a revoked one again.
    assert!(revoke("alice").await["errors"].is_null());
    let refused = revoke("bob").await;
    assert_eq!(common::error_code(&refused), "BAD_USER_INPUT", "{refused}");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("rotate the JWT secret"),
        "{refused}"
    );
    assert!(revoke("alice").await["errors"].is_null());
    // Revocations older than the longest token lifetime no longer count.
    pg.batch_execute(
        "UPDATE token_revocations SET revoked_before = now() - interval '2 days'
          WHERE revoked_by = 'test'",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(revoke("bob").await["errors"].is_null());
}
