//! The retention task: old finished requests go to the rollup, once, and
//! finished instances' history goes after its own retention.

use chrono::{DateTime, TimeDelta, Utc};
use entity::{InstanceStatus, RequestStatus, instance, instance_event, work_request};
use modelfleet::config::RetentionConfig;
use modelfleet::stats::retention::Retention;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    Statement,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stats::{Req, idle_models, random_request, seed};
use crate::support::{TestApp, TestDb, test_config};

async fn rolled_up_total(app: &TestApp) -> i64 {
    let backend = app.state.db.get_database_backend();
    let row = app
        .state
        .db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT CAST(COALESCE(SUM(total_count), 0) AS BIGINT) AS n FROM request_rollups",
        ))
        .await
        .expect("query")
        .expect("row");
    row.try_get("", "n").expect("n")
}

/// `n` random requests created between 30 and 8 days ago.
fn old_requests(n: usize, now: DateTime<Utc>) -> Vec<Req> {
    requests_aged(n, now, 8..30)
}

/// `n` random requests created within `days` days ago.
fn requests_aged(n: usize, now: DateTime<Utc>, days: std::ops::Range<i64>) -> Vec<Req> {
    let mut rng = StdRng::seed_from_u64(seed());
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let sessions: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    (0..n)
        .map(|_| {
            let age = rng.random_range(days.start * 86_400_000..days.end * 86_400_000);
            random_request(
                &mut rng,
                now - TimeDelta::milliseconds(age),
                &users,
                &sessions,
            )
        })
        .collect()
}

async fn insert(app: &TestApp, requests: &[Req]) {
    for chunk in requests.chunks(200) {
        work_request::Entity::insert_many(chunk.iter().map(Req::row))
            .exec(&app.state.db)
            .await
            .expect("seeded");
    }
}

db_test!(purges_running_at_once_roll_each_request_up_once, db => {
    let app = TestApp::spawn_with(db, |c| c.retention.requests_days = 0).await;
    idle_models(&app, &["m-a", "m-b", "m-c"]).await;
    let now = Utc::now();
    let mut requests = old_requests(400, now);
    // Created 20 days ago but finished yesterday, after a long wait: its
    // retention counts from completion, so it stays.
    let mut waited = requests[0].clone();
    waited.created_at = now - TimeDelta::days(20);
    waited.status = RequestStatus::Succeeded;
    waited.queue_ms = Some(19 * 86_400_000);
    waited.job_ms = Some(1000);
    waited.total_ms = Some(19 * 86_400_000 + 1000);
    requests.push(waited);
    insert(&app, &requests).await;
    let cutoff = now - TimeDelta::days(7);
    let finished = requests.iter().filter(|r| r.purged_by(cutoff)).count();
    assert_eq!(finished, requests.iter().filter(|r| r.is_finished()).count() - 1);

    // Small batches, so that the two runs interleave many times.
    let config = RetentionConfig { batch_size: 7, ..RetentionConfig::default() };
    let a = Retention::new(app.state.db.clone(), config.clone());
    let b = Retention::new(app.state.db.clone(), config);
    let (ra, rb) = tokio::join!(a.run_once(now), b.run_once(now));
    let (ra, rb) = (ra.expect("purge a"), rb.expect("purge b"));
    assert_eq!((ra.requests + rb.requests) as usize, finished);
    assert_eq!(rolled_up_total(&app).await as usize, finished, "each request rolled up once");
    // Queued and running requests stay, however old.
    let left = work_request::Entity::find().count(&app.state.db).await.expect("count");
    assert_eq!(left as usize, requests.len() - finished);
});

const TOTALS: &str = "{ stats(groupBy: [MODEL, DAY]) { modelId day totalCount successCount failCount \
    cancelledCount activeCount jobTime { totalMs minMs maxMs count } totalTime { totalMs minMs maxMs count } \
    queueTime { totalMs minMs maxMs count } } }";

db_test!(the_server_purges_on_start_and_the_figures_stay, db => {
    let (test_db, url) = TestDb::create(db).await;
    let mut config = test_config(&url);
    config.retention.requests_days = 0;
    let app = TestApp::spawn_over(config.clone()).await;
    let admin = app.admin("root").await;
    idle_models(&app, &["m-a", "m-b", "m-c"]).await;
    let now = Utc::now();
    let mut requests = old_requests(150, now);
    // And some from today, which stay.
    requests.extend(requests_aged(20, now, 0..6));
    insert(&app, &requests).await;
    let before: Value = app.gql_as(&admin, TOTALS, json!({})).await;
    assert!(before["data"]["stats"].as_array().is_some_and(|rows| rows.len() > 10), "{before}");
    app.stop().await;

    // Restarted with the default retention of 7 days: the first purge runs
    // at start.
    config.retention = RetentionConfig::default();
    let app = TestApp::spawn_over(config).await;
    let cutoff = now - TimeDelta::days(7);
    let stays = requests.iter().filter(|r| !r.purged_by(cutoff)).count() as u64;
    app.eventually("the purge at start", 30, || async {
        work_request::Entity::find().count(&app.state.db).await.expect("count") == stays
    })
    .await;
    let token = crate::support::token_of(&app.login("root", crate::support::PASSWORD).await, "login");
    let after: Value = app.gql_as(&token, TOTALS, json!({})).await;
    assert_eq!(after, before, "the same figures from the rollup");
    app.stop().await;
    drop(test_db);
});

async fn add_instance(app: &TestApp, status: InstanceStatus, ended: Option<DateTime<Utc>>) -> Uuid {
    let id = Uuid::now_v7();
    let created = ended.unwrap_or_else(Utc::now) - TimeDelta::hours(1);
    instance::Entity::insert(instance::ActiveModel {
        id: Set(id),
        model_id: Set("m-a".to_owned()),
        backend: Set("local".to_owned()),
        handle: Set(None),
        node: Set(None),
        status: Set(status),
        status_detail: Set(None),
        request_id: Set(None),
        owner: Set(None),
        created_at: Set(created),
        ready_at: Set(None),
        idle_since: Set(None),
        stopped_at: Set(ended),
        stop_reason: Set(None),
    })
    .exec(&app.state.db)
    .await
    .expect("instance");
    let events = (0..25).map(|i| instance_event::ActiveModel {
        instance_id: Set(id),
        at: Set(created + TimeDelta::seconds(i)),
        kind: Set("Normal".to_owned()),
        reason: Set("Output".to_owned()),
        message: Set(format!("line {i}")),
        raw: Set(None),
        ..Default::default()
    });
    instance_event::Entity::insert_many(events)
        .exec(&app.state.db)
        .await
        .expect("events");
    id
}

db_test!(finished_instances_go_after_their_own_retention, db => {
    let app = TestApp::spawn_with(db, |c| c.retention.instance_history_days = 0).await;
    idle_models(&app, &["m-a"]).await;
    let now = Utc::now();
    let old_stopped = add_instance(&app, InstanceStatus::Stopped, Some(now - TimeDelta::days(9))).await;
    let old_failed = add_instance(&app, InstanceStatus::Failed, Some(now - TimeDelta::days(20))).await;
    let recent = add_instance(&app, InstanceStatus::Stopped, Some(now - TimeDelta::days(2))).await;
    // Not finished (an earlier run's record, say): kept, whatever its age.
    let live = add_instance(&app, InstanceStatus::Ready, None).await;

    let retention = Retention::new(
        app.state.db.clone(),
        // Batches smaller than one instance's events.
        RetentionConfig { requests_days: 0, instance_history_days: 7, batch_size: 10, ..RetentionConfig::default() },
    );
    let report = retention.run_once(now).await.expect("purge");
    assert_eq!((report.instances, report.instance_events), (2, 50));
    let ids: Vec<Uuid> = instance::Entity::find()
        .filter(instance::Column::ModelId.eq("m-a"))
        .all(&app.state.db)
        .await
        .expect("instances")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(!ids.contains(&old_stopped) && !ids.contains(&old_failed), "{ids:?}");
    assert!(ids.contains(&recent) && ids.contains(&live), "{ids:?}");
    for (id, events) in [(old_stopped, 0), (recent, 25), (live, 25)] {
        let n = instance_event::Entity::find()
            .filter(instance_event::Column::InstanceId.eq(id))
            .count(&app.state.db)
            .await
            .expect("count");
        assert_eq!(n, events, "events of {id}");
    }
});

db_test!(a_purge_without_its_maintenance_row_refuses_to_run, db => {
    let app = TestApp::spawn_with(db, |c| c.retention.requests_days = 0).await;
    idle_models(&app, &["m-a", "m-b", "m-c"]).await;
    let now = Utc::now();
    let requests = old_requests(20, now);
    insert(&app, &requests).await;
    app.state
        .db
        .execute_unprepared("DELETE FROM maintenance WHERE task = 'requests'")
        .await
        .expect("row deleted");
    // Without the row, replicas would not take turns: nothing is purged.
    let retention = Retention::new(app.state.db.clone(), RetentionConfig::default());
    assert!(retention.run_once(now).await.is_err());
    let left = work_request::Entity::find().count(&app.state.db).await.expect("count");
    assert_eq!(left as usize, requests.len());
});
