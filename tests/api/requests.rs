//! Requests run on real Cog models: the iris classifier and the sleepy test
//! model, through the scaler and local instances.

use chrono::{DateTime, Utc};
use entity::InstanceStatus;
use serde_json::{Value, json};

use crate::support::{Frame, SUBMIT, TestApp, code, sleepy};

fn time(request: &Value, field: &str) -> DateTime<Utc> {
    request[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {request}"))
}

db_test!(an_anonymous_session_classifies_an_iris, db => {
    let app = TestApp::spawn(db).await;
    let token = app.anonymous().await;
    let id = app
        .submit(&token, "iris", json!({ "sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2 }))
        .await;
    let request = app.wait_done(&token, &id).await;
    assert_eq!(request["status"], "SUCCEEDED", "{request}");
    assert_eq!(request["output"]["species"], "setosa");
    assert!(request["output"]["confidence"].as_f64().is_some_and(|c| c > 0.5), "{request}");
    let created = time(&request, "createdAt");
    let started = time(&request, "jobStartedAt");
    let finished = time(&request, "jobFinishedAt");
    let completed = time(&request, "completedAt");
    assert!(created <= started && started <= finished && finished <= completed, "{request}");
    assert_eq!(request["jobTimeMs"].as_i64(), Some((finished - started).num_milliseconds()));
    // Prometheus counts it.
    let metrics = app.http.get(app.url("/metrics")).send().await.expect("sent").text().await.expect("text");
    assert!(
        metrics.contains("modelfleet_requests_finished_total{model=\"iris\",status=\"SUCCEEDED\"} 1"),
        "{metrics}"
    );
});

db_test!(twenty_requests_share_two_instances, db => {
    let app = TestApp::spawn_with(db, |c| c.models = vec![sleepy("pair", |m| m.max_instances = 2)]).await;
    let token = app.anonymous().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(app.submit(&token, "pair", json!({ "seconds": 0.1, "message": format!("n{i}") })).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let request = app.wait_done(&token, id).await;
        assert_eq!(request["status"], "SUCCEEDED", "{request}");
        assert_eq!(request["output"], format!("n{i}"));
    }
    let instances = app.instances("pair").await;
    assert!(instances.len() <= 2, "{} instances ran", instances.len());
    assert_eq!(instances.len(), 2, "the queue should have asked for the second instance");
});

db_test!(idle_instances_stop_but_never_below_min, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.models = vec![sleepy("idler", |m| {
            m.min_instances = 1;
            m.max_instances = 2;
            m.idle_timeout_secs = 1;
        })]
    })
    .await;
    // min 1: an instance comes up with no request at all.
    app.eventually("the min instance", 120, || async {
        app.instances("idler").await.iter().any(|i| i.status == InstanceStatus::Ready)
    })
    .await;
    let token = app.anonymous().await;
    let a = app.submit(&token, "idler", json!({ "seconds": 1.5 })).await;
    let b = app.submit(&token, "idler", json!({ "seconds": 1.5 })).await;
    assert_eq!(app.wait_done(&token, &a).await["status"], "SUCCEEDED");
    assert_eq!(app.wait_done(&token, &b).await["status"], "SUCCEEDED");
    assert_eq!(app.instances("idler").await.len(), 2);
    // Idle past the timeout: one stops, one stays.
    app.eventually("an idle stop", 30, || async {
        app.instances("idler").await.iter().any(|i| i.status == InstanceStatus::Stopped)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let instances = app.instances("idler").await;
    let ready: Vec<_> = instances.iter().filter(|i| i.status == InstanceStatus::Ready).collect();
    let stopped: Vec<_> = instances.iter().filter(|i| i.status == InstanceStatus::Stopped).collect();
    assert_eq!((ready.len(), stopped.len()), (1, 1), "{instances:?}");
    assert_eq!(stopped[0].stop_reason.as_deref(), Some("idle for 1 s"));
});

db_test!(cancel_queued_and_running_requests, db => {
    let app = TestApp::spawn_with(db, |c| c.models = vec![sleepy("single", |m| m.max_instances = 1)]).await;
    let token = app.anonymous().await;
    let running = app.submit(&token, "single", json!({ "seconds": 30 })).await;
    let queued = app.submit(&token, "single", json!({ "seconds": 30 })).await;
    app.eventually("the first job to start", 120, || async {
        app.gql_as(&token, "query($id: ID!) { request(id: $id) { status } }", json!({ "id": running }))
            .await["data"]["request"]["status"]
            == "RUNNING"
    })
    .await;
    let cancel = "mutation($id: ID!) { cancelRequest(id: $id) { status error jobStartedAt completedAt } }";
    let body = app.gql_as(&token, cancel, json!({ "id": queued })).await;
    let request = &body["data"]["cancelRequest"];
    assert_eq!(request["status"], "CANCELLED", "{body}");
    assert!(request["jobStartedAt"].is_null() && request["completedAt"].is_string());
    let body = app.gql_as(&token, cancel, json!({ "id": running })).await;
    assert_eq!(body["data"]["cancelRequest"]["status"], "CANCELLED", "{body}");
    assert!(body["data"]["cancelRequest"]["jobStartedAt"].is_string());
    // Cancelling a finished request changes nothing.
    let again = app.gql_as(&token, cancel, json!({ "id": running })).await;
    assert_eq!(again["data"]["cancelRequest"]["status"], "CANCELLED");
    // The instance is free again: a new request runs.
    let next = app.submit(&token, "single", json!({ "message": "after" })).await;
    let request = app.wait_done(&token, &next).await;
    assert_eq!(request["output"], "after", "{request}");
});

db_test!(a_job_past_the_request_timeout_fails, db => {
    let app = TestApp::spawn_with(db, |c| c.models = vec![sleepy("slow", |m| m.request_timeout_secs = 1)]).await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "slow", json!({ "seconds": 20 })).await;
    let request = app.wait_done(&token, &id).await;
    assert_eq!(request["status"], "FAILED");
    assert_eq!(request["error"], "timed out after 1 s");
    assert!(request["jobFinishedAt"].is_string());
});

db_test!(an_instance_dying_mid_job_requeues_once_then_fails, db => {
    let app = TestApp::spawn_with(db, |c| c.models = vec![sleepy("crashy", |m| m.max_instances = 1)]).await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "crashy", json!({ "crash": true })).await;
    let request = app.wait_done(&token, &id).await;
    assert_eq!(request["status"], "FAILED", "{request}");
    assert_eq!(request["attempts"], 2, "it should have gone back to the queue once");
    let error = request["error"].as_str().unwrap_or_default();
    assert!(error.contains("the instance ended during the job"), "{error}");
    // The job's failure is recorded when the connection drops; the
    // process watcher marks the instance failed a moment later.
    app.eventually("both instances marked failed", 30, || async {
        let instances = app.instances("crashy").await;
        instances.len() == 2 && instances.iter().all(|i| i.status == InstanceStatus::Failed)
    })
    .await;
    assert_eq!(app.instances("crashy").await.len(), 2, "one instance per attempt");
    // A model prediction that fails is a failed request, not a crash.
    let id = app.submit(&token, "crashy", json!({ "fail": true, "message": "no luck" })).await;
    let request = app.wait_done(&token, &id).await;
    assert_eq!(request["status"], "FAILED");
    assert!(request["error"].as_str().unwrap_or_default().contains("no luck"), "{request}");
    assert_eq!(request["attempts"], 1);
});

db_test!(a_model_that_cannot_start_fails_its_queue, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.models = vec![sleepy("broken", |m| {
            if let Some(local) = m.local.as_mut() {
                local.env.insert("SLEEPY_FAIL_SETUP".to_owned(), "1".to_owned());
            }
        })]
    })
    .await;
    let token = app.anonymous().await;
    let id = app.submit(&token, "broken", json!({})).await;
    let request = app.wait_done(&token, &id).await;
    assert_eq!(request["status"], "FAILED");
    let error = request["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("no instance of model `broken` could start"), "{error}");
    // The details are for administrators, not in the request.
    assert!(!error.contains("setup failed on purpose"), "{error}");
    assert!(request["jobStartedAt"].is_null());
    let instances = app.instances("broken").await;
    assert_eq!(instances.len(), 3, "{instances:?}");
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let events = entity::instance_event::Entity::find()
        .filter(entity::instance_event::Column::Reason.eq("StartFailed"))
        .all(&app.state.db)
        .await
        .expect("events");
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.message.contains("setup failed on purpose")), "{events:?}");
    // While the model keeps failing, new requests fail fast.
    let id = app.submit(&token, "broken", json!({})).await;
    let request = app.wait_done(&token, &id).await;
    assert_eq!(request["status"], "FAILED");
});

db_test!(submitting_is_idempotent_and_checked, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.models = vec![
            sleepy("echo", |m| m.max_input_bytes = 64),
            sleepy("off", |m| m.enabled = false),
        ]
    })
    .await;
    let token = app.anonymous().await;
    let other = app.anonymous().await;
    let input = json!({ "input": { "modelId": "echo", "input": { "message": "once" }, "clientRequestId": "k-1" } });
    let first = app.gql_as(&token, SUBMIT, input.clone()).await;
    let again = app.gql_as(&token, SUBMIT, input.clone()).await;
    assert!(first["data"]["submitRequest"]["id"].is_string(), "{first}");
    assert_eq!(first["data"]["submitRequest"]["id"], again["data"]["submitRequest"]["id"]);
    let theirs = app.gql_as(&other, SUBMIT, input).await;
    assert_ne!(first["data"]["submitRequest"]["id"], theirs["data"]["submitRequest"]["id"]);

    let count = || async {
        use sea_orm::{EntityTrait, PaginatorTrait};
        entity::work_request::Entity::find().count(&app.state.db).await.expect("count")
    };
    let before = count().await;
    let cases = [
        (json!({ "modelId": "nope", "input": {} }), "modelId"),
        (json!({ "modelId": "off", "input": {} }), "modelId"),
        (json!({ "modelId": "echo", "input": [1, 2] }), "input"),
        (json!({ "modelId": "echo", "input": { "message": "x".repeat(100) } }), "input"),
        (json!({ "modelId": "echo", "input": {}, "clientRequestId": "" }), "clientRequestId"),
        (json!({ "modelId": "echo", "input": { "message": "a\u{0}b" } }), "input"),
    ];
    for (input, field) in cases {
        let body = app.gql_as(&token, SUBMIT, json!({ "input": input })).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{body}");
        assert!(body["errors"][0]["extensions"]["fields"][field].is_array(), "{field}: {body}");
    }
    assert_eq!(count().await, before, "a refused submission stored something");
    // Without a session there is no one to own the request.
    let body = app.gql(SUBMIT, json!({ "input": { "modelId": "echo", "input": {} } })).await;
    assert_eq!(code(&body), "UNAUTHENTICATED");
});

db_test!(callers_see_only_their_own_requests, db => {
    let app = TestApp::spawn_with(db, |c| c.models = vec![sleepy("mine", |_| {})]).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let anon = app.anonymous().await;
    let id = app.submit(&alice, "mine", json!({ "message": "alice's" })).await;
    app.submit(&bob, "mine", json!({})).await;
    for token in [&bob, &anon] {
        let body = app.gql_as(token, "query($id: ID!) { request(id: $id) { id } }", json!({ "id": id })).await;
        assert_eq!(code(&body), "NOT_FOUND", "{body}");
        let body = app.gql_as(token, "mutation($id: ID!) { cancelRequest(id: $id) { id } }", json!({ "id": id })).await;
        assert_eq!(code(&body), "NOT_FOUND", "{body}");
    }
    let list = "{ myRequests { edges { node { id input } } } }";
    let mine = app.gql_as(&alice, list, json!({})).await;
    let edges = mine["data"]["myRequests"]["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0]["node"]["id"], id.as_str());
    let anons = app.gql_as(&anon, list, json!({})).await;
    assert_eq!(anons["data"]["myRequests"]["edges"], json!([]));
    // A user's requests follow the user to a new session.
    let again = app.login("alice", crate::support::PASSWORD).await;
    let token = crate::support::token_of(&again, "login");
    let mine = app.gql_as(&token, list, json!({})).await;
    assert_eq!(mine["data"]["myRequests"]["edges"].as_array().map(Vec::len), Some(1));
});

db_test!(request_updates_follow_a_request_to_its_end, db => {
    let app = TestApp::spawn_with(db, |c| c.models = vec![sleepy("watched", |_| {})]).await;
    let token = app.anonymous().await;
    let stranger = app.anonymous().await;
    let id = app.submit(&token, "watched", json!({ "seconds": 0.5, "message": "seen" })).await;

    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": stranger } })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let query = "subscription($id: ID!) { requestUpdates(id: $id) { status output } }";
    ws.send(json!({ "id": "s", "type": "subscribe", "payload": { "query": query, "variables": { "id": id } } }))
        .await;
    let refused = ws.next_json().await;
    assert_eq!(refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND", "{refused}");

    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": token } })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(json!({ "id": "s", "type": "subscribe", "payload": { "query": query, "variables": { "id": id } } }))
        .await;
    let mut statuses = Vec::new();
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(300), ws.next())
            .await
            .expect("an update");
        match message {
            Frame::Json(m) if m["type"] == "next" => {
                let status = m["payload"]["data"]["requestUpdates"]["status"].as_str().unwrap_or_default().to_owned();
                if status == "SUCCEEDED" {
                    assert_eq!(m["payload"]["data"]["requestUpdates"]["output"], "seen");
                }
                statuses.push(status);
            }
            Frame::Json(m) if m["type"] == "complete" => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(statuses.last().map(String::as_str), Some("SUCCEEDED"), "{statuses:?}");
    assert!(statuses.contains(&"RUNNING".to_owned()), "{statuses:?}");
    let mut sorted = statuses.clone();
    sorted.dedup();
    assert_eq!(sorted, statuses, "no status twice in a row");
});

db_test!(my_requests_filter_and_page, db => {
    let app = TestApp::spawn_with(db, |c| {
        c.models = vec![sleepy("a", |_| {}), sleepy("b", |m| m.enabled = true)]
    })
    .await;
    let token = app.anonymous().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let model = if i % 2 == 0 { "a" } else { "b" };
        ids.push(app.submit(&token, model, json!({ "message": format!("m{i}") })).await);
    }
    for id in &ids {
        app.wait_done(&token, id).await;
    }
    let page = "query($after: String, $f: MyRequestsFilter) { myRequests(first: 2, after: $after, filter: $f) { \
        edges { node { id modelId status } } pageInfo { hasNextPage endCursor } } }";
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let body = app.gql_as(&token, page, json!({ "after": after })).await;
        let conn = &body["data"]["myRequests"];
        for edge in conn["edges"].as_array().expect("edges") {
            seen.push(edge["node"]["id"].as_str().expect("id").to_owned());
        }
        if conn["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = conn["pageInfo"]["endCursor"].clone();
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let body = app.gql_as(&token, page, json!({ "f": { "modelId": "b" } })).await;
    let models: Vec<&str> = body["data"]["myRequests"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["modelId"].as_str())
        .collect();
    assert_eq!(models, ["b", "b"]);
    let body = app.gql_as(&token, page, json!({ "f": { "status": "FAILED" } })).await;
    assert_eq!(body["data"]["myRequests"]["edges"], json!([]));
});
