//! Model-based random test: several concurrent clients send random deposits,
//! withdrawals, crypto withdrawals, holds (authorise, partial and final captures, voids),
//! replays and conflicting keys to three server processes, while chain worker passes and
//! blocks come in between; one fiat wallet has a credit limit. Every acknowledged answer
//! is a promise; an in-memory model keeps them. At the end every balance, held balance,
//! locked balance and journal chain matches the model, no available balance is below
//! zero, every acknowledged key has exactly one row, and every refused one none.
//!
//! Seeded and reproducible: `WALLET_MODEL_SEED=<n>` replays a run (the seed is printed,
//! and shown with the output of a failing run); `WALLET_MODEL_OPS=<n>` sets the number
//! of operations per client (default 60).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{Fleet, Topology, error_code};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const CLIENTS: u64 = 4;

/// What the model holds for one acknowledged movement.
#[derive(Clone, Debug)]
struct Promise {
    wallet: String,
    kind: &'static str,
    amount: Decimal,
    id: String,
}

#[derive(Default)]
struct Model {
    /// Acknowledged movements by key.
    promised: HashMap<String, Promise>,
    /// Keys whose first request was refused (nothing may exist under them).
    refused: Vec<String>,
    /// Acknowledged holds by id.
    holds: HashMap<String, HeldMoney>,
}

/// What the model holds for one acknowledged hold.
#[derive(Clone, Debug)]
struct HeldMoney {
    /// The client that made it: only it captures or voids it, so it knows what remains.
    client: u64,
    wallet: String,
    user: String,
    amount: Decimal,
    captured: Decimal,
    active: bool,
}

/// The credit limit of the third fiat wallet (u2's): its balance may go down to minus this.
const CREDIT_LIMIT: &str = "50.00";

const AUTHORIZE: &str = "mutation($w: ID!, $a: Decimal!, $k: String!) {
    authorizeHold(input: {walletId: $w, amount: $a, idempotencyKey: $k}) { id amount status } }";
const CAPTURE: &str = "mutation($h: ID!, $a: Decimal, $k: String!, $f: Boolean) {
    captureHold(input: {holdId: $h, amount: $a, idempotencyKey: $k, final: $f}) {
        id captured remaining status } }";
const VOID: &str = "mutation($h: ID!, $k: String!) {
    voidHold(input: {holdId: $h, idempotencyKey: $k}) { id status remaining } }";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A random amount with two decimals (fiat) or eight (BTC), small enough that most
/// withdrawals go through and some do not.
fn amount(rng: &mut StdRng, crypto: bool) -> Decimal {
    if crypto {
        Decimal::new(rng.random_range(1..=5_000_000), 8)
    } else {
        Decimal::new(rng.random_range(1..=2_500), 2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_concurrent_movements_keep_every_promise() {
    let seed = env_u64("WALLET_MODEL_SEED").unwrap_or_else(rand::random);
    let ops = env_u64("WALLET_MODEL_OPS").unwrap_or(60);
    eprintln!(
        "model seed {seed} (WALLET_MODEL_SEED={seed} reproduces this run), {ops} ops per client"
    );

    let fleet = Arc::new(Topology::ThreeProcesses.start().await);
    let t = &fleet.t;
    let mut fiat = Vec::new();
    for user in ["u0", "u1", "u2"] {
        let w = t.create_wallet(user, "USD").await;
        t.deposit(&w, "100.00", &format!("seed-{user}")).await;
        fiat.push((user.to_owned(), w));
    }
    t.ok(
        &t.operator(),
        "mutation($w: ID!, $l: Decimal!) { setCreditLimit(input: {walletId: $w, limit: $l, \
         idempotencyKey: \"limit\", reason: \"model\"}) { creditLimit } }",
        json!({"w": fiat[2].1, "l": CREDIT_LIMIT}),
    )
    .await;
    let limit_of = |wallet: &str| -> Decimal {
        if wallet == fiat[2].1 {
            CREDIT_LIMIT.parse().unwrap()
        } else {
            Decimal::ZERO
        }
    };
    let limits: HashMap<String, Decimal> =
        fiat.iter().map(|(_, w)| (w.clone(), limit_of(w))).collect();
    let mut crypto = Vec::new();
    for user in ["u0", "u1"] {
        let (w, _) = t.funded_btc(user, "0.50000000").await;
        crypto.push((user.to_owned(), w));
    }
    let fee: Decimal = "0.00001000".parse().unwrap();
    let model = Arc::new(Mutex::new(Model::default()));

    let clients = (0..CLIENTS).map(|client| {
        let (fleet, model) = (fleet.clone(), model.clone());
        let (fiat, crypto, limits) = (fiat.clone(), crypto.clone(), limits.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (client + 1).wrapping_mul(0x9e37_79b9));
            let mut mine: Vec<(String, Value)> = Vec::new(); // this client's acknowledged keys
            for n in 0..ops {
                let node = rng.random_range(0..3);
                match rng.random_range(0..100) {
                    // A new fiat movement.
                    0..=49 => {
                        let (user, wallet) = &fiat[rng.random_range(0..fiat.len())];
                        let key = format!("c{client}-{n}");
                        let amount = amount(&mut rng, false).to_string();
                        let deposit = rng.random_bool(0.4);
                        let (body, field, kind) = if deposit {
                            (fleet.deposit(node, wallet, &amount, &key).await, "deposit", "DEPOSIT")
                        } else {
                            let token = fleet.t.user(user);
                            (fleet.withdraw(node, &token, wallet, &amount, &key).await, "withdraw", "WITHDRAW")
                        };
                        record(&model, &mut mine, &key, wallet, kind, &amount, &body, field, &json!({
                            "node": node, "w": wallet, "a": amount, "k": key, "deposit": deposit, "user": user,
                        }), limits[wallet]);
                    }
                    // Holds: a new one, or a capture (partial, final or of the rest) or a
                    // void of one of this client's own.
                    50..=59 => {
                        let key = format!("c{client}-{n}");
                        let open: Vec<String> = {
                            let m = model.lock().unwrap();
                            let mut open: Vec<String> = m.holds.iter()
                                .filter(|(_, h)| h.active && h.client == client)
                                .map(|(id, _)| id.clone()).collect();
                            open.sort();
                            open
                        };
                        if open.is_empty() || rng.random_bool(0.4) {
                            let (user, wallet) = &fiat[rng.random_range(0..fiat.len())];
                            let amount = amount(&mut rng, false);
                            let body = common::gql_to(fleet.router(node), Some(&fleet.t.user(user)), AUTHORIZE,
                                json!({"w": wallet, "a": amount.to_string(), "k": key})).await;
                            let mut m = model.lock().unwrap();
                            if body.get("errors").is_some() {
                                assert_eq!(error_code(&body), "INSUFFICIENT_FUNDS", "seed {seed}: {key}: {body}");
                                m.refused.push(key);
                                continue;
                            }
                            let hold = &body["data"]["authorizeHold"];
                            assert_eq!(hold["status"], "ACTIVE", "{body}");
                            m.holds.insert(hold["id"].as_str().unwrap().to_owned(), HeldMoney {
                                client, wallet: wallet.clone(), user: user.clone(), amount, captured: Decimal::ZERO,
                                active: true,
                            });
                            continue;
                        }
                        let id = open[rng.random_range(0..open.len())].clone();
                        let held = model.lock().unwrap().holds[&id].clone();
                        let token = fleet.t.user(&held.user);
                        let remaining = held.amount - held.captured;
                        match rng.random_range(0..4) {
                            0 => {
                                let body = common::gql_to(fleet.router(node), Some(&token), VOID, json!({"h": id, "k": key})).await;
                                assert_eq!(body["data"]["voidHold"]["status"], "VOIDED", "seed {seed}: {body}");
                                model.lock().unwrap().holds.get_mut(&id).unwrap().active = false;
                            }
                            choice => {
                                // A part of it (sometimes final), or all that remains.
                                let part = (remaining / Decimal::from(2)).round_dp(2);
                                let (asked, fin) = match choice {
                                    1 if part > Decimal::ZERO => (Some(part), false),
                                    2 if part > Decimal::ZERO => (Some(part), true),
                                    _ => (None, false),
                                };
                                let body = common::gql_to(fleet.router(node), Some(&token), CAPTURE,
                                    json!({"h": id, "a": asked.map(|a| a.to_string()), "k": key, "f": fin})).await;
                                let hold = &body["data"]["captureHold"];
                                let moved = asked.unwrap_or(remaining);
                                let mut m = model.lock().unwrap();
                                let h = m.holds.get_mut(&id).unwrap();
                                h.captured += moved;
                                h.active = !fin && h.captured < h.amount;
                                assert_eq!(hold["captured"].as_str().map(|c| c.parse::<Decimal>().unwrap()),
                                           Some(h.captured), "seed {seed}: {body}");
                                assert_eq!(hold["status"], if h.active { "ACTIVE" } else { "CAPTURED" }, "seed {seed}: {body}");
                            }
                        }
                    }
                    // A new crypto withdrawal.
                    60..=69 => {
                        let (user, wallet) = &crypto[rng.random_range(0..crypto.len())];
                        let key = format!("c{client}-{n}");
                        let amount = amount(&mut rng, true).to_string();
                        let body = common::gql_to(
                            fleet.router(node),
                            Some(&fleet.t.user(user)),
                            common::CRYPTO_WITHDRAW,
                            json!({"w": wallet, "to": common::OUTSIDE_BTC, "a": amount, "k": key}),
                        )
                        .await;
                        record(&model, &mut mine, &key, wallet, "CRYPTO", &amount, &body, "cryptoWithdraw", &json!({
                            "node": node, "w": wallet, "a": amount, "k": key, "user": user, "crypto": true,
                        }), Decimal::ZERO);
                    }
                    // A replay of an acknowledged request: the original, no second effect.
                    70..=82 if !mine.is_empty() => {
                        let (key, request) = mine[rng.random_range(0..mine.len())].clone();
                        let body = resend(&fleet, node, &request, None).await;
                        let promised = model.lock().unwrap().promised[&key].clone();
                        let id = body["data"].as_object().and_then(|d| d.values().next()).map(|v| v["id"].clone());
                        assert_eq!(id, Some(json!(promised.id)), "seed {seed}: replay of {key}: {body}");
                    }
                    // The same key with another amount: a conflict, no effect.
                    83..=89 if !mine.is_empty() => {
                        let (key, request) = mine[rng.random_range(0..mine.len())].clone();
                        // Never the original amount: that would be a replay, not a conflict.
                        let other = (model.lock().unwrap().promised[&key].amount + Decimal::new(1, 2)).to_string();
                        let body = resend(&fleet, node, &request, Some(&other)).await;
                        assert_eq!(error_code(&body), "IDEMPOTENCY_CONFLICT", "seed {seed}: {key}: {body}");
                    }
                    // The chain moves on: a worker pass (signing debits crypto withdrawals),
                    // sometimes a block.
                    _ => {
                        if rng.random_bool(0.3) {
                            common::gql_to(fleet.router(node), Some(&fleet.t.operator()), common::MINE,
                                           json!({"n": "bitcoin", "c": 1})).await;
                        }
                        fleet.nodes[node % fleet.nodes.len()].0.chain_worker().unwrap().pass().await
                            .unwrap_or_else(|e| panic!("seed {seed}: a worker pass failed: {e:?}"));
                    }
                }
            }
        })
    });
    for client in futures_util::future::join_all(clients).await {
        client.unwrap();
    }
    // Whether the random run overdrew a wallet depends on the seed; every run must show
    // a refusal leaving nothing, so each fiat wallet is asked for more than it can have.
    for (i, (user, wallet)) in fiat.iter().enumerate() {
        let key = format!("overdraw-{user}");
        let body = fleet
            .withdraw(i % 3, &t.user(user), wallet, "1000000.00", &key)
            .await;
        assert_eq!(
            error_code(&body),
            "INSUFFICIENT_FUNDS",
            "seed {seed}: {body}"
        );
        record(
            &model,
            &mut Vec::new(),
            &key,
            wallet,
            "WITHDRAW",
            "1000000.00",
            &body,
            "withdraw",
            &Value::Null,
            limits[wallet],
        );
    }

    // Settle every crypto withdrawal: signed, mined, completed.
    let worker = t.app.chain_worker().unwrap();
    worker.pass().await.unwrap();
    t.ok(&t.operator(), common::MINE, json!({"n": "bitcoin", "c": 6}))
        .await;
    worker.pass().await.unwrap();

    let model = std::mem::take(&mut *model.lock().unwrap());
    let pg = t.db.client().await;
    for (seed_amount, wallets) in [("100.00", &fiat), ("0.50000000", &crypto)] {
        for (_, wallet) in wallets {
            let mut expected: Decimal = seed_amount.parse().unwrap();
            for p in model.promised.values().filter(|p| &p.wallet == wallet) {
                expected += match p.kind {
                    "DEPOSIT" => p.amount,
                    "WITHDRAW" => -p.amount,
                    _ => -(p.amount + fee),
                };
            }
            let mut held = Decimal::ZERO;
            for h in model.holds.values().filter(|h| &h.wallet == wallet) {
                expected -= h.captured;
                if h.active {
                    held += h.amount - h.captured;
                }
            }
            let w = t
                .ok(
                    &t.operator(),
                    "query($w: ID!) { wallet(id: $w) { balance lockedBalance heldBalance availableBalance \
                     creditLimit } }",
                    json!({"w": wallet}),
                )
                .await["wallet"]
                .clone();
            let figure = |f: &str| w[f].as_str().unwrap().parse::<Decimal>().unwrap();
            let balance = figure("balance");
            assert_eq!(balance, expected, "seed {seed}: balance of {wallet}");
            assert_eq!(
                figure("heldBalance"),
                held,
                "seed {seed}: held balance of {wallet}"
            );
            assert!(
                figure("availableBalance") >= Decimal::ZERO,
                "seed {seed}: {w}"
            );
            assert!(balance >= -figure("creditLimit"), "seed {seed}: {w}");
            assert_eq!(
                w["lockedBalance"]
                    .as_str()
                    .unwrap()
                    .parse::<Decimal>()
                    .unwrap(),
                Decimal::ZERO,
                "seed {seed}: nothing stays locked once every withdrawal is sent"
            );
            t.assert_chain(wallet).await;
        }
    }
    t.assert_balanced().await;
    for (key, p) in &model.promised {
        let rows: i64 = pg
            .query_one(
                "SELECT count(*) FROM transactions WHERE tx_hash = $1 AND hold_id IS NULL",
                &[key],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 1, "seed {seed}: acknowledged {key} is one movement");
        if p.kind == "CRYPTO" {
            let status = t
                .ok(
                    &t.operator(),
                    "query($id: ID!) { transaction(id: $id) { status } }",
                    json!({"id": p.id}),
                )
                .await["transaction"]["status"]
                .clone();
            assert_eq!(status, "COMPLETED", "seed {seed}: {key}");
        }
    }
    for key in &model.refused {
        let rows: i64 = pg
            .query_one(
                "SELECT count(*) FROM transactions WHERE tx_hash = $1",
                &[key],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "seed {seed}: refused {key} left no row");
    }
    // Every capture is one journal row settling its hold.
    for (id, h) in &model.holds {
        let settled: Decimal = pg
            .query_one(
                "SELECT COALESCE(sum(amount), 0)::text FROM transactions WHERE settles_hold_id = $1",
                &[&common::db_id(id)],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
            .parse()
            .unwrap();
        assert_eq!(settled, h.captured, "seed {seed}: captures of hold {id}");
    }
    assert!(
        model.holds.values().any(|h| h.captured > Decimal::ZERO),
        "seed {seed}: the run captured holds ({} made)",
        model.holds.len()
    );
    assert!(
        model.promised.len() > 20,
        "seed {seed}: the run acknowledged movements ({}; {} refused)",
        model.promised.len(),
        model.refused.len()
    );
}

/// Records an answer in the model: an acknowledged movement must say what was asked;
/// a refusal must be for lack of funds (the only refusal these requests can earn).
#[allow(clippy::too_many_arguments)]
fn record(
    model: &Mutex<Model>,
    mine: &mut Vec<(String, Value)>,
    key: &str,
    wallet: &str,
    kind: &'static str,
    amount: &str,
    body: &Value,
    field: &str,
    request: &Value,
    credit_limit: Decimal,
) {
    let mut model = model.lock().unwrap();
    if body.get("errors").is_some() {
        assert_eq!(error_code(body), "INSUFFICIENT_FUNDS", "{key}: {body}");
        model.refused.push(key.to_owned());
        return;
    }
    let row = &body["data"][field];
    let amount: Decimal = amount.parse().unwrap();
    assert_eq!(
        row["amount"].as_str().unwrap().parse::<Decimal>().unwrap(),
        amount,
        "{body}"
    );
    assert_eq!(row["idempotencyKey"], key, "{body}");
    if kind != "CRYPTO" {
        let before: Decimal = row["balanceBefore"].as_str().unwrap().parse().unwrap();
        let after: Decimal = row["balanceAfter"].as_str().unwrap().parse().unwrap();
        let moved = if kind == "DEPOSIT" { amount } else { -amount };
        assert_eq!(after - before, moved, "{body}");
        assert!(after >= -credit_limit, "{body}");
    } else {
        assert_eq!(row["status"], "PENDING", "{body}");
    }
    model.promised.insert(
        key.to_owned(),
        Promise {
            wallet: wallet.to_owned(),
            kind,
            amount,
            id: row["id"].as_str().unwrap().to_owned(),
        },
    );
    mine.push((key.to_owned(), request.clone()));
}

/// Sends an acknowledged request again, as it was or with another amount.
async fn resend(fleet: &Fleet, node: usize, request: &Value, other_amount: Option<&str>) -> Value {
    let s = |k: &str| request[k].as_str().unwrap().to_owned();
    let amount = other_amount.map(str::to_owned).unwrap_or_else(|| s("a"));
    if request["crypto"] == true {
        return common::gql_to(
            fleet.router(node),
            Some(&fleet.t.user(&s("user"))),
            common::CRYPTO_WITHDRAW,
            json!({"w": s("w"), "to": common::OUTSIDE_BTC, "a": amount, "k": s("k")}),
        )
        .await;
    }
    if request["deposit"] == true {
        fleet.deposit(node, &s("w"), &amount, &s("k")).await
    } else {
        fleet
            .withdraw(node, &fleet.t.user(&s("user")), &s("w"), &amount, &s("k"))
            .await
    }
}
