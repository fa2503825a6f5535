//! Test support: a real server on a free port over a fresh database, and a
//! small client for GraphQL over HTTP and WebSocket.
//!
//! Every test gets its own database: a temporary SQLite file, or a
//! PostgreSQL database with a unique name that is dropped when the test ends
//! (pass or fail). PostgreSQL is found at `TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`; if it cannot be reached the
//! PostgreSQL tests fail and say how to start it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::{SinkExt, StreamExt};
use modelfleet::app::{AppState, Application};
use modelfleet::auth::Role;
use modelfleet::auth::signup::NewAccount;
use modelfleet::config::Config;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Runs the same test body against SQLite and PostgreSQL.
#[macro_export]
macro_rules! db_test {
    ($name:ident, $db:ident => $body:block) => {
        mod $name {
            // Not every test body uses everything its module imports; the
            // lint cannot be expected, since some do.
            #[allow(unused_imports, reason = "test bodies vary")]
            use super::*;

            async fn body($db: $crate::support::Db) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                body($crate::support::Db::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                body($crate::support::Db::Postgres).await
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub const PASSWORD: &str = "correct horse battery";

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database made for one test and removed after it.
pub enum TestDb {
    Sqlite { _dir: tempfile::TempDir },
    Postgres { name: String },
}

impl TestDb {
    /// Makes a fresh database and returns it with its URL.
    pub async fn create(db: Db) -> (TestDb, String) {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                (TestDb::Sqlite { _dir: dir }, url)
            }
            Db::Postgres => {
                static COUNTER: AtomicU32 = AtomicU32::new(0);
                let name = format!(
                    "mf_test_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    uuid::Uuid::new_v4()
                        .simple()
                        .to_string()
                        .get(..8)
                        .unwrap_or("x")
                );
                let admin = admin_connection().await;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let base = postgres_admin_url();
                let url = match base.rfind('/') {
                    Some(i) => format!("{}/{name}", &base[..i]),
                    None => panic!("TEST_POSTGRES_URL has no database part: {base}"),
                };
                (TestDb::Postgres { name }, url)
            }
        }
    }
}

pub async fn admin_connection() -> sea_orm::DatabaseConnection {
    let url = postgres_admin_url();
    match Database::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {url} ({e}).\n\
             The PostgreSQL half of the suite needs it: start it with\n  \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
             or point TEST_POSTGRES_URL at a server where the user may create databases."
        ),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { name } = self {
            let name = name.clone();
            // Drop runs outside any async context we may block; use a thread
            // with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(admin) = Database::connect(postgres_admin_url()).await {
                        let _ = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                        admin.close().await.ok();
                    }
                });
            })
            .join();
        }
    }
}

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
    pub db_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    // Dropped last: the server is stopped first. `None` when the database
    // belongs to the test.
    _db: Option<TestDb>,
}

/// A configuration fit for tests: port 0, generous rate limits.
pub fn test_config(db_url: &str) -> Config {
    let mut config = Config::default();
    config.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.shutdown_grace_secs = 2;
    config.database.url = db_url.to_owned();
    config.database.max_connections = 5;
    config.auth.rate_limit_per_minute = 10_000;
    config.auth.rate_limit_burst = 10_000;
    config
}

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        Self::spawn_with(db, |_| {}).await
    }

    pub async fn spawn_with(db: Db, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let (test_db, url) = TestDb::create(db).await;
        let mut config = test_config(&url);
        adjust(&mut config);
        Self::spawn_on(config, test_db).await
    }

    /// Serves `config` over a database made beforehand.
    pub async fn spawn_on(config: Config, test_db: TestDb) -> TestApp {
        let mut app = Self::spawn_over(config).await;
        app._db = Some(test_db);
        app
    }

    /// Serves `config` over a database that the test keeps.
    pub async fn spawn_over(config: Config) -> TestApp {
        let url = config.database.url.clone();
        let app = Application::build(config).await.expect("server builds");
        let fleet = app.state().fleet.clone();
        let addr = app.local_addr();
        let state = app.state().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        // The scaler takes its lock first thing; wait for it, so that tests
        // never race it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !fleet.is_leading() {
            assert!(
                std::time::Instant::now() < deadline,
                "the scaler never started"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        TestApp {
            addr,
            state,
            http: reqwest::Client::new(),
            db_url: url,
            stop: Some(stop),
            server: Some(server),
            _db: None,
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a GraphQL request and returns the status and JSON body.
    pub async fn post(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    /// A GraphQL call without a session.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.post(None, query, variables).await.1
    }

    /// A GraphQL call with a bearer token.
    pub async fn gql_as(&self, token: &str, query: &str, variables: Value) -> Value {
        self.post(Some(token), query, variables).await.1
    }

    pub async fn anonymous(&self) -> String {
        let body = self
            .gql("mutation { startAnonymousSession { token } }", json!({}))
            .await;
        token_of(&body, "startAnonymousSession")
    }

    /// Signs up `username` (email `<username>@example.com`) and returns the
    /// token.
    pub async fn signup(&self, username: &str) -> String {
        let body = self
            .gql(
                SIGNUP,
                json!({ "input": { "username": username, "email": format!("{username}@example.com"), "password": PASSWORD } }),
            )
            .await;
        token_of(&body, "signup")
    }

    pub async fn login(&self, login: &str, password: &str) -> Value {
        self.gql(
            "mutation($input: LoginInput!) { login(input: $input) { token expiresAt viewer { id username roles } } }",
            json!({ "input": { "login": login, "password": password } }),
        )
        .await
    }

    /// Makes an admin account (as `modelfleet user create --admin` does) and
    /// signs it in.
    pub async fn admin(&self, username: &str) -> String {
        let account = NewAccount {
            username: username.to_owned(),
            email: format!("{username}@example.com"),
            password: PASSWORD.to_owned(),
        };
        self.state
            .auth
            .create_user(account, &[Role::Admin])
            .await
            .expect("admin created");
        token_of(&self.login(username, PASSWORD).await, "login")
    }

    /// Opens a GraphQL WebSocket offering `protocols`.
    pub async fn websocket(&self, protocols: &str) -> (Ws, String) {
        let mut request = format!("ws://{}/graphql", self.addr)
            .into_client_request()
            .expect("ws request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).expect("header"),
        );
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (Ws { inner: ws }, chosen)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub const SIGNUP: &str = "mutation($input: SignupInput!) { signup(input: $input) { token expiresAt viewer { id authType username email roles permissions } } }";

pub fn token_of(body: &Value, field: &str) -> String {
    body["data"][field]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {body}"))
        .to_owned()
}

/// The `extensions.code` of the first error.
pub fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// A WebSocket client speaking JSON text frames.
pub struct Ws {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<u16>, String),
}

impl Ws {
    pub async fn send(&mut self, value: Value) {
        self.inner
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("ws send");
    }

    /// The next JSON message or close, skipping pings and keep-alives.
    pub async fn next(&mut self) -> Frame {
        loop {
            let message =
                // Generous: an instance starting on a loaded machine can be
                // silent for a while.
                tokio::time::timeout(std::time::Duration::from_secs(30), self.inner.next())
                    .await
                    .expect("a websocket frame within 30 s");
            match message {
                Some(Ok(Message::Text(t))) => {
                    let value: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
                    if matches!(value["type"].as_str(), Some("ka" | "ping" | "pong")) {
                        continue;
                    }
                    return Frame::Json(value);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Frame::Closed(
                        frame.as_ref().map(|f| u16::from(f.code)),
                        frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Frame::Closed(None, String::new()),
            }
        }
    }

    /// Closes from the client's side.
    pub async fn close(&mut self) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        self.inner
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })))
            .await
            .expect("ws close");
    }

    /// Round-trips a ping: every message sent before it has been handled
    /// (graphql-transport-ws handles a connection's messages in order).
    pub async fn sync(&mut self) {
        self.send(json!({ "type": "ping" })).await;
        loop {
            let message =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.inner.next())
                    .await
                    .expect("a pong within 10 s");
            if let Some(Ok(Message::Text(t))) = message
                && t.as_str().contains("\"pong\"")
            {
                return;
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Frame::Json(v) => v,
            Frame::Closed(code, reason) => {
                panic!("socket closed ({code:?}, {reason}) where a message was expected")
            }
        }
    }
}

/// The example `sleepy` model under another id, adjusted by `adjust`.
pub fn sleepy(
    id: &str,
    adjust: impl FnOnce(&mut modelfleet::models::ModelConfig),
) -> modelfleet::models::ModelConfig {
    let mut model = modelfleet::models::example_models()
        .into_iter()
        .find(|m| m.id == "sleepy")
        .expect("the sleepy example");
    model.id = id.to_owned();
    model.name = Some(id.to_owned());
    adjust(&mut model);
    model
}

pub const SUBMIT: &str =
    "mutation($input: SubmitRequestInput!) { submitRequest(input: $input) { id status } }";

pub const REQUEST: &str = "query($id: ID!) { request(id: $id) { id status output error attempts modelId \
    createdAt jobStartedAt jobFinishedAt completedAt queueTimeMs jobTimeMs totalTimeMs } }";

impl TestApp {
    /// Submits `input` to `model` and returns the request id.
    pub async fn submit(&self, token: &str, model: &str, input: Value) -> String {
        let body = self
            .gql_as(
                token,
                SUBMIT,
                json!({ "input": { "modelId": model, "input": input } }),
            )
            .await;
        body["data"]["submitRequest"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("not submitted: {body}"))
            .to_owned()
    }

    /// Polls the request until it reaches a final status (first runs may
    /// include building a model's virtual environment).
    pub async fn wait_done(&self, token: &str, id: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            let body = self.gql_as(token, REQUEST, json!({ "id": id })).await;
            let request = body["data"]["request"].clone();
            match request["status"].as_str() {
                Some("QUEUED" | "RUNNING") => {}
                Some(_) => return request,
                None => panic!("no request in {body}"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "request {id} not done: {request}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Waits until `check` holds, polling.
    pub async fn eventually<F, Fut>(&self, what: &str, secs: u64, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !check().await {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Every instance recorded for `model`.
    pub async fn instances(&self, model: &str) -> Vec<entity::instance::Model> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        entity::instance::Entity::find()
            .filter(entity::instance::Column::ModelId.eq(model))
            .all(&self.state.db)
            .await
            .expect("instances")
    }
}
