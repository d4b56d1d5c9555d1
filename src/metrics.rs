//! Prometheus metrics (`wsgate_` prefix) and the standard process metrics.
//!
//! Label families are resolved once at startup into plain counters, so counting on the hot
//! path is one relaxed atomic add (handshakes, off the hot path, look their series up). No
//! label carries a user, a room or anything else a client chose.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::protocol::close;

/// The wire protocol of a session or a handshake: the `protocol` label. The native
/// endpoint's series carry none (they are the series the gateway always had, so existing
/// queries, alerts and dashboards read them unchanged); the Pusher endpoint's carry
/// `protocol="pusher"`. `sum without (protocol)` counts both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Native,
    Pusher,
}

impl Protocol {
    fn label(self) -> Option<&'static str> {
        match self {
            Protocol::Native => None,
            Protocol::Pusher => Some("pusher"),
        }
    }
}

/// A `protocol` label that is absent for the native protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ProtocolLabel {
    protocol: Option<&'static str>,
}

impl EncodeLabelSet for ProtocolLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        if let Some(protocol) = self.protocol {
            ("protocol", protocol).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Handshake outcomes, the `result` label of `wsgate_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    Ok,
    BadOrigin,
    BadToken,
    RateLimited,
    Overloaded,
    Timeout,
    TlsError,
    BadRequest,
    /// Closed at accept: its address already had `limits.handshakes_in_flight_per_ip`
    /// connections before `101`.
    TooManyInFlight,
    /// With `server.proxy_protocol`: closed before TLS, from an address outside
    /// `server.trusted_proxies` or without a valid PROXY header (the reason says which).
    ProxyRefused,
}

impl HandshakeResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::BadOrigin => "bad_origin",
            HandshakeResult::BadToken => "bad_token",
            HandshakeResult::RateLimited => "rate_limited",
            HandshakeResult::Overloaded => "overloaded",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::TlsError => "tls_error",
            HandshakeResult::BadRequest => "bad_request",
            HandshakeResult::TooManyInFlight => "too_many_in_flight",
            HandshakeResult::ProxyRefused => "proxy_refused",
        }
    }
}

/// Why an inbound message was not delivered, the `reason` label of
/// `wsgate_messages_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    RateLimited,
    BadRequest,
    Forbidden,
    NotJoined,
    TooManyRooms,
    SlowConsumer,
}

impl DropReason {
    const ALL: [DropReason; 6] = [
        DropReason::RateLimited,
        DropReason::BadRequest,
        DropReason::Forbidden,
        DropReason::NotJoined,
        DropReason::TooManyRooms,
        DropReason::SlowConsumer,
    ];

    fn as_str(&self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::BadRequest => "bad_request",
            DropReason::Forbidden => "forbidden",
            DropReason::NotJoined => "not_joined",
            DropReason::TooManyRooms => "too_many_rooms",
            DropReason::SlowConsumer => "slow_consumer",
        }
    }
}

/// Labels of `wsgate_handshakes_total`: `result`, and `reason` when the refusal has a finer
/// cause (`result="bad_token",reason="token_expired"`). Without one the series has no `reason`
/// label at all, so `{result="ok"}` stays the same series it always was.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct HandshakeLabels {
    result: &'static str,
    reason: Option<&'static str>,
    protocol: Option<&'static str>,
}

impl EncodeLabelSet for HandshakeLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("result", self.result).encode(encoder.encode_label())?;
        if let Some(reason) = self.reason {
            ("reason", reason).encode(encoder.encode_label())?;
        }
        if let Some(protocol) = self.protocol {
            ("protocol", protocol).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Registry,
    /// Open native sessions (`wsgate_connections`).
    pub connections: Gauge,
    /// Open Pusher sessions (`wsgate_connections{protocol="pusher"}`).
    pub pusher_connections: Gauge,
    pub max_connections: Gauge,
    pub rooms: Gauge,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    slow_closes: Counter,
    /// Created per (result, reason) on first use: refusal reasons are a fixed set of static
    /// names, and a handshake costs far more than the map lookup.
    handshakes: Family<HandshakeLabels, Counter>,
    dropped: Vec<Counter>,
    closes: Vec<(u16, Counter)>,
    reloads_ok: Counter,
    reloads_error: Counter,
    fanout_latency: Histogram,
    cluster: Option<ClusterMetrics>,
}

/// Cluster mode's metrics (registered only when `cluster.redis_url` is set).
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// `wsgate_cluster_redis_up`: 1 while this node reaches Redis and serves joins/publishes.
    pub redis_up: Gauge,
    /// `wsgate_cluster_nodes`: nodes whose heartbeat is younger than `cluster.node_ttl`.
    pub nodes: Gauge,
    /// `wsgate_cluster_resyncs_total{kind="replay"}`: missed publications read back from a
    /// room's history and delivered in order.
    pub replays: Counter,
    /// `wsgate_cluster_resyncs_total{kind="lost"}`: rooms whose local sessions were closed
    /// with 1012 (the history no longer held what they missed, or the epoch changed).
    pub lost: Counter,
    /// `wsgate_cluster_redis_roundtrip_seconds`: every Redis call the broker makes.
    pub roundtrip: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics of a single node.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// The metrics of a cluster node: a single node's and the `wsgate_cluster_*` ones.
    pub fn for_cluster() -> Self {
        Self::build(true)
    }

    fn build(cluster: bool) -> Self {
        let mut registry = Registry::default();
        let connection_family = Family::<ProtocolLabel, Gauge>::default();
        registry.register(
            "wsgate_connections",
            "Open WebSocket sessions (protocol=\"pusher\": of the Pusher endpoint)",
            connection_family.clone(),
        );
        let connections = connection_family
            .get_or_create(&ProtocolLabel { protocol: None })
            .clone();
        let pusher_connections = connection_family
            .get_or_create(&ProtocolLabel {
                protocol: Protocol::Pusher.label(),
            })
            .clone();
        let max_connections = Gauge::default();
        registry.register(
            "wsgate_max_connections",
            "Configured server.max_connections",
            max_connections.clone(),
        );
        let rooms = Gauge::default();
        registry.register(
            "wsgate_rooms",
            "Rooms with members or history",
            rooms.clone(),
        );
        let messages_in = Counter::default();
        registry.register(
            "wsgate_messages_in",
            "Client messages received",
            messages_in.clone(),
        );
        let messages_out = Counter::default();
        registry.register(
            "wsgate_messages_out",
            "Messages written to clients",
            messages_out.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "wsgate_bytes_in",
            "Bytes of client messages received",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "wsgate_bytes_out",
            "Bytes of messages written to clients",
            bytes_out.clone(),
        );
        let slow_closes = Counter::default();
        registry.register(
            "wsgate_slow_consumer_closes",
            "Sessions closed with 1013 because their send queue was full",
            slow_closes.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "wsgate_handshakes",
            "WebSocket handshakes by result, and by reason for refusals that have one",
            handshakes.clone(),
        );
        // Present (at 0) from the first scrape, so rates and ratios over it start right away.
        for protocol in [Protocol::Native, Protocol::Pusher] {
            drop(handshakes.get_or_create(&HandshakeLabels {
                result: HandshakeResult::Ok.as_str(),
                reason: None,
                protocol: protocol.label(),
            }));
        }
        let drop_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "wsgate_messages_dropped",
            "Client messages refused or not delivered, by reason",
            drop_family.clone(),
        );
        let dropped = DropReason::ALL
            .iter()
            .map(|r| {
                drop_family
                    .get_or_create(&ReasonLabel { reason: r.as_str() })
                    .clone()
            })
            .collect();
        let close_family = Family::<CodeLabel, Counter>::default();
        registry.register(
            "wsgate_closes",
            "Close codes sent to clients",
            close_family.clone(),
        );
        let closes = close::ALL
            .iter()
            .map(|c| {
                (
                    *c,
                    close_family.get_or_create(&CodeLabel { code: *c }).clone(),
                )
            })
            .collect();
        let reload_family = Family::<ResultLabel, Counter>::default();
        registry.register(
            "wsgate_config_reloads",
            "SIGHUP reloads by result",
            reload_family.clone(),
        );
        let reloads_ok = reload_family
            .get_or_create(&ResultLabel { result: "ok" })
            .clone();
        let reloads_error = reload_family
            .get_or_create(&ResultLabel { result: "error" })
            .clone();
        // 50 µs .. ~1.6 s, doubling.
        let fanout_latency = Histogram::new((0..16).map(|i| 0.000_05 * f64::from(1u32 << i)));
        registry.register(
            "wsgate_fanout_latency_seconds",
            "Publish accepted to written to the last recipient's socket",
            fanout_latency.clone(),
        );
        let cluster = cluster.then(|| ClusterMetrics::register(&mut registry));
        registry.register_collector(Box::new(ProcessCollector {
            start: process_start_time(),
        }));
        registry.register_collector(Box::new(RuntimeCollector));
        Metrics {
            registry,
            connections,
            pusher_connections,
            max_connections,
            rooms,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            slow_closes,
            handshakes,
            dropped,
            closes,
            reloads_ok,
            reloads_error,
            fanout_latency,
            cluster,
        }
    }

    /// The cluster metrics, in cluster mode.
    pub fn cluster(&self) -> Option<&ClusterMetrics> {
        self.cluster.as_ref()
    }

    /// Counts a handshake outcome that has no finer reason (e.g. `ok`). Before its request
    /// is read (TLS, timeouts) a handshake counts as the native protocol's.
    pub fn handshake(&self, r: HandshakeResult) {
        self.count_handshake(Protocol::Native, r, None);
    }

    /// [`Metrics::handshake`] for an endpoint of `protocol`.
    pub fn handshake_of(&self, protocol: Protocol, r: HandshakeResult) {
        self.count_handshake(protocol, r, None);
    }

    /// Counts a refused handshake with its reason (e.g. `token_expired`); `reason` is one of
    /// the refusal's fixed names, never user data.
    pub fn handshake_refused(&self, r: HandshakeResult, reason: &'static str) {
        self.count_handshake(Protocol::Native, r, Some(reason));
    }

    /// [`Metrics::handshake_refused`] for an endpoint of `protocol`.
    pub fn handshake_refused_of(
        &self,
        protocol: Protocol,
        r: HandshakeResult,
        reason: &'static str,
    ) {
        self.count_handshake(protocol, r, Some(reason));
    }

    fn count_handshake(
        &self,
        protocol: Protocol,
        r: HandshakeResult,
        reason: Option<&'static str>,
    ) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                result: r.as_str(),
                reason,
                protocol: protocol.label(),
            })
            .inc();
    }

    /// The open-sessions gauge of `protocol`.
    pub fn connections_of(&self, protocol: Protocol) -> &Gauge {
        match protocol {
            Protocol::Native => &self.connections,
            Protocol::Pusher => &self.pusher_connections,
        }
    }

    pub fn dropped(&self, r: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|x| *x == r) {
            self.dropped[i].inc();
        }
    }

    pub fn slow_consumer(&self) {
        self.slow_closes.inc();
        self.dropped(DropReason::SlowConsumer);
    }

    pub fn close_sent(&self, code: u16) {
        if let Some((_, c)) = self.closes.iter().find(|(k, _)| *k == code) {
            c.inc();
        }
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.inc();
        } else {
            self.reloads_error.inc();
        }
    }

    pub fn fanout_done(&self, accepted: Instant) {
        self.fanout_latency
            .observe(accepted.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> ClusterMetrics {
        let redis_up = Gauge::default();
        registry.register(
            "wsgate_cluster_redis_up",
            "1 while this node reaches Redis (cluster mode), else 0",
            redis_up.clone(),
        );
        let nodes = Gauge::default();
        registry.register(
            "wsgate_cluster_nodes",
            "Live gateway nodes (heartbeat younger than cluster.node_ttl)",
            nodes.clone(),
        );
        let resyncs = Family::<KindLabel, Counter>::default();
        registry.register(
            "wsgate_cluster_resyncs",
            "Rooms this node resynchronized: replay (missed messages delivered from history) \
             or lost (local sessions closed with 1012)",
            resyncs.clone(),
        );
        let replays = resyncs.get_or_create(&KindLabel { kind: "replay" }).clone();
        let lost = resyncs.get_or_create(&KindLabel { kind: "lost" }).clone();
        // 50 µs .. ~0.8 s, doubling: a local Redis answers in well under a millisecond.
        let roundtrip = Histogram::new((0..15).map(|i| 0.000_05 * f64::from(1u32 << i)));
        registry.register(
            "wsgate_cluster_redis_roundtrip_seconds",
            "Round trip of each Redis call this node makes (scripts, pings, subscriptions)",
            roundtrip.clone(),
        );
        ClusterMetrics {
            redis_up,
            nodes,
            replays,
            lost,
            roundtrip,
        }
    }
}

/// `process_*` metrics read from /proc at scrape time.
#[derive(Debug)]
struct ProcessCollector {
    start: f64,
}

fn process_start_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// CPU seconds and RSS bytes from /proc/self/stat.
fn proc_stat() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: f64 = fields.get(21)?.parse().ok()?;
    // Linux reports USER_HZ = 100 ticks per second and 4 KiB pages on the platforms we ship.
    Some(((utime + stime) / 100.0, rss_pages * 4096.0))
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        if let Some((cpu, rss)) = proc_stat() {
            let m = ConstCounter::new(cpu);
            m.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                m.metric_type(),
            )?)?;
            let m = ConstGauge::new(rss);
            m.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                m.metric_type(),
            )?)?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let m = ConstGauge::new(dir.count() as f64);
            m.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                m.metric_type(),
            )?)?;
        }
        if let Some(max) = max_fds() {
            let m = ConstGauge::new(max);
            m.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                m.metric_type(),
            )?)?;
        }
        let m = ConstGauge::new(self.start);
        m.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            m.metric_type(),
        )?)?;
        Ok(())
    }
}

/// `wsgate_runtime_tasks`: tasks alive on the runtime that serves the scrape (the gateway's
/// one runtime), read at scrape time. Every session, handshake and listener is a task, so a
/// count that does not come back down after load is a leak.
#[derive(Debug)]
struct RuntimeCollector;

impl prometheus_client::collector::Collector for RuntimeCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let m = ConstGauge::new(handle.metrics().num_alive_tasks() as i64);
        m.encode(encoder.encode_descriptor(
            "wsgate_runtime_tasks",
            "Tasks alive on the gateway's runtime (sessions, handshakes, listeners, timers)",
            None,
            m.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_series_carry_a_reason_only_when_there_is_one() {
        let m = Metrics::new();
        m.handshake(HandshakeResult::Ok);
        m.handshake_refused(HandshakeResult::BadToken, "token_expired");
        m.handshake_refused(HandshakeResult::BadToken, "token_expired");
        let text = m.encode();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.contains(&"wsgate_handshakes_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            lines.contains(
                &"wsgate_handshakes_total{result=\"bad_token\",reason=\"token_expired\"} 2"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn runtime_tasks_count_the_tasks_alive() {
        let m = Metrics::new();
        let tasks = |text: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix("wsgate_runtime_tasks "))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no wsgate_runtime_tasks in {text}"))
        };
        let before = tasks(&m.encode());
        let stop = tokio_util::sync::CancellationToken::new();
        let held: Vec<_> = (0..5)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move { stop.cancelled().await })
            })
            .collect();
        assert_eq!(tasks(&m.encode()), before + 5);
        stop.cancel();
        for t in held {
            t.await.expect("task");
        }
        assert_eq!(tasks(&m.encode()), before);
    }

    #[test]
    fn runtime_tasks_are_absent_outside_a_runtime() {
        assert!(!Metrics::new().encode().contains("wsgate_runtime_tasks"));
    }
}
