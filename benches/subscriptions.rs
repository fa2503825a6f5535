//! Live-update fan-out: 1,000 concurrent `instanceUpdates` subscriptions.
//!
//! Starts the real server binary (SQLite, two warm instances of the
//! `sleepy` example), opens `SUBSCRIBERS` WebSocket subscriptions as an
//! admin, then drives instance changes by running requests (each one makes
//! the instance BUSY, records an event and makes it READY again). Every
//! subscriber measures the delay from the change (`at`, set by the server
//! when it happens) to its delivery. Prints p50/p99 of those delays, how
//! many messages arrived, how many subscribers were told to re-query
//! (RESYNC), and the server's resident memory before and after.
//!
//! Run with `cargo bench --bench subscriptions`. Clients and server share
//! the machine's two cores, so the delays include the clients' own work.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;

const SUBSCRIBERS: usize = 1000;
const REQUESTS: usize = 60;
const BIN: &str = env!("CARGO_BIN_EXE_modelfleet");

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

async fn gql(base: &str, token: Option<&str>, query: &str, vars: Value) -> Value {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": vars }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("sent").json().await.expect("json")
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(((p / 100.0) * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let mut model = modelfleet::models::example_models()
        .into_iter()
        .find(|m| m.id == "sleepy")
        .expect("the sleepy example");
    model.id = "bench".to_owned();
    model.min_instances = 2;
    model.max_instances = 2;
    let models = modelfleet::config::models_toml(&[model]).expect("toml");
    let config = dir.path().join("modelfleet.toml");
    let settings = "[log]\nlevel = \"warn\"\n[auth]\nrate_limit_per_minute = 100000\nrate_limit_burst = 100000\n";
    std::fs::write(&config, format!("{settings}{models}")).expect("config");
    let config = config.to_str().expect("utf-8").to_owned();

    let mut create = Command::new(BIN)
        .args([
            "--config",
            &config,
            "user",
            "create",
            "--username",
            "fanout",
            "--email",
            "f@example.com",
            "--admin",
        ])
        .env("DATABASE_URL", &db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("user create");
    {
        use std::io::Write;
        let mut stdin = create.stdin.take().expect("stdin");
        stdin.write_all(b"benchmark password\n").expect("password");
    }
    assert!(create.wait().expect("wait").success());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut server = Command::new(BIN)
        .args(["--config", &config])
        .env("DATABASE_URL", &db)
        .env("MODELFLEET_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("server");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = reqwest::get(format!("{base}/metrics"))
            .await
            .ok()
            .map(|r| r.status().is_success());
        if ready == Some(true) {
            let text = reqwest::get(format!("{base}/metrics"))
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            if text.contains("modelfleet_instances{model=\"bench\",status=\"READY\"} 2") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "instances never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = gql(&base, None, "mutation { login(input: { login: \"fanout\", password: \"benchmark password\" }) { token } }", json!({})).await;
    let admin = body["data"]["login"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let rss_before = rss_kib(server.id());

    let delays = Arc::new(std::sync::Mutex::new(Vec::<u64>::with_capacity(
        SUBSCRIBERS * REQUESTS * 4,
    )));
    let resyncs = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(tokio::sync::Barrier::new(SUBSCRIBERS + 1));
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (delays, resyncs, ready, admin) = (
            delays.clone(),
            resyncs.clone(),
            ready.clone(),
            admin.clone(),
        );
        let url = format!("ws://127.0.0.1:{port}/graphql");
        clients.push(tokio::spawn(async move {
            let mut request = url.into_client_request().expect("request");
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("graphql-transport-ws"));
            let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("connect");
            ws.send(Message::Text(json!({ "type": "connection_init", "payload": { "token": admin } }).to_string().into()))
                .await
                .expect("init");
            let _ack = ws.next().await;
            let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { instanceUpdates { kind at instance { id modelId status requestId startedAt } } }" } });
            ws.send(Message::Text(subscribe.to_string().into())).await.expect("subscribe");
            ready.wait().await;
            let mut mine = Vec::new();
            // Collect until the stream has been quiet for two seconds.
            while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                let Message::Text(text) = message else { continue };
                let now = chrono::Utc::now();
                // Read just what is measured, so that the clients (which
                // share the machine with the server) cost as little as
                // possible.
                let text = text.as_str();
                if text.contains("\"RESYNC\"") {
                    resyncs.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let at = text
                    .split_once("\"at\":\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .and_then(|(at, _)| at.parse::<chrono::DateTime<chrono::Utc>>().ok());
                if let Some(at) = at {
                    mine.push((now - at).num_microseconds().unwrap_or(0).max(0) as u64);
                }
            }
            delays.lock().expect("lock").extend(mine);
        }));
    }
    ready.wait().await;
    // Give the last subscriptions a moment to be registered on the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_subscribed = rss_kib(server.id());

    let body = gql(
        &base,
        None,
        "mutation { startAnonymousSession { token } }",
        json!({}),
    )
    .await;
    let anon = body["data"]["startAnonymousSession"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let started = Instant::now();
    let cpu_before = cpu_secs(server.id());
    for _ in 0..REQUESTS {
        let body = gql(
            &base,
            Some(&anon),
            "mutation { submitRequest(input: { modelId: \"bench\", input: {} }) { id } }",
            json!({}),
        )
        .await;
        let id = body["data"]["submitRequest"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        loop {
            let body = gql(
                &base,
                Some(&anon),
                "query($id: ID!) { request(id: $id) { status } }",
                json!({ "id": id }),
            )
            .await;
            if body["data"]["request"]["status"] == "SUCCEEDED" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let drive = started.elapsed();
    let server_cpu = cpu_secs(server.id()) - cpu_before;
    let rss_peak = rss_kib(server.id());
    for client in clients {
        let _ = client.await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();

    let mut delays = std::mem::take(&mut *delays.lock().expect("lock"));
    delays.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    let _ = writeln!(
        out,
        "{SUBSCRIBERS} subscribers, {REQUESTS} requests in {:.1} s: {} updates delivered, change→delivery p50 {:.2} ms p99 {:.2} ms max {:.2} ms, {} RESYNC",
        drive.as_secs_f64(),
        delays.len(),
        ms(percentile(&delays, 50.0)),
        ms(percentile(&delays, 99.0)),
        ms(delays.last().copied().unwrap_or(0)),
        resyncs.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "server CPU during the drive: {server_cpu:.1} s of {:.1} s (2 cores, shared with the clients)",
        drive.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "server memory (RSS): {:.1} MiB before subscribing, {:.1} MiB with {SUBSCRIBERS} subscriptions, {:.1} MiB after the run",
        rss_before as f64 / 1024.0,
        rss_subscribed as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
    );
}
