//! Command line, logging and wiring: `serve`, `check-config`, `token`, `gen-cert`.
//!
//! Exit codes: 0 success; 1 runtime failure (bind, certificate); 2 usage; 78 configuration.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::admin::Admin;
use crate::broker::memory::NodeIdentity;
use crate::broker::redis::{ClusterSettings, RedisBroker, Target};
use crate::broker::{Broker, MemoryBroker, NodeId, RoomSettings};
use crate::config::{Config, LogFormat, Source};
use crate::gateway::proxy_header::TrustedProxies;
use crate::gateway::server::Server;
use crate::hub::Hub;
use crate::limits::{ConnectionCounter, HandshakeLimiter};
use crate::live::{Live, Shared};
use crate::metrics::Metrics;
use crate::tls;

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_CONFIG: i32 = 78;

const DEFAULT_CONFIG: &str = "config/wsgate.toml";
/// How long a cluster node waits for Redis before it starts serving anyway (not ready).
const CLUSTER_STARTUP_WAIT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "A TLS WebSocket gateway with authenticated broadcast rooms"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for the default `serve`)
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default)
    Serve,
    /// Validate the configuration and print it with secrets redacted
    CheckConfig,
    /// Mint an HS256 token with the configured secret; prints the token alone
    Token {
        /// The user id (`sub`)
        #[arg(long)]
        sub: String,
        /// Display name (`name`)
        #[arg(long)]
        name: Option<String>,
        /// Room patterns this user may join, comma-separated (`team:42:*` = prefix)
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
        /// Lifetime, e.g. 30m, 1h, 7d
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Write a development CA and a server certificate signed by it
    GenCert {
        /// Output directory
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
        /// Host name or IP address for the certificate (repeatable)
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::Token {
            sub,
            name,
            rooms,
            ttl,
        } => token(
            &cli.config,
            &sub,
            name.as_deref(),
            rooms.as_deref(),
            ttl.into(),
        ),
        Command::GenCert { out, hosts } => gen_cert(&out, hosts),
    }
}

/// The configuration at `path`, checked as `serve` checks it (the file, then its compiled
/// live settings).
fn load(path: &Path) -> Result<Config, i32> {
    Config::load(Source { path, env: None })
        .and_then(|cfg| Live::from_config(&cfg).map(|_| cfg))
        .map_err(|e| {
            eprintln!("wsgate: configuration error: {e}");
            EXIT_CONFIG
        })
}

fn check_config(path: &Path) -> i32 {
    match load(path) {
        Ok(cfg) => {
            // `serve` refuses a certificate it cannot load; so must the check (like `nginx -t`),
            // except when `serve` would generate the development pair itself.
            let generated =
                cfg.tls.generate_dev_cert && !cfg.tls.cert.exists() && !cfg.tls.key.exists();
            if !generated {
                if let Err(e) = tls::load_certified_key(&cfg.tls.cert, &cfg.tls.key) {
                    eprintln!("wsgate: configuration error: {e}");
                    return EXIT_CONFIG;
                }
            }
            print!("{}", cfg.redacted_toml());
            for w in cfg.warnings() {
                eprintln!("wsgate: warning: {w}");
            }
            eprintln!("wsgate: configuration {} is valid", path.display());
            0
        }
        Err(code) => code,
    }
}

fn token(
    path: &Path,
    sub: &str,
    name: Option<&str>,
    rooms: Option<&[String]>,
    ttl: Duration,
) -> i32 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secret = match cfg.auth.hs_secret() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsgate: configuration error: {e}");
            return EXIT_CONFIG;
        }
    };
    let now = crate::auth::unix_now();
    let claims = crate::auth::MintClaims {
        sub,
        exp: now.saturating_add(ttl.as_secs()),
        iat: now,
        name,
        rooms,
        iss: (!cfg.auth.issuer.is_empty()).then_some(cfg.auth.issuer.as_str()),
        aud: (!cfg.auth.audience.is_empty()).then_some(cfg.auth.audience.as_str()),
    };
    match crate::auth::mint_hs256(&secret, &claims) {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(e) => {
            eprintln!("wsgate: cannot sign the token: {e}");
            EXIT_RUNTIME
        }
    }
}

fn gen_cert(out: &Path, hosts: Vec<String>) -> i32 {
    let hosts = if hosts.is_empty() {
        tls::default_dev_hosts()
    } else {
        hosts
    };
    match tls::generate_dev_certs(out, &hosts) {
        Ok(paths) => {
            eprintln!(
                "wsgate: wrote {}, {} and their keys for {}",
                paths.ca_cert.display(),
                paths.server_cert.display(),
                hosts.join(", ")
            );
            0
        }
        Err(e) => {
            eprintln!("wsgate: {e}");
            EXIT_RUNTIME
        }
    }
}

type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// Logging: `RUST_LOG` or `log.level` choose what is logged (a SIGHUP swaps the level through
/// the returned handle); [`secret_caps`] then holds back what could carry a secret, whatever
/// they say; text lines escape every field value ([`EscapedFields`]).
fn init_logging(cfg: &Config) -> FilterHandle {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&cfg.log.level));
    let log_level = log_bridge_level(&filter);
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = match cfg.log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .fmt_fields(EscapedFields)
            // Colours for a person at a terminal, never escape codes in a file or the journal.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(secret_caps()))
        .try_init();
    log::set_max_level(log_level);
    handle
}

/// The most detailed level the `log` crate's macros (tungstenite, rustls) may pass on: the
/// filter's. `try_init` sets it from every layer's filter, and the uncapped default of
/// [`secret_caps`] makes that TRACE: each of tungstenite's per-frame `trace!` calls would then
/// cross the bridge and be matched against the filter's directives before being dropped, a
/// cost per delivered message. At the filter's own level they stop at one atomic load.
fn log_bridge_level(filter: &EnvFilter) -> log::LevelFilter {
    match filter.max_level_hint() {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Caps on targets whose detailed events carry payloads that may hold a token (a `refresh`
/// message) — no level set in `RUST_LOG` or `log.level` lifts them, because they filter the
/// output itself, apart from the filter those two set and a SIGHUP swaps:
/// - `tungstenite` (through the `log` bridge) at DEBUG: at TRACE it logs every frame and
///   message it reads or writes, payload included.
///
/// Nothing else in the tree logs payloads, headers or URLs: hyper's and tower-http's tracing
/// is not compiled in, rustls logs handshake messages only, and tokio-tungstenite only its
/// poll calls.
fn secret_caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::DEBUG)
}

/// Field formatter of the text log: values are written as in the default format
/// (`key=value`, strings quoted), except that control, format and line-separator characters
/// come out escaped (`\n`, `\u{1b}`, `\u{202e}`) in every value and in the message. The
/// default escapes only some of them, and only in the message and in errors: a client's
/// text logged with `%` could otherwise start a forged line or colour the terminal.
struct EscapedFields;

impl<'a> MakeVisitor<Writer<'a>> for EscapedFields {
    type Visitor = EscapedVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> EscapedVisitor<'a> {
        EscapedVisitor {
            writer,
            empty: true,
            result: Ok(()),
        }
    }
}

struct EscapedVisitor<'a> {
    writer: Writer<'a>,
    empty: bool,
    result: std::fmt::Result,
}

impl EscapedVisitor<'_> {
    fn field(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        // The `log` bridge's metadata, already shown as the target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let pad = if self.empty { "" } else { " " };
        self.empty = false;
        self.result = if name == "message" {
            write!(Escaping(&mut self.writer), "{pad}{value}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            write!(Escaping(&mut self.writer), "{pad}{name}={value}")
        };
    }
}

impl tracing::field::Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.field(field.name(), format_args!("{value}"));
        } else {
            self.field(field.name(), format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field.name(), format_args!("{value:?}"));
    }
}

impl VisitOutput<std::fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.writer
    }
}

/// Writes through to `W`, escaping what [`crate::auth::is_hidden_or_control`] matches.
struct Escaping<W>(W);

impl<W: std::fmt::Write> std::fmt::Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        while let Some((i, c)) = rest
            .char_indices()
            .find(|(_, c)| crate::auth::is_hidden_or_control(*c))
        {
            self.0.write_str(&rest[..i])?;
            write!(self.0, "{}", c.escape_default())?;
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn serve(path: &Path) -> i32 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let filter = init_logging(&cfg);
    for w in cfg.warnings() {
        warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate: cannot start the runtime: {e}");
            return EXIT_RUNTIME;
        }
    };
    match rt.block_on(run(path.to_path_buf(), cfg, filter)) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e:#}");
            eprintln!("wsgate: {e:#}");
            EXIT_RUNTIME
        }
    }
}

/// Makes the development certificate when the config asks for one and none exists.
fn ensure_dev_cert(cfg: &Config) -> anyhow::Result<()> {
    if !cfg.tls.generate_dev_cert || cfg.tls.cert.exists() || cfg.tls.key.exists() {
        return Ok(());
    }
    let dir = cfg.tls.cert.parent().unwrap_or(Path::new("."));
    let paths = tls::generate_dev_certs(dir, &tls::default_dev_hosts())?;
    if paths.server_cert != cfg.tls.cert || paths.server_key != cfg.tls.key {
        anyhow::bail!(
            "tls.generate_dev_cert writes server.crt and server.key: point tls.cert and tls.key at {}",
            dir.display()
        );
    }
    warn!(
        ca = %paths.ca_cert.display(),
        "generated a development certificate for localhost; browsers will warn until you trust the CA"
    );
    Ok(())
}

struct Running {
    path: PathBuf,
    config: std::sync::Mutex<Config>,
    server: Arc<Server>,
    filter: FilterHandle,
}

async fn run(path: PathBuf, cfg: Config, filter: FilterHandle) -> anyhow::Result<()> {
    ensure_dev_cert(&cfg)?;
    let key = tls::load_certified_key(&cfg.tls.cert, &cfg.tls.key)?;
    let cert = tls::ReloadableCert::new(key);
    let acceptor = TlsAcceptor::from(tls::server_config(cert.clone())?);
    let listen: SocketAddr = cfg.listen_addr()?;
    let admin_addr: SocketAddr = cfg.admin_addr()?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("server.listen {listen}: cannot bind"))?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("admin.listen {admin_addr}: cannot bind"))?;
    let public = listener.local_addr()?;
    let admin_local = admin_listener.local_addr()?;
    let signals = Signals::install()?;

    let redis_nodes = cfg.cluster.redis_nodes()?;
    let metrics = Arc::new(if redis_nodes.is_empty() {
        Metrics::new()
    } else {
        Metrics::for_cluster()
    });
    metrics
        .max_connections
        .set(cfg.server.max_connections as i64);
    let node = NodeIdentity {
        name: node_name(&cfg),
        started_at: crate::auth::unix_now(),
    };
    let node_id: NodeId = rand::random();
    let node_label = node.name.clone();
    let (broker, cluster): (Arc<dyn Broker>, _) = match metrics.cluster() {
        Some(cluster_metrics) if !redis_nodes.is_empty() => {
            let c = &cfg.cluster;
            let redis = RedisBroker::start(
                ClusterSettings {
                    target: Target::new(redis_nodes),
                    key_prefix: c.key_prefix.clone(),
                    node_ttl: c.node_ttl,
                    redis_timeout: c.redis_timeout,
                },
                room_settings(&cfg),
                node,
                node_id,
                cluster_metrics.clone(),
            );
            (redis.clone(), Some(redis))
        }
        _ => (Arc::new(MemoryBroker::new(room_settings(&cfg), node)), None),
    };
    let hub = Hub::new(broker, metrics.clone(), cfg.limits.send_queue, node_id);
    if let Some(redis) = &cluster {
        // Serve with Redis answering when it does at start; otherwise start all the same,
        // not ready (/readyz 503) until it does.
        if redis.wait_ready(CLUSTER_STARTUP_WAIT).await {
            info!(redis = %redis.describe(), node = %node_label, "cluster mode: Redis reachable");
        } else {
            warn!(redis = %redis.describe(), "cluster mode: Redis not reachable yet; not ready (/readyz 503) until it is");
        }
    }
    let shutdown = CancellationToken::new();
    let shared = Arc::new(Shared {
        live: ArcSwap::from_pointee(Live::from_config(&cfg)?),
        hub: hub.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    let server = Arc::new(Server {
        shared: shared.clone(),
        cert,
        acceptor,
        rate: HandshakeLimiter::new(cfg.limits.handshakes_per_ip_per_minute),
        conns: Arc::new(ConnectionCounter::default()),
        handshakes_in_flight: Arc::new(ConnectionCounter::default()),
        tracker: TaskTracker::new(),
        ws_path: cfg.server.ws_path.clone(),
        static_dir: cfg.static_dir(),
        draining: AtomicBool::new(false),
        proxy_protocol: match cfg.server.proxy_protocol {
            true => Some(TrustedProxies::new(cfg.server.trusted_proxy_nets()?)),
            false => None,
        },
    });
    let admin = Arc::new(Admin {
        server: server.clone(),
        api_key: cfg.admin.api_key.clone(),
    });
    let grace = cfg.server.shutdown_grace;

    let accept = tokio::spawn(server.clone().run(listener));
    let admin_task = tokio::spawn(admin.run(admin_listener));
    let upkeep = {
        let server = server.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                server.shared.hub.sweep(std::time::Instant::now());
                n += 1;
                if n.is_multiple_of(30) {
                    server.rate.prune();
                }
            }
        })
    };

    // Logged once every long-lived task exists: whoever waits for this line (an init
    // system, a test) finds the listeners served and the upkeep running.
    let host = if public.ip().is_loopback() {
        "localhost".to_string()
    } else {
        public.ip().to_string()
    };
    info!(
        listen = %public,
        admin = %admin_local,
        "wsgate ready: wss://{host}:{}{} (demo page https://{host}:{}/)",
        public.port(),
        cfg.server.ws_path,
        public.port()
    );
    if cfg.tls.generate_dev_cert {
        info!(
            "dev token: cargo run --release -- token --sub alice --config {}   then open https://{host}:{}/#token=<token>",
            path.display(),
            public.port()
        );
    }

    let running = Arc::new(Running {
        path,
        config: std::sync::Mutex::new(cfg),
        server: server.clone(),
        filter,
    });
    signals.wait(&running).await;

    // Not ready from here on (before the log line, so whoever reads it sees /readyz 503).
    server
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    info!("shutting down: closing sessions with 1001, draining up to {grace:?}");
    shutdown.cancel();
    let _ = accept.await;
    server.tracker.close();
    if tokio::time::timeout(grace, server.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            sessions = server.shared.hub.session_count(),
            "shutdown grace ran out; closing the rest"
        );
    }
    if let Some(redis) = &cluster {
        redis.shutdown().await;
    }
    admin_task.abort();
    upkeep.abort();
    info!("stopped");
    Ok(())
}

/// The broker's room settings from `[rooms]` (at start and on reload alike).
fn room_settings(cfg: &Config) -> RoomSettings {
    RoomSettings {
        history_size: cfg.rooms.history_size,
        history_ttl: cfg.rooms.history_ttl,
        history_max_bytes: cfg.rooms.history_max_bytes.as_u64(),
        presence_limit: cfg.rooms.presence_limit,
    }
}

/// `cluster.node_name`, or the host name and 6 random hex digits (CONTRACT §2).
fn node_name(cfg: &Config) -> String {
    if !cfg.cluster.node_name.is_empty() {
        return cfg.cluster.node_name.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wsgate".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The process signals the gateway acts on, installed before it says it is ready: a SIGHUP
/// sent right after the "ready" line must reload, not kill the process (the default action).
#[cfg(unix)]
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Reloads on SIGHUP; returns at SIGTERM or SIGINT.
    async fn wait(mut self, running: &Arc<Running>) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => reload(running),
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals)
    }

    async fn wait(self, _running: &Arc<Running>) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP: re-read the file and apply what can change live, all or nothing.
fn reload(running: &Running) {
    let metrics = &running.server.shared.metrics;
    let next = match Config::load(Source {
        path: &running.path,
        env: None,
    }) {
        Ok(c) => c,
        Err(e) => {
            metrics.reload(false);
            error!(error = %e, "reload refused: configuration invalid; nothing changed");
            return;
        }
    };
    let live = match Live::from_config(&next) {
        Ok(l) => l,
        Err(e) => {
            metrics.reload(false);
            error!(error = %e, "reload refused; nothing changed");
            return;
        }
    };
    if let Err(e) = running.server.cert.reload(&next.tls.cert, &next.tls.key) {
        metrics.reload(false);
        error!(error = %e, "reload refused: certificate not loaded; the old one keeps serving and nothing changed");
        return;
    }
    let mut current = running.config.lock().unwrap_or_else(|p| p.into_inner());
    let server = &running.server;
    let mut applied = vec!["tls.cert", "tls.key"];
    if current.origin != next.origin {
        applied.push("origin");
    }
    if current.auth != next.auth {
        applied.push("auth");
    }
    if current.limits != next.limits {
        applied.push("limits");
    }
    // Every address keeps what it has used: a reload never hands out fresh budgets.
    server
        .rate
        .set_per_minute(next.limits.handshakes_per_ip_per_minute);
    if current.rooms != next.rooms {
        applied.push("rooms");
        server
            .shared
            .hub
            .broker()
            .set_settings(room_settings(&next));
    }
    if current.server.max_connections != next.server.max_connections
        || current.server.handshake_timeout != next.server.handshake_timeout
        || current.server.ping_interval != next.server.ping_interval
        || current.server.idle_timeout != next.server.idle_timeout
        || current.server.shutdown_grace != next.server.shutdown_grace
    {
        applied.push("server (limits and timeouts for new connections)");
    }
    server.shared.hub.set_send_queue(next.limits.send_queue);
    metrics
        .max_connections
        .set(next.server.max_connections as i64);
    // Only the level filter is swapped: the secret caps stay (see `secret_caps`).
    if current.log.level != next.log.level && std::env::var_os("RUST_LOG").is_none() {
        let filter = EnvFilter::new(&next.log.level);
        let log_level = log_bridge_level(&filter);
        if running.filter.reload(filter).is_ok() {
            log::set_max_level(log_level);
            applied.push("log.level");
        }
    }
    server.shared.live.store(Arc::new(live));
    for w in next.warnings() {
        warn!("{w}");
    }
    let restart = current.restart_only_changes(&next);
    if !restart.is_empty() {
        warn!(keys = ?restart, "these keys changed but apply only after a restart");
    }
    // Keys that need a restart keep their running value in the recorded config.
    let mut recorded = next;
    recorded.server.listen = current.server.listen.clone();
    recorded.server.ws_path = current.server.ws_path.clone();
    recorded.server.static_dir = current.server.static_dir.clone();
    recorded.server.proxy_protocol = current.server.proxy_protocol;
    recorded.server.trusted_proxies = current.server.trusted_proxies.clone();
    recorded.admin = current.admin.clone();
    recorded.cluster = current.cluster.clone();
    recorded.log.format = current.log.format;
    *current = recorded;
    metrics.reload(true);
    info!(applied = ?applied, "configuration reloaded");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What the text log writes for the events `emit` makes.
    fn text_log(emit: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let writer = move || Sink(sink.clone());
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(EscapedFields)
                .with_ansi(false)
                .with_writer(writer),
        );
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_log_bridge_passes_on_no_more_than_the_filter_lets_through() {
        let level = |directives: &str| log_bridge_level(&EnvFilter::new(directives));
        assert_eq!(level("info"), log::LevelFilter::Info);
        assert_eq!(level("warn,wsgate=debug"), log::LevelFilter::Debug);
        assert_eq!(level("error"), log::LevelFilter::Error);
        assert_eq!(level("off"), log::LevelFilter::Off);
        assert_eq!(level("info,tungstenite=trace"), log::LevelFilter::Trace);
    }

    #[test]
    fn text_log_values_cannot_start_a_line_or_carry_escapes() {
        let forged = "x\n2030-01-01T00:00:00Z ERROR wsgate: forged\u{1b}[31m\u{202e}\u{2028}";
        let out = text_log(|| {
            tracing::info!(shown = %forged, quoted = forged, debugged = ?forged, "said {forged}");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        for c in ['\u{1b}', '\u{202e}', '\u{2028}'] {
            assert!(!out.contains(c), "raw {c:?} in {out:?}");
        }
        assert!(
            out.contains(
                r"shown=x\n2030-01-01T00:00:00Z ERROR wsgate: forged\u{1b}[31m\u{202e}\u{2028}"
            ),
            "{out}"
        );
        assert!(out.contains(r#"quoted="x\n2030"#), "{out}");
    }
}
