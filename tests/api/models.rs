//! Models: everyone lists them; only admins change them.

use serde_json::json;

use crate::support::{TestApp, code, sleepy};

const UPSERT: &str =
    "mutation($input: ModelInput!) { upsertModel(input: $input) { id name maxInstances enabled } }";

db_test!(models_are_listed_and_managed_by_admins, db => {
    let app = TestApp::spawn(db).await;
    let admin = app.admin("keeper").await;
    let user = app.signup("visitor").await;
    let anon = app.anonymous().await;

    let body = app.gql("{ models { id name enabled maxInstances } }", json!({})).await;
    let ids: Vec<&str> = body["data"]["models"].as_array().expect("models").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["iris", "sleepy"], "the examples by default: {body}");
    // How a model starts is for admins only.
    let body = app.gql_as(&user, "{ model(id: \"iris\") { id local { command } } }", json!({})).await;
    assert_eq!(code(&body), "FORBIDDEN");
    let body = app.gql_as(&admin, "{ model(id: \"iris\") { local { workdir } } }", json!({})).await;
    assert!(body["data"]["model"]["local"]["workdir"].as_str().is_some_and(|w| w.ends_with("examples/models/iris")));

    let input = json!({ "input": {
        "id": "mine", "name": "Mine", "maxInstances": 3,
        "local": { "command": ["python", "-m", "cog.server.http"], "workdir": "/tmp" }
    } });
    assert_eq!(code(&app.gql(UPSERT, input.clone()).await), "UNAUTHENTICATED");
    for token in [&user, &anon] {
        assert_eq!(code(&app.gql_as(token, UPSERT, input.clone()).await), "FORBIDDEN");
        let body = app
            .gql_as(token, "mutation { setModelEnabled(id: \"iris\", enabled: false) { id } }", json!({}))
            .await;
        assert_eq!(code(&body), "FORBIDDEN");
    }
    let body = app.gql_as(&admin, UPSERT, input).await;
    assert_eq!(body["data"]["upsertModel"]["maxInstances"], 3, "{body}");

    let bad = json!({ "input": { "id": "Bad Id", "minInstances": 5, "maxInstances": 2 } });
    let body = app.gql_as(&admin, UPSERT, bad).await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
    let fields = &body["errors"][0]["extensions"]["fields"];
    for field in ["id", "minInstances", "local"] {
        assert!(fields[field].is_array(), "{field}: {body}");
    }

    let body = app
        .gql_as(&admin, "mutation { setModelEnabled(id: \"mine\", enabled: false) { enabled } }", json!({}))
        .await;
    assert_eq!(body["data"]["setModelEnabled"]["enabled"], false);
    let listed = app.gql("{ models { id } }", json!({})).await;
    assert!(!listed.to_string().contains("\"mine\""), "disabled models are hidden by default");
    let listed = app.gql("{ models(includeDisabled: true) { id } }", json!({})).await;
    assert!(listed.to_string().contains("\"mine\""));
    let body = app
        .gql_as(&admin, "mutation { setModelEnabled(id: \"ghost\", enabled: true) { id } }", json!({}))
        .await;
    assert_eq!(code(&body), "NOT_FOUND");
});

db_test!(models_dropped_from_the_configuration_are_disabled, db => {
    let (test_db, url) = crate::support::TestDb::create(db).await;
    let first = TestApp::spawn_over(crate::support::test_config(&url)).await;
    let body = first.gql("{ models { id } }", json!({})).await;
    assert_eq!(body["data"]["models"], json!([{ "id": "iris" }, { "id": "sleepy" }]));
    first.stop().await;
    let mut config = crate::support::test_config(&url);
    config.models = vec![sleepy("mine", |_| {})];
    let second = TestApp::spawn_over(config).await;
    let body = second.gql("{ models { id } all: models(includeDisabled: true) { id enabled } }", json!({})).await;
    assert_eq!(body["data"]["models"], json!([{ "id": "mine" }]), "{body}");
    let all = body["data"]["all"].as_array().expect("all");
    assert_eq!(all.len(), 3, "kept, not deleted: {body}");
    let token = second.anonymous().await;
    let refused = second.gql_as(&token, crate::support::SUBMIT, json!({ "input": { "modelId": "iris", "input": {} } })).await;
    assert_eq!(code(&refused), "BAD_USER_INPUT");
    second.stop().await;
    drop(test_db);
});

db_test!(configured_models_replace_the_examples, db => {
    let app = TestApp::spawn_with(db, |c| c.models = vec![sleepy("only", |_| {})]).await;
    let body = app.gql("{ models { id } model(id: \"only\") { name } }", json!({})).await;
    assert_eq!(body["data"]["models"], json!([{ "id": "only" }]));
    assert_eq!(body["data"]["model"]["name"], "only");
});
