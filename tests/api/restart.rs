//! A server killed with SIGKILL mid-job loses nothing: on restart, queued
//! requests stay queued, running ones are re-dispatched, and the earlier
//! run's instances are ended.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use entity::{InstanceStatus, instance};
use sea_orm::{Database, EntityTrait};
use serde_json::{Value, json};

use crate::support::{TestDb, token_of};

const BIN: &str = env!("CARGO_BIN_EXE_modelfleet");

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let model = crate::support::sleepy("durable", |m| {
        m.max_instances = 2;
        m.request_timeout_secs = 120;
    });
    let path = dir.join("modelfleet.toml");
    let text = modelfleet::config::models_toml(&[model]).expect("toml");
    std::fs::write(&path, text).expect("write config");
    path
}

struct Server {
    child: Child,
    base: String,
}

async fn start(config: &std::path::Path, db_url: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(BIN)
        .args(["--config", config.to_str().expect("utf-8")])
        .env("DATABASE_URL", db_url)
        .env("MODELFLEET_BIND", format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{base}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { child, base }
}

async fn gql(base: &str, token: Option<&str>, query: &str, variables: Value) -> Value {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("sent").json().await.expect("json")
}

async fn status(base: &str, token: &str, id: &str) -> String {
    let body = gql(
        base,
        Some(token),
        "query($id: ID!) { request(id: $id) { status } }",
        json!({ "id": id }),
    )
    .await;
    body["data"]["request"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; count only running processes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.split(") ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

db_test!(a_killed_server_loses_nothing, db => {
    let (_db, url) = TestDb::create(db).await;
    let dir = tempfile::tempdir().expect("dir");
    let config = config(dir.path());
    let mut first = start(&config, &url).await;
    let body = gql(&first.base, None, "mutation { startAnonymousSession { token } }", json!({})).await;
    let token = token_of(&body, "startAnonymousSession");
    let submit = "mutation($m: String!) { submitRequest(input: { modelId: \"durable\", input: { seconds: 3, message: $m } }) { id } }";
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = gql(&first.base, Some(&token), submit, json!({ "m": format!("r{i}") })).await;
        ids.push(body["data"]["submitRequest"]["id"].as_str().expect("id").to_owned());
    }
    // Wait for jobs to be running, then kill the server outright.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut running = 0;
        for id in &ids {
            if status(&first.base, &token, id).await == "RUNNING" {
                running += 1;
            }
        }
        if running >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.child.kill().expect("SIGKILL");
    let _ = first.child.wait();

    let conn = Database::connect(&url).await.expect("connect");
    let earlier: Vec<i32> = instance::Entity::find()
        .all(&conn)
        .await
        .expect("instances")
        .iter()
        .filter_map(|i| i.handle.as_deref().and_then(|h| h.parse().ok()))
        .collect();
    assert!(!earlier.is_empty());

    let mut second = start(&config, &url).await;
    for (i, id) in ids.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let body = gql(&second.base, Some(&token), "query($id: ID!) { request(id: $id) { status output } }", json!({ "id": id })).await;
            let request = &body["data"]["request"];
            match request["status"].as_str() {
                Some("SUCCEEDED") => {
                    assert_eq!(request["output"], format!("r{i}"));
                    break;
                }
                Some("QUEUED" | "RUNNING") => {}
                other => panic!("request {id} ended {other:?}: {body}"),
            }
            assert!(Instant::now() < deadline, "request {id} not done after restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Nothing of the first run is left running, and its instances are
    // recorded as stopped by the restart.
    for pid in &earlier {
        assert!(!alive(*pid), "process {pid} of the killed server is still running");
    }
    let rows = instance::Entity::find().all(&conn).await.expect("instances");
    let closed = rows
        .iter()
        .filter(|i| i.stop_reason.as_deref() == Some("the server restarted"))
        .count();
    assert!(closed >= 1, "{rows:?}");
    assert!(rows.iter().all(|i| i.status != InstanceStatus::Pending));
    conn.close().await.ok();

    assert!(Command::new("kill").args(["-TERM", &second.child.id().to_string()]).status().expect("kill").success());
    let _ = second.child.wait();
});
