//! Keyset pagination: every row exactly once, in order, forward and backward, with filters;
//! and DataLoader batching (a page of 100 costs as many queries as a page of 10).

mod common;

use common::{TestApp, error_code};
use serde_json::{Value, json};

const PAGE: &str = "query($w: ID!, $first: Int, $after: String, $last: Int, $before: String, $filter: TransactionFilter) {
  transactions(walletId: $w, first: $first, after: $after, last: $last, before: $before, filter: $filter) {
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { idempotencyKey type createdAt } } } }";

struct Row {
    key: String,
    kind: String,
    created_at: String,
}

/// Walks the whole list forward (first/after) or backward (last/before); returns keys in
/// list order.
async fn walk(t: &TestApp, w: &str, size: i64, backward: bool, filter: &Value) -> Vec<String> {
    let op = t.operator();
    let mut cursor: Option<String> = None;
    let mut pages: Vec<Vec<String>> = Vec::new();
    loop {
        let vars = if backward {
            json!({"w": w, "last": size, "before": cursor, "filter": filter})
        } else {
            json!({"w": w, "first": size, "after": cursor, "filter": filter})
        };
        let data = t.ok(&op, PAGE, vars).await;
        let conn = &data["transactions"];
        let edges = conn["edges"].as_array().unwrap();
        assert!(edges.len() as i64 <= size);
        let keys: Vec<String> = edges
            .iter()
            .map(|e| e["node"]["idempotencyKey"].as_str().unwrap().to_owned())
            .collect();
        let info = &conn["pageInfo"];
        if let (Some(first), Some(last)) = (edges.first(), edges.last()) {
            assert_eq!(info["startCursor"], first["cursor"]);
            assert_eq!(info["endCursor"], last["cursor"]);
        }
        // A page that is followed (in walking direction) must be full.
        let more = if backward {
            info["hasPreviousPage"].as_bool().unwrap()
        } else {
            info["hasNextPage"].as_bool().unwrap()
        };
        if more {
            assert_eq!(edges.len() as i64, size, "only the last page may be short");
        }
        // The other direction: there is something behind us once we have moved.
        let behind = if backward {
            info["hasNextPage"].as_bool().unwrap()
        } else {
            info["hasPreviousPage"].as_bool().unwrap()
        };
        assert_eq!(behind, cursor.is_some());
        pages.push(keys);
        if !more {
            break;
        }
        cursor = if backward {
            info["startCursor"].as_str().map(str::to_owned)
        } else {
            info["endCursor"].as_str().map(str::to_owned)
        };
    }
    if backward {
        pages.reverse();
    }
    pages.concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn walks_every_row_once_in_order_with_filters() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    let alice = t.user("alice");
    let mut rows = Vec::new();
    for i in 0..300 {
        let key = format!("k{i:03}");
        let body = if i % 4 == 3 {
            t.withdraw(&alice, &w, "1.00", &key).await["data"]["withdraw"].clone()
        } else {
            t.deposit(&w, "2.00", &key).await["data"]["deposit"].clone()
        };
        assert!(body["id"].is_string());
        rows.push(key);
    }
    // Another wallet's rows must never appear.
    let other = t.create_wallet("bob", "USD").await;
    t.deposit(&other, "5.00", "bob-1").await;

    // Creation order is the list order; read back kinds and times once.
    let all = t
        .ok(&t.operator(), PAGE, json!({"w": w, "first": 100}))
        .await;
    let first_page: Vec<Value> = all["transactions"]["edges"].as_array().unwrap().clone();
    assert_eq!(first_page.len(), 100);
    let mut listed: Vec<Row> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let data = t
            .ok(
                &t.operator(),
                PAGE,
                json!({"w": w, "first": 100, "after": after}),
            )
            .await;
        let c = &data["transactions"];
        for e in c["edges"].as_array().unwrap() {
            listed.push(Row {
                key: e["node"]["idempotencyKey"].as_str().unwrap().into(),
                kind: e["node"]["type"].as_str().unwrap().into(),
                created_at: e["node"]["createdAt"].as_str().unwrap().into(),
            });
        }
        if !c["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = c["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(
        listed.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        rows
    );

    let none = json!(null);
    for size in [1, 7, 50, 100] {
        assert_eq!(
            walk(&t, &w, size, false, &none).await,
            rows,
            "forward by {size}"
        );
        assert_eq!(
            walk(&t, &w, size, true, &none).await,
            rows,
            "backward by {size}"
        );
    }

    // Type filter.
    let withdrawals: Vec<String> = listed
        .iter()
        .filter(|r| r.kind == "WITHDRAW")
        .map(|r| r.key.clone())
        .collect();
    assert_eq!(withdrawals.len(), 75);
    let f = json!({"types": ["WITHDRAW"]});
    for size in [10, 33] {
        assert_eq!(walk(&t, &w, size, false, &f).await, withdrawals);
        assert_eq!(walk(&t, &w, size, true, &f).await, withdrawals);
    }
    // Status filter: every fiat row is completed; none is pending.
    let f = json!({"statuses": ["COMPLETED"]});
    assert_eq!(walk(&t, &w, 64, false, &f).await, rows);
    let f = json!({"statuses": ["PENDING", "FAILED"]});
    assert!(walk(&t, &w, 10, false, &f).await.is_empty());
    // Several types or statuses are one index walk each, merged into one ordered list.
    for f in [
        json!({"types": ["WITHDRAW", "DEPOSIT"]}),
        json!({"statuses": ["FAILED", "COMPLETED", "PENDING"]}),
        json!({"types": ["REFUND", "DEPOSIT", "WITHDRAW"], "statuses": ["COMPLETED"]}),
    ] {
        for size in [17, 100] {
            assert_eq!(walk(&t, &w, size, false, &f).await, rows, "{f}");
            assert_eq!(walk(&t, &w, size, true, &f).await, rows, "{f}");
        }
    }
    // The back office's listing of every wallet, filtered the same way.
    const ALL: &str = "query($after: String, $filter: TransactionFilter) {
      transactions(first: 30, after: $after, filter: $filter) {
        pageInfo { hasNextPage endCursor } edges { node { idempotencyKey } } } }";
    let mut everyone: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let filter = json!({"types": ["REFUND", "WITHDRAW"]});
        let data = t
            .ok(
                &t.operator(),
                ALL,
                json!({"after": after, "filter": filter}),
            )
            .await;
        let c = &data["transactions"];
        for e in c["edges"].as_array().unwrap() {
            everyone.push(e["node"]["idempotencyKey"].as_str().unwrap().to_owned());
        }
        if !c["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = c["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(everyone, withdrawals);
    // Time range (inclusive) combined with a type filter.
    let (from, to) = (&listed[100].created_at, &listed[199].created_at);
    let expected: Vec<String> = listed
        .iter()
        .filter(|r| r.created_at.as_str() >= from.as_str() && r.created_at.as_str() <= to.as_str())
        .filter(|r| r.kind == "DEPOSIT")
        .map(|r| r.key.clone())
        .collect();
    assert!(expected.len() >= 70, "about 75 deposits in the window");
    let f = json!({"createdFrom": from, "createdTo": to, "types": ["DEPOSIT"]});
    assert_eq!(walk(&t, &w, 20, false, &f).await, expected);
    assert_eq!(walk(&t, &w, 9, true, &f).await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_arguments_are_validated() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    for i in 0..3 {
        t.deposit(&w, "1.00", &format!("k{i}")).await;
    }
    let op = t.operator();
    let bad = [
        json!({"w": w, "first": 101}),
        json!({"w": w, "last": 101}),
        json!({"w": w, "first": -1}),
        json!({"w": w, "first": 1, "last": 1}),
        json!({"w": w, "first": 1, "after": "garbage"}),
    ];
    for vars in bad {
        let body = t.gql(Some(&op), PAGE, vars.clone()).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{vars}: {body}");
    }
    // A cursor issued for one filter is refused for another.
    let page = t
        .ok(
            &op,
            PAGE,
            json!({"w": w, "first": 1, "filter": {"types": ["DEPOSIT"]}}),
        )
        .await;
    let cursor = page["transactions"]["pageInfo"]["endCursor"].clone();
    let body = t
        .gql(
            Some(&op),
            PAGE,
            json!({"w": w, "first": 1, "after": cursor, "filter": {"types": ["WITHDRAW"]}}),
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    // …but the same filter written in another order is the same list.
    let body = t
        .ok(&op, PAGE, json!({"w": w, "first": 5, "after": cursor, "filter": {"types": ["DEPOSIT", "DEPOSIT"]}}))
        .await;
    assert_eq!(body["transactions"]["edges"].as_array().unwrap().len(), 2);
    // Defaults to 20 when neither first nor last is given; first: 0 is an empty page.
    let body = t.ok(&op, PAGE, json!({"w": w})).await;
    assert_eq!(body["transactions"]["edges"].as_array().unwrap().len(), 3);
    let body = t.ok(&op, PAGE, json!({"w": w, "first": 0})).await;
    assert_eq!(body["transactions"]["edges"], json!([]));
    assert_eq!(body["transactions"]["pageInfo"]["hasNextPage"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn wallet_of_each_transaction_is_batched() {
    let t = TestApp::new().await;
    // 100 transactions on 100 different wallets: unbatched, `wallet` would cost 100 queries.
    for i in 0..100 {
        let w = t.create_wallet(&format!("user{i}"), "USD").await;
        t.deposit(&w, "1.00", &format!("d{i}")).await;
    }
    let op = t.operator();
    let query = "query($n: Int!) { transactions(first: $n) { edges { node {
        amount wallet { id userId balance } } } } }";
    let mut costs = Vec::new();
    for n in [10, 100] {
        let before = t.app.state.queries.get();
        let data = t.ok(&op, query, json!({"n": n})).await;
        let cost = t.app.state.queries.get() - before;
        let edges = data["transactions"]["edges"].as_array().unwrap();
        assert_eq!(edges.len(), n);
        let users: std::collections::HashSet<_> = edges
            .iter()
            .map(|e| e["node"]["wallet"]["userId"].clone())
            .collect();
        assert_eq!(users.len(), n, "each row has its own wallet");
        costs.push(cost);
    }
    // The page query and one wallet query, each with the pool's connection check (none
    // for a connection the pool has just opened).
    assert!(
        costs.iter().all(|&c| (2..=4).contains(&c)),
        "statements for pages of 10 and 100: {costs:?}"
    );
}

/// Rows sharing one timestamp (a group-commit batch stamps every row of a wallet with the
/// same time) are walked by their ids: every row exactly once, in order, with pages of 1
/// and 7, forward and backward; and `createdFrom`/`createdTo` equal to that timestamp
/// include them.
#[tokio::test(flavor = "multi_thread")]
async fn rows_with_equal_timestamps_are_walked_by_cursor() {
    let t = TestApp::new().await;
    let w = t.create_wallet("alice", "USD").await;
    t.deposit(&w, "1.00", "before").await;
    // Twenty deposits committed as one batch would be: one timestamp, ids in order.
    let pg = t.db.client().await;
    pg.execute(
        "WITH w AS (SELECT id, balance FROM wallets WHERE user_id = 'alice')
         INSERT INTO transactions (wallet_id, type, amount, balance_before, balance_after,
                                   status, tx_hash, created_at, updated_at)
         SELECT w.id, 'DEPOSIT', 1.00, w.balance + g - 1, w.balance + g, 'COMPLETED',
                'same-' || lpad(g::text, 2, '0'),
                '2030-01-01 00:00:00.123456+00', '2030-01-01 00:00:00.123456+00'
           FROM w, generate_series(1, 20) AS g ORDER BY g",
        &[],
    )
    .await
    .unwrap();
    pg.execute(
        "UPDATE wallets SET balance = balance + 20, updated_at = '2030-01-01 00:00:00.123456+00'
          WHERE user_id = 'alice'",
        &[],
    )
    .await
    .unwrap();
    let same: Vec<String> = (1..=20).map(|g| format!("same-{g:02}")).collect();
    let mut all = vec!["before".to_owned()];
    all.extend(same.iter().cloned());
    let stamps: std::collections::BTreeSet<String> = {
        let data = t
            .ok(
                &t.operator(),
                PAGE,
                json!({"w": w, "first": 100, "filter": {"createdFrom": "2029-01-01T00:00:00Z"}}),
            )
            .await;
        data["transactions"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["createdAt"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(stamps.len(), 1, "one shared timestamp: {stamps:?}");

    for size in [1, 7] {
        for backward in [false, true] {
            assert_eq!(
                walk(&t, &w, size, backward, &json!(null)).await,
                all,
                "page size {size}, backward {backward}"
            );
        }
    }
    // Both bounds are inclusive, to the microsecond.
    let exactly = json!({"createdFrom": "2030-01-01T00:00:00.123456Z", "createdTo": "2030-01-01T00:00:00.123456Z"});
    for size in [1, 7] {
        assert_eq!(walk(&t, &w, size, false, &exactly).await, same);
        assert_eq!(walk(&t, &w, size, true, &exactly).await, same);
    }
    let up_to = json!({"createdTo": "2030-01-01T00:00:00.123456Z"});
    assert_eq!(walk(&t, &w, 7, false, &up_to).await, all);
    let just_before = json!({"createdTo": "2030-01-01T00:00:00.123455Z"});
    assert_eq!(
        walk(&t, &w, 7, false, &just_before).await,
        vec!["before".to_owned()]
    );
    assert_eq!(t.assert_chain(&w).await, 21);
}

/// A user's own listing (no `walletId`) merges the user's wallets in the journal's order,
/// page by page in both directions, and never shows anyone else's rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_users_listing_merges_their_wallets_in_order() {
    let t = TestApp::new().await;
    let mine: Vec<String> = {
        let mut v = Vec::new();
        for c in ["USD", "EUR", "GBP"] {
            v.push(t.create_wallet("alice", c).await);
        }
        v
    };
    let theirs = t.create_wallet("bob", "USD").await;
    for n in 0..13 {
        t.deposit(&mine[n % 3], "1.00", &format!("a-{n}")).await;
        t.deposit(&theirs, "1.00", &format!("b-{n}")).await;
    }
    let pg = t.db.client().await;
    let expected: Vec<String> = pg
        .query(
            "SELECT t.tx_hash FROM transactions t JOIN wallets w ON w.id = t.wallet_id
              WHERE w.user_id = 'alice' ORDER BY t.created_at, t.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(expected.len(), 13);
    const MINE: &str = "query($first: Int, $after: String, $last: Int, $before: String,
                             $filter: TransactionFilter) {
      transactions(first: $first, after: $after, last: $last, before: $before, filter: $filter) {
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
        edges { node { idempotencyKey } } } }";
    let alice = t.user("alice");
    // Unfiltered, and filtered by several types (one walk per wallet and type).
    let filters = [json!(null), json!({"types": ["WITHDRAW", "DEPOSIT"]})];
    for (backward, filter) in [false, true]
        .into_iter()
        .flat_map(|b| filters.iter().map(move |f| (b, f)))
    {
        for size in [1, 2, 5, 13, 20] {
            let mut cursor: Option<String> = None;
            let mut seen: Vec<Vec<String>> = Vec::new();
            loop {
                let vars = match backward {
                    true => json!({"last": size, "before": cursor, "filter": filter}),
                    false => json!({"first": size, "after": cursor, "filter": filter}),
                };
                let conn = t.ok(&alice, MINE, vars).await["transactions"].clone();
                let keys: Vec<String> = conn["edges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["node"]["idempotencyKey"].as_str().unwrap().to_owned())
                    .collect();
                seen.push(keys);
                let info = &conn["pageInfo"];
                let more = if backward {
                    info["hasPreviousPage"].as_bool().unwrap()
                } else {
                    info["hasNextPage"].as_bool().unwrap()
                };
                if !more {
                    break;
                }
                cursor = Some(
                    info[if backward { "startCursor" } else { "endCursor" }]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            if backward {
                seen.reverse();
            }
            let walked: Vec<String> = seen.into_iter().flatten().collect();
            assert_eq!(
                walked, expected,
                "size {size}, backward {backward}, {filter}"
            );
        }
    }
}
