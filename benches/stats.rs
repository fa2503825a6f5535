//! `stats` latency over a million requests, on SQLite and PostgreSQL.
//!
//! Seeds `STATS_BENCH_ROWS` requests (default 1,000,000) spread over 30
//! days, 20 models, 200 users and 2,000 anonymous sessions, then runs the
//! real retention purge with the default 7 days, so about three quarters
//! are rolled up. Then prints the median latency of `stats` through
//! GraphQL (an HTTP POST to the running server, the JSON read whole) next
//! to the same statement run bare on the same connection pool, and their
//! ratio. Run with `cargo bench --bench stats`; PostgreSQL is found as the
//! tests find it (`TEST_POSTGRES_URL`). `STATS_BENCH_DBS=sqlite` or
//! `postgres` runs only one of them.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use entity::{AuthType, RequestStatus, work_request};
use modelfleet::app::Application;
use modelfleet::auth::Role;
use modelfleet::auth::signup::NewAccount;
use modelfleet::config::{Config, RetentionConfig};
use modelfleet::stats::retention::Retention;
use modelfleet::stats::{Grouping, Period, StatsDimension, StatsFilter};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, TransactionTrait};
use serde_json::{Value, json};
use uuid::Uuid;

const RUNS: usize = 7;
const MODELS: usize = 20;

fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// One random request created within the last 30 days.
fn request(
    rng: &mut StdRng,
    now: chrono::DateTime<Utc>,
    models: &[String],
    users: &[Uuid],
    sessions: &[Uuid],
) -> work_request::ActiveModel {
    let created = now - TimeDelta::milliseconds(rng.random_range(0..30 * 86_400_000));
    let anonymous = rng.random_bool(0.4);
    let principal = *if anonymous { sessions } else { users }
        .choose(rng)
        .expect("principal");
    let roll: f64 = rng.random();
    let status = match roll {
        r if r < 0.85 => RequestStatus::Succeeded,
        r if r < 0.93 => RequestStatus::Failed,
        r if r < 0.99 => RequestStatus::Cancelled,
        _ => RequestStatus::Running,
    };
    let queue = rng.random_range(0..2_000i64);
    let job = rng.random_range(5..30_000i64);
    let started = created + TimeDelta::milliseconds(queue);
    let finished = started + TimeDelta::milliseconds(job);
    let done = status != RequestStatus::Running;
    work_request::ActiveModel {
        id: Set(Uuid::now_v7()),
        model_id: Set(models.choose(rng).expect("model").clone()),
        auth_type: Set(if anonymous {
            AuthType::Anon
        } else {
            AuthType::User
        }),
        principal_id: Set(principal),
        session_id: Set(principal),
        client_request_id: Set(None),
        status: Set(status),
        input: Set(json!({ "text": "a short prompt" })),
        output: Set(done.then(|| json!({ "label": "ok" }))),
        error: Set(None),
        logs: Set(None),
        attempts: Set(1),
        instance_id: Set(None),
        created_at: Set(created),
        job_started_at: Set(Some(started)),
        job_finished_at: Set(done.then_some(finished)),
        completed_at: Set(done.then_some(finished + TimeDelta::milliseconds(2))),
        queue_ms: Set(Some(queue)),
        job_ms: Set(done.then_some(job)),
        total_ms: Set(done.then_some(queue + job + 2)),
    }
}

async fn run(label: &str, url: &str, rows: usize) {
    let mut config = Config::default();
    config.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.database.url = url.to_owned();
    // The benchmark purges when it is ready to.
    config.retention.requests_days = 0;
    let app = Application::build(config).await.expect("server builds");
    let addr = app.local_addr();
    let state = app.state().clone();
    let db = state.db.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    // Models that never start an instance: the seeded requests are data.
    let template = state
        .config
        .model_specs()
        .expect("models")
        .into_iter()
        .next()
        .expect("an example model");
    let models: Vec<String> = (0..MODELS).map(|i| format!("model-{i:02}")).collect();
    for id in &models {
        let mut spec = template.clone();
        spec.id = id.clone();
        spec.max_instances = 0;
        state.models.upsert(&spec, "api").await.expect("model");
    }

    let seeding = Instant::now();
    let mut rng = StdRng::seed_from_u64(7);
    let users: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    let sessions: Vec<Uuid> = (0..2000).map(|_| Uuid::new_v4()).collect();
    let now = Utc::now();
    let mut left = rows;
    while left > 0 {
        let txn = db.begin().await.expect("begin");
        for _ in 0..50 {
            let n = left.min(500);
            if n == 0 {
                break;
            }
            let batch: Vec<_> = (0..n)
                .map(|_| request(&mut rng, now, &models, &users, &sessions))
                .collect();
            work_request::Entity::insert_many(batch)
                .exec(&txn)
                .await
                .expect("seeded");
            left -= n;
        }
        txn.commit().await.expect("commit");
    }
    let seeded = seeding.elapsed();

    let purging = Instant::now();
    let retention = Retention::new(
        db.clone(),
        RetentionConfig {
            batch_size: 5000,
            ..RetentionConfig::default()
        },
    );
    let report = retention.run_once(now).await.expect("purge");
    let purged = purging.elapsed();
    let count = |table: &str| {
        let db = db.clone();
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        async move {
            db.query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                sql,
            ))
            .await
            .expect("count")
            .expect("row")
            .try_get::<i64>("", "n")
            .expect("n")
        }
    };
    db.execute_unprepared("ANALYZE").await.expect("analyze");
    say(&format!(
        "{label}: seeded {rows} requests in {:.1} s; purge rolled up {} in {:.1} s ({:.0} requests/s) \
         into {} rollup rows; {} live rows remain",
        seeded.as_secs_f64(),
        report.requests,
        purged.as_secs_f64(),
        report.requests as f64 / purged.as_secs_f64(),
        count("request_rollups").await,
        count("work_requests").await,
    ));

    state
        .auth
        .create_user(
            NewAccount {
                username: "bench".to_owned(),
                email: "bench@example.com".to_owned(),
                password: "correct horse battery".to_owned(),
            },
            &[Role::Admin],
        )
        .await
        .expect("admin");
    let http = reqwest::Client::new();
    let gql = |query: &'static str, vars: Value, token: Option<String>| {
        let http = http.clone();
        async move {
            let mut req = http
                .post(format!("http://{addr}/graphql"))
                .json(&json!({ "query": query, "variables": vars }));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
                .await
                .expect("sent")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let login = gql(
        "mutation { login(input: { login: \"bench\", password: \"correct horse battery\" }) { token } }",
        json!({}),
        None,
    )
    .await;
    let token = login["data"]["login"]["token"]
        .as_str()
        .expect("token")
        .to_owned();

    let query = "query($f: StatsFilter, $g: [StatsDimension!]) { stats(filter: $f, groupBy: $g) { \
        modelId day totalCount successCount failCount cancelledCount activeCount \
        jobTime { totalMs minMs maxMs avgMs } totalTime { totalMs minMs maxMs avgMs } \
        queueTime { totalMs minMs maxMs avgMs } jobTimeP50Ms jobTimeP95Ms rolledUpCount } }";
    let from = (now - TimeDelta::days(14)).date_naive().to_string();
    let cases: [(&str, Vec<StatsDimension>, Value); 3] = [
        ("MODEL", vec![StatsDimension::Model], json!({})),
        (
            "MODEL, DAY",
            vec![StatsDimension::Model, StatsDimension::Day],
            json!({}),
        ),
        (
            "MODEL, DAY in Europe/Paris, last 14 days",
            vec![StatsDimension::Model, StatsDimension::Day],
            json!({ "timeZone": "Europe/Paris", "from": from }),
        ),
    ];
    for (name, dims, filter_json) in cases {
        let grouping: Grouping = dims.iter().copied().collect();
        let filter = StatsFilter {
            period: Period::parse(
                filter_json["from"].as_str(),
                None,
                filter_json["timeZone"].as_str(),
            )
            .expect("period"),
            ..StatsFilter::default()
        };
        let names: Vec<&str> = dims
            .iter()
            .map(|d| match d {
                StatsDimension::Model => "MODEL",
                StatsDimension::AuthType => "AUTH_TYPE",
                StatsDimension::Principal => "PRINCIPAL",
                StatsDimension::Day => "DAY",
            })
            .collect();
        let vars = json!({ "f": filter_json, "g": names });
        let mut graphql = Vec::new();
        let mut bare = Vec::new();
        let mut groups = 0;
        // One warm-up of each, then alternate so both see the same cache.
        for i in 0..=RUNS {
            let started = Instant::now();
            let body = gql(query, vars.clone(), Some(token.clone())).await;
            let took = started.elapsed();
            groups = body["data"]["stats"]
                .as_array()
                .unwrap_or_else(|| panic!("no stats: {body}"))
                .len();
            let started = Instant::now();
            let rows = db
                .query_all_raw(state.stats.statement(&filter, &grouping))
                .await
                .expect("bare SQL");
            let bare_took = started.elapsed();
            assert_eq!(rows.len(), groups, "the same groups both ways");
            if i > 0 {
                graphql.push(took);
                bare.push(bare_took);
            }
        }
        let (g, b) = (median(graphql), median(bare));
        say(&format!(
            "{label}: stats by {name:<40} {groups:>4} groups   GraphQL {:>8.1} ms   bare SQL {:>8.1} ms   ratio {:.2}",
            g.as_secs_f64() * 1000.0,
            b.as_secs_f64() * 1000.0,
            g.as_secs_f64() / b.as_secs_f64(),
        ));
    }
    let _ = stop.send(());
    let _ = server.await;
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("STATS_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // `STATS_BENCH_DBS=sqlite` (or `postgres`) runs one of the two.
    let only = std::env::var("STATS_BENCH_DBS").unwrap_or_default();
    let dir = tempfile::tempdir().expect("dir");
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    if only.is_empty() || only.contains("sqlite") {
        run("sqlite", &sqlite, rows).await;
    }
    if !(only.is_empty() || only.contains("postgres")) {
        return;
    }

    let postgres = support::ScratchDatabase::create("stats").await;
    run("postgres", &postgres.url, rows).await;
    postgres.drop_now().await;
}
