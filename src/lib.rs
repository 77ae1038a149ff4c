//! Custodial wallet service: an exact, append-only ledger behind a GraphQL API.
//!
//! Layering (outermost first): [`http`] (axum transport, GraphQL over HTTP) →
//! [`graphql`] (schema, translation of domain types and errors) → [`ledger`] (money rules,
//! free of GraphQL/HTTP types; functions take a connection and return typed errors) →
//! [`db`] (pool, migrations, transactions with retry).
//!
//! The design is described in `docs/architecture.md`, the API contract in `docs/api.md`,
//! the money rules the ledger guarantees in `docs/money.md`, and configuration, metrics
//! and runbooks in `docs/operations.md`.

pub mod app;
pub mod auth;
pub mod chain;
pub mod chain_worker;
pub mod config;
pub mod custody;
pub mod db;
pub mod events;
pub mod examples;
pub mod global_id;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod ledger;
pub mod limits;
pub mod local_postgres;
pub mod metrics;
pub mod readiness;
pub mod replicas;
pub mod revocation;
pub mod schema;
pub mod server;
pub mod task;
pub mod telemetry;
pub mod watch;
pub mod ws;
