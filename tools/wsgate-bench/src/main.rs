//! `wsgate-bench`: a load generator for sizing a deployment, in the spirit of
//! `redis-benchmark` or `nats bench`.
//!
//! It mints a token per connection with the gateway's HS256 secret, opens `--conns`
//! subscribers (spread over `--src-ips` when given), joins them to one room, and publishes from
//! `--publishers` connections at a fixed total rate or as fast as the room absorbs (`max`: a
//! closed loop with at most `--window` messages not yet delivered to every subscriber). Every
//! subscriber checks that room offsets arrive strictly in order with no gaps, so lost,
//! duplicated and out-of-order deliveries are counted exactly. A progress line goes to stderr
//! each second; the JSON report goes to stdout (or `--json FILE`).
//!
//! Remember the gateway's own limits: `limits.messages_per_second`/`burst` apply to each
//! publisher and `limits.handshakes_per_ip_per_minute`/`max_connections_per_ip` to each source
//! address. Raise them on the gateway under test, or the report shows `rate_limited` errors and
//! refused connections.

mod churn;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Arguments of `wsgate-bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "wsgate-bench",
    version,
    about = "Load-test a running wsgate (see BENCHMARKS.md)"
)]
pub struct BenchArgs {
    /// Gateway WebSocket URL; several comma-separated URLs (nodes of one cluster) spread the
    /// connections over them round-robin
    #[arg(long, default_value = "wss://localhost:8443/ws")]
    pub url: String,
    /// HS256 secret for the tokens (default: auth.hs_secret of --config)
    #[arg(long, env = "WSGATE_BENCH_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Speak Pusher protocol 7 instead of the native one: --url is the app's socket URL
    /// (`wss://host/app/KEY?protocol=7`), this is `KEY:SECRET` of that app; everyone joins the
    /// channel `private-<room>` (auth signed here) and publishers send `client-bench` events
    /// (the app needs `client_events = "members"`, its sockets the messages_per_second budget)
    #[arg(long, env = "WSGATE_BENCH_PUSHER", hide_env_values = true)]
    pub pusher: Option<String>,
    /// CA certificate to trust (default: certs/dev/ca.crt when it exists)
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Do not verify the server certificate
    #[arg(long)]
    pub insecure: bool,
    /// Origin header ("" sends none)
    #[arg(long, default_value = "https://localhost:8443")]
    pub origin: String,
    /// Subscriber connections
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Publisher connections (they are members of the room too)
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Room to use
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Total publish rate in messages/s, or "max"
    #[arg(long, default_value = "10")]
    pub rate: String,
    /// Measured time
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// Time before measuring starts
    #[arg(long, default_value = "1s")]
    pub warmup: humantime::Duration,
    /// How long to wait for stragglers after the last publish
    #[arg(long, default_value = "3s")]
    pub drain: humantime::Duration,
    /// Approximate size of each message's data, in bytes
    #[arg(long, default_value_t = 100)]
    pub msg_bytes: usize,
    /// Messages in flight in "max" mode
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Local addresses to spread connections over: "127.0.0.2-127.0.0.20" or a comma list
    #[arg(long)]
    pub src_ips: Option<String>,
    /// Handshakes in flight while connecting
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Only connect the subscribers, hold them for --duration, then report (no publishing)
    #[arg(long)]
    pub hold: bool,
    /// Write the JSON report here instead of stdout
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// PID of a gateway on this machine: report its CPU time per delivery and its memory
    /// (with --churn: its RSS and open fds, from /proc)
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Soak mode: connections open, join, publish, leave and close at a steady rate for
    /// --duration (the --connect-rate ... --count-margin flags); JSON lines to stdout and
    /// appended to --json
    #[arg(long)]
    pub churn: bool,
    #[command(flatten)]
    pub churn_opts: churn::ChurnArgs,
}

/// CPU seconds (user + system) and resident KiB of a local process, from /proc.
fn proc_sample(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    // USER_HZ is 100 on Linux.
    Some((ticks / 100.0, rss))
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Slots for "max" mode: deliveries per sequence number, modulo the ring.
const RING: usize = 1 << 16;
const HIST_SHARDS: usize = 16;

struct Shared {
    epoch: Instant,
    subs_alive: AtomicU64,
    deliveries: AtomicU64,
    measuring: AtomicBool,
    measured: AtomicU64,
    /// Sequence numbers from this one on are measured for latency.
    measure_from: AtomicU64,
    lost: AtomicU64,
    dups: AtomicU64,
    out_of_order: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    closed_early: AtomicU64,
    counts: Vec<AtomicU32>,
    done: Notify,
    hists: Vec<Mutex<Histogram<u64>>>,
    stop: AtomicBool,
    /// Tells subscribers to fold their latencies in and exit.
    done_reading: tokio_util::sync::CancellationToken,
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Finds `"key":<digits>` (or, inside a JSON string, `\"key\":<digits>`) without parsing.
fn scan_field(text: &str, key: &str) -> Option<u64> {
    let mut from = 0;
    while let Some(i) = text[from..].find(key) {
        let at = from + i;
        from = at + key.len();
        let rest = &text[from..];
        let Some(rest) = rest.strip_prefix("\\\"").or_else(|| rest.strip_prefix('"')) else {
            continue;
        };
        if !text[..at].ends_with('"') {
            continue;
        }
        let rest = rest.trim_start_matches([' ', ':']);
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        return rest[..end].parse().ok();
    }
    None
}

/// Finds `"key":<digits>` in a JSON text without parsing it.
fn scan_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start_matches([' ', ':']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn parse_src_ips(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
            (a.trim().parse()?, b.trim().parse()?);
        let (a, b) = (u32::from(a), u32::from(b));
        anyhow::ensure!(a <= b, "empty address range {s}");
        Ok((a..=b).map(|n| IpAddr::V4(n.into())).collect())
    } else {
        s.split(',').map(|p| Ok(p.trim().parse()?)).collect()
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One gateway node to connect to.
struct Node {
    url: String,
    addr: SocketAddr,
    host: String,
}

struct Target {
    nodes: Vec<Node>,
    tls: TlsConnector,
    origin: String,
    secret: Vec<u8>,
    src_ips: Vec<IpAddr>,
    /// `--pusher`: the app's key and secret.
    pusher: Option<PusherApp>,
}

/// The Pusher app the bench speaks to (`--pusher KEY:SECRET`).
struct PusherApp {
    key: String,
    secret: Vec<u8>,
}

/// A connection and what it needs to join: its Pusher `socket_id` (native: none).
struct Conn {
    ws: Ws,
    socket_id: Option<String>,
}

impl Target {
    async fn connect(&self, idx: usize, sub: &str) -> Result<Ws, String> {
        let tls = self.tls_only(idx).await?;
        self.upgrade(idx, tls, sub).await
    }

    /// A connection ready to join: native, or Pusher up to `pusher:connection_established`.
    async fn open(&self, idx: usize, sub: &str) -> Result<Conn, String> {
        let mut ws = self.connect(idx, sub).await?;
        let socket_id = match self.pusher {
            Some(_) => Some(pusher_socket_id(&mut ws).await?),
            None => None,
        };
        Ok(Conn { ws, socket_id })
    }

    /// The node connection `idx` goes to (round-robin).
    fn node(&self, idx: usize) -> &Node {
        &self.nodes[idx % self.nodes.len()]
    }

    /// TCP and TLS, no HTTP yet.
    async fn tls_only(&self, idx: usize) -> Result<TlsStream<TcpStream>, String> {
        let node = self.node(idx);
        let tcp = if self.src_ips.is_empty() {
            TcpStream::connect(node.addr).await
        } else {
            let ip = self.src_ips[idx % self.src_ips.len()];
            let sock = if ip.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| format!("socket: {e}"))?;
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
            sock.connect(node.addr).await
        }
        .map_err(|e| format!("tcp: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(node.host.clone()).map_err(|e| format!("server name: {e}"))?;
        self.tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))
    }

    /// The WebSocket upgrade with a fresh token for `sub`.
    async fn upgrade(
        &self,
        idx: usize,
        tls: TlsStream<TcpStream>,
        sub: &str,
    ) -> Result<Ws, String> {
        let node = self.node(idx);
        let mut req = node
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("url: {e}"))?;
        let h = req.headers_mut();
        if !self.origin.is_empty() {
            if let Ok(v) = self.origin.parse() {
                h.insert("origin", v);
            }
        }
        if self.pusher.is_none() {
            let token = self.token(sub)?;
            if let Ok(v) = format!("wsgate.v1, bearer.{token}").parse() {
                h.insert("sec-websocket-protocol", v);
            }
        }
        let (ws, _) = tokio_tungstenite::client_async(req, tls)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    format!("http_{}", r.status().as_u16())
                }
                other => format!("ws: {other}"),
            })?;
        Ok(ws)
    }

    /// A fresh token for `sub`, signed with the gateway's HS256 secret.
    fn token(&self, sub: &str) -> Result<String, String> {
        let now = wsgate::auth::unix_now();
        wsgate::auth::mint_hs256(
            &self.secret,
            &wsgate::auth::MintClaims {
                sub,
                exp: now + 3600,
                iat: now,
                name: None,
                rooms: None,
                iss: None,
                aud: None,
            },
        )
        .map_err(|e| format!("token: {e}"))
    }
}

/// Reads `pusher:connection_established` and returns its `socket_id`.
async fn pusher_socket_id(ws: &mut Ws) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("connection_established timeout".into()),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: serde_json::Value =
                    serde_json::from_str(&t).map_err(|e| format!("pusher frame: {e}"))?;
                if v["event"] != "pusher:connection_established" {
                    return Err(format!("pusher: {}", v["event"]));
                }
                let data: serde_json::Value = v["data"]
                    .as_str()
                    .and_then(|d| serde_json::from_str(d).ok())
                    .unwrap_or_default();
                return data["socket_id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "pusher: no socket_id".into());
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return Err("closed before connection_established".into()),
        }
    }
}

/// The Pusher channel a room is benched on.
fn pusher_channel(room: &str) -> String {
    format!("private-{room}")
}

/// Joins the room: native `join`, or a Pusher subscribe with the channel auth signed here.
async fn join(conn: &mut Conn, room: &str, pusher: Option<&PusherApp>) -> Result<(), String> {
    let (Some(app), Some(socket_id)) = (pusher, &conn.socket_id) else {
        return join_native(&mut conn.ws, room).await;
    };
    let channel = pusher_channel(room);
    let auth = format!(
        "{}:{}",
        app.key,
        wsgate::pusher::sign::hmac_hex(&app.secret, &format!("{socket_id}:{channel}"))
    );
    let req = json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}});
    let refused = ["pusher:subscription_error", "pusher:error"];
    let ok = "pusher_internal:subscription_succeeded";
    request(&mut conn.ws, req.to_string(), "subscribe", ok, &refused).await
}

async fn join_native(ws: &mut Ws, room: &str) -> Result<(), String> {
    let req = json!({"type":"join","room":room,"id":1}).to_string();
    request(
        ws,
        req,
        "join",
        "\"type\":\"joined\"",
        &["\"type\":\"error\""],
    )
    .await
}

/// Sends `req` and waits (30 s at most) for a frame holding `ok`; a frame holding one of
/// `refused` is an error.
async fn request(
    ws: &mut Ws,
    req: String,
    what: &str,
    ok: &str,
    refused: &[&str],
) -> Result<(), String> {
    ws.send(Message::text(req))
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("{what} timeout")),
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains(ok) {
                    return Ok(());
                }
                if refused.iter().any(|r| t.contains(r)) {
                    return Err(format!("{what} refused: {t}"));
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => return Err(format!("closed during {what}")),
        }
    }
}

/// A subscriber: checks offsets, records latency.
///
/// Pusher events carry no room offset: with one publisher its `seq` is the order to check.
async fn subscribe(mut ws: Ws, sh: Arc<Shared>, shard: usize, subs: u64, pusher: bool) {
    let mut last_offset: Option<u64> = None;
    // Latency samples are batched into one of the shared histograms: a histogram per
    // subscriber would cost ~140 KB each (gigabytes at 19k connections).
    let mut samples: Vec<u64> = Vec::new();
    loop {
        let msg = tokio::select! {
            m = ws.next() => match m {
                Some(m) => m,
                None => break,
            },
            _ = sh.done_reading.cancelled() => break,
        };
        let t = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => {
                if !sh.stop.load(Relaxed) {
                    sh.closed_early.fetch_add(1, Relaxed);
                }
                break;
            }
            Ok(_) => continue,
        };
        let seq = scan_field(&t, "seq");
        let offset = if pusher {
            seq
        } else {
            scan_u64(&t, "\"offset\"")
        };
        let (Some(seq), Some(ts), Some(offset)) = (seq, scan_field(&t, "ts"), offset) else {
            continue;
        };
        let now = now_ns(sh.epoch);
        match last_offset {
            Some(last) if offset <= last => {
                if offset == last {
                    sh.dups.fetch_add(1, Relaxed);
                } else {
                    sh.out_of_order.fetch_add(1, Relaxed);
                }
                continue;
            }
            Some(last) if offset > last + 1 => {
                sh.lost.fetch_add(offset - last - 1, Relaxed);
            }
            _ => {}
        }
        last_offset = Some(offset);
        sh.deliveries.fetch_add(1, Relaxed);
        if sh.measuring.load(Relaxed) {
            sh.measured.fetch_add(1, Relaxed);
        }
        if seq >= sh.measure_from.load(Relaxed) {
            samples.push((now.saturating_sub(ts) / 1000).max(1));
            if samples.len() >= SAMPLE_BATCH {
                record(&sh, shard, &mut samples);
            }
        }
        let c = sh.counts[(seq as usize) % RING].fetch_add(1, Relaxed) + 1;
        if u64::from(c) >= subs {
            sh.done.notify_one();
        }
    }
    record(&sh, shard, &mut samples);
}

/// Latency samples a subscriber gathers before taking a histogram lock.
const SAMPLE_BATCH: usize = 64;

fn record(sh: &Shared, shard: usize, samples: &mut Vec<u64>) {
    if let Ok(mut h) = sh.hists[shard].lock() {
        for v in samples.drain(..) {
            h.saturating_record(v);
        }
    }
}

fn payload(msg_bytes: usize) -> String {
    "x".repeat(msg_bytes.saturating_sub(40))
}

/// A publisher: sends seq/ts messages until `stop`, counting errors.
async fn publish(
    mut ws: Ws,
    sh: Arc<Shared>,
    room: String,
    msg_bytes: usize,
    seqs: Arc<AtomicU64>,
    pace: Pace,
    pusher: bool,
) {
    let pad = payload(msg_bytes);
    let (mut write, mut read) = ws.split_mut();
    let reader = async {
        while let Some(Ok(m)) = read.next().await {
            if let Message::Text(t) = m {
                if t.contains("\"type\":\"error\"") || t.contains("pusher:error") {
                    if t.contains("rate_limited") || t.contains("4301") {
                        sh.rate_limited.fetch_add(1, Relaxed);
                    } else {
                        sh.errors.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    };
    let writer = async {
        let mut next = tokio::time::Instant::now();
        while !sh.stop.load(Relaxed) {
            match &pace {
                Pace::Every(d) => {
                    next += *d;
                    tokio::time::sleep_until(next).await;
                }
                Pace::Window { window, subs } => loop {
                    let sent = seqs.load(Relaxed);
                    let oldest = sent.saturating_sub(*window as u64);
                    let done = sent < *window as u64
                        || u64::from(sh.counts[(oldest as usize) % RING].load(Relaxed)) >= *subs;
                    if done || sh.stop.load(Relaxed) {
                        if sent >= *window as u64 {
                            sh.counts[(oldest as usize) % RING].store(0, Relaxed);
                        }
                        break;
                    }
                    let _ =
                        tokio::time::timeout(Duration::from_millis(1000), sh.done.notified()).await;
                    // A window slot that never completes (a lost delivery) must not hang the
                    // run: after a second the oldest message is given up.
                    if u64::from(sh.counts[(oldest as usize) % RING].load(Relaxed)) < *subs {
                        sh.counts[(oldest as usize) % RING].store(0, Relaxed);
                        break;
                    }
                },
            }
            if sh.stop.load(Relaxed) {
                break;
            }
            let seq = seqs.fetch_add(1, Relaxed);
            let ts = now_ns(sh.epoch);
            let msg = if pusher {
                format!(
                    r#"{{"event":"client-bench","channel":"{}","data":{{"seq":{seq},"ts":{ts},"pad":"{pad}"}}}}"#,
                    pusher_channel(&room)
                )
            } else {
                format!(
                    r#"{{"type":"publish","room":"{room}","data":{{"seq":{seq},"ts":{ts},"pad":"{pad}"}}}}"#
                )
            };
            if write.send(Message::text(msg)).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

trait SplitMut {
    fn split_mut(
        &mut self,
    ) -> (
        futures_util::stream::SplitSink<&mut Ws, Message>,
        futures_util::stream::SplitStream<&mut Ws>,
    );
}

impl SplitMut for Ws {
    fn split_mut(
        &mut self,
    ) -> (
        futures_util::stream::SplitSink<&mut Ws, Message>,
        futures_util::stream::SplitStream<&mut Ws>,
    ) {
        StreamExt::split(self)
    }
}

#[derive(Clone)]
enum Pace {
    Every(Duration),
    Window { window: usize, subs: u64 },
}

fn tls_connector(args: &BenchArgs) -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let cfg = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let ca = args
            .ca
            .clone()
            .unwrap_or_else(|| PathBuf::from("certs/dev/ca.crt"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca)
            .map_err(|e| anyhow::anyhow!("--ca {}: {e}", ca.display()))?
        {
            roots.add(cert?)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(cfg)))
}

fn resolve(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let uri: http::Uri = url.parse()?;
    anyhow::ensure!(uri.scheme_str() == Some("wss"), "--url must be wss://");
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("--url has no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
    Ok((addr, host))
}

fn main() {
    use clap::Parser;
    std::process::exit(bench(BenchArgs::parse()));
}

fn bench(args: BenchArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate-bench: {e}");
            return 1;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wsgate-bench: {e:#}");
            1
        }
    }
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let pusher = match &args.pusher {
        Some(p) => {
            let (key, secret) = p
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--pusher is KEY:SECRET"))?;
            anyhow::ensure!(!args.churn, "--pusher does not go with --churn");
            anyhow::ensure!(
                args.publishers <= 1,
                "--pusher checks the order of one publisher's events: --publishers 1"
            );
            Some(PusherApp {
                key: key.to_string(),
                secret: secret.as_bytes().to_vec(),
            })
        }
        None => None,
    };
    let secret = match &args.secret {
        Some(s) => s.clone().into_bytes(),
        None if pusher.is_some() => Vec::new(),
        None => {
            let cfg = wsgate::config::Config::load(wsgate::config::Source {
                path: std::path::Path::new("config/wsgate.toml"),
                env: None,
            })?;
            cfg.auth.hs_secret()?
        }
    };
    let nodes = args
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            let (addr, host) = resolve(url)?;
            Ok(Node {
                url: url.to_string(),
                addr,
                host,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!nodes.is_empty(), "--url names no gateway");
    let target = Arc::new(Target {
        nodes,
        tls: tls_connector(&args)?,
        origin: args.origin.clone(),
        secret,
        src_ips: args
            .src_ips
            .as_deref()
            .map(parse_src_ips)
            .transpose()?
            .unwrap_or_default(),
        pusher,
    });
    if args.churn {
        let pass = churn::run(&args, target).await?;
        anyhow::ensure!(
            pass,
            "churn: messages lost or the gateway did not come back to its baseline (see the summary line)"
        );
        return Ok(());
    }
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        subs_alive: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        measured: AtomicU64::new(0),
        measure_from: AtomicU64::new(u64::MAX),
        lost: AtomicU64::new(0),
        dups: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        closed_early: AtomicU64::new(0),
        counts: (0..RING).map(|_| AtomicU32::new(0)).collect(),
        done: Notify::new(),
        hists: (0..HIST_SHARDS)
            .map(|_| {
                Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"))
            })
            .collect(),
        stop: AtomicBool::new(false),
        done_reading: tokio_util::sync::CancellationToken::new(),
    });

    // Connect subscribers (and publishers) with bounded concurrency.
    let connect_start = Instant::now();
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let total = args.conns + if args.hold { 0 } else { args.publishers };
    let failures = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let target = target.clone();
        let sem = sem.clone();
        let room = args.room.clone();
        let failures = failures.clone();
        let hold = args.hold;
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let sub = format!("bench-{i}");
            let r = async {
                let mut conn = target.open(i, &sub).await?;
                if !hold {
                    join(&mut conn, &room, target.pusher.as_ref()).await?;
                }
                Ok::<_, String>(conn.ws)
            }
            .await;
            match r {
                Ok(ws) => Some(ws),
                Err(e) => {
                    if let Ok(mut f) = failures.lock() {
                        *f.entry(e.chars().take(60).collect()).or_insert(0) += 1;
                    }
                    None
                }
            }
        }));
    }
    let mut conns = Vec::with_capacity(total);
    let mut last_report = Instant::now();
    for (i, h) in handles.into_iter().enumerate() {
        if let Ok(Some(ws)) = h.await {
            conns.push(ws);
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("[connect] {}/{} open", conns.len(), i + 1);
            last_report = Instant::now();
        }
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let connected = conns.len();
    eprintln!("[connect] {connected}/{total} open in {connect_secs:.1}s");
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();

    if args.hold || connected <= args.publishers {
        let held = Instant::now();
        let before = args.server_pid.and_then(proc_sample);
        tokio::time::sleep(args.duration.into()).await;
        let after = args.server_pid.and_then(proc_sample);
        let report = json!({
            "mode": "hold",
            "connections": connected,
            "server_rss_kib": after.map(|a| a.1),
            "server_cpu_seconds_while_held": before.zip(after).map(|(b, a)| a.0 - b.0),
            "connect_failures": failures,
            "connect_seconds": connect_secs,
            "held_seconds": held.elapsed().as_secs_f64(),
        });
        return write_report(&args, &report);
    }

    let publishers: Vec<Ws> = conns.split_off(connected - args.publishers.min(connected));
    let subs = conns.len() as u64;
    sh.subs_alive.store(subs, Relaxed);
    let mut tasks = Vec::new();
    for (i, ws) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(subscribe(
            ws,
            sh.clone(),
            i % HIST_SHARDS,
            subs,
            target.pusher.is_some(),
        )));
    }
    let max_mode = args.rate == "max";
    let seqs = Arc::new(AtomicU64::new(0));
    let pace = if max_mode {
        Pace::Window {
            window: args.window.max(1),
            subs,
        }
    } else {
        let rate: f64 = args
            .rate
            .parse()
            .map_err(|_| anyhow::anyhow!("--rate is a number or \"max\""))?;
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
        Pace::Every(Duration::from_secs_f64(publishers.len() as f64 / rate))
    };
    let mut pubs = Vec::new();
    for ws in publishers {
        pubs.push(tokio::spawn(publish(
            ws,
            sh.clone(),
            args.room.clone(),
            args.msg_bytes,
            seqs.clone(),
            pace.clone(),
            target.pusher.is_some(),
        )));
    }

    let warmup: Duration = args.warmup.into();
    let duration: Duration = args.duration.into();
    tokio::time::sleep(warmup).await;
    sh.measure_from.store(seqs.load(Relaxed), Relaxed);
    sh.measuring.store(true, Relaxed);
    let cpu_start = args.server_pid.and_then(proc_sample);
    let measure_start = Instant::now();
    let mut prev = sh.deliveries.load(Relaxed);
    while measure_start.elapsed() < duration {
        tokio::time::sleep(
            Duration::from_secs(1).min(duration.saturating_sub(measure_start.elapsed())),
        )
        .await;
        let now = sh.deliveries.load(Relaxed);
        let p99 = sh
            .hists
            .iter()
            .filter_map(|h| h.lock().ok().map(|h| h.value_at_quantile(0.99)))
            .max()
            .unwrap_or(0);
        eprintln!(
            "[{:>4.1}s] {} subs, {:.0} deliveries/s, published {}, p99 ≈ {:.2} ms, lost {}, errors {}",
            measure_start.elapsed().as_secs_f64(),
            subs,
            (now - prev) as f64,
            seqs.load(Relaxed),
            p99 as f64 / 1000.0,
            sh.lost.load(Relaxed),
            sh.errors.load(Relaxed) + sh.rate_limited.load(Relaxed)
        );
        prev = now;
    }
    sh.measuring.store(false, Relaxed);
    let measured_secs = measure_start.elapsed().as_secs_f64();
    let measured = sh.measured.load(Relaxed);
    let cpu_end = args.server_pid.and_then(proc_sample);
    let server_cpu = cpu_start.zip(cpu_end).map(|(b, a)| a.0 - b.0);
    sh.stop.store(true, Relaxed);
    for p in pubs {
        let _ = p.await;
    }
    let published = seqs.load(Relaxed);
    let accepted =
        published.saturating_sub(sh.rate_limited.load(Relaxed) + sh.errors.load(Relaxed));
    // Wait for stragglers: every subscriber should reach `accepted` deliveries.
    let drain_until =
        Instant::now() + Duration::from_secs_f64(Duration::from(args.drain).as_secs_f64());
    while sh.deliveries.load(Relaxed) < accepted * subs && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sh.done_reading.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let delivered = sh.deliveries.load(Relaxed);
    let expected = accepted * subs;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for h in &sh.hists {
        if let Ok(h) = h.lock() {
            hist.add(&*h)?;
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "mode": if max_mode { "max" } else { "fixed" },
        "url": args.url,
        "subscribers": subs,
        "publishers": args.publishers,
        "connect_failures": failures,
        "connect_seconds": connect_secs,
        "measured_seconds": measured_secs,
        "published": published,
        "rate_limited": sh.rate_limited.load(Relaxed),
        "errors": sh.errors.load(Relaxed),
        "deliveries": delivered,
        "deliveries_per_s": measured as f64 / measured_secs,
        "missing": expected.saturating_sub(delivered),
        "lost_gaps": sh.lost.load(Relaxed),
        "duplicates": sh.dups.load(Relaxed),
        "out_of_order": sh.out_of_order.load(Relaxed),
        "closed_early": sh.closed_early.load(Relaxed),
        "server_cpu_seconds": server_cpu,
        "server_cpu_us_per_delivery": server_cpu.filter(|_| measured > 0).map(|c| c * 1e6 / measured as f64),
        "server_rss_kib": cpu_end.map(|s| s.1),
        "latency_ms": {
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
            "max": hist.max() as f64 / 1000.0, "samples": hist.len(),
        },
    });
    eprintln!(
        "wsgate-bench: {subs} subscribers, {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, missing {}, duplicates {}, out-of-order {}",
        measured as f64 / measured_secs,
        ms(0.5),
        ms(0.99),
        expected.saturating_sub(delivered),
        sh.dups.load(Relaxed),
        sh.out_of_order.load(Relaxed)
    );
    write_report(&args, &report)
}

fn write_report(args: &BenchArgs, report: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    match &args.json {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => println!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_numbers_without_parsing() {
        let t = r#"{"type":"message","data":{"seq":42,"ts": 7},"offset":9}"#;
        assert_eq!(scan_u64(t, "\"seq\""), Some(42));
        assert_eq!(scan_u64(t, "\"ts\""), Some(7));
        assert_eq!(scan_u64(t, "\"offset\""), Some(9));
        assert_eq!(scan_u64(t, "\"nope\""), None);
        let pusher = r#"{"event":"client-bench","data":"{\"seq\":5,\"ts\":8}"}"#;
        assert_eq!(scan_field(pusher, "seq"), Some(5));
        assert_eq!(scan_field(pusher, "ts"), Some(8));
        assert_eq!(scan_field(t, "seq"), Some(42));
    }

    #[test]
    fn source_ranges_expand() {
        let ips = parse_src_ips("127.0.0.2-127.0.0.4").expect("range");
        assert_eq!(ips.len(), 3);
        assert!(parse_src_ips("127.0.0.9-127.0.0.2").is_err());
        assert_eq!(
            parse_src_ips("127.0.0.2, 127.0.0.3").expect("list").len(),
            2
        );
    }
}
