//! GraphQL over WebSocket, in both sub-protocols (graphql-transport-ws wins
//! when a client offers both).
//!
//! Credentials come in the `connection_init` payload, as `token` or as an
//! `Authorization: Bearer ...` entry (top level or under `headers`). The
//! connection is closed when no init arrives in time, when its session
//! ends (logout, password change, expiry), and on server shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_graphql::http::{WebSocketProtocols, WsMessage};
use async_graphql::{Data, ErrorExtensions};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{broadcast, watch};

use super::client_ip;
use super::graphql::parse_bearer;
use crate::app::AppState;
use crate::auth::{Session, SessionEvent};
use crate::error::ApiError;
use crate::graphql::{BearerToken, ClientAddr};

/// The most messages written with one flush.
const MAX_BATCH: usize = 64;
/// How long a client may take to accept what is written to it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an authenticated connection checks that its session still
/// holds (expiry; a logout is seen at once).
const SESSION_CHECK: Duration = Duration::from_secs(30);

/// Picks the sub-protocol: graphql-transport-ws over graphql-ws.
fn choose_protocol(headers: &HeaderMap) -> Option<WebSocketProtocols> {
    let offered: Vec<WebSocketProtocols> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    if offered.contains(&WebSocketProtocols::GraphQLWS) {
        Some(WebSocketProtocols::GraphQLWS)
    } else {
        offered.first().copied()
    }
}

pub fn upgrade(
    state: AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(protocol) = choose_protocol(headers) else {
        return (
            StatusCode::BAD_REQUEST,
            "offer the graphql-transport-ws or graphql-ws sub-protocol",
        )
            .into_response();
    };
    let addr = ClientAddr(client_ip(&state, peer, headers));
    upgrade
        .max_message_size(state.config.graphql.max_body_bytes)
        .protocols([protocol.sec_websocket_protocol()])
        .on_upgrade(move |socket| serve(state, socket, protocol, addr))
}

/// The token in a `connection_init` payload, if any.
fn init_token(payload: &serde_json::Value) -> Option<Result<String, ApiError>> {
    let str_at =
        |v: &serde_json::Value, key: &str| v.get(key).and_then(|t| t.as_str()).map(str::to_owned);
    if let Some(token) = str_at(payload, "token") {
        return Some(Ok(token));
    }
    let headers = payload.get("headers").unwrap_or(payload);
    let auth = str_at(headers, "Authorization").or_else(|| str_at(headers, "authorization"))?;
    Some(parse_bearer(&auth))
}

async fn serve(state: AppState, socket: WebSocket, protocol: WebSocketProtocols, addr: ClientAddr) {
    let (mut sink, stream) = socket.split();
    let incoming = stream
        .take_while(|m| futures_util::future::ready(!matches!(m, Ok(Message::Close(_)) | Err(_))))
        .filter_map(|m| {
            futures_util::future::ready(match m {
                Ok(Message::Text(t)) => Some(t.as_str().as_bytes().to_vec()),
                Ok(Message::Binary(b)) => Some(b.to_vec()),
                _ => None,
            })
        });

    // Set once the init message has been accepted: the session, if any.
    let (init_tx, mut init_rx) = watch::channel::<Option<Option<(Arc<Session>, String)>>>(None);
    let rejected = Arc::new(AtomicBool::new(false));
    let auth = state.auth.clone();
    let rejected_in_init = rejected.clone();
    let mut connection =
        async_graphql::http::WebSocket::new(state.schema.clone(), incoming, protocol)
            .on_connection_init(move |payload| async move {
                let mut data = Data::default();
                data.insert(addr);
                let session = match init_token(&payload) {
                    None => None,
                    Some(token) => {
                        let resolved = match token {
                            Ok(token) => auth.authenticate(&token).await.map(|s| (s, token)),
                            Err(e) => Err(e),
                        };
                        let (session, token) = resolved.map_err(|e| {
                            rejected_in_init.store(true, Ordering::Relaxed);
                            e.extend()
                        })?;
                        data.insert(session.clone());
                        data.insert(BearerToken(token.clone()));
                        Some((session, token))
                    }
                };
                let _ = init_tx.send(Some(session));
                Ok(data)
            });

    let mut events = state.auth.events();
    let mut shutdown = state.shutdown.clone();
    let init_deadline = tokio::time::sleep(Duration::from_secs(
        state.config.graphql.ws_init_timeout_secs,
    ));
    tokio::pin!(init_deadline);
    let mut check = tokio::time::interval(SESSION_CHECK);
    let mut initialised = false;
    let mut session: Option<(Arc<Session>, String)> = None;

    let close: Option<(u16, &str)> = loop {
        tokio::select! {
            message = connection.next() => match message {
                Some(WsMessage::Text(text)) => {
                    // Queue what is ready at once (up to a bound), then write
                    // it in one go: a burst of updates costs one flush, not
                    // one each. A client that stops reading is dropped
                    // rather than allowed to hold this loop.
                    let mut queued = vec![Message::Text(text.into())];
                    let mut closing = None;
                    while queued.len() < MAX_BATCH {
                        match connection.next().now_or_never() {
                            Some(Some(WsMessage::Text(text))) => queued.push(Message::Text(text.into())),
                            Some(Some(WsMessage::Close(code, reason))) => {
                                closing = Some((code, reason));
                                break;
                            }
                            Some(None) | None => break,
                        }
                    }
                    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
                        for message in queued {
                            sink.feed(message).await?;
                        }
                        sink.flush().await
                    })
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        break None;
                    }
                    if let Some((code, reason)) = closing {
                        let code = if rejected.load(Ordering::Relaxed) { 4403 } else { code };
                        let _ = sink.send(close_frame(code, &reason)).await;
                        break None;
                    }
                }
                Some(WsMessage::Close(code, reason)) => {
                    // graphql-transport-ws says 4403 for a refused init;
                    // async-graphql sends a generic protocol error.
                    let code = if rejected.load(Ordering::Relaxed) { 4403 } else { code };
                    let _ = sink.send(close_frame(code, &reason)).await;
                    break None;
                }
                // The client closed (or the stream ended): answer its close.
                None => break Some((1000, "")),
            },
            Ok(()) = init_rx.changed(), if !initialised => {
                if let Some(accepted) = init_rx.borrow_and_update().clone() {
                    initialised = true;
                    session = accepted;
                }
            }
            () = &mut init_deadline, if !initialised => {
                break Some((4408, "Connection initialisation timeout"));
            }
            event = events.recv(), if session.is_some() => {
                let recheck = match (&event, &session) {
                    (Ok(SessionEvent::Ended { session_id }), Some((s, _))) if s.id == *session_id => {
                        break Some((4401, "session ended"));
                    }
                    (Ok(SessionEvent::UserChanged { user_id }), Some((s, _))) => s.user_id() == Some(*user_id),
                    (Err(broadcast::error::RecvError::Lagged(_)), _) => true,
                    (Err(broadcast::error::RecvError::Closed), _) => break None,
                    _ => false,
                };
                if recheck && let Some((old, token)) = &session {
                    match recheck_session(&state, old, token).await {
                        Ok(fresh) => session = Some((fresh, token.clone())),
                        Err(close) => break Some(close),
                    }
                }
            }
            _ = check.tick(), if session.is_some() => {
                if let Some((old, token)) = &session {
                    match recheck_session(&state, old, token).await {
                        Ok(fresh) => session = Some((fresh, token.clone())),
                        Err(close) => break Some(close),
                    }
                }
            }
            _ = shutdown.changed() => break Some((1001, "server shutting down")),
        }
    };
    if let Some((code, reason)) = close {
        tracing::debug!(code, reason, "closing websocket");
        let _ = sink.send(close_frame(code, reason)).await;
    }
    // Completes the closing handshake: after a client's close, this flushes
    // the reply the WebSocket layer queued for it.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
}

/// Looks the connection's session up again. A session that ended or
/// expired closes the connection (4401); one whose user lost a permission
/// too (4403), since its subscriptions were authorised with the old roles.
async fn recheck_session(
    state: &AppState,
    old: &Arc<Session>,
    token: &str,
) -> Result<Arc<Session>, (u16, &'static str)> {
    match state.auth.authenticate(token).await {
        Ok(fresh) => {
            let kept = old.permissions().iter().all(|p| fresh.has(*p));
            if kept {
                Ok(fresh)
            } else {
                Err((4403, "permissions changed; reconnect"))
            }
        }
        Err(ApiError::Internal) => Ok(old.clone()),
        Err(ApiError::SessionExpired) => Err((4401, "session expired")),
        Err(_) => Err((4401, "session ended")),
    }
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
