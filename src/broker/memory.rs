//! The single-node broker: every room's stream and presence in this process's memory. Every
//! call is answered at once; the trait's futures are ready ones.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{
    ready, Broker, BrokerFuture, BrokerHandler, NodeInfo, PresenceChange, Publication,
    PublishRequest, Recovery, RoomInfo, RoomSettings,
};
use crate::protocol::{MessageDraft, PresenceEvent, RoomName, Since};

/// This node as the admin API's node list shows it.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub name: String,
    /// Unix seconds.
    pub started_at: u64,
}

/// Stream map shards: publishes to different rooms seldom wait on the same lock, and the
/// upkeep's removals block one shard at a time.
const SHARDS: usize = 16;
/// Resolution of the last-publish index: a busy room moves in it at most once per tick, so
/// the index costs a hot room a few locks a second, and the eviction order is exact to a tick.
const TICK: Duration = Duration::from_millis(100);

/// What one history entry costs besides its frame's bytes: the [`Publication`] with its
/// `Arc` counts, the frame buffer's shared header (made when the frame is first cloned for a
/// recipient), the ring slot, and an allocator header (16 bytes with glibc) for each of the
/// three allocations.
const ENTRY_OVERHEAD: usize =
    size_of::<Publication>() + 2 * size_of::<usize>() + 32 + size_of::<usize>() + 3 * 16;
/// What a room in the last-publish index costs besides its entries: its stream in an
/// `Arc<Mutex<_>>`, a map slot (hash maps run at most 7/8 full, often half: counted twice),
/// its name (64 bytes at most) and epoch, an index entry with B-tree slack (counted twice),
/// and allocator headers. Rooms nobody is in are kept only for recovery, so they are paid for
/// from the same budget as the history.
const ROOM_OVERHEAD: usize = size_of::<Mutex<Stream>>()
    + 2 * size_of::<usize>()
    + 2 * size_of::<(RoomName, Arc<Mutex<Stream>>)>()
    + 64
    + 32
    + 2 * size_of::<(u64, RoomName)>()
    + 4 * 16;

struct Stream {
    epoch: Arc<str>,
    last_offset: u64,
    history: VecDeque<Arc<Publication>>,
    /// Sum of the history's frame lengths.
    frame_bytes: usize,
    /// What the history costs in the budget ([`MemoryBroker::account`]).
    cost: usize,
    /// When the last message was published: the history is kept `ttl` after it.
    last_publish: Instant,
    /// The later of the last publish and the last member leaving: a room nobody is in is
    /// kept (its epoch, offsets and history) `ttl` after it.
    last_active: Instant,
    subscribers: usize,
    /// Users with a session in the room (presence), and how many changes they went through.
    users: HashSet<Arc<str>>,
    presence_version: u64,
    /// The room's key in the index, and the tick it was taken in. Every room that has
    /// history or nobody in it is in the index (which may also hold some rooms that have
    /// members again: the upkeep drops them when it meets them).
    index_key: Option<(u64, u64)>,
    /// Set when the stream left the map: whoever raced with that looks the room up again.
    removed: bool,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            epoch: new_epoch(),
            last_offset: 0,
            history: VecDeque::new(),
            frame_bytes: 0,
            cost: 0,
            last_publish: Instant::now(),
            last_active: Instant::now(),
            subscribers: 0,
            users: HashSet::new(),
            presence_version: 0,
            index_key: None,
            removed: false,
        }
    }

    /// What the room costs in the budget: nothing once it left the map, or while it has
    /// members and no history (an empty history holds no buffer, see `publish` and
    /// `drop_history`).
    fn history_cost(&self) -> usize {
        if self.removed || (self.history.is_empty() && self.subscribers > 0) {
            return 0;
        }
        ROOM_OVERHEAD
            + self.history.capacity() * size_of::<Arc<Publication>>()
            + self.frame_bytes
            + self.history.len() * ENTRY_OVERHEAD
    }
}

/// Rooms that have history or nobody in them, by last activity (publish, last member
/// leaving): the front is the room idle longest. Keys come from one counter, taken whenever a
/// room moves (at most once per tick), so their order is the order of the rooms' last moves.
#[derive(Default)]
struct Index {
    by_age: BTreeMap<u64, RoomName>,
    next: u64,
}

type Shard = Mutex<HashMap<RoomName, Arc<Mutex<Stream>>>>;

/// The single-node broker: streams in memory.
///
/// History is bounded three ways: `history_size` entries per room, `history_ttl` after a
/// room's last message, and `history_max_bytes` for all rooms together. Expiry and the byte
/// budget both take rooms from the front of one last-publish index, so the upkeep costs
/// O(rooms dropped · log rooms) and never walks every room.
///
/// Lock order: a shard, then a stream, then the index; the index lock is never held while
/// taking another.
pub struct MemoryBroker {
    shards: Box<[Shard]>,
    hasher: std::hash::RandomState,
    /// Streams in all shards.
    rooms: AtomicUsize,
    index: Mutex<Index>,
    /// Sum of every stream's `cost`.
    history_bytes: AtomicUsize,
    settings: arc_swap::ArcSwap<RoomSettings>,
    handler: OnceLock<Weak<dyn BrokerHandler>>,
    /// This node, for the admin API's node list.
    node: NodeIdentity,
    /// Origin and length of the index ticks.
    started: Instant,
    tick: Duration,
}

fn new_epoch() -> Arc<str> {
    let n: u32 = rand::random();
    Arc::from(format!("{n:08x}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Poisoned locks only mean another thread panicked mid-update; the data is still usable
/// for a gateway (worst case one room's state), so keep serving.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryBroker {
    pub fn new(settings: RoomSettings, node: NodeIdentity) -> Self {
        MemoryBroker {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: std::hash::RandomState::new(),
            rooms: AtomicUsize::new(0),
            index: Mutex::new(Index::default()),
            history_bytes: AtomicUsize::new(0),
            settings: arc_swap::ArcSwap::from_pointee(settings),
            handler: OnceLock::new(),
            node,
            started: Instant::now(),
            tick: TICK,
        }
    }

    /// Bytes the history of every room costs now, as the budget counts them.
    pub fn history_bytes(&self) -> usize {
        self.history_bytes.load(Ordering::Relaxed)
    }

    fn shard(&self, room: &RoomName) -> &Shard {
        let n = self.hasher.hash_one(room) as usize % SHARDS;
        &self.shards[n]
    }

    /// The room's stream, and whether it was made just now.
    fn stream(&self, room: &RoomName) -> (Arc<Mutex<Stream>>, bool) {
        let mut map = lock(self.shard(room));
        if let Some(stream) = map.get(room) {
            return (stream.clone(), false);
        }
        let stream = Arc::new(Mutex::new(Stream::new()));
        map.insert(room.clone(), stream.clone());
        self.rooms.fetch_add(1, Ordering::Relaxed);
        (stream, true)
    }

    /// Runs `f` on the room's stream, created when missing, never on one that left the map.
    fn with_stream<R>(&self, room: &RoomName, f: impl FnOnce(&mut Stream) -> R) -> R {
        loop {
            let (stream, created) = self.stream(room);
            let mut s = lock(&stream);
            if s.removed {
                continue;
            }
            if created {
                // Nobody is in it yet: like every such room, it is in the index (and paid
                // for) until it gets members, or expires.
                self.touch(&mut s, room);
                self.account(&mut s);
            }
            return f(&mut s);
        }
    }

    /// Brings the stream's `cost` and the total up to date after its history changed.
    fn account(&self, s: &mut Stream) {
        let cost = s.history_cost();
        if cost >= s.cost {
            self.history_bytes
                .fetch_add(cost - s.cost, Ordering::Relaxed);
        } else {
            self.history_bytes
                .fetch_sub(s.cost - cost, Ordering::Relaxed);
        }
        s.cost = cost;
    }

    fn tick(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.started).as_nanos() / self.tick.as_nanos().max(1)) as u64
    }

    /// Moves a room that was just active to the young end of the index (once a tick).
    fn touch(&self, s: &mut Stream, room: &RoomName) {
        let tick = self.tick(s.last_active);
        if matches!(s.index_key, Some((_, t)) if t == tick) {
            return;
        }
        let mut index = lock(&self.index);
        if let Some((key, _)) = s.index_key {
            index.by_age.remove(&key);
        }
        let key = index.next;
        index.next += 1;
        index.by_age.insert(key, room.clone());
        s.index_key = Some((key, tick));
    }

    /// The room idle longest among those in the index.
    fn oldest(&self) -> Option<(u64, RoomName)> {
        let index = lock(&self.index);
        index.by_age.first_key_value().map(|(k, r)| (*k, r.clone()))
    }

    /// Drops the history of the room at index `key` when `due` says so, and the room itself
    /// when nobody is in it (it starts afresh, with a new epoch); a room with members leaves
    /// the index. Returns false when the room is kept as it was.
    fn drop_history(&self, key: u64, room: &RoomName, due: impl Fn(&Stream) -> bool) -> bool {
        let mut map = lock(self.shard(room));
        let stream = map.get(room).cloned();
        let current = stream.as_ref().map(|stream| lock(stream));
        let Some(mut s) = current.filter(|s| matches!(s.index_key, Some((k, _)) if k == key))
        else {
            // The room moved (a publish) or left meanwhile: that entry is gone or stale.
            let mut index = lock(&self.index);
            if index.by_age.get(&key) == Some(room) {
                index.by_age.remove(&key);
            }
            return true;
        };
        if !due(&s) {
            return false;
        }
        s.history = VecDeque::new();
        s.frame_bytes = 0;
        lock(&self.index).by_age.remove(&key);
        s.index_key = None;
        s.removed = s.subscribers == 0;
        self.account(&mut s);
        if s.removed {
            drop(s);
            map.remove(room);
            self.rooms.fetch_sub(1, Ordering::Relaxed);
            if map.capacity() > 64 && map.len() < map.capacity() / 4 {
                map.shrink_to_fit();
            }
        }
        true
    }

    /// While the history is over budget, drops it from the rooms idle longest.
    fn enforce_budget(&self, max_bytes: u64) {
        while self.history_bytes() as u64 > max_bytes {
            let Some((key, room)) = self.oldest() else {
                return;
            };
            self.drop_history(key, &room, |_| true);
        }
    }
}

#[cfg(test)]
impl MemoryBroker {
    /// A broker for tests: default room settings, a node named `test`.
    pub fn for_tests() -> Self {
        Self::with_settings(RoomSettings {
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            history_max_bytes: 1 << 30,
            presence_limit: 1000,
        })
    }

    pub fn with_settings(settings: RoomSettings) -> Self {
        MemoryBroker::new(
            settings,
            NodeIdentity {
                name: "test".into(),
                started_at: 0,
            },
        )
    }
}

impl MemoryBroker {
    fn handler(&self) -> Option<Arc<dyn BrokerHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    /// [`Broker::publish`], answered at once.
    pub fn publish_now(&self, req: PublishRequest<'_>) -> u64 {
        let settings = **self.settings.load();
        let handler = self.handler();
        let draft = MessageDraft::new(req.room, req.from, req.data, now_ms());
        let offset = self.with_stream(req.room, |s| {
            s.last_offset += 1;
            let offset = s.last_offset;
            s.last_publish = Instant::now();
            s.last_active = s.last_publish;
            let frame = draft.finish(&s.epoch, offset);
            let publication = Arc::new(Publication::new(
                s.epoch.clone(),
                offset,
                Utf8Bytes::from(frame),
                req.origin,
            ));
            // A history_size lowered by a reload takes effect here.
            while !s.history.is_empty() && s.history.len() >= settings.history_size {
                if let Some(old) = s.history.pop_front() {
                    s.frame_bytes -= old.frame.len();
                }
            }
            if settings.history_size > 0 {
                s.frame_bytes += publication.frame.len();
                s.history.push_back(publication.clone());
            } else {
                s.history = VecDeque::new();
            }
            if s.subscribers == 0 || !s.history.is_empty() {
                self.touch(s, req.room);
            }
            self.account(s);
            // Delivered under the stream lock, so the hub sees offsets in order.
            if let Some(h) = &handler {
                h.on_publication(req.room, publication);
            }
            offset
        });
        self.enforce_budget(settings.history_max_bytes);
        offset
    }

    /// [`Broker::subscribe`], answered at once.
    pub fn subscribe_now(&self, room: &RoomName) {
        self.with_stream(room, |s| {
            s.subscribers += 1;
            self.account(s);
        });
    }

    /// [`Broker::recover`], answered at once.
    pub fn recover_now(&self, room: &RoomName, since: Option<&Since>) -> Recovery {
        let settings = **self.settings.load();
        self.with_stream(room, |s| {
            let limit = settings.presence_limit;
            let members: Vec<Arc<str>> = s.users.iter().take(limit).cloned().collect();
            let mut recovery = Recovery {
                epoch: s.epoch.clone(),
                offset: s.last_offset,
                publications: Vec::new(),
                recovered: true,
                members_total: (s.users.len() > members.len()).then_some(s.users.len()),
                members,
                presence_version: s.presence_version,
            };
            let Some(since) = since else {
                return recovery;
            };
            if *since.epoch != *s.epoch || since.offset > s.last_offset {
                recovery.recovered = false;
                return recovery;
            }
            // The history as a whole lives `ttl` past the room's last message.
            if s.last_publish.elapsed() <= settings.history_ttl {
                recovery.publications = s
                    .history
                    .iter()
                    .filter(|p| p.offset > since.offset)
                    .cloned()
                    .collect();
            }
            let first_needed = since.offset + 1;
            let have_from = recovery
                .publications
                .first()
                .map(|p| p.offset)
                .unwrap_or(s.last_offset + 1);
            recovery.recovered = have_from <= first_needed;
            recovery
        })
    }

    /// [`Broker::presence_join`], answered at once. On one node, a user's first session
    /// here is their first session anywhere.
    pub fn presence_join_now(&self, room: &RoomName, user: &Arc<str>) {
        let limit = self.settings.load().presence_limit;
        let handler = self.handler();
        self.with_stream(room, |s| {
            if !s.users.insert(user.clone()) {
                return;
            }
            s.presence_version += 1;
            // Big rooms are silent (`rooms.presence_limit`).
            if s.users.len() <= limit {
                if let Some(h) = &handler {
                    h.on_presence(room, self.change(s, PresenceEvent::Join, user));
                }
            }
        });
    }

    fn change(&self, s: &Stream, event: PresenceEvent, user: &Arc<str>) -> PresenceChange {
        PresenceChange {
            event,
            user: user.clone(),
            version: s.presence_version,
        }
    }
}

impl Broker for MemoryBroker {
    fn attach(&self, handler: Weak<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    fn publish<'a>(&'a self, req: PublishRequest<'a>) -> BrokerFuture<'a, u64> {
        ready(Ok(self.publish_now(req)))
    }

    fn subscribe<'a>(&'a self, room: &'a RoomName) -> BrokerFuture<'a, ()> {
        self.subscribe_now(room);
        ready(Ok(()))
    }

    fn unsubscribe(&self, room: &RoomName) {
        let max_bytes = self.settings.load().history_max_bytes;
        let stream = lock(self.shard(room)).get(room).cloned();
        let Some(stream) = stream else {
            return;
        };
        {
            let mut s = lock(&stream);
            s.subscribers = s.subscribers.saturating_sub(1);
            if s.subscribers == 0 {
                // Kept for the members' recovery after a blip, then forgotten.
                s.last_active = Instant::now();
                self.touch(&mut s, room);
                self.account(&mut s);
            }
        }
        self.enforce_budget(max_bytes);
    }

    fn recover<'a>(
        &'a self,
        room: &'a RoomName,
        since: Option<&'a Since>,
    ) -> BrokerFuture<'a, Recovery> {
        ready(Ok(self.recover_now(room, since)))
    }

    fn presence_join<'a>(&'a self, room: &'a RoomName, user: &'a Arc<str>) -> BrokerFuture<'a, ()> {
        self.presence_join_now(room, user);
        ready(Ok(()))
    }

    fn users<'a>(&'a self, room: &'a RoomName) -> BrokerFuture<'a, Vec<Arc<str>>> {
        let stream = lock(self.shard(room)).get(room).cloned();
        let users = stream.map_or_else(Vec::new, |s| lock(&s).users.iter().cloned().collect());
        ready(Ok(users))
    }

    fn presence_leave(&self, room: &RoomName, user: &Arc<str>) {
        let limit = self.settings.load().presence_limit;
        let handler = self.handler();
        let stream = lock(self.shard(room)).get(room).cloned();
        let Some(stream) = stream else {
            return;
        };
        let mut s = lock(&stream);
        if !s.users.remove(user) {
            return;
        }
        s.presence_version += 1;
        // Counted before the user left, as at join: the same rooms stay silent.
        if s.users.len() < limit {
            if let Some(h) = &handler {
                h.on_presence(room, self.change(&s, PresenceEvent::Leave, user));
            }
        }
    }

    fn disconnect_user<'a>(&'a self, user: &'a str, code: u16) -> BrokerFuture<'a, usize> {
        let closed = self.handler().map_or(0, |h| h.disconnect_local(user, code));
        ready(Ok(closed))
    }

    fn rooms(&self) -> BrokerFuture<'_, Vec<RoomInfo>> {
        let local = self.handler().map(|h| h.local_rooms()).unwrap_or_default();
        let mut rooms: Vec<RoomInfo> = local
            .into_iter()
            .map(|(room, connections)| {
                let members = lock(self.shard(&room))
                    .get(&room)
                    .map_or(0, |s| lock(s).users.len());
                RoomInfo {
                    room: room.to_string(),
                    members,
                    connections,
                }
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        ready(Ok(rooms))
    }

    fn nodes(&self) -> BrokerFuture<'_, Vec<NodeInfo>> {
        let (connections, rooms) = self
            .handler()
            .map_or((0, 0), |h| (h.local_sessions(), h.local_rooms().len()));
        ready(Ok(vec![NodeInfo {
            node: self.node.name.clone(),
            connections,
            rooms,
            started_at: self.node.started_at,
        }]))
    }

    fn ready(&self) -> bool {
        true
    }

    fn set_settings(&self, settings: RoomSettings) {
        self.settings.store(Arc::new(settings));
    }

    fn sweep(&self, now: Instant) {
        let settings = **self.settings.load();
        // Rooms idle past the ttl sit at the front of the index. Its order is exact to a tick,
        // so a room can expire up to one tick (plus one upkeep period) late; `recover` checks
        // the ttl of the history itself, so recovery never replays expired history.
        while let Some((key, room)) = self.oldest() {
            // A room that has members again and no history only leaves the index.
            let expired = |s: &Stream| {
                now.saturating_duration_since(s.last_active) > settings.history_ttl
                    || (s.subscribers > 0 && s.history.is_empty())
            };
            if !self.drop_history(key, &room, expired) {
                break;
            }
        }
        self.enforce_budget(settings.history_max_bytes);
    }

    fn room_count(&self) -> usize {
        self.rooms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn settings(
        history_size: usize,
        history_ttl: Duration,
        history_max_bytes: u64,
    ) -> RoomSettings {
        RoomSettings {
            history_size,
            history_ttl,
            history_max_bytes,
            presence_limit: 1000,
        }
    }

    fn broker(size: usize) -> MemoryBroker {
        MemoryBroker::with_settings(settings(size, Duration::from_secs(60), u64::MAX))
    }

    /// A broker whose index has a tick of 1 ns: every publish moves its room, so the eviction
    /// order is exactly the order of last publishes.
    fn budget_broker(max_bytes: u64) -> MemoryBroker {
        let mut b = MemoryBroker::with_settings(settings(10, Duration::from_secs(60), max_bytes));
        b.tick = Duration::from_nanos(1);
        b
    }

    fn since(b: &MemoryBroker, room: &RoomName, offset: u64) -> Since {
        Since {
            epoch: b.recover_now(room, None).epoch.to_string(),
            offset,
        }
    }

    fn rooms(names: &[&str]) -> Vec<RoomName> {
        names.iter().map(|n| RoomName::parse(n).unwrap()).collect()
    }

    /// What one message of `publish` below costs in a room's history.
    fn entry_cost() -> usize {
        let b = budget_broker(u64::MAX);
        let r = RoomName::parse("probe").unwrap();
        publish(&b, &r, 1);
        let one = b.history_bytes();
        publish(&b, &r, 2);
        b.history_bytes() - one
    }

    #[test]
    fn the_rooms_idle_longest_lose_their_history_first() {
        let b = budget_broker(u64::MAX);
        let [old, mid, busy] = &rooms(&["old", "mid", "busy"])[..] else {
            unreachable!()
        };
        publish(&b, busy, 1);
        publish(&b, old, 1);
        publish(&b, mid, 1);
        publish(&b, busy, 2);
        let old_since = since(&b, old, 0);
        let mid_since = since(&b, mid, 0);
        b.subscribe_now(mid); // mid has a member: it keeps its epoch and offsets
                              // Room for about one room less than there is.
        let total = b.history_bytes() as u64;
        b.set_settings(settings(10, Duration::from_secs(60), total - 1));
        b.sweep(Instant::now());
        assert!((b.history_bytes() as u64) < total);
        assert_eq!(b.room_count(), 2, "only the oldest went: mid and busy stay");
        let r = b.recover_now(old, Some(&old_since));
        assert!(!r.recovered, "old lost its history");
        assert_ne!(
            *r.epoch, *old_since.epoch,
            "nobody was in old: it starts afresh"
        );
        assert_eq!(r.offset, 0);
        assert!(b.recover_now(mid, Some(&mid_since)).recovered);
        assert_eq!(
            b.recover_now(busy, Some(&since(&b, busy, 0)))
                .publications
                .len(),
            2
        );

        // Tighter: mid (idle longer than busy) goes next, but keeps its epoch: it has a member.
        b.set_settings(settings(
            10,
            Duration::from_secs(60),
            b.history_bytes() as u64 - 1,
        ));
        b.sweep(Instant::now());
        let r = b.recover_now(mid, Some(&mid_since));
        assert!(!r.recovered && r.publications.is_empty());
        assert_eq!((&*r.epoch, r.offset), (&*mid_since.epoch, 1));
        assert_eq!(
            b.recover_now(busy, Some(&since(&b, busy, 0)))
                .publications
                .len(),
            2
        );
    }

    #[test]
    fn publishing_keeps_all_history_within_the_budget() {
        let entry = entry_cost();
        assert!(
            entry > ENTRY_OVERHEAD,
            "an entry costs its frame and overhead"
        );
        // Room for about three rooms with one message each.
        let max = (3 * (ROOM_OVERHEAD + entry)) as u64;
        let b = budget_broker(max);
        let names: Vec<RoomName> = (0..50)
            .map(|i| RoomName::parse(&format!("room-{i}")).unwrap())
            .collect();
        let mut positions = Vec::new();
        for room in &names {
            publish(&b, room, 1);
            assert!(
                b.history_bytes() as u64 <= max,
                "over budget after a publish"
            );
            positions.push(since(&b, room, 0));
        }
        // The newest rooms still recover; the oldest were forgotten (a new epoch).
        assert!(b.recover_now(&names[49], Some(&positions[49])).recovered);
        assert!(b.recover_now(&names[48], Some(&positions[48])).recovered);
        let r = b.recover_now(&names[0], Some(&positions[0]));
        assert!(!r.recovered && *r.epoch != *positions[0].epoch);
        assert!(
            b.room_count() <= 4 + 1,
            "rooms without history are not kept"
        );
    }

    #[test]
    fn expiry_takes_only_the_expired_rooms_from_the_old_end() {
        let b = budget_broker(u64::MAX);
        let [a, c] = &rooms(&["a", "c"])[..] else {
            unreachable!()
        };
        publish(&b, a, 1);
        let a_since = since(&b, a, 0);
        let between = Instant::now();
        publish(&b, c, 1);
        let ttl = Duration::from_secs(60);
        // At `between + ttl + 1ns`, a is expired and c is not.
        b.sweep(between + ttl + Duration::from_nanos(1));
        assert_eq!(b.room_count(), 1);
        assert!(b.recover_now(c, Some(&since(&b, c, 0))).recovered);
        assert!(!b.recover_now(a, Some(&a_since)).recovered);
    }

    #[test]
    fn a_room_everyone_left_keeps_its_epoch_until_the_ttl() {
        let b = budget_broker(u64::MAX);
        let room = RoomName::parse("r").unwrap();
        b.subscribe_now(&room);
        let at = since(&b, &room, 0);
        b.unsubscribe(&room);
        let left = Instant::now();
        b.sweep(left);
        assert!(
            b.recover_now(&room, Some(&at)).recovered,
            "a blip loses nothing"
        );
        b.sweep(left + Duration::from_secs(61));
        assert_eq!(b.room_count(), 0);
        // Members again: the room is paid for by nobody's budget.
        b.subscribe_now(&room);
        b.sweep(Instant::now());
        assert_eq!((b.room_count(), b.history_bytes()), (1, 0));
    }

    /// When the room was last active (its last message, or its last member leaving).
    fn last_active(b: &MemoryBroker, room: &RoomName) -> Instant {
        let stream = lock(b.shard(room)).get(room).cloned().expect("the room");
        let at = lock(&stream).last_active;
        at
    }

    const TTL: Duration = Duration::from_secs(600);
    const MS: Duration = Duration::from_millis(1);

    /// Nobody in the room: its history, epoch and offsets are kept exactly `history_ttl` after
    /// the last message, then the room starts afresh.
    #[test]
    fn an_empty_room_expires_exactly_history_ttl_after_its_last_message() {
        let b = MemoryBroker::with_settings(settings(10, TTL, u64::MAX));
        let room = RoomName::parse("r").unwrap();
        publish(&b, &room, 1);
        publish(&b, &room, 2);
        let at = last_active(&b, &room);
        let pos = since(&b, &room, 0);
        b.sweep(at + TTL);
        let r = b.recover_now(&room, Some(&pos));
        assert!(r.recovered, "kept until the ttl");
        assert_eq!(r.publications.len(), 2);
        b.sweep(at + TTL + MS);
        assert_eq!(b.room_count(), 0);
        let r = b.recover_now(&room, Some(&pos));
        assert!(!r.recovered);
        assert_ne!(*r.epoch, *pos.epoch, "a new epoch");
        assert_eq!(r.offset, 0);
    }

    /// A room everyone left is kept `history_ttl` after the last member left, even when its
    /// last message is older.
    #[test]
    fn a_room_expires_exactly_history_ttl_after_its_last_member_left() {
        let b = MemoryBroker::with_settings(settings(10, TTL, u64::MAX));
        let room = RoomName::parse("r").unwrap();
        b.subscribe_now(&room);
        publish(&b, &room, 1);
        let pos = since(&b, &room, 0);
        b.unsubscribe(&room);
        let left = last_active(&b, &room);
        b.sweep(left + TTL);
        assert!(
            b.recover_now(&room, Some(&pos)).recovered,
            "kept until the ttl"
        );
        b.sweep(left + TTL + MS);
        assert_eq!(b.room_count(), 0);
        assert_ne!(*b.recover_now(&room, None).epoch, *pos.epoch);
    }

    /// A room with members loses its history exactly `history_ttl` after the last message,
    /// and keeps its epoch and offsets.
    #[test]
    fn history_of_a_room_with_members_expires_exactly_history_ttl_after_its_last_message() {
        let b = MemoryBroker::with_settings(settings(10, TTL, u64::MAX));
        let room = RoomName::parse("r").unwrap();
        b.subscribe_now(&room);
        publish(&b, &room, 1);
        let at = last_active(&b, &room);
        let pos = since(&b, &room, 0);
        b.sweep(at + TTL);
        assert!(
            b.recover_now(&room, Some(&pos)).recovered,
            "kept until the ttl"
        );
        b.sweep(at + TTL + MS);
        let r = b.recover_now(&room, Some(&pos));
        assert!(!r.recovered && r.publications.is_empty());
        assert_eq!(
            (&*r.epoch, r.offset),
            (&*pos.epoch, 1),
            "same epoch and offsets"
        );
        assert_eq!(b.room_count(), 1);
        assert_eq!(b.history_bytes(), 0);
    }

    fn publish(b: &MemoryBroker, room: &RoomName, n: u64) -> u64 {
        b.publish_now(PublishRequest {
            room,
            from: "alice",
            data: &Value::from(n),
            origin: None,
        })
    }

    #[test]
    fn offsets_grow_by_one_from_one() {
        let b = broker(10);
        let room = RoomName::parse("r").unwrap();
        assert_eq!(b.recover_now(&room, None).offset, 0);
        assert_eq!(publish(&b, &room, 1), 1);
        assert_eq!(publish(&b, &room, 2), 2);
        assert_eq!(b.recover_now(&room, None).offset, 2);
    }

    #[test]
    fn recovery_is_exact_or_says_not_recovered() {
        let b = broker(3);
        let room = RoomName::parse("r").unwrap();
        for i in 1..=5 {
            publish(&b, &room, i);
        }
        let epoch = b.recover_now(&room, None).epoch.to_string();
        let r = b.recover_now(
            &room,
            Some(&Since {
                epoch: epoch.clone(),
                offset: 3,
            }),
        );
        assert!(r.recovered);
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [4, 5]
        );
        let r = b.recover_now(
            &room,
            Some(&Since {
                epoch: epoch.clone(),
                offset: 1,
            }),
        );
        assert!(!r.recovered, "offset 2 fell out of a 3-message history");
        assert_eq!(r.publications.len(), 3);
        let r = b.recover_now(
            &room,
            Some(&Since {
                epoch: "other".into(),
                offset: 3,
            }),
        );
        assert!(!r.recovered);
        let r = b.recover_now(&room, Some(&Since { epoch, offset: 5 }));
        assert!(r.recovered && r.publications.is_empty());
    }

    #[test]
    fn empty_rooms_are_forgotten_after_their_history_expires() {
        let b = MemoryBroker::with_settings(settings(10, Duration::from_millis(0), u64::MAX));
        let room = RoomName::parse("r").unwrap();
        b.subscribe_now(&room);
        publish(&b, &room, 1);
        b.unsubscribe(&room);
        assert_eq!(b.room_count(), 1);
        b.sweep(Instant::now() + Duration::from_millis(5));
        assert_eq!(b.room_count(), 0);
    }
}
