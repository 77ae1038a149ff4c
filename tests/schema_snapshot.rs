//! `schema.graphql` is the exported SDL of the running schema. Regenerate it with
//! `cargo run -- schema > schema.graphql` after an intended API change.

#[test]
fn schema_graphql_matches_the_running_schema() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let current = wallet::graphql::sdl();
    if committed != current {
        let diff = pretty_assertions::StrComparison::new(&committed, &current);
        panic!("schema.graphql is out of date; run `cargo run -- schema > schema.graphql`\n{diff}");
    }
}
