//! The connections to Redis: one for commands and one for pub/sub, to a single Redis
//! (`PUBLISH`/`SUBSCRIBE`) or to a Redis Cluster (`SPUBLISH`/`SSUBSCRIBE`, slot moves followed
//! by the cluster client, which also resubscribes). Both speak RESP3, so subscriptions live on
//! multiplexed connections and their messages arrive through a push sender.
//!
//! Commands and subscriptions are apart so that a flood of messages never delays a publish's
//! answer, and so that losing the subscriber connection (`CLIENT KILL TYPE pubsub`, an output
//! buffer limit) leaves publishing alone.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, Pipeline, ProtocolVersion, RedisFuture, Value};

/// Where Redis is: `cluster.redis_url` read as one URL (a single Redis) or several (seed nodes
/// of a Redis Cluster).
#[derive(Debug, Clone)]
pub struct Target {
    nodes: Vec<ConnectionInfo>,
}

impl Target {
    /// The nodes of `cluster.redis_url`, as [`crate::config::ClusterConfig::redis_nodes`]
    /// checked them; every connection speaks RESP3 (pushes on multiplexed connections).
    pub fn new(nodes: Vec<ConnectionInfo>) -> Target {
        let nodes = nodes
            .into_iter()
            .map(|info| {
                let redis = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                info.set_redis_settings(redis)
            })
            .collect();
        Target { nodes }
    }

    /// Whether this is a Redis Cluster (several seed URLs).
    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Host and port of every node, for logs (never the password).
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Opens a connection; `push` receives its pub/sub messages (and disconnections).
    pub async fn connect(
        &self,
        timeout: Duration,
        push: Option<super::PushSender>,
    ) -> redis::RedisResult<Conn> {
        if self.is_cluster() {
            let mut builder = ClusterClientBuilder::new(self.nodes.clone())
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(timeout)
                .response_timeout(timeout);
            if let Some(push) = push {
                builder = builder.push_sender(push);
            }
            let client = builder.build()?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let client = redis::Client::open(self.nodes[0].clone())?;
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnects are driven by the health loop's pings as well: a few quick tries here.
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        if let Some(push) = push {
            config = config.set_push_sender(push);
        }
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await?;
        if info.contains("cluster_enabled:1") {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cluster.redis_url names one node of a Redis Cluster: list two or more of its nodes (comma-separated) to use it as a cluster",
            )));
        }
        Ok(Conn::Single(conn))
    }
}

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Subscribes and resolves once Redis confirmed it.
    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channel).await,
            Conn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
