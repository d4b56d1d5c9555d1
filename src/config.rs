//! The configuration file: serde structs with the contract's defaults, environment overrides
//! (`WSGATE__SECTION__KEY`), and validation that names the offending key.
//!
//! Loading never binds or opens sockets; `serve` and `check-config` both call [`Config::load`],
//! so `check-config` says exactly what `serve` would refuse.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Keys whose value is a list of strings; the environment gives them comma-separated.
const LIST_KEYS: &[&str] = &[
    "origin.allowed",
    "auth.algorithms",
    "server.trusted_proxies",
];

/// The hs_secret and admin key that ship in the examples: refused on public addresses.
pub const DEFAULT_HS_SECRET: &str = "change-me";
pub const DEFAULT_API_KEY: &str = "change-me-too";

/// Shortest HS secret once a listener is reachable from other machines: RFC 7518 §3.2 wants
/// an HS256 key at least as long as its 256-bit hash, and a shorter one can be brute-forced
/// offline from a single token.
pub const MIN_HS_SECRET_BYTES: usize = 32;
/// Shortest admin key once a listener is reachable from other machines: 32 characters of
/// base64 (what `head -c 32 /dev/urandom | base64` starts with) carry 192 bits.
pub const MIN_API_KEY_CHARS: usize = 32;
/// Placeholders in `config/production.example.toml`: a copied but unedited file must not
/// start, whatever its addresses.
const PLACEHOLDER_SECRETS: &[&str] = &["REPLACE-WITH-A-LONG-RANDOM-KEY", "..."];
/// Shortest `cluster.node_ttl`: nodes write a heartbeat every second, so three seconds lets
/// a node miss two (a busy machine, a slow Redis) before the others remove its sessions.
pub const MIN_NODE_TTL: Duration = Duration::from_secs(3);
/// The command the refusals suggest for making a secret.
const MAKE_SECRET: &str = "head -c 32 /dev/urandom | base64";

/// Why a configuration could not be used. Each message names the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ConfigError {
    fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            message: message.into(),
        }
    }
}

/// The whole configuration, as read from the file plus environment overrides.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub origin: OriginConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub rooms: RoomsConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
    pub pusher: PusherConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub ws_path: String,
    pub static_dir: String,
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Every connection starts with a PROXY protocol v1/v2 header (behind a load balancer).
    pub proxy_protocol: bool,
    /// CIDRs allowed to send that header.
    pub trusted_proxies: Vec<String>,
}

impl ServerConfig {
    /// `trusted_proxies` as networks.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|cidr| {
                cidr.parse::<ipnet::IpNet>().map_err(|_| {
                    ConfigError::invalid(
                        "server.trusted_proxies",
                        format!("{cidr:?} is not a CIDR (e.g. 10.0.0.0/8, ::1/128)"),
                    )
                })
            })
            .collect()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8443".into(),
            ws_path: "/ws".into(),
            static_dir: "web".into(),
            max_connections: 100_000,
            handshake_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            proxy_protocol: false,
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Development only: when cert and key are both missing, make a dev CA and a server
    /// certificate for localhost at start (see `gen-cert`). Refused on non-loopback listeners.
    pub generate_dev_cert: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: "certs/dev/server.crt".into(),
            key: "certs/dev/server.key".into(),
            generate_dev_cert: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    pub allowed: Vec<String>,
    pub allow_missing: bool,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            allowed: vec!["https://localhost:8443".into()],
            allow_missing: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub algorithms: Vec<String>,
    pub hs_secret: String,
    pub hs_secret_file: String,
    pub public_keys: Vec<PublicKeyConfig>,
    pub issuer: String,
    pub audience: String,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    pub cookie_name: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithms: vec!["HS256".into()],
            hs_secret: DEFAULT_HS_SECRET.into(),
            hs_secret_file: String::new(),
            public_keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(30),
            cookie_name: String::new(),
        }
    }
}

impl AuthConfig {
    /// The HS secret: inline, or read from `hs_secret_file` (one trailing newline trimmed).
    pub fn hs_secret(&self) -> Result<Vec<u8>, ConfigError> {
        if self.hs_secret_file.is_empty() {
            return Ok(self.hs_secret.as_bytes().to_vec());
        }
        read_secret_file("auth.hs_secret_file", &self.hs_secret_file)
    }
}

/// Largest secret file read: a secret is a few dozen bytes, and a path such as `/dev/zero`
/// must not make a load read without end.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A secret from a file, one trailing newline trimmed.
fn read_secret_file(key: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let cannot = |e: std::io::Error| ConfigError::invalid(key, format!("cannot read {path}: {e}"));
    let mut secret = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut secret))
        .map_err(cannot)?;
    if secret.len() as u64 > MAX_SECRET_FILE {
        return Err(ConfigError::invalid(
            key,
            format!("{path} is larger than 64 KiB: a secret file holds one secret"),
        ));
    }
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    Ok(secret)
}

/// One public key for asymmetric tokens, selected by the token header's `kid`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    pub kid: String,
    pub alg: String,
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub messages_per_second: u32,
    pub burst: u32,
    pub max_message_bytes: usize,
    pub handshakes_per_ip_per_minute: u32,
    pub max_connections_per_ip: usize,
    /// Sessions of one `sub` on this node; beyond: 503 at the handshake.
    pub max_connections_per_user: usize,
    pub max_rooms_per_connection: usize,
    pub send_queue: usize,
    /// The command bucket (join, leave, refresh), per connection.
    pub commands_per_second: u32,
    pub command_burst: u32,
    /// Connections of one IP still before `101` (TLS, HTTP); more are closed at accept.
    pub handshakes_in_flight_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            messages_per_second: 20,
            burst: 40,
            max_message_bytes: 16384,
            handshakes_per_ip_per_minute: 120,
            max_connections_per_ip: 1000,
            max_connections_per_user: 100,
            max_rooms_per_connection: 64,
            send_queue: 1024,
            commands_per_second: 10,
            command_burst: 80,
            handshakes_in_flight_per_ip: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    pub history_size: usize,
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Rooms with more distinct users than this send no presence events and list only this
    /// many users in `joined.members` (with `members_total`): presence in a 10,000-viewer room
    /// would cost every member a frame per join, n² frames in all.
    pub presence_limit: usize,
    /// All rooms' history together; past it the rooms idle longest lose theirs first.
    /// Accepts `"64KiB"`-style strings and plain byte counts.
    pub history_max_bytes: ByteSize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            presence_limit: 1000,
            history_max_bytes: ByteSize::mib(256),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
    pub api_key: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9090".into(),
            api_key: DEFAULT_API_KEY.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub redis_url: String,
    /// This node in `/api/nodes`, logs and metrics; empty: host name + "-" + 6 random hex.
    pub node_name: String,
    /// Every Redis key and channel starts with it.
    pub key_prefix: String,
    /// A node silent this long is dead: its sessions leave presence.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// Per Redis operation; past it the operation fails as `unavailable`.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

impl ClusterConfig {
    /// The Redis nodes of `redis_url`: none (single node), one (a single Redis) or several
    /// (seed nodes of a Redis Cluster). Only `redis://` and `rediss://` (TLS) URLs; an error
    /// never repeats a URL, which may hold a password.
    pub fn redis_nodes(&self) -> Result<Vec<redis::ConnectionInfo>, ConfigError> {
        use redis::IntoConnectionInfo;
        if self.redis_url.trim().is_empty() {
            return Ok(Vec::new());
        }
        let urls: Vec<&str> = self.redis_url.split(',').map(str::trim).collect();
        let name = |n: usize| {
            if urls.len() == 1 {
                "the URL".to_string()
            } else {
                format!("URL {n}")
            }
        };
        let mut nodes = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            if !matches!(scheme.as_deref(), Some("redis" | "rediss")) {
                return Err(ConfigError::invalid(
                    "cluster.redis_url",
                    format!(
                        "{} must start with redis:// or rediss:// (TLS)",
                        name(i + 1)
                    ),
                ));
            }
            let info = url.into_connection_info().map_err(|e| {
                ConfigError::invalid(
                    "cluster.redis_url",
                    format!("{} is not a Redis URL ({:?})", name(i + 1), e.kind()),
                )
            })?;
            nodes.push(info);
        }
        Ok(nodes)
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            node_name: String::new(),
            key_prefix: "wsgate".into(),
            node_ttl: Duration::from_secs(15),
            redis_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[[pusher.apps]]`: the Pusher-compatible endpoints (CONTRACT §10). None: they answer 404.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PusherConfig {
    pub apps: Vec<PusherAppConfig>,
}

/// One Pusher app: what a Pusher SDK calls `app_id`, `key` and `secret`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PusherAppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    pub secret_file: String,
    /// Origins for this app's sockets; empty: `origin.allowed`.
    pub allowed_origins: Vec<String>,
    /// Accept sockets that send no Origin (pusher-js's Node build, mobile SDKs).
    pub allow_missing_origin: bool,
    /// `"members"`: `client-*` events on private and presence channels, by subscribers;
    /// `"off"`: none.
    pub client_events: String,
    pub max_presence_members: usize,
    /// Sent in `pusher:connection_established`: the client pings after this much silence.
    #[serde(with = "humantime_serde")]
    pub activity_timeout: Duration,
}

impl Default for PusherAppConfig {
    fn default() -> Self {
        PusherAppConfig {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            secret_file: String::new(),
            allowed_origins: Vec::new(),
            allow_missing_origin: false,
            client_events: "members".into(),
            max_presence_members: 100,
            activity_timeout: Duration::from_secs(30),
        }
    }
}

/// Characters of a Pusher app id and key: what the SDKs put in URL paths unescaped.
fn pusher_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl PusherAppConfig {
    /// The secret: inline, or read from `secret_file` (one trailing newline trimmed).
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        if self.secret_file.is_empty() {
            return Ok(self.secret.as_bytes().to_vec());
        }
        read_secret_file("pusher.apps.secret_file", &self.secret_file)
    }
}

/// Where the configuration comes from: a file and (normally) the process environment.
pub struct Source<'a> {
    pub path: &'a Path,
    /// `None` reads the process environment; tests pass a map instead.
    pub env: Option<HashMap<String, String>>,
}

impl Config {
    /// Reads, merges and validates the configuration. Nothing is bound or opened.
    pub fn load(source: Source<'_>) -> Result<Config, ConfigError> {
        let path = source.path;
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError::File {
                path: shown,
                message: "not found (pass --config PATH)".into(),
            });
        }
        Config::load_from(
            config::File::from(path).format(config::FileFormat::Toml),
            shown,
            source.env,
        )
    }

    /// [`Config::load`] of a TOML text instead of a file, with `env` in place of the process
    /// environment: the same merge and the same checks.
    pub(crate) fn load_toml_str(
        toml: &str,
        env: HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        Config::load_from(
            config::File::from_str(toml, config::FileFormat::Toml),
            "<string>".to_string(),
            Some(env),
        )
    }

    fn load_from(
        file: impl config::Source + Send + Sync + 'static,
        shown: String,
        env_map: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut env = config::Environment::with_prefix("WSGATE")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true);
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        let env = env.source(env_map);
        let built = config::Config::builder()
            .add_source(file)
            .add_source(env)
            .build()
            .map_err(|e| ConfigError::File {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        let cfg: Config = built.try_deserialize().map_err(|e| ConfigError::File {
            path: shown,
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value that serde could not; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen_addr()?;
        let admin = self.admin_addr()?;
        if listen == admin && listen.port() != 0 {
            return Err(ConfigError::invalid(
                "admin.listen",
                "must differ from server.listen",
            ));
        }
        let s = &self.server;
        if !s.ws_path.starts_with('/') {
            return Err(ConfigError::invalid(
                "server.ws_path",
                "must start with '/'",
            ));
        }
        if s.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("server.handshake_timeout", s.handshake_timeout),
            ("server.ping_interval", s.ping_interval),
            ("server.idle_timeout", s.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than 0s"));
            }
        }
        if s.idle_timeout < s.ping_interval {
            return Err(ConfigError::invalid(
                "server.idle_timeout",
                "must be at least server.ping_interval (clients answer pings)",
            ));
        }
        if self.tls.generate_dev_cert && !listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "tls.generate_dev_cert",
                "is for development only and needs a loopback server.listen",
            ));
        }
        if self.origin.allowed.is_empty() && !self.origin.allow_missing {
            return Err(ConfigError::invalid(
                "origin.allowed",
                "is empty and origin.allow_missing is false: every handshake would be refused",
            ));
        }
        self.validate_auth()?;
        let l = &self.limits;
        for (key, v) in [
            ("limits.messages_per_second", l.messages_per_second as usize),
            ("limits.burst", l.burst as usize),
            ("limits.max_message_bytes", l.max_message_bytes),
            (
                "limits.handshakes_per_ip_per_minute",
                l.handshakes_per_ip_per_minute as usize,
            ),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            (
                "limits.max_rooms_per_connection",
                l.max_rooms_per_connection,
            ),
            ("limits.send_queue", l.send_queue),
            (
                "limits.max_connections_per_user",
                l.max_connections_per_user,
            ),
            ("limits.commands_per_second", l.commands_per_second as usize),
            ("limits.command_burst", l.command_burst as usize),
            (
                "limits.handshakes_in_flight_per_ip",
                l.handshakes_in_flight_per_ip,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if l.max_message_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes",
                "must be at most 64 MiB",
            ));
        }
        if self.rooms.history_ttl.is_zero() && self.rooms.history_size > 0 {
            return Err(ConfigError::invalid(
                "rooms.history_ttl",
                "must be longer than 0s when rooms.history_size > 0",
            ));
        }
        if self.admin.api_key.is_empty() {
            return Err(ConfigError::invalid("admin.api_key", "must not be empty"));
        }
        self.validate_secrets(listen, admin)?;
        self.cluster.redis_nodes()?;
        let trusted = s.trusted_proxy_nets()?;
        if s.proxy_protocol && trusted.is_empty() {
            return Err(ConfigError::invalid(
                "server.trusted_proxies",
                "is empty while server.proxy_protocol = true: every connection would be refused",
            ));
        }
        let c = &self.cluster;
        if c.key_prefix.is_empty()
            || !c
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        {
            return Err(ConfigError::invalid(
                "cluster.key_prefix",
                "must be 1 or more characters of A-Z a-z 0-9 _ . : -",
            ));
        }
        for (key, d) in [
            ("cluster.node_ttl", c.node_ttl),
            ("cluster.redis_timeout", c.redis_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than 0s"));
            }
        }
        if !c.redis_url.trim().is_empty() && c.node_ttl < MIN_NODE_TTL {
            return Err(ConfigError::invalid(
                "cluster.node_ttl",
                format!(
                    "must be at least {}s: nodes beat once a second, and a node that misses \
                     a couple of beats must not be taken for dead",
                    MIN_NODE_TTL.as_secs()
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        self.validate_pusher(listen)?;
        Ok(())
    }

    /// `[[pusher.apps]]`: ids and keys unique and URL-safe, one secret each (long enough off
    /// loopback, like the other secrets), known `client_events`, positive limits.
    fn validate_pusher(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        let exposed = (!listen.ip().is_loopback()).then_some(("server.listen", listen));
        let apps = &self.pusher.apps;
        for (i, app) in apps.iter().enumerate() {
            if !pusher_name_ok(&app.id) {
                return Err(ConfigError::invalid(
                    "pusher.apps.id",
                    format!("app {}: 1 to 64 characters of A-Z a-z 0-9 _ - .", i + 1),
                ));
            }
            if !pusher_name_ok(&app.key) {
                return Err(ConfigError::invalid(
                    "pusher.apps.key",
                    format!("app {}: 1 to 64 characters of A-Z a-z 0-9 _ - .", app.id),
                ));
            }
            if apps[..i].iter().any(|a| a.id == app.id) {
                return Err(ConfigError::invalid(
                    "pusher.apps.id",
                    format!("{:?} is used by two apps", app.id),
                ));
            }
            if apps[..i].iter().any(|a| a.key == app.key) {
                return Err(ConfigError::invalid(
                    "pusher.apps.key",
                    format!("app {}: its key is used by another app", app.id),
                ));
            }
            if !app.secret.is_empty() && !app.secret_file.is_empty() {
                return Err(ConfigError::invalid(
                    "pusher.apps.secret_file",
                    format!("app {}: set either secret or secret_file, not both", app.id),
                ));
            }
            let key = if app.secret_file.is_empty() {
                "pusher.apps.secret"
            } else {
                "pusher.apps.secret_file"
            };
            let secret = app.secret()?;
            if secret.is_empty() {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "app {}: the secret must not be empty ({MAKE_SECRET})",
                        app.id
                    ),
                ));
            }
            SecretValue {
                key,
                value: &secret,
                len: secret.len(),
                unit: "bytes",
                min: MIN_HS_SECRET_BYTES,
                example: DEFAULT_HS_SECRET,
            }
            .check(exposed)?;
            if !matches!(app.client_events.as_str(), "members" | "off") {
                return Err(ConfigError::invalid(
                    "pusher.apps.client_events",
                    format!("app {}: must be \"members\" or \"off\"", app.id),
                ));
            }
            if app.max_presence_members == 0 {
                return Err(ConfigError::invalid(
                    "pusher.apps.max_presence_members",
                    format!("app {}: must be at least 1", app.id),
                ));
            }
            if app.activity_timeout < Duration::from_secs(1) {
                return Err(ConfigError::invalid(
                    "pusher.apps.activity_timeout",
                    format!("app {}: must be at least 1s", app.id),
                ));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if a.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "auth.algorithms",
                "must list at least one algorithm",
            ));
        }
        if !a.hs_secret_file.is_empty()
            && !a.hs_secret.is_empty()
            && a.hs_secret != DEFAULT_HS_SECRET
        {
            return Err(ConfigError::invalid(
                "auth.hs_secret_file",
                "set either auth.hs_secret or auth.hs_secret_file, not both",
            ));
        }
        if !a.cookie_name.is_empty() && self.origin.allow_missing {
            return Err(ConfigError::invalid(
                "auth.cookie_name",
                "requires origin.allow_missing = false (a cookie is sent by any page's socket)",
            ));
        }
        Ok(())
    }

    /// The HS secret (when an HS algorithm is allowed) and the admin key: never a placeholder
    /// of the production example; and unless both listeners are on loopback (a development
    /// machine), neither the example value nor anything shorter than the minimum.
    fn validate_secrets(&self, listen: SocketAddr, admin: SocketAddr) -> Result<(), ConfigError> {
        let exposed = [("server.listen", listen), ("admin.listen", admin)]
            .into_iter()
            .find(|(_, addr)| !addr.ip().is_loopback());
        let a = &self.auth;
        if a.algorithms.iter().any(|alg| alg.starts_with("HS")) {
            let key = if a.hs_secret_file.is_empty() {
                "auth.hs_secret"
            } else {
                "auth.hs_secret_file"
            };
            let bytes = a.hs_secret()?;
            SecretValue {
                key,
                value: &bytes,
                len: bytes.len(),
                unit: "bytes",
                min: MIN_HS_SECRET_BYTES,
                example: DEFAULT_HS_SECRET,
            }
            .check(exposed)?;
        }
        let api_key = &self.admin.api_key;
        SecretValue {
            key: "admin.api_key",
            value: api_key.as_bytes(),
            len: api_key.chars().count(),
            unit: "characters",
            min: MIN_API_KEY_CHARS,
            example: DEFAULT_API_KEY,
        }
        .check(exposed)
    }

    /// Advice that does not stop the gateway: `check-config` prints it, `serve` logs it.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let cookie = &self.auth.cookie_name;
        if !cookie.is_empty() && !cookie.starts_with(HOST_COOKIE_PREFIX) {
            out.push(format!(
                "auth.cookie_name {cookie:?} has no {HOST_COOKIE_PREFIX} prefix: a page on another \
                 subdomain of the site, or any plain-http page of it, can set a cookie of that name \
                 and sign the browser in to another account; prefer a {HOST_COOKIE_PREFIX} cookie \
                 (Secure, Path=/, no Domain, set by the gateway's host)"
            ));
        }
        let idle = self.server.idle_timeout;
        for app in &self.pusher.apps {
            if app.activity_timeout >= idle {
                out.push(format!(
                    "pusher.apps.activity_timeout of app {:?} ({}) is not below \
                     server.idle_timeout ({}): a quiet Pusher client pings only after \
                     activity_timeout, so it is closed as idle (4201) first",
                    app.id,
                    humantime::format_duration(app.activity_timeout),
                    humantime::format_duration(idle)
                ));
            }
        }
        out
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("server.listen", &self.server.listen)
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("admin.listen", &self.admin.listen)
    }

    /// `server.static_dir`, or `None` when static files are off.
    pub fn static_dir(&self) -> Option<PathBuf> {
        (!self.server.static_dir.is_empty()).then(|| PathBuf::from(&self.server.static_dir))
    }

    /// The configuration as TOML, with secrets replaced by a marker.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.auth.hs_secret.is_empty() {
            shown.auth.hs_secret = REDACTED.into();
        }
        shown.admin.api_key = REDACTED.into();
        if !shown.cluster.redis_url.is_empty() {
            shown.cluster.redis_url = REDACTED.into();
        }
        for app in &mut shown.pusher.apps {
            if !app.secret.is_empty() {
                app.secret = REDACTED.into();
            }
        }
        toml_string(&shown)
    }

    /// Keys that differ between `self` and `next` and that only a restart applies.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let (c, n) = (&self.cluster, &next.cluster);
        let pairs: [(&'static str, bool); 13] = [
            ("server.listen", self.server.listen != next.server.listen),
            ("server.ws_path", self.server.ws_path != next.server.ws_path),
            (
                "server.static_dir",
                self.server.static_dir != next.server.static_dir,
            ),
            (
                "server.proxy_protocol",
                self.server.proxy_protocol != next.server.proxy_protocol,
            ),
            (
                "server.trusted_proxies",
                self.server.trusted_proxies != next.server.trusted_proxies,
            ),
            ("admin.listen", self.admin.listen != next.admin.listen),
            ("admin.api_key", self.admin.api_key != next.admin.api_key),
            ("cluster.redis_url", c.redis_url != n.redis_url),
            ("cluster.node_name", c.node_name != n.node_name),
            ("cluster.key_prefix", c.key_prefix != n.key_prefix),
            ("cluster.node_ttl", c.node_ttl != n.node_ttl),
            ("cluster.redis_timeout", c.redis_timeout != n.redis_timeout),
            ("log.format", self.log.format != next.log.format),
        ];
        for (key, changed) in pairs {
            if changed {
                keys.push(key);
            }
        }
        keys
    }
}

const REDACTED: &str = "<redacted>";

/// Browsers accept a cookie with this name prefix only from the exact host, over https, with
/// `Path=/` and no `Domain`: no sibling subdomain can plant one (cookie tossing).
const HOST_COOKIE_PREFIX: &str = "__Host-";

/// One secret as [`Config::validate_secrets`] judges it.
struct SecretValue<'a> {
    key: &'static str,
    value: &'a [u8],
    /// Its length in `unit`s.
    len: usize,
    unit: &'static str,
    min: usize,
    /// The development default: fine on loopback only.
    example: &'static str,
}

impl SecretValue<'_> {
    /// `exposed`: the first listener other machines can reach, if any.
    fn check(&self, exposed: Option<(&str, SocketAddr)>) -> Result<(), ConfigError> {
        if let Some(p) = PLACEHOLDER_SECRETS
            .iter()
            .find(|p| p.as_bytes() == self.value)
        {
            return Err(ConfigError::invalid(
                self.key,
                format!(
                    "is the placeholder {p:?} of the production example: set a random value ({MAKE_SECRET})"
                ),
            ));
        }
        let Some((listener, addr)) = exposed else {
            return Ok(());
        };
        if self.value == self.example.as_bytes() {
            return Err(ConfigError::invalid(
                self.key,
                format!(
                    "is the example value {:?} while {listener} {addr} is not a loopback address: \
                     set a random value of at least {} {} ({MAKE_SECRET})",
                    self.example, self.min, self.unit
                ),
            ));
        }
        if self.len < self.min {
            return Err(ConfigError::invalid(
                self.key,
                format!(
                    "is {} {}, too short to resist guessing while {listener} {addr} is not a \
                     loopback address: use at least {} ({MAKE_SECRET})",
                    self.len, self.unit, self.min
                ),
            ));
        }
        Ok(())
    }
}

fn toml_string(cfg: &Config) -> String {
    // Durations print as humantime strings; a hand-rolled writer keeps the output readable
    // without pulling a TOML serializer in just for this.
    let value = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    let mut out = String::new();
    if let serde_json::Value::Object(sections) = value {
        for (name, section) in sections {
            out.push_str(&format!("[{name}]\n"));
            if let serde_json::Value::Object(keys) = section {
                for (k, v) in keys {
                    out.push_str(&format!("{k} = {}\n", toml_value(&v)));
                }
            }
            out.push('\n');
        }
    }
    out
}

fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", parts.join(", "))
        }
        serde_json::Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{value:?} is not an IP:port address (e.g. 127.0.0.1:8443)"),
        )
    })
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(toml.as_bytes()).expect("write");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(Source {
            path: f.path(),
            env: Some(env),
        })
    }

    #[test]
    fn a_secret_file_that_never_ends_is_refused_naming_its_key() {
        let err = load_str("[auth]\nhs_secret_file = \"/dev/zero\"\n", &[])
            .expect_err("refused at load")
            .to_string();
        assert!(err.contains("auth.hs_secret_file"), "{err}");
        assert!(err.contains("larger than 64 KiB"), "{err}");
    }

    #[test]
    fn a_text_loads_like_the_same_file() {
        for text in [
            "",
            "[server]\nlisten = \"127.0.0.1:9443\"\n[origin]\nallowed = [\"https://*.example.com\"]\n",
            "[limits]\nburts = 3\n",
            "[server]\nmax_connections = 0\n",
        ] {
            let from_file = load_str(text, &[]).map_err(|e| e.to_string());
            let from_text =
                Config::load_toml_str(text, HashMap::new()).map_err(|e| e.to_string());
            match (from_file, from_text) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(a), Err(b)) => {
                    // The same message, but for the name the text is shown by.
                    let (a, b) = (a.rsplit(": ").next(), b.rsplit(": ").next());
                    assert_eq!(a, b, "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_file_gives_contract_defaults() {
        let cfg = load_str("", &[]).expect("defaults are valid");
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.server.handshake_timeout, Duration::from_secs(5));
        assert_eq!(cfg.rooms.history_ttl, Duration::from_secs(600));
    }

    #[test]
    fn env_overrides_scalars_and_lists() {
        let cfg = load_str(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("WSGATE__SERVER__LISTEN", "127.0.0.1:9443"),
                ("WSGATE__LIMITS__BURST", "7"),
                ("WSGATE__SERVER__IDLE_TIMEOUT", "2m"),
                (
                    "WSGATE__ORIGIN__ALLOWED",
                    "https://a.example,https://b.example",
                ),
            ],
        )
        .expect("valid");
        assert_eq!(cfg.server.listen, "127.0.0.1:9443");
        assert_eq!(cfg.limits.burst, 7);
        assert_eq!(cfg.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(
            cfg.origin.allowed,
            vec!["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[server]\nlistn = \"x\"\n", &[]).expect_err("typo");
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = load_str("[server]\nidle_timeout = \"5 parsecs\"\n", &[]).expect_err("bad");
        let msg = err.to_string();
        assert!(msg.contains("idle_timeout"), "{msg}");
    }

    #[test]
    fn missing_file_is_reported() {
        let err = Config::load(Source {
            path: Path::new("/nonexistent/wsgate.toml"),
            env: Some(HashMap::new()),
        })
        .expect_err("missing");
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn default_secret_refused_on_public_listener() {
        let err = load_str("[server]\nlisten = \"0.0.0.0:443\"\n", &[]).expect_err("public");
        assert!(err.to_string().starts_with("auth.hs_secret"), "{err}");
    }

    #[test]
    fn default_api_key_refused_on_public_admin() {
        let toml =
            format!("[auth]\nhs_secret = \"{LONG_SECRET}\"\n[admin]\nlisten = \"0.0.0.0:9090\"\n");
        let err = load_str(&toml, &[]).expect_err("public");
        let msg = err.to_string();
        assert!(
            msg.starts_with("admin.api_key: is the example value"),
            "{msg}"
        );
        assert!(msg.contains("admin.listen 0.0.0.0:9090"), "{msg}");
    }

    /// 32 bytes / characters: the shortest secret and key accepted off loopback.
    const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn public(extra: &str) -> String {
        format!("[server]\nlisten = \"0.0.0.0:443\"\n{extra}")
    }

    #[test]
    fn short_hs_secret_refused_unless_both_listeners_are_loopback() {
        let short = &LONG_SECRET[1..];
        let api_key = format!("[admin]\napi_key = \"{LONG_SECRET}\"\n");
        let err = load_str(
            &public(&format!("[auth]\nhs_secret = \"{short}\"\n{api_key}")),
            &[],
        )
        .expect_err("31 bytes on a public listener");
        let msg = err.to_string();
        assert!(msg.starts_with("auth.hs_secret: is 31 bytes"), "{msg}");
        assert!(msg.contains("server.listen 0.0.0.0:443"), "{msg}");
        assert!(!msg.contains(short), "the secret is never echoed: {msg}");
        // A public admin listener alone is enough to refuse it.
        let err = load_str(
            &format!("[auth]\nhs_secret = \"{short}\"\n[admin]\nlisten = \"0.0.0.0:9090\"\napi_key = \"{LONG_SECRET}\"\n"),
            &[],
        )
        .expect_err("31 bytes with a public admin listener");
        assert!(err.to_string().starts_with("auth.hs_secret"), "{err}");
        load_str(
            &public(&format!("[auth]\nhs_secret = \"{LONG_SECRET}\"\n{api_key}")),
            &[],
        )
        .expect("32 bytes are enough");
        // Both on loopback: a development machine, short secrets are fine.
        load_str(&format!("[auth]\nhs_secret = \"{short}\"\n"), &[]).expect("loopback");
        load_str("[auth]\nhs_secret = \"x\"\n[admin]\napi_key = \"y\"\n", &[]).expect("loopback");
    }

    #[test]
    fn short_hs_secret_file_refused_off_loopback() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"short-secret-from-a-file\n")
            .expect("write");
        let extra = format!(
            "[auth]\nhs_secret_file = {:?}\n[admin]\napi_key = \"{LONG_SECRET}\"\n",
            file.path()
        );
        let err = load_str(&public(&extra), &[]).expect_err("24 bytes from the file");
        assert!(
            err.to_string()
                .starts_with("auth.hs_secret_file: is 24 bytes"),
            "{err}"
        );
        load_str(&extra, &[]).expect("loopback");
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(format!("{LONG_SECRET}\n").as_bytes())
            .expect("write");
        let extra = format!(
            "[auth]\nhs_secret_file = {:?}\n[admin]\napi_key = \"{LONG_SECRET}\"\n",
            file.path()
        );
        load_str(&public(&extra), &[]).expect("32 bytes from the file");
    }

    #[test]
    fn hs_secret_does_not_matter_without_an_hs_algorithm() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut pem = tempfile::NamedTempFile::new().expect("temp file");
        pem.write_all(key.public_key_pem().as_bytes())
            .expect("write");
        let extra = format!(
            "[auth]\nalgorithms = [\"ES256\"]\nhs_secret = \"short\"\n\
             public_keys = [{{ kid = \"k1\", alg = \"ES256\", file = {:?} }}]\n\
             [admin]\napi_key = \"{LONG_SECRET}\"\n",
            pem.path()
        );
        load_str(&public(&extra), &[]).expect("no HS algorithm: the secret is unused");
    }

    #[test]
    fn short_api_key_refused_unless_both_listeners_are_loopback() {
        let short = &LONG_SECRET[1..];
        let secret = format!("[auth]\nhs_secret = \"{LONG_SECRET}\"\n");
        let err = load_str(
            &public(&format!("{secret}[admin]\napi_key = \"{short}\"\n")),
            &[],
        )
        .expect_err("31 characters with a public server listener");
        let msg = err.to_string();
        assert!(msg.starts_with("admin.api_key: is 31 characters"), "{msg}");
        assert!(!msg.contains(short), "the key is never echoed: {msg}");
        // Characters, not bytes: 31 two-byte characters are still too few.
        let err = load_str(
            &public(&secret),
            &[("WSGATE__ADMIN__API_KEY", &"é".repeat(31))],
        )
        .expect_err("31 characters");
        assert!(err.to_string().starts_with("admin.api_key"), "{err}");
        load_str(&public(&secret), &[("WSGATE__ADMIN__API_KEY", LONG_SECRET)])
            .expect("32 characters are enough");
        load_str("[admin]\napi_key = \"short\"\n", &[]).expect("loopback");
    }

    #[test]
    fn placeholders_of_the_production_example_are_refused_even_on_loopback() {
        let err = load_str(
            "[admin]\napi_key = \"REPLACE-WITH-A-LONG-RANDOM-KEY\"\n",
            &[],
        )
        .expect_err("placeholder key");
        assert!(
            err.to_string()
                .starts_with("admin.api_key: is the placeholder"),
            "{err}"
        );
        let err = load_str("[auth]\nhs_secret = \"...\"\n", &[]).expect_err("placeholder secret");
        assert!(
            err.to_string()
                .starts_with("auth.hs_secret: is the placeholder"),
            "{err}"
        );
    }

    #[test]
    fn production_example_is_refused_until_its_placeholders_are_replaced() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
        let mut secret = tempfile::NamedTempFile::new().expect("temp file");
        secret
            .write_all(b"0123456789abcdef0123456789abcdef0123456789abcdef")
            .expect("write");
        let secret_file = secret.path().display().to_string();
        let load = |api_key: Option<&str>| {
            let mut env = HashMap::from([(
                "WSGATE__AUTH__HS_SECRET_FILE".to_string(),
                secret_file.clone(),
            )]);
            if let Some(k) = api_key {
                env.insert("WSGATE__ADMIN__API_KEY".into(), k.into());
            }
            Config::load(Source {
                path: &example,
                env: Some(env),
            })
        };
        let err = load(None).expect_err("the example's placeholder key");
        assert!(
            err.to_string()
                .starts_with("admin.api_key: is the placeholder"),
            "{err}"
        );
        load(Some("Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWpr")).expect("a real key");
    }

    #[test]
    fn development_config_stays_valid() {
        let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wsgate.toml");
        let cfg = Config::load(Source {
            path: &dev,
            env: Some(HashMap::new()),
        })
        .expect("config/wsgate.toml");
        assert_eq!(cfg.auth.hs_secret, DEFAULT_HS_SECRET);
        assert_eq!(cfg.admin.api_key, DEFAULT_API_KEY);
    }

    #[test]
    fn cookie_without_host_prefix_is_warned_about() {
        let cfg = load_str("[auth]\ncookie_name = \"session\"\n", &[]).expect("valid");
        let warnings = cfg.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("auth.cookie_name \"session\" has no __Host- prefix"));
        let cfg = load_str("[auth]\ncookie_name = \"__Host-session\"\n", &[]).expect("valid");
        assert!(cfg.warnings().is_empty());
        assert!(
            Config::default().warnings().is_empty(),
            "no cookie, no warning"
        );
    }

    #[test]
    fn a_pusher_activity_timeout_not_below_idle_timeout_is_warned_about() {
        let app = |activity: &str| {
            format!(
                "[server]\nidle_timeout = \"60s\"\n[[pusher.apps]]\nid = \"1\"\nkey = \"k\"\n\
                 secret = \"s\"\nactivity_timeout = \"{activity}\"\n"
            )
        };
        let cfg = load_str(&app("60s"), &[]).expect("valid");
        let warnings = cfg.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("pusher.apps.activity_timeout of app \"1\" (1m) is not below"),
            "{warnings:?}"
        );
        let cfg = load_str(&app("30s"), &[]).expect("valid");
        assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
    }

    #[test]
    fn v1_2_keys_have_contract_defaults_and_parse() {
        let cfg = load_str(
            "[rooms]\nhistory_max_bytes = \"64KiB\"\n[limits]\ncommand_burst = 5\n[cluster]\nnode_ttl = \"20s\"\n",
            &[("WSGATE__LIMITS__MAX_CONNECTIONS_PER_USER", "7")],
        )
        .expect("valid");
        assert_eq!(cfg.rooms.history_max_bytes.as_u64(), 64 * 1024);
        assert_eq!(cfg.limits.command_burst, 5);
        assert_eq!(cfg.limits.max_connections_per_user, 7);
        assert_eq!(cfg.cluster.node_ttl, Duration::from_secs(20));
        let d = Config::default();
        assert_eq!(d.rooms.history_max_bytes.as_u64(), 256 * 1024 * 1024);
        assert_eq!(d.limits.commands_per_second, 10);
        assert_eq!(d.limits.command_burst, 80);
        assert_eq!(d.limits.handshakes_in_flight_per_ip, 16);
        assert_eq!(d.cluster.key_prefix, "wsgate");
        assert_eq!(d.server.trusted_proxies, ["127.0.0.1/32", "::1/128"]);
        let cfg = load_str("[rooms]\nhistory_max_bytes = 65536\n", &[]).expect("integer");
        assert_eq!(cfg.rooms.history_max_bytes.as_u64(), 65536);
        let cfg = load_str("", &[("WSGATE__ROOMS__HISTORY_MAX_BYTES", "1MiB")]).expect("env");
        assert_eq!(cfg.rooms.history_max_bytes.as_u64(), 1024 * 1024);
        let err = load_str("[rooms]\nhistory_max_bytes = \"lots\"\n", &[]).expect_err("bad");
        assert!(err.to_string().contains("history_max_bytes"), "{err}");
        let err =
            load_str("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", &[]).expect_err("bad cidr");
        assert!(
            err.to_string().starts_with("server.trusted_proxies"),
            "{err}"
        );
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies_and_a_restart() {
        let cfg = load_str(
            "[server]\nproxy_protocol = true\n",
            &[("WSGATE__SERVER__TRUSTED_PROXIES", "10.0.0.0/8,fd00::/8")],
        )
        .expect("valid");
        assert!(cfg.server.proxy_protocol);
        assert_eq!(
            cfg.server.trusted_proxy_nets().expect("nets"),
            ["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
        );
        let err = load_str(
            "[server]\nproxy_protocol = true\ntrusted_proxies = []\n",
            &[],
        )
        .expect_err("nobody trusted");
        assert!(
            err.to_string()
                .starts_with("server.trusted_proxies: is empty"),
            "{err}"
        );
        assert!(load_str("[server]\ntrusted_proxies = []\n", &[]).is_ok());
        let mut next = cfg.clone();
        next.server.proxy_protocol = false;
        next.server.trusted_proxies = vec!["10.0.0.0/16".into()];
        assert_eq!(
            cfg.restart_only_changes(&next),
            ["server.proxy_protocol", "server.trusted_proxies"]
        );
    }

    #[test]
    fn redis_urls_are_checked_without_being_repeated() {
        let nodes = |url: &str| {
            ClusterConfig {
                redis_url: url.into(),
                ..Default::default()
            }
            .redis_nodes()
        };
        assert!(nodes("").unwrap().is_empty(), "single node");
        assert_eq!(nodes("redis://:pw@127.0.0.1:6390/2").unwrap().len(), 1);
        assert_eq!(
            nodes("redis://a:7000, redis://b:7001,rediss://c:7002")
                .unwrap()
                .len(),
            3,
            "seed nodes of a Redis Cluster"
        );
        let err = load_str(
            "[cluster]\nredis_url = \"redis://a:1,http://user:secret@b:2\"\n",
            &[],
        )
        .expect_err("http");
        let msg = err.to_string();
        assert!(
            msg.starts_with("cluster.redis_url: URL 2 must start with redis:// or rediss://"),
            "{msg}"
        );
        assert!(!msg.contains("secret"), "{msg}");
        let err = load_str("[cluster]\nredis_url = \"unix:///tmp/r.sock\"\n", &[])
            .expect_err("unix socket");
        assert!(
            err.to_string()
                .starts_with("cluster.redis_url: the URL must start with"),
            "{err}"
        );
        let err = load_str("[cluster]\nredis_url = \"redis://:secret@h:port\"\n", &[])
            .expect_err("bad port");
        assert!(err
            .to_string()
            .starts_with("cluster.redis_url: the URL is not a Redis URL"));
        assert!(!err.to_string().contains("secret"));
        let short = "[cluster]\nredis_url = \"redis://127.0.0.1:1\"\nnode_ttl = \"2s\"\n";
        let err = load_str(short, &[]).expect_err("short ttl");
        assert!(err
            .to_string()
            .starts_with("cluster.node_ttl: must be at least 3s"));
        load_str("[cluster]\nnode_ttl = \"2s\"\n", &[]).expect("unused on a single node");
    }

    #[test]
    fn every_cluster_key_is_restart_only() {
        let a = Config::default();
        let mut b = a.clone();
        b.cluster.key_prefix = "other".into();
        b.cluster.node_ttl = Duration::from_secs(30);
        assert_eq!(
            a.restart_only_changes(&b),
            ["cluster.key_prefix", "cluster.node_ttl"]
        );
    }

    #[test]
    fn redaction_hides_secrets() {
        let mut cfg = Config::default();
        cfg.auth.hs_secret = "super-secret-value".into();
        cfg.admin.api_key = "admin-secret-value".into();
        let shown = cfg.redacted_toml();
        assert!(!shown.contains("super-secret-value"));
        assert!(!shown.contains("admin-secret-value"));
        assert!(shown.contains("listen = \"127.0.0.1:8443\""), "{shown}");
        assert!(shown.contains("handshake_timeout = \"5s\""), "{shown}");
    }
}
