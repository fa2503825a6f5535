//! The HTTP surface: GET and POST, limits, the checked-in SDL, probes and
//! the offline playground.

use serde_json::{Value, json};

use crate::support::{TestApp, code};

#[test]
fn checked_in_schema_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/schema.graphql");
    let on_disk = std::fs::read_to_string(path).expect("schema/schema.graphql exists");
    assert!(
        on_disk == modelfleet::graphql::sdl(),
        "schema/schema.graphql is out of date: run `cargo run -- schema > schema/schema.graphql`"
    );
}

db_test!(get_runs_queries_but_not_mutations, db => {
    let app = TestApp::spawn(db).await;
    let resp = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", "{ me { id } }")])
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("json");
    assert!(body["data"]["me"].is_null() && body["errors"].is_null(), "{body}");

    let resp = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", "mutation { startAnonymousSession { token } }")])
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    // Nothing was created.
    use sea_orm::{EntityTrait, PaginatorTrait};
    let sessions = entity::session::Entity::find().count(&app.state.db).await.expect("count");
    assert_eq!(sessions, 0);
});

db_test!(batches_and_malformed_bodies_are_refused, db => {
    let app = TestApp::spawn(db).await;
    for (body, status) in [
        (
            r#"[{"query":"{ me { id } }"},{"query":"{ me { id } }"}]"#,
            400,
        ),
        ("{not json", 400),
    ] {
        let resp = app
            .http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let json: Value = resp.json().await.expect("json");
        assert_eq!(code(&json), "BAD_REQUEST");
    }
});

db_test!(depth_complexity_and_body_size_are_limited, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.graphql.max_depth = 4;
        c.graphql.max_complexity = 8;
        c.graphql.max_body_bytes = 3 * 1024 * 1024;
    })
    .await;
    let ok = app.gql("{ me { id authType } }", json!({})).await;
    assert!(ok["errors"].is_null(), "{ok}");

    let deep = app
        .gql(
            "{ __schema { types { fields { type { ofType { name } } } } } }",
            json!({}),
        )
        .await;
    let message = deep["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nested too deep"), "{deep}");
    assert_eq!(code(&deep), "GRAPHQL_VALIDATION_FAILED");

    let wide = app
        .gql(
            "{ a: me { id } b: me { id } c: me { id } d: me { id } e: me { id } }",
            json!({}),
        )
        .await;
    let message = wide["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too complex"), "{wide}");
    assert_eq!(code(&wide), "GRAPHQL_VALIDATION_FAILED");
    let broken = app.gql("{ me { id ", json!({})).await;
    assert_eq!(code(&broken), "GRAPHQL_VALIDATION_FAILED", "{broken}");
    // A nullable variable left out where the argument needs a value is
    // refused while resolving: still the caller's mistake.
    let token = app.anonymous().await;
    let missing = app.gql_as(&token, "query($id: ID) { request(id: $id) { id } }", json!({})).await;
    assert_eq!(code(&missing), "BAD_USER_INPUT", "{missing}");

    // Up to the configured size (past axum's own 2 MiB default) is served;
    // beyond it is refused in the GraphQL error shape.
    for (size, status) in [(2_500_000, 200), (3_500_000, 413)] {
        let padding = " ".repeat(size);
        let resp = app
            .http
            .post(app.url("/graphql"))
            .json(&json!({ "query": format!("{{ me {{ id }} }}{padding}") }))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status().as_u16(), status, "{size} bytes");
        let body: Value = resp.json().await.expect("a JSON body");
        if status == 413 {
            assert_eq!(code(&body), "PAYLOAD_TOO_LARGE");
        }
    }
});

db_test!(probes_report_process_and_database, db => {
    let app = TestApp::spawn(db).await;
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status().as_u16(), 200);
    let ready = app.http.get(app.url("/readyz")).send().await.expect("sent");
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(
        ready.json::<Value>().await.expect("json")["status"],
        "ready"
    );

    // A pending migration makes it not ready.
    use migration::MigratorTrait;
    migration::Migrator::down(&app.state.db, Some(1)).await.expect("roll back");
    let ready = app.http.get(app.url("/readyz")).send().await.expect("sent");
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(ready.json::<Value>().await.expect("json")["reason"], "migrations pending");
    migration::Migrator::up(&app.state.db, None).await.expect("migrate");

    // With the database gone, the process is alive but not ready, and the
    // answer names no internals.
    app.state.db.close_by_ref().await.expect("close");
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status().as_u16(), 200);
    let ready = app.http.get(app.url("/readyz")).send().await.expect("sent");
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(ready.json::<Value>().await.expect("json")["reason"], "database unreachable");
});

db_test!(the_playground_is_served_entirely_by_the_binary, db => {
    let app = TestApp::spawn(db).await;
    let page = app
        .http
        .get(app.url("/graphiql"))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("text");
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
        .collect();
    assert_eq!(assets.len(), 5, "{assets:?}");
    for asset in assets {
        assert!(
            asset.starts_with("/graphiql/assets/"),
            "{asset} is not served locally"
        );
        let resp = app.http.get(app.url(asset)).send().await.expect("sent");
        assert_eq!(resp.status().as_u16(), 200, "{asset}");
        let content_type = resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        let body = resp.bytes().await.expect("body");
        assert!(body.len() > 100, "{asset} is empty");
        assert!(
            content_type == "text/javascript" || content_type == "text/css",
            "{asset}: {content_type}"
        );
    }
    // The page's own script points subscriptions at /graphql.
    let script = app
        .http
        .get(app.url("/graphiql/assets/playground.js"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(script.contains("subscriptionUrl") && script.contains("'/graphql'"));
    let missing = app
        .http
        .get(app.url("/graphiql/assets/nope.js"))
        .send()
        .await
        .expect("sent");
    assert_eq!(missing.status().as_u16(), 404);
});
