//! The Pusher endpoints (CONTRACT §10) against the clients Laravel apps use, end to end:
//! `laravel-echo` over `pusher-js` in Node, hand-signed HTTP API requests for the limits the
//! `pusher` SDK never crosses, the close codes a raw client provokes, and the PHP example.
//! The scripts live in `tests/pusher/`, their packages pinned in its lockfile.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::hub::metric;
use crate::pusher::{
    assert_private_user_events, node, recv_event, socket_request, with_app, KEY, SECRET,
};
use crate::support::*;

#[tokio::test]
async fn the_http_api_refuses_stale_mismatched_oversized_and_overlong_requests() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "api_limits.mjs").await;
    let status = |case: &str| r[case]["status"].as_u64().unwrap_or(0);
    assert_eq!(status("stale"), 401, "{r}");
    assert_eq!(status("future"), 401, "{r}");
    assert_eq!(status("bodyMd5"), 401, "{r}");
    assert!(
        r["bodyMd5"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("body_md5")),
        "{r}"
    );
    assert_eq!(status("at10k"), 200, "{r}");
    assert_eq!(status("over10k"), 413, "{r}");
    assert_eq!(status("batchOf10"), 200, "{r}");
    assert_eq!(status("batchOf11"), 400, "{r}");
    assert_eq!(status("channels101"), 400, "{r}");
    assert_eq!(status("channels100"), 200, "{r}");
    assert_eq!(status("marker"), 200, "{r}");
    // The subscriber got the accepted events, in order, and nothing of the refused ones.
    let mut expected: Vec<Value> = vec![json!("len:10240")];
    expected.extend((0..10).map(|i| json!(format!("b{i}"))));
    expected.push(json!("wide-ok"));
    assert_eq!(r["seen"], Value::Array(expected), "{r}");
}

#[tokio::test]
async fn laravel_echo_listens_authorizes_refuses_and_excludes_the_sender() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "echo_channels.mjs").await;
    assert_eq!(r["publicEvent"], json!({"order": 7}), "{r}");
    assert_eq!(r["privateEvent"], json!({"state": "packed"}), "{r}");
    // Refused by the app's auth endpoint: Echo's error callback, before the gateway is asked.
    assert_eq!(r["refused"]["type"], "AuthError", "{r}");
    assert_eq!(r["refused"]["status"], 403, "{r}");
    // A whisper on a public channel: pusher:error 4009, delivered to nobody.
    assert_eq!(r["whisperError"]["type"], "PusherError", "{r}");
    assert_eq!(r["whisperError"]["data"]["code"], 4009, "{r}");
    assert_eq!(r["whispersOnNews"], json!([]), "{r}");
    // toOthers(): the sender's socket_id excluded it, and only it.
    assert_eq!(r["bobGot"], json!({"text": "hello"}), "{r}");
    assert_eq!(r["aliceGot"], json!([]), "{r}");
}

#[tokio::test]
async fn laravel_echo_presence_counts_a_user_with_two_tabs_once_and_whispers_skip_the_sender() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "echo_presence.mjs").await;
    let alice = json!({"id": 1, "name": "Alice"});
    let bob = json!({"id": "bob", "name": "Bob"});
    assert_eq!(r["hereAlone"], json!([alice]), "{r}");
    assert_eq!(r["hereBob1"], json!([1, "bob"]), "{r}");
    assert_eq!(r["hereBob2"], json!([1, "bob"]), "{r}");
    assert_eq!(r["joined"], bob, "{r}");
    assert_eq!(r["joining"], json!([bob]), "{r}");
    assert_eq!(r["left"], bob, "{r}");
    assert_eq!(r["leaving"], json!([bob]), "{r}");
    let whisper = json!({"name": "Alice", "typing": true});
    assert_eq!(r["whispered"], json!([whisper, whisper]), "{r}");
    assert_eq!(r["aliceWhispers"], json!([]), "{r}");
    assert_eq!(r["reply"]["data"], json!({"text": "hi"}), "{r}");
    assert_eq!(r["reply"]["meta"]["user_id"], json!("bob"), "{r}");
}

#[tokio::test]
async fn laravel_echo_signs_in_through_the_app_and_gets_send_to_user_events() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "echo_signin.mjs").await;
    // The same as pusher-js signing in through a handler (`signin.mjs`).
    assert_private_user_events(&r);
}

#[tokio::test]
async fn an_encrypted_channel_is_relayed_as_ciphertext_and_decrypted_by_the_client() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "echo_encrypted.mjs").await;
    assert_eq!(
        r["decrypted"],
        json!({"pin": "4711", "note": "héllo"}),
        "{r}"
    );
    // The frame on the socket carried the SDK's envelope, not the data.
    assert_eq!(r["relayedKeys"], json!(["ciphertext", "nonce"]), "{r}");
    assert_eq!(r["plaintextOnTheWire"], false, "{r}");
    assert!(!gw.logs().contains("4711"), "the plaintext reached the log");
}

/// A raw Pusher socket over `tcp`, told its id; returns it and the id.
async fn raw_socket(gw: &Gateway, tcp: TcpStream) -> (Client, String) {
    let tls = tls_over(tcp, &gw.ca).await.expect("tls handshake");
    let req = socket_request(gw, "/app/app-key?protocol=7", Some(ORIGIN));
    let mut c = open_over(tls, req).await.expect("accepted");
    let hello = recv_event(&mut c).await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
    let id = hello["data"]["socket_id"]
        .as_str()
        .expect("socket_id")
        .to_string();
    (c, id)
}

/// Subscribes `c` to presence channel `channel` as `user`, signed as an app's auth endpoint
/// would; returns once the subscription succeeded.
async fn join_presence(c: &mut Client, socket_id: &str, channel: &str, user: &str) {
    let channel_data = json!({ "user_id": user }).to_string();
    let signature = wsgate::pusher::sign::hmac_hex(
        SECRET.as_bytes(),
        &format!("{socket_id}:{channel}:{channel_data}"),
    );
    c.send(json!({"event":"pusher:subscribe","data":{
        "channel": channel, "auth": format!("{KEY}:{signature}"), "channel_data": channel_data}}))
        .await;
    loop {
        let e = recv_event(c).await;
        if e["event"] == "pusher_internal:subscription_succeeded" {
            return;
        }
        assert_ne!(e["event"], "pusher:subscription_error", "{e}");
    }
}

#[tokio::test]
async fn a_socket_that_stops_pinging_is_closed_with_4201() {
    let gw = Gateway::start_with(|s| {
        with_app(s);
        // The server's own ping is due no earlier than the idle close: nothing this client
        // could answer without sending on its own.
        s.set("server", "idle_timeout", json!("1s"))
            .set("server", "ping_interval", json!("1s"));
    })
    .await;
    let (mut c, _) = raw_socket(&gw, TcpStream::connect(gw.addr).await.expect("tcp")).await;
    // pusher:ping keeps it open past the idle timeout: each is answered.
    let began = Instant::now();
    while began.elapsed() < Duration::from_millis(2500) {
        c.send(json!({"event":"pusher:ping","data":{}})).await;
        assert_eq!(recv_event(&mut c).await["event"], "pusher:pong");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Then silence: Pusher's idle close, 4201 (reconnect), one idle_timeout later.
    let silent = Instant::now();
    assert_eq!(c.closed().await, Closed::Code(4201));
    assert!(
        silent.elapsed() >= Duration::from_millis(900),
        "{:?}",
        silent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_is_closed_with_4100_and_the_others_carry_on() {
    const FEED: &str = "presence-feed";
    let gw = Gateway::start_with(|s| {
        with_app(s);
        s.set("limits", "send_queue", json!(16)).unlimited_rate();
        // Server pings every second while `slow` stalls: it answers the queued ones only
        // when it reads again, after its close frame went out, and the gateway must still be
        // reading then (a pong to a closed socket resets the connection and the client loses
        // the close frame). `slow` must not be closed as idle meanwhile.
        s.set("server", "idle_timeout", json!("1h"))
            .set("server", "ping_interval", json!("1s"));
    })
    .await;
    let tcp = || TcpStream::connect(gw.addr);
    let (mut slow, slow_id) = raw_socket(&gw, tcp().await.expect("tcp")).await;
    join_presence(&mut slow, &slow_id, FEED, "slow").await;
    let (mut reader, reader_id) = raw_socket(&gw, tcp().await.expect("tcp")).await;
    join_presence(&mut reader, &reader_id, FEED, "reader").await;
    let (mut sender, sender_id) = raw_socket(&gw, tcp().await.expect("tcp")).await;
    join_presence(&mut sender, &sender_id, FEED, "sender").await;

    // `slow` reads nothing from here on. Whispers of 8 KiB fill its socket, then its queue;
    // the reader gets each one, and sees `slow` leave when the gateway gives up on it.
    let pad = "z".repeat(8 * 1024);
    let mut n = 0u64;
    'feed: loop {
        n += 1;
        assert!(n < 20_000, "the stalled reader was never closed");
        sender
            .send(json!({"event":"client-n","channel":FEED,"data":{"n":n,"pad":pad}}))
            .await;
        loop {
            let e = recv_event(&mut reader).await;
            match e["event"].as_str() {
                Some("client-n") => {
                    assert_eq!(e["data"]["n"], n, "in order, none lost");
                    break;
                }
                Some("pusher_internal:member_removed") => {
                    assert_eq!(e["data"]["user_id"], "slow", "{e}");
                    break 'feed;
                }
                _ => {}
            }
        }
    }
    // What `slow` got is an unbroken run of the whispers, then Pusher's "too slow", 4100.
    // Its close frame waits behind what its socket holds, and the gateway gives it 2 s: the
    // drain is kept cheap (no JSON parsing) so a busy machine still reads it in time.
    let mut expect = 1u64;
    let code = loop {
        let next = tokio::time::timeout(WAIT, slow.ws.next())
            .await
            .expect("the stalled reader's frames in time");
        match next {
            Some(Ok(Message::Text(t))) => {
                let Some(at) = t.find(r#""data":{"n":"#) else {
                    continue;
                };
                let digits = &t[at + r#""data":{"n":"#.len()..];
                let end = digits.find(',').unwrap_or(digits.len());
                assert_eq!(digits[..end].parse::<u64>().ok(), Some(expect), "unbroken");
                expect += 1;
            }
            Some(Ok(Message::Close(Some(f)))) => break Closed::Code(u16::from(f.code)),
            Some(Ok(Message::Close(None))) => break Closed::Code(1005),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break Closed::Dropped,
        }
    };
    assert_eq!(code, Closed::Code(4100), "{}", gw.logs());
    assert!(expect <= n, "got everything yet was closed");
    assert_eq!(metric(&gw, "wsgate_slow_consumer_closes_total").await, 1.0);
    // The others carry on.
    sender
        .send(json!({"event":"client-n","channel":FEED,"data":{"n":n + 1}}))
        .await;
    // (The last whisper before `slow` left may still be on its way to the reader.)
    loop {
        let e = recv_event(&mut reader).await;
        if e["event"] == "client-n" && e["data"]["n"] != n {
            assert_eq!(e["data"]["n"], n + 1, "{e}");
            break;
        }
    }
}

#[tokio::test]
async fn the_php_example_triggers_events_a_pusher_js_client_receives() {
    if std::process::Command::new("php")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("php is not installed: examples/pusher-php/trigger.php not run");
        return;
    }
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "php_trigger.mjs").await;
    for run in ["sent", "excluded", "again"] {
        assert_eq!(r[run]["code"], 0, "{r}");
        assert_eq!(r[run]["stdout"], "200 {}", "{r}");
    }
    // The wrong secret: the gateway's 401, and the example's exit status 1.
    assert_eq!(r["refused"]["code"], 1, "{r}");
    assert!(
        r["refused"]["stdout"]
            .as_str()
            .is_some_and(|s| s.starts_with("401 ")),
        "{r}"
    );
    assert_eq!(
        r["received"],
        json!([{"id": 42, "note": "héllo"}, {"id": 44}]),
        "{r}"
    );
    assert!(!gw.logs().contains(SECRET), "the secret reached the log");
}
