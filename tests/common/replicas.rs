//! Several sluice replicas as separate processes (the real binary) on one
//! PostgreSQL or MySQL database and one Redis, each on a random port, for the
//! multi-replica and fault tests. Each cluster has its own database and its
//! own Redis key prefix, so runs never collide.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{Db, ROOT_PASSWORD, ROOT_TOKEN, TestDb, TestServer, unique_suffix};

/// Shared secret key of every replica of a cluster.
const SECRET_KEY: &str = "replica-test-secret-key-0123456789";

/// The Redis URL for tests, or `None` (after saying so) when unset.
pub fn redis_url() -> Option<String> {
    match std::env::var("SLUICE_TEST_REDIS") {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("SLUICE_TEST_REDIS must be set in CI");
            }
            eprintln!("SKIPPED: SLUICE_TEST_REDIS is not set; this replica test did not run");
            None
        }
    }
}

/// One replica process.
pub struct Replica {
    child: Child,
    /// A client for it (no in-process server behind: `state`-based helpers
    /// such as `flush` or `store` are not available).
    pub ts: TestServer,
    /// Everything it printed, stdout and stderr, line by line.
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Sends SIGTERM and waits for the process to exit; returns whether it
    /// exited successfully.
    pub async fn term(&mut self) -> bool {
        signal(&self.child, "TERM");
        self.child.wait().await.unwrap().success()
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_term(&self) {
        signal(&self.child, "TERM");
    }

    /// Waits for the process to exit; returns whether it succeeded.
    pub async fn exited(&mut self) -> bool {
        self.child.wait().await.unwrap().success()
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn kill(&mut self) {
        signal(&self.child, "KILL");
        let _ = self.child.wait().await;
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Everything printed so far, one string.
    pub fn printed(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

fn signal(child: &Child, sig: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    }
}

/// Replicas sharing one database and one Redis prefix.
pub struct Cluster {
    pub db: TestDb,
    /// Empty when the replicas run without Redis.
    pub redis_url: String,
    pub prefix: String,
    pub replicas: Vec<Replica>,
    /// Extra environment for replicas started from now on.
    pub env: Vec<(String, String)>,
    dirs: Vec<tempfile::TempDir>,
    /// The data directory of a SQLite deployment (one replica at a time).
    sqlite_dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// A cluster on `kind` + Redis with no replica yet, or `None` when the
    /// services are not configured (the test then skips).
    pub async fn new(kind: Db) -> Option<Cluster> {
        assert_ne!(kind, Db::Sqlite, "replicas share a server database");
        let redis_url = redis_url()?;
        let db = TestDb::create(kind).await?;
        Some(Cluster {
            db,
            redis_url,
            prefix: format!("sluice_t_{}:", unique_suffix()),
            replicas: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            sqlite_dir: None,
        })
    }

    /// One process at a time on `kind` without Redis (SQLite: a data
    /// directory that outlives each process), or `None` to skip.
    pub async fn alone(kind: Db) -> Option<Cluster> {
        let db = TestDb::create(kind).await?;
        Some(Cluster {
            db,
            redis_url: String::new(),
            prefix: format!("sluice_t_{}:", unique_suffix()),
            replicas: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            sqlite_dir: (kind == Db::Sqlite).then(|| tempfile::tempdir().unwrap()),
        })
    }

    /// Starts one more replica and waits until it listens. Returns its index.
    pub async fn start(&mut self) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = match &self.sqlite_dir {
            Some(d) => d.path().to_path_buf(),
            None => dir.path().to_path_buf(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("SQL_DSN", self.db.dsn.as_deref().unwrap_or(""))
            .env("SQL_MAX_CONNECTIONS", "8")
            .env("REDIS_CONN_STRING", &self.redis_url)
            .env("REDIS_KEY_PREFIX", &self.prefix)
            .env("SLUICE_SECRET_KEY", SECRET_KEY)
            .env("SLUICE_DATA_DIR", data_dir)
            .env("INITIAL_ROOT_PASSWORD", ROOT_PASSWORD)
            .env("INITIAL_ROOT_ACCESS_TOKEN", ROOT_TOKEN)
            .env("LOG_LEVEL", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start the sluice binary");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for reader in [
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(err),
        ] {
            let (output, tx) = (output.clone(), tx.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("sluice is listening")
                        && let Some(addr) = listen_addr(&line)
                        && let Some(tx) = tx.lock().unwrap().take()
                    {
                        let _ = tx.send(addr);
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        let addr = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(a)) => a,
            _ => panic!(
                "replica did not start:\n{}",
                output.lock().unwrap().join("\n")
            ),
        };
        let ts = TestServer {
            server: None,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            // The cluster owns the real database.
            db: TestDb {
                kind: Db::Sqlite,
                dsn: None,
                admin_url: None,
                name: None,
            },
            dir: tempfile::tempdir().unwrap(),
        };
        self.dirs.push(dir);
        self.replicas.push(Replica { child, ts, output });
        self.replicas.len() - 1
    }

    /// Starts `n` replicas, one after the other (the first creates the schema
    /// and the root user).
    pub async fn start_n(&mut self, n: usize) {
        for _ in 0..n {
            self.start().await;
        }
    }

    /// The client of replica `i`.
    pub fn ts(&self, i: usize) -> &TestServer {
        &self.replicas[i].ts
    }

    /// SIGTERMs every replica (each drains its ledger) and asserts they
    /// exited cleanly.
    pub async fn term_all(&mut self) {
        for r in &mut self.replicas {
            let ok = r.term().await;
            assert!(ok, "replica exited with an error:\n{}", r.printed());
        }
    }

    /// A store on the cluster's database, for checks after the replicas stop.
    pub async fn store(&self) -> sluice::store::Store {
        let url = match (&self.db.dsn, &self.sqlite_dir) {
            (Some(dsn), _) => dsn.clone(),
            (None, Some(d)) => format!("sqlite://{}", d.path().join("sluice.db").display()),
            (None, None) => panic!("no database"),
        };
        sluice::store::Store::connect(&url, 2).await.unwrap()
    }

    /// A Redis connection.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Stops everything and removes the database and the Redis keys.
    pub async fn finish(mut self) {
        for r in &mut self.replicas {
            r.kill().await;
        }
        if self.redis_url.is_empty() {
            self.db.drop_db().await;
            return;
        }
        let mut conn = self.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
        self.db.drop_db().await;
    }
}

/// The `addr=` field of the "listening" log line.
fn listen_addr(line: &str) -> Option<String> {
    let at = line.find("addr=")? + 5;
    let rest = &line[at..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '\u{1b}')
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}
