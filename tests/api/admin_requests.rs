//! `requests`: every principal's requests for administrators, paged newest
//! first, filtered, and with no way to reach a request's data.
//!
//! Requests are inserted straight into the database (and a few submitted
//! through the API) for models that never start an instance, so they stay
//! as written.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use entity::{AuthType, RequestStatus, work_request};
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stats::{Req, idle_models};
use crate::support::{Db, TestApp, code};

const PAGE: &str = "query($filter: RequestsFilter, $first: Int, $after: String) { \
    requests(filter: $filter, first: $first, after: $after) { \
    edges { cursor node { id } } pageInfo { hasNextPage hasPreviousPage endCursor } } }";

const FULL: &str = "query($filter: RequestsFilter) { requests(filter: $filter, first: 10) { \
    edges { node { id modelId model { id name } authType userId sessionId status succeeded \
    attempts createdAt jobStartedAt jobFinishedAt completedAt queueTimeMs jobTimeMs \
    totalTimeMs instanceId } } } }";

/// A request the test wrote, with what the listing should say about it.
#[derive(Debug, Clone)]
struct Seeded {
    id: Uuid,
    req: Req,
    session_id: Uuid,
}

/// An admin's server with requests kept forever (the tests use dates in the
/// past) and two models that never run anything.
async fn spawn(db: Db) -> (TestApp, String) {
    let app = TestApp::spawn_with(db, |c| c.retention.requests_days = 0).await;
    let admin = app.admin("root").await;
    idle_models(&app, &["m-a", "m-b"]).await;
    (app, admin)
}

fn req(model: &'static str, auth: AuthType, principal: Uuid, status: RequestStatus) -> Req {
    let finished = !matches!(status, RequestStatus::Queued | RequestStatus::Running);
    Req {
        model,
        auth,
        principal,
        status,
        created_at: Utc::now(),
        queue_ms: finished.then_some(40),
        job_ms: finished.then_some(900),
        total_ms: finished.then_some(950),
    }
}

/// Writes the requests; a user's request gets a login session id of its own.
async fn insert(app: &TestApp, reqs: &[Req]) -> Vec<Seeded> {
    let seeded: Vec<Seeded> = reqs
        .iter()
        .map(|r| Seeded {
            id: Uuid::new_v4(),
            req: r.clone(),
            session_id: match r.auth {
                AuthType::Anon => r.principal,
                AuthType::User => Uuid::new_v4(),
            },
        })
        .collect();
    work_request::Entity::insert_many(seeded.iter().map(|s| {
        let mut row = s.req.row();
        row.id = Set(s.id);
        row.session_id = Set(s.session_id);
        row
    }))
    .exec(&app.state.db)
    .await
    .expect("seeded");
    seeded
}

/// Newest first, as the listing orders them.
fn newest_first(seeded: &[Seeded], keep: impl Fn(&Seeded) -> bool) -> Vec<String> {
    let mut kept: Vec<&Seeded> = seeded.iter().filter(|s| keep(s)).collect();
    kept.sort_by_key(|s| std::cmp::Reverse((s.req.created_at, s.id)));
    kept.iter().map(|s| s.id.to_string()).collect()
}

/// One page: its ids and page info.
async fn page(app: &TestApp, token: &str, filter: &Value, first: i64, after: &Value) -> Value {
    let body = app
        .gql_as(
            token,
            PAGE,
            json!({ "filter": filter, "first": first, "after": after }),
        )
        .await;
    assert!(body["errors"].is_null(), "{filter}: {body}");
    body["data"]["requests"].clone()
}

fn ids(page: &Value) -> Vec<String> {
    page["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("no edges in {page}"))
        .iter()
        .map(|e| e["node"]["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Every id the listing gives for `filter`, following the cursors.
async fn list(app: &TestApp, token: &str, filter: Value) -> Vec<String> {
    let mut all = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = page(app, token, &filter, 100, &after).await;
        all.extend(ids(&page));
        if page["pageInfo"]["hasNextPage"] != true {
            return all;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
}

/// A whole second, a while ago: both databases keep it exactly.
fn base() -> DateTime<Utc> {
    let now = Utc::now() - TimeDelta::days(2);
    now.with_nanosecond(0).expect("whole second")
}

db_test!(admins_page_through_every_request_newest_first, db => {
    let (app, admin) = spawn(db).await;
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let sessions: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    let base = base();
    let mut reqs = Vec::new();
    for i in 0..20i64 {
        let (auth, principal) = if i % 3 == 0 {
            (AuthType::Anon, sessions[(i as usize / 3) % 2])
        } else {
            (AuthType::User, users[i as usize % 3])
        };
        let mut r = req(if i % 2 == 0 { "m-a" } else { "m-b" }, auth, principal, RequestStatus::Queued);
        // Three share one instant: the id breaks the tie.
        r.created_at = base + TimeDelta::seconds(if (5..8).contains(&i) { 5 } else { i });
        reqs.push(r);
    }
    let seeded = insert(&app, &reqs).await;
    let mut want = newest_first(&seeded, |_| true);
    // Two through the API as well, from a real user and a real anonymous
    // session: the newest of all.
    let ada = app.signup("ada").await;
    let anon = app.anonymous().await;
    let by_ada = app.submit(&ada, "m-a", json!({ "n": 1 })).await;
    let by_anon = app.submit(&anon, "m-b", json!({ "n": 2 })).await;
    want.splice(0..0, [by_anon, by_ada]);
    assert_eq!(want.len(), 22);

    // Pages of 4; after the first, newer requests arrive.
    let none = json!({});
    let mut seen = Vec::new();
    let mut after = Value::Null;
    let mut second_page_cursor = Value::Null;
    let mut second_page = Value::Null;
    let mut pages = 0;
    loop {
        let page = page(&app, &admin, &none, 4, &after).await;
        assert_eq!(page["pageInfo"]["hasPreviousPage"], json!(!after.is_null()), "{page}");
        if pages == 1 {
            second_page_cursor = after.clone();
            second_page = page.clone();
        }
        seen.extend(ids(&page));
        pages += 1;
        if pages == 1 {
            let mut late = req("m-a", AuthType::User, users[0], RequestStatus::Queued);
            late.created_at = Utc::now() + TimeDelta::seconds(1);
            insert(&app, &[late.clone(), late]).await;
        }
        if page["pageInfo"]["hasNextPage"] != true {
            assert_eq!(ids(&page).len(), 2, "the last page holds the rest: {page}");
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
        assert_eq!(
            after,
            page["edges"][3]["cursor"],
            "the end cursor is the last edge's"
        );
    }
    assert_eq!(pages, 6);
    assert_eq!(seen, want, "no duplicates, no gaps, newest first");
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len());

    // The second page, fetched again with its cursor, is unchanged by the
    // newcomers; a listing from the start shows them first.
    let again = page(&app, &admin, &none, 4, &second_page_cursor).await;
    assert_eq!(again, second_page);
    let fresh = list(&app, &admin, json!({})).await;
    assert_eq!(fresh.len(), 24);
    assert_eq!(fresh[2..], want[..]);

    // `first` is bounded as in `myRequests`; a foreign cursor is refused.
    for (first, after) in [(json!(0), json!(null)), (json!(101), json!(null)), (json!(5), json!("junk"))] {
        let body = app
            .gql_as(&admin, PAGE, json!({ "first": first, "after": after }))
            .await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
        let field = if after.is_null() { "first" } else { "after" };
        assert!(body["errors"][0]["extensions"]["fields"][field].is_array(), "{body}");
    }
});

db_test!(each_filter_narrows_the_listing, db => {
    let (app, admin) = spawn(db).await;
    let (u1, u2) = (Uuid::new_v4(), Uuid::new_v4());
    let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
    let base = base();
    let statuses = [
        RequestStatus::Queued,
        RequestStatus::Running,
        RequestStatus::Succeeded,
        RequestStatus::Failed,
        RequestStatus::Cancelled,
    ];
    let owners = [
        (AuthType::User, u1),
        (AuthType::User, u2),
        (AuthType::Anon, s1),
        (AuthType::Anon, s2),
    ];
    let mut reqs = Vec::new();
    for i in 0..40usize {
        let (auth, principal) = owners[i % 4];
        let mut r = req(
            if i % 3 == 0 { "m-b" } else { "m-a" },
            auth,
            principal,
            statuses[i % 5],
        );
        r.created_at = base + TimeDelta::seconds(i as i64);
        reqs.push(r);
    }
    // Around local midnight in Kolkata (UTC+05:30) on a day some time ago,
    // and around UTC midnight of the same date.
    let zone: Tz = "Asia/Kolkata".parse().expect("zone");
    let day = (base - TimeDelta::days(3)).with_timezone(&zone).date_naive();
    let next = day.succ_opt().expect("next day");
    let local_midnight = |d: NaiveDate| {
        zone.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
            .single()
            .expect("one midnight")
            .with_timezone(&Utc)
    };
    let utc_midnight = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"));
    let ms = TimeDelta::milliseconds(1);
    for at in [
        local_midnight(day) - ms,
        local_midnight(day),
        local_midnight(next) - ms,
        local_midnight(next),
        utc_midnight(day) - ms,
        utc_midnight(day),
        utc_midnight(next) - ms,
        utc_midnight(next),
    ] {
        let mut r = req("m-a", AuthType::User, u2, RequestStatus::Succeeded);
        r.created_at = at;
        reqs.push(r);
    }
    let seeded = insert(&app, &reqs).await;

    let in_days = |s: &Seeded, zone: Tz, from: Option<NaiveDate>, to: Option<NaiveDate>| {
        let local = s.req.created_at.with_timezone(&zone).date_naive();
        from.is_none_or(|f| local >= f) && to.is_none_or(|t| local <= t)
    };
    let user_login_session = seeded
        .iter()
        .find(|s| s.req.auth == AuthType::User)
        .expect("a user's request")
        .session_id;
    type Keep<'a> = Box<dyn Fn(&Seeded) -> bool + 'a>;
    let cases: Vec<(Value, Keep<'_>)> = vec![
        (json!({}), Box::new(|_| true)),
        (json!({ "userId": u1 }), Box::new(|s| s.req.auth == AuthType::User && s.req.principal == u1)),
        (json!({ "sessionId": s2 }), Box::new(|s| s.req.auth == AuthType::Anon && s.req.principal == s2)),
        // Either, as in stats.
        (
            json!({ "userId": u1, "sessionId": s2 }),
            Box::new(|s| s.req.principal == u1 || s.req.principal == s2),
        ),
        // `sessionId` selects anonymous sessions, not a user's login session.
        (json!({ "sessionId": user_login_session }), Box::new(|_| false)),
        (json!({ "modelId": "m-b" }), Box::new(|s| s.req.model == "m-b")),
        (json!({ "modelId": "no-such-model" }), Box::new(|_| false)),
        (json!({ "status": "FAILED" }), Box::new(|s| s.req.status == RequestStatus::Failed)),
        (json!({ "status": "QUEUED" }), Box::new(|s| s.req.status == RequestStatus::Queued)),
        (json!({ "authType": "ANON" }), Box::new(|s| s.req.auth == AuthType::Anon)),
        (json!({ "authType": "USER" }), Box::new(|s| s.req.auth == AuthType::User)),
        (
            json!({ "authType": "USER", "status": "SUCCEEDED", "modelId": "m-a" }),
            Box::new(|s| {
                s.req.auth == AuthType::User
                    && s.req.status == RequestStatus::Succeeded
                    && s.req.model == "m-a"
            }),
        ),
        (
            json!({ "from": day.to_string(), "to": day.to_string(), "timeZone": "Asia/Kolkata" }),
            Box::new(move |s| in_days(s, zone, Some(day), Some(day))),
        ),
        (
            json!({ "from": day.to_string(), "to": day.to_string() }),
            Box::new(move |s| in_days(s, Tz::UTC, Some(day), Some(day))),
        ),
        (
            json!({ "from": next.to_string(), "timeZone": "Asia/Kolkata" }),
            Box::new(move |s| in_days(s, zone, Some(next), None)),
        ),
        (
            json!({ "to": day.to_string(), "timeZone": "Asia/Kolkata", "userId": u2 }),
            Box::new(move |s| s.req.principal == u2 && in_days(s, zone, None, Some(day))),
        ),
    ];
    for (filter, keep) in &cases {
        let want = newest_first(&seeded, keep);
        let got = list(&app, &admin, filter.clone()).await;
        assert_eq!(got, want, "filter {filter}");
    }
    // The day in Kolkata runs from its midnight to just before the next, so
    // it holds both requests around UTC midnight (05:30 there).
    let kolkata_day = list(
        &app,
        &admin,
        json!({ "from": day.to_string(), "to": day.to_string(), "timeZone": "Asia/Kolkata" }),
    )
    .await;
    let at = |t: DateTime<Utc>| {
        seeded
            .iter()
            .find(|s| s.req.created_at == t)
            .map(|s| s.id.to_string())
            .expect("seeded at that time")
    };
    assert_eq!(
        kolkata_day,
        [
            at(local_midnight(next) - ms),
            at(utc_midnight(day)),
            at(utc_midnight(day) - ms),
            at(local_midnight(day)),
        ]
    );
});

db_test!(summaries_carry_owner_and_times_but_no_request_data, db => {
    let (app, admin) = spawn(db).await;
    let ada = app.signup("ada").await;
    let anon = app.anonymous().await;
    let whoami = |token: String| {
        let app = &app;
        async move {
            let me = app.gql_as(&token, "{ me { id sessionId } }", json!({})).await;
            (me["data"]["me"]["id"].clone(), me["data"]["me"]["sessionId"].clone())
        }
    };
    let (ada_id, ada_session) = whoami(ada.clone()).await;
    let (anon_id, anon_session) = whoami(anon.clone()).await;
    assert_ne!(ada_id, ada_session);
    assert_eq!(anon_id, anon_session);
    let by_ada = app.submit(&ada, "m-a", json!({ "secret": "ada's input" })).await;
    let by_anon = app.submit(&anon, "m-b", json!({ "secret": "anon's input" })).await;
    // A finished one with every time, an error, logs and output.
    let instance = Uuid::new_v4();
    let mut done = req("m-a", AuthType::User, Uuid::new_v4(), RequestStatus::Succeeded);
    done.created_at = base();
    let done = insert(&app, &[done]).await.remove(0);
    work_request::Entity::update(work_request::ActiveModel {
        id: Set(done.id),
        output: Set(Some(json!({ "secret": "the output" }))),
        error: Set(Some("secret error text".to_owned())),
        logs: Set(Some("secret log line".to_owned())),
        instance_id: Set(Some(instance)),
        attempts: Set(2),
        ..Default::default()
    })
    .exec(&app.state.db)
    .await
    .expect("updated");

    let body = app.gql_as(&admin, FULL, json!({})).await;
    assert!(body["errors"].is_null(), "{body}");
    assert!(!body.to_string().contains("secret"), "request data leaked: {body}");
    let nodes: Vec<&Value> = body["data"]["requests"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| &e["node"])
        .collect();
    assert_eq!(nodes.len(), 3, "{body}");

    let anon_node = nodes[0];
    assert_eq!(anon_node["id"], by_anon);
    assert_eq!(anon_node["authType"], "ANON");
    assert_eq!(anon_node["userId"], Value::Null);
    assert_eq!(anon_node["sessionId"], anon_session);
    assert_eq!(anon_node["modelId"], "m-b");
    assert_eq!(anon_node["model"]["id"], "m-b");
    assert_eq!(anon_node["status"], "QUEUED");
    assert_eq!(anon_node["succeeded"], false);
    assert_eq!(anon_node["attempts"], 0);
    for field in ["jobStartedAt", "jobFinishedAt", "completedAt", "queueTimeMs", "jobTimeMs", "totalTimeMs", "instanceId"] {
        assert!(anon_node[field].is_null(), "{field}: {anon_node}");
    }

    let ada_node = nodes[1];
    assert_eq!(ada_node["id"], by_ada);
    assert_eq!(ada_node["authType"], "USER");
    assert_eq!(ada_node["userId"], ada_id);
    assert_eq!(ada_node["sessionId"], ada_session, "a user's request names the login session");
    assert_eq!(ada_node["model"]["name"], "m-a");

    let done_node = nodes[2];
    assert_eq!(done_node["id"], done.id.to_string());
    assert_eq!(done_node["status"], "SUCCEEDED");
    assert_eq!(done_node["succeeded"], true);
    assert_eq!(done_node["attempts"], 2);
    assert_eq!(done_node["instanceId"], instance.to_string());
    assert_eq!(done_node["userId"], done.req.principal.to_string());
    assert_eq!(done_node["sessionId"], done.session_id.to_string());
    assert_eq!(done_node["queueTimeMs"], 40);
    assert_eq!(done_node["jobTimeMs"], 900);
    assert_eq!(done_node["totalTimeMs"], 950);
    let time = |field: &str| -> DateTime<Utc> {
        done_node[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {done_node}"))
    };
    let created = done.req.created_at;
    assert_eq!(time("createdAt"), created);
    assert_eq!(time("jobStartedAt"), created + TimeDelta::milliseconds(40));
    assert_eq!(time("jobFinishedAt"), created + TimeDelta::milliseconds(940));
    assert_eq!(time("completedAt"), created + TimeDelta::milliseconds(950));

    // The type has no such fields: asking for one is refused before any
    // resolver runs, for admins as for anyone.
    for field in ["input", "output", "error", "logs"] {
        let query = format!("{{ requests {{ edges {{ node {{ id {field} }} }} }} }}");
        let body = app.gql_as(&admin, &query, json!({})).await;
        assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{field}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("Unknown field \"{field}\" on type \"RequestSummary\"")),
            "{field}: {body}"
        );
        assert!(body["data"].is_null(), "{body}");
    }
    let body = app
        .gql("{ __type(name: \"RequestSummary\") { fields { name } } }", json!({}))
        .await;
    let fields: BTreeSet<&str> = body["data"]["__type"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no type in {body}"))
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    let want: BTreeSet<&str> = [
        "id", "modelId", "model", "authType", "userId", "sessionId", "status", "succeeded",
        "attempts", "createdAt", "jobStartedAt", "jobFinishedAt", "completedAt", "queueTimeMs",
        "jobTimeMs", "totalTimeMs", "instanceId",
    ]
    .into();
    assert_eq!(fields, want);
});

db_test!(requests_refuse_non_admins_and_name_bad_input, db => {
    let (app, admin) = spawn(db).await;
    let user = app.signup("worker").await;
    let anon = app.anonymous().await;
    app.submit(&user, "m-a", json!({})).await;
    let query = "{ requests { edges { node { id } } } }";

    let body = app.gql(query, json!({})).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
    assert!(body["data"].is_null(), "{body}");
    for token in [&user, &anon] {
        let body = app.gql_as(token, query, json!({})).await;
        assert_eq!(code(&body), "FORBIDDEN", "{body}");
        assert!(body["data"].is_null(), "{body}");
    }
    let body = app.gql_as(&admin, query, json!({})).await;
    assert_eq!(body["data"]["requests"]["edges"].as_array().map(Vec::len), Some(1), "{body}");

    // Every bad part is named at once.
    let fields = |body: &Value| -> Vec<String> {
        assert_eq!(code(body), "BAD_USER_INPUT", "{body}");
        body["errors"][0]["extensions"]["fields"]
            .as_object()
            .unwrap_or_else(|| panic!("no fields in {body}"))
            .keys()
            .cloned()
            .collect()
    };
    let bad = json!({
        "userId": "not-an-id",
        "sessionId": "12",
        "from": "2026-13-01",
        "to": "tomorrow",
        "timeZone": "Mars/Olympus",
    });
    let body = app
        .gql_as(&admin, PAGE, json!({ "filter": bad, "first": 0, "after": "junk" }))
        .await;
    assert_eq!(
        fields(&body),
        ["after", "first", "from", "sessionId", "timeZone", "to", "userId"]
    );
    let body = app
        .gql_as(&admin, PAGE, json!({ "filter": { "from": "2026-12-05", "to": "2026-12-04" } }))
        .await;
    assert_eq!(fields(&body), ["from"]);
    let body = app
        .gql_as(&admin, PAGE, json!({ "filter": { "timeZone": "Europe/Pariss" } }))
        .await;
    assert_eq!(fields(&body), ["timeZone"]);
});
