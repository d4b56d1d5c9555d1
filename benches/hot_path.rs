//! Criterion microbenchmarks for the per-message path:
//! - `parse_sanitize_serialize`: a typical chat publish from raw text to the outbound frame;
//! - `fanout/N`: one publication into a room of N in-process sessions (queueing included);
//! - `join_leave/N`: one more member joining and leaving a room of N (presence off, so this is
//!   the membership cost alone; with presence each join is also one frame to each member);
//! - `verify/hs256`, `verify/es256`: the token check of every handshake.
//!
//! Run with `cargo bench --bench hot_path`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsgate::broker::memory::NodeIdentity;
use wsgate::broker::{MemoryBroker, RoomSettings};
use wsgate::hub::{Departure, Hub, Outbound, SessionCtl, SessionHandle};
use wsgate::metrics::Metrics;
use wsgate::protocol::{ClientMsg, MessageDraft, RoomName};
use wsgate::sanitize::parse_client;

const CHAT: &str = r#"{"type":"publish","room":"lobby","id":17,"data":{"text":"hey, is the deploy done? \u202eok","mentions":["bob","carol"],"client_ts":1767225000123}}"#;

fn parse_sanitize_serialize(c: &mut Criterion) {
    c.bench_function("parse_sanitize_serialize", |b| {
        b.iter(|| {
            let Ok(ClientMsg::Publish { room, data, .. }) = parse_client(black_box(CHAT)) else {
                panic!("valid publish");
            };
            let frame =
                MessageDraft::new(&room, "alice", &data, 1_767_225_000_123).finish("a1b2c3d4", 58);
            black_box(frame)
        })
    });
}

struct Room {
    hub: Arc<Hub>,
    room: RoomName,
    receivers: Vec<mpsc::Receiver<Outbound>>,
    data: Value,
}

/// Joins `handle` to `room` (the in-memory broker answers at once).
fn join(hub: &Arc<Hub>, handle: &SessionHandle, room: &RoomName) {
    hub.clone()
        .join(handle.clone(), room.clone(), None, None)
        .now_or_never()
        .expect("the in-memory broker answers at once")
        .expect("join");
}

fn room_of(n: usize, presence_limit: usize) -> Room {
    let metrics = Arc::new(Metrics::new());
    let broker = Arc::new(MemoryBroker::new(
        RoomSettings {
            history_size: 100,
            history_ttl: std::time::Duration::from_secs(600),
            history_max_bytes: 256 << 20,
            presence_limit,
        },
        NodeIdentity {
            name: "bench".into(),
            started_at: 0,
        },
    ));
    let hub = Hub::new(broker, metrics, 1024, 1);
    let room = RoomName::parse("bench").expect("room");
    let mut receivers = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = mpsc::channel(1024);
        let handle = SessionHandle {
            id: hub.next_session_id(),
            user: Arc::from(format!("u{i}")),
            tx,
            ctl: Arc::new(SessionCtl::new(CancellationToken::new())),
        };
        join(&hub, &handle, &room);
        receivers.push(rx);
    }
    for rx in &mut receivers {
        while rx.try_recv().is_ok() {}
    }
    Room {
        hub,
        room,
        receivers,
        data: serde_json::json!({"text": "hello everyone"}),
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for n in [100usize, 1_000, 10_000] {
        let mut r = room_of(n, 1000);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                r.hub
                    .clone()
                    .publish(r.room.clone(), Arc::from("@server"), r.data.clone(), None)
                    .now_or_never()
                    .expect("the in-memory broker answers at once")
                    .expect("publish");
                for rx in &mut r.receivers {
                    while let Ok(item) = rx.try_recv() {
                        black_box(item);
                    }
                }
            })
        });
    }
    g.finish();
}

fn join_leave(c: &mut Criterion) {
    let mut g = c.benchmark_group("join_leave");
    for n in [100usize, 1_000, 10_000] {
        let r = room_of(n, 0);
        let (tx, mut rx) = mpsc::channel(4096);
        let handle = SessionHandle {
            id: r.hub.next_session_id(),
            user: Arc::from("newcomer"),
            tx,
            ctl: Arc::new(SessionCtl::new(CancellationToken::new())),
        };
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                join(&r.hub, &handle, &r.room);
                r.hub.leave(&handle, &r.room, Departure::Left);
                while rx.try_recv().is_ok() {}
            })
        });
    }
    g.finish();
}

fn verify(c: &mut Criterion) {
    use wsgate::auth::Verifier;
    use wsgate::config::{AuthConfig, PublicKeyConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let pub_path = dir.path().join("k1.pub.pem");
    std::fs::write(&pub_path, key.public_key_pem()).expect("write key");
    let cfg = AuthConfig {
        algorithms: vec!["HS256".into(), "ES256".into()],
        hs_secret: "bench-secret-0123456789".into(),
        public_keys: vec![PublicKeyConfig {
            kid: "k1".into(),
            alg: "ES256".into(),
            file: pub_path,
        }],
        ..AuthConfig::default()
    };
    let verifier = Verifier::from_config(&cfg).expect("verifier");
    let claims = serde_json::json!({"sub": "alice", "exp": wsgate::auth::unix_now() + 3600, "rooms": ["lobby", "team:42:*"]});
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"bench-secret-0123456789"),
    )
    .expect("hs token");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let es = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec key"),
    )
    .expect("es token");
    let mut g = c.benchmark_group("verify");
    g.bench_function("hs256", |b| {
        b.iter(|| verifier.verify(black_box(&hs)).expect("valid"))
    });
    g.bench_function("es256", |b| {
        b.iter(|| verifier.verify(black_box(&es)).expect("valid"))
    });
    g.finish();
}

criterion_group!(
    benches,
    parse_sanitize_serialize,
    fanout,
    join_leave,
    verify
);
criterion_main!(benches);
