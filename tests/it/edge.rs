//! The gateway's edges as an outsider meets them: identity claims that could forge log lines or
//! pose as the server, 401s that name nothing, logs that hold no token at any level and escape
//! what clients wrote, the admin listener's timeouts, connection cap and Host check, and the
//! static files (hidden files, symlinks, content types, HSTS, no test files in `web/`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsgate::admin::{ADMIN_BODY_TIMEOUT, ADMIN_HEADER_TIMEOUT, MAX_ADMIN_CONNECTIONS};
use wsgate::auth::unix_now;

use crate::hub::metrics_text;
use crate::support::{base_settings, parse_http, sign_hs, Gateway, Settings, ORIGIN, WAIT};

// ---------------------------------------------------------------------------------------------
// helpers

/// `wsgate.v1, bearer.<token>` on a good-Origin handshake request.
fn with_token(gw: &Gateway, token: &str) -> http::Request<()> {
    let mut req = gw.request();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("wsgate.v1, bearer.{token}").parse().unwrap(),
    );
    req
}

/// A token for `sub`, valid for an hour, with `extra` claims.
fn token_for(gw: &Gateway, sub: &str, extra: Value) -> String {
    let mut claims = json!({ "sub": sub, "exp": unix_now() + 3600 });
    if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        c.extend(extra);
    }
    gw.token_claims(claims)
}

/// A gateway writing text logs (`log.format = "text"`).
async fn text_gateway() -> Gateway {
    Gateway::start_with(|s| {
        s.set("log", "format", json!("text"));
    })
    .await
}

/// Connects `sub` and waits for its handshake line: every line logged before it is then in.
async fn log_barrier(gw: &Gateway, sub: &str) {
    let skip = gw.log_len();
    let _client = gw.connect(sub).await;
    gw.wait_log_after(sub, skip).await;
}

/// The log never holds any of `secrets`, nor a JWT's signature part.
fn assert_no_secret_logged(gw: &Gateway, secrets: &[&str]) {
    let logs = gw.logs();
    for s in secrets {
        assert!(!logs.contains(s), "{s} in the log");
        if let Some(sig) = s.rsplit('.').next().filter(|p| p.len() > 10) {
            assert!(!logs.contains(sig), "signature of {s} in the log");
        }
    }
}

/// An HTTP answer read off the wire.
struct Answer {
    status: u16,
    /// Lowercased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.lines();
    let status = crate::support::status_code(lines.next().expect("status line"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// `GET path` over TLS with `Host: host` and `Connection: close`.
async fn https_get(gw: &Gateway, path: &str, host: &str) -> Answer {
    let mut tls = gw.tls().await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // The gateway may end TLS without close_notify after its answer: keep what was read.
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut raw))
        .await
        .expect("answer in time");
    parse_answer(&raw)
}

/// Sends `raw` to the admin listener and reads until it closes; `None` if it closed (or reset)
/// without answering.
async fn admin_raw(gw: &Gateway, raw: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(gw.admin).await.expect("admin connect");
    tcp.write_all(raw.as_bytes()).await.expect("write");
    read_until_closed(&mut tcp).await
}

async fn read_until_closed(tcp: &mut TcpStream) -> Option<(u16, String)> {
    let mut raw = Vec::new();
    // The admin's own timeouts may be what ends it: [`WAIT`] past them.
    let within = WAIT + ADMIN_HEADER_TIMEOUT.max(ADMIN_BODY_TIMEOUT);
    let read = tokio::time::timeout(within, tcp.read_to_end(&mut raw))
        .await
        .expect("admin closes or answers in time");
    if raw.is_empty() {
        // EOF or a reset, with nothing said.
        let _ = read;
        return None;
    }
    Some(parse_http(&raw))
}

/// The response to a handshake the gateway refuses.
async fn refusal(gw: &Gateway, req: http::Request<()>) -> http::Response<Option<Vec<u8>>> {
    match tokio_tungstenite::client_async(req, gw.tls().await).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => *resp,
        Err(e) => panic!("handshake failed without a status: {e}"),
        Ok(_) => panic!("handshake accepted"),
    }
}

fn admin_get(path: &str, host_header: &str) -> String {
    format!("GET {path} HTTP/1.1\r\n{host_header}Authorization: Bearer test-admin-key\r\nConnection: close\r\n\r\n")
}

// ---------------------------------------------------------------------------------------------
// identity claims

/// Characters that could forge a log line, hide or reorder text, or pass for someone else.
const HIDDEN: [&str; 16] = [
    "\n",
    "\t",
    "\r",
    "\u{1b}[31m",
    "\u{85}",
    "\u{200b}",
    "\u{200d}",
    "\u{200f}",
    "\u{202e}",
    "\u{2060}",
    "\u{2064}",
    "\u{2067}",
    "\u{feff}",
    "\u{61c}",
    "\u{2028}",
    "\u{180e}",
];

#[tokio::test]
async fn sub_or_name_with_hidden_or_control_characters_is_401() {
    let gw = Gateway::start().await;
    for c in HIDDEN {
        let sub = format!("mallory{c}admin");
        let token = token_for(&gw, &sub, json!({}));
        let body = gw.refused(with_token(&gw, &token), 401).await;
        assert_eq!(body, "unauthorized\n", "sub {sub:?}");
        let token = token_for(
            &gw,
            "mallory",
            json!({ "name": format!("Mallory{c}Admin") }),
        );
        gw.refused(with_token(&gw, &token), 401).await;
    }
    // Ordinary Unicode, spaces and an inner `@` still pass.
    for (sub, name) in [
        ("zoë", "Zoë Ünal"),
        ("李雷", "李雷"),
        ("a@b.example", "@alice"),
    ] {
        let token = token_for(&gw, sub, json!({ "name": name }));
        assert_eq!(gw.connect_token(&token).await.welcome["user"], sub);
    }
}

#[tokio::test]
async fn sub_that_reads_as_the_server_is_401() {
    let gw = Gateway::start().await;
    // FULLWIDTH and SMALL COMMERCIAL AT become `@` under NFKC; so does a leading ideographic space.
    for sub in [
        "\u{ff20}server",
        "\u{fe6b}server",
        "\u{3000}@server",
        " @server",
    ] {
        let token = token_for(&gw, sub, json!({}));
        let skip = gw.log_len();
        assert_eq!(
            gw.refused(with_token(&gw, &token), 401).await,
            "unauthorized\n",
            "sub {sub:?}"
        );
        let line = gw
            .wait_log_after("\"reason\":\"token_bad_claims\"", skip)
            .await;
        assert!(line.contains("reserved for the server"), "{line}");
    }
}

#[tokio::test]
async fn a_sub_cannot_forge_a_text_log_line() {
    let gw = text_gateway().await;
    let forged = "2030-01-01T00:00:00.000000Z ERROR wsgate::admin: FORGED admin key leaked";
    let token = token_for(&gw, &format!("mallory\n{forged}"), json!({}));
    gw.refused(with_token(&gw, &token), 401).await;
    log_barrier(&gw, "after-forgery").await;
    let logs = gw.logs();
    assert!(
        !logs.lines().any(|l| l.starts_with("2030-01-01")),
        "forged line:\n{logs}"
    );
    assert!(!logs.contains('\u{1b}'), "raw escape in the log:\n{logs}");
}

#[tokio::test]
async fn a_refused_origin_is_logged_escaped_in_text_logs() {
    let gw = text_gateway().await;
    // C1 CSI (a terminal escape), a bidi override and a line separator, as raw UTF-8 bytes.
    let evil = "https://evil.example\u{9b}31m\u{202e}moc.elpmaxe\u{2028}FORGED";
    let mut req = gw.request();
    req.headers_mut().insert(
        "origin",
        http::HeaderValue::from_bytes(evil.as_bytes()).unwrap(),
    );
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("wsgate.v1, bearer.{}", gw.token("alice"))
            .parse()
            .unwrap(),
    );
    gw.refused(req, 403).await;
    let line = gw.wait_log("origin_missing").await;
    assert!(
        line.contains(r#"origin="https://evil.example\u{9b}31m\u{202e}moc.elpmaxe\u{2028}FORGED""#),
        "the refused Origin, escaped: {line}"
    );
    // A plain foreign Origin is there as sent.
    let mut req = gw.request();
    req.headers_mut()
        .insert("origin", "https://other.example".parse().unwrap());
    gw.refused(req, 403).await;
    let line = gw.wait_log("origin_not_allowed").await;
    assert!(line.contains(r#"origin="https://other.example""#), "{line}");
    let logs = gw.logs();
    for c in ['\u{9b}', '\u{202e}', '\u{2028}'] {
        assert!(!logs.contains(c), "raw {c:?} in the log:\n{logs}");
    }
}

// ---------------------------------------------------------------------------------------------
// 401 bodies

#[tokio::test]
async fn every_401_says_only_unauthorized_and_the_metric_has_the_reason() {
    let gw = Gateway::start().await;
    let good = gw.token("alice");
    let expired = gw.token_claims(json!({ "sub": "alice", "exp": unix_now() - 60 }));
    let cases: Vec<(http::Request<()>, &str)> = vec![
        (gw.request(), "token_missing"),
        (with_token(&gw, "not-a-jwt"), "token_malformed"),
        (
            with_token(
                &gw,
                &sign_hs(
                    "other-secret",
                    "HS256",
                    json!({"sub":"a","exp":unix_now()+60}),
                ),
            ),
            "token_bad_signature",
        ),
        (
            with_token(
                &gw,
                &sign_hs(&gw.secret, "HS384", json!({"sub":"a","exp":unix_now()+60})),
            ),
            "token_alg_not_allowed",
        ),
        (with_token(&gw, &expired), "token_expired"),
        (
            with_token(
                &gw,
                &token_for(&gw, "alice", json!({ "nbf": unix_now() + 600 })),
            ),
            "token_not_yet_valid",
        ),
        (with_token(&gw, &gw.token("@server")), "token_bad_claims"),
        (
            {
                let mut req = with_token(&gw, &good);
                req.headers_mut()
                    .insert("authorization", format!("Bearer {good}").parse().unwrap());
                req
            },
            "token_ambiguous",
        ),
    ];
    let mut bodies = Vec::new();
    for (req, reason) in cases {
        let skip = gw.log_len();
        bodies.push(gw.refused(req, 401).await);
        gw.wait_log_after(&format!("\"reason\":\"{reason}\""), skip)
            .await;
    }
    assert!(
        bodies.iter().all(|b| b == "unauthorized\n"),
        "bodies differ: {bodies:?}"
    );
    let text = metrics_text(&gw).await;
    for reason in [
        "token_missing",
        "token_malformed",
        "token_bad_signature",
        "token_alg_not_allowed",
        "token_expired",
        "token_not_yet_valid",
        "token_bad_claims",
        "token_ambiguous",
    ] {
        let series =
            format!("wsgate_handshakes_total{{result=\"bad_token\",reason=\"{reason}\"}} 1");
        assert!(text.lines().any(|l| l == series), "no {series} in:\n{text}");
    }
    assert_no_secret_logged(&gw, &[&good, &expired]);
}

// ---------------------------------------------------------------------------------------------
// no token in any log, at any level

/// Opens a session in each place a token can travel, refreshes one with a new token, calls
/// the admin API, then returns the tokens used (after a barrier line).
async fn tokens_everywhere(gw: &Gateway) -> Vec<String> {
    let in_subprotocol = gw.token("t-subprotocol");
    let mut c = gw.connect_token(&in_subprotocol).await;

    let in_header = gw.token("t-header");
    let mut req = gw.request();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {in_header}").parse().unwrap(),
    );
    gw.open(req).await.expect("header token accepted");

    let in_query = gw.token("t-query");
    let mut req = format!("{}?token={in_query}", gw.url())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", ORIGIN.parse().unwrap());
    gw.open(req).await.expect("query token accepted");

    let in_cookie = gw.token("t-cookie");
    let mut req = gw.request();
    req.headers_mut().insert(
        "cookie",
        format!("wsgate_session={in_cookie}").parse().unwrap(),
    );
    gw.open(req).await.expect("cookie token accepted");

    let refused = gw.token_claims(json!({ "sub": "t-refused", "exp": unix_now() - 60 }));
    let mut req = gw.request();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {refused}").parse().unwrap(),
    );
    gw.refused(req, 401).await;

    let refreshed = token_for(gw, "t-subprotocol", json!({ "iat": unix_now() + 1 }));
    let reply = c
        .request(json!({ "type": "refresh", "token": refreshed }), 7)
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    let bad_refresh = sign_hs(
        "other",
        "HS256",
        json!({"sub":"t-subprotocol","exp":unix_now()+60}),
    );
    let reply = c
        .request(json!({ "type": "refresh", "token": bad_refresh }), 8)
        .await;
    assert_eq!(reply["code"], "token_invalid", "{reply}");

    let (status, _) = gw.api("GET", "/api/rooms", None).await;
    assert_eq!(status, 200);
    log_barrier(gw, "after-tokens").await;
    vec![
        in_subprotocol,
        in_header,
        in_query,
        in_cookie,
        refused,
        refreshed,
        bad_refresh,
    ]
}

fn cookie_settings(s: &mut Settings) {
    s.set("auth", "cookie_name", json!("wsgate_session"));
}

#[tokio::test]
async fn no_token_nor_admin_key_reaches_the_log_at_rust_log_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    wsgate::tls::generate_dev_certs(&dir.path().join("certs"), &wsgate::tls::default_dev_hosts())
        .expect("certs");
    let mut settings = base_settings(dir.path());
    cookie_settings(&mut settings);
    let gw = Gateway::spawn(dir, settings, &[("RUST_LOG", "trace")]).await;
    let tokens = tokens_everywhere(&gw).await;
    // Trace is on (waited for: the test may read the log behind the gateway writing it).
    gw.wait_log("\"level\":\"TRACE\"").await;
    log_barrier(&gw, "after-the-tokens").await;
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.push(&gw.api_key);
    assert_no_secret_logged(&gw, &secrets);
}

#[tokio::test]
async fn no_token_reaches_the_log_after_a_reload_to_trace() {
    let gw = Gateway::start_with(cookie_settings).await;
    // The signal handlers are installed just after the ready line: a handshake first.
    log_barrier(&gw, "before-reload").await;
    let mut next = gw.settings.clone();
    next.set("log", "level", json!("trace"));
    std::fs::write(&gw.config_path, next.toml()).expect("write config");
    let line = gw.sighup("configuration reloaded").await;
    assert!(line.contains("log.level"), "{line}");
    let skip = gw.log_len();
    let tokens = tokens_everywhere(&gw).await;
    // Trace is on after the reload.
    gw.wait_log_after("\"level\":\"TRACE\"", skip).await;
    log_barrier(&gw, "after-the-tokens").await;
    let secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_secret_logged(&gw, &secrets);
}

// ---------------------------------------------------------------------------------------------
// admin listener

#[tokio::test]
async fn admin_cuts_a_request_head_that_never_ends() {
    let gw = Gateway::start().await;
    // Before the connection: the timeout runs from a moment after this one (a lower bound
    // only: a busy machine may cut it late).
    let started = Instant::now();
    let mut tcp = TcpStream::connect(gw.admin).await.expect("connect");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut tcp).await;
    assert!(
        answer.as_ref().is_none_or(|(status, _)| *status != 200),
        "{answer:?}"
    );
    assert!(
        started.elapsed() >= ADMIN_HEADER_TIMEOUT,
        "cut after {:?}",
        started.elapsed()
    );
    // The listener still serves.
    assert_eq!(gw.admin_request("GET", "/healthz", None, None).await.0, 200);
}

#[tokio::test]
async fn admin_cuts_a_body_that_never_ends_with_408() {
    let gw = Gateway::start().await;
    // Before the connection: a lower bound only, as above.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(gw.admin).await.expect("connect");
    tcp.write_all(
        b"POST /api/publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer test-admin-key\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"room\":",
    )
    .await
    .expect("write");
    let (status, body) = read_until_closed(&mut tcp).await.expect("an answer");
    assert_eq!(status, 408, "{body}");
    assert!(
        started.elapsed() >= ADMIN_BODY_TIMEOUT,
        "cut after {:?}",
        started.elapsed()
    );
    assert_eq!(gw.admin_request("GET", "/healthz", None, None).await.0, 200);
}

#[tokio::test]
async fn admin_on_loopback_answers_421_to_a_foreign_host_on_every_route() {
    let gw = Gateway::start().await;
    let port = gw.admin.port();
    for path in ["/healthz", "/readyz", "/metrics", "/api/rooms", "/nope"] {
        for host in [
            "evil.example".to_string(),
            format!("evil.example:{port}"),
            "127.0.0.1.evil.example".to_string(),
            "localhost.evil.example".to_string(),
            "localhost@evil.example".to_string(),
            "192.168.1.10".to_string(),
        ] {
            let answer = admin_raw(&gw, &admin_get(path, &format!("Host: {host}\r\n"))).await;
            assert_eq!(answer.map(|a| a.0), Some(421), "{path} with Host {host}");
        }
    }
    // An absolute-form target names the host too.
    let raw =
        "GET http://evil.example/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(admin_raw(&gw, raw).await.map(|a| a.0), Some(421));
    // Loopback names and addresses, any port.
    for host in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        "LOCALHOST:1".to_string(),
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{port}"),
        "[::1]".to_string(),
        format!("[::1]:{port}"),
    ] {
        for path in ["/healthz", "/api/rooms"] {
            let answer = admin_raw(&gw, &admin_get(path, &format!("Host: {host}\r\n"))).await;
            assert_eq!(answer.map(|a| a.0), Some(200), "{path} with Host {host}");
        }
    }
    // HTTP/1.1 requires a Host; an HTTP/1.0 probe without one is served.
    let answer = admin_raw(&gw, &admin_get("/healthz", "")).await;
    assert_eq!(answer.map(|a| a.0), Some(400));
    let raw = "GET /healthz HTTP/1.0\r\n\r\n";
    assert_eq!(admin_raw(&gw, raw).await.map(|a| a.0), Some(200));
}

#[tokio::test]
async fn admin_closes_connections_past_its_cap_and_serves_again_after() {
    let gw = Gateway::start().await;
    let mut idle = Vec::new();
    for _ in 0..MAX_ADMIN_CONNECTIONS {
        idle.push(TcpStream::connect(gw.admin).await.expect("connect"));
    }
    // One more, with a complete request: closed unanswered.
    let raw = admin_get("/healthz", "Host: localhost\r\n");
    assert_eq!(admin_raw(&gw, &raw).await, None, "served past the cap");
    gw.wait_log("admin connection closed: too many open").await;
    // The held ones still work.
    let mut first = idle.pop().expect("a held connection");
    first.write_all(raw.as_bytes()).await.expect("write");
    assert_eq!(read_until_closed(&mut first).await.map(|a| a.0), Some(200));
    drop(idle);
    // Their slots come back as the listener notices the closes.
    let deadline = Instant::now() + WAIT;
    loop {
        if admin_raw(&gw, &raw).await.map(|a| a.0) == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "the admin never served again");
        // Nothing announces a freed slot; retry shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// static files

fn crate_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

async fn static_gateway(dir: &Path) -> Gateway {
    let dir = dir.to_path_buf();
    Gateway::start_with(move |s| {
        s.set("server", "static_dir", json!(dir));
    })
    .await
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn hidden_files_and_directories_are_404() {
    let root = tempfile::tempdir().unwrap();
    let web = root.path();
    write(&web.join("index.html"), "<p>hi</p>");
    write(&web.join(".env"), "SECRET=1");
    write(&web.join(".git/config"), "[core]");
    write(&web.join("a/.hidden"), "hidden");
    write(&web.join("a/visible.txt"), "visible");
    write(&web.join(".well-known/security.txt"), "Contact: x");
    write(&web.join(".well-known/.private"), "private");
    let gw = static_gateway(web).await;
    for path in [
        "/.env",
        "/%2eenv",
        "/.git/config",
        "/.git/",
        "/a/.hidden",
        "/a/%2Ehidden",
        "/a/%2f.hidden",
        "/.well-known/.private",
    ] {
        let a = https_get(&gw, path, "localhost").await;
        assert_eq!(a.status, 404, "{path}");
        assert!(a.body.is_empty(), "{path}: {:?}", a.body);
    }
    for (path, body) in [
        ("/a/visible.txt", "visible"),
        ("/.well-known/security.txt", "Contact: x"),
    ] {
        let a = https_get(&gw, path, "localhost").await;
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, body.as_bytes()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn symlinks_leading_out_of_static_dir_are_404() {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    write(&root.path().join("secret.txt"), "top secret");
    let web = root.path().join("web");
    write(&web.join("index.html"), "<p>hi</p>");
    write(&web.join("app-1.2.js"), "// app");
    symlink("app-1.2.js", web.join("app.js")).unwrap();
    symlink("/etc/passwd", web.join("passwd")).unwrap();
    symlink("../secret.txt", web.join("secret.txt")).unwrap();
    symlink("..", web.join("up")).unwrap();
    std::fs::create_dir(web.join("docs")).unwrap();
    symlink("../../secret.txt", web.join("docs/index.html")).unwrap();
    let gw = static_gateway(&web).await;
    for path in ["/passwd", "/secret.txt", "/up/secret.txt", "/docs/"] {
        let a = https_get(&gw, path, "localhost").await;
        assert_eq!(a.status, 404, "{path}");
        assert!(
            !String::from_utf8_lossy(&a.body).contains("secret") && !a.body.starts_with(b"root:"),
            "{path} leaked"
        );
    }
    // A link that stays inside is followed (also one that goes out and back in).
    for path in ["/app.js", "/up/web/app-1.2.js"] {
        let a = https_get(&gw, path, "localhost").await;
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, b"// app".as_slice()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn typescript_declarations_are_served_as_typescript() {
    let gw = static_gateway(&crate_dir("web")).await;
    let a = https_get(&gw, "/wsgate.d.ts", "localhost").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("application/typescript; charset=utf-8")
    );
    assert!(String::from_utf8_lossy(&a.body).contains("WsGate"));
}

#[tokio::test]
async fn the_web_directory_serves_no_test_files() {
    let gw = static_gateway(&crate_dir("web")).await;
    assert_eq!(https_get(&gw, "/wsgate.js", "localhost").await.status, 200);
    for path in [
        "/test/token.test.mjs",
        "/test/backoff.test.mjs",
        "/test-support/fakes.mjs",
        "/fakes.mjs",
    ] {
        assert_eq!(
            https_get(&gw, path, "localhost").await.status,
            404,
            "{path}"
        );
    }
}

const HSTS: &str = "max-age=31536000";

#[tokio::test]
async fn every_https_answer_carries_hsts() {
    let gw = static_gateway(&crate_dir("web")).await;
    let host = "chat.example.com";
    for (path, status) in [
        ("/", 200),
        ("/wsgate.js", 200),
        ("/missing", 404),
        ("/.env", 404),
        ("/ws", 426),
    ] {
        let a = https_get(&gw, path, host).await;
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.header("strict-transport-security"), Some(HSTS), "{path}");
    }
    // Handshake refusals (no token: 401; foreign Origin: 403) and the upgrade itself.
    let hsts = |h: &http::HeaderMap| {
        h.get("strict-transport-security")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut no_token = gw.request();
    no_token.headers_mut().insert("host", host.parse().unwrap());
    let mut foreign = with_token(&gw, &gw.token("alice"));
    foreign.headers_mut().insert("host", host.parse().unwrap());
    foreign
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    for (req, status) in [(no_token, 401), (foreign, 403)] {
        let resp = refusal(&gw, req).await;
        assert_eq!(resp.status(), status);
        assert_eq!(hsts(resp.headers()).as_deref(), Some(HSTS), "{status}");
    }
    let mut req = with_token(&gw, &gw.token("alice"));
    req.headers_mut().insert("host", host.parse().unwrap());
    let (_ws, resp) = tokio_tungstenite::client_async(req, gw.tls().await)
        .await
        .expect("upgrade");
    assert_eq!(hsts(resp.headers()).as_deref(), Some(HSTS), "101");
    // Addressed as localhost, no HSTS: a browser would force https on every local dev server.
    let a = https_get(&gw, "/", "localhost:8443").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("strict-transport-security"), None);
}
