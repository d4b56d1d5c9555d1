//! The Pusher endpoints (CONTRACT §10) against the real npm packages: `pusher-js` (its Node
//! build) as the client and the `pusher` server SDK for the HTTP API, pinned in
//! `tests/pusher/package-lock.json` and installed with `npm ci`. Raw clients cover what the
//! SDKs hide: the refusals before `101`, the close codes after it, keep-alive.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::npm::{install_packages, pusher_dir};
use crate::support::*;

pub(crate) const APP_ID: &str = "1001";
pub(crate) const KEY: &str = "app-key";
pub(crate) const SECRET: &str = "pusher-test-secret-0123456789abcdef";

pub(crate) fn with_app(s: &mut Settings) {
    with_app_and(s, json!({}));
}

/// [`with_app`] with more keys for the app (`{"max_presence_members": 2}`).
pub(crate) fn with_app_and(s: &mut Settings, extra: Value) {
    // Node and its modules take a while to load on a busy machine; the handshake timeout's
    // own behaviour is tested elsewhere.
    s.set("server", "handshake_timeout", json!("30s"));
    let mut app = json!({
        "id": APP_ID,
        "key": KEY,
        "secret": SECRET,
        "allowed_origins": [ORIGIN],
        "allow_missing_origin": true,
    });
    if let (Some(app), Value::Object(extra)) = (app.as_object_mut(), extra) {
        app.extend(extra);
    }
    s.set("pusher", "apps", json!([app]));
}

/// Runs `tests/pusher/<script>` against `gw`; returns its JSON result, or panics with its
/// output when it fails.
pub(crate) async fn node(gw: &Gateway, script: &str) -> Value {
    node_on(gw, None, script).await
}

/// [`node`] with a second gateway of the same cluster for the scripts that use one.
pub(crate) async fn node_on(gw: &Gateway, second: Option<&Gateway>, script: &str) -> Value {
    install_packages();
    let mut cmd = tokio::process::Command::new("node");
    if let Some(other) = second {
        cmd.env("WSGATE_PORT2", other.addr.port().to_string());
    }
    cmd.arg(script)
        .current_dir(pusher_dir())
        .env("NODE_EXTRA_CA_CERTS", &gw.ca)
        .env("WSGATE_HOST", "localhost")
        .env("WSGATE_PORT", gw.addr.port().to_string())
        .env("PUSHER_APP_ID", APP_ID)
        .env("PUSHER_KEY", KEY)
        .env("PUSHER_SECRET", SECRET)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("script finished in time")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}\ngateway log:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.logs(),
        second.map(Gateway::logs).unwrap_or_default()
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| panic!("{script} printed no result: {stdout}"))
}

#[tokio::test]
async fn pusher_js_receives_events_triggered_through_the_http_api() {
    let gw = Gateway::start_with(with_app).await;
    let result = node(&gw, "public_roundtrip.mjs").await;
    assert_public_roundtrip(&result);
}

/// What `public_roundtrip.mjs` must have seen, on one node or across two.
fn assert_public_roundtrip(result: &Value) {
    let socket_id = result["socketId"].as_str().expect("socket id");
    let (node_part, session) = socket_id.split_once('.').expect("<digits>.<digits>");
    assert!(node_part.bytes().all(|b| b.is_ascii_digit()) && !node_part.is_empty());
    assert!(session.bytes().all(|b| b.is_ascii_digit()) && !session.is_empty());
    // The event sent with the client's socket_id never arrived; the others did, in order.
    assert_eq!(
        result["received"],
        json!([{"n": 1, "text": "héllo"}, {"n": 3}]),
        "{result}"
    );
    // The other client was not excluded; and the count covers both sockets, wherever they are.
    assert_eq!(
        result["receivedByOther"],
        json!([{"n": 1, "text": "héllo"}, {"n": 2}, {"n": 3}]),
        "{result}"
    );
    assert_eq!(
        result["info"],
        json!({"occupied": true, "subscription_count": 2}),
        "{result}"
    );
    assert_eq!(
        result["list"],
        json!({"channels": {"news": {}}}),
        "{result}"
    );
    assert_eq!(result["empty"], json!({"occupied": false}), "{result}");
}

#[tokio::test]
async fn the_http_api_refuses_bad_signatures_and_unknown_apps() {
    let gw = Gateway::start_with(with_app).await;
    let result = node(&gw, "refusals.mjs").await;
    assert_eq!(result["badSecret"], 401, "{result}");
    assert_eq!(result["unknownApp"], 404, "{result}");
    assert_eq!(result["good"], 200, "{result}");
    assert!(!gw.logs().contains(SECRET), "the secret reached the log");
}

pub(crate) fn socket_request(
    gw: &Gateway,
    path_and_query: &str,
    origin: Option<&str>,
) -> http::Request<()> {
    let mut req = format!("wss://localhost:{}{path_and_query}", gw.addr.port())
        .into_client_request()
        .expect("request");
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    req
}

/// The next text frame, parsed, with Pusher's string-encoded `data` decoded.
pub(crate) async fn recv_event(c: &mut Client) -> Value {
    let mut v = c.recv().await;
    if let Some(data) = v["data"].as_str() {
        if let Ok(inner) = serde_json::from_str::<Value>(data) {
            v["data"] = inner;
        }
    }
    v
}

#[tokio::test]
async fn a_raw_socket_is_told_its_id_answered_pings_and_refused_unknown_keys() {
    let gw = Gateway::start_with(with_app).await;

    let mut c = gw
        .open(socket_request(
            &gw,
            "/app/app-key?protocol=7&client=js",
            Some(ORIGIN),
        ))
        .await
        .expect("accepted");
    let hello = recv_event(&mut c).await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
    assert_eq!(hello["data"]["activity_timeout"], 30, "{hello}");
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(recv_event(&mut c).await["event"], "pusher:pong");
    // A private channel without a valid signature: refused, socket open.
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":"app-key:00"}}))
        .await;
    let refused = recv_event(&mut c).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["channel"], "private-a");
    assert_eq!(refused["data"]["type"], "AuthError");
    assert_eq!(refused["data"]["status"], 401);
    // Client events on a public channel: pusher:error 4009, nothing delivered.
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"pub"}}))
        .await;
    let ok = recv_event(&mut c).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert_eq!(ok["channel"], "pub");
    c.send(json!({"event":"client-x","channel":"pub","data":{}}))
        .await;
    let err = recv_event(&mut c).await;
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4009, "{err}");

    // An unknown key: pusher:error 4001, then close 4001.
    let mut bad = gw
        .open(socket_request(&gw, "/app/nope?protocol=7", Some(ORIGIN)))
        .await
        .expect("upgraded, then told");
    let err = recv_event(&mut bad).await;
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4001, "{err}");
    assert_eq!(bad.closed().await, Closed::Code(4001));

    // No or an unsupported protocol: 4007.
    for path in ["/app/app-key", "/app/app-key?protocol=99"] {
        let mut old = gw
            .open(socket_request(&gw, path, Some(ORIGIN)))
            .await
            .expect("upgraded, then told");
        assert_eq!(recv_event(&mut old).await["data"]["code"], 4007);
        assert_eq!(old.closed().await, Closed::Code(4007));
    }
}

#[tokio::test]
async fn a_foreign_origin_is_refused_before_101() {
    let gw = Gateway::start_with(with_app).await;
    let body = gw
        .refused(
            socket_request(&gw, "/app/app-key?protocol=7", Some("https://evil.example")),
            403,
        )
        .await;
    assert!(body.contains("Origin"), "{body}");
    // An unknown key is judged by origin.allowed before it is told it is unknown.
    gw.refused(
        socket_request(&gw, "/app/nope?protocol=7", Some("https://evil.example")),
        403,
    )
    .await;
}

/// One HTTP/1.1 request on an open keep-alive connection; returns the status.
async fn keep_alive_request<S>(tls: &mut S, path: &str) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return status_code(head);
            }
        }
    }
}

#[tokio::test]
async fn an_http_keep_alive_connection_outlives_the_handshake_timeout() {
    let gw = Gateway::start_with(|s| {
        with_app(s);
        s.set("server", "handshake_timeout", json!("1s"));
    })
    .await;
    let began = Instant::now();
    let mut tls = gw.tls().await;
    // Requests keep coming, each well within the header timeout, until the connection has
    // been open twice as long as server.handshake_timeout: all answered on it.
    let mut served = 0;
    while began.elapsed() < Duration::from_secs(2) {
        assert_eq!(keep_alive_request(&mut tls, "/apps/404/events").await, 404);
        served += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(keep_alive_request(&mut tls, "/apps/404/events").await, 404);
    assert!(served >= 2, "{served}");
}

#[tokio::test]
async fn without_apps_the_pusher_endpoints_are_not_found() {
    let gw = Gateway::start().await;
    let mut tls = gw.tls().await;
    assert_eq!(keep_alive_request(&mut tls, "/apps/1001/events").await, 404);
    gw.refused(
        socket_request(&gw, "/app/app-key?protocol=7", Some(ORIGIN)),
        404,
    )
    .await;
}

#[tokio::test]
async fn check_config_redacts_app_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), with_app);
    let out = run_wsgate(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("app-key"), "{stdout}");
    assert!(!stdout.contains(SECRET), "{stdout}");
}

#[tokio::test]
async fn a_short_app_secret_is_refused_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), |s| {
        with_app(s);
        s.set("server", "listen", json!("0.0.0.0:0"));
        s.set(
            "auth",
            "hs_secret",
            json!("a-long-enough-hs-secret-0123456789abcdef"),
        );
        s.set(
            "admin",
            "api_key",
            json!("a-long-enough-admin-key-0123456789abcdef"),
        );
        s.set(
            "pusher",
            "apps",
            json!([{ "id": APP_ID, "key": KEY, "secret": "short" }]),
        );
    });
    let out = run_wsgate(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pusher.apps.secret"), "{stderr}");
    assert!(!stderr.contains("short\""), "{stderr}");
}

#[tokio::test]
async fn a_reload_adds_an_app() {
    let gw = Gateway::start().await;
    gw.refused(
        socket_request(&gw, "/app/app-key?protocol=7", Some(ORIGIN)),
        404,
    )
    .await;
    let mut settings = gw.settings.clone();
    with_app(&mut settings);
    std::fs::write(&gw.config_path, settings.toml()).expect("write config");
    gw.sighup("configuration reloaded").await;
    let mut c = gw
        .open(socket_request(&gw, "/app/app-key?protocol=7", None))
        .await
        .expect("accepted after the reload");
    let hello = c.ws.next().await.expect("frame").expect("ok");
    let Message::Text(t) = hello else {
        panic!("{hello:?}")
    };
    assert!(t.contains("pusher:connection_established"), "{t}");
}

#[tokio::test]
async fn private_and_presence_channels_work_with_sdk_signed_auth() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "private_presence.mjs").await;
    assert_private_and_presence(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_whispers_span_the_nodes_of_a_cluster() {
    let redis = crate::redis_server::Redis::start().await;
    let node = |name: &'static str, certs: Option<PathBuf>| {
        let url = redis.url();
        Gateway::start_with(move |s| {
            with_app(s);
            s.set("cluster", "redis_url", json!(url))
                .set("cluster", "node_name", json!(name));
            // One certificate for the whole cluster, as behind one host name.
            if let Some(dir) = certs {
                s.set("tls", "cert", json!(dir.join("server.crt"))).set(
                    "tls",
                    "key",
                    json!(dir.join("server.key")),
                );
            }
        })
    };
    let a = node("gw-a", None).await;
    let b = node("gw-b", Some(a.dir.path().join("certs"))).await;
    // Bob and Alice's second tab on gw-b, her first tab and the HTTP API on gw-a.
    let r = node_on(&a, Some(&b), "private_presence.mjs").await;
    assert_private_and_presence(&r);
    // Alice's second tab on gw-b gets her events triggered on gw-a.
    let r = node_on(&a, Some(&b), "signin.mjs").await;
    assert_private_user_events(&r);
    // terminate_connections on gw-a closes her tab on gw-b too.
    let r = node_on(&a, Some(&b), "terminate.mjs").await;
    assert_terminated(&r);
    // Events triggered on gw-a reach a subscriber on gw-b; the channel counts both nodes.
    let r = node_on(&a, Some(&b), "public_roundtrip.mjs").await;
    assert_public_roundtrip(&r);
}

/// What `private_presence.mjs` must have seen, on one node or across two.
fn assert_private_and_presence(r: &Value) {
    assert_eq!(r["refused"]["type"], "AuthError", "{r}");
    assert_eq!(r["refused"]["status"], 401, "{r}");
    // Sanitized as in §5 (bidi and C0 controls gone), delivered once, never echoed.
    assert_eq!(r["whispered"], json!({"text": "hi there"}), "{r}");
    assert_eq!(r["echoed"], json!([]), "{r}");
    // The user_id comes back as the auth endpoint gave it (a number here).
    assert_eq!(
        r["member"],
        json!({"id": 1, "info": {"name": "Alice"}}),
        "{r}"
    );
    assert_eq!(r["membersSeenByTab2"]["count"], 2, "{r}");
    assert_eq!(
        r["membersSeenByTab2"]["me"],
        json!({"id": 1, "info": {"name": "Alice"}}),
        "{r}"
    );
    assert_eq!(r["ids"], json!(["1", "bob"]), "{r}");
    assert_eq!(r["helloUser"], json!(1), "{r}");
    assert_eq!(r["gone"]["id"], 1, "{r}");
    // Two tabs of one user: one member_added, one member_removed.
    assert_eq!(r["added"], 1, "{r}");
    assert_eq!(r["removed"], 1, "{r}");
}

#[tokio::test]
async fn client_events_past_the_rate_limit_get_4301_and_shutdown_closes_with_4200() {
    let gw = Gateway::start_with(|s| {
        with_app(s);
        s.rate_limit(1, 2);
    })
    .await;
    let mut c = gw
        .open(socket_request(&gw, "/app/app-key?protocol=7", Some(ORIGIN)))
        .await
        .expect("accepted");
    let hello = recv_event(&mut c).await;
    let socket_id = hello["data"]["socket_id"].as_str().expect("socket_id");
    let signature =
        wsgate::pusher::sign::hmac_hex(SECRET.as_bytes(), &format!("{socket_id}:private-a"));
    c.send(json!({"event":"pusher:subscribe",
        "data":{"channel":"private-a","auth":format!("{KEY}:{signature}")}}))
        .await;
    let ok = recv_event(&mut c).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    // A burst of 2: the third whisper in a row is refused with 4301, the socket stays open.
    for n in 0..3 {
        c.send(json!({"event":"client-n","channel":"private-a","data":{"n":n}}))
            .await;
    }
    let err = recv_event(&mut c).await;
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4301, "{err}");
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(recv_event(&mut c).await["event"], "pusher:pong");
    // Shutdown: Pusher's "reconnect" close, 4200.
    gw.signal("TERM");
    assert_eq!(c.closed().await, Closed::Code(4200));
}

/// A raw Pusher socket of the test app, and the `socket_id` it was told.
async fn raw_socket(gw: &Gateway) -> (Client, String) {
    let mut c = gw
        .open(socket_request(gw, "/app/app-key?protocol=7", Some(ORIGIN)))
        .await
        .expect("accepted");
    let hello = recv_event(&mut c).await;
    let socket_id = hello["data"]["socket_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no socket_id: {hello}"))
        .to_string();
    (c, socket_id)
}

/// `pusher:signin` as `user_data`, signed for `socket_id`.
fn signin(socket_id: &str, user_data: &str) -> Value {
    let signature = socket_id_signature(socket_id, user_data);
    json!({"event": "pusher:signin",
        "data": {"auth": format!("{KEY}:{signature}"), "user_data": user_data}})
}

fn subscribe(channel: &str) -> Value {
    json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": ""}})
}

#[tokio::test]
async fn a_signin_is_checked_and_opens_only_the_users_own_channel() {
    let gw = Gateway::start_with(with_app).await;
    let (mut c, socket_id) = raw_socket(&gw).await;
    // Not signed in: a user's channel is refused, the socket stays open.
    c.send(subscribe("#server-to-user-42")).await;
    let refused = recv_event(&mut c).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["channel"], "#server-to-user-42");
    assert_eq!(refused["data"]["type"], "AuthError", "{refused}");
    assert_eq!(refused["data"]["status"], 401, "{refused}");

    let user_data = r#"{"id":"42","user_info":{"name":"Ann"}}"#;
    c.send(signin(&socket_id, user_data)).await;
    let ok = recv_event(&mut c).await;
    assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
    assert_eq!(ok["data"]["user_data"], user_data, "{ok}");
    c.send(subscribe("#server-to-user-42")).await;
    let own = recv_event(&mut c).await;
    assert_eq!(
        own["event"], "pusher_internal:subscription_succeeded",
        "{own}"
    );
    assert_eq!(own["channel"], "#server-to-user-42");
    c.send(subscribe("#server-to-user-43")).await;
    let other = recv_event(&mut c).await;
    assert_eq!(other["event"], "pusher:subscription_error", "{other}");
    assert_eq!(other["data"]["type"], "AuthError", "{other}");

    // A signature made for another socket: pusher:error 4009, then the close 4009.
    let (mut d, _) = raw_socket(&gw).await;
    d.send(signin(&socket_id, user_data)).await;
    let err = recv_event(&mut d).await;
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4009, "{err}");
    assert_eq!(d.closed().await, Closed::Code(4009));
    assert!(
        !gw.logs()
            .contains(&socket_id_signature(&socket_id, user_data)),
        "a signature reached the log"
    );
}

fn socket_id_signature(socket_id: &str, user_data: &str) -> String {
    wsgate::pusher::sign::hmac_hex(
        SECRET.as_bytes(),
        &format!("{socket_id}::user::{user_data}"),
    )
}

#[tokio::test]
async fn send_to_user_reaches_every_signed_in_tab_of_that_user_only() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "signin.mjs").await;
    assert_private_user_events(&r);
}

/// What `signin.mjs` must have seen, on one node or across two.
pub(crate) fn assert_private_user_events(r: &Value) {
    assert_eq!(
        r["channels"],
        json!([
            "#server-to-user-alice",
            "#server-to-user-alice",
            "#server-to-user-bob"
        ]),
        "{r}"
    );
    assert_eq!(
        r["got"],
        json!({
            "tab1": [{"text": "for alice"}],
            "tab2": [{"text": "for alice"}],
            "bob": [{"text": "for bob"}],
        }),
        "{r}"
    );
    assert_eq!(r["refused"]["channel"], "#server-to-user-alice", "{r}");
    assert_eq!(r["refused"]["data"]["type"], "AuthError", "{r}");
    assert_eq!(r["refused"]["data"]["status"], 401, "{r}");
    assert_eq!(r["stillConnected"], "connected", "{r}");
}

#[tokio::test]
async fn cache_channels_give_new_subscribers_the_last_event_or_a_cache_miss() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "cache.mjs").await;
    let first = r["first"].as_array().expect("first");
    assert_eq!(
        first[..4],
        [
            json!("subscribed"),
            json!("cache_miss"),
            json!({"event": "score", "data": {"n": 1}}),
            json!({"event": "score", "data": {"n": 2}}),
        ],
        "{r}"
    );
    // The late subscriber: the last event only, right after its subscription, no miss.
    assert_eq!(
        r["late"],
        json!([
            "subscribed",
            {"event": "score", "data": {"n": 2}},
            {"event": "marker", "data": {}},
        ]),
        "{r}"
    );
}

/// Subscribes a raw socket to a private channel with a valid signature; returns the frames
/// that follow up to and including `subscription_succeeded` and the one after it.
async fn subscribe_private(c: &mut Client, socket_id: &str, channel: &str) -> (Value, Value) {
    let signature =
        wsgate::pusher::sign::hmac_hex(SECRET.as_bytes(), &format!("{socket_id}:{channel}"));
    c.send(json!({"event": "pusher:subscribe",
        "data": {"channel": channel, "auth": format!("{KEY}:{signature}")}}))
        .await;
    let ok = recv_event(c).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    (ok, recv_event(c).await)
}

#[tokio::test]
async fn a_private_cache_channel_keeps_a_client_event_for_the_history_ttl() {
    let gw = Gateway::start_with(|s| {
        with_app(s);
        s.set("rooms", "history_ttl", json!("1s"));
    })
    .await;
    let (mut a, a_id) = raw_socket(&gw).await;
    let (_, miss) = subscribe_private(&mut a, &a_id, "private-cache-x").await;
    assert_eq!(miss["event"], "pusher:cache_miss", "{miss}");
    assert_eq!(miss["channel"], "private-cache-x", "{miss}");
    a.send(json!({"event": "client-move", "channel": "private-cache-x", "data": {"to": "e4"}}))
        .await;
    let sent = Instant::now();
    // Kept: the next subscriber gets it right after subscription_succeeded.
    let (mut b, b_id) = raw_socket(&gw).await;
    let (_, cached) = subscribe_private(&mut b, &b_id, "private-cache-x").await;
    assert_eq!(cached["event"], "client-move", "{cached}");
    assert_eq!(cached["data"], json!({"to": "e4"}), "{cached}");
    // Past rooms.history_ttl (and the next 1 s sweep) the cache is empty again: new
    // subscribers are asked until one gets the miss, never before the TTL.
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (mut c, c_id) = raw_socket(&gw).await;
        let (_, first) = subscribe_private(&mut c, &c_id, "private-cache-x").await;
        if first["event"] == "pusher:cache_miss" {
            break;
        }
        assert_eq!(first["event"], "client-move", "{first}");
        assert!(sent.elapsed() < Duration::from_secs(10), "never expired");
    }
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn a_full_presence_channel_refuses_new_users_but_not_new_tabs() {
    let gw = Gateway::start_with(|s| with_app_and(s, json!({"max_presence_members": 2}))).await;
    let r = node(&gw, "presence_limit.mjs").await;
    assert_eq!(r["refused"]["type"], "LimitReached", "{r}");
    assert_eq!(r["refused"]["status"], 403, "{r}");
    assert!(r["refused"]["error"].is_string(), "{r}");
    assert_eq!(r["carolState"], "connected", "{r}");
    // Alice's second tab got in: still two members.
    assert_eq!(r["count"], 2, "{r}");
    let mut ids: Vec<String> = r["users"]["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["id"].to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["\"bob\"", "1"], "{r}");
    assert_eq!(r["notPresence"], 400, "{r}");
    // Three sockets of two users in presence-full; nobody in public-one.
    assert_eq!(
        r["triggered"],
        json!({"channels": {
            "presence-full": {"user_count": 2, "subscription_count": 3},
            "public-one": {"subscription_count": 0},
        }}),
        "{r}"
    );
    assert_eq!(
        r["batched"],
        json!({"batch": [{"user_count": 2}, {}]}),
        "{r}"
    );
}

#[tokio::test]
async fn terminate_connections_closes_every_tab_of_the_user_for_good() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "terminate.mjs").await;
    assert_terminated(&r);
}

/// What `terminate.mjs` must have seen, on one node or across two.
fn assert_terminated(r: &Value) {
    for log in r["logs"].as_array().expect("logs") {
        assert_eq!(log["codes"], json!([4009]), "{r}");
        // Closed, and never connecting again.
        assert_eq!(log["states"], json!(["disconnected"]), "{r}");
    }
    assert_eq!(
        r["states"],
        json!(["disconnected", "disconnected", "connected"]),
        "{r}"
    );
    assert_eq!(
        r["aliceChannel"],
        json!({"occupied": false, "subscription_count": 0}),
        "{r}"
    );
    assert_eq!(
        r["bobChannel"],
        json!({"occupied": true, "subscription_count": 1}),
        "{r}"
    );
}

#[tokio::test]
async fn the_admin_api_disconnects_signed_in_pusher_sockets_of_a_user() {
    let gw = Gateway::start_with(with_app).await;
    let mut native = gw.connect("carol").await;
    let (mut signed, socket_id) = raw_socket(&gw).await;
    signed.send(signin(&socket_id, r#"{"id":"carol"}"#)).await;
    assert_eq!(
        recv_event(&mut signed).await["event"],
        "pusher:signin_success"
    );
    // Not signed in: not carol's, whatever it does.
    let (mut anonymous, _) = raw_socket(&gw).await;
    let (status, body) = gw
        .api("POST", "/api/disconnect", Some(json!({"user": "carol"})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"closed": 2}));
    assert_eq!(native.closed().await, Closed::Code(4003));
    assert_eq!(signed.closed().await, Closed::Code(4009));
    anonymous
        .send(json!({"event":"pusher:ping","data":{}}))
        .await;
    assert_eq!(recv_event(&mut anonymous).await["event"], "pusher:pong");
}

#[tokio::test]
async fn pusher_connections_and_handshakes_have_their_own_protocol_series() {
    use crate::hub::{metric_value, metrics_text, wait_metric};
    let gw = Gateway::start_with(with_app).await;
    let _native = gw.connect("dora").await;
    let (_a, _) = raw_socket(&gw).await;
    let (b, _) = raw_socket(&gw).await;
    gw.refused(
        socket_request(&gw, "/app/app-key?protocol=7", Some("https://evil.example")),
        403,
    )
    .await;
    wait_metric(&gw, "wsgate_connections{protocol=\"pusher\"}", |v| v == 2.0).await;
    let text = metrics_text(&gw).await;
    // The native series are the ones the gateway always had.
    assert_eq!(
        metric_value(&text, "wsgate_connections"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "wsgate_handshakes_total{result=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "wsgate_handshakes_total{result=\"ok\",protocol=\"pusher\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "wsgate_handshakes_total{result=\"bad_origin\",reason=\"origin_not_allowed\",protocol=\"pusher\"}"
        ),
        Some(1.0),
        "{text}"
    );
    b.close_and_wait_gone().await;
    wait_metric(&gw, "wsgate_connections{protocol=\"pusher\"}", |v| v == 1.0).await;
}

#[tokio::test]
async fn a_signin_takes_a_token_from_the_command_bucket() {
    let gw = Gateway::start_with(|s| {
        with_app(s);
        s.set("limits", "commands_per_second", json!(1))
            .set("limits", "command_burst", json!(1));
    })
    .await;
    let (mut c, socket_id) = raw_socket(&gw).await;
    let user_data = r#"{"id":"7"}"#;
    c.send(signin(&socket_id, user_data)).await;
    assert_eq!(recv_event(&mut c).await["event"], "pusher:signin_success");
    // The bucket is empty: the same sign-in again is refused as over the rate (4301), the
    // socket stays open.
    c.send(signin(&socket_id, user_data)).await;
    let err = recv_event(&mut c).await;
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4301, "{err}");
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(recv_event(&mut c).await["event"], "pusher:pong");
}
