//! The `modelfleet` binary: user management, schema, migrate, a bad config,
//! and `serve` with JSON logs and graceful shutdown.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Db, PASSWORD, TestApp, TestDb, test_config, token_of};

const BIN: &str = env!("CARGO_BIN_EXE_modelfleet");

/// Runs the binary with `DATABASE_URL` set, feeding `stdin`.
fn cmd(db_url: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir.path())
        .env("DATABASE_URL", db_url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("binary ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

db_test!(user_create_and_promote_make_admins, db => {
    let (test_db, url) = TestDb::create(db).await;
    let (ok, stdout, stderr) = cmd(
        &url,
        &["user", "create", "--username", "Root", "--email", "root@example.com", "--admin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("created user Root") && stdout.contains("ADMIN"), "{stdout}");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));

    // Bad input names every field and stores nothing.
    let (ok, _, stderr) = cmd(&url, &["user", "create", "--username", "9", "--email", "x"], "short\n");
    assert!(!ok);
    for field in ["username:", "email:", "password:"] {
        assert!(stderr.contains(field), "{field} missing from {stderr}");
    }
    let (ok, _, stderr) = cmd(&url, &["user", "create", "--username", "root", "--email", "b@example.com"], "another password\n");
    assert!(!ok && stderr.contains("is already taken"), "{stderr}");

    let (ok, _, _) = cmd(&url, &["user", "create", "--username", "helper", "--email", "h@example.com"], "a fine secret\n");
    assert!(ok);
    let (ok, stdout, stderr) = cmd(&url, &["user", "promote", "helper"], "");
    assert!(ok && stdout.contains("granted ADMIN to helper"), "{stdout}{stderr}");
    let (ok, _, stderr) = cmd(&url, &["user", "promote", "ghost"], "");
    assert!(!ok && stderr.contains("no such user"), "{stderr}");

    // The server sees both as admins.
    let config = test_config(&url);
    let app = TestApp::spawn_on(config, test_db).await;
    for (login, password) in [("root", PASSWORD), ("h@example.com", "a fine secret")] {
        let body = app.login(login, password).await;
        assert_eq!(body["data"]["login"]["viewer"]["roles"], json!(["ADMIN"]), "{body}");
        let token = token_of(&body, "login");
        let users = app.gql_as(&token, "{ users { edges { node { username } } } }", json!({})).await;
        assert!(users["errors"].is_null(), "{users}");
    }
});

#[test]
fn schema_prints_the_checked_in_sdl_without_a_database() {
    let (ok, stdout, stderr) = cmd("postgres://nowhere.invalid/none", &["schema"], "");
    assert!(ok, "{stderr}");
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/schema.graphql"
    ))
    .expect("schema file");
    assert!(
        stdout == on_disk,
        "`modelfleet schema` differs from schema/schema.graphql"
    );
}

db_test!(migrate_applies_migrations, db => {
    let (_db, url) = TestDb::create(db).await;
    let (ok, _, stderr) = cmd(&url, &["migrate"], "");
    assert!(ok, "{stderr}");
    let conn = modelfleet::db::connect(&modelfleet::config::DatabaseConfig {
        url: url.clone(),
        ..Default::default()
    })
    .await
    .expect("connect");
    modelfleet::db::ready(&conn).await.expect("migrated");
});

#[test]
fn a_bad_config_value_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nbind = \"not an address\"\n").expect("write");
    let (ok, _, stderr) = cmd(
        "sqlite://x.db?mode=rwc",
        &["--config", path.to_str().expect("utf-8"), "serve"],
        "",
    );
    assert!(!ok);
    assert!(stderr.contains("server.bind"), "{stderr}");
}

#[tokio::test]
async fn serve_logs_json_without_secrets_and_stops_on_sigterm() {
    let (_db, url) = TestDb::create(Db::Sqlite).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env("DATABASE_URL", &url)
        .env("MODELFLEET_BIND", format!("127.0.0.1:{port}"))
        .env("MODELFLEET_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body: Value = http
        .post(format!("{base}/graphql"))
        .json(&json!({
            "query": "mutation($i: SignupInput!) { signup(input: $i) { token } }",
            "variables": { "i": { "username": "logger", "email": "l@example.com", "password": PASSWORD } }
        }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let token = token_of(&body, "signup");
    http.post(format!("{base}/graphql"))
        .bearer_auth(&token)
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .expect("sent");

    // SIGTERM: the process stops by itself, successfully.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");

    let lines = lines.join().expect("log lines");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let requests: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "http request" && e["path"] == "/graphql")
        .collect();
    assert_eq!(requests.len(), 2, "{lines:#?}");
    for r in requests {
        assert_eq!(r["method"], "POST");
        assert_eq!(r["status"], 200);
        assert!(r["duration_ms"].as_f64().is_some(), "{r}");
    }
    assert!(
        events.iter().any(|e| e["message"] == "stopped"),
        "{lines:#?}"
    );
    let all = lines.join("\n");
    assert!(!all.contains(PASSWORD), "a password was logged");
    assert!(!all.contains(&token), "a token was logged");
}
