//! Start-up: the database is created when missing and migrations are applied once, also
//! when several processes start at the same moment.

mod common;

use wallet::app::{App, AppConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_create_and_migrate_once() {
    // A name nobody created yet.
    let db = common::TestDb::new().await;
    let fresh_name = format!("{}_fresh", db.name);
    let url = db.url.replace(&db.name, &fresh_name);
    let config = AppConfig {
        database_url: url.clone(),
        pool_size: 2,
        ..common::Options::default().config(&url)
    };
    let starts = (0..4).map(|_| {
        let config = config.clone();
        tokio::spawn(async move { App::start(&config).await.map(|_| ()) })
    });
    for r in futures_util::future::join_all(starts).await {
        r.unwrap().expect("every process starts");
    }
    let fresh = common::TestDb {
        name: fresh_name,
        url,
    };
    let c = fresh.client().await;
    let versions = c
        .query("SELECT version FROM __diesel_schema_migrations", &[])
        .await
        .unwrap();
    let migration_dirs = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(
        versions.len(),
        migration_dirs,
        "each migration recorded once"
    );
    let currencies: i64 = c
        .query_one("SELECT count(*) FROM currencies", &[])
        .await
        .unwrap()
        .get(0);
    assert!(currencies >= 6);
    drop(db);
}
