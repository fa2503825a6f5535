//! What the benchmarks share: a PostgreSQL database made for one run, and
//! a GraphQL call.

use std::net::SocketAddr;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};

/// Starts an anonymous session on the server at `addr`; its token.
#[allow(dead_code, reason = "not every benchmark talks GraphQL")]
pub async fn anonymous_token(http: &reqwest::Client, addr: SocketAddr) -> String {
    let body = gql(
        http,
        addr,
        None,
        "mutation { startAnonymousSession { token } }",
        json!({}),
    )
    .await;
    body["data"]["startAnonymousSession"]["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

/// Posts a GraphQL query to the server at `addr`, as `token` when given.
#[allow(dead_code, reason = "not every benchmark talks GraphQL")]
pub async fn gql(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: Option<&str>,
    query: &str,
    vars: Value,
) -> Value {
    let mut req = http
        .post(format!("http://{addr}/graphql"))
        .json(&json!({ "query": query, "variables": vars }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("sent").json().await.expect("json")
}

/// The server benchmarks use, found as the tests find it.
pub fn pg_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh PostgreSQL database, dropped by [`ScratchDatabase::drop_now`].
pub struct ScratchDatabase {
    admin: DatabaseConnection,
    name: String,
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `mf_bench_<label>_<pid>` on the benchmark server.
    pub async fn create(label: &str) -> Self {
        let admin = Database::connect(pg_admin_url())
            .await
            .expect("PostgreSQL reachable (TEST_POSTGRES_URL)");
        let name = format!("mf_bench_{label}_{}", std::process::id());
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        let base = pg_admin_url();
        let url = format!(
            "{}/{name}",
            &base[..base.rfind('/').expect("database part")]
        );
        ScratchDatabase { admin, name, url }
    }

    pub async fn drop_now(self) {
        self.admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .expect("drop database");
    }
}
