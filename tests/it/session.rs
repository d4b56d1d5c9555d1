//! One session as its client and the others in its rooms see it: the command bucket, invalid
//! refreshes, rooms a refreshed token no longer allows, the idle and expiry timers under a ping
//! flood, request ids on every refusal, numbers relayed as written, buckets across a reload,
//! and the byte budget of all rooms' history.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsgate::auth::unix_now;

use crate::hub::{admin_publish, join_since, publish};
use crate::support::{Closed, Gateway, ORIGIN, WAIT};

// ---------------------------------------------------------------------------------------------
// The command bucket and the abuse count (CONTRACT §4, §5)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn join_leave_floods_are_rate_limited_and_bystanders_see_bounded_presence() {
    const PAIRS: u64 = 100;
    const BURST: f64 = 80.0;
    const PER_SECOND: f64 = 10.0;
    let gw = Gateway::start().await; // the contract's defaults: 10 commands/s, burst 80
    let mut bystander = gw.connect("bystander").await;
    bystander.join("r").await;
    let mut flooder = gw.connect("flooder").await;
    let started = Instant::now();
    for i in 0..PAIRS {
        flooder
            .send(json!({"type":"join","room":"r","id":2 * i}))
            .await;
        flooder
            .send(json!({"type":"leave","room":"r","id":2 * i + 1}))
            .await;
    }
    let mut done = 0u64;
    let mut first_limited = None;
    for id in 0..2 * PAIRS {
        let r = flooder.recv().await;
        assert_eq!(r["id"], id, "{r}");
        match r["type"].as_str() {
            Some("joined" | "left") => done += 1,
            _ if r["code"] == "rate_limited" => {
                assert_eq!(r["message"], "10 commands/s exceeded", "{r}");
                first_limited.get_or_insert(id);
            }
            // A leave whose join was limited, or a join after a limited leave.
            _ => assert!(
                r["code"] == "not_joined" || r["code"] == "bad_request",
                "{r}"
            ),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = BURST + PER_SECOND * elapsed + 1.0;
    let first_limited = first_limited.expect("the flood was limited");
    assert!(
        first_limited as f64 >= BURST,
        "limited after {first_limited}"
    );
    assert!(
        done as f64 <= allowed,
        "{done} commands done in {elapsed:.1}s"
    );

    // Every presence frame the flood caused is queued before this message.
    admin_publish(&gw, "r", json!("barrier")).await;
    let mut presence = 0u64;
    loop {
        let m = bystander.recv().await;
        match m["type"].as_str() {
            Some("presence") => presence += 1,
            Some("message") => break,
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(
        presence <= done && (presence as f64) <= allowed,
        "{presence} presence frames for {done} commands"
    );
    // The flooder was not closed: rate-limited commands are not abuse.
    let r = publish(&mut flooder, "elsewhere", json!("x"), 1_000).await;
    assert_eq!(r["code"], "not_joined", "{r}");
}

#[tokio::test]
async fn flooding_commands_for_five_seconds_closes_with_1008() {
    let gw = Gateway::start_with(|s| {
        s.set("limits", "commands_per_second", json!(5))
            .set("limits", "command_burst", json!(5));
    })
    .await;
    let token = gw.token("flooder");
    let client = gw.connect_token(&token).await;
    let (mut tx, mut rx) = client.ws.split();
    let started = Instant::now();
    // Valid refreshes only: each one that gets through resets the refusal count, so only the
    // flood itself can close the connection.
    let writer = tokio::spawn(async move {
        let mut id = 0u64;
        loop {
            id += 1;
            let msg = json!({"type":"refresh","token":token,"id":id}).to_string();
            if tx.send(Message::text(msg)).await.is_err() {
                break;
            }
        }
    });
    let mut limited = 0u64;
    // Replies keep coming while the flood is not stopped: bound the whole wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5) + WAIT;
    let code = loop {
        let next = tokio::time::timeout_at(deadline, rx.next())
            .await
            .expect("the flood is closed in time");
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["code"] == "rate_limited" {
                    assert!(v["id"].is_u64(), "{v}");
                    limited += 1;
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break Closed::Code(f.code.into()),
            Some(Ok(_)) => {}
            _ => break Closed::Dropped,
        }
    };
    writer.abort();
    assert_eq!(code, Closed::Code(1008));
    assert!(limited > 0);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn eleven_invalid_refreshes_in_a_row_close_with_1008() {
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice").await;
    let forged = crate::support::sign_hs(
        "another-secret-0123456789",
        "HS256",
        json!({"sub":"alice","exp":unix_now() + 3600}),
    );
    for id in 1..=11u64 {
        c.send(json!({"type":"refresh","token":forged,"id":id}))
            .await;
    }
    for id in 1..=11u64 {
        assert_eq!(
            c.recv().await,
            json!({"type":"error","id":id,"code":"token_invalid","message":"token signature is invalid"})
        );
    }
    assert_eq!(c.closed().await, Closed::Code(1008));

    // A valid request in between resets the count, as for other refusals.
    let mut d = gw.connect("dora").await;
    for id in 1..=15u64 {
        let r = d
            .request(json!({"type":"refresh","token":"garbage"}), id)
            .await;
        assert_eq!(r["code"], "token_invalid", "{r}");
        if id % 5 == 0 {
            d.join(&format!("room-{id}")).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Refresh and room permissions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refresh_leaves_the_rooms_the_new_token_no_longer_allows() {
    let gw = Gateway::start().await;
    let exp = unix_now() + 3600;
    let token = |rooms: Value| gw.token_claims(json!({"sub":"alice","exp":exp,"rooms":rooms}));
    let mut alice = gw.connect_token(&token(json!(["team:1:*", "lobby"]))).await;
    let mut bob = gw.connect("bob").await;
    bob.join("team:1:chat").await;
    alice.join("team:1:chat").await;
    alice.join("lobby").await;
    assert_eq!(
        bob.recv().await,
        json!({"type":"presence","room":"team:1:chat","event":"join","user":"alice"})
    );

    let later = exp + 60;
    let narrower = gw.token_claims(json!({"sub":"alice","exp":later,"rooms":["lobby"]}));
    assert_eq!(
        alice
            .request(json!({"type":"refresh","token":narrower}), 1)
            .await,
        json!({"type":"refreshed","expires_at":later,"id":1})
    );
    assert_eq!(
        alice.recv().await,
        json!({"type":"left","room":"team:1:chat","reason":"forbidden"})
    );
    assert_eq!(
        bob.recv().await,
        json!({"type":"presence","room":"team:1:chat","event":"leave","user":"alice"})
    );
    // Out of the room for good; still in the one the token allows.
    let r = publish(&mut alice, "team:1:chat", json!("x"), 2).await;
    assert_eq!(r["code"], "not_joined", "{r}");
    let r = alice
        .request(json!({"type":"join","room":"team:1:chat"}), 3)
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(
        publish(&mut alice, "lobby", json!("still here"), 4).await,
        json!({"type":"ack","id":4,"offset":1})
    );
    // bob got nothing from alice in team:1:chat after the leave: everything alice sent was
    // answered before this barrier, so it is the next thing bob reads.
    admin_publish(&gw, "team:1:chat", json!("barrier")).await;
    let m = bob.recv().await;
    assert_eq!(
        (&m["type"], &m["from"], &m["data"]),
        (&json!("message"), &json!("@server"), &json!("barrier")),
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// Timers under a ping flood (CONTRACT §2, §6)
// ---------------------------------------------------------------------------------------------

/// A WebSocket client written by hand over TLS: it sends what it is told and never answers
/// the server's pings (tungstenite would).
struct RawClient {
    read: tokio::io::ReadHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    write: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    /// Bytes read past the handshake's response head.
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(gw: &Gateway, token: &str) -> RawClient {
        let mut tls = gw.tls().await;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: {ORIGIN}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, tls.read(&mut chunk))
                .await
                .expect("response in time")
                .expect("read");
            assert!(n > 0, "closed before the response");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert_eq!(crate::support::status_code(&head), 101, "{head}");
        let (read, write) = tokio::io::split(tls);
        RawClient {
            read,
            write,
            buf: buf[head_end..].to_vec(),
        }
    }

    /// Reads server frames (none answered) until a close frame; returns its code.
    async fn close_code(
        mut read: tokio::io::ReadHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        mut buf: Vec<u8>,
    ) -> Option<u16> {
        loop {
            // A whole frame in `buf`? (Server frames are unmasked.)
            if buf.len() >= 2 {
                let (len, at) = match buf[1] & 0x7f {
                    126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                    127 if buf.len() >= 10 => {
                        let b: [u8; 8] = buf[2..10].try_into().unwrap();
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    n @ 0..=125 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && buf.len() >= at + len {
                    if buf[0] & 0x0f == 0x8 {
                        return (len >= 2).then(|| u16::from_be_bytes([buf[at], buf[at + 1]]));
                    }
                    buf.drain(..at + len);
                    continue;
                }
            }
            let mut chunk = [0u8; 16384];
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Sends ping frames as fast as the socket takes them until `read` sees the close.
async fn flood_raw_pings(client: RawClient) -> Option<u16> {
    let RawClient {
        read,
        mut write,
        buf,
    } = client;
    // 1024 masked, empty pings per write.
    let pings: Vec<u8> = [0x89u8, 0x80, 1, 2, 3, 4].repeat(1024);
    let reader = tokio::spawn(RawClient::close_code(read, buf));
    let writer = tokio::spawn(async move { while write.write_all(&pings).await.is_ok() {} });
    let code = tokio::time::timeout(WAIT, reader)
        .await
        .expect("closed in time")
        .expect("reader");
    writer.abort();
    code
}

#[tokio::test]
async fn a_ping_flood_that_never_answers_pings_is_closed_with_4000() {
    let idle = Duration::from_millis(1000);
    let gw = Gateway::start_with(|s| {
        s.set("server", "ping_interval", json!("200ms"))
            .set("server", "idle_timeout", json!("1s"));
    })
    .await;
    // Before the handshake: the session counts its idle time from its start.
    let started = Instant::now();
    let client = RawClient::connect(&gw, &gw.token("flooder")).await;
    assert_eq!(flood_raw_pings(client).await, Some(4000));
    assert!(
        started.elapsed() >= idle,
        "closed after {:?}",
        started.elapsed()
    );
}

/// The largest payload a ping may carry: the most work per frame for the server.
const PING_PAYLOAD: &[u8] = &[b'p'; 125];

#[tokio::test]
async fn a_ping_flood_does_not_outlive_its_token() {
    let gw = Gateway::start().await;
    // Room for the connect on a busy machine, before the expiry.
    let exp = unix_now() + 3;
    let client = gw
        .connect_token(&gw.token_claims(json!({"sub":"flooder","exp":exp})))
        .await;
    let (mut tx, mut rx) = client.ws.split();
    let writer = tokio::spawn(async move {
        loop {
            for _ in 0..256 {
                if tx.feed(Message::Ping(PING_PAYLOAD.into())).await.is_err() {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
        }
    });
    let code = loop {
        match tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(f)))) => break Closed::Code(f.code.into()),
            Some(Ok(_)) => {}
            _ => break Closed::Dropped,
        }
    };
    writer.abort();
    assert_eq!(code, Closed::Code(4001));
    assert!(unix_now() >= exp, "closed before exp");
}

// ---------------------------------------------------------------------------------------------
// Refusals carry the request id (CONTRACT §4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn refusals_for_depth_or_type_echo_the_request_id() {
    let gw = Gateway::start().await;
    let mut c = gw.connect("alice").await;
    c.join("r").await;
    let nested = |levels: usize, id: &str| {
        format!(
            r#"{{"type":"publish","room":"r","data":{}0{},"id":"{id}"}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    // Past the contract's 32, and past serde_json's own recursion limit (128).
    for (levels, id) in [(40, "deep"), (5000, "deeper")] {
        c.send_text(&nested(levels, id)).await;
        assert_eq!(
            c.recv().await,
            json!({"type":"error","id":id,"code":"bad_request",
                   "message":"JSON nested deeper than 32 levels"})
        );
    }
    c.send_text(r#"{"type":"dance","room":5,"id":7}"#).await;
    let r = c.recv().await;
    assert_eq!(
        (&r["id"], &r["code"]),
        (&json!(7), &json!("bad_request")),
        "{r}"
    );
    c.send_text(r#"{"type":{"t":"join"},"id":8}"#).await;
    let r = c.recv().await;
    assert_eq!(
        (&r["id"], &r["code"]),
        (&json!(8), &json!("bad_request")),
        "{r}"
    );
}

// ---------------------------------------------------------------------------------------------
// Numbers are relayed as written (CONTRACT §5)
// ---------------------------------------------------------------------------------------------

/// The next text frame as the server wrote it.
async fn recv_raw(c: &mut crate::support::Client) -> String {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error")
        {
            Message::Text(t) => return t.to_string(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn numbers_are_relayed_as_written_and_frames_stay_within_the_limit() {
    const MAX: usize = 16384;
    let gw = Gateway::start().await;
    let (mut alice, mut bob, _) = gw.pair_in_room("alice", "r").await;
    let data = format!(
        "[{}1E+15,-0.0,12345678901234567890123]",
        "1e15,".repeat(3100)
    );
    let text = format!(r#"{{"type":"publish","room":"r","data":{data},"id":1}}"#);
    assert!(text.len() <= MAX && text.len() > 15_500, "{}", text.len());
    alice.send_text(&text).await;
    let frame = recv_raw(&mut bob).await;
    let written = data.replace("E+", "e");
    assert!(
        frame.contains(&format!(r#""data":{written},"#)),
        "data not as written: {}…",
        &frame[..200]
    );
    // The envelope: type, room, from, epoch, offset and ts around the data.
    let envelope = frame.len() - written.len();
    assert!(envelope < 200, "envelope of {envelope} bytes");
    assert!(frame.len() <= MAX + envelope);
    assert_eq!(
        recv_raw(&mut alice).await,
        r#"{"type":"ack","id":1,"offset":1}"#
    );
}

// ---------------------------------------------------------------------------------------------
// A reload does not refill buckets (CONTRACT §2: SIGHUP reloads limits)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_reload_does_not_hand_a_used_up_session_a_fresh_budget() {
    let gw = Gateway::start_with(|s| {
        s.rate_limit(1, 3);
    })
    .await;
    let mut alice = gw.connect("alice").await;
    alice.join("r").await;
    // Before the bucket was first used: the refills counted from here are at least the
    // gateway's, however busy the machine.
    let first_use = Instant::now();
    for id in 1..=3 {
        assert_eq!(publish(&mut alice, "r", json!(id), id).await["type"], "ack");
    }
    let r = publish(&mut alice, "r", json!(4), 4).await;
    assert_eq!(r["code"], "rate_limited", "{r}");

    let mut next = gw.settings.clone();
    next.rate_limit(2, 10);
    std::fs::write(&gw.config_path, next.toml()).unwrap();
    gw.sighup("configuration reloaded").await;

    // A fresh bucket would take all ten; the used-up one refills at 1/s meanwhile.
    let mut acked = 0u64;
    for id in 10..20 {
        if publish(&mut alice, "r", json!(id), id).await["type"] == "ack" {
            acked += 1;
        }
    }
    let refilled = first_use.elapsed().as_secs_f64().floor() as u64;
    assert!(
        acked <= 1 + refilled && acked < 10,
        "{acked} publishes passed {refilled}s after the bucket was empty"
    );
    // A new session gets the new burst.
    let mut bob = gw.connect("bob").await;
    bob.join("r").await;
    for id in 1..=10 {
        assert_eq!(publish(&mut bob, "r", json!(id), id).await["type"], "ack");
    }
}

// ---------------------------------------------------------------------------------------------
// History budget (rooms.history_max_bytes)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn over_the_history_budget_the_idle_room_loses_its_history_first() {
    let gw = Gateway::start_with(|s| {
        s.set("rooms", "history_max_bytes", json!("4KiB"))
            .set("rooms", "history_size", json!(4))
            .unlimited_rate();
    })
    .await;
    // "idle": one big message, then everyone leaves.
    let mut alice = gw.connect("alice").await;
    let idle_epoch = alice.join("idle").await["epoch"].clone();
    let big = "x".repeat(1500);
    assert_eq!(
        publish(&mut alice, "idle", json!(big), 1).await["type"],
        "ack"
    );
    alice
        .request(json!({"type":"leave","room":"idle"}), 2)
        .await;

    // "busy": a member publishing after it; its history alone fits the budget.
    let mut bob = gw.connect("bob").await;
    let busy_epoch = bob.join("busy").await["epoch"].clone();
    let text = "y".repeat(300);
    for id in 1..=4 {
        assert_eq!(
            publish(&mut bob, "busy", json!(text), id).await["type"],
            "ack"
        );
    }

    // The idle room's history went first: nobody was in it, so it started afresh.
    let j = join_since(&mut alice, "idle", &idle_epoch, 0, 3).await;
    assert_eq!(j["recovered"], false, "{j}");
    assert_ne!(j["epoch"], idle_epoch, "{j}");
    assert_eq!(j["offset"], 0, "{j}");
    // The busy room still recovers everything.
    let mut carol = gw.connect("carol").await;
    let j = join_since(&mut carol, "busy", &busy_epoch, 0, 4).await;
    assert_eq!(j["recovered"], true, "{j}");
    for offset in 1..=4 {
        let m = carol.recv_type("message").await;
        assert_eq!((&m["offset"], &m["data"]), (&json!(offset), &json!(text)));
    }
}
