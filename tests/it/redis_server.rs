//! A private `redis-server` for tests, started on a free port (never the shared one on 6379)
//! so that a test may SIGKILL it and start it again. Shared by the broker's unit tests and the
//! black-box cluster tests.

use std::process::Stdio;
use std::time::Duration;

/// How long a starting redis-server may take to answer.
const START_WAIT: Duration = Duration::from_secs(10);

/// A private redis-server, killed on drop.
pub struct Redis {
    child: Option<tokio::process::Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
}

impl Redis {
    /// A standalone server.
    pub async fn start() -> Redis {
        Self::start_on_free_port(false).await
    }

    /// A server with `cluster-enabled yes`, for `redis-cli --cluster create`.
    pub async fn start_cluster_node() -> Redis {
        Self::start_on_free_port(true).await
    }

    async fn start_on_free_port(cluster: bool) -> Redis {
        let mut r = Redis {
            child: None,
            port: 0,
            dir: tempfile::tempdir().expect("tempdir"),
            cluster,
        };
        for _ in 0..20 {
            r.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            // A cluster node's bus listens on port + 10000.
            if cluster && r.port > 55_000 {
                continue;
            }
            if r.spawn().await {
                return r;
            }
        }
        panic!("could not start redis-server");
    }

    /// Starts (again) on `self.port` with `self.dir`; false when it could not.
    async fn spawn(&mut self) -> bool {
        let mut cmd = tokio::process::Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.cmd(&["PING"]).await.is_ok() {
                return true;
            }
            if let Some(c) = &mut self.child {
                if c.try_wait().ok().flatten().is_some() {
                    return false;
                }
            }
            // A starting redis-server has no readiness signal but its port.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no save, no goodbye to its clients.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts again on the same port and directory.
    pub async fn restart(&mut self) {
        assert!(self.spawn().await, "redis-server restart");
    }

    /// One command on a fresh connection.
    pub async fn cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut conn).await
    }
}

/// A 3-master Redis Cluster (`redis-cli --cluster create`) on free ports; killed on drop.
pub async fn redis_cluster() -> Vec<Redis> {
    let mut nodes = Vec::new();
    while nodes.len() < 3 {
        nodes.push(Redis::start_cluster_node().await);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = tokio::process::Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .await
        .expect("redis-cli (apt-get install redis-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = tokio::time::Instant::now() + START_WAIT;
    for n in &nodes {
        loop {
            let text = match n.cmd(&["CLUSTER", "INFO"]).await {
                Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                Ok(redis::Value::VerbatimString { text, .. }) => text,
                other => format!("{other:?}"),
            };
            if text.contains("cluster_state:ok") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{text}");
            // Cluster gossip has no notification to wait on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    nodes
}

/// The `redis_url` of a cluster: every master, comma-separated.
pub fn cluster_url(nodes: &[Redis]) -> String {
    nodes.iter().map(Redis::url).collect::<Vec<_>>().join(",")
}
