//! A session in-process: it runs over one end of a `tokio::io::duplex` pipe with a tungstenite
//! client on the other, on tokio's paused clock (`start_paused`), so the timer rules (idle
//! 4000, token expiry 4001, flooding 1008) and the send queue (1013) are checked to the
//! millisecond. Every frame the session writes is also recorded with the instant it was
//! written ([`Tap`]): a client that must not answer pings cannot read (tungstenite answers
//! every ping it reads), yet the test sees when the close left. The black-box tests in
//! `tests/it` check the same rules on the real binary, with lower bounds only.
//!
//! Paused time auto-advances only when every task is idle, so `Gateway::at` (a sleep until
//! an instant) is also the barrier "the session has done everything due before then".

use super::*;
use std::pin::Pin;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::io::{DuplexStream, ReadBuf};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use crate::auth::{mint_hs256, MintClaims, RoomAccess};
use crate::broker::MemoryBroker;
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::ConnectionCounter;
use crate::live::Live;
use crate::metrics::Metrics;

const SECRET: &str = "in-process-test-secret-0123456789";
/// Bytes a pipe holds before its writer waits: far more than any test writes unread, except
/// where a test makes a client's pipe small on purpose.
const PIPE: usize = 1 << 20;
/// Longest any awaited event may take, in paused time: only reached when a test is wrong (the
/// clock then jumps here at once instead of hanging).
const HANG: Duration = Duration::from_secs(7 * 24 * 3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A gateway without a listener: the shared state sessions run on, and the instant it was
/// made (time 0 of a test).
struct Gateway {
    shared: Arc<Shared>,
    counter: Arc<ConnectionCounter>,
    start: Instant,
}

impl Gateway {
    /// A gateway on the default configuration (no leeway) changed by `f`.
    fn new(f: impl FnOnce(&mut Config)) -> Gateway {
        let mut cfg = Config::default();
        cfg.auth.hs_secret = SECRET.into();
        cfg.auth.leeway = Duration::ZERO;
        f(&mut cfg);
        let metrics = Arc::new(Metrics::new());
        let broker = Arc::new(MemoryBroker::for_tests());
        let hub = Hub::new(broker, metrics.clone(), cfg.limits.send_queue, 1);
        let shared = Arc::new(Shared {
            live: ArcSwap::from_pointee(Live::from_config(&cfg).expect("live settings")),
            hub,
            metrics,
            shutdown: CancellationToken::new(),
        });
        Gateway {
            shared,
            counter: Arc::default(),
            start: Instant::now(),
        }
    }

    /// Time since the gateway was made.
    fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    /// Waits until `t` after the gateway was made (and until every session is idle before it).
    async fn at(&self, t: Duration) {
        tokio::time::sleep_until(self.start + t).await;
    }

    /// What the handshake hands a session of `user` whose token expires at `expires_at`.
    fn accepted(&self, user: &str, expires_at: u64) -> Accepted {
        let user: Arc<str> = Arc::from(user);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Accepted {
            wire: Wire::Native,
            place: self.shared.hub.admit(&user, 10).expect("a place"),
            identity: Identity {
                user,
                name: None,
                rooms: RoomAccess::All,
                expires_at,
            },
            peer,
            permit: self.counter.acquire(peer.ip(), 100, 100).expect("a permit"),
        }
    }

    /// A session of `user` (token valid for a day) and its client, welcome read.
    async fn connect(&self, user: &str) -> Client {
        self.connect_with(user, unix_now() + 24 * 3600, PIPE).await
    }

    /// A session whose token expires at `expires_at`, over a pipe of `pipe` bytes each way.
    async fn connect_with(&self, user: &str, expires_at: u64, pipe: usize) -> Client {
        let (client_end, server_end) = tokio::io::duplex(pipe);
        let (tx, written) = mpsc::unbounded_channel();
        let tap = Tap {
            inner: server_end,
            buf: Vec::new(),
            out: tx,
        };
        let server = WebSocketStream::from_raw_socket(tap, Role::Server, None).await;
        let session = tokio::spawn(run(
            server,
            self.accepted(user, expires_at),
            self.shared.clone(),
        ));
        let ws = WebSocketStream::from_raw_socket(client_end, Role::Client, None).await;
        let mut client = Client {
            ws,
            written,
            session,
        };
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    /// A token for `user` signed with the gateway's secret.
    fn token(&self, user: &str, exp: u64) -> String {
        let claims = MintClaims {
            sub: user,
            exp,
            iat: unix_now(),
            name: None,
            rooms: None,
            iss: None,
            aud: None,
        };
        mint_hs256(SECRET.as_bytes(), &claims).expect("token")
    }

    /// Publishes `data` into `room` as the admin API does.
    async fn publish(&self, room: &str, data: Value) -> u64 {
        let room = RoomName::parse(room).expect("room name");
        let hub = self.shared.hub.clone();
        hub.publish(room, Arc::from("@server"), data, None)
            .await
            .expect("published")
    }

    /// `wsgate_slow_consumer_closes_total`.
    fn slow_closes(&self) -> u64 {
        let text = self.shared.metrics.encode();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("wsgate_slow_consumer_closes_total "))
            .expect("the slow consumer counter");
        line.parse().expect("a count")
    }
}

/// A frame as the session wrote it.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Text(String),
    Ping,
    Pong(Vec<u8>),
    Close(u16),
    Other(u8),
}

/// A frame and the instant the session wrote its last byte.
#[derive(Debug)]
struct Written {
    at: Instant,
    frame: Frame,
}

/// The session's end of the pipe: passes everything through and records each frame the
/// session writes (server frames are never masked).
struct Tap {
    inner: DuplexStream,
    buf: Vec<u8>,
    out: mpsc::UnboundedSender<Written>,
}

impl Tap {
    fn record(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Some((frame, used)) = parse_frame(&self.buf) {
            self.buf.drain(..used);
            let _ = self.out.send(Written {
                at: Instant::now(),
                frame,
            });
        }
    }
}

/// The first whole server frame in `buf`, and its length.
fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let head = buf.get(..2)?;
    assert_eq!(head[1] & 0x80, 0, "a server frame is never masked");
    let (len, at) = match head[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?;
    let frame = match head[0] & 0x0f {
        0x1 => Frame::Text(String::from_utf8_lossy(payload).into_owned()),
        0x8 if len >= 2 => Frame::Close(u16::from_be_bytes([payload[0], payload[1]])),
        0x8 => Frame::Close(1005),
        0x9 => Frame::Ping,
        0xa => Frame::Pong(payload.to_vec()),
        op => Frame::Other(op),
    };
    Some((frame, at + len))
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
        self.record(&data[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A tungstenite client on the other end of a session's pipe, and what the session wrote.
struct Client {
    ws: WebSocketStream<DuplexStream>,
    written: mpsc::UnboundedReceiver<Written>,
    session: JoinHandle<()>,
}

impl Client {
    /// The next text message, as JSON (reading answers any ping read on the way).
    async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("a message")
                .expect("open")
                .expect("no error");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// Sends one message (and any pong tungstenite owes).
    async fn send(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    async fn send_json(&mut self, v: Value) {
        self.send(Message::text(v.to_string())).await;
    }

    /// Sends `v` and returns the next text message: its answer, when nothing else is due.
    async fn request(&mut self, v: Value) -> Value {
        self.send_json(v).await;
        self.recv().await
    }

    async fn join(&mut self, room: &str) -> Value {
        let r = self.request(json!({"type":"join","room":room})).await;
        assert_eq!(r["type"], "joined", "{r}");
        r
    }

    /// The close code the client reads, after whatever comes before it.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("the close")
            {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Waits for the session to write a frame that `wanted` accepts; returns when it did
    /// (since `gw` was made) and the frame. Panics when the session closes first.
    async fn server_wrote(
        &mut self,
        gw: &Gateway,
        wanted: impl Fn(&Frame) -> bool,
    ) -> (Duration, Frame) {
        loop {
            let w = tokio::time::timeout(HANG, self.written.recv())
                .await
                .expect("the frame")
                .expect("the session ended first");
            if wanted(&w.frame) {
                return (w.at - gw.start, w.frame);
            }
            assert!(
                !matches!(w.frame, Frame::Close(_)),
                "closed at {:?} first: {:?}",
                w.at - gw.start,
                w.frame
            );
        }
    }

    /// The close the session writes (awaited): when, since `gw` was made, and its code.
    async fn server_close(&mut self, gw: &Gateway) -> (Duration, u16) {
        match self
            .server_wrote(gw, |f| matches!(f, Frame::Close(_)))
            .await
        {
            (at, Frame::Close(code)) => (at, code),
            _ => unreachable!(),
        }
    }

    /// What the session has written so far and not yet taken from here.
    fn written_now(&mut self, gw: &Gateway) -> Vec<(Duration, Frame)> {
        std::iter::from_fn(|| self.written.try_recv().ok())
            .map(|w| (w.at - gw.start, w.frame))
            .collect()
    }

    /// Asserts that the session has written no close so far.
    fn assert_open(&mut self, gw: &Gateway) {
        let written = self.written_now(gw);
        assert!(
            !written.iter().any(|(_, f)| matches!(f, Frame::Close(_))),
            "closed early, at {:?}: {written:?}",
            gw.elapsed()
        );
        assert!(!self.session.is_finished(), "the session ended early");
    }
}

// ---------------------------------------------------------------------------------------------
// Idle: no pong or data within `idle_timeout` → 4000 (CONTRACT §2, §6)
// ---------------------------------------------------------------------------------------------

/// Pings every 10 s, closes after 25 s without a pong or data: not a multiple of the ping
/// interval, so a close that waited for the next ping would come late.
fn idle_config(cfg: &mut Config) {
    cfg.server.ping_interval = secs(10);
    cfg.server.idle_timeout = secs(25);
}

#[tokio::test(start_paused = true)]
async fn idle_closes_with_4000_exactly_idle_timeout_after_the_last_pong() {
    let gw = Gateway::new(idle_config);
    let mut c = gw.connect("idle").await;
    // The first ping, answered.
    let ping = tokio::time::timeout(HANG, c.ws.next()).await.unwrap();
    assert!(matches!(ping, Some(Ok(Message::Ping(_)))), "{ping:?}");
    assert_eq!(gw.elapsed(), secs(10));
    c.ws.flush().await.expect("the pong sent");
    // From here on the client reads nothing, so it answers no ping.
    gw.at(secs(35) - ms(1)).await;
    c.assert_open(&gw);
    assert_eq!(c.server_close(&gw).await, (secs(35), close::IDLE));
    assert_eq!(c.close_code().await, Some(close::IDLE));
}

#[tokio::test(start_paused = true)]
async fn a_client_pong_moves_the_idle_close() {
    let gw = Gateway::new(idle_config);
    let mut c = gw.connect("idle").await;
    // An unsolicited pong (a one-way heartbeat, RFC 6455 §5.5.3) counts like an answer.
    gw.at(secs(7)).await;
    c.send(Message::Pong(Default::default())).await;
    gw.at(secs(32) - ms(1)).await;
    c.assert_open(&gw);
    assert_eq!(c.server_close(&gw).await, (secs(32), close::IDLE));
}

#[tokio::test(start_paused = true)]
async fn a_client_message_moves_the_idle_close() {
    let gw = Gateway::new(idle_config);
    let mut c = gw.connect("idle").await;
    gw.at(ms(12_500)).await;
    c.send_json(json!({"type":"join","room":"r"})).await;
    gw.at(ms(37_500) - ms(1)).await;
    c.assert_open(&gw);
    assert_eq!(c.server_close(&gw).await, (ms(37_500), close::IDLE));
}

#[tokio::test(start_paused = true)]
async fn client_pings_do_not_keep_a_connection_open() {
    let gw = Gateway::new(idle_config);
    let mut c = gw.connect("pinger").await;
    for at in [secs(5), secs(15), secs(25) - ms(1)] {
        gw.at(at).await;
        c.send(Message::Ping(b"still here".to_vec().into())).await;
        // Read and answered at once, the connection still open.
        let pong = Frame::Pong(b"still here".to_vec());
        assert_eq!(c.server_wrote(&gw, |f| *f == pong).await.0, at);
    }
    c.assert_open(&gw);
    assert_eq!(c.server_close(&gw).await, (secs(25), close::IDLE));
}

// ---------------------------------------------------------------------------------------------
// Token expiry: `exp` + `auth.leeway` → 4001 (CONTRACT §2, §6)
// ---------------------------------------------------------------------------------------------

/// A 30 s leeway; idle and ping timers far beyond the tests' horizon.
fn expiry_config(cfg: &mut Config) {
    cfg.auth.leeway = secs(30);
    cfg.server.ping_interval = secs(3600);
    cfg.server.idle_timeout = secs(3600);
}

/// The instants (since the gateway was made) a token's deadline may be at when the session
/// read the wall clock between the readings `wall` at `read_at`: the wall clock does not
/// follow paused time, and has whole seconds. Almost always one instant; two when a second
/// ended between the readings.
fn deadlines(read_at: Duration, exp: u64, leeway: u64, wall: (u64, u64)) -> Vec<Duration> {
    (wall.0..=wall.1)
        .map(|now| read_at + secs(exp + leeway - now))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_token_closes_its_session_with_4001_at_exp_plus_leeway() {
    let gw = Gateway::new(expiry_config);
    let before = unix_now();
    let exp = before + 100;
    let mut c = gw.connect_with("alice", exp, PIPE).await;
    let due = deadlines(Duration::ZERO, exp, 30, (before, unix_now()));
    gw.at(due[0] - ms(1)).await;
    c.assert_open(&gw);
    let (at, code) = c.server_close(&gw).await;
    assert!(due.contains(&at), "closed at {at:?}, due at {due:?}");
    assert_eq!(code, close::EXPIRED);
    assert_eq!(c.close_code().await, Some(close::EXPIRED));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_moves_the_token_expiry() {
    let gw = Gateway::new(expiry_config);
    let exp = unix_now() + 100;
    let mut c = gw.connect_with("alice", exp, PIPE).await;
    gw.at(secs(60)).await;
    let before = unix_now();
    let later = before + 200;
    let token = gw.token("alice", later);
    let r = c
        .request(json!({"type":"refresh","token":token,"id":1}))
        .await;
    assert_eq!(r, json!({"type":"refreshed","expires_at":later,"id":1}));
    let due = deadlines(secs(60), later, 30, (before, unix_now()));
    // Past the first token's deadline (130 s at most) and up to the new one: open.
    gw.at(due[0] - ms(1)).await;
    c.assert_open(&gw);
    let (at, code) = c.server_close(&gw).await;
    assert!(due.contains(&at), "closed at {at:?}, due at {due:?}");
    assert_eq!(code, close::EXPIRED);
}

// ---------------------------------------------------------------------------------------------
// Flooding: past a rate limit continuously for 5 s → 1008 (CONTRACT §4, §5)
// ---------------------------------------------------------------------------------------------

/// One request a second, no burst beyond it; no idle or ping timer in the way.
fn flood_config(cfg: &mut Config) {
    cfg.limits.messages_per_second = 1;
    cfg.limits.burst = 1;
    cfg.limits.commands_per_second = 1;
    cfg.limits.command_burst = 1;
    cfg.server.ping_interval = secs(3600);
    cfg.server.idle_timeout = secs(3600);
}

/// How a request of a flood was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Let through (an ack, or `refreshed`).
    Done,
    Limited,
    Closed(u16),
}

/// Sends `request(id)` at each of `times` (ms since the gateway was made) and reads its
/// answer, until the session closes; returns each request's time and answer.
async fn flood(
    gw: &Gateway,
    c: &mut Client,
    times: impl IntoIterator<Item = u64>,
    request: impl Fn(u64) -> Value,
) -> Vec<(u64, Answer)> {
    let mut answers = Vec::new();
    for (id, t) in (1..).zip(times) {
        gw.at(ms(t)).await;
        c.send_json(request(id)).await;
        let answer = match tokio::time::timeout(HANG, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["id"], id, "{v}");
                match v["type"].as_str() {
                    Some("ack" | "refreshed") => Answer::Done,
                    _ if v["code"] == "rate_limited" => Answer::Limited,
                    _ => panic!("at {t} ms: {v}"),
                }
            }
            Some(Ok(Message::Close(Some(f)))) => Answer::Closed(f.code.into()),
            other => panic!("at {t} ms: {other:?}"),
        };
        assert_eq!(gw.elapsed(), ms(t), "answered at once");
        answers.push((t, answer));
        if let Answer::Closed(_) = answer {
            break;
        }
    }
    answers
}

/// What a flood at `times` is answered, on a bucket of one request a second: one let through
/// per whole second, the rest limited, and 1008 for the request at `closed_at`.
fn expected_flood(times: &[u64], closed_at: u64) -> Vec<(u64, Answer)> {
    let mut next_allowed = 0;
    let mut answers = Vec::new();
    for &t in times.iter().take_while(|t| **t <= closed_at) {
        let answer = if t == closed_at {
            Answer::Closed(close::POLICY)
        } else if t >= next_allowed {
            next_allowed = t + 1000;
            Answer::Done
        } else {
            Answer::Limited
        };
        answers.push((t, answer));
    }
    answers
}

fn publish_req(id: u64) -> Value {
    json!({"type":"publish","room":"r","data":id,"id":id})
}

/// Every 100 ms from 0 to `to` ms.
fn every_100ms(from: u64, to: u64) -> Vec<u64> {
    (from..=to).step_by(100).collect()
}

#[tokio::test(start_paused = true)]
async fn publishing_past_the_rate_limit_for_five_seconds_closes_with_1008() {
    let gw = Gateway::new(flood_config);
    let mut c = gw.connect("flooder").await;
    c.join("r").await;
    // Limited from 100 ms on; 4.999 s of it is not enough, 5 s is.
    let mut times = every_100ms(0, 5000);
    times.extend([5099, 5100, 5200]);
    let answers = flood(&gw, &mut c, times.clone(), publish_req).await;
    assert_eq!(answers, expected_flood(&times, 5100));
    assert_eq!(c.close_code().await, None, "the close was read above");
    c.session.await.unwrap();
}

/// A refusal 1 s after the last one starts a new flood; the requests let through meanwhile
/// (one per refill) do not end one.
#[tokio::test(start_paused = true)]
async fn a_one_second_pause_ends_a_flood() {
    for (pause_to, closed_at) in [(2899, 5100), (2900, 7900)] {
        let gw = Gateway::new(flood_config);
        let mut c = gw.connect("flooder").await;
        c.join("r").await;
        // Limited from 100 ms to 1900 ms, one let through at 2 s, then a pause until
        // `pause_to`: 999 ms or 1 s after the last refusal.
        let mut times = every_100ms(0, 2000);
        times.push(pause_to);
        times.extend(every_100ms(3000, 9000));
        let answers = flood(&gw, &mut c, times.clone(), publish_req).await;
        assert_eq!(
            answers,
            expected_flood(&times, closed_at),
            "pause to {pause_to}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn commands_past_their_bucket_for_five_seconds_close_with_1008() {
    let gw = Gateway::new(flood_config);
    let mut c = gw.connect("flooder").await;
    let token = gw.token("flooder", unix_now() + 3600);
    // Valid refreshes: each one let through resets the count of refusals in a row, so only
    // the flood itself can close the connection.
    let mut times = every_100ms(0, 5000);
    times.extend([5099, 5100, 5200]);
    let answers = flood(
        &gw,
        &mut c,
        times.clone(),
        |id| json!({"type":"refresh","token":token,"id":id}),
    )
    .await;
    assert_eq!(answers, expected_flood(&times, 5100));
}

// ---------------------------------------------------------------------------------------------
// Slow consumers: a full send queue → 1013 (CONTRACT §2, §6)
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_closed_with_1013_when_its_queue_is_full() {
    const QUEUE: usize = 4;
    let gw = Gateway::new(|cfg| cfg.limits.send_queue = QUEUE);
    let mut reader = gw.connect("reader").await;
    reader.join("r").await;
    // Its pipe holds about four messages; it reads nothing past `joined`.
    let mut slow = gw.connect_with("slow", unix_now() + 3600, 4096).await;
    slow.join("r").await;
    assert_eq!(reader.recv().await["type"], "presence");

    let text = "x".repeat(1000);
    let mut published = 0u64;
    while gw.slow_closes() == 0 {
        assert!(published < 100, "never closed");
        // One message a millisecond: every session has written what it could before the next.
        gw.at(ms(published + 1)).await;
        published += 1;
        assert_eq!(gw.publish("r", json!(text)).await, published);
        let m = reader.recv().await;
        assert_eq!(
            (&m["type"], &m["offset"]),
            (&json!("message"), &json!(published))
        );
    }
    let closed_at = gw.elapsed();
    // The slow client now reads: what its pipe and socket buffer held, then the close. The
    // queue's QUEUE messages were dropped; the one that found it full closed the session.
    let mut offsets = Vec::new();
    let code = loop {
        match tokio::time::timeout(HANG, slow.ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                offsets.push(m["offset"].as_u64().expect("a message"));
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(close::SLOW));
    let written = published - 1 - QUEUE as u64;
    assert!(written > 0, "it was written to until its socket was full");
    assert_eq!(offsets, (1..=written).collect::<Vec<_>>());
    assert_eq!(slow.server_close(&gw).await, (closed_at, close::SLOW));
    slow.session.await.unwrap();
    assert_eq!(gw.shared.hub.session_count(), 1);

    // The reader got everything, sees the slow client leave, and goes on getting messages.
    assert_eq!(
        reader.recv().await,
        json!({"type":"presence","room":"r","event":"leave","user":"slow"})
    );
    let after = gw.publish("r", json!("after")).await;
    let m = reader.recv().await;
    assert_eq!((&m["data"], &m["offset"]), (&json!("after"), &json!(after)));
}

// ---------------------------------------------------------------------------------------------
// Timers under a ping flood
// ---------------------------------------------------------------------------------------------

/// Pings [`PingFlood`] serves before it gives up and ends the stream: over a hundred times
/// what a session reads before a due timer wins (tokio drives its timers at least every 61
/// task polls, each of at most 128 reads, one ping each).
const FLOOD_PINGS: usize = 1_000_000;

/// A client socket that is always readable: an endless run of masked, empty pings, until the
/// session writes a close frame (or [`FLOOD_PINGS`] were read: the session would never close).
/// Like a real socket it takes part in tokio's cooperative budget (a task that has read a lot
/// gets `Pending` and must yield). What the session writes is kept.
struct PingFlood {
    sent: usize,
    written: Arc<std::sync::Mutex<Vec<u8>>>,
    /// How much of `written` is whole frames, read already.
    parsed: usize,
    /// Set once the session wrote a close frame.
    closed: bool,
    /// Told of every write.
    wrote: Arc<tokio::sync::Notify>,
}

const PING: [u8; 6] = [0x89, 0x80, 1, 2, 3, 4];

/// The code of the first close frame in what the session wrote.
fn close_in(mut written: &[u8]) -> Option<u16> {
    while let Some((frame, used)) = parse_frame(written) {
        written = &written[used..];
        if let Frame::Close(code) = frame {
            return Some(code);
        }
    }
    None
}

impl AsyncRead for PingFlood {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        coop.made_progress();
        if self.closed || self.sent >= FLOOD_PINGS * PING.len() {
            return Poll::Ready(Ok(())); // the end of the stream
        }
        // A ping per read: each read takes from the task's budget, as on a real socket.
        for _ in 0..buf.remaining().min(PING.len()) {
            let at = self.sent % PING.len();
            buf.put_slice(&PING[at..at + 1]);
            self.sent += 1;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PingFlood {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = self.written.clone();
        let mut written = written.lock().unwrap();
        written.extend_from_slice(data);
        while let Some((frame, used)) = parse_frame(&written[self.parsed..]) {
            self.parsed += used;
            self.closed |= matches!(frame, Frame::Close(_));
        }
        self.wrote.notify_one();
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs a session over a socket that never stops being readable; once its token's expiry is
/// due, the session must close it (4001) rather than go on reading. Paused time never
/// advances by itself here (the session always has work): the test moves it.
#[tokio::test(start_paused = true)]
async fn a_socket_that_is_always_readable_does_not_starve_the_expiry() {
    let gw = Gateway::new(|_| {});
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let wrote = Arc::new(tokio::sync::Notify::new());
    let socket = PingFlood {
        sent: 0,
        written: written.clone(),
        parsed: 0,
        closed: false,
        wrote: wrote.clone(),
    };
    let ws = WebSocketStream::from_raw_socket(socket, Role::Server, None).await;
    let session = tokio::spawn(run(
        ws,
        gw.accepted("flooder", unix_now() + 10),
        gw.shared.clone(),
    ));
    // The welcome is written once the session's timers are set.
    wrote.notified().await;
    tokio::time::advance(secs(10)).await;
    session.await.unwrap();
    let written = written.lock().unwrap();
    assert_eq!(close_in(&written), Some(close::EXPIRED));
}

#[test]
fn far_future_expiry_does_not_overflow() {
    let at = expiry_instant(u64::MAX, u64::MAX);
    assert!(at > Instant::now() + Duration::from_secs(365 * 24 * 3600));
    let soon = expiry_instant(unix_now() + 10, 5);
    assert!(soon <= Instant::now() + Duration::from_secs(16));
}
