//! The secure front door (CONTRACT §1–§3): TLS only, every refusal with its exact status and a
//! body that says what was wrong (never the token; for a token only `unauthorized`, the
//! failing check goes to the log line), the three token transports and the cookie,
//! key selection by `kid`, certificate reload on SIGHUP, and the CLI subcommands.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsgate::auth::unix_now;

use crate::support::{
    run_wsgate, sign_hs, status_code, try_tls_connect, write_config, Gateway, Settings, ORIGIN,
    WAIT,
};

/// `server.handshake_timeout` in the base settings.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// helpers

/// Adds the browser transport: `Sec-WebSocket-Protocol: wsgate.v1, bearer.<jwt>`.
fn with_subprotocol(mut req: http::Request<()>, token: &str) -> http::Request<()> {
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("wsgate.v1, bearer.{token}").parse().unwrap(),
    );
    req
}

/// Adds the header transport: `Authorization: Bearer <jwt>`.
fn with_bearer(mut req: http::Request<()>, token: &str) -> http::Request<()> {
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// A handshake request for `ws_path` + `suffix` (e.g. `?token=…`) with a good Origin.
fn request_at(gw: &Gateway, suffix: &str) -> http::Request<()> {
    let mut req = format!("{}{suffix}", gw.url())
        .into_client_request()
        .expect("request");
    req.headers_mut().insert("origin", ORIGIN.parse().unwrap());
    req
}

/// Expects a 401 whose body is `unauthorized` and nothing more (CONTRACT §3), and a log line
/// for it with `reason` whose `detail` says `says`.
async fn refused_401(gw: &Gateway, req: http::Request<()>, token: &str, says: &str, reason: &str) {
    let skip = gw.log_len();
    let body = gw.refused(req, 401).await;
    assert_eq!(body, "unauthorized\n", "the body names no check");
    if !token.is_empty() {
        assert!(!body.contains(token), "body echoes the token: {body:?}");
    }
    let line = gw
        .wait_log_after(&format!("\"reason\":\"{reason}\""), skip)
        .await;
    let line: Value = serde_json::from_str(&line).expect("json log line");
    let detail = line["fields"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.to_lowercase().contains(&says.to_lowercase()),
        "log detail should say {says:?}: {line}"
    );
}

/// Expects `req` refused with `status` and a body containing `says` (exactly) and never
/// `token` (unless empty); returns the body.
async fn refused_saying(
    gw: &Gateway,
    req: http::Request<()>,
    status: u16,
    says: &str,
    token: &str,
) -> String {
    let body = gw.refused(req, status).await;
    assert!(body.contains(says), "body should say {says:?}: {body:?}");
    if !token.is_empty() {
        assert!(!body.contains(token), "body echoes the token: {body:?}");
    }
    body
}

/// [`refused_401`] for `token` sent in the subprotocol.
async fn refused_401_in_subprotocol(gw: &Gateway, token: &str, says: &str, reason: &str) {
    refused_401(
        gw,
        with_subprotocol(gw.request(), token),
        token,
        says,
        reason,
    )
    .await;
}

/// [`refused_401_in_subprotocol`], then the log holds nothing of `token`.
async fn token_refused_and_not_logged(gw: &Gateway, token: &str, says: &str, reason: &str) {
    refused_401_in_subprotocol(gw, token, says, reason).await;
    assert_logs_clean(gw, &[token]);
}

/// Expects `token` (sent in the subprotocol) to be accepted as `user`.
async fn assert_accepted(gw: &Gateway, token: &str, user: &str) {
    assert_eq!(gw.connect_token(token).await.welcome["user"], user);
}

/// The log never holds a token (nor its signature part) nor a `token=` query.
fn assert_logs_clean(gw: &Gateway, tokens: &[&str]) {
    let logs = gw.logs();
    for t in tokens {
        assert!(!logs.contains(t), "token in the log:\n{logs}");
        if let Some(sig) = t.rsplit('.').next().filter(|s| s.len() > 10) {
            assert!(!logs.contains(sig), "token signature in the log:\n{logs}");
        }
    }
    assert!(!logs.contains("token="), "query string in the log:\n{logs}");
}

/// A token for `sub` valid for an hour, plus `extra` claims.
fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({ "sub": sub, "exp": unix_now() + 3600, "iat": unix_now() });
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

/// An HTTP answer read off the wire.
struct Reply {
    status: u16,
    /// Status line and headers, lower-cased.
    head: String,
    body: String,
}

impl Reply {
    /// Asserts the status and that the body mentions `says`.
    fn assert(&self, status: u16, says: &str) {
        assert_eq!(self.status, status, "{}\n{}", self.head, self.body);
        assert!(self.body.contains(says), "{}", self.body);
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim())
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends a raw HTTP/1.1 request over TLS and reads one answer (head + Content-Length body;
/// a `101` has none).
async fn https_exchange(gw: &Gateway, request: &str) -> Reply {
    let mut tls = gw.tls().await;
    tls.write_all(request.as_bytes()).await.expect("write");
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = status_code(&head);
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let have = buf.len() - end - 4;
            if status == 101 || have >= len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len.min(have)]);
                return Reply {
                    status,
                    head,
                    body: body.to_string(),
                };
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tls.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "connection ended before a full answer: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer within {WAIT:?}"),
        }
    }
}

/// A raw upgrade request with every header right except what the caller changes.
fn upgrade_request(token: &str, version: Option<&str>, key: Option<&str>) -> String {
    let mut r = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nOrigin: {ORIGIN}\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    );
    if let Some(v) = version {
        r.push_str(&format!("Sec-WebSocket-Version: {v}\r\n"));
    }
    if let Some(k) = key {
        r.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
    }
    r.push_str("\r\n");
    r
}

const GOOD_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Reads from a raw socket until EOF, a reset or `within`; returns what arrived and whether
/// the peer ended the connection.
async fn read_until_closed(s: &mut (impl AsyncRead + Unpin), within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// A TLS ClientHello record with the given `legacy_version`, one cipher suite and no
/// extensions.
fn client_hello(legacy_version: [u8; 2], cipher: [u8; 2]) -> Vec<u8> {
    client_hello_with(legacy_version, cipher, &[])
}

/// Extensions that make an ECDHE-ECDSA TLS 1.2 hello acceptable to the gateway (its test
/// certificate is P-256): supported_groups secp256r1, ec_point_formats uncompressed,
/// signature_algorithms ecdsa_secp256r1_sha256.
const ECDSA_P256_EXTENSIONS: &[u8] = &[
    0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups
    0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats
    0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03, // signature_algorithms
];

fn client_hello_with(legacy_version: [u8; 2], cipher: [u8; 2], extensions: &[u8]) -> Vec<u8> {
    let mut body = legacy_version.to_vec();
    body.extend([0x42; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x02, cipher[0], cipher[1]]);
    body.extend([0x01, 0x00]); // compression: null
    if !extensions.is_empty() {
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
    }
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

fn sha256(der: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .to_vec()
}

/// SHA-256 of the leaf certificate the server presented.
fn served_fingerprint(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    let certs = tls.get_ref().1.peer_certificates().expect("server certs");
    sha256(certs[0].as_ref())
}

/// SHA-256 of the first certificate in a PEM file.
fn file_fingerprint(pem: &Path) -> Vec<u8> {
    let cert = CertificateDer::pem_file_iter(pem)
        .expect("pem")
        .next()
        .expect("a certificate")
        .expect("parse");
    sha256(cert.as_ref())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `wsgate check-config` on a config file made by [`write_config`] with `f`.
fn check_config(f: impl FnOnce(&mut Settings)) -> Output {
    check_config_with_env(f, &[])
}

fn check_config_with_env(f: impl FnOnce(&mut Settings), env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), f);
    run_wsgate(&["check-config", "--config", path.to_str().unwrap()], env)
}

/// Expects `check-config` to refuse `[section] key = value` and name `what` on stderr.
fn check_config_rejects(section: &str, key: &str, value: Value, what: &str) {
    let out = check_config(|s| {
        s.set(section, key, value);
    });
    assert_check_config_names(&out, what);
}

/// Expects `check-config` to fail and name `what` on stderr.
fn assert_check_config_names(out: &Output, what: &str) {
    assert_ne!(out.status.code(), Some(0), "{}", stdout(out));
    assert!(stderr(out).contains(what), "{}", stderr(out));
}

/// An ES256 key pair: (PKCS#8 private PEM for signing, SPKI public PEM for the gateway).
fn es256_pair() -> (String, String) {
    let kp = rcgen::KeyPair::generate().expect("key pair");
    (kp.serialize_pem(), kp.public_key_pem())
}

fn sign_es256(private_pem: &str, kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("ec key"),
    )
    .expect("sign")
}

// ---------------------------------------------------------------------------------------------
// TLS only

#[tokio::test]
async fn plain_http_gets_400_text_garbage_is_dropped_and_the_gateway_keeps_serving() {
    let gw = Gateway::start().await;

    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let (raw, closed) = read_until_closed(&mut tcp, WAIT).await;
    assert!(closed, "the plain-HTTP connection stays open");
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/plain"), "{text:?}");
    assert!(
        text.contains("TLS") && text.contains("https://"),
        "{text:?}"
    );
    gw.wait_log("\"reason\":\"not_tls\"").await;

    // A TLS-looking record that is nonsense: the server ends the connection for the error
    // (not at the handshake timeout: the log says why), with at most a TLS alert and never an
    // HTTP answer.
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let mut garbage = vec![0x16, 0xfe, 0xfe, 0xff, 0xff];
    garbage.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    tcp.write_all(&garbage).await.expect("write");
    let (raw, closed) = read_until_closed(&mut tcp, WAIT).await;
    assert!(closed, "garbage connection stays open");
    assert!(is_alert_or_eof(&raw), "answer to garbage: {raw:?}");
    gw.wait_log("\"reason\":\"tls_error\"").await;
    assert!(
        !gw.logs().contains("\"reason\":\"timeout\""),
        "{}",
        gw.logs()
    );

    let mut c = gw.connect("alice").await;
    assert_eq!(c.welcome["user"], "alice");
    c.join("lobby").await;
}

/// Sends one ClientHello on a raw socket; returns the first bytes of the reply ("" on EOF).
async fn hello_reply(gw: &Gateway, hello: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(hello).await.expect("write");
    let mut buf = vec![0u8; 16];
    let mut got = 0;
    while got < 6 {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("no answer to a ClientHello within {WAIT:?}"),
        }
    }
    buf.truncate(got);
    buf
}

/// What the gateway may answer a hello it refuses with: a TLS alert record, or nothing.
fn is_alert_or_eof(reply: &[u8]) -> bool {
    reply.is_empty() || reply[0] == 0x15
}

fn is_server_hello(reply: &[u8]) -> bool {
    // handshake record, then handshake type 2 (ServerHello)
    reply.len() >= 6 && reply[0] == 0x16 && reply[5] == 0x02
}

#[tokio::test]
async fn tls_1_1_client_hello_never_gets_a_server_hello() {
    let gw = Gateway::start().await;
    // legacy_version TLS 1.1, TLS_RSA_WITH_AES_128_CBC_SHA, no extensions.
    let reply = hello_reply(&gw, &client_hello([0x03, 0x02], [0x00, 0x2f])).await;
    assert!(
        is_alert_or_eof(&reply),
        "expected a TLS alert or EOF, got {reply:02x?}"
    );
    gw.wait_log("\"reason\":\"tls_error\"").await;

    // The same hand-made hello, made acceptable in every other way, gets a ServerHello as
    // TLS 1.2 and an alert (or nothing) as TLS 1.1: it is the version that is refused.
    let ecdhe_ecdsa_aes128_gcm = [0xc0, 0x2b];
    let tls12 = client_hello_with([0x03, 0x03], ecdhe_ecdsa_aes128_gcm, ECDSA_P256_EXTENSIONS);
    let reply = hello_reply(&gw, &tls12).await;
    assert!(is_server_hello(&reply), "TLS 1.2 control: {reply:02x?}");
    let tls11 = client_hello_with([0x03, 0x02], ecdhe_ecdsa_aes128_gcm, ECDSA_P256_EXTENSIONS);
    let reply = hello_reply(&gw, &tls11).await;
    assert!(
        is_alert_or_eof(&reply),
        "TLS 1.1 with extensions: {reply:02x?}"
    );
}

/// Connects, sends `first`, and returns how long until the server hung up.
async fn time_until_dropped(gw: &Gateway, first: &[u8]) -> Duration {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(first).await.expect("write");
    let (raw, closed) = read_until_closed(&mut tcp, HANDSHAKE_TIMEOUT + WAIT).await;
    assert!(closed, "stalled connection never dropped");
    assert!(
        raw.is_empty(),
        "the server answered a stalled hello: {raw:02x?}"
    );
    started.elapsed()
}

/// `elapsed` ran from before the connection was made to after it was dropped. A lower bound
/// only: a busy machine may drop it late (the waits around it bound how late).
fn assert_dropped_at_timeout(elapsed: Duration) {
    assert!(
        elapsed >= HANDSHAKE_TIMEOUT,
        "dropped after {elapsed:?}: before the handshake timeout"
    );
}

/// Sends `first` and expects the connection dropped, unanswered, at the handshake timeout.
async fn stalled_is_dropped_at_timeout(first: &[u8]) {
    let gw = Gateway::start().await;
    let elapsed = time_until_dropped(&gw, first).await;
    assert_dropped_at_timeout(elapsed);
    gw.wait_log("\"reason\":\"timeout\"").await;
}

#[tokio::test]
async fn silent_client_is_dropped_at_the_handshake_timeout() {
    stalled_is_dropped_at_timeout(b"").await;
}

#[tokio::test]
async fn half_a_client_hello_is_dropped_at_the_handshake_timeout() {
    let hello = client_hello([0x03, 0x03], [0x13, 0x01]);
    stalled_is_dropped_at_timeout(&hello[..hello.len() / 2]).await;
}

#[tokio::test]
async fn slowloris_headers_are_cut_at_the_handshake_timeout() {
    let gw = Gateway::start().await;
    let started = Instant::now();
    let mut tls = gw.tls().await;
    tls.write_all(b"GET /ws HTTP/1.1\r\n").await.expect("write");
    let mut drip = b"Host: localhost\r\nX-Slow: "
        .iter()
        .copied()
        .chain(std::iter::repeat(b'a'));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = started + HANDSHAKE_TIMEOUT + WAIT;
    let mut buf = [0u8; 1024];
    let mut answered = Vec::new();
    loop {
        tokio::select! {
            r = tls.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => answered.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick() => {
                let b = drip.next().expect("endless");
                if tls.write_all(&[b]).await.is_err() || tls.flush().await.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("slowloris never cut"),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        answered.is_empty(),
        "answered: {}",
        String::from_utf8_lossy(&answered)
    );
    assert_dropped_at_timeout(elapsed);
    let line = gw.wait_log("\"reason\":\"timeout\"").await;
    assert!(line.contains("\"result\":\"refused\""), "{line}");
}

// ---------------------------------------------------------------------------------------------
// upgrade validity

#[tokio::test]
async fn plain_https_get_on_the_ws_path_is_426() {
    let gw = Gateway::start().await;
    let token = gw.token("alice");
    let r = https_exchange(
        &gw,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nOrigin: {ORIGIN}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ),
    )
    .await;
    r.assert(426, "Upgrade: websocket");
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert!(!r.body.contains(&token));
    assert_logs_clean(&gw, &[&token]);
}

#[tokio::test]
async fn wrong_websocket_version_is_426() {
    let gw = Gateway::start().await;
    let token = gw.token("alice");
    let r = https_exchange(&gw, &upgrade_request(&token, Some("8"), Some(GOOD_KEY))).await;
    r.assert(426, "Sec-WebSocket-Version");
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    // The same request with version 13 is a valid upgrade.
    let ok = https_exchange(&gw, &upgrade_request(&token, Some("13"), Some(GOOD_KEY))).await;
    assert_eq!(ok.status, 101, "{}\n{}", ok.head, ok.body);
    assert_eq!(
        ok.header("sec-websocket-accept"),
        Some("s3pplmbitxaq9kygzzhzrbk+xoo=")
    );
}

#[tokio::test]
async fn missing_websocket_key_is_400() {
    let gw = Gateway::start().await;
    let token = gw.token("alice");
    let r = https_exchange(&gw, &upgrade_request(&token, Some("13"), None)).await;
    r.assert(400, "Sec-WebSocket-Key");
    gw.wait_log("\"reason\":\"bad_upgrade\"").await;
}

#[tokio::test]
async fn malformed_websocket_key_is_400() {
    let gw = Gateway::start().await;
    let token = gw.token("alice");
    // Not base64, and base64 of the wrong length (8 bytes instead of 16).
    for key in ["not base64 at all!", "AAAAAAAAAAA="] {
        let r = https_exchange(&gw, &upgrade_request(&token, Some("13"), Some(key))).await;
        assert_eq!(r.status, 400, "key {key:?}: {}\n{}", r.head, r.body);
        r.assert(400, "Sec-WebSocket-Key");
    }
}

// ---------------------------------------------------------------------------------------------
// tokens: every refusal is 401 `unauthorized`; the log line says which check failed

#[tokio::test]
async fn missing_token_is_401() {
    let gw = Gateway::start().await;
    refused_401(&gw, gw.request(), "", "no token", "token_missing").await;
    // Without auth.cookie_name a cookie carries nothing.
    let token = gw.token("alice");
    let mut req = gw.request();
    req.headers_mut()
        .insert("cookie", format!("wsgate_session={token}").parse().unwrap());
    refused_401(&gw, req, &token, "no token", "token_missing").await;
    assert_logs_clean(&gw, &[&token]);
}

#[tokio::test]
async fn garbage_token_is_401() {
    let gw = Gateway::start().await;
    let token = "this-is-not-a-jwt";
    token_refused_and_not_logged(&gw, token, "malformed", "token_malformed").await;
}

#[tokio::test]
async fn bad_signature_is_401() {
    let gw = Gateway::start().await;
    let token = sign_hs("some-other-secret", "HS256", claims("alice", json!({})));
    token_refused_and_not_logged(&gw, &token, "signature is invalid", "token_bad_signature").await;
}

#[tokio::test]
async fn alg_none_is_401() {
    use base64::Engine;
    let gw = Gateway::start().await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(claims("alice", json!({})).to_string());
    let token = format!("{header}.{payload}.");
    assert!(token.starts_with("eyJhbGciOiJub25l"));
    refused_401(
        &gw,
        with_bearer(gw.request(), &token),
        &payload,
        "token",
        "token_malformed",
    )
    .await;
    assert_logs_clean(&gw, &[&payload]);
}

#[tokio::test]
async fn algorithm_outside_the_allowlist_is_401() {
    let gw = Gateway::start().await;
    // The right secret, but HS384 while only HS256 is allowed.
    let token = sign_hs(&gw.secret, "HS384", claims("alice", json!({})));
    token_refused_and_not_logged(
        &gw,
        &token,
        "algorithm is not allowed",
        "token_alg_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn expired_token_is_401() {
    let gw = Gateway::start().await;
    let token = gw.token_claims(json!({ "sub": "alice", "exp": unix_now() - 60 }));
    token_refused_and_not_logged(&gw, &token, "expired", "token_expired").await;
}

#[tokio::test]
async fn token_not_yet_valid_is_401() {
    let gw = Gateway::start().await;
    let token = gw.token_claims(claims("alice", json!({ "nbf": unix_now() + 600 })));
    token_refused_and_not_logged(&gw, &token, "not valid yet", "token_not_yet_valid").await;
}

async fn issuer_audience_gateway() -> Gateway {
    Gateway::start_with(|s| {
        s.set("auth", "issuer", json!("https://idp.test")).set(
            "auth",
            "audience",
            json!("wsgate-test"),
        );
    })
    .await
}

#[tokio::test]
async fn wrong_issuer_is_401() {
    let gw = issuer_audience_gateway().await;
    let good = gw.token_claims(claims(
        "alice",
        json!({ "iss": "https://idp.test", "aud": "wsgate-test" }),
    ));
    assert_accepted(&gw, &good, "alice").await;
    let token = gw.token_claims(claims(
        "alice",
        json!({ "iss": "https://evil.test", "aud": "wsgate-test" }),
    ));
    refused_401_in_subprotocol(&gw, &token, "issuer", "token_bad_issuer").await;
    // No iss at all while one is configured.
    let token = gw.token_claims(claims("alice", json!({ "aud": "wsgate-test" })));
    refused_401_in_subprotocol(&gw, &token, "issuer", "token_bad_issuer").await;
    assert_logs_clean(&gw, &[&good, &token]);
}

#[tokio::test]
async fn wrong_audience_is_401() {
    let gw = issuer_audience_gateway().await;
    // aud may be an array: one match suffices.
    let good = gw.token_claims(claims(
        "alice",
        json!({ "iss": "https://idp.test", "aud": ["other", "wsgate-test"] }),
    ));
    assert_accepted(&gw, &good, "alice").await;
    let token = gw.token_claims(claims(
        "alice",
        json!({ "iss": "https://idp.test", "aud": "someone-else" }),
    ));
    refused_401_in_subprotocol(&gw, &token, "audience", "token_bad_audience").await;
    assert_logs_clean(&gw, &[&good, &token]);
}

#[tokio::test]
async fn unknown_kid_is_401() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (k1_private, k1_public) = es256_pair();
    let k1_file = keys.path().join("k1.pub.pem");
    std::fs::write(&k1_file, k1_public).expect("write key");
    let gw = Gateway::start_with(|s| {
        s.set("auth", "algorithms", json!(["ES256"])).set(
            "auth",
            "public_keys",
            json!([{ "kid": "k1", "alg": "ES256", "file": k1_file }]),
        );
    })
    .await;
    let good = sign_es256(&k1_private, "k1", claims("alice", json!({})));
    assert_accepted(&gw, &good, "alice").await;
    let token = sign_es256(&k1_private, "nope", claims("alice", json!({})));
    refused_401_in_subprotocol(&gw, &token, "kid", "token_unknown_kid").await;
    assert_logs_clean(&gw, &[&good, &token]);
}

#[tokio::test]
async fn sub_starting_with_at_is_401() {
    let gw = Gateway::start().await;
    let token = gw.token("@server");
    token_refused_and_not_logged(&gw, &token, "must not start with '@'", "token_bad_claims").await;
}

#[tokio::test]
async fn token_in_more_than_one_place_is_401() {
    let gw = Gateway::start().await;
    let token = gw.token("alice");
    // Subprotocol and query.
    let req = with_subprotocol(request_at(&gw, &format!("?token={token}")), &token);
    refused_401(&gw, req, &token, "more than one place", "token_ambiguous").await;
    // Authorization and query, even when both carry the same valid token.
    let req = with_bearer(request_at(&gw, &format!("?token={token}")), &token);
    refused_401(&gw, req, &token, "more than one place", "token_ambiguous").await;
    // Subprotocol and Authorization.
    let req = with_bearer(with_subprotocol(gw.request(), &token), &token);
    refused_401(&gw, req, &token, "more than one place", "token_ambiguous").await;
    assert_logs_clean(&gw, &[&token]);
}

// ---------------------------------------------------------------------------------------------
// Origin

fn with_origin(mut req: http::Request<()>, origin: Option<&str>) -> http::Request<()> {
    match origin {
        Some(o) => {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        None => {
            req.headers_mut().remove("origin");
        }
    }
    req
}

/// Expects `token` with Origin `origin` (none if `None`) refused with 403 saying `says`.
async fn origin_refused(gw: &Gateway, token: &str, origin: Option<&str>, says: &str) -> String {
    let req = with_origin(with_subprotocol(gw.request(), token), origin);
    refused_saying(gw, req, 403, says, token).await
}

/// Expects `token` with Origin `origin` to be accepted and welcomed.
async fn origin_accepted(gw: &Gateway, token: &str, origin: &str) {
    let req = with_origin(with_subprotocol(gw.request(), token), Some(origin));
    let mut c = gw
        .open(req)
        .await
        .unwrap_or_else(|e| panic!("{origin}: {e:?}"));
    assert_eq!(c.recv().await["type"], "welcome", "{origin}");
}

#[tokio::test]
async fn missing_origin_is_403() {
    let gw = Gateway::start_with(|s| {
        s.set("origin", "allow_missing", json!(false));
    })
    .await;
    let token = gw.token("alice");
    origin_refused(&gw, &token, None, "Origin header missing").await;
    gw.wait_log("\"reason\":\"origin_missing\"").await;
    assert_logs_clean(&gw, &[&token]);
}

#[tokio::test]
async fn origin_not_listed_is_403() {
    let gw = Gateway::start().await;
    let token = gw.token("alice");
    for origin in [
        "https://evil.example.net",
        "http://app.example.com",       // other scheme
        "https://app.example.com:8443", // other port
        "null",
    ] {
        origin_refused(&gw, &token, Some(origin), "Origin not allowed").await;
    }
    gw.wait_log("\"reason\":\"origin_not_allowed\"").await;
}

#[tokio::test]
async fn look_alike_origin_is_403() {
    let gw = Gateway::start().await;
    let token = gw.token("alice");
    // Allowed: https://*.example.org. Neither a look-alike nor the bare domain matches.
    for origin in ["https://evilexample.org", "https://example.org"] {
        origin_refused(&gw, &token, Some(origin), "Origin not allowed").await;
    }
}

#[tokio::test]
async fn subdomains_match_the_wildcard_origin() {
    let gw = Gateway::start().await;
    for (i, origin) in ["https://a.example.org", "https://a.b.example.org"]
        .into_iter()
        .enumerate()
    {
        let token = gw.token(&format!("user{i}"));
        origin_accepted(&gw, &token, origin).await;
    }
}

#[tokio::test]
async fn origin_case_and_default_port_are_normalized() {
    let gw = Gateway::start().await;
    for origin in [
        "HTTPS://APP.EXAMPLE.COM:443",
        "https://app.example.com:443",
        "https://App.Example.Com",
        "HTTPS://A.B.EXAMPLE.ORG",
    ] {
        let token = gw.token("alice");
        origin_accepted(&gw, &token, origin).await;
    }
}

// ---------------------------------------------------------------------------------------------
// rate and capacity

#[tokio::test]
async fn handshake_rate_per_ip_is_429_with_retry_after() {
    let gw = Gateway::start_with(|s| {
        s.set("limits", "handshakes_per_ip_per_minute", json!(3));
    })
    .await;
    // Refused attempts count too.
    gw.refused(gw.request(), 401).await;
    let _a = gw.connect("alice").await;
    let _b = gw.connect("bob").await;
    let token = gw.token("carol");
    let body = refused_saying(
        &gw,
        with_subprotocol(gw.request(), &token),
        429,
        "too many handshakes",
        &token,
    )
    .await;
    let retry: u64 = body
        .rsplit_once("retry-after=")
        .map(|(_, v)| v.trim().parse().expect("Retry-After is seconds"))
        .unwrap_or_else(|| panic!("no Retry-After: {body}"));
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    gw.wait_log("\"reason\":\"rate_limited\"").await;
    // Still limited: the check comes before everything else, even a bad Origin.
    let req = with_origin(gw.request(), Some("https://evil.test"));
    refused_saying(&gw, req, 429, "retry-after=", "").await;
}

/// With `[section] key = 2`, two connections are fine and a third is refused with 503
/// saying `says` and logged with reason `key`; the open ones are not disturbed.
async fn third_connection_is_503(section: &str, key: &str, says: &str) {
    let gw = Gateway::start_with(|s| {
        s.set(section, key, json!(2));
    })
    .await;
    let mut a = gw.connect("alice").await;
    let _b = gw.connect("bob").await;
    let token = gw.token("carol");
    refused_saying(
        &gw,
        with_subprotocol(gw.request(), &token),
        503,
        says,
        &token,
    )
    .await;
    gw.wait_log(&format!("\"reason\":\"{key}\"")).await;
    // The refusal did not disturb the open ones.
    a.join("lobby").await;
}

#[tokio::test]
async fn max_connections_per_ip_is_503() {
    third_connection_is_503(
        "limits",
        "max_connections_per_ip",
        "too many connections from this address",
    )
    .await;
}

#[tokio::test]
async fn max_connections_is_503() {
    third_connection_is_503("server", "max_connections", "connection limit").await;
}

// ---------------------------------------------------------------------------------------------
// token transports

#[tokio::test]
async fn subprotocol_transport_answers_wsgate_v1_only() {
    let gw = Gateway::start().await;
    let token = gw.token("alice");
    let mut c = gw
        .open(with_subprotocol(gw.request(), &token))
        .await
        .expect("accepted");
    let protocols: Vec<_> = c
        .response
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(protocols, vec!["wsgate.v1".to_string()]);
    for (name, value) in c.response.headers() {
        assert!(
            !value.to_str().unwrap_or("").contains(&token),
            "{name} echoes the token"
        );
    }
    assert_eq!(c.recv().await["user"], "alice");
    assert_logs_clean(&gw, &[&token]);
}

#[tokio::test]
async fn authorization_bearer_transport_is_accepted() {
    let gw = Gateway::start().await;
    let token = gw.token("bob");
    let mut c = gw
        .open(with_bearer(gw.request(), &token))
        .await
        .expect("accepted");
    let welcome = c.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"], "bob");
    assert_logs_clean(&gw, &[&token]);
}

#[tokio::test]
async fn query_token_transport_is_accepted_and_never_logged() {
    let gw = Gateway::start().await;
    let token = gw.token("carol");
    let req = request_at(&gw, &format!("?client=cli&token={token}"));
    let mut c = gw.open(req).await.expect("accepted");
    assert_eq!(c.recv().await["user"], "carol");
    gw.wait_log("\"user\":\"carol\"").await;
    assert_logs_clean(&gw, &[&token]);
    assert!(!gw.logs().contains("client=cli"), "query in the log");
}

#[tokio::test]
async fn cookie_transport_and_explicit_token_wins() {
    let gw = Gateway::start_with(|s| {
        s.set("auth", "cookie_name", json!("wsgate_session"));
    })
    .await;
    let cookie_token = gw.token("cookie-user");
    let mut req = gw.request();
    req.headers_mut().insert(
        "cookie",
        format!("theme=dark; wsgate_session={cookie_token}")
            .parse()
            .unwrap(),
    );
    let mut c = gw.open(req).await.expect("cookie accepted");
    assert_eq!(c.recv().await["user"], "cookie-user");

    // An old (expired) cookie does not get in the way of an explicit token.
    let stale = gw.token_claims(json!({ "sub": "old-user", "exp": unix_now() - 600 }));
    let fresh = gw.token("fresh-user");
    let mut req = with_subprotocol(gw.request(), &fresh);
    req.headers_mut()
        .insert("cookie", format!("wsgate_session={stale}").parse().unwrap());
    let mut c = gw.open(req).await.expect("explicit token accepted");
    assert_eq!(c.recv().await["user"], "fresh-user");

    // A valid cookie does not override an explicit bad token either.
    let bad = sign_hs("wrong-secret", "HS256", claims("mallory", json!({})));
    let mut req = with_subprotocol(gw.request(), &bad);
    req.headers_mut().insert(
        "cookie",
        format!("wsgate_session={cookie_token}").parse().unwrap(),
    );
    refused_401(&gw, req, &bad, "signature", "token_bad_signature").await;
    assert_logs_clean(&gw, &[&cookie_token, &stale, &fresh, &bad]);
}

#[tokio::test]
async fn es256_key_is_chosen_by_kid() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (k1_private, k1_public) = es256_pair();
    let (k2_private, k2_public) = es256_pair();
    let k1_file = keys.path().join("k1.pub.pem");
    let k2_file = keys.path().join("k2.pub.pem");
    std::fs::write(&k1_file, k1_public).expect("write");
    std::fs::write(&k2_file, k2_public).expect("write");
    let gw = Gateway::start_with(|s| {
        s.set("auth", "algorithms", json!(["ES256"])).set(
            "auth",
            "public_keys",
            json!([
                { "kid": "k1", "alg": "ES256", "file": k1_file },
                { "kid": "k2", "alg": "ES256", "file": k2_file },
            ]),
        );
    })
    .await;
    let by_k2 = sign_es256(&k2_private, "k2", claims("dave", json!({})));
    assert_accepted(&gw, &by_k2, "dave").await;
    let by_k1 = sign_es256(&k1_private, "k1", claims("erin", json!({})));
    assert_accepted(&gw, &by_k1, "erin").await;
    let mislabelled = sign_es256(&k1_private, "k2", claims("mallory", json!({})));
    refused_401_in_subprotocol(&gw, &mislabelled, "signature", "token_bad_signature").await;
    // HS256 is not in this gateway's allowlist.
    let hs = gw.token("mallory");
    let req = with_subprotocol(gw.request(), &hs);
    refused_401(
        &gw,
        req,
        &hs,
        "algorithm is not allowed",
        "token_alg_not_allowed",
    )
    .await;
    assert_logs_clean(&gw, &[&by_k1, &by_k2, &mislabelled, &hs]);
}

// ---------------------------------------------------------------------------------------------
// SIGHUP certificate reload

#[tokio::test]
async fn sighup_swaps_the_certificate_and_keeps_open_sockets() {
    let mut gw = Gateway::start().await;
    let cert_path = gw.dir.path().join("certs/server.crt");
    let key_path = gw.dir.path().join("certs/server.key");
    let first = file_fingerprint(&cert_path);
    assert_eq!(served_fingerprint(&gw.tls().await), first);
    let mut open = gw.connect("alice").await;

    // A second certificate from another CA; the client trusts both CAs.
    let second_dir = gw.dir.path().join("certs2");
    let second = wsgate::tls::generate_dev_certs(&second_dir, &wsgate::tls::default_dev_hosts())
        .expect("certs");
    let both = gw.dir.path().join("both-ca.crt");
    let mut pems = std::fs::read_to_string(&gw.ca).expect("ca");
    pems.push_str(&std::fs::read_to_string(&second.ca_cert).expect("ca2"));
    std::fs::write(&both, pems).expect("write");
    gw.ca = both;
    let second_fp = file_fingerprint(&second.server_cert);
    assert_ne!(first, second_fp);

    std::fs::copy(&second.server_cert, &cert_path).expect("copy cert");
    std::fs::copy(&second.server_key, &key_path).expect("copy key");
    gw.sighup("configuration reloaded").await;
    assert_eq!(served_fingerprint(&gw.tls().await), second_fp);
    let mut fresh = gw.connect("bob").await;
    assert_eq!(fresh.welcome["user"], "bob");

    // The socket opened before the reload still works both ways.
    open.join("lobby").await;
    fresh.join("lobby").await;
    let ack = fresh
        .request(
            json!({"type":"publish","room":"lobby","data":{"text":"after reload"}}),
            7,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = open.recv_type("message").await;
    assert_eq!(m["data"]["text"], "after reload");

    // A broken certificate is refused and the second one keeps serving.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("write");
    let line = gw.sighup("reload refused").await;
    assert!(line.contains("tls.cert"), "{line}");
    assert_eq!(served_fingerprint(&gw.tls().await), second_fp);
    let mut again = gw.connect("carol").await;
    again.join("lobby").await;
    open.join("other").await;
}

// ---------------------------------------------------------------------------------------------
// CLI

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let out = check_config(|s| {
        s.set("auth", "hs_secret", json!("very-secret-hs-value"))
            .set("admin", "api_key", json!("very-secret-admin-key"));
    });
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("[server]") && shown.contains("[auth]"),
        "{shown}"
    );
    assert!(shown.contains("handshake_timeout = \"2s\""), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    for secret in ["very-secret-hs-value", "very-secret-admin-key"] {
        assert!(!shown.contains(secret), "{secret} printed:\n{shown}");
        assert!(!stderr(&out).contains(secret));
    }
}

#[test]
fn check_config_fails_on_a_missing_file() {
    let out = run_wsgate(
        &["check-config", "--config", "/nonexistent/wsgate-test.toml"],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/wsgate-test.toml"), "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn check_config_names_a_bad_duration() {
    check_config_rejects("server", "idle_timeout", json!("5 parsecs"), "idle_timeout");
}

#[test]
fn check_config_names_an_unknown_key() {
    check_config_rejects("limits", "brust", json!(7), "brust");
}

#[test]
fn check_config_names_a_missing_certificate() {
    check_config_rejects("tls", "cert", json!("/nonexistent/server.crt"), "tls.cert");
}

#[test]
fn check_config_applies_environment_overrides() {
    let burst_40 = |s: &mut Settings| {
        s.set("limits", "burst", json!(40));
    };
    let out = check_config_with_env(
        burst_40,
        &[
            ("WSGATE__LIMITS__BURST", "7"),
            (
                "WSGATE__ORIGIN__ALLOWED",
                "https://a.example,https://b.example",
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains("burst = 7\n"), "{shown}");
    assert!(
        shown.contains(r#"allowed = ["https://a.example", "https://b.example"]"#),
        "{shown}"
    );

    let out = check_config_with_env(burst_40, &[("WSGATE__LIMITS__BURST", "lots")]);
    assert_check_config_names(&out, "burst");
}

#[tokio::test]
async fn token_command_mints_a_token_the_gateway_accepts() {
    let gw = Gateway::start().await;
    let out = run_wsgate(
        &[
            "token",
            "--sub",
            "frank",
            "--rooms",
            "lobby,team:7:*",
            "--config",
            gw.config_path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let token = text.trim();
    assert_eq!(text, format!("{token}\n"), "prints the token alone");
    assert_eq!(token.split('.').count(), 3, "{token}");

    let mut c = gw.connect_token(token).await;
    assert_eq!(c.welcome["user"], "frank");
    let exp = c.welcome["expires_at"].as_u64().expect("expires_at");
    let hour = unix_now() + 3600;
    assert!(
        exp.abs_diff(hour) <= 10,
        "default ttl is 1h: {exp} vs {hour}"
    );
    c.join("lobby").await;
    c.join("team:7:x").await;
    let r = c.request(json!({"type":"join","room":"team:8:x"}), 2).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_logs_clean(&gw, &[token]);
}

#[tokio::test]
async fn gen_cert_output_serves_a_gateway_trusted_by_its_ca() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let certs = out_dir.path().join("dev");
    let out = run_wsgate(
        &[
            "gen-cert",
            "--out",
            certs.to_str().unwrap(),
            "--host",
            "localhost",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for f in ["ca.crt", "ca.key", "server.crt", "server.key"] {
        assert!(certs.join(f).is_file(), "{f} missing");
    }
    let mut gw = Gateway::start_with(|s| {
        s.set("tls", "cert", json!(certs.join("server.crt"))).set(
            "tls",
            "key",
            json!(certs.join("server.key")),
        );
    })
    .await;
    // The harness's own CA does not vouch for this certificate; gen-cert's does.
    assert!(try_tls_connect(gw.addr, &gw.ca).await.is_err());
    let tls = try_tls_connect(gw.addr, &certs.join("ca.crt"))
        .await
        .expect("trusted by the generated CA");
    assert_eq!(
        served_fingerprint(&tls),
        file_fingerprint(&certs.join("server.crt"))
    );
    gw.ca = certs.join("ca.crt");
    let c = gw.connect("grace").await;
    assert_eq!(c.welcome["user"], "grace");
}
