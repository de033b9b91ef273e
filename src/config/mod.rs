//! Process configuration (environment variables and flags) and the runtime
//! options snapshot (`options`), which lives in the database and can change
//! while the server runs.

pub mod options;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// Default listening port.
pub const DEFAULT_PORT: u16 = 3000;
/// Default directory for the SQLite file and the secret key file.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default cap on a request body (management and relay alike).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Everything the process reads from its environment at start.
///
/// Each field is also a command-line flag; the environment variable names are
/// the ones new-api uses where it has one.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// `postgres://…` or `mysql://…`; unset means SQLite in the data directory.
    #[arg(long, env = "SQL_DSN", hide_env_values = true)]
    pub sql_dsn: Option<String>,
    /// Directory for `sluice.db` and `secret.key`.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Redis URL; required for more than one replica.
    #[arg(long, env = "REDIS_CONN_STRING", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel this deployment uses.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "sluice:")]
    pub redis_prefix: String,
    /// How long a replica's quota holds outlive it in Redis if it dies
    /// without a clean stop, milliseconds (then another replica releases them).
    #[arg(long, env = "REDIS_LEASE_MS", default_value_t = 30_000)]
    pub redis_lease_ms: u64,
    /// Key for signing session cookies; derived from the secret key when unset.
    #[arg(long, env = "SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<String>,
    /// Key for encrypting API keys at rest (64 hex chars, or any string which
    /// is hashed to 32 bytes); a key file in the data directory when unset.
    #[arg(long, env = "SLUICE_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Root password on first start; generated and printed when unset.
    #[arg(long, env = "INITIAL_ROOT_PASSWORD", hide_env_values = true)]
    pub initial_root_password: Option<String>,
    /// Root access token on first start; generated and printed when unset.
    #[arg(long, env = "INITIAL_ROOT_ACCESS_TOKEN", hide_env_values = true)]
    pub initial_root_access_token: Option<String>,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` are believed (IPs or CIDRs,
    /// comma separated).
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<IpNet>,
    /// Log filter (`info`, `debug`, or a tracing directive list).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers, milliseconds (also how
    /// long an idle keep-alive connection stays open).
    #[arg(long, env = "CLIENT_HEADER_TIMEOUT_MS", default_value_t = 30_000)]
    pub client_header_timeout_ms: u64,
    /// Time a client has to send a request's body, milliseconds.
    #[arg(long, env = "CLIENT_BODY_TIMEOUT_MS", default_value_t = 60_000)]
    pub client_body_timeout_ms: u64,
    /// Largest request head (request line plus headers) in bytes.
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 65_536)]
    pub max_header_bytes: usize,
    /// Size of the database connection pool.
    #[arg(long, env = "SQL_MAX_CONNECTIONS", default_value_t = 16)]
    pub sql_max_connections: u32,
    /// Upstream connect timeout, milliseconds.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub upstream_connect_timeout_ms: u64,
    /// Time allowed for an upstream to start answering, milliseconds.
    #[arg(
        long,
        env = "UPSTREAM_FIRST_BYTE_TIMEOUT_MS",
        default_value_t = 300_000
    )]
    pub upstream_first_byte_timeout_ms: u64,
    /// Longest silence allowed inside an upstream response, milliseconds.
    #[arg(long, env = "UPSTREAM_IDLE_TIMEOUT_MS", default_value_t = 300_000)]
    pub upstream_idle_timeout_ms: u64,
    /// Ledger batch window, milliseconds (this much, plus the commit in flight, is lost on SIGKILL).
    #[arg(long, env = "LEDGER_WINDOW_MS", default_value_t = crate::ledger::DEFAULT_WINDOW_MS)]
    pub ledger_window_ms: u64,
    /// Most rows the ledger writer commits in one transaction.
    #[arg(long, env = "LEDGER_MAX_BATCH", default_value_t = crate::ledger::DEFAULT_MAX_BATCH)]
    pub ledger_max_batch: usize,
    /// Threads serving HTTP, each with its own single-threaded runtime and
    /// upstream connection pool; 0 means one more than the CPU cores.
    #[arg(long, env = "SLUICE_SERVE_THREADS", default_value_t = 0)]
    pub serve_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: DEFAULT_PORT,
            bind: IpAddr::from([0, 0, 0, 0]),
            sql_dsn: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            redis_url: None,
            redis_prefix: "sluice:".into(),
            redis_lease_ms: 30_000,
            session_secret: None,
            secret_key: None,
            initial_root_password: None,
            initial_root_access_token: None,
            trusted_proxies: Vec::new(),
            log_level: "info".into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            client_header_timeout_ms: 30_000,
            client_body_timeout_ms: 60_000,
            max_header_bytes: 65_536,
            sql_max_connections: 16,
            upstream_connect_timeout_ms: 10_000,
            upstream_first_byte_timeout_ms: 300_000,
            upstream_idle_timeout_ms: 300_000,
            ledger_window_ms: crate::ledger::DEFAULT_WINDOW_MS,
            ledger_max_batch: crate::ledger::DEFAULT_MAX_BATCH,
            serve_threads: 0,
        }
    }
}

impl Config {
    /// How many serving threads to run: `serve_threads`, or one more than
    /// the cores (a CPU limit counts as the cores). The process has other
    /// busy threads (SQLite's, the main runtime's): with one lane per core,
    /// whichever lane shares a core with them serves its connections at
    /// part speed; one lane more spreads that cost (+4-6 % throughput on
    /// the 2-core benchmark, docs/performance.md item 22).
    pub fn serve_threads(&self) -> usize {
        match self.serve_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()) + 1,
            n => n,
        }
    }

    /// Upstream connect timeout.
    pub fn upstream_connect(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.upstream_connect_timeout_ms)
    }

    /// Time allowed for an upstream to send its response head.
    pub fn upstream_first_byte(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.upstream_first_byte_timeout_ms)
    }

    /// Longest silence inside an upstream body.
    pub fn upstream_idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.upstream_idle_timeout_ms)
    }

    /// The database URL: `SQL_DSN`, or the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        match &self.sql_dsn {
            Some(dsn) if !dsn.trim().is_empty() => dsn.trim().to_string(),
            _ => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("sluice.db").display()
            ),
        }
    }
}

/// Accepts a bare IP (as a /32 or /128) or a CIDR.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{s}' is not an IP address or CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0 serving threads means one more than the cores; a number is taken
    /// as it is.
    #[test]
    fn serve_threads_default_to_one_more_than_the_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = Config::default();
        assert_eq!(auto.serve_threads(), cores + 1);
        let set = Config {
            serve_threads: 2,
            ..Config::default()
        };
        assert_eq!(set.serve_threads(), 2);
    }
}
