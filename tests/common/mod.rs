//! Test harness: start the real server on a random port against a fresh
//! database (SQLite in a temp dir, or a uniquely named PostgreSQL / MySQL
//! database when `SLUICE_TEST_PG` / `SLUICE_TEST_MYSQL` are set) and drive it
//! over HTTP like a client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod proxy;
pub mod relay;
pub mod replicas;

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sluice::config::Config;
use sluice::server::{RunningServer, start};
use sqlx::Connection;

/// Root password every test server starts with.
pub const ROOT_PASSWORD: &str = "root-password-for-tests";
/// Root access token every test server starts with.
pub const ROOT_TOKEN: &str = "roottokenfortests0123456789abcdef";

/// Which database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
    Mysql,
}

impl Db {
    /// The env var naming the service URL, if this kind needs one.
    pub fn env_var(self) -> Option<&'static str> {
        match self {
            Db::Sqlite => None,
            Db::Postgres => Some("SLUICE_TEST_PG"),
            Db::Mysql => Some("SLUICE_TEST_MYSQL"),
        }
    }

    /// The service URL, or `None` (after saying so) when the test must skip.
    /// Under `CI=true` a missing variable is a failure, never a skip.
    pub fn service_url(self) -> Option<String> {
        let var = self.env_var()?;
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{var} must be set in CI");
                }
                eprintln!("SKIPPED: {var} is not set; this {self:?} test did not run");
                None
            }
        }
    }
}

fn unique_suffix() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{t}_{}", sluice::auth::keys::random_alnum(8).to_lowercase())
}

/// A database created for one test, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub kind: Db,
    /// DSN for the server (`None` for SQLite: the data dir is used).
    pub dsn: Option<String>,
    admin_url: Option<String>,
    name: Option<String>,
}

/// Replaces the database path of a URL.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    /// Creates a fresh database of `kind`, or `None` when the service is not
    /// configured (the test then skips).
    pub async fn create(kind: Db) -> Option<TestDb> {
        if kind == Db::Sqlite {
            return Some(TestDb {
                kind,
                dsn: None,
                admin_url: None,
                name: None,
            });
        }
        let url = kind.service_url()?;
        let name = format!("sluice_t_{}", unique_suffix());
        match kind {
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&url)
                    .await
                    .expect("connect to SLUICE_TEST_PG");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            Db::Mysql => {
                let mut c = sqlx::MySqlConnection::connect(&url)
                    .await
                    .expect("connect to SLUICE_TEST_MYSQL");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {name} CHARACTER SET utf8mb4"
                )))
                .execute(&mut c)
                .await
                .unwrap();
            }
            Db::Sqlite => unreachable!(),
        }
        Some(TestDb {
            kind,
            dsn: Some(with_db(&url, &name)),
            admin_url: Some(url),
            name: Some(name),
        })
    }

    /// Drops the database (best effort; the server must be stopped first).
    pub async fn drop_db(&self) {
        let (Some(url), Some(name)) = (&self.admin_url, &self.name) else {
            return;
        };
        let sql = format!("DROP DATABASE IF EXISTS {name}");
        match self.kind {
            Db::Postgres => {
                if let Ok(mut c) = sqlx::PgConnection::connect(url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{sql} WITH (FORCE)")))
                        .execute(&mut c)
                        .await;
                }
            }
            Db::Mysql => {
                if let Ok(mut c) = sqlx::MySqlConnection::connect(url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut c)
                        .await;
                }
            }
            Db::Sqlite => {}
        }
    }
}

/// A counter from the `/metrics` page at `url`, summed over its labels;
/// None when the server does not answer (one killed under the test).
pub async fn metric_at(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// A running server plus a client for it.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub base: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
}

/// Starts a server on `kind` (None: the service is not configured; skip).
pub async fn spawn_on(kind: Db) -> Option<TestServer> {
    spawn_with(kind, |_| {}).await
}

/// Starts a server on SQLite.
pub async fn spawn() -> TestServer {
    spawn_on(Db::Sqlite).await.expect("sqlite always available")
}

/// Starts a server on `kind` after letting the caller adjust the config.
pub async fn spawn_with(kind: Db, adjust: impl FnOnce(&mut Config)) -> Option<TestServer> {
    let db = TestDb::create(kind).await?;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        port: 0,
        bind: "127.0.0.1".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        sql_dsn: db.dsn.clone(),
        initial_root_password: Some(ROOT_PASSWORD.into()),
        initial_root_access_token: Some(ROOT_TOKEN.into()),
        sql_max_connections: 4,
        ..Config::default()
    };
    adjust(&mut config);
    let server = start(config).await.expect("server starts");
    let base = format!("http://{}", server.addr);
    Some(TestServer {
        server: Some(server),
        base,
        http: reqwest::Client::new(),
        db,
        dir,
    })
}

/// A management API caller: an access token and the user id it belongs to.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: i64,
    pub token: String,
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// `success` of the envelope.
    pub fn success(&self) -> bool {
        self.body["success"].as_bool().unwrap_or(false)
    }

    /// `message` of the envelope.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }

    /// `data` of the envelope.
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// Asserts HTTP 200 and `success:true`, returns `data`.
    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        assert!(self.success(), "expected success, got {}", self.body);
        self.data()
    }

    /// Asserts HTTP 200, `success:false` and a message containing `needle`.
    #[track_caller]
    pub fn refused(&self, needle: &str) {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        assert!(!self.success(), "expected a refusal, got {}", self.body);
        assert!(
            self.message().contains(needle),
            "message {:?} does not mention {needle:?}",
            self.message()
        );
    }

    /// Asserts the status and `success:false` with a non-empty message.
    #[track_caller]
    pub fn error(&self, status: StatusCode) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["success"], json!(false), "body: {}", self.body);
        assert!(!self.message().is_empty(), "empty message: {}", self.body);
    }
}

impl TestServer {
    /// The root caller.
    pub fn root(&self) -> Caller {
        Caller {
            id: 1,
            token: ROOT_TOKEN.into(),
        }
    }

    /// A URL on the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A counter from the server's `/metrics`, summed over its labels.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.http, &self.url("/metrics"), name)
            .await
            .unwrap_or_else(|| panic!("no /metrics answer for {name}"))
    }

    /// A request with `caller`'s credentials.
    pub fn req(&self, caller: &Caller, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("Authorization", format!("Bearer {}", caller.token))
            .header("New-Api-User", caller.id.to_string())
    }

    /// Sends and parses.
    pub async fn send(&self, rb: RequestBuilder) -> Resp {
        let r = rb.send().await.expect("request sent");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, c: &Caller, path: &str) -> Resp {
        self.send(self.req(c, Method::GET, path)).await
    }

    pub async fn post(&self, c: &Caller, path: &str, body: Value) -> Resp {
        self.send(self.req(c, Method::POST, path).json(&body)).await
    }

    pub async fn put(&self, c: &Caller, path: &str, body: Value) -> Resp {
        self.send(self.req(c, Method::PUT, path).json(&body)).await
    }

    pub async fn delete(&self, c: &Caller, path: &str) -> Resp {
        self.send(self.req(c, Method::DELETE, path)).await
    }

    /// Creates a user with `role` (as root) and returns a caller for it.
    pub async fn user(&self, username: &str, role: i64) -> Caller {
        let r = self
            .post(
                &self.root(),
                "/api/user/",
                json!({"username": username, "password": "password123", "role": role}),
            )
            .await;
        let id = r.ok()["id"].as_i64().unwrap();
        self.login_token(username, "password123", id).await
    }

    /// Logs in with a password, then fetches an access token.
    pub async fn login_token(&self, username: &str, password: &str, id: i64) -> Caller {
        let jar_client = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap();
        let r = jar_client
            .post(self.url("/api/user/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let r: Value = jar_client
            .get(self.url("/api/user/token"))
            .header("New-Api-User", id.to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Caller {
            id,
            token: r["data"].as_str().expect("access token").to_string(),
        }
    }

    /// Creates a token for `c` and returns its data object.
    pub async fn token(&self, c: &Caller, body: Value) -> Value {
        self.post(c, "/api/token/", body).await.ok().clone()
    }

    /// The store behind the server.
    pub fn store(&self) -> &sluice::store::Store {
        &self.server.as_ref().unwrap().state.store
    }

    /// Stops the server (draining) and drops its database.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            s.wait().await.unwrap();
        }
        self.db.drop_db().await;
    }
}

/// A snapshot of every table, to show a refused write changed nothing.
pub async fn snapshot(store: &sluice::store::Store) -> Value {
    use sqlx::Row;
    let mut out = serde_json::Map::new();
    for table in ["users", "tokens", "options", "redemptions", "logs"] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM {table} ORDER BY 1"
        )))
        .fetch_all(store.pool())
        .await
        .unwrap();
        let mut list = Vec::new();
        for r in rows {
            let mut cols = Vec::new();
            for i in 0..r.len() {
                let v = r
                    .try_get::<i64, _>(i)
                    .map(Value::from)
                    .or_else(|_| r.try_get::<String, _>(i).map(Value::from))
                    .or_else(|_| r.try_get::<f64, _>(i).map(Value::from))
                    .unwrap_or(Value::Null);
                cols.push(v);
            }
            list.push(Value::Array(cols));
        }
        out.insert(table.to_string(), Value::Array(list));
    }
    Value::Object(out)
}

impl TestServer {
    /// Creates a user directly in the store (no password hashing, so fast; the
    /// user cannot log in with a password) and returns a caller for it.
    pub async fn fast_user(&self, username: &str, role: i64) -> Caller {
        let token = sluice::auth::keys::new_access_token();
        let id = self
            .store()
            .create_user(&sluice::store::NewUser {
                username: username.into(),
                password_hash: "!".into(),
                display_name: username.into(),
                role,
                group: "default".into(),
                quota: 0,
                access_token_hash: Some(sluice::auth::keys::lookup_hash(&token)),
            })
            .await
            .unwrap();
        Caller { id, token }
    }

    /// A request without any credentials.
    pub fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sets an option as root and asserts it was accepted.
    pub async fn set_option(&self, key: &str, value: &str) {
        self.put(
            &self.root(),
            "/api/option/",
            json!({"key": key, "value": value}),
        )
        .await
        .ok();
    }

    /// Every manage-type (3) log row, newest first.
    pub async fn manage_logs(&self) -> Vec<sluice::store::LogRow> {
        let f = sluice::store::LogFilter {
            log_type: Some(3),
            ..Default::default()
        };
        self.store().list_logs(&f, 0, 1000).await.unwrap().0
    }

    /// The stored token row, as a map of column name to value.
    pub async fn token_row(&self, id: i64) -> serde_json::Map<String, Value> {
        use sqlx::{Column, Row};
        let sql = self
            .store()
            .dialect()
            .sql("SELECT * FROM tokens WHERE id = ?");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(self.store().pool())
            .await
            .unwrap();
        let mut m = serde_json::Map::new();
        for i in 0..r.len() {
            let v = r
                .try_get::<i64, _>(i)
                .map(Value::from)
                .or_else(|_| r.try_get::<String, _>(i).map(Value::from))
                .unwrap_or(Value::Null);
            m.insert(r.column(i).name().to_string(), v);
        }
        m
    }
}

/// Asserts a refused write: HTTP 200, `success:false`, a message naming
/// `field`, and nothing in the database changed.
#[macro_export]
macro_rules! assert_refused_unchanged {
    ($ts:expr, $field:expr, $call:expr) => {{
        let before = $crate::common::snapshot($ts.store()).await;
        let r = $call.await;
        r.refused($field);
        let after = $crate::common::snapshot($ts.store()).await;
        assert_eq!(before, after, "a refused write changed the database");
        r
    }};
}
