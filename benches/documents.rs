//! What the document limits cost: the time `graphql::document::prepare` (pre-scan, parse,
//! measure) takes for hostile and ordinary documents, each the largest the limits let
//! through or the smallest they refuse.
//!
//! cargo bench --bench documents -- [--runs 200]

use std::time::{Duration, Instant};

use wallet::graphql::document::{DocumentLimits, prepare};

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let limits = DocumentLimits::default();
    let mut explosion = String::from("query { ...F0 }");
    for i in 0..29 {
        let n = i + 1;
        explosion.push_str(&format!(
            " fragment F{i} on Query {{ ...F{n} ...F{n} ...F{n} }}"
        ));
    }
    explosion.push_str(" fragment F29 on Query { __typename }");
    // 256 fragments, each spreading the previous four times: legal text, refused once sized.
    let mut chain = String::from("query { ...G0 }");
    for i in 0..255 {
        chain.push_str(&format!(
            " fragment G{i} on Query {{ a ...G{n} ...G{n} }}",
            n = i + 1
        ));
    }
    chain.push_str(" fragment G255 on Query { a }");
    let wide = format!("{{ {} }}", "a ".repeat(limits.max_tokens - 2));
    let documents = [
        (
            "introspection (GraphiQL's)",
            include_str!("../tests/introspection.graphql").to_owned(),
        ),
        ("fragment explosion 3^30 (refused)", explosion),
        ("fragment chain, 256 fragments (refused)", chain),
        (
            "list value 2,000 deep (refused)",
            format!("{{ a(x: {}1{}) }}", "[".repeat(2_000), "]".repeat(2_000)),
        ),
        ("the most tokens allowed, as fields", wide),
        ("nested selection, 256 KiB (refused)", "{ a ".repeat(65_536)),
        (
            "one string literal, 64 KiB - 16 B",
            format!("{{ a(x: \"{}\") }}", "x".repeat(64 * 1024 - 16)),
        ),
    ];
    println!("{:<50} {:>12} {:>12}  outcome", "document", "median", "max");
    for (name, text) in documents {
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        let mut outcome = String::new();
        for _ in 0..runs {
            let mut request = async_graphql::Request::new(text.clone());
            let started = Instant::now();
            let result = prepare(&mut request, &limits);
            times.push(started.elapsed());
            outcome = match result {
                Ok(m) => format!("ok: {} fields", m.fields),
                Err(e) => format!(
                    "refused: {}",
                    e.message.chars().take(60).collect::<String>()
                ),
            };
        }
        times.sort();
        println!(
            "{name:<50} {:>10.1}µs {:>10.1}µs  {outcome}",
            times[runs / 2].as_secs_f64() * 1e6,
            times[runs - 1].as_secs_f64() * 1e6
        );
    }
}
