//! The Redis connection several replicas share: one auto-reconnecting
//! multiplexed connection with short timeouts (a Redis outage must answer
//! quickly, not hang calls), and a key prefix so deployments and test runs
//! never collide.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A handle to Redis.
#[derive(Clone)]
pub struct Redis {
    pub conn: ConnectionManager,
    pub client: redis::Client,
    prefix: Arc<str>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis(prefix {})", self.prefix)
    }
}

impl Redis {
    /// Connects (and keeps reconnecting in the background when Redis goes
    /// away). Commands give up after 1 s.
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Redis> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let conn = client.get_connection_manager_with_config(cfg).await?;
        Ok(Redis {
            conn,
            client,
            prefix: Arc::from(prefix),
        })
    }

    /// A key under this deployment's prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}
