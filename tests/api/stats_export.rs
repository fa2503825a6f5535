//! The CSV export, the filter options, bad input and refusals.

use chrono::{TimeDelta, Utc};
use entity::{AuthType, work_request};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::stats::{Req, STATS, idle_models, random_request, seed};
use crate::support::{TestApp, code};

const OPTIONS: &str = "query($filter: StatsFilter, $limit: Int) { statsFilterOptions(filter: $filter, limit: $limit) { \
    models { id } authTypes users { id username requestCount } usersComplete \
    anonymousSessions { id requestCount } anonymousSessionsComplete } }";

/// Seeds `n` random requests over the last 20 days for `users` and
/// `sessions`, and returns them.
async fn seed_requests(app: &TestApp, n: usize, users: &[Uuid], sessions: &[Uuid]) -> Vec<Req> {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(seed());
    let now = Utc::now();
    let requests: Vec<Req> = (0..n)
        .map(|_| {
            let at = now - TimeDelta::milliseconds(rng.random_range(0..20 * 86_400_000));
            random_request(&mut rng, at, users, sessions)
        })
        .collect();
    work_request::Entity::insert_many(requests.iter().map(Req::row))
        .exec(&app.state.db)
        .await
        .expect("seeded");
    requests
}

async fn csv(app: &TestApp, token: Option<&str>, query: &str) -> reqwest::Response {
    let mut req = app.http.get(app.url(&format!("/api/stats.csv?{query}")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("sent")
}

/// The GraphQL value of a CSV cell under `column`.
fn graphql_cell(row: &Value, column: &str) -> String {
    let duration = ["jobTime", "totalTime", "queueTime"]
        .iter()
        .find_map(|object| {
            column
                .strip_prefix(object)
                .filter(|rest| !rest.starts_with('P'))
                .map(|rest| (*object, rest))
        });
    let value = match duration {
        Some((object, rest)) => {
            let mut field = rest.to_owned();
            field[..1].make_ascii_lowercase();
            row[object][field.as_str()].clone()
        }
        None => row[column].clone(),
    };
    match value {
        Value::Null => String::new(),
        Value::String(s) => s,
        other => other.to_string(),
    }
}

db_test!(the_csv_holds_exactly_what_stats_answers, db => {
    // No purge between the two reads.
    let app = TestApp::spawn_with(db, |c| c.retention.requests_days = 0).await;
    let admin = app.admin("root").await;
    idle_models(&app, &["m-a", "m-b", "m-c"]).await;
    let users: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let sessions: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    seed_requests(&app, 300, &users, &sessions).await;

    let today = Utc::now().date_naive();
    let from = (today - TimeDelta::days(12)).to_string();
    let to = (today - TimeDelta::days(2)).to_string();
    let filter = json!({ "from": from, "to": to, "timeZone": "America/New_York", "modelIds": ["m-a", "m-c"] });
    let body = app
        .gql_as(&admin, STATS, json!({ "filter": filter, "groupBy": ["DAY", "MODEL", "AUTH_TYPE"] }))
        .await;
    let rows = body["data"]["stats"].as_array().unwrap_or_else(|| panic!("{body}")).clone();
    assert!(rows.len() > 10, "{body}");

    let query = format!(
        "groupBy=DAY,MODEL,AUTH_TYPE&from={from}&to={to}&timeZone=America%2FNew_York&modelId=m-a&modelId=m-c"
    );
    let resp = csv(&app, Some(&admin), &query).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        resp.headers()["content-disposition"],
        format!("attachment; filename=\"modelfleet-stats-{from}_{to}.csv\"").as_str()
    );
    let text = resp.text().await.expect("body");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().expect("header").iter().map(str::to_owned).collect();
    assert_eq!(&header[..5], ["modelId", "authType", "day", "totalCount", "successCount"]);
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    assert_eq!(records.len(), rows.len(), "one CSV row per stats row");
    for (record, row) in records.iter().zip(&rows) {
        for (column, cell) in header.iter().zip(record.iter()) {
            let want = graphql_cell(row, column);
            if column.ends_with("AvgMs") || column.starts_with("jobTimeP") {
                let (a, b) = (cell.parse::<f64>().ok(), want.parse::<f64>().ok());
                assert!(
                    a.zip(b).is_none_or(|(a, b)| (a - b).abs() < 1e-6) && a.is_some() == b.is_some(),
                    "{column}: {cell} vs {want}"
                );
            } else {
                assert_eq!(cell, want, "{column} of {row}");
            }
        }
    }

    // No range: the whole history, and its file name says so.
    let resp = csv(&app, Some(&admin), "groupBy=").await;
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"modelfleet-stats-all-time.csv\""
    );
    let text = resp.text().await.expect("body");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one overall row: {text}");
    assert!(lines[1].starts_with("300,"), "{text}");

    // Nothing matches: the header alone.
    for query in [
        "modelId=nope",
        "groupBy=&from=2099-01-01",
        "groupBy=DAY&authType=anon&userId=00000000-0000-0000-0000-000000000000",
    ] {
        let resp = csv(&app, Some(&admin), query).await;
        assert_eq!(resp.status(), 200, "{query}");
        let text = resp.text().await.expect("a whole body");
        assert_eq!(text.lines().count(), 1, "{query}: {text}");
        assert!(text.contains("totalCount"), "{text}");
    }
});

db_test!(the_csv_refuses_all_but_admins_and_names_bad_parameters, db => {
    let app = TestApp::spawn(db).await;
    let admin = app.admin("root").await;
    let user = app.signup("someone").await;
    let anon = app.anonymous().await;

    let resp = csv(&app, None, "").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(code(&resp.json().await.expect("json")), "UNAUTHENTICATED");
    let resp = csv(&app, Some("mf_not-a-token"), "").await;
    assert_eq!(resp.status(), 401);
    for token in [&user, &anon] {
        let resp = csv(&app, Some(token), "").await;
        assert_eq!(resp.status(), 403);
        assert_eq!(code(&resp.json().await.expect("json")), "FORBIDDEN");
    }

    let resp = csv(&app, Some(&admin), "groupBy=MODEL,WEEK&from=2026-12-05&to=2026-12-01&userId=nope").await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(code(&body), "BAD_USER_INPUT");
    let fields = &body["errors"][0]["extensions"]["fields"];
    for field in ["groupBy", "from", "userId"] {
        assert!(fields[field].is_array(), "{field} not named: {body}");
    }
});

db_test!(stats_fields_refuse_non_admins_and_name_bad_input, db => {
    let app = TestApp::spawn(db).await;
    let admin = app.admin("root").await;
    let user = app.signup("someone").await;
    let anon = app.anonymous().await;
    for query in [STATS, OPTIONS] {
        assert_eq!(code(&app.gql(query, json!({})).await), "UNAUTHENTICATED", "{query}");
        for token in [&user, &anon] {
            let body = app.gql_as(token, query, json!({})).await;
            assert_eq!(code(&body), "FORBIDDEN", "{query}: {body}");
            assert!(body["data"].is_null(), "{body}");
        }
    }

    for (filter, fields) in [
        (json!({ "from": "2026-02-30" }), vec!["from"]),
        (json!({ "to": "12/04/2026" }), vec!["to"]),
        (json!({ "timeZone": "Europe/Atlantis" }), vec!["timeZone"]),
        (json!({ "from": "2026-12-04", "to": "2026-12-03" }), vec!["from"]),
        (json!({ "userIds": ["x"], "timeZone": "Mars" }), vec!["timeZone", "userIds"]),
    ] {
        for query in [STATS, OPTIONS] {
            let body = app.gql_as(&admin, query, json!({ "filter": filter })).await;
            assert_eq!(code(&body), "BAD_USER_INPUT", "{filter}: {body}");
            let named = &body["errors"][0]["extensions"]["fields"];
            let mut got: Vec<&str> = named.as_object().expect("fields").keys().map(String::as_str).collect();
            got.sort_unstable();
            assert_eq!(got, fields, "{filter}: {body}");
        }
    }
    let body = app.gql_as(&admin, OPTIONS, json!({ "limit": 0 })).await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
    let many: Vec<String> = (0..1001).map(|_| Uuid::new_v4().to_string()).collect();
    let body = app.gql_as(&admin, STATS, json!({ "filter": { "sessionIds": many } })).await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
    assert!(body["errors"][0]["extensions"]["fields"]["sessionIds"].is_array(), "{body}");
});

db_test!(filter_options_list_who_appears_in_matching_requests, db => {
    let app = TestApp::spawn_with(db, |c| c.retention.requests_days = 0).await;
    let admin = app.admin("root").await;
    idle_models(&app, &["m-a", "m-b", "m-c"]).await;
    // Two real accounts and one that is gone (or never was).
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let id_of = |body: Value| Uuid::parse_str(body["data"]["me"]["id"].as_str().expect("id")).expect("uuid");
    let alice = id_of(app.gql_as(&alice, "{ me { id } }", json!({})).await);
    let bob = id_of(app.gql_as(&bob, "{ me { id } }", json!({})).await);
    let ghost = Uuid::new_v4();
    let sessions: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut requests = seed_requests(&app, 200, &[alice, bob, ghost], &sessions).await;

    // Only model m-b in the last 5 days: the options follow.
    let from = (Utc::now().date_naive() - TimeDelta::days(5)).to_string();
    let filter = json!({ "from": from, "modelIds": ["m-b"], "userIds": [alice] });
    let body = app.gql_as(&admin, OPTIONS, json!({ "filter": filter })).await;
    let options = &body["data"]["statsFilterOptions"];
    let models: Vec<&str> = options["models"].as_array().expect("models").iter().filter_map(|m| m["id"].as_str()).collect();
    for id in ["m-a", "m-b", "m-c", "iris", "sleepy"] {
        assert!(models.contains(&id), "every model is offered: {body}");
    }
    assert_eq!(options["authTypes"], json!(["USER", "ANON"]));
    let cutoff = Utc::now() - TimeDelta::days(5);
    let matching: Vec<&Req> = requests
        .iter()
        .filter(|r| r.model == "m-b" && r.created_at.date_naive() >= cutoff.date_naive())
        .collect();
    let count = |auth: AuthType, id: Uuid| matching.iter().filter(|r| r.auth == auth && r.principal == id).count() as i64;
    // The filter's own user list does not narrow the users offered.
    let mut want_users: Vec<(String, i64)> = [alice, bob, ghost]
        .iter()
        .map(|id| (id.to_string(), count(AuthType::User, *id)))
        .filter(|(_, n)| *n > 0)
        .collect();
    want_users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let got_users: Vec<(String, i64)> = options["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| (u["id"].as_str().expect("id").to_owned(), u["requestCount"].as_i64().expect("n")))
        .collect();
    let mut sorted = got_users.clone();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    assert_eq!(sorted, want_users, "{body}");
    assert!(got_users.windows(2).all(|w| w[0].1 >= w[1].1), "most active first: {body}");
    for user in options["users"].as_array().expect("users") {
        let want = if user["id"] == json!(alice) {
            json!("alice")
        } else if user["id"] == json!(bob) {
            json!("bob")
        } else {
            Value::Null
        };
        assert_eq!(user["username"], want, "{user}");
    }
    let got_sessions: usize = options["anonymousSessions"].as_array().expect("sessions").len();
    let want_sessions = sessions.iter().filter(|s| count(AuthType::Anon, **s) > 0).count();
    assert_eq!(got_sessions, want_sessions, "{body}");
    assert_eq!(options["usersComplete"], true);

    // Only anonymous ones asked: no users. A limit of 1 says it cut.
    let body = app.gql_as(&admin, OPTIONS, json!({ "filter": { "authType": "ANON" }, "limit": 1 })).await;
    let options = &body["data"]["statsFilterOptions"];
    assert_eq!(options["users"], json!([]), "{body}");
    assert_eq!(options["anonymousSessions"].as_array().expect("sessions").len(), 1);
    assert_eq!(options["anonymousSessionsComplete"], false);

    // Principals whose requests were all purged still appear.
    let lonely = Uuid::new_v4();
    let mut old = requests[0].clone();
    old.created_at = Utc::now() - TimeDelta::days(30);
    old.auth = AuthType::Anon;
    old.principal = lonely;
    old.status = entity::RequestStatus::Failed;
    work_request::Entity::insert(old.row()).exec(&app.state.db).await.expect("inserted");
    requests.push(old);
    let retention = modelfleet::stats::retention::Retention::new(
        app.state.db.clone(),
        modelfleet::config::RetentionConfig::default(),
    );
    assert!(retention.run_once(Utc::now()).await.expect("purge").requests >= 1);
    let body = app.gql_as(&admin, OPTIONS, json!({ "filter": { "authType": "ANON" } })).await;
    let ids: Vec<&str> = body["data"]["statsFilterOptions"]["anonymousSessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(ids.contains(&lonely.to_string().as_str()), "{body}");
});
