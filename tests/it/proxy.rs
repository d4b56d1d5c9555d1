//! Behind a load balancer (CONTRACT §2 `server.proxy_protocol`, `server.trusted_proxies`, §3):
//! PROXY v1/v2 headers from raw TCP clients standing in for the balancer, and a real HAProxy
//! (`send-proxy-v2`, health checks on `/readyz`) in front of two gateways, configured from
//! `deploy/haproxy/haproxy.cfg`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ppp::v2;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::hub::{metric_value, metrics_text};
use crate::support::{open_over, tls_over, Gateway, ORIGIN, WAIT};

/// The balancer, as the gateway sees it: every raw client here connects from 127.0.0.1.
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const UNTRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Client addresses carried in headers.
const CLIENT_A: &str = "203.0.113.7:50001";
const CLIENT_B: &str = "198.51.100.9:50002";

/// A v2 `PROXY` header for a TCP connection from `client` (as `send-proxy-v2` sends it).
fn v2_header(client: &str) -> Vec<u8> {
    let addresses: v2::Addresses = (
        client.parse::<SocketAddr>().expect("client address"),
        "127.0.0.1:8443"
            .parse::<SocketAddr>()
            .expect("gateway address"),
    )
        .into();
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        addresses,
    )
    .build()
    .expect("v2 header")
}

/// A v2 `LOCAL` header: the balancer's own connection (a health check).
fn v2_local() -> Vec<u8> {
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Local,
        v2::Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .expect("v2 header")
}

/// A v1 header for a TCP connection from `client` (as `send-proxy` sends it).
fn v1_header(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().expect("client address");
    format!(
        "PROXY TCP4 {} 127.0.0.1 {} 8443\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A gateway behind a balancer on 127.0.0.1, with `f` applied.
async fn behind_proxy(f: impl FnOnce(&mut crate::support::Settings)) -> Gateway {
    Gateway::start_with(|s| {
        s.set("server", "proxy_protocol", json!(true)).set(
            "server",
            "trusted_proxies",
            json!(["127.0.0.1/32"]),
        );
        f(s);
    })
    .await
}

/// The `handshake` log lines after the first `skip`, as JSON fields.
fn handshake_lines(gw: &Gateway, skip: usize) -> Vec<Value> {
    gw.logs()
        .lines()
        .skip(skip)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["fields"].clone())
        .filter(|f| f["message"] == "handshake")
        .collect()
}

/// The IP of a `host:port` address.
fn ip_of(addr: &str) -> String {
    addr.parse::<SocketAddr>()
        .expect("address")
        .ip()
        .to_string()
}

/// Reads until the gateway ends the connection (within [`WAIT`]); returns what it sent.
async fn bytes_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Err(_) => panic!("still open after {WAIT:?}; got {} bytes", got.len()),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `wsgate_handshakes_total{result="proxy_refused",reason=...}`.
async fn proxy_refusals(gw: &Gateway, reason: &str) -> f64 {
    let series = format!("wsgate_handshakes_total{{result=\"proxy_refused\",reason=\"{reason}\"}}");
    metric_value(&metrics_text(gw).await, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn per_ip_limits_and_logs_use_the_address_in_the_header() {
    let gw = behind_proxy(|s| {
        s.set("limits", "handshakes_per_ip_per_minute", json!(2));
    })
    .await;
    let skip = gw.log_len();
    // Client A, through the balancer, twice: v2 then v1.
    let mut a1 = gw
        .connect_with_prefix(PROXY, &v2_header(CLIENT_A), "alice")
        .await;
    let _a2 = gw
        .connect_with_prefix(PROXY, &v1_header(CLIENT_A), "alice")
        .await;
    // A's third handshake within the minute is over its rate...
    let tcp = gw.tcp_with_prefix(PROXY, &v2_header(CLIENT_A)).await;
    let (status, body) = gw.open_on(tcp, "alice").await.err().expect("refused");
    assert_eq!(status, 429, "{body}");
    // ...while B, over the same balancer address, has its own budget.
    let mut b = gw
        .connect_with_prefix(PROXY, &v2_header(CLIENT_B), "bob")
        .await;
    b.join("lobby").await;
    a1.join("lobby").await;

    gw.wait_log_after("\"status\":429", skip).await;
    // The log reader may lag the gateway: wait for all three accepted handshakes' lines.
    gw.wait_log_count("\"result\":\"ok\"", skip, 3).await;
    let lines = handshake_lines(&gw, skip);
    let peers_with = |result: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|f| f["result"] == result)
            .map(|f| f["peer"].as_str().expect("peer").to_string())
            .collect()
    };
    assert_eq!(
        peers_with("ok"),
        [ip_of(CLIENT_A), ip_of(CLIENT_A), ip_of(CLIENT_B)]
    );
    assert_eq!(peers_with("refused"), [ip_of(CLIENT_A)]);
    assert!(
        !gw.logs()
            .lines()
            .skip(skip)
            .any(|l| l.contains("\"peer\":\"127.0.0.1\"")),
        "the balancer's address in a log line:\n{}",
        gw.logs()
    );
}

#[tokio::test]
async fn handshakes_in_flight_are_counted_per_header_address() {
    let gw = behind_proxy(|s| {
        s.set("limits", "handshakes_in_flight_per_ip", json!(1))
            .set("server", "handshake_timeout", json!("60s"))
            .set("log", "level", json!("info,wsgate::gateway::server=debug"));
    })
    .await;
    let skip = gw.log_len();
    // A's first connection stops after the header: in flight until it goes.
    let stalled = gw.tcp_with_prefix(PROXY, &v2_header(CLIENT_A)).await;
    let read = gw.wait_log_after("proxy header read", skip).await;
    assert!(
        read.contains(&format!("\"peer\":\"{}\"", ip_of(CLIENT_A))),
        "{read}"
    );
    // A's second is closed once its header is read, with nothing sent...
    let mut second = gw.tcp_with_prefix(PROXY, &v2_header(CLIENT_A)).await;
    assert!(bytes_until_closed(&mut second).await.is_empty());
    let line = gw
        .wait_log_after("\"reason\":\"handshakes_in_flight_per_ip\"", skip)
        .await;
    assert!(
        line.contains(&format!("\"peer\":\"{}\"", ip_of(CLIENT_A))),
        "{line}"
    );
    // ...while B, over the same balancer address, gets through.
    gw.connect_with_prefix(PROXY, &v2_header(CLIENT_B), "bob")
        .await
        .join("lobby")
        .await;
    drop(stalled);
}

#[tokio::test]
async fn a_connection_without_a_valid_header_is_closed_with_nothing_sent() {
    let gw = behind_proxy(|_| {}).await;
    let skip = gw.log_len();
    // Plain HTTP, which without the PROXY protocol would get a readable 400.
    let mut http = gw
        .tcp_with_prefix(PROXY, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert!(bytes_until_closed(&mut http).await.is_empty());
    // A client speaking TLS straight away (the balancer bypassed or without send-proxy).
    assert!(tls_over(gw.tcp_from(PROXY).await, &gw.ca).await.is_err());
    // A header with garbage where the addresses belong.
    let mut garbage = gw
        .tcp_with_prefix(PROXY, b"PROXY TCP4 203.0.113.7 nowhere 50001 8443\r\n")
        .await;
    assert!(bytes_until_closed(&mut garbage).await.is_empty());
    gw.wait_log_count("\"reason\":\"bad_proxy_header\"", skip, 3)
        .await;
    assert_eq!(proxy_refusals(&gw, "bad_proxy_header").await, 3.0);
    // Nothing of the client's bytes reaches the log.
    assert!(!gw.logs().contains("nowhere"), "{}", gw.logs());
    // The gateway still serves clients that come through the balancer.
    gw.connect_with_prefix(PROXY, &v2_header(CLIENT_A), "alice")
        .await
        .join("lobby")
        .await;
}

#[tokio::test]
async fn an_untrusted_address_is_closed_at_accept_before_anything_is_read() {
    let gw = behind_proxy(|_| {}).await;
    let skip = gw.log_len();
    // It sends nothing at all, and is closed all the same.
    let mut silent = gw.tcp_from(UNTRUSTED).await;
    assert!(bytes_until_closed(&mut silent).await.is_empty());
    let line = gw
        .wait_log_after("\"reason\":\"untrusted_proxy\"", skip)
        .await;
    assert!(line.contains("\"peer\":\"127.0.0.2\""), "{line}");
    // A valid header from it changes nothing: no TLS.
    let tcp = gw.tcp_with_prefix(UNTRUSTED, &v2_header(CLIENT_A)).await;
    assert!(tls_over(tcp, &gw.ca).await.is_err());
    gw.wait_log_count("\"reason\":\"untrusted_proxy\"", skip, 2)
        .await;
    assert_eq!(proxy_refusals(&gw, "untrusted_proxy").await, 2.0);
    // The trusted balancer is served.
    gw.connect_with_prefix(PROXY, &v2_header(CLIENT_A), "alice")
        .await
        .join("lobby")
        .await;
}

#[tokio::test]
async fn local_and_unknown_headers_are_served_as_the_proxy() {
    let gw = behind_proxy(|_| {}).await;
    let skip = gw.log_len();
    let mut local = gw.connect_with_prefix(PROXY, &v2_local(), "checker").await;
    local.join("lobby").await;
    let mut unknown = gw
        .connect_with_prefix(PROXY, b"PROXY UNKNOWN\r\n", "checker")
        .await;
    unknown.join("lobby").await;
    gw.wait_log_count("\"result\":\"ok\"", skip, 2).await;
    let peers: Vec<Value> = handshake_lines(&gw, skip)
        .iter()
        .map(|f| f["peer"].clone())
        .collect();
    assert_eq!(peers, [json!("127.0.0.1"), json!("127.0.0.1")]);
}

#[tokio::test]
async fn a_header_in_several_segments_is_read_whole() {
    let gw = behind_proxy(|_| {}).await;
    for header in [v2_header(CLIENT_A), v1_header(CLIENT_B)] {
        let mut tcp = gw.tcp_from(PROXY).await;
        tcp.set_nodelay(true).expect("nodelay");
        // v2 in 7-byte parts; v1 word by word, each part ending in its space (a line that
        // looks finished at every step but the last).
        let parts: Vec<&[u8]> = if header[0] == b'P' {
            header.split_inclusive(|b| *b == b' ').collect()
        } else {
            header.chunks(7).collect()
        };
        for part in parts {
            tcp.write_all(part).await.expect("write part");
            // Paces the parts so that they arrive as separate segments; waits for nothing.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let skip = gw.log_len();
        let mut c = gw.open_on(tcp, "alice").await.expect("handshake accepted");
        c.join("lobby").await;
        let line = gw.wait_log_after("\"result\":\"ok\"", skip).await;
        let client = if header[0] == b'P' {
            CLIENT_B
        } else {
            CLIENT_A
        };
        assert!(
            line.contains(&format!("\"peer\":\"{}\"", ip_of(client))),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_header_trickled_past_the_handshake_timeout_is_cut() {
    let timeout = Duration::from_secs(1);
    let gw = behind_proxy(|s| {
        s.set("server", "handshake_timeout", json!("1s"));
    })
    .await;
    let skip = gw.log_len();
    let header = v1_header(CLIENT_A);
    let started = Instant::now();
    let (mut read_half, mut write_half) = gw.tcp_from(PROXY).await.into_split();
    let closed = tokio::spawn(async move {
        // Each byte comes well within the timeout; the whole header never does.
        let mut buf = [0u8; 64];
        let got = read_half.read(&mut buf).await;
        (got.map_or(0, |n| n), Instant::now())
    });
    let mut sent = 0;
    for byte in &header {
        if closed.is_finished() || write_half.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (got, at) = closed.await.expect("reader");
    assert_eq!(got, 0, "the gateway sent something");
    assert!(
        sent < header.len(),
        "the whole header went out ({sent} bytes)"
    );
    assert!(at - started >= timeout, "cut after {:?}", at - started);
    let line = gw
        .wait_log_after("\"reason\":\"proxy_header_timeout\"", skip)
        .await;
    assert!(line.contains("\"peer\":\"127.0.0.1\""), "{line}");
    assert_eq!(proxy_refusals(&gw, "proxy_header_timeout").await, 1.0);
}

#[tokio::test]
async fn the_proxy_settings_change_only_with_a_restart() {
    let gw = behind_proxy(|_| {}).await;
    let mut next = gw.settings.clone();
    next.set("server", "proxy_protocol", json!(false)).set(
        "server",
        "trusted_proxies",
        json!(["127.0.0.2/32"]),
    );
    std::fs::write(&gw.config_path, next.toml()).expect("write config");
    let warning = gw.sighup("apply only after a restart").await;
    for key in ["server.proxy_protocol", "server.trusted_proxies"] {
        assert!(warning.contains(key), "{warning}");
    }
    // Still behind the balancer: a header is required, and from 127.0.0.1 only.
    let skip = gw.log_len();
    assert!(tls_over(gw.tcp_from(PROXY).await, &gw.ca).await.is_err());
    gw.wait_log_after("\"reason\":\"bad_proxy_header\"", skip)
        .await;
    let mut c = gw
        .connect_with_prefix(PROXY, &v2_header(CLIENT_A), "alice")
        .await;
    c.join("lobby").await;
}

// ---------------------------------------------------------------------------------------
// A real HAProxy in front of two gateways.

/// Debian's `haproxy` package (`.ci/run` installs it).
const HAPROXY: &str = "/usr/sbin/haproxy";
/// The client's own address, so that it cannot be mistaken for HAProxy's (127.0.0.1).
const REAL_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// The shipped configuration.
fn shipped_haproxy_cfg() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of section `name` (e.g. `backend wsgate`) of an HAProxy configuration, without
/// comments and blank lines.
fn section(cfg: &str, name: &str) -> Vec<String> {
    let mut lines = cfg.lines().skip_while(|l| l.trim() != name).skip(1);
    let mut out = Vec::new();
    for line in lines.by_ref() {
        if !line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            break; // the next section
        }
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            out.push(line.to_string());
        }
    }
    out
}

/// HAProxy running in the foreground (`-db`) with a generated configuration; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    stats: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    /// HAProxy in front of `nodes` (named gw1, gw2, …), with the shipped `defaults` and the
    /// shipped backend's balancing, health check and `default-server` line; only addresses,
    /// ports and check timing are the test's.
    fn start(nodes: &[&Gateway]) -> Haproxy {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: apt-get install haproxy (.ci/run does)"
        );
        let shipped = shipped_haproxy_cfg();
        let backend: Vec<String> = section(&shipped, "backend wsgate")
            .into_iter()
            .filter(|l| !l.starts_with("server "))
            .collect();
        let default_server = backend
            .iter()
            .find(|l| l.starts_with("default-server"))
            .expect("a default-server line");
        assert!(default_server.contains("send-proxy-v2"), "{default_server}");
        assert!(
            backend
                .iter()
                .any(|l| l.contains("httpchk") && l.contains("/readyz")),
            "{backend:?}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let stats = dir.path().join("admin.sock");
        // A free port for the frontend (HAProxy cannot report one it picked itself).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let servers: String = nodes
            .iter()
            .enumerate()
            .map(|(i, gw)| {
                // Checks every 100 ms, one result enough to change state: the test waits
                // on them.
                format!(
                    "    server gw{} {} port {} inter 100ms fall 1 rise 1\n",
                    i + 1,
                    gw.addr,
                    gw.admin.port()
                )
            })
            .collect();
        let indent =
            |lines: &[String]| -> String { lines.iter().map(|l| format!("    {l}\n")).collect() };
        let cfg = format!(
            "global\n    stats socket {stats} mode 600 level admin\n\n\
             defaults\n{defaults}\n\
             frontend wss\n    bind {addr}\n    default_backend wsgate\n\n\
             backend wsgate\n{backend}{servers}",
            stats = stats.display(),
            defaults = indent(&section(&shipped, "defaults")),
            backend = indent(&backend),
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, &cfg).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        Haproxy {
            child,
            addr,
            stats,
            dir,
        }
    }

    /// HAProxy's own output so far, for failure messages.
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// `show stat` from the stats socket: one map per row, by column name.
    async fn stat(&self) -> Option<Vec<HashMap<String, String>>> {
        let mut sock = UnixStream::connect(&self.stats).await.ok()?;
        sock.write_all(b"show stat\n").await.ok()?;
        let mut out = String::new();
        sock.read_to_string(&mut out).await.ok()?;
        let mut lines = out.lines();
        let header: Vec<String> = lines
            .next()?
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_string)
            .collect();
        Some(
            lines
                .filter(|l| !l.is_empty())
                .map(|l| {
                    header
                        .iter()
                        .cloned()
                        .zip(l.split(',').map(str::to_string))
                        .collect()
                })
                .collect(),
        )
    }

    /// Waits until server `name`'s row satisfies `ok`, polling the stats socket (HAProxy has
    /// no event to wait on); returns the row.
    async fn wait_server(
        &mut self,
        name: &str,
        what: &str,
        ok: impl Fn(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", self.output());
            }
            let row = self.stat().await.and_then(|rows| {
                rows.into_iter()
                    .find(|r| r.get("pxname").is_some_and(|p| p == "wsgate") && r["svname"] == name)
            });
            if let Some(row) = row {
                if ok(&row) {
                    return row;
                }
                last = Some(row);
            }
            assert!(
                Instant::now() < deadline,
                "{name} not {what} within {WAIT:?}; last: {last:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A WebSocket as `sub` through HAProxy, from [`REAL_CLIENT`], trusting `ca`.
    async fn connect(&self, gw: &Gateway, ca: &Path, sub: &str) -> crate::support::Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(REAL_CLIENT, 0))
            .expect("bind 127.0.0.3");
        let tcp = socket.connect(self.addr).await.expect("connect to haproxy");
        let tls = tls_over(tcp, ca).await.expect("tls through haproxy");
        let mut req = format!("wss://localhost:{}/ws", self.addr.port())
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("origin", ORIGIN.parse().expect("origin"));
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("wsgate.v1, bearer.{}", gw.token(sub))
                .parse()
                .expect("header"),
        );
        let mut c = open_over(tls, req).await.expect("handshake accepted");
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
        c
    }
}

/// Which of `nodes` logged the accepted handshake of `sub`, and the peer it logged.
async fn node_of(nodes: &[&Gateway], sub: &str) -> (usize, String) {
    let needle = format!("\"user\":\"{sub}\"");
    let deadline = Instant::now() + WAIT;
    loop {
        for (i, gw) in nodes.iter().enumerate() {
            if let Some(line) = gw.logs().lines().find(|l| l.contains(&needle)) {
                let fields: Value = serde_json::from_str(line).expect("json log line");
                return (i, fields["fields"]["peer"].as_str().expect("peer").into());
            }
        }
        assert!(Instant::now() < deadline, "no node logged {sub}");
        // The log lines of two processes: no single event to wait on.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn haproxy_with_send_proxy_v2_spreads_clients_and_skips_a_draining_node() {
    let node = |grace: &'static str| {
        behind_proxy(move |s| {
            s.set("server", "shutdown_grace", json!(grace));
        })
    };
    let gw1 = node("30s").await;
    let gw2 = node("30s").await;
    let nodes = [&gw1, &gw2];
    // One file with both nodes' CAs: the client cannot know which node it will reach.
    let ca = gw1.dir.path().join("both-ca.crt");
    let pems: Vec<String> = nodes
        .iter()
        .map(|gw| std::fs::read_to_string(&gw.ca).expect("ca"))
        .collect();
    std::fs::write(&ca, pems.concat()).expect("write ca");

    let mut haproxy = Haproxy::start(&nodes);
    for name in ["gw1", "gw2"] {
        // L7OK: `/readyz` answered 200 to the shipped check (its Host passes the admin
        // listener's loopback check).
        haproxy
            .wait_server(name, "checked up", |r| {
                r["status"] == "UP" && r["check_status"] == "L7OK"
            })
            .await;
    }

    // Round robin: two clients, one on each node, each logged with the client's address.
    let mut first = haproxy.connect(&gw1, &ca, "rr-1").await;
    let mut second = haproxy.connect(&gw1, &ca, "rr-2").await;
    let (n1, peer1) = node_of(&nodes, "rr-1").await;
    let (n2, peer2) = node_of(&nodes, "rr-2").await;
    assert_ne!(n1, n2, "both clients on gw{}", n1 + 1);
    assert_eq!((peer1.as_str(), peer2.as_str()), ("127.0.0.3", "127.0.0.3"));
    first.join("lobby").await;
    second.join("lobby").await;

    // gw1 drains (SIGTERM): /readyz 503, HAProxy marks it down. The session it holds does
    // not read its close, which keeps gw1 draining (and checked) for a while.
    let held = if n1 == 0 { first } else { second };
    gw1.signal("TERM");
    let down = haproxy
        .wait_server("gw1", "down", |r| r["status"] == "DOWN")
        .await;
    assert_eq!(
        (down["check_status"].as_str(), down["check_code"].as_str()),
        ("L7STS", "503"),
        "{down:?}"
    );

    // New clients all reach gw2, still with their own address.
    let skip2 = gw2.log_len();
    let mut after = Vec::new();
    for i in 0..3 {
        let sub = format!("after-{i}");
        after.push(haproxy.connect(&gw2, &ca, &sub).await);
        let (n, peer) = node_of(&nodes, &sub).await;
        assert_eq!((n, peer.as_str()), (1, "127.0.0.3"), "{sub}");
    }
    assert_eq!(handshake_lines(&gw2, skip2).len(), 3);
    after[0].join("lobby").await;
    drop(held);
}
