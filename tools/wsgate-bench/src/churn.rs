//! `wsgate-bench --churn`: a soak load that opens and closes connections at a steady rate for
//! `--duration`, to show that nothing piles up in the gateway over hours of churn.
//!
//! Every `1/--connect-rate` a client starts (while fewer than `--open` are alive): it connects
//! (wss, its own token), joins `--rooms-per-client` of `--rooms` rooms, publishes (all clients
//! together about `--publish-rate` messages/s), halfway through its life leaves one room and
//! joins another, then leaves its rooms and closes. A share `--misbehave` of the clients
//! misbehave instead: they stop reading, send garbage (text that is not the protocol, or a
//! binary frame), drop the TCP connection without a close, or give up in the middle of the
//! handshake.
//!
//! Well-behaved clients check the offsets of every room while joined: the first message after
//! `joined` is `joined.offset + 1`, their own publishes are accounted by their `ack`, and every
//! offset up to the highest one seen must have arrived exactly once by the time `left` comes
//! back (a hole is a lost message, a repeat a duplicate). Latency is publish → delivery.
//!
//! Every `--every` (a minute) one JSON line goes to stdout and is appended to `--json`: the
//! gateway's RSS and open fds (`/proc/<--server-pid>`, else its `process_*` metrics), its
//! `wsgate_runtime_tasks`, `wsgate_connections` and `wsgate_rooms` (scraped from
//! `--metrics-url`), the interval's p50/p99 latency, errors by kind and lost messages. After the
//! load, clients close and the gateway is polled for `--settle` until it is back at the
//! baseline taken before the load; the last line is a summary with the verdict.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::{now_ns, scan_u64, BenchArgs, Target, Ws};

/// The churn mode's own flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ChurnArgs {
    /// Churn: connections started per second
    #[arg(long, default_value_t = 200.0)]
    pub connect_rate: f64,
    /// Churn: connections alive at a time (target)
    #[arg(long, default_value_t = 2000)]
    pub open: usize,
    /// Churn: publishes per second over all clients
    #[arg(long, default_value_t = 500.0)]
    pub publish_rate: f64,
    /// Churn: rooms
    #[arg(long, default_value_t = 200)]
    pub rooms: usize,
    /// Churn: rooms each client joins
    #[arg(long, default_value_t = 3)]
    pub rooms_per_client: usize,
    /// Churn: share of clients that misbehave (0..1)
    #[arg(long, default_value_t = 0.1)]
    pub misbehave: f64,
    /// Churn: interval of the JSON lines
    #[arg(long, default_value = "60s")]
    pub every: humantime::Duration,
    /// Churn: how long to wait after the load for the gateway to come back to its baseline
    #[arg(long, default_value = "60s")]
    pub settle: humantime::Duration,
    /// Churn: the gateway's admin metrics
    #[arg(long, default_value = "http://127.0.0.1:9090/metrics")]
    pub metrics_url: String,
    /// Churn: allowed RSS growth over the baseline after the load, in MiB
    #[arg(long, default_value_t = 64.0)]
    pub rss_margin_mib: f64,
    /// Churn: allowed open-fd and task difference from the baseline after the load
    #[arg(long, default_value_t = 8.0)]
    pub count_margin: f64,
}

/// Counters shared by the clients; the reporter reads and resets the interval's ones.
struct Stats {
    epoch: Instant,
    alive: AtomicUsize,
    started: AtomicU64,
    connected: AtomicU64,
    completed: AtomicU64,
    publishes: AtomicU64,
    deliveries: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Closes the misbehaving clients saw (expected: not errors).
    misbehaved: Mutex<BTreeMap<String, u64>>,
    hists: Vec<Mutex<Histogram<u64>>>,
}

const SHARDS: usize = 16;
const BATCH: usize = 16;

impl Stats {
    fn error(&self, kind: &str) {
        bump(&self.errors, kind);
    }
    fn record(&self, shard: usize, samples: &mut Vec<u64>) {
        if let Ok(mut h) = self.hists[shard % SHARDS].lock() {
            for v in samples.drain(..) {
                h.saturating_record(v);
            }
        }
    }
    /// The latency samples since the last call (µs).
    fn take_hist(&self) -> Histogram<u64> {
        let mut all = new_hist();
        for h in &self.hists {
            if let Ok(mut h) = h.lock() {
                let _ = all.add(&*h);
                h.reset();
            }
        }
        all
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, kind: &str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(kind.chars().take(60).collect()).or_insert(0) += 1;
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s: fixed bounds that are always valid.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// SplitMix64: enough randomness for picking rooms and timings, reproducible per client.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// `mean` scaled by a uniform factor in [0.5, 1.5).
    fn around(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(0.5 + self.unit())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Good,
    /// Joins rooms, then never reads again; dropped after three lifetimes.
    Stall,
    /// Sends text that is not the protocol (→ 1008) or a binary frame (→ 1003).
    Garbage,
    /// Drops the TCP connection without a close frame.
    Drop,
    /// Completes TLS, then sends nothing (no HTTP upgrade).
    HalfHandshake,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Good => "good",
            Kind::Stall => "stall",
            Kind::Garbage => "garbage",
            Kind::Drop => "drop",
            Kind::HalfHandshake => "half_handshake",
        }
    }
}

struct Plan {
    rooms: usize,
    rooms_per_client: usize,
    lifetime: Duration,
    publish_every: Duration,
    msg_bytes: usize,
}

/// A room this client is in (or joining/leaving).
#[derive(Default)]
struct RoomTrack {
    /// The next offset expected in order; 0 until `joined`.
    next: u64,
    /// Offsets seen above `next` (an own publish's ack may come after later messages).
    ahead: BTreeSet<u64>,
    joined: bool,
    /// `leave` sent: no more publishes here, messages still count until `left`.
    leaving: bool,
}

impl RoomTrack {
    /// Takes one offset; false when it was seen already.
    fn see(&mut self, offset: u64) -> bool {
        if offset < self.next || !self.ahead.insert(offset) {
            return false;
        }
        while self.ahead.remove(&self.next) {
            self.next += 1;
        }
        true
    }
    /// Offsets below the highest one seen that never came.
    fn holes(&self) -> u64 {
        match self.ahead.last() {
            Some(max) => (max + 1 - self.next) - self.ahead.len() as u64,
            None => 0,
        }
    }
}

struct Good<'a> {
    ws: Ws,
    st: &'a Stats,
    rng: Rng,
    shard: usize,
    rooms: HashMap<String, RoomTrack>,
    /// Publish request ids → room.
    pending: HashMap<u64, String>,
    next_id: u64,
    samples: Vec<u64>,
    pad: String,
}

impl Good<'_> {
    async fn send(&mut self, v: Value) -> Result<(), String> {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .map_err(|e| format!("send: {}", short(&e.to_string())))
    }

    async fn join(&mut self, room: String) -> Result<(), String> {
        self.next_id += 1;
        self.send(json!({"type":"join","room":room,"id":self.next_id}))
            .await?;
        self.rooms.insert(room, RoomTrack::default());
        Ok(())
    }

    async fn leave(&mut self, room: &str) -> Result<(), String> {
        if let Some(t) = self.rooms.get_mut(room) {
            t.leaving = true;
        }
        self.next_id += 1;
        self.send(json!({"type":"leave","room":room,"id":self.next_id}))
            .await
    }

    async fn publish(&mut self) -> Result<(), String> {
        let joined: Vec<&String> = self
            .rooms
            .iter()
            .filter(|(_, t)| t.joined && !t.leaving)
            .map(|(r, _)| r)
            .collect();
        if joined.is_empty() {
            return Ok(());
        }
        let room = joined[self.rng.below(joined.len())].clone();
        self.next_id += 1;
        self.pending.insert(self.next_id, room.clone());
        let ts = now_ns(self.st.epoch);
        let msg = format!(
            r#"{{"type":"publish","room":"{room}","id":{},"data":{{"t0":{ts},"pad":"{}"}}}}"#,
            self.next_id, self.pad
        );
        self.ws
            .send(Message::text(msg))
            .await
            .map_err(|e| format!("send: {}", short(&e.to_string())))?;
        self.st.publishes.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Handles one server frame.
    fn on_text(&mut self, t: &str) {
        // The bulk are `message` frames: read without building a JSON tree.
        if t.starts_with(r#"{"type":"message","#) {
            if let (Some(room), Some(offset)) = (scan_str(t, "\"room\""), scan_u64(t, "\"offset\""))
            {
                self.on_message(room, offset, scan_u64(t, "\"t0\""));
                return;
            }
        }
        let Ok(v) = serde_json::from_str::<Value>(t) else {
            self.st.error("bad_json_from_server");
            return;
        };
        let room = v["room"].as_str().unwrap_or_default();
        match v["type"].as_str().unwrap_or_default() {
            "message" => match v["offset"].as_u64() {
                Some(offset) => self.on_message(room, offset, v["data"]["t0"].as_u64()),
                None => self.st.error("message_without_offset"),
            },
            "ack" => {
                let id = v["id"].as_u64().unwrap_or(0);
                match (self.pending.remove(&id), v["offset"].as_u64()) {
                    (Some(room), Some(offset)) => {
                        if let Some(track) = self.rooms.get_mut(&room).filter(|t| t.joined) {
                            if !track.see(offset) {
                                self.st.error("ack_offset_seen_twice");
                            }
                        }
                    }
                    _ => self.st.error("unexpected_ack"),
                }
            }
            "joined" => match (self.rooms.get_mut(room), v["offset"].as_u64()) {
                (Some(track), Some(offset)) if !track.joined => {
                    track.joined = true;
                    track.next = offset + 1;
                }
                _ => self.st.error("unexpected_joined"),
            },
            "left" => match self.rooms.remove(room) {
                Some(track) => self.settle(&track),
                None => self.st.error("unexpected_left"),
            },
            "error" => {
                let code = v["code"].as_str().unwrap_or("unknown");
                let publish = v["id"]
                    .as_u64()
                    .and_then(|id| self.pending.remove(&id))
                    .is_some();
                let what = if publish { "publish" } else { "command" };
                self.st.error(&format!("error_{code}_{what}"));
            }
            "welcome" | "presence" => {}
            other => self.st.error(&format!("unknown_type_{}", short(other))),
        }
    }

    /// A `message`: its offset checked against the room's, its latency recorded.
    fn on_message(&mut self, room: &str, offset: u64, sent_ns: Option<u64>) {
        let Some(track) = self.rooms.get_mut(room).filter(|t| t.joined) else {
            self.st.error("message_outside_membership");
            return;
        };
        if track.see(offset) {
            self.st.deliveries.fetch_add(1, Relaxed);
        } else {
            self.st.duplicates.fetch_add(1, Relaxed);
            self.st.error("duplicate");
        }
        if let Some(sent) = sent_ns {
            let now = now_ns(self.st.epoch);
            self.samples.push((now.saturating_sub(sent) / 1000).max(1));
            if self.samples.len() >= BATCH {
                self.st.record(self.shard, &mut self.samples);
            }
        }
    }

    /// A room's membership ended: whatever is missing below the highest offset is lost.
    fn settle(&self, track: &RoomTrack) {
        let holes = track.holes();
        if holes > 0 {
            self.st.lost.fetch_add(holes, Relaxed);
        }
    }

    /// Reads until `pred` holds for the client's state or `deadline` passes.
    async fn read_until(
        &mut self,
        deadline: tokio::time::Instant,
        pred: impl Fn(&Self) -> bool,
        what: &str,
    ) -> Result<(), String> {
        while !pred(self) {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(format!("timeout_{what}")),
                Ok(Some(Ok(Message::Text(t)))) => self.on_text(&t),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Err(format!(
                        "closed_{}",
                        f.map(|f| u16::from(f.code)).unwrap_or(1005)
                    ))
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("read: {}", short(&e.to_string()))),
                Ok(None) => return Err("eof".into()),
            }
        }
        Ok(())
    }
}

/// The string value of `"key":"..."` in a JSON text (room names need no unescaping).
fn scan_str<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let at = text.find(key)? + key.len();
    let rest = text[at..]
        .trim_start_matches([' ', ':'])
        .strip_prefix('"')?;
    rest.split('"').next()
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn pick_rooms(rng: &mut Rng, rooms: usize, n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    while out.len() < n.min(rooms) {
        let r = format!("churn-{}", rng.below(rooms));
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

async fn good_client(
    ws: Ws,
    st: &Stats,
    mut rng: Rng,
    shard: usize,
    plan: &Plan,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut c = Good {
        ws,
        st,
        rng: Rng(rng.next_u64()),
        shard,
        rooms: HashMap::new(),
        pending: HashMap::new(),
        next_id: 0,
        samples: Vec::new(),
        pad: "x".repeat(plan.msg_bytes.saturating_sub(40)),
    };
    let r = good_life(&mut c, &mut rng, plan, stop).await;
    st.record(shard, &mut c.samples);
    r
}

async fn good_life(
    c: &mut Good<'_>,
    rng: &mut Rng,
    plan: &Plan,
    stop: &CancellationToken,
) -> Result<(), String> {
    let start = tokio::time::Instant::now();
    let end = start + rng.around(plan.lifetime);
    let mut switch_at = Some(start + (end - start) / 2);
    for room in pick_rooms(rng, plan.rooms, plan.rooms_per_client) {
        c.join(room).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    c.read_until(deadline, |c| c.rooms.values().all(|t| t.joined), "join")
        .await?;
    let mut next_pub = start + plan.publish_every.mul_f64(rng.unit());
    loop {
        let wake = switch_at.map_or(end, |s| s.min(end)).min(next_pub);
        tokio::select! {
            m = c.ws.next() => match m {
                Some(Ok(Message::Text(t))) => c.on_text(&t),
                Some(Ok(Message::Close(f))) => {
                    return Err(format!("closed_{}", f.map(|f| u16::from(f.code)).unwrap_or(1005)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {}", short(&e.to_string()))),
                None => return Err("eof".into()),
            },
            _ = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if now >= end {
                    break;
                }
                if switch_at.is_some_and(|s| now >= s) {
                    switch_at = None;
                    // Leave one room and join another (one this client is not in).
                    let old = c.rooms.keys().next().cloned();
                    if let Some(old) = old {
                        c.leave(&old).await?;
                        let new = pick_rooms(rng, plan.rooms, plan.rooms_per_client + 1)
                            .into_iter()
                            .find(|r| !c.rooms.contains_key(r));
                        if let Some(new) = new {
                            c.join(new).await?;
                        }
                    }
                }
                if now >= next_pub {
                    next_pub += plan.publish_every;
                    c.publish().await?;
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    // Leave every room: `left` settles each room's offsets. Acks come before `left`.
    // (A room left halfway through may still wait for its `left`: it is not left twice.)
    let rooms: Vec<String> = c
        .rooms
        .iter()
        .filter(|(_, t)| !t.leaving)
        .map(|(r, _)| r.clone())
        .collect();
    for room in &rooms {
        c.leave(room).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    c.read_until(deadline, |c| c.rooms.is_empty(), "leave")
        .await?;
    c.ws.close(None)
        .await
        .map_err(|e| format!("close: {}", short(&e.to_string())))?;
    // The server's close frame, then the end of the stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => return Err("timeout_close".into()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => return Ok(()),
        }
    }
}

/// A misbehaving client; returns what it saw (for the report, not an error).
async fn bad_client(
    mut ws: Ws,
    kind: Kind,
    mut rng: Rng,
    plan: &Plan,
    stop: &CancellationToken,
) -> String {
    let rooms = pick_rooms(&mut rng, plan.rooms, plan.rooms_per_client * 2);
    for (i, room) in rooms.iter().enumerate() {
        let req = json!({"type":"join","room":room,"id":i}).to_string();
        if ws.send(Message::text(req)).await.is_err() {
            return "send_failed".into();
        }
    }
    match kind {
        Kind::Stall => {
            // Never reads: the gateway's queue, pings and idle timeout deal with it.
            tokio::select! {
                _ = tokio::time::sleep(rng.around(plan.lifetime * 3)) => {}
                _ = stop.cancelled() => {}
            }
            "stall_dropped".into()
        }
        Kind::Drop => {
            let until = tokio::time::Instant::now() + rng.around(plan.lifetime);
            loop {
                tokio::select! {
                    m = ws.next() => if !matches!(m, Some(Ok(_))) {
                        return "drop_closed_first".into();
                    },
                    _ = tokio::time::sleep_until(until) => break,
                    _ = stop.cancelled() => break,
                }
            }
            // Dropping the stream ends TCP with no close frame and no TLS close_notify.
            drop(ws);
            "drop".into()
        }
        _ => {
            tokio::time::sleep(rng.around(plan.lifetime / 4)).await;
            let binary = rng.below(2) == 0;
            let sent = if binary {
                ws.send(Message::binary(vec![0xde, 0xad, 0xbe, 0xef])).await
            } else {
                let mut r = Ok(());
                for i in 0..12 {
                    let junk = match i % 3 {
                        0 => "not json at all {".to_string(),
                        1 => json!({"type":"publish","room":"no such room!"}).to_string(),
                        _ => json!({"type":"nope","id":i}).to_string(),
                    };
                    r = ws.send(Message::text(junk)).await;
                    if r.is_err() {
                        break;
                    }
                }
                r
            };
            if sent.is_err() {
                return "garbage_send_failed".into();
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Err(_) => return "garbage_not_closed".into(),
                    Ok(Some(Ok(Message::Close(f)))) => {
                        return format!(
                            "garbage_closed_{}",
                            f.map(|f| u16::from(f.code)).unwrap_or(1005)
                        )
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => return "garbage_dropped".into(),
                }
            }
        }
    }
}

async fn client(
    idx: u64,
    target: Arc<Target>,
    st: Arc<Stats>,
    plan: Arc<Plan>,
    misbehave: f64,
    stop: CancellationToken,
) {
    let mut rng = Rng(idx.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5851_F42D);
    let kind = if rng.unit() < misbehave {
        [Kind::Stall, Kind::Garbage, Kind::Drop, Kind::HalfHandshake][rng.below(4)]
    } else {
        Kind::Good
    };
    let sub = format!("churn-{idx}");
    if kind == Kind::HalfHandshake {
        let outcome = match target.tls_only(idx as usize).await {
            // Silent after TLS: the gateway's handshake timeout ends it (or the load does).
            Ok(mut tls) => {
                let mut buf = [0u8; 256];
                tokio::select! {
                    r = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf)) => match r {
                        Ok(Ok(0)) | Ok(Err(_)) => "half_handshake:closed_by_gateway",
                        Ok(Ok(_)) => "half_handshake:answered",
                        Err(_) => "half_handshake:not_closed",
                    },
                    _ = stop.cancelled() => "half_handshake:dropped",
                }
                .to_string()
            }
            Err(e) => {
                st.error(&format!("connect_{}", short(&e)));
                return;
            }
        };
        bump(&st.misbehaved, &outcome);
        return;
    }
    let ws = match target.connect(idx as usize, &sub).await {
        Ok(ws) => ws,
        Err(e) => {
            st.error(&format!("connect_{}", short(&e)));
            return;
        }
    };
    st.connected.fetch_add(1, Relaxed);
    if kind == Kind::Good {
        match good_client(ws, &st, rng, idx as usize, &plan, &stop).await {
            Ok(()) => {
                st.completed.fetch_add(1, Relaxed);
            }
            Err(e) => st.error(&e),
        }
    } else {
        let outcome = bad_client(ws, kind, rng, &plan, &stop).await;
        bump(&st.misbehaved, &format!("{}:{outcome}", kind.name()));
    }
}

/// Keeps `alive` right while a client task runs.
struct AliveGuard(Arc<Stats>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Relaxed);
    }
}

/// What the gateway looks like from outside at one moment.
#[derive(Debug, Clone, Default)]
struct Probe {
    rss_mib: Option<f64>,
    fds: Option<f64>,
    tasks: Option<f64>,
    connections: Option<f64>,
    rooms: Option<f64>,
    metrics: BTreeMap<String, f64>,
}

impl Probe {
    fn json(&self) -> Value {
        json!({
            "rss_mib": self.rss_mib.map(round2),
            "fds": self.fds,
            "tasks": self.tasks,
            "connections": self.connections,
            "rooms": self.rooms,
        })
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A plain HTTP GET of the admin metrics (the admin listener speaks HTTP/1.1, no TLS).
async fn scrape(url: &str) -> Result<BTreeMap<String, f64>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--metrics-url: {e}"))?;
    let host = uri.host().ok_or("--metrics-url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/metrics");
    let io = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| "metrics: timeout".to_string())?
        .map_err(|e| format!("metrics: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("metrics: no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "metrics: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    // Chunked bodies have size lines that do not parse as samples; they are skipped.
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

fn proc_rss_fds(pid: u32) -> (Option<f64>, Option<f64>) {
    let rss = crate::proc_sample(pid).map(|(_, kib)| kib as f64 / 1024.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as f64);
    (rss, fds)
}

async fn probe(args: &BenchArgs, st: &Stats) -> Probe {
    let metrics = match scrape(&args.churn_opts.metrics_url).await {
        Ok(m) => m,
        Err(e) => {
            st.error("metrics_scrape");
            eprintln!("wsgate-bench: {e}");
            BTreeMap::new()
        }
    };
    let get = |k: &str| metrics.get(k).copied();
    let (rss_mib, fds) = match args.server_pid {
        Some(pid) => proc_rss_fds(pid),
        None => (
            get("process_resident_memory_bytes").map(|b| b / 1048576.0),
            get("process_open_fds"),
        ),
    };
    Probe {
        rss_mib,
        fds,
        tasks: get("wsgate_runtime_tasks"),
        connections: get("wsgate_connections"),
        rooms: get("wsgate_rooms"),
        metrics,
    }
}

fn diff(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn snapshot(m: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    m.lock().map(|m| m.clone()).unwrap_or_default()
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| round2(h.value_at_quantile(q) as f64 / 1000.0))
}

/// Counters of the gateway's own that tell what the misbehaving clients made it do.
fn gateway_counters(p: &Probe) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in &p.metrics {
        let keep = k.starts_with("wsgate_closes_total")
            || k.starts_with("wsgate_handshakes_total")
            || k.starts_with("wsgate_messages_dropped_total")
            || k == "wsgate_slow_consumer_closes_total";
        if keep && *v > 0.0 {
            out.insert(k.clone(), json!(v));
        }
    }
    Value::Object(out)
}

struct Out {
    file: Option<std::fs::File>,
}

impl Out {
    fn line(&mut self, v: &Value) {
        let text = v.to_string();
        println!("{text}");
        if let Some(f) = &mut self.file {
            use std::io::Write;
            if writeln!(f, "{text}").and_then(|_| f.flush()).is_err() {
                eprintln!("wsgate-bench: cannot append to --json");
            }
        }
    }
}

/// Runs the churn; `Ok(true)` when nothing was lost and the gateway came back to its
/// baseline within the margins.
pub async fn run(args: &BenchArgs, target: Arc<Target>) -> anyhow::Result<bool> {
    let o = &args.churn_opts;
    anyhow::ensure!(o.connect_rate > 0.0, "--connect-rate must be positive");
    anyhow::ensure!(
        o.open > 0 && o.rooms > 0,
        "--open and --rooms must be positive"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&o.misbehave),
        "--misbehave is a share between 0 and 1"
    );
    let every: Duration = o.every.into();
    let duration: Duration = args.duration.into();
    let lifetime = Duration::from_secs_f64(o.open as f64 / o.connect_rate);
    let good_open = (o.open as f64 * (1.0 - o.misbehave)).max(1.0);
    let plan = Arc::new(Plan {
        rooms: o.rooms,
        rooms_per_client: o.rooms_per_client.max(1),
        lifetime,
        publish_every: if o.publish_rate > 0.0 {
            Duration::from_secs_f64(good_open / o.publish_rate)
        } else {
            Duration::from_secs(1 << 30)
        },
        msg_bytes: args.msg_bytes,
    });
    let st = Arc::new(Stats {
        epoch: Instant::now(),
        alive: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        publishes: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        misbehaved: Mutex::new(BTreeMap::new()),
        hists: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
    });
    let mut out = Out {
        file: match &args.json {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| anyhow::anyhow!("--json {}: {e}", p.display()))?,
            ),
            None => None,
        },
    };

    let baseline = probe(args, &st).await;
    anyhow::ensure!(
        baseline.connections.is_some(),
        "no wsgate_connections at {} (is the admin listener there?)",
        o.metrics_url
    );
    out.line(&json!({
        "phase": "baseline", "elapsed_s": 0,
        "gateway": baseline.json(),
        "params": {
            "duration_s": duration.as_secs_f64(), "connect_rate": o.connect_rate, "open": o.open,
            "publish_rate": o.publish_rate, "rooms": o.rooms,
            "rooms_per_client": plan.rooms_per_client, "misbehave": o.misbehave,
            "msg_bytes": args.msg_bytes, "mean_lifetime_s": lifetime.as_secs_f64(),
        },
    }));

    let stop = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let start = Instant::now();
    // The connect schedule: one client per tick while fewer than --open are alive.
    let spawner = {
        let (st, plan, target, stop, tracker) = (
            st.clone(),
            plan.clone(),
            target.clone(),
            stop.clone(),
            tracker.clone(),
        );
        let (open, misbehave, rate) = (o.open, o.misbehave, o.connect_rate);
        tokio::spawn(async move {
            // Ticks a busy runtime polls late fire at once (burst): the rate holds on average.
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut idx = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                if st.alive.load(Relaxed) >= open {
                    continue;
                }
                st.alive.fetch_add(1, Relaxed);
                st.started.fetch_add(1, Relaxed);
                let guard = AliveGuard(st.clone());
                let fut = client(
                    idx,
                    target.clone(),
                    st.clone(),
                    plan.clone(),
                    misbehave,
                    stop.clone(),
                );
                tracker.spawn(async move {
                    let _guard = guard;
                    fut.await;
                });
                idx += 1;
            }
        })
    };

    // Per-interval lines while the load runs.
    let mut rows: Vec<(Value, Histogram<u64>)> = Vec::new();
    let mut prev_errors = BTreeMap::new();
    let (mut prev_pub, mut prev_del, mut prev_lost, mut prev_started) = (0, 0, 0, 0);
    let mut next_line = start + every;
    loop {
        let end = start + duration;
        let wake = next_line.min(end);
        tokio::time::sleep_until(wake.into()).await;
        let h = st.take_hist();
        let p = probe(args, &st).await;
        let errors = snapshot(&st.errors);
        let (publ, del, lost, started) = (
            st.publishes.load(Relaxed),
            st.deliveries.load(Relaxed),
            st.lost.load(Relaxed),
            st.started.load(Relaxed),
        );
        let secs = every.as_secs_f64();
        let row = json!({
            "phase": "load",
            "elapsed_s": round2(start.elapsed().as_secs_f64()),
            "gateway": p.json(),
            "clients_alive": st.alive.load(Relaxed),
            "connects_per_s": round2((started - prev_started) as f64 / secs),
            "publishes_per_s": round2((publ - prev_pub) as f64 / secs),
            "deliveries_per_s": round2((del - prev_del) as f64 / secs),
            "latency_ms": {"p50": ms(&h, 0.5), "p99": ms(&h, 0.99), "max": ms(&h, 1.0), "samples": h.len()},
            "errors": diff(&errors, &prev_errors),
            "lost": lost - prev_lost,
        });
        eprintln!(
            "[{:>6.0}s] alive {} | gateway rss {:?} MiB fds {:?} tasks {:?} conns {:?} rooms {:?} | p99 {:?} ms | lost {} | errors {:?}",
            start.elapsed().as_secs_f64(),
            st.alive.load(Relaxed),
            p.rss_mib.map(round2),
            p.fds,
            p.tasks,
            p.connections,
            p.rooms,
            ms(&h, 0.99),
            lost - prev_lost,
            diff(&errors, &prev_errors),
        );
        out.line(&row);
        rows.push((row, h));
        (prev_pub, prev_del, prev_lost, prev_started) = (publ, del, lost, started);
        prev_errors = errors;
        next_line += every;
        if Instant::now() >= end {
            break;
        }
    }

    // Stop: no new clients; the live ones leave their rooms and close.
    stop.cancel();
    let _ = spawner.await;
    tracker.close();
    let load_end = Instant::now();
    if tokio::time::timeout(Duration::from_secs(60), tracker.wait())
        .await
        .is_err()
    {
        st.error("clients_did_not_finish");
    }
    let clients_done_s = load_end.elapsed().as_secs_f64();

    // Settle: poll until the gateway is back at its baseline, for at most --settle.
    let o = &args.churn_opts;
    let settle: Duration = o.settle.into();
    let back = |p: &Probe| -> BTreeMap<&'static str, bool> {
        let near = |a: Option<f64>, b: Option<f64>, m: f64| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= m,
            _ => false,
        };
        BTreeMap::from([
            ("connections", p.connections == baseline.connections),
            ("fds", near(p.fds, baseline.fds, o.count_margin)),
            ("tasks", near(p.tasks, baseline.tasks, o.count_margin)),
            (
                "rss",
                match (p.rss_mib, baseline.rss_mib) {
                    (Some(a), Some(b)) => a <= b + o.rss_margin_mib,
                    _ => false,
                },
            ),
        ])
    };
    let poll = Duration::from_secs(5).min(every);
    let (final_probe, settled_after) = loop {
        let p = probe(args, &st).await;
        let ok = back(&p).values().all(|v| *v);
        out.line(&json!({
            "phase": "settle",
            "elapsed_s": round2(start.elapsed().as_secs_f64()),
            "since_load_end_s": round2(load_end.elapsed().as_secs_f64()),
            "gateway": p.json(),
        }));
        if ok || load_end.elapsed() >= settle {
            break (p, ok.then(|| load_end.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(poll).await;
    };
    // The fd and task counts must come back exactly where they started; the last probe
    // is the one compared (the scrape's own connection is open in both).
    let checks = back(&final_probe);

    // Latency drift: p99 of the first vs the last (up to) 5 intervals.
    let n = rows.len();
    let k = (n / 2).clamp(1, 5).min(n);
    let merged = |rs: &[(Value, Histogram<u64>)]| {
        let mut all = new_hist();
        for (_, h) in rs {
            let _ = all.add(h);
        }
        all
    };
    let (first, last) = (merged(&rows[..k]), merged(&rows[n - k..]));
    let lost = st.lost.load(Relaxed);
    let dups = st.duplicates.load(Relaxed);
    let errors = snapshot(&st.errors);
    let pass = lost == 0 && dups == 0 && checks.values().all(|v| *v);
    let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round2(a - b));
    let summary = json!({
        "phase": "summary",
        "elapsed_s": round2(start.elapsed().as_secs_f64()),
        "pass": pass,
        "baseline": baseline.json(),
        "final": final_probe.json(),
        "delta": {
            "rss_mib": delta(final_probe.rss_mib, baseline.rss_mib),
            "fds": delta(final_probe.fds, baseline.fds),
            "tasks": delta(final_probe.tasks, baseline.tasks),
            "connections": delta(final_probe.connections, baseline.connections),
        },
        "margins": {"rss_mib": o.rss_margin_mib, "fds": o.count_margin, "tasks": o.count_margin, "connections": 0},
        "checks": checks,
        "settled_after_s": settled_after.map(round2),
        "clients_finished_after_s": round2(clients_done_s),
        "peak": {
            "rss_mib": rows.iter().filter_map(|(r, _)| r["gateway"]["rss_mib"].as_f64()).fold(0.0, f64::max),
            "fds": rows.iter().filter_map(|(r, _)| r["gateway"]["fds"].as_f64()).fold(0.0, f64::max),
            "tasks": rows.iter().filter_map(|(r, _)| r["gateway"]["tasks"].as_f64()).fold(0.0, f64::max),
            "connections": rows.iter().filter_map(|(r, _)| r["gateway"]["connections"].as_f64()).fold(0.0, f64::max),
        },
        "latency_p99_ms": {
            "intervals_compared": k,
            "first": ms(&first, 0.99),
            "last": ms(&last, 0.99),
            "ratio": ms(&last, 0.99).zip(ms(&first, 0.99)).map(|(l, f)| round2(l / f.max(0.001))),
        },
        "clients": {
            "started": st.started.load(Relaxed),
            "connected": st.connected.load(Relaxed),
            "well_behaved_completed": st.completed.load(Relaxed),
            "misbehaved": snapshot(&st.misbehaved),
        },
        "publishes": st.publishes.load(Relaxed),
        "deliveries": st.deliveries.load(Relaxed),
        "lost": lost,
        "duplicates": dups,
        "errors": errors,
        "gateway_counters": gateway_counters(&final_probe),
    });
    eprintln!(
        "wsgate-bench churn: {} — lost {lost}, duplicates {dups}, checks {checks:?}",
        if pass { "PASS" } else { "FAIL" }
    );
    out.line(&summary);
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_in_any_order_leave_no_hole() {
        let mut t = RoomTrack {
            next: 5,
            ..Default::default()
        };
        // 6 arrives (someone else's) before the ack of our own 5.
        assert!(t.see(6));
        assert_eq!(t.holes(), 1);
        assert!(t.see(5));
        assert_eq!((t.next, t.holes()), (7, 0));
        assert!(!t.see(6), "a repeat is a duplicate");
        assert!(!t.see(3), "below the join point is a duplicate");
    }

    #[test]
    fn a_missing_offset_is_counted_lost() {
        let mut t = RoomTrack {
            next: 1,
            ..Default::default()
        };
        for o in [1, 2, 4, 7] {
            assert!(t.see(o));
        }
        assert_eq!(t.holes(), 3, "3, 5 and 6 never came");
    }

    #[test]
    fn message_fields_are_read_without_parsing() {
        let t = r#"{"type":"message","room":"churn-7","from":"churn-3","data":{"t0":42,"pad":"x"},"epoch":"e","offset":9,"ts":1}"#;
        assert_eq!(scan_str(t, "\"room\""), Some("churn-7"));
        assert_eq!(scan_u64(t, "\"offset\""), Some(9));
        assert_eq!(scan_u64(t, "\"t0\""), Some(42));
    }

    #[test]
    fn rooms_are_distinct_and_in_range() {
        let mut rng = Rng(7);
        let rooms = pick_rooms(&mut rng, 5, 9);
        assert_eq!(rooms.len(), 5);
        let set: BTreeSet<_> = rooms.iter().collect();
        assert_eq!(set.len(), 5);
    }
}
