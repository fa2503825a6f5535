//! Sign-up, login and password changes.

use entity::user;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{Value, json};

use crate::support::{PASSWORD, SIGNUP, TestApp, code, token_of};

fn fields(body: &Value) -> &serde_json::Map<String, Value> {
    body["errors"][0]["extensions"]["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("no fields in {body}"))
}

fn messages(body: &Value, field: &str) -> Vec<String> {
    fields(body)
        .get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn signup(app: &TestApp, username: &str, email: &str, password: &str) -> Value {
    app.gql(
        SIGNUP,
        json!({ "input": { "username": username, "email": email, "password": password } }),
    )
    .await
}

async fn user_count(app: &TestApp) -> u64 {
    user::Entity::find()
        .count(&app.state.db)
        .await
        .expect("count")
}

db_test!(signup_signs_in_and_me_returns_the_viewer, db => {
    let app = TestApp::spawn(db).await;
    let body = signup(&app, "Ada", "ada@example.com", PASSWORD).await;
    let viewer = &body["data"]["signup"]["viewer"];
    assert_eq!(viewer["authType"], "USER", "{body}");
    assert_eq!(viewer["username"], "Ada");
    assert_eq!(viewer["roles"], json!([]));
    let token = token_of(&body, "signup");
    let me = app
        .gql_as(&token, "{ me { id authType username email roles permissions sessionExpiresAt } }", json!({}))
        .await;
    assert_eq!(me["data"]["me"]["id"], viewer["id"]);
    assert_eq!(me["data"]["me"]["email"], "ada@example.com");
    // The password is stored only as an argon2id hash.
    let row = user::Entity::find().one(&app.state.db).await.expect("query").expect("a user");
    assert!(row.password_hash.starts_with("$argon2id$"), "{}", row.password_hash);
    assert!(!row.password_hash.contains(PASSWORD));
});

db_test!(signup_reports_every_broken_rule_at_once_and_stores_nothing, db => {
    let app = TestApp::spawn(db).await;
    let body = signup(&app, "1x", "not-an-email", "1xshort").await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
    assert!(body["data"].is_null());
    let username = messages(&body, "username");
    assert!(username.contains(&"must be 3 to 32 characters long".to_owned()), "{username:?}");
    assert!(username.contains(&"must start with a letter".to_owned()), "{username:?}");
    assert_eq!(messages(&body, "email"), ["must be a valid email address"]);
    let password = messages(&body, "password");
    assert!(password.contains(&"must be 8 to 128 characters long".to_owned()), "{password:?}");
    assert!(password.contains(&"must not contain the username".to_owned()), "{password:?}");
    assert_eq!(user_count(&app).await, 0);

    // Each remaining rule, one at a time.
    let cases = [
        ("has space", "a@example.com", PASSWORD, "username", "may contain only ASCII letters, digits, `_`, `.` and `-`"),
        ("zoë", "a@example.com", PASSWORD, "username", "may contain only ASCII letters, digits, `_`, `.` and `-`"),
        ("abcdefghijklmnopqrstuvwxyzabcdefg", "a@example.com", PASSWORD, "username", "must be 3 to 32 characters long"),
        ("ada", "", PASSWORD, "email", "is required"),
        ("ada", "a@", PASSWORD, "email", "must be a valid email address"),
        ("ada", "a@example.com", "", "password", "must be 8 to 128 characters long"),
        ("ada", "a@example.com", &"p".repeat(129), "password", "must be 8 to 128 characters long"),
        ("ada", "a@example.com", "xxADAxxxx", "password", "must not contain the username"),
    ];
    for (username, email, password, field, want) in cases {
        let body = signup(&app, username, email, password).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
        assert!(messages(&body, field).contains(&want.to_owned()), "{username} {email}: {body}");
        assert_eq!(fields(&body).len(), 1, "only {field} should fail: {body}");
    }
    assert_eq!(user_count(&app).await, 0);
});

db_test!(usernames_and_emails_are_unique_without_regard_to_case, db => {
    let app = TestApp::spawn(db).await;
    let first = signup(&app, "Jose", "Jose@Caf\u{e9}.example", PASSWORD).await;
    assert!(first["errors"].is_null(), "{first}");
    // Same name in other case; same email with the accent decomposed
    // (e + combining acute) and in other case.
    let body = signup(&app, "jOSE", "jose@CAFE\u{301}.example", PASSWORD).await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
    assert_eq!(messages(&body, "username"), ["is already taken"]);
    assert_eq!(messages(&body, "email"), ["is already registered"]);
    assert_eq!(user_count(&app).await, 1);
});

db_test!(login_takes_username_or_email, db => {
    let app = TestApp::spawn(db).await;
    app.signup("grace").await;
    for login in ["grace", "GRACE", "grace@example.com", "Grace@EXAMPLE.com"] {
        let body = app.login(login, PASSWORD).await;
        assert_eq!(body["data"]["login"]["viewer"]["username"], "grace", "{login}: {body}");
    }
});

db_test!(wrong_username_and_wrong_password_look_alike, db => {
    let app = TestApp::spawn(db).await;
    app.signup("alan").await;
    let wrong_password = app.login("alan", "not the password").await;
    let wrong_user = app.login("nobody", "not the password").await;
    assert_eq!(code(&wrong_password), "INVALID_CREDENTIALS");
    assert_eq!(code(&wrong_user), "INVALID_CREDENTIALS");
    assert_eq!(wrong_password["errors"][0]["message"], wrong_user["errors"][0]["message"]);

    // Both verify an argon2id hash with the same parameters (an unknown
    // account against a stand-in hash), so they cost alike: an unknown
    // account is not answered early.
    let stand_in = app.state.auth.stand_in_hash();
    assert!(stand_in.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stand_in}");
    let before = app.state.auth.password_verifications();
    app.login("nobody", "not the password").await;
    assert_eq!(app.state.auth.password_verifications(), before + 1, "unknown account skipped the hash");
    app.login("alan", "not the password").await;
    assert_eq!(app.state.auth.password_verifications(), before + 2);
});

db_test!(overlong_login_password_is_refused_before_hashing, db => {
    let app = TestApp::spawn(db).await;
    app.signup("linus").await;
    let body = app.login("linus", &"x".repeat(100_000)).await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
    assert_eq!(messages(&body, "password"), ["must be at most 128 characters long"]);
});

db_test!(signup_and_login_are_rate_limited_per_address, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.auth.rate_limit_per_minute = 1;
        c.auth.rate_limit_burst = 3;
    })
    .await;
    app.signup("barbara").await;
    assert!(app.login("barbara", PASSWORD).await["errors"].is_null());
    assert!(app.login("barbara", "wrong").await["errors"].is_array());
    let limited = app.login("barbara", PASSWORD).await;
    assert_eq!(code(&limited), "RATE_LIMITED", "{limited}");
    assert!(limited["errors"][0]["extensions"]["retryAfterSeconds"].as_u64().unwrap_or(0) >= 1);
    let body = signup(&app, "another", "another@example.com", PASSWORD).await;
    assert_eq!(code(&body), "RATE_LIMITED");
    // Anonymous sessions count too.
    let body = app.gql("mutation { startAnonymousSession { token } }", json!({})).await;
    assert_eq!(code(&body), "RATE_LIMITED");
    // Other calls are not limited.
    assert!(app.gql("{ me { id } }", json!({})).await["errors"].is_null());
});

db_test!(forwarded_for_counts_only_the_proxys_entry, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.server.trust_forwarded_for = true;
        c.auth.rate_limit_per_minute = 1;
        c.auth.rate_limit_burst = 1;
    })
    .await;
    let start = |spoofed: &str| {
        app.http
            .post(app.url("/graphql"))
            .header("X-Forwarded-For", format!("{spoofed}, 203.0.113.7"))
            .json(&json!({ "query": "mutation { startAnonymousSession { token } }" }))
            .send()
    };
    let first: Value = start("1.1.1.1").await.expect("sent").json().await.expect("json");
    assert!(first["errors"].is_null(), "{first}");
    // A different made-up first entry does not make a new client.
    let second: Value = start("2.2.2.2").await.expect("sent").json().await.expect("json");
    assert_eq!(code(&second), "RATE_LIMITED");
});

db_test!(change_password_checks_and_ends_other_sessions, db => {
    let app = TestApp::spawn(db).await;
    let first = app.signup("edsger").await;
    let second = token_of(&app.login("edsger", PASSWORD).await, "login");
    let change = "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }";

    let body = app
        .gql_as(&first, change, json!({ "input": { "currentPassword": "wrong one", "newPassword": "a brand new one" } }))
        .await;
    assert_eq!(messages(&body, "currentPassword"), ["is not the current password"]);
    let body = app
        .gql_as(&first, change, json!({ "input": { "currentPassword": PASSWORD, "newPassword": "short" } }))
        .await;
    assert_eq!(messages(&body, "newPassword"), ["must be 8 to 128 characters long"]);

    let body = app
        .gql_as(&first, change, json!({ "input": { "currentPassword": PASSWORD, "newPassword": "a brand new one" } }))
        .await;
    assert_eq!(body["data"]["changePassword"], true, "{body}");
    // The session that changed it lives on; the other one ends at once.
    assert_eq!(app.gql_as(&first, "{ me { username } }", json!({})).await["data"]["me"]["username"], "edsger");
    let (status, body) = app.post(Some(&second), "{ me { username } }", json!({})).await;
    assert_eq!((status, code(&body)), (401, "UNAUTHENTICATED"));
    assert_eq!(code(&app.login("edsger", PASSWORD).await), "INVALID_CREDENTIALS");
    assert!(app.login("edsger", "a brand new one").await["errors"].is_null());
});
