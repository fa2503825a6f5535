//! Dispatch overhead and throughput, on SQLite and PostgreSQL.
//!
//! For a trivial model (the `sleepy` example answering at once) with two
//! warm instances, prints the time from submit to job start and from job
//! end to request completion (p50, p99), and requests per second end to
//! end. Run with `cargo bench --bench dispatch`; PostgreSQL is found as the
//! tests find it (`TEST_POSTGRES_URL`).
//!
//! Requests are submitted over HTTP by `CLIENTS` concurrent clients, each
//! submitting its next request when the previous one has completed
//! (watched through the database every millisecond, so no polling load on
//! the API). "Job end → complete" is measured as a client sees it: from the
//! instance's answer (`jobFinishedAt`) to the moment the client first reads
//! the request as succeeded, so it includes the write and up to 1 ms of
//! polling.

mod support;

use support::{anonymous_token, gql};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use entity::{RequestStatus, work_request};
use modelfleet::app::Application;
use modelfleet::config::Config;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;

const REQUESTS: usize = 400;
const WARM_UP: usize = 40;
const CLIENTS: usize = 4;

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run(label: &str, url: &str) {
    let mut config = Config::default();
    config.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.database.url = url.to_owned();
    config.auth.rate_limit_burst = 100_000;
    config.auth.rate_limit_per_minute = 100_000;
    let mut model = modelfleet::models::example_models()
        .into_iter()
        .find(|m| m.id == "sleepy")
        .expect("sleepy example");
    model.id = "bench".to_owned();
    model.min_instances = 2;
    model.max_instances = 2;
    config.models = vec![model];
    let app = Application::build(config).await.expect("server builds");
    let addr = app.local_addr();
    let db = app.state().db.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    // Wait for both instances (the first run may build the model's venv).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = entity::instance::Entity::find()
            .filter(entity::instance::Column::Status.eq(entity::InstanceStatus::Ready))
            .count(&db)
            .await
            .expect("count");
        if ready >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "instances never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let http = reqwest::Client::new();
    let token = anonymous_token(&http, addr).await;
    let submit = "mutation { submitRequest(input: { modelId: \"bench\", input: { message: \"x\" } }) { id } }";

    let drive = |count: usize| {
        let http = http.clone();
        let token = token.clone();
        let db = db.clone();
        async move {
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
            let per_client = count / CLIENTS;
            let clients = (0..CLIENTS).map(|_| {
                let seen = seen.clone();
                let http = http.clone();
                let token = token.clone();
                let db = db.clone();
                async move {
                    for _ in 0..per_client {
                        let body = gql(&http, addr, Some(&token), submit, json!({})).await;
                        let id: uuid::Uuid = body["data"]["submitRequest"]["id"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or_else(|| panic!("submit failed: {body}"));
                        loop {
                            let row = work_request::Entity::find_by_id(id)
                                .one(&db)
                                .await
                                .expect("row")
                                .expect("exists");
                            if row.status == RequestStatus::Succeeded {
                                let now = chrono::Utc::now();
                                if let Some(f) = row.job_finished_at
                                    && let Ok(mut seen) = seen.lock()
                                {
                                    seen.push((now - f).num_microseconds().unwrap_or(0));
                                }
                                break;
                            }
                            assert!(
                                row.status != RequestStatus::Failed,
                                "request failed: {:?}",
                                row.error
                            );
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            });
            futures_util::future::join_all(clients).await;
            std::mem::take(&mut *seen.lock().expect("lock"))
        }
    };
    drive(WARM_UP).await;
    let before = chrono::Utc::now();
    let started = Instant::now();
    let mut to_complete = drive(REQUESTS).await;
    let elapsed = started.elapsed();

    let rows = work_request::Entity::find()
        .filter(work_request::Column::CreatedAt.gte(before))
        .all(&db)
        .await
        .expect("rows");
    let to_start: Vec<i64> = rows
        .iter()
        .filter_map(|r| {
            r.job_started_at
                .map(|s| (s - r.created_at).num_microseconds().unwrap_or(0))
        })
        .collect();
    let mut to_start = to_start;
    to_start.sort_unstable();
    to_complete.sort_unstable();
    let ms = |us: i64| us as f64 / 1000.0;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    let _ = writeln!(
        out,
        "{label:<10} {n:>5} req  submit→job start p50 {a:>7.2} ms  p99 {b:>7.2} ms   job end→complete p50 {c:>6.2} ms  p99 {d:>6.2} ms   {rps:>7.1} req/s end to end",
        n = rows.len(),
        a = ms(percentile(&to_start, 50.0)),
        b = ms(percentile(&to_start, 99.0)),
        c = ms(percentile(&to_complete, 50.0)),
        d = ms(percentile(&to_complete, 99.0)),
        rps = rows.len() as f64 / elapsed.as_secs_f64(),
    );
    let _ = stop.send(());
    let _ = server.await;
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    run("sqlite", &sqlite).await;

    let postgres = support::ScratchDatabase::create("dispatch").await;
    run("postgres", &postgres.url).await;
    postgres.drop_now().await;
}
