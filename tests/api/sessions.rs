//! Tokens, expiry, sliding, refresh, logout and the session cache.

use chrono::{TimeDelta, Utc};
use entity::session;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;

use crate::support::{TestApp, code, token_of};

const ME: &str = "{ me { id authType sessionExpiresAt } }";

async fn set_expiry(app: &TestApp, expires_at: chrono::DateTime<Utc>) {
    session::Entity::update_many()
        .col_expr(session::Column::ExpiresAt, expires_at.into())
        .exec(&app.state.db)
        .await
        .expect("update sessions");
    app.state.auth.clear_cache();
}

fn expiry(body: &serde_json::Value) -> chrono::DateTime<Utc> {
    body["data"]["me"]["sessionExpiresAt"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("no expiry in {body}"))
        .with_timezone(&Utc)
}

db_test!(bad_tokens_are_unauthenticated, db => {
    let app = TestApp::spawn(db).await;
    let good = app.anonymous().await;
    let unknown = format!("mf_{}", "A".repeat(43));
    for token in ["garbage", &good[..good.len() - 2], &unknown] {
        let (status, body) = app.post(Some(token), ME, json!({})).await;
        assert_eq!(status, 401, "{token}: {body}");
        assert_eq!(code(&body), "UNAUTHENTICATED", "{token}");
        assert!(body["errors"][0]["locations"].is_null(), "no place in the document: {body}");
    }
    // Not a bearer scheme at all.
    let resp = app
        .http
        .post(app.url("/graphql"))
        .header("Authorization", format!("Basic {good}"))
        .json(&json!({ "query": ME }))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    // Without any token the same query answers, with no viewer.
    let body = app.gql(ME, json!({})).await;
    assert!(body["data"]["me"].is_null() && body["errors"].is_null(), "{body}");
});

db_test!(an_expired_session_says_so, db => {
    let app = TestApp::spawn(db).await;
    let token = app.signup("expiring").await;
    set_expiry(&app, Utc::now() - TimeDelta::seconds(1)).await;
    let (status, body) = app.post(Some(&token), ME, json!({})).await;
    assert_eq!((status, code(&body)), (401, "SESSION_EXPIRED"), "{body}");
});

db_test!(sessions_slide_past_half_their_lifetime, db => {
    let app = TestApp::spawn(db).await;
    let token = app.signup("slider").await;
    let lifetime = TimeDelta::seconds(app.state.config.auth.session_lifetime_secs as i64);

    // Early in its life a call does not move the expiry.
    let before = expiry(&app.gql_as(&token, ME, json!({})).await);
    let again = expiry(&app.gql_as(&token, ME, json!({})).await);
    assert_eq!(before, again);

    // Past half its lifetime, any call extends it to a full lifetime.
    let soon = Utc::now() + TimeDelta::hours(1);
    set_expiry(&app, soon).await;
    let body = app.gql_as(&token, ME, json!({})).await;
    let extended = expiry(&body);
    assert!(extended > Utc::now() + lifetime - TimeDelta::minutes(1), "{body}");
    let stored = session::Entity::find().one(&app.state.db).await.expect("query").expect("row");
    assert!((stored.expires_at - extended).num_milliseconds().abs() < 1000);
    // Same user throughout.
    assert_eq!(body["data"]["me"]["authType"], "USER");
});

db_test!(refresh_extends_and_keeps_the_user_and_token, db => {
    let app = TestApp::spawn(db).await;
    let token = app.signup("refresher").await;
    set_expiry(&app, Utc::now() + TimeDelta::days(6)).await;
    let id = app.gql_as(&token, ME, json!({})).await["data"]["me"]["id"].clone();
    let body = app
        .gql_as(&token, "mutation { refreshSession { token expiresAt viewer { id username } } }", json!({}))
        .await;
    assert_eq!(token_of(&body, "refreshSession"), token);
    assert_eq!(body["data"]["refreshSession"]["viewer"]["id"], id);
    let expires: chrono::DateTime<Utc> = body["data"]["refreshSession"]["expiresAt"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("expiresAt");
    assert!(expires > Utc::now() + TimeDelta::days(6) + TimeDelta::hours(23), "{body}");
    // Anonymous sessions refresh too, and stay anonymous.
    let anon = app.anonymous().await;
    let body = app
        .gql_as(&anon, "mutation { refreshSession { viewer { authType } } }", json!({}))
        .await;
    assert_eq!(body["data"]["refreshSession"]["viewer"]["authType"], "ANON");
    // No session, nothing to refresh.
    assert_eq!(code(&app.gql("mutation { refreshSession { token } }", json!({})).await), "UNAUTHENTICATED");
});

db_test!(logout_ends_the_session_at_once_and_only_that_one, db => {
    let app = TestApp::spawn(db).await;
    let first = app.signup("leaver").await;
    let second = token_of(&app.login("leaver", crate::support::PASSWORD).await, "login");
    // Warm the cache, so the logout has to invalidate it.
    assert!(app.gql_as(&first, ME, json!({})).await["errors"].is_null());
    let body = app.gql_as(&first, "mutation { logout }", json!({})).await;
    assert_eq!(body["data"]["logout"], true);
    let (status, body) = app.post(Some(&first), ME, json!({})).await;
    assert_eq!((status, code(&body)), (401, "UNAUTHENTICATED"));
    assert!(app.gql_as(&second, ME, json!({})).await["errors"].is_null());
    let rows = session::Entity::find().all(&app.state.db).await.expect("query");
    assert_eq!(rows.len(), 1, "the ended session is deleted");
});

db_test!(session_lookups_are_served_from_the_cache, db => {
    let app = TestApp::spawn(db).await;
    let token = app.signup("cached").await;
    let reads = app.state.auth.session_db_reads();
    for _ in 0..5 {
        assert!(app.gql_as(&token, ME, json!({})).await["errors"].is_null());
    }
    assert_eq!(app.state.auth.session_db_reads(), reads, "hits must not read the database");
    // A miss reads once and fills the cache again.
    app.state.auth.clear_cache();
    for _ in 0..3 {
        assert!(app.gql_as(&token, ME, json!({})).await["errors"].is_null());
    }
    assert_eq!(app.state.auth.session_db_reads(), reads + 1);
    // Tokens are stored only as their SHA-256 digest.
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stored = session::Entity::find()
        .filter(session::Column::TokenHash.eq(digest.as_str()))
        .one(&app.state.db)
        .await
        .expect("query");
    assert!(stored.is_some(), "no session stored under the token's digest");
});

db_test!(a_role_change_holds_on_the_next_call, db => {
    let app = TestApp::spawn(db).await;
    let admin = app.admin("root").await;
    let token = app.signup("promoted").await;
    let me = app.gql_as(&token, "{ me { id roles permissions } }", json!({})).await;
    assert_eq!(me["data"]["me"]["roles"], json!([]));
    let id = me["data"]["me"]["id"].clone();
    let body = app
        .gql_as(&admin, "mutation($id: ID!) { setUserRoles(userId: $id, roles: [ADMIN]) }", json!({ "id": id }))
        .await;
    assert_eq!(body["data"]["setUserRoles"], json!(["ADMIN"]), "{body}");
    let me = app.gql_as(&token, "{ me { roles permissions } }", json!({})).await;
    assert_eq!(me["data"]["me"]["roles"], json!(["ADMIN"]));
    assert!(me["data"]["me"]["permissions"].as_array().is_some_and(|p| p.contains(&json!("MANAGE_USERS"))));
    // And back.
    app.gql_as(&admin, "mutation($id: ID!) { setUserRoles(userId: $id, roles: []) }", json!({ "id": id }))
        .await;
    let body = app.gql_as(&token, "{ users { edges { node { id } } } }", json!({})).await;
    assert_eq!(code(&body), "FORBIDDEN");
});
