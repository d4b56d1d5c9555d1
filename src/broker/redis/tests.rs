//! The Redis broker against a real `redis-server` started on a free port for each test (never
//! the shared one on 6379): two brokers on one Redis are two gateway nodes, each with a
//! recording handler in place of the hub.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;

use super::*;
use crate::broker::{Broker, BrokerHandler, Origin, PublishRequest, RoomSettings};
use crate::protocol::PresenceEvent;

const WAIT: Duration = Duration::from_secs(10);

#[path = "../../../tests/it/redis_server.rs"]
mod redis_server;
use redis_server::Redis;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Message(String, u64, String),
    Presence(String, PresenceEvent, String, u64),
    Lost(String),
}

/// A hub stand-in: records what the broker hands it; `users` are its local sessions.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    notify: Notify,
    users: Mutex<Vec<(String, String)>>,
    /// When each publication arrived (offset, instant).
    arrivals: Mutex<Vec<(u64, std::time::Instant)>>,
}

impl Recorder {
    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
        self.notify.notify_waiters();
    }

    /// Waits until `pred` holds for the events so far; returns them.
    async fn until(&self, what: &str, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let events = self.events.lock().unwrap();
                if pred(&events) {
                    return events.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{what}: not seen in {WAIT:?}: {:?}",
                    self.events.lock().unwrap()
                );
            }
        }
    }

    fn messages(events: &[Event], room: &str) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(r, o, _) if r == room => Some(*o),
                _ => None,
            })
            .collect()
    }
}

impl BrokerHandler for Recorder {
    fn on_publication(&self, room: &RoomName, p: Arc<Publication>) {
        self.arrivals
            .lock()
            .unwrap()
            .push((p.offset, std::time::Instant::now()));
        self.push(Event::Message(
            room.to_string(),
            p.offset,
            p.frame.as_str().to_string(),
        ));
    }
    fn on_presence(&self, room: &RoomName, c: PresenceChange) {
        self.push(Event::Presence(
            room.to_string(),
            c.event,
            c.user.to_string(),
            c.version,
        ));
    }
    fn on_stream_lost(&self, room: &RoomName) {
        self.push(Event::Lost(room.to_string()));
    }
    fn disconnect_local(&self, user: &str, _code: u16) -> usize {
        let mut users = self.users.lock().unwrap();
        let before = users.len();
        users.retain(|(u, _)| u != user);
        before - users.len()
    }
    fn local_rooms(&self) -> Vec<(RoomName, usize)> {
        let users = self.users.lock().unwrap();
        let mut rooms: HashMap<String, usize> = HashMap::new();
        for (_, r) in users.iter() {
            *rooms.entry(r.clone()).or_default() += 1;
        }
        rooms
            .into_iter()
            .map(|(r, n)| (RoomName::parse(&r).unwrap(), n))
            .collect()
    }
    fn local_sessions(&self) -> usize {
        self.users.lock().unwrap().len()
    }
}

struct Node {
    broker: Arc<RedisBroker>,
    rec: Arc<Recorder>,
}

fn settings(history_size: usize) -> RoomSettings {
    RoomSettings {
        history_size,
        history_ttl: Duration::from_secs(600),
        history_max_bytes: u64::MAX,
        presence_limit: 1000,
    }
}

/// A broker for `url` (one Redis, or a comma list of cluster masters), not yet connected.
fn broker_for(
    url: String,
    name: &str,
    history_size: usize,
    node_ttl: Duration,
) -> Arc<RedisBroker> {
    // A cluster's first connection walks every master: give it more time than one Redis.
    let redis_timeout = Duration::from_secs(if url.contains(',') { 2 } else { 1 });
    let cfg = crate::config::ClusterConfig {
        redis_url: url,
        ..Default::default()
    };
    RedisBroker::start(
        ClusterSettings {
            target: Target::new(cfg.redis_nodes().unwrap()),
            key_prefix: "t".into(),
            node_ttl,
            redis_timeout,
        },
        settings(history_size),
        NodeIdentity {
            name: name.into(),
            started_at: 1,
        },
        rand::random(),
        crate::metrics::Metrics::for_cluster()
            .cluster()
            .unwrap()
            .clone(),
    )
}

/// A node on `url` with a recording handler, once it is ready.
async fn node_at(url: String, name: &str, history_size: usize, node_ttl: Duration) -> Node {
    let broker = broker_for(url, name, history_size, node_ttl);
    let rec = Arc::new(Recorder::default());
    let weak: Weak<dyn BrokerHandler> = Arc::downgrade(&(rec.clone() as Arc<dyn BrokerHandler>));
    broker.attach(weak);
    assert!(broker.wait_ready(WAIT).await, "{name} reaches Redis");
    Node { broker, rec }
}

async fn node(redis: &Redis, name: &str, history_size: usize, node_ttl: Duration) -> Node {
    node_at(redis.url(), name, history_size, node_ttl).await
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

async fn publish(n: &Node, room: &RoomName, text: &str) -> Result<u64, BrokerError> {
    n.broker
        .publish(PublishRequest {
            room,
            from: "alice",
            data: &json!({ "text": text }),
            origin: Some(Origin {
                node: n.broker.node,
                session: 1,
            }),
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_every_subscribed_node_once_in_offset_order() {
    let redis = Redis::start().await;
    let a = node(&redis, "a", 100, Duration::from_secs(15)).await;
    let b = node(&redis, "b", 100, Duration::from_secs(15)).await;
    let r = room("lobby");
    a.broker.subscribe(&r).await.unwrap();
    b.broker.subscribe(&r).await.unwrap();
    let (x, y) = tokio::join!(
        async {
            let mut v = Vec::new();
            for i in 0..50 {
                v.push(publish(&a, &r, &format!("a{i}")).await.unwrap());
            }
            v
        },
        async {
            let mut v = Vec::new();
            for i in 0..50 {
                v.push(publish(&b, &r, &format!("b{i}")).await.unwrap());
            }
            v
        }
    );
    let mut acks: Vec<u64> = x.into_iter().chain(y).collect();
    acks.sort();
    assert_eq!(acks, (1..=100).collect::<Vec<_>>(), "consecutive offsets");
    for n in [&a, &b] {
        let events = n
            .rec
            .until("100 messages", |e| {
                Recorder::messages(e, "lobby").len() >= 100
            })
            .await;
        assert_eq!(
            Recorder::messages(&events, "lobby"),
            (1..=100).collect::<Vec<_>>()
        );
    }
    // The frame is the finished message, epoch and offset included.
    let events = a.rec.events.lock().unwrap().clone();
    let Event::Message(_, 1, frame) = &events[0] else {
        panic!("{events:?}")
    };
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    assert_eq!(v["offset"], 1);
    assert_eq!(v["type"], "message");
    assert!(v["epoch"].as_str().is_some_and(|e| e.len() == 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reads_the_history_exactly_or_says_not_recovered() {
    let redis = Redis::start().await;
    let a = node(&redis, "a", 3, Duration::from_secs(15)).await;
    let b = node(&redis, "b", 3, Duration::from_secs(15)).await;
    let r = room("r");
    for i in 1..=5 {
        assert_eq!(publish(&a, &r, &i.to_string()).await.unwrap(), i);
    }
    let now = b.broker.recover(&r, None).await.unwrap();
    assert_eq!(now.offset, 5);
    let since = |offset| Since {
        epoch: now.epoch.to_string(),
        offset,
    };
    let rec = b.broker.recover(&r, Some(&since(3))).await.unwrap();
    assert!(rec.recovered);
    assert_eq!(
        rec.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        [4, 5]
    );
    assert!(rec.publications[0]
        .frame
        .as_str()
        .contains(r#""offset":4}"#));
    assert_eq!(
        rec.publications[0].origin.map(|o| o.node),
        Some(a.broker.node)
    );
    let rec = b.broker.recover(&r, Some(&since(1))).await.unwrap();
    assert!(!rec.recovered, "offset 2 was trimmed (history_size 3)");
    let rec = b.broker.recover(&r, Some(&since(5))).await.unwrap();
    assert!(rec.recovered && rec.publications.is_empty());
    let rec = b
        .broker
        .recover(
            &r,
            Some(&Since {
                epoch: "other".into(),
                offset: 3,
            }),
        )
        .await
        .unwrap();
    assert!(!rec.recovered);
    // A client's offset beyond the room's is not recovered, and changes nothing.
    let rec = b.broker.recover(&r, Some(&since(9))).await.unwrap();
    assert!(!rec.recovered);
    assert_eq!(*b.broker.recover(&r, None).await.unwrap().epoch, *now.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_counted_across_nodes_once_per_user() {
    let redis = Redis::start().await;
    let a = node(&redis, "a", 10, Duration::from_secs(15)).await;
    let b = node(&redis, "b", 10, Duration::from_secs(15)).await;
    let r = room("p");
    let alice: Arc<str> = Arc::from("alice");
    a.broker.subscribe(&r).await.unwrap();
    b.broker.subscribe(&r).await.unwrap();
    a.broker.presence_join(&r, &alice).await.unwrap();
    b.rec
        .until("join", |e| {
            e.iter()
                .any(|e| matches!(e, Event::Presence(_, PresenceEvent::Join, u, _) if u == "alice"))
        })
        .await;
    // Alice on the second node too: no new join; the members list has her once.
    b.broker.presence_join(&r, &alice).await.unwrap();
    let rec = a.broker.recover(&r, None).await.unwrap();
    assert_eq!(
        rec.members.iter().map(|m| &**m).collect::<Vec<_>>(),
        ["alice"]
    );
    // Leaving one node: still there. A marker publish shows no leave came before it.
    a.broker.presence_leave(&r, &alice);
    let until_gone = |n: &Node| {
        let broker = n.broker.clone();
        let r = r.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let m = broker.recover(&r, None).await.unwrap();
                if m.presence_version >= 2 {
                    return m;
                }
                assert!(tokio::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let offset = publish(&a, &r, "marker").await.unwrap();
    let events = a
        .rec
        .until("marker", |e| Recorder::messages(e, "p").contains(&offset))
        .await;
    let joins_or_leaves: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Presence(..)))
        .collect();
    assert_eq!(joins_or_leaves.len(), 1, "{events:?}");
    b.broker.presence_leave(&r, &alice);
    let m = until_gone(&b).await;
    assert!(m.members.is_empty());
    for n in [&a, &b] {
        n.rec
            .until("leave", |e| {
                e.iter().any(
                    |e| matches!(e, Event::Presence(_, PresenceEvent::Leave, u, 2) if u == "alice"),
                )
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_leaves_presence_within_its_ttl() {
    let redis = Redis::start().await;
    let a = node(&redis, "a", 10, Duration::from_secs(3)).await;
    let b = node(&redis, "b", 10, Duration::from_secs(3)).await;
    let r = room("d");
    let carol: Arc<str> = Arc::from("carol");
    b.broker.subscribe(&r).await.unwrap();
    a.broker.presence_join(&r, &carol).await.unwrap();
    b.rec
        .until("join", |e| {
            e.iter()
                .any(|e| matches!(e, Event::Presence(_, PresenceEvent::Join, ..)))
        })
        .await;
    // "SIGKILL": a's tasks stop and it never says goodbye.
    a.broker.stop.cancel();
    let started = tokio::time::Instant::now();
    b.rec
        .until("leave of the dead node's user", |e| {
            e.iter().any(
                |e| matches!(e, Event::Presence(_, PresenceEvent::Leave, u, _) if u == "carol"),
            )
        })
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before node_ttl"
    );
    assert!(b.broker.recover(&r, None).await.unwrap().members.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_loses_nothing() {
    let redis = Redis::start().await;
    let a = node(&redis, "a", 1000, Duration::from_secs(15)).await;
    let b = node(&redis, "b", 1000, Duration::from_secs(15)).await;
    let r = room("k");
    // The periodic position check would find the gap too, later: this is about the
    // disconnection itself being repaired.
    b.broker.check_every.store(u32::MAX, Ordering::Relaxed);
    b.broker.subscribe(&r).await.unwrap();
    publish(&a, &r, "0").await.unwrap();
    b.rec
        .until("first", |e| Recorder::messages(e, "k") == [1])
        .await;
    let publisher = async {
        for i in 2..=200 {
            publish(&a, &r, &i.to_string()).await.unwrap();
            if i == 50 {
                let killed = redis
                    .cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
                    .await
                    .unwrap();
                assert_eq!(killed, Value::Int(2), "both nodes' subscriber connections");
            }
        }
    };
    publisher.await;
    let events = b
        .rec
        .until("all 200", |e| Recorder::messages(e, "k").len() >= 200)
        .await;
    assert_eq!(
        Recorder::messages(&events, "k"),
        (1..=200).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Lost(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dropped_by_a_full_push_queue_come_from_the_history_in_order() {
    let redis = Redis::start().await;
    let a = node(&redis, "a", 1000, Duration::from_secs(15)).await;
    let b = node(&redis, "b", 1000, Duration::from_secs(15)).await;
    let r = room("q");
    b.broker.check_every.store(u32::MAX, Ordering::Relaxed);
    b.broker.subscribe(&r).await.unwrap();
    b.broker.recover(&r, None).await.unwrap();
    // A consumer too slow for anything: every message is dropped on arrival.
    b.broker.push_budget.store(1, Ordering::Relaxed);
    for i in 1..=20 {
        publish(&a, &r, &i.to_string()).await.unwrap();
    }
    let events = b
        .rec
        .until("all 20", |e| Recorder::messages(e, "q").len() >= 20)
        .await;
    assert_eq!(
        Recorder::messages(&events, "q"),
        (1..=20).collect::<Vec<_>>()
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Lost(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_then_repaired_by_itself() {
    let mut redis = Redis::start().await;
    let a = node(&redis, "a", 100, Duration::from_secs(15)).await;
    let r = room("o");
    // As the hub joins: subscribe, then read the room's position.
    a.broker.subscribe(&r).await.unwrap();
    a.broker.recover(&r, None).await.unwrap();
    redis.kill().await;
    let down = tokio::time::Instant::now();
    while a.broker.ready() {
        assert!(
            down.elapsed() < Duration::from_secs(3),
            "not ready within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        publish(&a, &r, "x").await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(a.broker.recover(&r, None).await.is_err());
    // Restarted empty: the room's epoch is gone under its member here: 1012.
    redis.restart().await;
    assert!(
        a.broker.wait_ready(Duration::from_secs(5)).await,
        "back within 5 s"
    );
    a.rec
        .until("lost", |e| e.contains(&Event::Lost("o".into())))
        .await;
    // And it works again.
    assert_eq!(publish(&a, &r, "again").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restored_from_an_older_snapshot_never_lets_a_client_recover_across_the_hole() {
    let mut redis = Redis::start().await;
    let a = node(&redis, "a", 100, Duration::from_secs(15)).await;
    let r = room("snap");
    a.broker.subscribe(&r).await.unwrap();
    let epoch = a.broker.recover(&r, None).await.unwrap().epoch;
    for i in 1..=3 {
        publish(&a, &r, &i.to_string()).await.unwrap();
    }
    redis.cmd(&["SAVE"]).await.unwrap();
    for i in 4..=5 {
        publish(&a, &r, &i.to_string()).await.unwrap();
    }
    a.rec
        .until("5 delivered", |e| Recorder::messages(e, "snap").len() == 5)
        .await;
    redis.kill().await;
    redis.restart().await;
    // Offsets went back from 5 to 3 in the same epoch: a new epoch, and 1012 here.
    a.rec
        .until("lost", |e| e.contains(&Event::Lost("snap".into())))
        .await;
    let now = a.broker.recover(&r, None).await.unwrap();
    assert_ne!(*now.epoch, *epoch);
    let rec = a
        .broker
        .recover(
            &r,
            Some(&Since {
                epoch: epoch.to_string(),
                offset: 3,
            }),
        )
        .await
        .unwrap();
    assert!(!rec.recovered);
}

use redis_server::redis_cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_rooms_spread_over_shards_and_behave_the_same() {
    let nodes = redis_cluster().await;
    let url = redis_server::cluster_url(&nodes);
    let start = |name: &'static str| node_at(url.clone(), name, 100, Duration::from_secs(15));
    let a = start("a").await;
    let b = start("b").await;
    // Rooms whose hash tags land on different masters.
    let rooms: Vec<RoomName> = (0..6).map(|i| room(&format!("room-{i}"))).collect();
    for r in &rooms {
        b.broker.subscribe(r).await.unwrap();
    }
    let dave: Arc<str> = Arc::from("dave");
    a.broker.presence_join(&rooms[0], &dave).await.unwrap();
    for r in &rooms {
        for i in 1..=5u64 {
            assert_eq!(publish(&a, r, &i.to_string()).await.unwrap(), i);
        }
    }
    for r in &rooms {
        let events = b
            .rec
            .until("5 per room", |e| {
                Recorder::messages(e, r.as_str()).len() >= 5
            })
            .await;
        assert_eq!(Recorder::messages(&events, r.as_str()), [1, 2, 3, 4, 5]);
    }
    b.rec
        .until("dave's join", |e| {
            e.iter()
                .any(|e| matches!(e, Event::Presence(_, PresenceEvent::Join, u, _) if u == "dave"))
        })
        .await;
    let now = b.broker.recover(&rooms[3], None).await.unwrap();
    let rec = b
        .broker
        .recover(
            &rooms[3],
            Some(&Since {
                epoch: now.epoch.to_string(),
                offset: 2,
            }),
        )
        .await
        .unwrap();
    assert!(rec.recovered);
    assert_eq!(rec.publications.len(), 3);
    // Admin requests reach both nodes.
    assert_eq!(a.broker.nodes().await.unwrap().len(), 2);
}

/// Publish on one node → delivered to the other, at 1,000 publishes/s: the Redis hop
/// (script, pub/sub, decoding, sequencing) a cluster adds to a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --release --lib redis_hop -- --ignored --nocapture"]
async fn redis_hop_latency() {
    let redis = Redis::start().await;
    let a = node(&redis, "a", 100, Duration::from_secs(15)).await;
    let b = node(&redis, "b", 100, Duration::from_secs(15)).await;
    let r = room("hop");
    b.broker.subscribe(&r).await.unwrap();
    let n = 5000u64;
    let mut sent = Vec::with_capacity(n as usize);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for i in 0..n {
        tick.tick().await;
        let t0 = std::time::Instant::now();
        let offset = publish(&a, &r, &i.to_string()).await.unwrap();
        sent.push((offset, t0));
    }
    b.rec
        .until("all", |e| Recorder::messages(e, "hop").len() as u64 >= n)
        .await;
    let arrivals: HashMap<u64, std::time::Instant> =
        b.rec.arrivals.lock().unwrap().iter().copied().collect();
    let mut lat: Vec<f64> = sent
        .iter()
        .map(|(o, t0)| (arrivals[o] - *t0).as_secs_f64() * 1e3)
        .collect();
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    eprintln!(
        "publish -> other node's hub, {n} at 1000/s: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        q(0.5),
        q(0.9),
        q(0.99)
    );
}

/// The text of a reply (bulk, simple or verbatim).
fn reply_text(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b).unwrap(),
        Value::SimpleString(s) => s,
        Value::VerbatimString { text, .. } => text,
        other => panic!("not text: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_slot_moves_to_another_master_keeps_flowing() {
    let nodes = redis_cluster().await;
    let url = redis_server::cluster_url(&nodes);
    let mut brokers = Vec::new();
    for name in ["a", "b"] {
        brokers.push(node_at(url.clone(), name, 100, Duration::from_secs(15)).await);
    }
    let (a, b) = (&brokers[0], &brokers[1]);
    let r = room("moving");
    // Only what arrives live counts here: no periodic check to fall back on.
    b.broker.check_every.store(u32::MAX, Ordering::Relaxed);
    b.broker.subscribe(&r).await.unwrap();
    b.broker.recover(&r, None).await.unwrap();
    publish(a, &r, "1").await.unwrap();
    b.rec
        .until("1", |e| Recorder::messages(e, "moving") == [1])
        .await;
    // Move every slot of the room's master to another master.
    let key = a.broker.names.room(&r).meta;
    let slot = nodes[0].cmd(&["CLUSTER", "KEYSLOT", &key]).await.unwrap();
    let Value::Int(slot) = slot else { panic!() };
    let mut from = None;
    for n in &nodes {
        let slots = reply_text(n.cmd(&["CLUSTER", "NODES"]).await.unwrap());
        let me = slots
            .lines()
            .find(|l| l.contains("myself"))
            .unwrap()
            .to_string();
        let ranges: Vec<(i64, i64)> = me
            .split(' ')
            .skip(8)
            .filter_map(|r| {
                let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                Some((lo.parse().ok()?, hi.parse().ok()?))
            })
            .collect();
        if ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot)) {
            let id = me.split(' ').next().unwrap().to_string();
            let count: i64 = ranges.iter().map(|(lo, hi)| hi - lo + 1).sum();
            from = Some((n.port, id, count));
        }
    }
    let (port, src, count) = from.expect("the room's master");
    let dst_node = nodes.iter().find(|n| n.port != port).unwrap();
    let dst = reply_text(dst_node.cmd(&["CLUSTER", "MYID"]).await.unwrap());
    let out = tokio::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{port}")])
        .args(["--cluster-from", &src, "--cluster-to", &dst])
        .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Publishes follow the slot (MOVED), and so does the subscription.
    for i in 2..=10 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match publish(a, &r, &i.to_string()).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let events = b
        .rec
        .until("all 10 after the move", |e| {
            Recorder::messages(e, "moving").len() >= 10
        })
        .await;
    assert_eq!(
        Recorder::messages(&events, "moving"),
        (1..=10).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_of_a_redis_cluster_node_is_refused_rather_than_half_working() {
    let nodes = redis_cluster().await;
    let broker = broker_for(nodes[0].url(), "x", 100, Duration::from_secs(15));
    let err = broker
        .connect(&mpsc::channel(1).0)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("list two or more"), "{err}");
    assert!(!broker.wait_ready(Duration::from_secs(2)).await);
    assert!(matches!(
        publish(
            &Node {
                broker: broker.clone(),
                rec: Arc::new(Recorder::default())
            },
            &room("r"),
            "x"
        )
        .await,
        Err(BrokerError::Unavailable(_))
    ));
}
