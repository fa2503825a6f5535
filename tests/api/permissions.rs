//! Admin-only and user-only fields refuse everyone else.

use serde_json::json;

use crate::support::{TestApp, code};

const USERS: &str =
    "{ users(first: 10) { edges { node { id username roles } } pageInfo { hasNextPage } } }";
const SET_ROLES: &str = "mutation($id: ID!) { setUserRoles(userId: $id, roles: [ADMIN]) }";
const CHANGE_PASSWORD: &str = "mutation { changePassword(input: { currentPassword: \"whatever1\", newPassword: \"whatever2\" }) }";

db_test!(admin_fields_refuse_non_admins, db => {
    let app = TestApp::spawn(db).await;
    let admin = app.admin("boss").await;
    let user = app.signup("worker").await;
    let anon = app.anonymous().await;
    let id = app.gql_as(&user, "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();

    for (query, vars) in [(USERS, json!({})), (SET_ROLES, json!({ "id": id }))] {
        assert_eq!(code(&app.gql(query, vars.clone()).await), "UNAUTHENTICATED", "{query}");
        for token in [&user, &anon] {
            let body = app.gql_as(token, query, vars.clone()).await;
            assert_eq!(code(&body), "FORBIDDEN", "{query}: {body}");
            assert!(body["data"].is_null(), "{body}");
        }
    }
    // The refused mutation changed nothing.
    let roles = app.gql_as(&user, "{ me { roles } }", json!({})).await;
    assert_eq!(roles["data"]["me"]["roles"], json!([]));

    let body = app.gql_as(&admin, USERS, json!({})).await;
    let names: Vec<&str> = body["data"]["users"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["username"].as_str())
        .collect();
    assert_eq!(names, ["worker", "boss"], "newest first: {body}");
});

db_test!(user_fields_refuse_anonymous_callers, db => {
    let app = TestApp::spawn(db).await;
    let anon = app.anonymous().await;
    assert_eq!(code(&app.gql_as(&anon, CHANGE_PASSWORD, json!({})).await), "UNAUTHENTICATED");
    assert_eq!(code(&app.gql(CHANGE_PASSWORD, json!({})).await), "UNAUTHENTICATED");
    assert_eq!(code(&app.gql("mutation { logout }", json!({})).await), "UNAUTHENTICATED");
});

db_test!(users_page_with_stable_cursors, db => {
    let app = TestApp::spawn(db).await;
    let admin = app.admin("pager").await;
    for i in 0..5 {
        app.signup(&format!("user{i}")).await;
    }
    let page = "query($after: String) { users(first: 2, after: $after) { edges { cursor node { username } } pageInfo { hasNextPage endCursor } } }";
    let mut seen = Vec::new();
    let mut after = serde_json::Value::Null;
    loop {
        let body = app.gql_as(&admin, page, json!({ "after": after })).await;
        let users = &body["data"]["users"];
        for edge in users["edges"].as_array().expect("edges") {
            seen.push(edge["node"]["username"].as_str().expect("name").to_owned());
        }
        if users["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = users["pageInfo"]["endCursor"].clone();
        // A new account arriving mid-listing does not shift later pages.
        if seen.len() == 2 {
            app.signup("latecomer").await;
        }
    }
    assert_eq!(seen, ["user4", "user3", "user2", "user1", "user0", "pager"]);
    let body = app.gql_as(&admin, "{ users(first: 101) { edges { cursor } } }", json!({})).await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
    let body = app.gql_as(&admin, "{ users(after: \"junk\") { edges { cursor } } }", json!({})).await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
});
