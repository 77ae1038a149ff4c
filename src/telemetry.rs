//! Logging setup: human-readable by default (coloured only on a terminal), JSON with
//! `WALLET_LOG_FORMAT=json`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("WALLET_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    // These print a node's URL — which may hold an API key — in their debug output:
    // never below `warn`, whatever the filter asks.
    let filter = ["alloy_transport_http", "reqwest", "hyper_util"]
        .into_iter()
        .filter_map(|target| format!("{target}=warn").parse().ok())
        .fold(filter, |filter, directive| filter.add_directive(directive));
    let json = std::env::var("WALLET_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
