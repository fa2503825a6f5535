//! `/graphql` over HTTP: POST with a JSON body, GET with query parameters
//! (queries only), and the WebSocket upgrade.

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql_axum::GraphQLResponse;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{api_error, client_ip, ws};
use crate::app::AppState;
use crate::auth::Session;
use crate::error::ApiError;
use crate::graphql::{BearerToken, ClientAddr};

pub async fn post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let too_large = match &body {
        Ok(body) => body.len() > state.config.graphql.max_body_bytes,
        Err(rejection) => rejection.status() == StatusCode::PAYLOAD_TOO_LARGE,
    };
    if too_large {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!(
                "the request body is larger than {} bytes",
                state.config.graphql.max_body_bytes
            ),
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("cannot read the request body: {rejection}"),
            );
        }
    };
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "batched requests are not accepted; send one operation per request",
        );
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("the body is not a GraphQL request in JSON: {e}"),
            );
        }
    };
    execute(&state, peer, &headers, request).await
}

pub async fn get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let is_upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (mut parts, _body) = request.into_parts();
    if is_upgrade {
        return match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
        {
            Ok(upgrade) => ws::upgrade(state, peer, &parts.headers, upgrade),
            Err(rejection) => rejection.into_response(),
        };
    }
    let query = parts.uri.query().unwrap_or_default();
    let request = match async_graphql::http::parse_query_string(query) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("the query string is not a GraphQL request: {e}"),
            );
        }
    };
    if !is_query(&request) {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_REQUEST",
            "only queries may be sent with GET; send mutations and subscriptions with POST or over WebSocket",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    execute(&state, peer, &parts.headers, request).await
}

/// Whether the operation the request would run is a query. Documents that
/// do not parse count as queries: executing them reports the syntax error.
fn is_query(request: &async_graphql::Request) -> bool {
    let Ok(doc) = async_graphql::parser::parse_query(&request.query) else {
        return true;
    };
    let ty = match (&doc.operations, &request.operation_name) {
        (DocumentOperations::Single(op), _) => Some(op.node.ty),
        (DocumentOperations::Multiple(ops), Some(name)) => {
            ops.get(name.as_str()).map(|op| op.node.ty)
        }
        (DocumentOperations::Multiple(_), None) => None,
    };
    ty.is_none_or(|t| t == OperationType::Query)
}

/// The bearer token of a request: `None` without an `Authorization`
/// header, an error when the header is not a bearer token.
pub fn bearer(headers: &HeaderMap) -> Option<Result<String, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    Some(parse_bearer(value.to_str().unwrap_or_default()))
}

pub fn parse_bearer(value: &str) -> Result<String, ApiError> {
    match value.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim().to_owned())
        }
        _ => Err(ApiError::InvalidToken),
    }
}

async fn execute(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    request: async_graphql::Request,
) -> Response {
    let mut request = request.data(ClientAddr(client_ip(state, peer, headers)));
    if let Some(token) = bearer(headers) {
        let session = match token {
            Ok(token) => state.auth.authenticate(&token).await.map(|s| (s, token)),
            Err(e) => Err(e),
        };
        match session {
            Ok((session, token)) => {
                request = request
                    .data::<Arc<Session>>(session)
                    .data(BearerToken(token));
            }
            // A token that does not resolve refuses the whole request, so
            // a client learns at once that it must sign in again.
            Err(e) => return api_error(e),
        }
    }
    GraphQLResponse::from(state.schema.execute(request).await).into_response()
}

/// An error outside GraphQL execution, in the GraphQL response shape.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, axum::Json(body)).into_response()
}
