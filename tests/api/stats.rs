//! `stats` against a plain computation: random requests in the database,
//! every grouping and a spread of filters, before and after a purge.
//!
//! The data is random but reproducible: each run picks a seed and every
//! failure message names it; `STATS_SEED=<n>` replays one.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use chrono_tz::Tz;
use entity::{AuthType, RequestStatus, work_request};
use modelfleet::config::RetentionConfig;
use modelfleet::stats::retention::Retention;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use sea_orm::{ActiveValue::Set, EntityTrait, PaginatorTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Db, TestApp};

pub const STATS: &str = "query($filter: StatsFilter, $groupBy: [StatsDimension!]) { \
    stats(filter: $filter, groupBy: $groupBy) { modelId authType principalId day \
    totalCount successCount failCount cancelledCount activeCount \
    jobTime { totalMs minMs maxMs avgMs count } totalTime { totalMs minMs maxMs avgMs count } \
    queueTime { totalMs minMs maxMs avgMs count } jobTimeP50Ms jobTimeP95Ms rolledUpCount } }";

const MODELS: [&str; 3] = ["m-a", "m-b", "m-c"];
const ZONES: [&str; 7] = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Adelaide",
    "Pacific/Chatham",
    "America/St_Johns",
];
const DIMENSIONS: [&str; 4] = ["MODEL", "AUTH_TYPE", "PRINCIPAL", "DAY"];

/// Serves `count` made-up models that can never start an instance
/// (`maxInstances` 0), so seeded queued requests stay queued.
pub async fn idle_models(app: &TestApp, ids: &[&str]) {
    let template = app
        .state
        .config
        .model_specs()
        .expect("models")
        .into_iter()
        .find(|m| m.id == "sleepy")
        .expect("sleepy");
    for id in ids {
        let mut spec = template.clone();
        spec.id = (*id).to_owned();
        spec.name = (*id).to_owned();
        spec.max_instances = 0;
        app.state.models.upsert(&spec, "api").await.expect("model");
    }
}

/// A request as the test knows it.
#[derive(Debug, Clone)]
pub struct Req {
    pub model: &'static str,
    pub auth: AuthType,
    pub principal: Uuid,
    pub status: RequestStatus,
    pub created_at: DateTime<Utc>,
    pub queue_ms: Option<i64>,
    pub job_ms: Option<i64>,
    pub total_ms: Option<i64>,
}

impl Req {
    pub fn row(&self) -> work_request::ActiveModel {
        let started = self
            .queue_ms
            .map(|q| self.created_at + TimeDelta::milliseconds(q));
        let finished = started
            .zip(self.job_ms)
            .map(|(s, j)| s + TimeDelta::milliseconds(j));
        let completed = self
            .total_ms
            .map(|t| self.created_at + TimeDelta::milliseconds(t));
        work_request::ActiveModel {
            id: Set(Uuid::now_v7()),
            model_id: Set(self.model.to_owned()),
            auth_type: Set(self.auth),
            principal_id: Set(self.principal),
            session_id: Set(if self.auth == AuthType::Anon {
                self.principal
            } else {
                Uuid::new_v4()
            }),
            client_request_id: Set(None),
            status: Set(self.status),
            input: Set(json!({ "secret": "input" })),
            output: Set(None),
            error: Set(None),
            logs: Set(None),
            attempts: Set(1),
            instance_id: Set(None),
            created_at: Set(self.created_at),
            job_started_at: Set(started),
            job_finished_at: Set(finished),
            completed_at: Set(completed),
            queue_ms: Set(self.queue_ms),
            job_ms: Set(self.job_ms),
            total_ms: Set(self.total_ms),
        }
    }

    pub fn is_finished(&self) -> bool {
        !matches!(self.status, RequestStatus::Queued | RequestStatus::Running)
    }

    /// Whether a purge with this cutoff takes it: finished before it.
    pub fn purged_by(&self, cutoff: DateTime<Utc>) -> bool {
        self.is_finished()
            && self
                .total_ms
                .is_some_and(|t| self.created_at + TimeDelta::milliseconds(t) < cutoff)
    }
}

/// A random request created at `at`.
pub fn random_request(
    rng: &mut StdRng,
    at: DateTime<Utc>,
    users: &[Uuid],
    sessions: &[Uuid],
) -> Req {
    let auth = if rng.random_bool(0.6) {
        AuthType::User
    } else {
        AuthType::Anon
    };
    let principal = *match auth {
        AuthType::User => users.choose(rng),
        AuthType::Anon => sessions.choose(rng),
    }
    .expect("principals");
    let status = *[
        RequestStatus::Succeeded,
        RequestStatus::Succeeded,
        RequestStatus::Succeeded,
        RequestStatus::Failed,
        RequestStatus::Cancelled,
        RequestStatus::Running,
        RequestStatus::Queued,
    ]
    .choose(rng)
    .expect("status");
    let queue = rng.random_range(0..5_000);
    let job = rng.random_range(1..60_000);
    let (queue_ms, job_ms, total_ms) = match status {
        RequestStatus::Succeeded => (Some(queue), Some(job), Some(queue + job + 3)),
        // A failure after a job ran: its times must not count.
        RequestStatus::Failed => (Some(queue), Some(job), Some(queue + job + 3)),
        RequestStatus::Cancelled => (None, None, Some(queue)),
        RequestStatus::Running => (Some(queue), None, None),
        RequestStatus::Queued => (None, None, None),
    };
    Req {
        model: MODELS.choose(rng).expect("model"),
        auth,
        principal,
        status,
        created_at: at,
        queue_ms,
        job_ms,
        total_ms,
    }
}

/// What `stats` should answer, computed from the requests one by one.
#[derive(Debug, Clone, Default)]
struct Expected {
    total: i64,
    success: i64,
    fail: i64,
    cancelled: i64,
    active: i64,
    job: Vec<i64>,
    /// Job times of the successes still live, which percentiles cover.
    live_job: Vec<i64>,
    total_time: Vec<i64>,
    queue: Vec<i64>,
    rolled: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Query {
    pub zone: Option<&'static str>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub auth: Option<AuthType>,
    pub models: Vec<&'static str>,
    pub users: Vec<Uuid>,
    pub sessions: Vec<Uuid>,
}

impl Query {
    fn random(rng: &mut StdRng, today: NaiveDate, users: &[Uuid], sessions: &[Uuid]) -> Query {
        let mut q = Query {
            zone: Some(*ZONES.choose(rng).expect("zone")).filter(|_| rng.random_bool(0.8)),
            ..Query::default()
        };
        if rng.random_bool(0.7) {
            let a = today - TimeDelta::days(rng.random_range(0..45));
            let b = a + TimeDelta::days(rng.random_range(0..20));
            q.from = Some(a).filter(|_| rng.random_bool(0.8));
            q.to = Some(b).filter(|_| rng.random_bool(0.8));
        }
        if rng.random_bool(0.3) {
            q.auth = Some(if rng.random_bool(0.5) {
                AuthType::User
            } else {
                AuthType::Anon
            });
        }
        if rng.random_bool(0.3) {
            q.models = MODELS
                .iter()
                .copied()
                .filter(|_| rng.random_bool(0.5))
                .collect();
        }
        if rng.random_bool(0.3) {
            q.users = users
                .iter()
                .copied()
                .filter(|_| rng.random_bool(0.5))
                .collect();
        }
        if rng.random_bool(0.3) {
            q.sessions = sessions
                .iter()
                .copied()
                .filter(|_| rng.random_bool(0.5))
                .collect();
        }
        q
    }

    pub fn variables(&self) -> Value {
        let mut filter = serde_json::Map::new();
        if let Some(zone) = self.zone {
            filter.insert("timeZone".into(), json!(zone));
        }
        if let Some(from) = self.from {
            filter.insert("from".into(), json!(from.to_string()));
        }
        if let Some(to) = self.to {
            filter.insert("to".into(), json!(to.to_string()));
        }
        if let Some(auth) = self.auth {
            filter.insert(
                "authType".into(),
                json!(if auth == AuthType::User {
                    "USER"
                } else {
                    "ANON"
                }),
            );
        }
        if !self.models.is_empty() {
            filter.insert("modelIds".into(), json!(self.models));
        }
        if !self.users.is_empty() {
            filter.insert("userIds".into(), json!(self.users));
        }
        if !self.sessions.is_empty() {
            filter.insert("sessionIds".into(), json!(self.sessions));
        }
        Value::Object(filter)
    }

    fn zone(&self) -> Tz {
        self.zone.unwrap_or("UTC").parse().expect("zone")
    }

    fn matches(&self, r: &Req) -> bool {
        let day = r.created_at.with_timezone(&self.zone()).date_naive();
        let principal_listed = self.users.is_empty() && self.sessions.is_empty()
            || (r.auth == AuthType::User && self.users.contains(&r.principal))
            || (r.auth == AuthType::Anon && self.sessions.contains(&r.principal));
        self.from.is_none_or(|f| day >= f)
            && self.to.is_none_or(|t| day <= t)
            && self.auth.is_none_or(|a| a == r.auth)
            && (self.models.is_empty() || self.models.contains(&r.model))
            && principal_listed
    }
}

type Key = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn expected(
    requests: &[Req],
    query: &Query,
    dims: &[&str],
    purged: &dyn Fn(&Req) -> bool,
) -> BTreeMap<Key, Expected> {
    let mut groups: BTreeMap<Key, Expected> = BTreeMap::new();
    for r in requests.iter().filter(|r| query.matches(r)) {
        let key = (
            dims.contains(&"MODEL").then(|| r.model.to_owned()),
            dims.contains(&"AUTH_TYPE").then(|| {
                if r.auth == AuthType::User {
                    "USER"
                } else {
                    "ANON"
                }
                .to_owned()
            }),
            dims.contains(&"PRINCIPAL").then(|| r.principal.to_string()),
            dims.contains(&"DAY").then(|| {
                r.created_at
                    .with_timezone(&query.zone())
                    .date_naive()
                    .to_string()
            }),
        );
        let g = groups.entry(key).or_default();
        g.total += 1;
        match r.status {
            RequestStatus::Succeeded => {
                g.success += 1;
                g.job.extend(r.job_ms);
                if !purged(r) {
                    g.live_job.extend(r.job_ms);
                }
                g.total_time.extend(r.total_ms);
                g.queue.extend(r.queue_ms);
            }
            RequestStatus::Failed => g.fail += 1,
            RequestStatus::Cancelled => g.cancelled += 1,
            RequestStatus::Queued | RequestStatus::Running => g.active += 1,
        }
        if purged(r) {
            g.rolled += 1;
        }
    }
    groups
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] as f64 + (sorted[hi] - sorted[lo]) as f64 * (pos - lo as f64)
}

fn check_durations(what: &str, got: &Value, values: &[i64]) {
    if values.is_empty() {
        assert!(got.is_null(), "{what}: expected null, got {got}");
        return;
    }
    let sum: i64 = values.iter().sum();
    let want = json!({
        "totalMs": sum,
        "minMs": values.iter().min(),
        "maxMs": values.iter().max(),
        "count": values.len(),
    });
    for field in ["totalMs", "minMs", "maxMs", "count"] {
        assert_eq!(got[field], want[field], "{what}.{field}: got {got}");
    }
    let avg = got["avgMs"].as_f64().expect("avg");
    let want_avg = sum as f64 / values.len() as f64;
    assert!(
        (avg - want_avg).abs() < 1e-6,
        "{what}.avgMs: {avg} vs {want_avg}"
    );
}

/// What the comparisons share.
struct Check<'a> {
    app: &'a TestApp,
    token: &'a str,
    db: Db,
    requests: &'a [Req],
}

impl Check<'_> {
    /// Runs `stats` for the query and grouping and compares every figure.
    async fn compare(
        &self,
        query: &Query,
        dims: &[&str],
        purged: &dyn Fn(&Req) -> bool,
        context: &str,
    ) {
        let Check {
            app,
            token,
            db,
            requests,
        } = *self;
        let body = app
            .gql_as(
                token,
                STATS,
                json!({ "filter": query.variables(), "groupBy": dims }),
            )
            .await;
        let rows = body["data"]["stats"]
            .as_array()
            .unwrap_or_else(|| panic!("{context}: no stats in {body}"));
        let want = expected(requests, query, dims, purged);
        let mut got: BTreeMap<Key, &Value> = BTreeMap::new();
        for row in rows {
            let key_of = |f: &str| row[f].as_str().map(str::to_owned);
            let key = (
                key_of("modelId"),
                key_of("authType"),
                key_of("principalId"),
                key_of("day"),
            );
            assert!(
                got.insert(key, row).is_none(),
                "{context}: duplicate group {row}"
            );
        }
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{context}: groups differ"
        );
        for (key, w) in &want {
            let row = got[key];
            let what = format!("{context} group {key:?}");
            for (field, value) in [
                ("totalCount", w.total),
                ("successCount", w.success),
                ("failCount", w.fail),
                ("cancelledCount", w.cancelled),
                ("activeCount", w.active),
                ("rolledUpCount", w.rolled),
            ] {
                assert_eq!(row[field], json!(value), "{what}.{field}: {row}");
            }
            check_durations(&format!("{what}.jobTime"), &row["jobTime"], &w.job);
            check_durations(
                &format!("{what}.totalTime"),
                &row["totalTime"],
                &w.total_time,
            );
            check_durations(&format!("{what}.queueTime"), &row["queueTime"], &w.queue);
            let mut job = w.live_job.clone();
            job.sort_unstable();
            for (field, p) in [("jobTimeP50Ms", 0.5), ("jobTimeP95Ms", 0.95)] {
                if db == Db::Sqlite || job.is_empty() {
                    assert!(row[field].is_null(), "{what}.{field}: expected null: {row}");
                } else {
                    let got = row[field]
                        .as_f64()
                        .unwrap_or_else(|| panic!("{what}.{field}: {row}"));
                    let want = percentile(&job, p);
                    assert!((got - want).abs() < 1e-6, "{what}.{field}: {got} vs {want}");
                }
            }
        }
    }
}

/// Every subset of the dimensions, the empty one included.
fn groupings() -> Vec<Vec<&'static str>> {
    (0..16u32)
        .map(|bits| {
            DIMENSIONS
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, d)| *d)
                .collect()
        })
        .collect()
}

pub fn seed() -> u64 {
    std::env::var("STATS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

db_test!(stats_match_a_plain_computation_before_and_after_a_purge, db => {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // The test runs the purge itself, at a moment of its choosing.
    let app = TestApp::spawn_with(db, |c| c.retention.requests_days = 0).await;
    let token = app.admin("root").await;
    idle_models(&app, &MODELS).await;
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let sessions: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();

    // 40 days of requests, and some on the edges of local days.
    let now = Utc::now();
    let mut requests: Vec<Req> = (0..500)
        .map(|_| {
            let at = now - TimeDelta::milliseconds(rng.random_range(0..40 * 86_400_000));
            random_request(&mut rng, at, &users, &sessions)
        })
        .collect();
    // A burst in one quarter hour from one principal: the purge's batches
    // split it, so its rollup slot is merged into more than once.
    let burst = now - TimeDelta::days(10);
    for i in 0..60 {
        let mut r = random_request(&mut rng, burst + TimeDelta::seconds(i * 10), &users, &sessions);
        r.model = MODELS[0];
        r.auth = AuthType::User;
        r.principal = users[0];
        requests.push(r);
    }
    for zone in ZONES {
        let zone: Tz = zone.parse().expect("zone");
        let day = (now - TimeDelta::days(rng.random_range(1..30)))
            .with_timezone(&zone)
            .date_naive();
        let midnight = day
            .and_hms_opt(0, 0, 0)
            .and_then(|t| t.and_local_timezone(zone).earliest())
            .expect("midnight")
            .with_timezone(&Utc);
        for at in [midnight, midnight - TimeDelta::milliseconds(1)] {
            requests.push(random_request(&mut rng, at, &users, &sessions));
        }
    }
    for chunk in requests.chunks(200) {
        work_request::Entity::insert_many(chunk.iter().map(Req::row))
            .exec(&app.state.db)
            .await
            .expect("seeded");
    }

    let today = now.date_naive();
    let mut queries = vec![Query::default()];
    queries.extend((0..7).map(|_| Query::random(&mut rng, today, &users, &sessions)));
    let live = |_: &Req| false;
    let check = Check { app: &app, token: &token, db, requests: &requests };
    for (i, query) in queries.iter().enumerate() {
        for dims in groupings() {
            let context = format!("seed {seed}, before purge, query {i} {query:?}, groupBy {dims:?}");
            check.compare(query, &dims, &live, &context).await;
        }
    }

    // Purge everything finished more than 7 days old.
    let retention = Retention::new(
        app.state.db.clone(),
        RetentionConfig { requests_days: 7, batch_size: 37, ..RetentionConfig::default() },
    );
    let report = retention.run_once(now).await.expect("purge");
    let cutoff = now - TimeDelta::days(7);
    let purged = |r: &Req| r.purged_by(cutoff);
    let purged_count = requests.iter().filter(|r| purged(r)).count() as u64;
    assert!(purged_count > 100, "seed {seed}: too few to purge: {purged_count}");
    assert_eq!(report.requests, purged_count, "seed {seed}");
    let left = work_request::Entity::find().count(&app.state.db).await.expect("count");
    assert_eq!(left, requests.len() as u64 - purged_count, "seed {seed}");
    for (i, query) in queries.iter().enumerate() {
        for dims in groupings() {
            let context = format!("seed {seed}, after purge, query {i} {query:?}, groupBy {dims:?}");
            check.compare(query, &dims, &purged, &context).await;
        }
    }
    // A second run finds nothing more.
    assert_eq!(retention.run_once(now).await.expect("purge").requests, 0);
});
