//! The cluster broker: rooms shared by every gateway node with the same Redis and
//! `cluster.key_prefix` (CONTRACT §9).
//!
//! - **Streams** live in Redis: a room's epoch, last offset and presence version in a meta
//!   hash, its history in a stream (`history_size` entries, exact), both written by one Lua
//!   script per publish that also publishes the finished frame on the room's channel
//!   ([`scripts`], [`payload`]). Offsets are assigned there, atomically, for the whole cluster.
//! - **Subscriptions** are counted per room on this node: the first local member subscribes
//!   (resolving once Redis confirmed it), the last one unsubscribes [`UNSUBSCRIBE_DELAY`]
//!   later. Each subscribed room has a [`sequencer::Sequencer`] that hands the hub
//!   publications in offset order and reads what pub/sub lost back from the stream.
//! - **Presence** is counted per node in Redis (a user's share per node), so the first session
//!   of a user anywhere announces the join and the last one anywhere the leave. Nodes beat
//!   into a registry every [`TICK`]; a node silent for `node_ttl` is removed by the others,
//!   with leave events for its users.
//! - **Admin** requests go to every node on a control channel, and each node answers for its
//!   own sessions ([`control`]).
//! - **Outages**: a health loop pings Redis every [`TICK`]; while it is out of reach, joins,
//!   publishes and admin calls fail at once with [`BrokerError::Unavailable`] and leaves are
//!   recorded to be applied later. Once it answers again the node resubscribes, re-asserts its
//!   presence and checks every room's position: members get what they missed from the
//!   history in order, or a 1012 close where it is gone or the epoch changed.
//! - **Redis Cluster** (several seed URLs): sharded pub/sub (`SPUBLISH` in the scripts,
//!   `SSUBSCRIBE`); the cluster client follows slot moves for commands, and a shard channel
//!   Redis drops when its slot moves is subscribed again where it now lives.
//! - **Pub/sub backlog** is bounded ([`PUSH_QUEUE`], [`PUSH_QUEUE_BYTES`]): what does not fit is
//!   dropped and read back from the history at the next tick.
//!
//! Locks (std, never held across an await): the room map, then one room's state; the
//! presence sets. Async locks serialize one room's (un)subscribing and one (room, user)'s
//! presence changes. Delivery to the hub happens under the room's state lock, which keeps offset
//! order; the hub never calls the broker while holding its own locks.

mod conn;
mod control;
mod payload;
mod scripts;
pub mod sequencer;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::conn::Conn;
pub use self::conn::Target;
use self::payload::{Names, Payload, RoomKeys};
use self::scripts::Scripts;
use self::sequencer::{Check, Sequencer, Step, StreamRead};
use super::memory::NodeIdentity;
use super::{
    Broker, BrokerError, BrokerFuture, BrokerHandler, NodeId, NodeInfo, PresenceChange,
    Publication, PublishRequest, Recovery, RoomInfo, RoomSettings,
};
use crate::metrics::ClusterMetrics;
use crate::protocol::{MessageDraft, RoomName, Since};

/// Health pings, heartbeats and the dead-node check run this often: `/readyz` turns 503 at
/// most a tick plus [`PING_TIMEOUT`] after Redis stops answering (2.5 s, within the
/// contract's 3 s), and a dead node is noticed at most a tick after its `node_ttl`.
pub const TICK: Duration = Duration::from_secs(1);
/// Longest wait for a health ping (shorter when `cluster.redis_timeout` is).
pub const PING_TIMEOUT: Duration = Duration::from_millis(1500);
/// Every room with local members has its position checked (and its Redis state kept alive)
/// once every this many ticks: the safety net for a publication lost at the end of a burst,
/// where no later offset reveals the gap.
pub const CHECK_EVERY: u32 = 3;
/// How long a room stays subscribed after its last local member left: a member that leaves
/// and joins again (a reconnect, a page reload) costs no subscription round trip.
pub const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(2);
/// Pub/sub messages buffered between the Redis connection and the task that sequences them,
/// and their bytes. The client library's own channel is unbounded; this one is not: past
/// either bound messages are dropped and every room's position is checked once the task
/// catches up, so a stuck consumer costs at most this much memory and the members lose
/// nothing that the history still holds. 16 Ki messages is a second of a busy node's
/// traffic; 32 MiB is two thousand messages at the default 16 KiB limit.
pub const PUSH_QUEUE: usize = 16 * 1024;
pub const PUSH_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Consecutive failed health pings after which the connections are made anew (rather than
/// waiting on the client library's own reconnects).
const RECONNECT_AFTER: u32 = 3;
/// Rooms checked, subscribed or re-asserted at once during a resync: enough to fill the
/// pipeline of a multiplexed connection, few enough not to time each other out.
const CONCURRENCY: usize = 64;
/// Striped locks serializing presence changes of one (room, user) on this node.
const PRESENCE_STRIPES: usize = 64;

/// A pub/sub message on its way to the sequencing task, with its size in the byte budget.
struct Pushed {
    info: PushInfo,
    bytes: usize,
}

/// What the Redis connection hands pub/sub messages to.
pub type PushSender = Box<dyn Fn(PushInfo) -> Result<(), ()> + Send + Sync>;

/// Cluster settings the broker needs (restart-only).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub target: Target,
    pub key_prefix: String,
    pub node_ttl: Duration,
    pub redis_timeout: Duration,
}

/// The command and subscriber connections.
struct Backend {
    cmd: Conn,
    sub: Conn,
}

/// One room subscribed on this node.
struct RoomSlot {
    /// Serializes subscribing and unsubscribing the room.
    op: tokio::sync::Mutex<()>,
    state: Mutex<RoomState>,
}

struct RoomState {
    /// Local members (joins that subscribed and have not left).
    refs: usize,
    /// Subscribed in Redis (confirmed).
    subscribed: bool,
    /// Bumped whenever `refs` drops to 0: a delayed unsubscribe only acts on its own.
    idle: u64,
    /// Left the map: a subscribe that raced with it looks the room up again.
    removed: bool,
    seq: Sequencer,
}

/// This node's shares of presence: what Redis should have, and leaves it could not apply.
#[derive(Default)]
struct Presence {
    mine: HashSet<(RoomName, Arc<str>)>,
    pending_leaves: HashSet<(RoomName, Arc<str>)>,
}

pub struct RedisBroker {
    /// Itself, for the tasks it spawns.
    me: Weak<RedisBroker>,
    node: NodeId,
    identity: NodeIdentity,
    names: Names,
    cluster: ClusterSettings,
    /// `SPUBLISH` on a Redis Cluster, `PUBLISH` on a single Redis.
    publish_cmd: &'static str,
    settings: ArcSwap<RoomSettings>,
    handler: OnceLock<Weak<dyn BrokerHandler>>,
    backend: ArcSwapOption<Backend>,
    /// Redis answers and this node is subscribed: joins and publishes are served.
    up: AtomicBool,
    /// Subscriptions may have been lost (a disconnection, dropped messages): resubscribe and
    /// check every room at the next tick.
    resync: AtomicBool,
    /// Pub/sub messages were dropped or a fill failed: check every room's position at the
    /// next tick.
    recheck: AtomicBool,
    /// Wakes the health loop early (a failure or a disconnection was seen).
    wake: Notify,
    rooms: Mutex<HashMap<RoomName, Arc<RoomSlot>>>,
    presence: Mutex<Presence>,
    presence_locks: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::hash::RandomState,
    scripts: Scripts,
    metrics: ClusterMetrics,
    control: control::Control,
    stop: CancellationToken,
    /// Bytes of the pub/sub messages waiting for the sequencing task, and their bound
    /// ([`PUSH_QUEUE_BYTES`]; tests lower it).
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    push_budget: Arc<std::sync::atomic::AtomicUsize>,
    /// [`CHECK_EVERY`]; tests turn the periodic check off to see what else repairs.
    check_every: std::sync::atomic::AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(reason: impl Into<String>) -> BrokerError {
    BrokerError::Unavailable(reason.into())
}

/// A fresh epoch: 16 hex digits, so a room that starts afresh never meets an old one.
fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

impl RedisBroker {
    /// Starts the broker's tasks; it is ready once Redis answered ([`RedisBroker::wait_ready`]).
    pub fn start(
        cluster: ClusterSettings,
        settings: RoomSettings,
        identity: NodeIdentity,
        node: NodeId,
        metrics: ClusterMetrics,
    ) -> Arc<RedisBroker> {
        let names = Names::new(&cluster.key_prefix);
        let broker = Arc::new_cyclic(|me| RedisBroker {
            me: me.clone(),
            node,
            identity,
            control: control::Control::new(names.control(), names.replies(node)),
            names,
            publish_cmd: if cluster.target.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            },
            cluster,
            settings: ArcSwap::from_pointee(settings),
            handler: OnceLock::new(),
            backend: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            resync: AtomicBool::new(true),
            recheck: AtomicBool::new(false),
            wake: Notify::new(),
            rooms: Mutex::new(HashMap::new()),
            presence: Mutex::new(Presence::default()),
            presence_locks: (0..PRESENCE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: std::hash::RandomState::new(),
            scripts: Scripts::new(),
            metrics,
            stop: CancellationToken::new(),
            check_every: std::sync::atomic::AtomicU32::new(CHECK_EVERY),
            queued_bytes: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            push_budget: Arc::new(std::sync::atomic::AtomicUsize::new(PUSH_QUEUE_BYTES)),
        });
        let (tx, rx) = mpsc::channel(PUSH_QUEUE);
        tokio::spawn(Self::consume(Arc::downgrade(&broker), rx));
        tokio::spawn(Self::health(broker.clone(), tx));
        broker
    }

    /// Waits up to `limit` for Redis to answer; returns whether it did.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Where this node's Redis is (host:port of each node, no password), for logs.
    pub fn describe(&self) -> String {
        self.cluster.target.describe()
    }

    /// Graceful shutdown, after every session closed: this node's users leave presence (the
    /// others see the leave events at once instead of after `node_ttl`), and the node leaves
    /// the registry. Bounded by `redis_timeout` per call; Redis out of reach leaves it to the
    /// other nodes.
    pub async fn shutdown(&self) {
        if self.ready() {
            if let Err(e) = self.remove_node(self.node).await {
                warn!(error = %e, "could not take this node out of the cluster; the others will after cluster.node_ttl");
            }
        }
        self.stop.cancel();
    }

    fn handler(&self) -> Option<Arc<dyn BrokerHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    fn settings(&self) -> RoomSettings {
        **self.settings.load()
    }

    /// How long a room with members anywhere is kept between two position checks of the
    /// nodes that have them: three checks, or the history's time when that is longer.
    fn hold(&self) -> Duration {
        (TICK * CHECK_EVERY * 3).max(self.settings().history_ttl)
    }

    /// How long a room nobody is in is kept: `history_ttl` after its last message or member.
    fn idle(&self) -> Duration {
        self.settings().history_ttl
    }

    /// The connections, when Redis is reachable; otherwise `unavailable` at once.
    fn backend(&self) -> Result<Arc<Backend>, BrokerError> {
        if !self.up.load(Ordering::Acquire) {
            return Err(unavailable("Redis is out of reach"));
        }
        self.backend
            .load_full()
            .ok_or_else(|| unavailable("not connected to Redis"))
    }

    /// Runs one Redis call with `cluster.redis_timeout`, timing it. A failure wakes the health
    /// loop, which decides whether Redis is out of reach.
    async fn call<T>(
        &self,
        what: &'static str,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let started = Instant::now();
        match tokio::time::timeout(self.cluster.redis_timeout, op).await {
            Ok(Ok(v)) => {
                self.metrics
                    .roundtrip
                    .observe(started.elapsed().as_secs_f64());
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.wake.notify_one();
                }
                Err(unavailable(format!("{what}: {e}")))
            }
            Err(_) => {
                self.wake.notify_one();
                Err(unavailable(format!(
                    "{what}: no answer within cluster.redis_timeout"
                )))
            }
        }
    }

    fn slot(&self, room: &RoomName) -> Arc<RoomSlot> {
        lock(&self.rooms)
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(RoomSlot {
                    op: tokio::sync::Mutex::new(()),
                    state: Mutex::new(RoomState {
                        refs: 0,
                        subscribed: false,
                        idle: 0,
                        removed: false,
                        seq: Sequencer::new(),
                    }),
                })
            })
            .clone()
    }

    fn presence_lock(&self, room: &RoomName, user: &str) -> &tokio::sync::Mutex<()> {
        let n = self.hasher.hash_one((room, user)) as usize % PRESENCE_STRIPES;
        &self.presence_locks[n]
    }

    // ---- publishing ----

    async fn publish_now(&self, req: PublishRequest<'_>) -> Result<u64, BrokerError> {
        let backend = self.backend()?;
        let settings = self.settings();
        let draft = MessageDraft::new(req.room, req.from, req.data, now_ms());
        let keys = self.names.room(req.room);
        let mut conn = backend.cmd.clone();
        let mut invocation = self.scripts.publish.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.stream)
            .key(&keys.users)
            .arg(draft.head())
            .arg(new_epoch())
            .arg(settings.history_size)
            .arg(ms(self.idle()))
            .arg(ms(self.hold()))
            .arg(payload::encode_origin(req.origin))
            .arg(self.publish_cmd)
            .arg(&keys.channel);
        self.call("publish", invocation.invoke_async::<u64>(&mut conn))
            .await
    }

    // ---- subscriptions ----

    async fn subscribe_room(&self, room: &RoomName) -> Result<(), BrokerError> {
        loop {
            let slot = self.slot(room);
            let _op = slot.op.lock().await;
            {
                let mut st = lock(&slot.state);
                if st.removed {
                    continue;
                }
                if st.subscribed {
                    st.refs += 1;
                    return Ok(());
                }
            }
            let backend = self.backend()?;
            let keys = self.names.room(room);
            let mut sub = backend.sub.clone();
            let subscribed = self.call("subscribe", sub.subscribe(&keys.channel)).await;
            if let Err(e) = subscribed {
                self.forget_if_idle(room, &slot);
                return Err(e);
            }
            lock(&slot.state).subscribed = true;
            match self.position(&backend, &keys).await {
                Ok((epoch, offset)) => {
                    let mut st = lock(&slot.state);
                    st.refs += 1;
                    let step = st.seq.baseline(epoch, offset);
                    self.apply(room, &slot, &mut st, step);
                    return Ok(());
                }
                Err(e) => {
                    // Subscribed without a position: the next tick reads it.
                    lock(&slot.state).seq.rebase();
                    self.recheck.store(true, Ordering::Release);
                    drop(_op);
                    self.schedule_unsubscribe(room, &slot);
                    return Err(e);
                }
            }
        }
    }

    /// The room's epoch (`None`: no stream yet) and last offset.
    async fn position(
        &self,
        backend: &Backend,
        keys: &RoomKeys,
    ) -> Result<(Option<Arc<str>>, u64), BrokerError> {
        let mut conn = backend.cmd.clone();
        let (epoch, offset): (Option<String>, Option<u64>) = self
            .call(
                "position",
                redis::cmd("HMGET")
                    .arg(&keys.meta)
                    .arg("epoch")
                    .arg("offset")
                    .query_async(&mut conn),
            )
            .await?;
        Ok((epoch.map(Arc::from), offset.unwrap_or(0)))
    }

    /// A room that never got subscribed leaves the map again.
    fn forget_if_idle(&self, room: &RoomName, slot: &Arc<RoomSlot>) {
        let mut rooms = lock(&self.rooms);
        let mut st = lock(&slot.state);
        if st.refs == 0 && !st.subscribed && !st.removed {
            st.removed = true;
            if rooms.get(room).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                rooms.remove(room);
            }
        }
    }

    fn unsubscribe_room(&self, room: &RoomName) {
        let Some(slot) = lock(&self.rooms).get(room).cloned() else {
            return;
        };
        {
            let mut st = lock(&slot.state);
            st.refs = st.refs.saturating_sub(1);
            if st.refs > 0 {
                return;
            }
        }
        self.schedule_unsubscribe(room, &slot);
    }

    /// Unsubscribes [`UNSUBSCRIBE_DELAY`] from now unless a member came back meanwhile.
    fn schedule_unsubscribe(&self, room: &RoomName, slot: &Arc<RoomSlot>) {
        let idle = {
            let mut st = lock(&slot.state);
            st.idle += 1;
            st.idle
        };
        let Some(me) = self.me() else { return };
        let room = room.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = me.stop.cancelled() => return,
                _ = tokio::time::sleep(UNSUBSCRIBE_DELAY) => {}
            }
            let _op = slot.op.lock().await;
            {
                let mut rooms = lock(&me.rooms);
                let mut st = lock(&slot.state);
                if st.refs > 0 || st.idle != idle || st.removed {
                    return;
                }
                st.removed = true;
                if rooms.get(&room).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    rooms.remove(&room);
                }
                if !st.subscribed {
                    return;
                }
            }
            // Out of reach: the subscription goes with the connection, or is dropped at the
            // next unsubscribe; its messages meanwhile find no room and are ignored.
            if let Ok(backend) = me.backend() {
                let channel = me.names.room(&room).channel;
                let mut sub = backend.sub.clone();
                if let Err(e) = me.call("unsubscribe", sub.unsubscribe(&channel)).await {
                    debug!(error = %e, "unsubscribe failed");
                }
            }
        });
    }

    /// This broker as its tasks hold it.
    fn me(&self) -> Option<Arc<RedisBroker>> {
        self.me.upgrade()
    }

    // ---- what arrives on the channels ----

    /// The push sender given to the subscriber connection: never blocks the connection, and
    /// past [`PUSH_QUEUE`] or [`PUSH_QUEUE_BYTES`] drops the message and asks for a resync
    /// (the history has it).
    fn push_sender(&self, tx: mpsc::Sender<Pushed>) -> PushSender {
        let me = self.me.clone();
        let queued = self.queued_bytes.clone();
        let budget = self.push_budget.clone();
        Box::new(move |info: PushInfo| {
            let bytes: usize = info
                .data
                .iter()
                .map(|v| match v {
                    Value::BulkString(b) => b.len(),
                    _ => 0,
                })
                .sum();
            let full = queued.load(Ordering::Relaxed) + bytes > budget.load(Ordering::Relaxed);
            let sent = !full && {
                queued.fetch_add(bytes, Ordering::Relaxed);
                let sent = tx.try_send(Pushed { info, bytes });
                if sent.is_err() {
                    queued.fetch_sub(bytes, Ordering::Relaxed);
                }
                sent.is_ok()
            };
            if !sent {
                // Read back at the next tick (not at once: a node this busy needs no more work
                // per dropped message).
                if let Some(me) = me.upgrade() {
                    if !tx.is_closed() && !me.recheck.swap(true, Ordering::AcqRel) {
                        warn!(
                            messages = PUSH_QUEUE,
                            bytes = PUSH_QUEUE_BYTES,
                            "pub/sub messages arrive faster than this node sequences them: dropped, to be read from the history"
                        );
                    }
                }
            }
            Ok(())
        })
    }

    /// Sequences everything the subscriber connection receives, in its order.
    async fn consume(me: Weak<RedisBroker>, mut rx: mpsc::Receiver<Pushed>) {
        while let Some(Pushed { info, bytes }) = rx.recv().await {
            let Some(me) = me.upgrade() else { return };
            me.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            match info.kind {
                PushKind::Message | PushKind::SMessage => {
                    let mut data = info.data.into_iter();
                    if let (Some(Value::BulkString(channel)), Some(Value::BulkString(body))) =
                        (data.next(), data.next())
                    {
                        me.on_message(&channel, Bytes::from(body));
                    }
                }
                PushKind::Disconnection => {
                    // Messages published until the subscriptions are back are lost: resync.
                    me.resync.store(true, Ordering::Release);
                    me.wake.notify_one();
                }
                PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                    // Redis Cluster drops the shard channels of a slot that moved to another
                    // master: one this node still wants is subscribed again where it is now.
                    if let Some(Value::BulkString(channel)) = info.data.first() {
                        if me.still_wanted(channel) {
                            me.resync.store(true, Ordering::Release);
                            me.wake.notify_one();
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether this node still means to be subscribed to `channel` (an unsubscribe it did
    /// not ask for is then Redis's doing).
    fn still_wanted(&self, channel: &[u8]) -> bool {
        if self.control.which(channel).is_some() {
            return true;
        }
        let Some(room) = self.names.room_of_channel(channel) else {
            return false;
        };
        let slot = lock(&self.rooms).get(&room).cloned();
        slot.is_some_and(|slot| {
            let st = lock(&slot.state);
            st.subscribed && !st.removed
        })
    }

    fn on_message(&self, channel: &[u8], body: Bytes) {
        if let Some(kind) = self.control.which(channel) {
            self.on_control(kind, &body);
            return;
        }
        let Some(room) = self.names.room_of_channel(channel) else {
            return;
        };
        let Some(slot) = lock(&self.rooms).get(&room).cloned() else {
            return;
        };
        match payload::decode(&body) {
            Some(Payload::Message {
                offset,
                epoch,
                origin,
                frame,
            }) => {
                let mut st = lock(&slot.state);
                // One epoch string per room, not per message.
                let epoch = match st.seq.epoch() {
                    Some(e) if **e == *epoch => e.clone(),
                    _ => Arc::from(epoch),
                };
                let p = Arc::new(Publication::new(epoch, offset, frame, origin));
                let step = st.seq.offer(p);
                self.apply(&room, &slot, &mut st, step);
            }
            Some(Payload::Presence {
                event,
                version,
                user,
            }) => {
                if let Some(h) = self.handler() {
                    h.on_presence(
                        &room,
                        PresenceChange {
                            event,
                            user: Arc::from(user),
                            version,
                        },
                    );
                }
            }
            None => debug!("ignored a payload this version does not know"),
        }
    }

    /// Carries out a sequencer step. Takes the room's state to show it is called under its
    /// lock: deliveries of one room never interleave, so the hub sees offsets in order.
    fn apply(&self, room: &RoomName, slot: &Arc<RoomSlot>, _locked: &mut RoomState, step: Step) {
        let handler = self.handler();
        if step.lost {
            self.metrics.lost.inc();
            warn!(room = %room, "missed messages the history no longer holds, or a new epoch: closing the room's sessions here with 1012");
            if let Some(h) = &handler {
                h.on_stream_lost(room);
            }
        }
        if let Some(h) = &handler {
            for p in step.deliver {
                h.on_publication(room, p);
            }
        }
        if let Some(after) = step.fill {
            self.spawn_fill(room, slot, after);
        }
    }

    fn spawn_fill(&self, room: &RoomName, slot: &Arc<RoomSlot>, after: u64) {
        let Some(me) = self.me() else { return };
        let room = room.clone();
        let slot = slot.clone();
        tokio::spawn(async move { me.fill(&room, &slot, after).await });
    }

    /// Reads the stream after `after` and hands it to the room's sequencer.
    async fn fill(&self, room: &RoomName, slot: &Arc<RoomSlot>, after: u64) {
        let epoch = lock(&slot.state).seq.epoch().cloned();
        let read = match self.backend() {
            Ok(backend) => {
                self.read_stream(&backend, room, epoch.as_deref(), after)
                    .await
            }
            Err(e) => Err(e),
        };
        let mut st = lock(&slot.state);
        match read {
            Ok(read) => {
                let replayed = !read.entries.is_empty();
                let step = st.seq.filled(read);
                if replayed && !step.lost {
                    self.metrics.replays.inc();
                    info!(room = %room, "missed messages delivered from the history");
                }
                self.apply(room, slot, &mut st, step);
            }
            Err(e) => {
                debug!(room = %room, error = %e, "fill failed; the next tick retries");
                st.seq.abandon_fill();
                self.recheck.store(true, Ordering::Release);
            }
        }
    }

    /// The room's position and its stream after `after` (fill mode: nothing is created).
    async fn read_stream(
        &self,
        backend: &Backend,
        room: &RoomName,
        epoch: Option<&str>,
        after: u64,
    ) -> Result<StreamRead, BrokerError> {
        let read = self
            .run_read(
                backend,
                room,
                ReadMode::Fill,
                epoch.unwrap_or(""),
                &after.to_string(),
                0,
            )
            .await?;
        Ok(StreamRead {
            epoch: read.epoch,
            offset: read.offset,
            entries: read.entries,
        })
    }

    /// The read script: the room's position and its stream after `after`, in `mode`.
    async fn run_read(
        &self,
        backend: &Backend,
        room: &RoomName,
        mode: ReadMode,
        epoch: &str,
        after: &str,
        presence_limit: usize,
    ) -> Result<Read, BrokerError> {
        let keys = self.names.room(room);
        let mut conn = backend.cmd.clone();
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.stream)
            .key(&keys.users)
            .arg(mode.arg())
            .arg(new_epoch())
            .arg(epoch)
            .arg(after)
            .arg(presence_limit);
        let what = mode.what();
        let v: Value = self.call(what, invocation.invoke_async(&mut conn)).await?;
        decode_read(v).ok_or_else(|| unavailable(format!("{what}: unexpected reply")))
    }

    // ---- joining ----

    async fn recover_now(
        &self,
        room: &RoomName,
        since: Option<&Since>,
    ) -> Result<Recovery, BrokerError> {
        let backend = self.backend()?;
        let settings = self.settings();
        let read = self
            .run_read(
                &backend,
                room,
                ReadMode::Join,
                since.map_or("", |s| s.epoch.as_str()),
                &since.map_or(String::new(), |s| s.offset.to_string()),
                settings.presence_limit,
            )
            .await?;
        let epoch = read
            .epoch
            .ok_or_else(|| unavailable("recover: the room has no epoch"))?;
        // A room this node subscribed to before it had a stream: its members now hold this
        // epoch, so the sequencer must know it to notice a change.
        if let Some(slot) = lock(&self.rooms).get(room).cloned() {
            lock(&slot.state).seq.adopt(&epoch);
        }
        Ok(Recovery {
            epoch,
            offset: read.offset,
            publications: read.entries,
            recovered: read.recovered,
            members_total: (read.users > read.members.len()).then_some(read.users),
            members: read.members,
            presence_version: read.presence_version,
        })
    }

    // ---- presence ----

    async fn presence_join_now(&self, room: &RoomName, user: &Arc<str>) -> Result<(), BrokerError> {
        let backend = self.backend()?;
        let _serial = self.presence_lock(room, user).lock().await;
        {
            let mut p = lock(&self.presence);
            p.mine.insert((room.clone(), user.clone()));
            p.pending_leaves.remove(&(room.clone(), user.clone()));
        }
        let joined = self.assert_presence(&backend, room, user).await;
        if joined.is_err() {
            // It may have been applied all the same: a leave makes sure it is not left over.
            let mut p = lock(&self.presence);
            p.mine.remove(&(room.clone(), user.clone()));
            p.pending_leaves.insert((room.clone(), user.clone()));
        }
        joined
    }

    /// Records this node's share of `user` in `room` (idempotent).
    async fn assert_presence(
        &self,
        backend: &Backend,
        room: &RoomName,
        user: &str,
    ) -> Result<(), BrokerError> {
        let keys = self.names.room(room);
        let mut conn = backend.cmd.clone();
        let mut node_conn = backend.cmd.clone();
        let mut invocation = self.scripts.presence_join.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.stream)
            .key(&keys.users)
            .key(&keys.contrib)
            .arg(new_epoch())
            .arg(payload::contribution(self.node, user))
            .arg(user)
            .arg(self.settings().presence_limit)
            .arg(ms(self.hold()))
            .arg(self.publish_cmd)
            .arg(&keys.channel);
        // The node's own list first: a node that dies between the two leaves nothing behind
        // that its removal would not find.
        let entry = payload::node_entry(room, user);
        self.call(
            "presence",
            redis::cmd("SADD")
                .arg(self.names.node_presence(self.node))
                .arg(&entry)
                .exec_async(&mut node_conn),
        )
        .await?;
        self.call("presence", invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    /// Takes `node`'s share of `user` in `room` away (idempotent).
    async fn retract_presence(
        &self,
        backend: &Backend,
        node: NodeId,
        room: &RoomName,
        user: &str,
    ) -> Result<(), BrokerError> {
        let keys = self.names.room(room);
        let mut conn = backend.cmd.clone();
        let mut invocation = self.scripts.presence_leave.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.users)
            .key(&keys.contrib)
            .arg(payload::contribution(node, user))
            .arg(user)
            .arg(self.settings().presence_limit)
            .arg(ms(self.idle()))
            .arg(self.publish_cmd)
            .arg(&keys.channel);
        self.call("presence", invocation.invoke_async::<i64>(&mut conn))
            .await?;
        let mut node_conn = backend.cmd.clone();
        self.call(
            "presence",
            redis::cmd("SREM")
                .arg(self.names.node_presence(node))
                .arg(payload::node_entry(room, user))
                .exec_async(&mut node_conn),
        )
        .await
    }

    /// Applies a leave now, or records it for the next resync.
    async fn leave_presence(&self, room: RoomName, user: Arc<str>) {
        let _serial = self.presence_lock(&room, &user).lock().await;
        let key = (room, user);
        if lock(&self.presence).mine.contains(&key) {
            return; // joined again meanwhile
        }
        let done = match self.backend() {
            Ok(backend) => {
                self.retract_presence(&backend, self.node, &key.0, &key.1)
                    .await
            }
            Err(e) => Err(e),
        };
        if done.is_err() {
            lock(&self.presence).pending_leaves.insert(key);
        }
    }

    // ---- the health loop ----

    async fn health(me: Arc<RedisBroker>, tx: mpsc::Sender<Pushed>) {
        let mut failures = 0u32;
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = me.stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
                _ = me.wake.notified() => {}
            }
            if me.backend.load().is_none() || failures >= RECONNECT_AFTER {
                match me.connect(&tx).await {
                    Ok(backend) => {
                        me.backend.store(Some(Arc::new(backend)));
                        me.resync.store(true, Ordering::Release);
                        failures = 0;
                    }
                    Err(e) => {
                        me.set_down(&format!("cannot connect: {e}"));
                        continue;
                    }
                }
            }
            let Some(backend) = me.backend.load_full() else {
                continue;
            };
            if let Err(e) = me.ping(&backend).await {
                failures += 1;
                me.set_down(&e.to_string());
                continue;
            }
            failures = 0;
            if me.resync.swap(false, Ordering::AcqRel) || !me.up.load(Ordering::Acquire) {
                if let Err(e) = me.resync(&backend).await {
                    me.resync.store(true, Ordering::Release);
                    me.set_down(&e.to_string());
                    continue;
                }
                ticks = 0;
            }
            me.heartbeat(&backend).await;
            ticks += 1;
            let due = ticks.is_multiple_of(me.check_every.load(Ordering::Relaxed).max(1));
            if me.recheck.swap(false, Ordering::AcqRel) || due {
                me.check_rooms(&backend).await;
            }
        }
    }

    async fn connect(&self, tx: &mpsc::Sender<Pushed>) -> redis::RedisResult<Backend> {
        let target = &self.cluster.target;
        let timeout = self.cluster.redis_timeout;
        let cmd = target.connect(timeout, None).await?;
        let sub = target
            .connect(timeout, Some(self.push_sender(tx.clone())))
            .await?;
        Ok(Backend { cmd, sub })
    }

    async fn ping(&self, backend: &Backend) -> Result<(), BrokerError> {
        let limit = self.cluster.redis_timeout.min(PING_TIMEOUT);
        let (mut cmd, mut sub) = (backend.cmd.clone(), backend.sub.clone());
        let both = async {
            redis::cmd("PING").exec_async(&mut cmd).await?;
            redis::cmd("PING").exec_async(&mut sub).await
        };
        let started = Instant::now();
        match tokio::time::timeout(limit, both).await {
            Ok(Ok(())) => {
                self.metrics
                    .roundtrip
                    .observe(started.elapsed().as_secs_f64() / 2.0);
                Ok(())
            }
            Ok(Err(e)) => Err(unavailable(format!("ping: {e}"))),
            Err(_) => Err(unavailable(format!("ping: no answer within {limit:?}"))),
        }
    }

    fn set_down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            warn!(redis = %self.describe(), error = why, "Redis out of reach: joins and publishes answer `unavailable` until it is back");
        } else {
            debug!(error = why, "Redis still out of reach");
        }
        self.resync.store(true, Ordering::Release);
        self.metrics.redis_up.set(0);
    }

    /// After a connection was (re)made or subscriptions may be lost: subscribe again,
    /// re-assert this node's presence, then check every room's position.
    async fn resync(&self, backend: &Backend) -> Result<(), BrokerError> {
        let mut sub = backend.sub.clone();
        for channel in self.control.channels() {
            self.call("subscribe", sub.subscribe(channel)).await?;
        }
        let slots: Vec<(RoomName, Arc<RoomSlot>)> = lock(&self.rooms)
            .iter()
            .map(|(r, s)| (r.clone(), s.clone()))
            .collect();
        let channels: Vec<String> = slots
            .iter()
            .filter(|(_, slot)| lock(&slot.state).subscribed)
            .map(|(room, _)| self.names.room(room).channel)
            .collect();
        let results: Vec<Result<(), BrokerError>> = stream::iter(channels)
            .map(|channel| {
                let mut sub = backend.sub.clone();
                async move { self.call("subscribe", sub.subscribe(&channel)).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        let (mine, leaves): (Vec<_>, Vec<_>) = {
            let p = lock(&self.presence);
            (
                p.mine.iter().cloned().collect(),
                p.pending_leaves.iter().cloned().collect(),
            )
        };
        for (room, user) in leaves {
            let _serial = self.presence_lock(&room, &user).lock().await;
            if lock(&self.presence)
                .mine
                .contains(&(room.clone(), user.clone()))
            {
                continue;
            }
            self.retract_presence(backend, self.node, &room, &user)
                .await?;
            lock(&self.presence)
                .pending_leaves
                .remove(&(room.clone(), user.clone()));
        }
        let results: Vec<Result<(), BrokerError>> = stream::iter(mine)
            .map(|(room, user)| async move { self.assert_presence(backend, &room, &user).await })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), _>>()?;
        if !self.up.swap(true, Ordering::AcqRel) {
            info!(redis = %self.describe(), "Redis reachable: serving joins and publishes");
        }
        self.metrics.redis_up.set(1);
        self.heartbeat(backend).await;
        self.check_rooms(backend).await;
        Ok(())
    }

    /// Position check of every room with local members: keeps the room alive in Redis and
    /// replays or closes (1012) what pub/sub missed.
    async fn check_rooms(&self, backend: &Backend) {
        let slots: Vec<(RoomName, Arc<RoomSlot>)> = lock(&self.rooms)
            .iter()
            .map(|(r, s)| (r.clone(), s.clone()))
            .collect();
        stream::iter(slots)
            .for_each_concurrent(CONCURRENCY, |(room, slot)| async move {
                self.check_room(backend, &room, &slot).await;
            })
            .await;
    }

    async fn check_room(&self, backend: &Backend, room: &RoomName, slot: &Arc<RoomSlot>) {
        let (waiting, base) = {
            let st = lock(&slot.state);
            if !st.subscribed || st.refs == 0 {
                return;
            }
            (st.seq.busy(), st.seq.waits_for_baseline())
        };
        if waiting {
            // A subscribe whose position read failed waits for one: take it now. (A fill
            // under way is left alone.)
            if base {
                let keys = self.names.room(room);
                if let Ok((epoch, offset)) = self.position(backend, &keys).await {
                    let mut st = lock(&slot.state);
                    if st.seq.waits_for_baseline() {
                        let step = st.seq.baseline(epoch, offset);
                        self.apply(room, slot, &mut st, step);
                    }
                }
            }
            return;
        }
        let keys = self.names.room(room);
        let mut conn = backend.cmd.clone();
        let mut invocation = self.scripts.check.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.users)
            .key(&keys.contrib)
            .arg(ms(self.hold()));
        let Ok(v) = self
            .call("check", invocation.invoke_async::<Value>(&mut conn))
            .await
        else {
            return;
        };
        let (epoch, offset) = decode_position(v);
        let mut st = lock(&slot.state);
        match st.seq.check(epoch, offset) {
            Check::InStep => {}
            Check::Fill(after) => {
                drop(st);
                self.spawn_fill(room, slot, after);
            }
            Check::Lost => {
                let step = Step {
                    lost: true,
                    ..Step::default()
                };
                self.apply(room, slot, &mut st, step);
            }
        }
    }

    // ---- nodes ----

    /// Beats into the registry, counts the live nodes and removes the dead ones.
    async fn heartbeat(&self, backend: &Backend) {
        let mut conn = backend.cmd.clone();
        let mut invocation = self.scripts.heartbeat.prepare_invoke();
        invocation
            .key(self.names.beats())
            .key(self.names.node_presence(self.node))
            .arg(self.node)
            .arg(ms(self.cluster.node_ttl))
            .arg(ms(self.hold().max(self.cluster.node_ttl * 2)));
        let beat: Result<Vec<u64>, _> = self
            .call("heartbeat", invocation.invoke_async(&mut conn))
            .await;
        let Ok(beat) = beat else { return };
        let Some((live, dead)) = beat.split_first() else {
            return;
        };
        self.metrics.nodes.set(*live as i64);
        for node in dead {
            if *node == self.node {
                continue;
            }
            let mut conn = backend.cmd.clone();
            let claimed: Result<Option<String>, _> = self
                .call(
                    "reap",
                    redis::cmd("SET")
                        .arg(self.names.reaper(*node))
                        .arg(self.node)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms(self.cluster.node_ttl))
                        .query_async(&mut conn),
                )
                .await;
            if matches!(claimed, Ok(Some(_))) {
                info!(node = node, "a node stopped beating for cluster.node_ttl: removing its sessions from presence");
                if let Err(e) = self.remove_node(*node).await {
                    warn!(node = node, error = %e, "removing a dead node failed; retried later");
                }
            }
        }
    }

    /// Takes every presence share of `node` away (with leave events), then the node.
    async fn remove_node(&self, node: NodeId) -> Result<(), BrokerError> {
        let backend = self
            .backend
            .load_full()
            .ok_or_else(|| unavailable("not connected"))?;
        let mut conn = backend.cmd.clone();
        let key = self.names.node_presence(node);
        let entries: Vec<String> = self
            .call(
                "reap",
                redis::cmd("SMEMBERS").arg(&key).query_async(&mut conn),
            )
            .await?;
        let backend = &backend;
        let shares: Vec<(RoomName, Arc<str>)> = entries
            .iter()
            .filter_map(|e| payload::parse_node_entry(e))
            .collect();
        let results: Vec<Result<(), BrokerError>> =
            stream::iter(shares)
                .map(|(room, user)| async move {
                    self.retract_presence(backend, node, &room, &user).await
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        results.into_iter().collect::<Result<(), _>>()?;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&key).ignore();
        pipe.cmd("HDEL").arg(self.names.beats()).arg(node).ignore();
        let mut conn = backend.cmd.clone();
        self.call("reap", pipe.exec_async(&mut conn)).await
    }

    /// This node as `/api/nodes` lists it.
    fn node_info(&self) -> NodeInfo {
        let (connections, rooms) = self
            .handler()
            .map_or((0, 0), |h| (h.local_sessions(), h.local_rooms().len()));
        NodeInfo {
            node: self.identity.name.clone(),
            connections,
            rooms,
            started_at: self.identity.started_at,
        }
    }
}

/// What the read script answered.
/// What the read script is asked for: a join (may start a new epoch, reads presence) or a
/// gap fill (creates nothing).
#[derive(Clone, Copy)]
enum ReadMode {
    Join,
    Fill,
}

impl ReadMode {
    fn arg(self) -> &'static str {
        match self {
            ReadMode::Join => "join",
            ReadMode::Fill => "fill",
        }
    }

    fn what(self) -> &'static str {
        match self {
            ReadMode::Join => "recover",
            ReadMode::Fill => "read history",
        }
    }
}

struct Read {
    epoch: Option<Arc<str>>,
    offset: u64,
    recovered: bool,
    presence_version: u64,
    users: usize,
    members: Vec<Arc<str>>,
    entries: Vec<Arc<Publication>>,
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d as u64),
        _ => None,
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

fn decode_read(v: Value) -> Option<Read> {
    let mut parts = array(v)?.into_iter();
    let epoch = text(parts.next()?)?;
    if epoch.is_empty() {
        return Some(Read {
            epoch: None,
            offset: 0,
            recovered: false,
            presence_version: 0,
            users: 0,
            members: Vec::new(),
            entries: Vec::new(),
        });
    }
    let epoch: Arc<str> = Arc::from(epoch);
    let offset = int(&parts.next()?)?;
    let recovered = int(&parts.next()?)? == 1;
    let presence_version = int(&parts.next()?)?;
    let users = int(&parts.next()?)? as usize;
    let members = array(parts.next()?)?
        .into_iter()
        .filter_map(text)
        .map(Arc::from)
        .collect();
    let mut entries = Vec::new();
    let mut flat = array(parts.next()?)?.into_iter();
    while let (Some(offset), Some(Value::BulkString(frame)), Some(origin)) =
        (flat.next(), flat.next(), flat.next())
    {
        let frame = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(Bytes::from(frame)).ok()?;
        let origin = text(origin).and_then(|o| payload::decode_origin(o.as_bytes()));
        entries.push(Arc::new(Publication::new(
            epoch.clone(),
            int(&offset)?,
            frame,
            origin,
        )));
    }
    Some(Read {
        epoch: Some(epoch),
        offset,
        recovered,
        presence_version,
        users,
        members,
        entries,
    })
}

/// The check script's answer: the room's epoch (`None`: gone) and last offset.
fn decode_position(v: Value) -> (Option<Arc<str>>, u64) {
    let mut parts = array(v).unwrap_or_default().into_iter();
    let epoch = parts.next().and_then(text).filter(|e| !e.is_empty());
    let offset = parts.next().as_ref().and_then(int).unwrap_or(0);
    (epoch.map(Arc::from), offset)
}

impl Broker for RedisBroker {
    fn attach(&self, handler: Weak<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    fn publish<'a>(&'a self, req: PublishRequest<'a>) -> BrokerFuture<'a, u64> {
        Box::pin(self.publish_now(req))
    }

    fn subscribe<'a>(&'a self, room: &'a RoomName) -> BrokerFuture<'a, ()> {
        Box::pin(self.subscribe_room(room))
    }

    fn unsubscribe(&self, room: &RoomName) {
        self.unsubscribe_room(room);
    }

    fn recover<'a>(
        &'a self,
        room: &'a RoomName,
        since: Option<&'a Since>,
    ) -> BrokerFuture<'a, Recovery> {
        Box::pin(self.recover_now(room, since))
    }

    fn presence_join<'a>(&'a self, room: &'a RoomName, user: &'a Arc<str>) -> BrokerFuture<'a, ()> {
        Box::pin(self.presence_join_now(room, user))
    }

    fn users<'a>(&'a self, room: &'a RoomName) -> BrokerFuture<'a, Vec<Arc<str>>> {
        Box::pin(async move {
            let backend = self.backend()?;
            let mut conn = backend.cmd.clone();
            let users: Vec<String> = self
                .call(
                    "users",
                    redis::cmd("HKEYS")
                        .arg(self.names.room(room).users)
                        .query_async(&mut conn),
                )
                .await?;
            Ok(users.into_iter().map(Arc::from).collect())
        })
    }

    fn presence_leave(&self, room: &RoomName, user: &Arc<str>) {
        {
            let mut p = lock(&self.presence);
            p.mine.remove(&(room.clone(), user.clone()));
        }
        let Some(me) = self.me() else { return };
        let (room, user) = (room.clone(), user.clone());
        tokio::spawn(async move { me.leave_presence(room, user).await });
    }

    fn disconnect_user<'a>(&'a self, user: &'a str, code: u16) -> BrokerFuture<'a, usize> {
        Box::pin(async move {
            let backend = self.backend()?;
            let replies = self
                .gather(
                    &backend,
                    control::Request::Disconnect {
                        user: user.to_string(),
                        code,
                    },
                )
                .await?;
            Ok(replies
                .iter()
                .filter_map(|r| match r {
                    control::Reply::Closed(n) => Some(*n),
                    _ => None,
                })
                .sum())
        })
    }

    fn rooms(&self) -> BrokerFuture<'_, Vec<RoomInfo>> {
        Box::pin(async move {
            let backend = self.backend()?;
            let replies = self.gather(&backend, control::Request::Rooms).await?;
            let mut connections: HashMap<String, usize> = HashMap::new();
            for r in replies {
                if let control::Reply::Rooms(rooms) = r {
                    for (room, n) in rooms {
                        *connections.entry(room).or_default() += n;
                    }
                }
            }
            let backend = &backend;
            let rooms: Vec<Result<RoomInfo, BrokerError>> = stream::iter(connections)
                .map(|(room, connections)| async move {
                    let users = match RoomName::from_stored(&room) {
                        Ok(name) => {
                            let mut conn = backend.cmd.clone();
                            self.call(
                                "rooms",
                                redis::cmd("HLEN")
                                    .arg(self.names.room(&name).users)
                                    .query_async::<usize>(&mut conn),
                            )
                            .await?
                        }
                        Err(_) => 0,
                    };
                    Ok(RoomInfo {
                        room,
                        members: users,
                        connections,
                    })
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            let mut rooms = rooms.into_iter().collect::<Result<Vec<_>, _>>()?;
            rooms.sort_by(|a, b| a.room.cmp(&b.room));
            Ok(rooms)
        })
    }

    fn nodes(&self) -> BrokerFuture<'_, Vec<NodeInfo>> {
        Box::pin(async move {
            let backend = self.backend()?;
            let replies = self.gather(&backend, control::Request::Nodes).await?;
            let mut nodes: Vec<NodeInfo> = replies
                .into_iter()
                .filter_map(|r| match r {
                    control::Reply::Node(n) => Some(n),
                    _ => None,
                })
                .collect();
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            Ok(nodes)
        })
    }

    fn ready(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set_settings(&self, settings: RoomSettings) {
        self.settings.store(Arc::new(settings));
    }

    fn sweep(&self, _now: Instant) {
        // Redis expires history itself; rooms leave this node with their last member.
    }

    fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
