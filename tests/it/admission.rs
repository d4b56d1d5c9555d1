//! Admission before a session exists (CONTRACT §2 `limits`, §3): connections still before
//! `101` per address (`handshakes_in_flight_per_ip`), sessions per user
//! (`max_connections_per_user`), and the per-IP handshake rate across a reload.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use futures_util::future::join_all;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

use crate::hub::{connect_origin, metrics_text};
use crate::support::{sign_hs, Closed, Gateway, ORIGIN, WAIT};

/// `limits.handshakes_in_flight_per_ip` by default.
const IN_FLIGHT_PER_IP: usize = 16;
const OTHER_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The ClientHello a real TLS client sends first.
fn client_hello() -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    hello
}

/// Sends a whole ClientHello from 127.0.0.1; returns what came back before the server closed
/// the connection (which it must do within [`WAIT`]).
async fn reply_to_hello(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The server may already have closed it: a failed write shows in the read below.
    let _ = tcp.write_all(hello).await;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Err(_) => panic!("still open after {WAIT:?}; got {} bytes", reply.len()),
            Ok(Ok(0)) | Ok(Err(_)) => return reply,
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
        }
    }
}

/// The count of handshakes with the label `name="value"` (summed over any further labels).
async fn handshakes_with(gw: &Gateway, name: &str, value: &str) -> f64 {
    let label = format!("{name}=\"{value}\"");
    metrics_text(gw)
        .await
        .lines()
        .filter(|l| l.starts_with("wsgate_handshakes_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn stalled_handshakes_of_one_address_are_capped_and_keep_no_one_else_out() {
    let gw = Gateway::start_with(|s| {
        // Nothing stalled times out during the test: they end when the test closes them.
        s.set("server", "handshake_timeout", json!("60s")).set(
            "log",
            "level",
            json!("info,wsgate=debug"),
        );
    })
    .await;
    let hello = client_hello();
    // A slowloris from 127.0.0.1: half of them silent, half stopped halfway through a hello.
    let mut stalled = Vec::new();
    for i in 0..IN_FLIGHT_PER_IP {
        let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
        if i % 2 == 1 {
            tcp.write_all(&hello[..hello.len() / 2])
                .await
                .expect("half a hello");
        }
        stalled.push(tcp);
    }

    // (a) One more from 127.0.0.1 is closed at accept: no ServerHello, nothing at all.
    let skip = gw.log_len();
    let reply = reply_to_hello(gw.addr, &hello).await;
    assert!(reply.is_empty(), "answered: {reply:02x?}");
    let line = gw
        .wait_log_after("\"reason\":\"handshakes_in_flight_per_ip\"", skip)
        .await;
    assert!(line.contains("\"result\":\"refused\""), "{line}");
    assert_eq!(
        handshakes_with(&gw, "result", "too_many_in_flight").await,
        1.0
    );

    // (b) Meanwhile another address completes a WebSocket handshake and is served.
    let mut fair = gw.connect_from(OTHER_CLIENT, "fair").await;
    fair.join("lobby").await;
    // The stalled ones still held 127.0.0.1's limit all along.
    assert!(reply_to_hello(gw.addr, &hello).await.is_empty());

    // (c) Once they are gone, 127.0.0.1 is served again; sessions past 101 are no longer in
    // flight, so it may keep more of them open than the limit.
    let skip = gw.log_len();
    drop(stalled);
    let half = IN_FLIGHT_PER_IP / 2;
    gw.wait_log_count("ended before sending anything", skip, half)
        .await;
    gw.wait_log_count("\"reason\":\"tls_error\"", skip, half)
        .await;
    let mut sessions = Vec::new();
    for i in 0..=IN_FLIGHT_PER_IP {
        sessions.push(gw.connect(&format!("user{i}")).await);
    }
    sessions[0].join("lobby").await;
    assert_eq!(
        handshakes_with(&gw, "result", "too_many_in_flight").await,
        2.0
    );
}

/// A gateway allowing each user `per_user` sessions.
async fn per_user_gateway(per_user: usize) -> Gateway {
    Gateway::start_with(|s| {
        s.set("limits", "max_connections_per_user", json!(per_user));
    })
    .await
}

/// The status and body a handshake of `token` with Origin `origin` is refused with.
async fn refusal(gw: &Gateway, origin: &str, token: &str) -> (u16, String) {
    match connect_origin(gw, origin, token).await {
        Ok(_) => panic!("handshake accepted"),
        Err(refused) => refused,
    }
}

#[tokio::test]
async fn a_user_past_max_connections_per_user_gets_503_checked_last() {
    let gw = per_user_gateway(2).await;
    let first = gw.connect("alice").await;
    let mut second = gw.connect("alice").await;
    let token = gw.token("alice");

    // The cap is the last check: a bad Origin or token answers first.
    assert_eq!(refusal(&gw, "https://evil.test", &token).await.0, 403);
    let forged = sign_hs(
        "another-secret-0123456789",
        "HS256",
        json!({"sub": "alice", "exp": wsgate::auth::unix_now() + 60}),
    );
    assert_eq!(refusal(&gw, ORIGIN, &forged).await.0, 401);

    let skip = gw.log_len();
    let (status, body) = refusal(&gw, ORIGIN, &token).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("too many connections for this user"),
        "{body}"
    );
    assert!(!body.contains(&token));
    let line = gw
        .wait_log_after("\"reason\":\"max_connections_per_user\"", skip)
        .await;
    assert!(line.contains("\"status\":503"), "{line}");
    assert_eq!(
        handshakes_with(&gw, "reason", "max_connections_per_user").await,
        1.0
    );

    // Other users are not affected, and the open sessions work.
    let mut bob = gw.connect("bob").await;
    second.join("lobby").await;

    // Closing one session frees its place.
    first.close_and_wait_gone().await;
    let mut third = gw.connect("alice").await;
    assert_eq!(refusal(&gw, ORIGIN, &token).await.0, 503);

    // The admin API still closes every session of the user, and only those.
    let (status, closed) = gw
        .api("POST", "/api/disconnect", Some(json!({"user": "alice"})))
        .await;
    assert_eq!((status, closed), (200, json!({"closed": 2})));
    assert_eq!(second.closed().await, Closed::Code(4003));
    assert_eq!(third.closed().await, Closed::Code(4003));
    bob.join("lobby").await;
    // Their places are free again.
    let _again = [gw.connect("alice").await, gw.connect("alice").await];
}

#[tokio::test]
async fn concurrent_handshakes_of_one_user_never_share_the_last_place() {
    let gw = per_user_gateway(3).await;
    let _open = [gw.connect("alice").await, gw.connect("alice").await];
    let token = gw.token("alice");
    // TLS first, so that the eight upgrade requests leave at once.
    let streams = join_all((0..8).map(|_| gw.tls())).await;
    let attempts = join_all(streams.into_iter().map(|tls| {
        let mut req = gw.request();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("wsgate.v1, bearer.{token}").parse().unwrap(),
        );
        tokio_tungstenite::client_async(req, tls)
    }))
    .await;
    let mut statuses: Vec<u16> = attempts
        .iter()
        .map(|a| match a {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("handshake failed without a status: {e}"),
        })
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [101, 503, 503, 503, 503, 503, 503, 503]);
}

#[tokio::test]
async fn a_reload_that_changes_the_handshake_rate_hands_out_no_fresh_budget() {
    let gw = Gateway::start_with(|s| {
        s.set("limits", "handshakes_per_ip_per_minute", json!(2));
    })
    .await;
    // Refused attempts count too.
    gw.refused(gw.request(), 401).await;
    gw.refused(gw.request(), 401).await;
    let token = gw.token("alice");
    assert_eq!(refusal(&gw, ORIGIN, &token).await.0, 429);

    let mut next = gw.settings.clone();
    next.set("limits", "handshakes_per_ip_per_minute", json!(3));
    std::fs::write(&gw.config_path, next.toml()).expect("write config");
    let line = gw.sighup("configuration reloaded").await;
    assert!(line.contains("limits"), "{line}");

    let (status, body) = refusal(&gw, ORIGIN, &token).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("retry-after="), "{body}");
    // Other addresses have their own budget, under the new quota too.
    gw.connect_from(OTHER_CLIENT, "bob")
        .await
        .join("lobby")
        .await;
}
