//! `GET /api/stats.csv`: the `stats` table as CSV, for admins.
//!
//! Query parameters mirror the GraphQL query: `groupBy` (comma-separated;
//! `MODEL` when absent, one overall row when empty), `from`, `to`,
//! `timeZone`, `authType`, and `modelId`, `userId`, `sessionId` (each
//! repeatable). The rows are written as the database returns them.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use uuid::Uuid;

use super::api_error;
use super::graphql::bearer;
use crate::app::AppState;
use crate::auth::Permission;
use crate::error::{ApiError, FieldErrors, absorb};
use crate::stats::{Grouping, Period, StatsDimension, StatsFilter, StatsRow, default_grouping};

pub async fn download(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let session = match bearer(&headers) {
        None => return api_error(ApiError::Unauthenticated),
        Some(Err(e)) => return api_error(e),
        Some(Ok(token)) => match state.auth.authenticate(&token).await {
            Ok(session) => session,
            Err(e) => return api_error(e),
        },
    };
    if !session.has(Permission::ViewStats) {
        return api_error(ApiError::Forbidden(Permission::ViewStats.as_str()));
    }
    let (filter, grouping) = match parse(uri.query().unwrap_or_default()) {
        Ok(parsed) => parsed,
        Err(e) => return api_error(e),
    };
    let file = format!("modelfleet-stats-{}.csv", filter.period.label());
    let mut rows = Box::pin(state.stats.stream(&filter, &grouping));
    // Wait for the query's first answer, so that a failure before any row
    // still gets an error status. (The error was logged where it arose.)
    let first = match rows.next().await {
        Some(Err(e)) => return api_error(e),
        first => first,
    };
    let head = Bytes::from(encode(&header(&grouping)));
    let rows = futures_util::stream::iter(first)
        .chain(rows)
        // A few rows per write keeps the body's frames a sensible size.
        .ready_chunks(64)
        .map(move |chunk| {
            let mut out = Vec::new();
            for row in chunk {
                match row {
                    Ok(row) => out.extend(encode(&record(&row, &grouping))),
                    // The status line is gone: ending the body early is all
                    // that is left to tell the client.
                    Err(_) => return Err(std::io::Error::other("the stats query failed")),
                }
            }
            Ok(Bytes::from(out))
        });
    let body = futures_util::stream::once(async move { Ok(head) }).chain(rows);
    let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The label holds only digits, `-` and `_`.
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// The filter and grouping of a query string, every bad parameter named.
pub fn parse(query: &str) -> Result<(StatsFilter, Grouping), ApiError> {
    let mut errors = FieldErrors::new();
    let mut bad = |field: &str, message: String| {
        errors.entry(field.to_owned()).or_default().push(message);
    };
    let mut filter = StatsFilter::default();
    let mut grouping: Option<Grouping> = None;
    let (mut from, mut to, mut zone) = (None, None, None);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "groupBy" => {
                let mut dims = Grouping::new();
                for name in value.split(',').filter(|n| !n.trim().is_empty()) {
                    match StatsDimension::parse(name) {
                        Some(d) => {
                            dims.insert(d);
                        }
                        None => bad(
                            "groupBy",
                            format!("{name:?} is not one of MODEL, AUTH_TYPE, PRINCIPAL, DAY"),
                        ),
                    }
                }
                grouping.get_or_insert_with(Grouping::new).extend(dims);
            }
            "from" => from = Some(value),
            "to" => to = Some(value),
            "timeZone" => zone = Some(value),
            "authType" => match value.to_ascii_uppercase().as_str() {
                "USER" => filter.auth_type = Some(entity::AuthType::User),
                "ANON" => filter.auth_type = Some(entity::AuthType::Anon),
                _ => bad("authType", format!("must be USER or ANON, not {value:?}")),
            },
            "modelId" => filter.model_ids.push(value),
            "userId" | "sessionId" => match Uuid::parse_str(&value) {
                Ok(id) if key == "userId" => filter.user_ids.push(id),
                Ok(id) => filter.session_ids.push(id),
                Err(_) => bad(&key, format!("{value:?} is not a valid id")),
            },
            other => bad(
                other,
                "is not a parameter of this export (groupBy, from, to, timeZone, authType, modelId, userId, sessionId)".to_owned(),
            ),
        }
    }
    let period = Period::parse(from.as_deref(), to.as_deref(), zone.as_deref());
    if let Some(period) = absorb(&mut errors, period)? {
        filter.period = period;
    }
    errors.extend(filter.list_errors());
    if !errors.is_empty() {
        return Err(ApiError::BadUserInput(errors));
    }
    Ok((filter, grouping.unwrap_or_else(default_grouping)))
}

const DURATIONS: [&str; 3] = ["jobTime", "totalTime", "queueTime"];

/// Column names, as the GraphQL fields are named.
fn header(grouping: &Grouping) -> Vec<String> {
    let mut columns: Vec<String> = grouping
        .iter()
        .map(|d| match d {
            StatsDimension::Model => "modelId",
            StatsDimension::AuthType => "authType",
            StatsDimension::Principal => "principalId",
            StatsDimension::Day => "day",
        })
        .map(str::to_owned)
        .collect();
    columns.extend(
        [
            "totalCount",
            "successCount",
            "failCount",
            "cancelledCount",
            "activeCount",
        ]
        .map(str::to_owned),
    );
    for name in DURATIONS {
        for part in ["TotalMs", "MinMs", "MaxMs", "AvgMs", "Count"] {
            columns.push(format!("{name}{part}"));
        }
    }
    columns.extend(["jobTimeP50Ms", "jobTimeP95Ms", "rolledUpCount"].map(str::to_owned));
    columns
}

fn record(row: &StatsRow, grouping: &Grouping) -> Vec<String> {
    let mut fields: Vec<String> = grouping
        .iter()
        .map(|d| match d {
            StatsDimension::Model => row.model_id.clone().unwrap_or_default(),
            StatsDimension::AuthType => row
                .auth_type
                .map(|a| match a {
                    entity::AuthType::User => "USER",
                    entity::AuthType::Anon => "ANON",
                })
                .unwrap_or_default()
                .to_owned(),
            StatsDimension::Principal => {
                row.principal_id.map(|p| p.to_string()).unwrap_or_default()
            }
            StatsDimension::Day => row.day.map(|d| d.to_string()).unwrap_or_default(),
        })
        .collect();
    fields.extend(
        [
            row.total_count,
            row.success_count,
            row.fail_count,
            row.cancelled_count,
            row.active_count,
        ]
        .map(|n| n.to_string()),
    );
    for durations in [row.job_time, row.total_time, row.queue_time] {
        match durations {
            Some(d) => fields.extend([
                d.total_ms.to_string(),
                d.min_ms.to_string(),
                d.max_ms.to_string(),
                d.avg_ms().to_string(),
                d.count.to_string(),
            ]),
            // Empty cells where there were no successes.
            None => fields.extend(std::iter::repeat_n(String::new(), 5)),
        }
    }
    for p in [row.job_p50_ms, row.job_p95_ms] {
        fields.push(p.map(|v| v.to_string()).unwrap_or_default());
    }
    fields.push(row.rolled_up_count.to_string());
    fields
}

/// One CSV line, quoted where needed (RFC 4180).
fn encode(fields: &[String]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = writer.write_record(fields);
    writer.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_mirror_the_query() {
        let (filter, grouping) = parse(
            "groupBy=DAY,model&from=2026-11-01&to=2026-11-30&timeZone=Europe%2FParis\
             &authType=USER&modelId=a&modelId=b%2Cc",
        )
        .expect("valid");
        assert_eq!(
            grouping.into_iter().collect::<Vec<_>>(),
            [StatsDimension::Model, StatsDimension::Day]
        );
        assert_eq!(filter.model_ids, ["a", "b,c"]);
        assert_eq!(filter.auth_type, Some(entity::AuthType::User));
        assert_eq!(filter.period.label(), "2026-11-01_2026-11-30");
        let (_, grouping) = parse("groupBy=").expect("valid");
        assert!(grouping.is_empty());
        let (_, grouping) = parse("").expect("valid");
        assert_eq!(
            grouping.into_iter().collect::<Vec<_>>(),
            [StatsDimension::Model]
        );
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let Err(ApiError::BadUserInput(fields)) =
            parse("groupBy=WEEK&from=yesterday&userId=7&colour=red&timeZone=Nowhere")
        else {
            panic!("refused");
        };
        assert_eq!(
            fields.keys().collect::<Vec<_>>(),
            ["colour", "from", "groupBy", "timeZone", "userId"]
        );
    }

    #[test]
    fn fields_are_quoted_where_needed() {
        let line = encode(&["plain".into(), "with,comma".into(), "say \"hi\"".into()]);
        assert_eq!(
            String::from_utf8(line).expect("utf-8"),
            "plain,\"with,comma\",\"say \"\"hi\"\"\"\n"
        );
    }
}
