//! Test support: the real `wsgate` binary on ephemeral ports with a generated CA, real TLS
//! WebSocket clients that trust that CA, a tiny admin HTTP client, and the gateway's log lines
//! (JSON) to wait on and to search.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use wsgate::auth::unix_now;

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);
pub const ORIGIN: &str = "https://app.example.com";

/// Config sections → keys → values, rendered as TOML.
#[derive(Clone)]
pub struct Settings(BTreeMap<String, BTreeMap<String, Value>>);

impl Settings {
    pub fn set(&mut self, section: &str, key: &str, value: Value) -> &mut Self {
        self.0
            .entry(section.to_string())
            .or_default()
            .insert(key.to_string(), value);
        self
    }

    /// `limits.messages_per_second` and `limits.burst`.
    pub fn rate_limit(&mut self, per_second: u64, burst: u64) -> &mut Self {
        self.set("limits", "messages_per_second", json!(per_second))
            .set("limits", "burst", json!(burst))
    }

    /// Per-session rate limits (messages and commands) far above anything a test sends.
    pub fn unlimited_rate(&mut self) -> &mut Self {
        self.rate_limit(1_000_000, 1_000_000)
            .set("limits", "commands_per_second", json!(1_000_000))
            .set("limits", "command_burst", json!(1_000_000))
    }

    pub fn toml(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.0 {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {}\n", toml_value(v)));
            }
            out.push('\n');
        }
        out
    }
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub settings: Settings,
    pub ca: PathBuf,
    pub secret: String,
    pub api_key: String,
    logs: Arc<(Mutex<Vec<String>>, Notify)>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The settings every test gateway starts from: loopback, ephemeral ports, fast timers.
pub fn base_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings(BTreeMap::new());
    s.set("server", "listen", json!("127.0.0.1:0"))
        .set("server", "static_dir", json!(""))
        .set("server", "handshake_timeout", json!("2s"))
        .set("server", "shutdown_grace", json!("3s"))
        .set("tls", "cert", json!(dir.join("certs/server.crt")))
        .set("tls", "key", json!(dir.join("certs/server.key")))
        .set(
            "origin",
            "allowed",
            json!([ORIGIN, "https://*.example.org"]),
        )
        .set("auth", "hs_secret", json!("test-secret-0123456789"))
        .set("auth", "leeway", json!("0s"))
        .set("admin", "listen", json!("127.0.0.1:0"))
        .set("admin", "api_key", json!("test-admin-key"))
        .set("limits", "handshakes_per_ip_per_minute", json!(100000))
        .set("log", "format", json!("json"))
        .set("log", "level", json!("info"));
    s
}

impl Gateway {
    pub async fn start() -> Gateway {
        Self::start_with(|_| {}).await
    }

    /// Starts the binary with the base settings changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Settings)) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        wsgate::tls::generate_dev_certs(
            &dir.path().join("certs"),
            &wsgate::tls::default_dev_hosts(),
        )
        .expect("certs");
        let mut settings = base_settings(dir.path());
        f(&mut settings);
        Self::spawn(dir, settings, &[]).await
    }

    pub async fn spawn(
        dir: tempfile::TempDir,
        settings: Settings,
        env: &[(&str, &str)],
    ) -> Gateway {
        let config_path = dir.path().join("wsgate.toml");
        std::fs::write(&config_path, settings.toml()).expect("write config");
        let mut cmd = Command::new(wsgate_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn wsgate");
        let stderr = child.stderr.take().expect("stderr");
        let logs: Arc<(Mutex<Vec<String>>, Notify)> =
            Arc::new((Mutex::new(Vec::new()), Notify::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.0.lock().unwrap().push(line);
                sink.1.notify_waiters();
            }
            sink.0.lock().unwrap().push("<eof>".into());
            sink.1.notify_waiters();
        });
        let secret = settings.0["auth"]["hs_secret"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api_key = settings.0["admin"]["api_key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut gw = Gateway {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            ca: dir.path().join("certs/ca.crt"),
            dir,
            config_path,
            settings,
            secret,
            api_key,
            logs,
        };
        let ready = gw.wait_log("wsgate ready").await;
        gw.addr = log_field(&ready, "listen").parse().expect("addr");
        gw.admin = log_field(&ready, "admin").parse().expect("addr");
        gw
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a real signal to the gateway process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            // Polling a child's exit status has no async event; a short poll keeps it cheap.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGHUP and waits for a log line with `needle` written after the signal.
    pub async fn sighup(&self, needle: &str) -> String {
        let skip = self.log_len();
        self.signal("HUP");
        self.wait_log_after(needle, skip).await
    }

    /// `sender` and `bob`, both in `room`, with bob's presence already read off `sender`;
    /// returns them and the room's epoch.
    pub async fn pair_in_room(&self, sender: &str, room: &str) -> (Client, Client, Value) {
        let mut first = self.connect(sender).await;
        let mut bob = self.connect("bob").await;
        let epoch = first.join(room).await["epoch"].clone();
        bob.join(room).await;
        let presence = first.recv().await; // presence: bob joined
        assert_eq!(presence["type"], "presence", "{presence}");
        (first, bob, epoch)
    }

    /// All log lines so far.
    pub fn logs(&self) -> String {
        self.logs.0.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle` (counting from the start) and returns it.
    pub async fn wait_log(&self, needle: &str) -> String {
        self.wait_log_after(needle, 0).await
    }

    pub fn log_len(&self) -> usize {
        self.logs.0.lock().unwrap().len()
    }

    /// Waits for a line containing `needle` among the lines after the first `skip`.
    pub async fn wait_log_after(&self, needle: &str, skip: usize) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.logs.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let lines = self.logs.0.lock().unwrap();
                if let Some(l) = lines.iter().skip(skip).find(|l| l.contains(needle)) {
                    return l.clone();
                }
                if lines.last().is_some_and(|l| l == "<eof>") {
                    panic!(
                        "gateway exited before logging {needle:?}:\n{}",
                        lines.join("\n")
                    );
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no log line with {needle:?} within {WAIT:?}:\n{}",
                    self.logs()
                );
            }
        }
    }

    pub fn url(&self) -> String {
        format!("wss://localhost:{}/ws", self.addr.port())
    }

    pub fn token(&self, sub: &str) -> String {
        self.token_claims(json!({ "sub": sub, "exp": unix_now() + 3600 }))
    }

    pub fn token_claims(&self, claims: Value) -> String {
        sign_hs(&self.secret, "HS256", claims)
    }

    /// A TLS connection to the public port, trusting the test CA.
    pub async fn tls(&self) -> TlsStream<TcpStream> {
        tls_connect(self.addr, &self.ca).await
    }

    /// Opens a WebSocket with the token in the subprotocol and a good Origin.
    pub async fn connect(&self, sub: &str) -> Client {
        let token = self.token(sub);
        self.connect_token(&token).await
    }

    pub async fn connect_token(&self, token: &str) -> Client {
        let mut req = self.request();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("wsgate.v1, bearer.{token}").parse().unwrap(),
        );
        let mut c = self.open(req).await.expect("handshake accepted");
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.welcome = welcome;
        c
    }

    /// A handshake request with a good Origin and no token.
    pub fn request(&self) -> http::Request<()> {
        let mut req = self.url().into_client_request().expect("request");
        req.headers_mut().insert("origin", ORIGIN.parse().unwrap());
        req
    }

    /// Performs a handshake; `Err((status, body))` when refused.
    pub async fn open(&self, req: http::Request<()>) -> Result<Client, (u16, String)> {
        open_over(self.tls().await, req).await
    }

    /// Expects the handshake to be refused with `status`; returns the body.
    pub async fn refused(&self, req: http::Request<()>, status: u16) -> String {
        match self.open(req).await {
            Ok(_) => panic!("handshake accepted, expected {status}"),
            Err((s, body)) => {
                assert_eq!(s, status, "body: {body}");
                body
            }
        }
    }

    /// One admin HTTP request; returns (status, body).
    pub async fn admin_request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        http_request(self.admin, method, path, key, body).await
    }

    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let text = body.map(|b| b.to_string());
        let (status, resp) = self
            .admin_request(method, path, Some(&self.api_key.clone()), text.as_deref())
            .await;
        (
            status,
            serde_json::from_str(&resp).unwrap_or(Value::String(resp)),
        )
    }

    /// Server resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

/// The gateway binary: Cargo's build of it in tests; for an example (which Cargo builds
/// without the binary, so `cargo build` first), the one in the same `target/<profile>/`.
fn wsgate_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_wsgate") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            let bin = exe.ancestors().nth(2).expect("target dir").join("wsgate");
            assert!(
                bin.exists(),
                "{} not found: run `cargo build` first",
                bin.display()
            );
            bin
        }
    }
}

/// Signs claims with an HS secret.
pub fn sign_hs(secret: &str, alg: &str, claims: Value) -> String {
    let alg: jsonwebtoken::Algorithm = alg.parse().expect("alg");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

pub async fn tls_connect(addr: SocketAddr, ca: &std::path::Path) -> TlsStream<TcpStream> {
    try_tls_connect(addr, ca).await.expect("tls handshake")
}

/// A TLS connection to `addr` trusting the CAs in `ca`, or the reason it failed.
pub async fn try_tls_connect(
    addr: SocketAddr,
    ca: &std::path::Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(addr).await?, ca).await
}

/// TLS over an open TCP connection to the gateway, trusting the CAs in `ca`.
pub async fn tls_over(
    tcp: TcpStream,
    ca: &std::path::Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The status code in the first line of an HTTP response head.
pub fn status_code(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

/// A minimal HTTP/1.1 client for the admin listener.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("admin connect");
    let body = body.unwrap_or("");
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("admin answer in time")
        .expect("read");
    parse_http(&raw)
}

/// Parses a `Connection: close` HTTP/1.1 response (chunked or not) into (status, body).
pub fn parse_http(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = status_code(head);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n.min(tail.len())]);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

/// A real WebSocket client over TLS.
pub struct Client {
    pub ws: WebSocketStream<TlsStream<TcpStream>>,
    pub response: http::Response<()>,
    pub welcome: Value,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// The socket ended without a close frame.
    Dropped,
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::text(t.to_string()))
            .await
            .expect("send");
    }

    /// Next JSON text message (pings are answered by tungstenite while reading).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("connection open")
                .expect("no error");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Close(c) => panic!("closed while waiting for a message: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Next message whose `type` is `ty`, skipping presence/others.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Sends a request with `id` and waits for the reply carrying that id.
    pub async fn request(&mut self, mut v: Value, id: u64) -> Value {
        v["id"] = json!(id);
        self.send(v).await;
        loop {
            let r = self.recv().await;
            if r["id"] == json!(id) {
                return r;
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let r = self
            .request(json!({"type":"join","room":room}), 9_000_001)
            .await;
        assert_eq!(r["type"], "joined", "{r}");
        r
    }

    /// Reads until the connection ends; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(f)))) => return Closed::Code(u16::from(f.code)),
                Some(Ok(Message::Close(None))) => return Closed::Code(1005),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Closed::Dropped,
            }
        }
    }

    /// Asserts that no message arrives within `d` (used after an event that would have
    /// produced one: e.g. after the sender's ack, a self-delivery would already be queued).
    pub async fn assert_silent(&mut self, d: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("unexpected message: {t}");
        }
    }
}

/// Runs `wsgate <args>` to completion (with `RUST_LOG` unset and `env` added).
pub fn run_wsgate(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(wsgate_bin());
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run wsgate")
}

/// Writes `dir/wsgate.toml` from the base settings changed by `f`, with a generated
/// certificate in `dir/certs`; returns its path.
pub fn write_config(dir: &std::path::Path, f: impl FnOnce(&mut Settings)) -> PathBuf {
    wsgate::tls::generate_dev_certs(&dir.join("certs"), &wsgate::tls::default_dev_hosts())
        .expect("certs");
    let mut s = base_settings(dir);
    f(&mut s);
    let path = dir.join("wsgate.toml");
    std::fs::write(&path, s.toml()).expect("write config");
    path
}

impl Gateway {
    /// A TCP connection to the public port from `local`, e.g. `127.0.0.2`: loopback accepts all
    /// of 127.0.0.0/8, so per-IP limits see another client.
    pub async fn tcp_from(&self, local: std::net::IpAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .unwrap_or_else(|e| panic!("bind {local}: {e}"));
        socket.connect(self.addr).await.expect("connect")
    }

    /// [`Gateway::connect`] from the address `local` (see [`Gateway::tcp_from`]).
    pub async fn connect_from(&self, local: std::net::IpAddr, sub: &str) -> Client {
        self.open_on(self.tcp_from(local).await, sub)
            .await
            .expect("handshake accepted")
    }

    /// Waits until `n` log lines after the first `skip` contain `needle`.
    pub async fn wait_log_count(&self, needle: &str, skip: usize, n: usize) {
        let mut from = skip;
        for _ in 0..n {
            self.wait_log_after(needle, from).await;
            let lines = self.logs.0.lock().unwrap();
            from += 1 + lines
                .iter()
                .skip(from)
                .position(|l| l.contains(needle))
                .expect("the line just found");
        }
    }
}

impl Client {
    /// Closes the WebSocket and waits until the server has ended the connection (TLS
    /// close_notify or TCP end), which a session does only once it has left the hub.
    pub async fn close_and_wait_gone(mut self) {
        self.ws.close(None).await.expect("send close");
        while let Some(Ok(_)) = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("close reply in time")
        {}
        let tls = self.ws.get_mut();
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(WAIT, tls.read(&mut buf))
                .await
                .expect("the server ends the connection in time")
            {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }
}

/// A field of a log line in either format: JSON (`"fields":{"key":"value"}`) or text
/// (`key=value`, unquoted for `%` fields).
pub fn log_field(line: &str, key: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        return v["fields"][key].as_str().expect(key).to_string();
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .trim_matches('"')
        .to_string()
}

/// A handshake over an established TLS connection; `Err((status, body))` when refused.
pub async fn open_over(
    tls: TlsStream<TcpStream>,
    req: http::Request<()>,
) -> Result<Client, (u16, String)> {
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, resp)) => Ok(Client {
            ws,
            response: resp.map(|_| ()),
            welcome: Value::Null,
        }),
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(|v| format!(" retry-after={v}"))
                .unwrap_or_default();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            Err((status, format!("{body}{retry}")))
        }
        Err(e) => panic!("handshake failed without a status: {e}"),
    }
}

impl Gateway {
    /// A TCP connection from `local` to the public port that has sent `prefix` first (e.g. a
    /// PROXY protocol header).
    pub async fn tcp_with_prefix(&self, local: std::net::IpAddr, prefix: &[u8]) -> TcpStream {
        let mut tcp = self.tcp_from(local).await;
        tcp.write_all(prefix).await.expect("write prefix");
        tcp
    }

    /// A handshake as `sub` (good Origin, token in the subprotocol) over TLS on `tcp`;
    /// `Err((status, body))` when refused.
    pub async fn open_on(&self, tcp: TcpStream, sub: &str) -> Result<Client, (u16, String)> {
        let tls = tls_over(tcp, &self.ca).await.expect("tls handshake");
        let mut req = self.request();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("wsgate.v1, bearer.{}", self.token(sub))
                .parse()
                .unwrap(),
        );
        let mut c = open_over(tls, req).await?;
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
        Ok(c)
    }

    /// [`Gateway::connect`] from `local` after sending `prefix` (see [`Gateway::tcp_with_prefix`]).
    pub async fn connect_with_prefix(
        &self,
        local: std::net::IpAddr,
        prefix: &[u8],
        sub: &str,
    ) -> Client {
        let tcp = self.tcp_with_prefix(local, prefix).await;
        self.open_on(tcp, sub).await.expect("handshake accepted")
    }
}
