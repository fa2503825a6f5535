//! `database.schema`: everything lives in the named schema, nothing in
//! `public`.

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::json;

use crate::support::{Db, TestApp};

async fn tables_in(url: &str, schema: &str) -> Vec<String> {
    let conn = Database::connect(url).await.expect("connect");
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            [schema.into()],
        ))
        .await
        .expect("list tables");
    conn.close().await.ok();
    rows.iter()
        .map(|r| r.try_get::<String>("", "name").expect("name"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_schema_holds_every_table() {
    let app = TestApp::spawn_with(Db::Postgres, |c| {
        c.database.schema = Some("fleet".to_owned());
        // Several pooled connections, to show the path holds on each.
        c.database.max_connections = 4;
    })
    .await;
    let url = app.db_url.clone();

    // Work through the API on many connections at once.
    let mut calls = Vec::new();
    for i in 0..8 {
        let app = &app;
        calls.push(async move { app.signup(&format!("schemer{i}")).await });
    }
    let tokens = futures_util::future::join_all(calls).await;
    assert_eq!(tokens.len(), 8);
    let body = app
        .gql_as(&tokens[0], "{ me { username } }", json!({}))
        .await;
    assert_eq!(body["data"]["me"]["username"], "schemer0");

    let fleet = tables_in(&url, "fleet").await;
    for table in [
        "instance_events",
        "instances",
        "models",
        "seaql_migrations",
        "sessions",
        "user_roles",
        "users",
        "work_requests",
    ] {
        assert!(
            fleet.contains(&table.to_owned()),
            "{table} missing from schema fleet: {fleet:?}"
        );
    }
    assert_eq!(
        tables_in(&url, "public").await,
        Vec::<String>::new(),
        "nothing may land in public"
    );

    // The rows are in fleet's tables.
    let conn = Database::connect(&url).await.expect("connect");
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*)::bigint AS n FROM fleet.users",
        ))
        .await
        .expect("count")
        .expect("row");
    assert_eq!(row.try_get::<i64>("", "n").expect("n"), 8);
    conn.close().await.ok();
    app.stop().await;
}
