//! Command line, logging and wiring: `serve`, `check-config`, `token`, `gen-cert`.
//!
//! Exit codes: 0 success; 1 runtime failure (bind, certificate); 2 usage; 78 configuration.

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
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::admin::Admin;
use crate::broker::{HistorySettings, MemoryBroker};
use crate::config::{Config, LogFormat, Source};
use crate::hub::Hub;
use crate::limits::{ConnectionCounter, HandshakeLimiter};
use crate::live::{Live, Shared};
use crate::metrics::Metrics;
use crate::server::Server;
use crate::tls;

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_CONFIG: i32 = 78;

const DEFAULT_CONFIG: &str = "config/wsgate.toml";

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
    /// Load-test a running wsgate (see BENCHMARKS.md)
    Bench(Box<crate::bench::BenchArgs>),
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
        Command::Bench(args) => crate::bench::main(*args),
    }
}

fn load(path: &Path) -> Result<Config, i32> {
    Config::load(Source { path, env: None }).map_err(|e| {
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
    let secret = match crate::auth::hs_secret(&cfg.auth) {
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

fn init_logging(cfg: &Config) -> FilterHandle {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&cfg.log.level));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = match cfg.log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
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
        .with(fmt)
        .try_init();
    handle
}

fn serve(path: &Path) -> i32 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let filter = init_logging(&cfg);
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
    broker: Arc<MemoryBroker>,
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

    let metrics = Arc::new(Metrics::new());
    metrics
        .max_connections
        .set(cfg.server.max_connections as i64);
    let broker = Arc::new(MemoryBroker::new(history_settings(&cfg)));
    let hub = Hub::new(broker.clone(), metrics.clone(), cfg.limits.send_queue);
    hub.set_presence_limit(cfg.rooms.presence_limit);
    let shutdown = CancellationToken::new();
    let shared = Arc::new(Shared {
        live: ArcSwap::from_pointee(Live::from_config(&cfg)?),
        hub: hub.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        node_tag: rand::random(),
    });
    let server = Arc::new(Server {
        shared: shared.clone(),
        cert,
        acceptor,
        rate: ArcSwap::from_pointee(HandshakeLimiter::new(
            cfg.limits.handshakes_per_ip_per_minute,
        )),
        conns: Arc::new(ConnectionCounter::default()),
        tracker: TaskTracker::new(),
        ws_path: cfg.server.ws_path.clone(),
        static_dir: cfg.static_dir(),
        draining: AtomicBool::new(false),
    });
    let admin = Arc::new(Admin {
        server: server.clone(),
        api_key: cfg.admin.api_key.clone(),
    });
    let grace = cfg.server.shutdown_grace;
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
        broker,
        filter,
    });

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
                if n % 30 == 0 {
                    server.rate.load().prune();
                }
            }
        })
    };

    wait_for_signals(&running).await?;

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
    admin_task.abort();
    upkeep.abort();
    info!("stopped");
    Ok(())
}

/// The broker's history settings from `[rooms]` (at start and on reload alike).
fn history_settings(cfg: &Config) -> HistorySettings {
    HistorySettings {
        size: cfg.rooms.history_size,
        ttl: cfg.rooms.history_ttl,
        max_bytes: cfg.rooms.history_max_bytes.as_u64(),
    }
}

#[cfg(unix)]
async fn wait_for_signals(running: &Arc<Running>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(running),
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_running: &Arc<Running>) -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await?;
    Ok(())
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
    if current.limits.handshakes_per_ip_per_minute != next.limits.handshakes_per_ip_per_minute {
        server.rate.store(Arc::new(HandshakeLimiter::new(
            next.limits.handshakes_per_ip_per_minute,
        )));
    }
    if current.rooms != next.rooms {
        applied.push("rooms");
        running.broker.set_history(history_settings(&next));
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
    server
        .shared
        .hub
        .set_presence_limit(next.rooms.presence_limit);
    metrics
        .max_connections
        .set(next.server.max_connections as i64);
    if current.log.level != next.log.level
        && std::env::var_os("RUST_LOG").is_none()
        && running
            .filter
            .reload(EnvFilter::new(&next.log.level))
            .is_ok()
    {
        applied.push("log.level");
    }
    server.shared.live.store(Arc::new(live));
    let restart = current.restart_only_changes(&next);
    if !restart.is_empty() {
        warn!(keys = ?restart, "these keys changed but apply only after a restart");
    }
    // Keys that need a restart keep their running value in the recorded config.
    let mut recorded = next;
    recorded.server.listen = current.server.listen.clone();
    recorded.server.ws_path = current.server.ws_path.clone();
    recorded.server.static_dir = current.server.static_dir.clone();
    recorded.admin = current.admin.clone();
    recorded.cluster = current.cluster.clone();
    recorded.log.format = current.log.format;
    *current = recorded;
    metrics.reload(true);
    info!(applied = ?applied, "configuration reloaded");
}
