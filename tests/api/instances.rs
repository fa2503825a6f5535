//! Live instances for administrators: listing, events, stopping, and the
//! `instanceUpdates` subscription.

use serde_json::{Value, json};

use crate::support::{Frame, TestApp, code, sleepy};

const LIST: &str = "query($f: InstanceFilter) { instances(filter: $f) { edges { node { \
    id modelId backend handle status statusDetail startedAt readyAt stoppedAt stopReason requestId \
    events(limit: 100) { at type reason message } } } } }";

async fn list(app: &TestApp, token: &str, filter: Value) -> Vec<Value> {
    let body = app.gql_as(token, LIST, json!({ "f": filter })).await;
    body["data"]["instances"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("no instances in {body}"))
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

db_test!(a_subscriber_sees_an_instance_through_its_whole_life, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.models = vec![sleepy("watched", |m| m.idle_timeout_secs = 1)]
    })
    .await;
    let admin = app.admin("watcher").await;
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": admin } })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let query = "subscription { instanceUpdates(filter: { modelIds: [\"watched\"] }) { kind at instance { id status requestId } event { reason } } }";
    ws.send(json!({ "id": "u", "type": "subscribe", "payload": { "query": query } })).await;
    ws.sync().await;

    let token = app.anonymous().await;
    let id = app.submit(&token, "watched", json!({ "seconds": 0.3 })).await;
    let mut statuses: Vec<String> = Vec::new();
    let mut kinds: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while statuses.last().map(String::as_str) != Some("STOPPED") {
        assert!(std::time::Instant::now() < deadline, "no stop seen: {statuses:?}");
        let update = match ws.next().await {
            Frame::Json(m) => m["payload"]["data"]["instanceUpdates"].clone(),
            Frame::Closed(code, reason) => panic!("closed {code:?} {reason}"),
        };
        let kind = update["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "ASSIGNED" {
            assert_eq!(update["instance"]["requestId"], id.as_str());
        }
        let status = update["instance"]["status"].as_str().unwrap_or_default().to_owned();
        if statuses.last() != Some(&status) {
            statuses.push(status);
        }
        kinds.push(kind);
    }
    assert_eq!(statuses, ["PENDING", "STARTING", "READY", "BUSY", "READY", "STOPPING", "STOPPED"]);
    for kind in ["CREATED", "STATUS", "EVENT", "ASSIGNED", "STOPPED"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
});

db_test!(stopping_a_busy_instance_requeues_its_job, db => {
    let app = TestApp::spawn_with(db, |c| c.models = vec![sleepy("stoppable", |m| m.max_instances = 1)]).await;
    let admin = app.admin("root").await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "stoppable", json!({ "seconds": 3, "message": "survived" })).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let busy = loop {
        let busy = list(&app, &admin, json!({ "modelIds": ["stoppable"], "statuses": ["BUSY"] })).await;
        if !busy.is_empty() {
            break busy;
        }
        assert!(std::time::Instant::now() < deadline, "no busy instance");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(busy[0]["requestId"], id.as_str());
    assert!(busy[0]["statusDetail"]["pid"].is_string(), "{}", busy[0]);
    let instance = busy[0]["id"].as_str().expect("id").to_owned();

    let stop = "mutation($id: ID!, $r: String) { stopInstance(id: $id, reason: $r) { alreadyStopped message instance { id status } } }";
    let body = app.gql_as(&admin, stop, json!({ "id": instance, "r": "testing" })).await;
    assert_eq!(body["data"]["stopInstance"]["alreadyStopped"], false, "{body}");

    let request = app.wait_done(&token, &id).await;
    assert_eq!(request["status"], "SUCCEEDED", "{request}");
    assert_eq!(request["output"], "survived");
    assert_eq!(request["attempts"], 2, "it ran again on a new instance");

    let history = list(&app, &admin, json!({ "modelIds": ["stoppable"], "includeStopped": true })).await;
    let old = history.iter().find(|i| i["id"] == instance.as_str()).expect("the stopped instance");
    assert_eq!(old["status"], "STOPPED");
    assert_eq!(old["stopReason"], "stopped by root: testing");
    let events = old["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["reason"] == "StopRequested" && e["message"].as_str().is_some_and(|m| m.contains("root") && m.contains("testing"))),
        "{events:?}"
    );
    // Newest first.
    let times: Vec<&str> = events.iter().filter_map(|e| e["at"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
    assert_eq!(history.len(), 2, "one replacement, started for the re-queued job");

    let body = app.gql_as(&admin, stop, json!({ "id": instance })).await;
    assert_eq!(body["data"]["stopInstance"]["alreadyStopped"], true, "{body}");
    let body = app.gql_as(&admin, stop, json!({ "id": uuid::Uuid::now_v7().to_string() })).await;
    assert_eq!(code(&body), "NOT_FOUND");
});

db_test!(instance_filters_and_event_limits, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.models = vec![
            sleepy("first", |m| m.min_instances = 1),
            sleepy("second", |m| m.min_instances = 1),
        ]
    })
    .await;
    let admin = app.admin("root").await;
    app.eventually("both instances ready", 120, || async {
        list(&app, &admin, json!({ "statuses": ["READY"] })).await.len() == 2
    })
    .await;
    let first = list(&app, &admin, json!({ "modelIds": ["first"] })).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["modelId"], "first");
    assert_eq!(first[0]["backend"], "local");
    assert!(first[0]["readyAt"].is_string());
    let future = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    assert!(list(&app, &admin, json!({ "startedFrom": future })).await.is_empty());
    let past = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    assert_eq!(list(&app, &admin, json!({ "startedFrom": past })).await.len(), 2);
    assert!(list(&app, &admin, json!({ "statuses": ["BUSY"] })).await.is_empty());

    // One page, every instance with its own newest events.
    let page = app
        .gql_as(&admin, "{ instances { edges { node { modelId events(limit: 3) { reason } } } } }", json!({}))
        .await;
    let edges = page["data"]["instances"]["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 2, "{page}");
    for edge in edges {
        let events = edge["node"]["events"].as_array().expect("events");
        assert_eq!(events.len(), 3, "{page}");
    }
    let id = first[0]["id"].clone();
    let body = app
        .gql_as(&admin, "query($id: ID!) { instance(id: $id) { events(limit: 2) { at reason } } }", json!({ "id": id }))
        .await;
    let events = body["data"]["instance"]["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{body}");
    let (newer, older) = (events[0]["at"].as_str(), events[1]["at"].as_str());
    assert!(newer.is_some() && newer >= older, "{events:?}");
    let body = app
        .gql_as(&admin, "query($id: ID!) { instance(id: $id) { events(limit: 0) { at } } }", json!({ "id": id }))
        .await;
    assert_eq!(code(&body), "BAD_USER_INPUT");
});

db_test!(non_admins_are_refused_everything_about_instances, db => {
    let app = TestApp::spawn(db).await;
    let user = app.signup("nosy").await;
    let anon = app.anonymous().await;
    let some_id = uuid::Uuid::now_v7().to_string();
    let calls = [
        ("{ instances { edges { node { id } } } }".to_owned(), json!({})),
        ("query($id: ID!) { instance(id: $id) { id } }".to_owned(), json!({ "id": some_id })),
        ("mutation($id: ID!) { stopInstance(id: $id) { alreadyStopped } }".to_owned(), json!({ "id": some_id })),
    ];
    for (query, vars) in &calls {
        assert_eq!(code(&app.gql(query, vars.clone()).await), "UNAUTHENTICATED", "{query}");
        for token in [&user, &anon] {
            assert_eq!(code(&app.gql_as(token, query, vars.clone()).await), "FORBIDDEN", "{query}");
        }
    }
    for token in [Some(&user), Some(&anon), None] {
        let (mut ws, _) = app.websocket("graphql-transport-ws").await;
        let payload = token.map_or_else(|| json!({}), |t| json!({ "token": t }));
        ws.send(json!({ "type": "connection_init", "payload": payload })).await;
        assert_eq!(ws.next_json().await["type"], "connection_ack");
        ws.send(json!({ "id": "x", "type": "subscribe", "payload": { "query": "subscription { instanceUpdates { kind } }" } }))
            .await;
        let refused = ws.next_json().await;
        let want = if token.is_some() { "FORBIDDEN" } else { "UNAUTHENTICATED" };
        assert_eq!(refused["payload"]["errors"][0]["extensions"]["code"], want, "{refused}");
    }
});

db_test!(subscription_filters_see_only_their_instances, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.models = vec![sleepy("left", |_| {}), sleepy("right", |_| {})]
    })
    .await;
    let admin = app.admin("root").await;
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": admin } })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let query = "subscription { instanceUpdates(filter: { modelIds: [\"right\"], statuses: [BUSY] }) { kind instance { modelId status } } }";
    ws.send(json!({ "id": "f", "type": "subscribe", "payload": { "query": query } })).await;
    ws.sync().await;
    let token = app.anonymous().await;
    let left = app.submit(&token, "left", json!({})).await;
    app.wait_done(&token, &left).await;
    let right = app.submit(&token, "right", json!({ "seconds": 0.2 })).await;
    app.wait_done(&token, &right).await;
    // Only `right`, and only changes into or out of BUSY: assigned (now
    // busy), its events while busy, and back to ready.
    let mut seen = Vec::new();
    loop {
        let update = match ws.next().await {
            Frame::Json(m) => m["payload"]["data"]["instanceUpdates"].clone(),
            Frame::Closed(code, reason) => panic!("closed {code:?} {reason}"),
        };
        assert_eq!(update["instance"]["modelId"], "right", "{update}");
        let status = update["instance"]["status"].as_str().unwrap_or_default().to_owned();
        seen.push(status.clone());
        if status == "READY" {
            break;
        }
    }
    assert_eq!(seen.first().map(String::as_str), Some("BUSY"), "{seen:?}");
});
