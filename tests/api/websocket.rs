//! GraphQL over WebSocket: both sub-protocols, credentials in
//! `connection_init`, and connections closed when their session ends.

use sea_orm::EntityTrait;
use serde_json::json;

use crate::support::{Frame, TestApp};

const VIEWER: &str = "subscription { viewer { username roles } }";

db_test!(transport_ws_follows_the_viewer_until_logout, db => {
    let app = TestApp::spawn(db).await;
    let admin = app.admin("chief").await;
    let token = app.signup("watcher").await;
    let id = app.gql_as(&token, "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();

    let (mut ws, protocol) = app.websocket("graphql-transport-ws").await;
    assert_eq!(protocol, "graphql-transport-ws");
    ws.send(json!({ "type": "connection_init", "payload": { "token": token } })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": VIEWER } })).await;
    let first = ws.next_json().await;
    assert_eq!(first["payload"]["data"]["viewer"]["username"], "watcher", "{first}");
    assert_eq!(first["payload"]["data"]["viewer"]["roles"], json!([]));

    app.gql_as(&admin, "mutation($id: ID!) { setUserRoles(userId: $id, roles: [ADMIN]) }", json!({ "id": id }))
        .await;
    let next = ws.next_json().await;
    assert_eq!(next["payload"]["data"]["viewer"]["roles"], json!(["ADMIN"]), "{next}");

    app.gql_as(&token, "mutation { logout }", json!({})).await;
    loop {
        match ws.next().await {
            Frame::Json(_) => continue,
            Frame::Closed(code, reason) => {
                assert_eq!(code, Some(4401), "{reason}");
                break;
            }
        }
    }
});

db_test!(legacy_graphql_ws_takes_an_authorization_entry, db => {
    let app = TestApp::spawn(db).await;
    let token = app.signup("oldtimer").await;
    let (mut ws, protocol) = app.websocket("graphql-ws").await;
    assert_eq!(protocol, "graphql-ws");
    ws.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(json!({ "id": "1", "type": "start", "payload": { "query": VIEWER } })).await;
    let data = ws.next_json().await;
    assert_eq!(data["type"], "data");
    assert_eq!(data["payload"]["data"]["viewer"]["username"], "oldtimer");
});

db_test!(transport_ws_wins_when_both_are_offered, db => {
    let app = TestApp::spawn(db).await;
    let (_, protocol) = app.websocket("graphql-ws, graphql-transport-ws").await;
    assert_eq!(protocol, "graphql-transport-ws");
    let (_, protocol) = app.websocket("graphql-transport-ws, graphql-ws").await;
    assert_eq!(protocol, "graphql-transport-ws");
});

db_test!(bad_credentials_and_missing_sessions_are_refused, db => {
    let app = TestApp::spawn(db).await;
    // A malformed, an unknown and an expired token in connection_init each
    // close the connection.
    let expired = app.anonymous().await;
    entity::session::Entity::update_many()
        .col_expr(
            entity::session::Column::ExpiresAt,
            (chrono::Utc::now() - chrono::TimeDelta::seconds(5)).into(),
        )
        .exec(&app.state.db)
        .await
        .expect("expire");
    app.state.auth.clear_cache();
    let unknown = format!("mf_{}", "B".repeat(43));
    for token in ["mf_nonsense", unknown.as_str(), expired.as_str()] {
        let (mut ws, _) = app.websocket("graphql-transport-ws").await;
        ws.send(json!({ "type": "connection_init", "payload": { "token": token } })).await;
        match ws.next().await {
            Frame::Closed(code, reason) => assert_eq!(code, Some(4403), "{token}: {reason}"),
            Frame::Json(v) => panic!("expected a close, got {v}"),
        }
    }
    // No credentials: the connection opens, the session-only field refuses.
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": {} }))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": VIEWER } }))
        .await;
    let refused = ws.next_json().await;
    assert!(refused["payload"]["data"].is_null(), "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"],
        "UNAUTHENTICATED"
    );
});

db_test!(a_silent_connection_is_closed_after_the_init_timeout, db => {
    let app = TestApp::spawn_with(db, |c| c.graphql.ws_init_timeout_secs = 1).await;
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    match ws.next().await {
        Frame::Closed(code, _) => assert_eq!(code, Some(4408)),
        Frame::Json(v) => panic!("expected a close, got {v}"),
    }
});

db_test!(anonymous_sessions_subscribe_too, db => {
    let app = TestApp::spawn(db).await;
    let token = app.anonymous().await;
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "headers": { "Authorization": format!("Bearer {token}") } } }))
        .await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(json!({ "id": "a", "type": "subscribe", "payload": { "query": "subscription { viewer { username roles } }" } }))
        .await;
    let next = ws.next_json().await;
    assert!(
        next["payload"]["data"]["viewer"]["username"].is_null(),
        "{next}"
    );
});

db_test!(losing_a_permission_closes_the_connection, db => {
    let app = TestApp::spawn(db).await;
    let root = app.admin("root").await;
    let deputy = app.admin("deputy").await;
    let id = app.gql_as(&deputy, "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": deputy } })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    app.gql_as(&root, "mutation($id: ID!) { setUserRoles(userId: $id, roles: []) }", json!({ "id": id }))
        .await;
    match ws.next().await {
        Frame::Closed(code, reason) => assert_eq!(code, Some(4403), "{reason}"),
        Frame::Json(v) => panic!("expected a close, got {v}"),
    }
});

db_test!(websocket_messages_are_size_limited, db => {
    let app = TestApp::spawn_with(db, |c| c.graphql.max_body_bytes = 4096).await;
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let huge = format!("subscription {{ viewer {{ username }} }} # {}", "x".repeat(10_000));
    ws.send(json!({ "id": "1", "type": "subscribe", "payload": { "query": huge } })).await;
    match ws.next().await {
        Frame::Closed(_, _) => {}
        Frame::Json(v) => panic!("an oversized message was served: {v}"),
    }
});

db_test!(a_client_close_is_answered, db => {
    let app = TestApp::spawn(db).await;
    let (mut ws, _) = app.websocket("graphql-transport-ws").await;
    ws.send(json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.close().await;
    match ws.next().await {
        Frame::Closed(code, _) => assert_eq!(code, Some(1000), "the server did not answer the close"),
        Frame::Json(v) => panic!("expected a close, got {v}"),
    }
});
