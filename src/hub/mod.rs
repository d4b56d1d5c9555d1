//! The room hub: membership, presence and local fan-out. It never sees a socket: each session
//! is a [`SessionHandle`] (a bounded queue plus a close switch).
//!
//! Streams, offsets and history belong to the [`Broker`]; the hub subscribes to a room when
//! its first local member joins and receives every publication through [`BrokerHandler`].
//!
//! A join is ordered against live traffic without holding a lock across the broker call: the
//! member is added in a *recovering* state that buffers live publications, the broker is asked
//! for the replay, then (under the room lock again) `joined`, the replay and the buffered
//! publications past the replay's end are queued, and the member goes live. So a session never
//! sees a message twice or out of order, whatever is published meanwhile. Presence skips a
//! recovering member, and `joined.members` is taken when it goes live, so presence never
//! precedes `joined` and the two always add up to the room's members.
//!
//! Sessions are registered by user in one map, `SessionsByUser`: a session's place is taken
//! at its handshake ([`Hub::admit`], which enforces `limits.max_connections_per_user` and
//! reserves in the same step) and holds its handle once it runs. The admin API's disconnect
//! reads the same map, and removing a session is O(1).
//!
//! Locks: the room map, then one room; never across an await, never while calling the broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, BrokerHandler, Publication, PublishRequest, SessionId};
use crate::metrics::Metrics;
use crate::protocol::{close, PresenceEvent, RequestId, RoomName, ServerMsg, Since};

/// What a session's writer sends, in queue order.
#[derive(Debug)]
pub enum Outbound {
    /// A reply or presence frame for this session.
    Frame(Utf8Bytes),
    /// A live publication; the writer accounts it for the fan-out latency.
    Live(Arc<Publication>),
    /// A publication replayed on join.
    Replay(Arc<Publication>),
}

/// Asks a session to close with a code; the first request wins.
#[derive(Debug)]
pub struct SessionCtl {
    code: AtomicU16,
    token: CancellationToken,
}

impl SessionCtl {
    pub fn new(token: CancellationToken) -> Self {
        SessionCtl {
            code: AtomicU16::new(0),
            token,
        }
    }

    /// Requests a close with `code`. Returns false when a close was already requested.
    pub fn close(&self, code: u16) -> bool {
        let first = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.token.cancel();
        first
    }

    /// The requested code; a cancelled token without one means shutdown (1001).
    pub fn code(&self) -> u16 {
        match self.code.load(Ordering::Acquire) {
            0 => close::GOING_AWAY,
            c => c,
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// The hub's view of one session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub id: SessionId,
    pub user: Arc<str>,
    pub tx: mpsc::Sender<Outbound>,
    pub ctl: Arc<SessionCtl>,
}

impl SessionHandle {
    /// Closes the session as too slow to read (1013), counted once.
    pub fn close_slow(&self, metrics: &Metrics) {
        if self.ctl.close(close::SLOW) {
            metrics.slow_consumer();
        }
    }

    /// Queues a frame; a full queue closes the session as too slow (1013).
    pub fn send(&self, item: Outbound, metrics: &Metrics) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close_slow(metrics);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

struct Member {
    handle: SessionHandle,
    /// `Some` while the join's replay is being prepared: live publications wait here.
    recovering: Option<Vec<Arc<Publication>>>,
}

#[derive(Default)]
struct Room {
    members: HashMap<SessionId, Member>,
    /// Sessions per user, for per-user presence.
    users: HashMap<Arc<str>, u32>,
    /// Set when the room left the map; a join that raced with it retries.
    closed: bool,
}

/// A room as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomInfo {
    pub room: String,
    pub members: usize,
    pub connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    AlreadyJoined,
}

/// Every session on this node by user, from its handshake on: the count
/// `limits.max_connections_per_user` caps, and the handles the admin API's disconnect closes.
/// A place is `None` from the handshake that took it until its session registers.
type SessionsByUser = HashMap<Arc<str>, HashMap<SessionId, Option<SessionHandle>>>;

/// The user already has `limits.max_connections_per_user` sessions (or handshakes about to
/// become sessions) on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserAtCap;

/// A session's place among its user's sessions, taken at the handshake. Dropping it frees
/// the place (and forgets the session, had it registered and not yet unregistered): a
/// handshake that never becomes a session gives its place back.
pub struct SessionPlace {
    hub: Arc<Hub>,
    user: Arc<str>,
    id: SessionId,
}

impl SessionPlace {
    /// The id of the session this place is for.
    pub fn id(&self) -> SessionId {
        self.id
    }
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.hub.remove_session(&self.user, self.id);
    }
}

pub struct Hub {
    rooms: RwLock<HashMap<RoomName, Arc<Mutex<Room>>>>,
    broker: Arc<dyn Broker>,
    sessions_by_user: Mutex<SessionsByUser>,
    next_session: AtomicU64,
    /// Most publications buffered for one recovering member before it counts as slow.
    recovery_buffer: std::sync::atomic::AtomicUsize,
    /// Rooms with more distinct users than this announce no presence and list only this many
    /// members in `joined` (see `rooms.presence_limit`).
    presence_limit: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Default of `rooms.presence_limit`.
pub const DEFAULT_PRESENCE_LIMIT: usize = 1000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(broker: Arc<dyn Broker>, metrics: Arc<Metrics>, send_queue: usize) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            rooms: RwLock::new(HashMap::new()),
            broker,
            sessions_by_user: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            recovery_buffer: std::sync::atomic::AtomicUsize::new(send_queue),
            presence_limit: std::sync::atomic::AtomicUsize::new(DEFAULT_PRESENCE_LIMIT),
            metrics,
        });
        let weak: Weak<Hub> = Arc::downgrade(&hub);
        hub.broker.attach(weak);
        hub
    }

    pub fn set_send_queue(&self, n: usize) {
        self.recovery_buffer.store(n, Ordering::Relaxed);
    }

    pub fn set_presence_limit(&self, n: usize) {
        self.presence_limit.store(n, Ordering::Relaxed);
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn next_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a place for a new session of `user`, unless the user already has `max` places
    /// on this node. Checked and taken under one lock: concurrent handshakes of one user never
    /// share the last place.
    pub fn admit(self: &Arc<Self>, user: &Arc<str>, max: usize) -> Result<SessionPlace, UserAtCap> {
        let mut by_user = lock(&self.sessions_by_user);
        let places = by_user.entry(user.clone()).or_default();
        if places.len() >= max {
            if places.is_empty() {
                by_user.remove(user);
            }
            return Err(UserAtCap);
        }
        let id = self.next_session_id();
        places.insert(id, None);
        Ok(SessionPlace {
            hub: self.clone(),
            user: user.clone(),
            id,
        })
    }

    /// Makes a session known (for the admin API and the connection gauge) in the place its
    /// handshake took; `handle.id` is the place's id.
    pub fn register(&self, place: &SessionPlace, handle: &SessionHandle) {
        debug_assert_eq!(place.id, handle.id);
        let mut by_user = lock(&self.sessions_by_user);
        let entry = by_user
            .entry(place.user.clone())
            .or_default()
            .entry(place.id)
            .or_default();
        if entry.replace(handle.clone()).is_none() {
            self.metrics.connections.inc();
        }
    }

    /// Forgets a session as soon as it stops serving; its place is free for the user's next
    /// handshake.
    pub fn unregister(&self, handle: &SessionHandle) {
        self.remove_session(&handle.user, handle.id);
    }

    /// Frees the place `id` of `user`, if it is still taken.
    fn remove_session(&self, user: &Arc<str>, id: SessionId) {
        let mut by_user = lock(&self.sessions_by_user);
        let Some(places) = by_user.get_mut(user) else {
            return;
        };
        if let Some(Some(_)) = places.remove(&id) {
            self.metrics.connections.dec();
        }
        if places.is_empty() {
            by_user.remove(user);
        }
    }

    /// Closes every session of `user` with `code`; returns how many.
    pub fn disconnect_user(&self, user: &str, code: u16) -> usize {
        let by_user = lock(&self.sessions_by_user);
        by_user.get(user).map_or(0, |places| {
            places
                .values()
                .flatten()
                .filter(|h| h.ctl.close(code))
                .count()
        })
    }

    /// Sessions registered on this node.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions_by_user)
            .values()
            .flat_map(HashMap::values)
            .flatten()
            .count()
    }

    fn read_rooms(&self) -> std::sync::RwLockReadGuard<'_, HashMap<RoomName, Arc<Mutex<Room>>>> {
        self.rooms.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_rooms(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RoomName, Arc<Mutex<Room>>>> {
        self.rooms.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `frame` to every live member of `room` except `except`. Members still joining
    /// are skipped: the `members` of their `joined`, taken later under the same lock, already
    /// reflects the change, and presence must never precede `joined`.
    fn broadcast_local(&self, room: &Room, frame: &Utf8Bytes, except: SessionId) {
        for (id, m) in &room.members {
            if *id != except && m.recovering.is_none() {
                m.handle.send(Outbound::Frame(frame.clone()), &self.metrics);
            }
        }
    }

    /// Adds a session to a room and queues `joined`, the replay and then live messages.
    pub fn join(
        &self,
        handle: &SessionHandle,
        room_name: &RoomName,
        since: Option<&Since>,
        id: Option<&RequestId>,
    ) -> Result<(), JoinError> {
        // 1. Become a recovering member (live publications are buffered from now on).
        let room = loop {
            let existing = self.read_rooms().get(room_name).cloned();
            let room = match existing {
                Some(r) => r,
                None => {
                    let mut rooms = self.write_rooms();
                    rooms
                        .entry(room_name.clone())
                        .or_insert_with(|| Arc::new(Mutex::new(Room::default())))
                        .clone()
                }
            };
            let mut r = lock(&room);
            if r.closed {
                continue;
            }
            if r.members.contains_key(&handle.id) {
                return Err(JoinError::AlreadyJoined);
            }
            r.members.insert(
                handle.id,
                Member {
                    handle: handle.clone(),
                    recovering: Some(Vec::new()),
                },
            );
            let count = r.users.entry(handle.user.clone()).or_insert(0);
            *count += 1;
            let first_of_user = *count == 1;
            if first_of_user && r.users.len() <= self.presence_limit.load(Ordering::Relaxed) {
                let frame = Utf8Bytes::from(
                    ServerMsg::Presence {
                        room: room_name.as_str(),
                        event: PresenceEvent::Join,
                        user: &handle.user,
                    }
                    .to_text(),
                );
                self.broadcast_local(&r, &frame, handle.id);
            }
            drop(r);
            break room;
        };
        // 2. Ask the broker (no hub lock held). Every local member holds one subscription.
        self.broker.subscribe(room_name);
        let recovery = self.broker.recover(room_name, since);
        // 3. Queue joined + replay + buffered live publications, then go live.
        let mut r = lock(&room);
        // Members as of now: presence from here on reaches this session after `joined`.
        let limit = self.presence_limit.load(Ordering::Relaxed);
        let members: Vec<Arc<str>> = r.users.keys().take(limit).cloned().collect();
        let members_total = (r.users.len() > members.len()).then_some(r.users.len());
        let Some(member) = r.members.get_mut(&handle.id) else {
            return Ok(()); // the session left meanwhile
        };
        let buffered = member.recovering.take().unwrap_or_default();
        let joined = ServerMsg::Joined {
            room: room_name.as_str(),
            epoch: &recovery.epoch,
            offset: recovery.offset,
            recovered: recovery.recovered,
            members: &members,
            members_total,
            id,
        }
        .to_text();
        let h = &member.handle;
        let mut ok = h.send(Outbound::Frame(Utf8Bytes::from(joined)), &self.metrics);
        for p in recovery.publications {
            if !ok {
                break;
            }
            ok = h.send(Outbound::Replay(p), &self.metrics);
        }
        for p in buffered {
            if !ok {
                break;
            }
            if *p.epoch == *recovery.epoch
                && p.offset > recovery.offset
                && p.origin != Some(handle.id)
            {
                ok = h.send(Outbound::Replay(p), &self.metrics);
            }
        }
        Ok(())
    }

    /// Removes a session from a room; presence leave (when `announce`) if it was the user's
    /// last session there. Returns false when the session was not a member.
    pub fn leave(&self, handle: &SessionHandle, room_name: &RoomName, announce: bool) -> bool {
        let Some(room) = self.read_rooms().get(room_name).cloned() else {
            return false;
        };
        let empty = {
            let mut r = lock(&room);
            if r.members.remove(&handle.id).is_none() {
                return false;
            }
            let last_of_user = match r.users.get_mut(&handle.user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    r.users.remove(&handle.user);
                    true
                }
            };
            // Counted before the user left, as at join: the same rooms stay silent.
            let small = r.users.len() < self.presence_limit.load(Ordering::Relaxed);
            if last_of_user && announce && small {
                let frame = Utf8Bytes::from(
                    ServerMsg::Presence {
                        room: room_name.as_str(),
                        event: PresenceEvent::Leave,
                        user: &handle.user,
                    }
                    .to_text(),
                );
                self.broadcast_local(&r, &frame, handle.id);
            }
            r.members.is_empty()
        };
        if empty {
            let mut rooms = self.write_rooms();
            let mut r = lock(&room);
            if r.members.is_empty() && !r.closed {
                r.closed = true;
                rooms.remove(room_name);
            }
        }
        self.broker.unsubscribe(room_name);
        true
    }

    /// Publishes into a room through the broker; returns the message's offset.
    pub fn publish(
        &self,
        room: &RoomName,
        from: &str,
        data: &serde_json::Value,
        origin: Option<SessionId>,
    ) -> Result<u64, BrokerError> {
        self.broker.publish(PublishRequest {
            room,
            from,
            data,
            origin,
        })
    }

    /// Rooms with local members, for the admin API.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let rooms: Vec<(RoomName, Arc<Mutex<Room>>)> = self
            .read_rooms()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out: Vec<RoomInfo> = rooms
            .into_iter()
            .map(|(name, room)| {
                let r = lock(&room);
                RoomInfo {
                    room: name.to_string(),
                    members: r.users.len(),
                    connections: r.members.len(),
                }
            })
            .filter(|i| i.connections > 0)
            .collect();
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out
    }

    /// Periodic upkeep: history expiry and the room gauge.
    pub fn sweep(&self, now: Instant) {
        self.broker.sweep(now);
        self.update_room_gauge();
    }

    /// Sets `wsgate_rooms` from the broker's current count.
    pub fn update_room_gauge(&self) {
        self.metrics.rooms.set(self.broker.room_count() as i64);
    }
}

impl BrokerHandler for Hub {
    fn on_publication(&self, room_name: &RoomName, p: Arc<Publication>) {
        let Some(room) = self.read_rooms().get(room_name).cloned() else {
            return;
        };
        let mut r = lock(&room);
        let cap = self.recovery_buffer.load(Ordering::Relaxed);
        // Every potential recipient is counted up front; the ones skipped are taken off
        // below, so a writer can never bring the count to zero before the loop ends.
        p.pending.store(r.members.len() + 1, Ordering::Release);
        let mut not_sent = 1;
        for (id, m) in r.members.iter_mut() {
            if Some(*id) == p.origin {
                not_sent += 1;
                continue;
            }
            match &mut m.recovering {
                Some(buffer) => {
                    not_sent += 1;
                    if buffer.len() >= cap {
                        m.handle.close_slow(&self.metrics);
                    } else {
                        buffer.push(p.clone());
                    }
                }
                None => {
                    if !m.handle.send(Outbound::Live(p.clone()), &self.metrics) {
                        not_sent += 1;
                    }
                }
            }
        }
        drop(r);
        if p.pending.fetch_sub(not_sent, Ordering::AcqRel) == not_sent {
            self.metrics.fanout_done(p.accepted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{HistorySettings, MemoryBroker};

    fn hub() -> Arc<Hub> {
        let broker = Arc::new(MemoryBroker::new(HistorySettings {
            size: 10,
            ttl: std::time::Duration::from_secs(60),
            max_bytes: 1 << 20,
        }));
        Hub::new(broker, Arc::new(Metrics::new()), 16)
    }

    /// A session registered in `place`.
    fn session(hub: &Hub, place: &SessionPlace, user: &Arc<str>) -> SessionHandle {
        let (tx, _rx) = mpsc::channel(4);
        let handle = SessionHandle {
            id: place.id(),
            user: user.clone(),
            tx,
            ctl: Arc::new(SessionCtl::new(CancellationToken::new())),
        };
        hub.register(place, &handle);
        handle
    }

    #[test]
    fn places_per_user_are_capped_and_freed_by_unregister_or_drop() {
        let hub = hub();
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let first = hub.admit(&alice, 2).expect("first");
        let second = hub.admit(&alice, 2).expect("second (not yet a session)");
        assert_eq!(hub.admit(&alice, 2).err(), Some(UserAtCap));
        let _bob = hub.admit(&bob, 2).expect("another user");
        let a1 = session(&hub, &first, &alice);
        assert_eq!(hub.session_count(), 1);
        assert_eq!(hub.metrics.connections.get(), 1);

        // A handshake that never became a session gives its place back.
        drop(second);
        let third = hub.admit(&alice, 2).expect("the freed place");
        // A session frees its place when it unregisters, before its place is dropped.
        hub.unregister(&a1);
        assert_eq!(hub.session_count(), 0);
        assert_eq!(hub.metrics.connections.get(), 0);
        let fourth = hub
            .admit(&alice, 2)
            .expect("the unregistered session's place");
        drop(first); // after unregister: nothing left to free
        assert_eq!(hub.admit(&alice, 2).err(), Some(UserAtCap));
        drop((third, fourth));
        assert!(
            !lock(&hub.sessions_by_user).contains_key(&alice),
            "a user without places is forgotten"
        );
    }

    #[test]
    fn concurrent_handshakes_of_one_user_never_share_the_last_place() {
        let hub = hub();
        let alice: Arc<str> = Arc::from("alice");
        let _held: Vec<SessionPlace> = (0..4).map(|_| hub.admit(&alice, 5).unwrap()).collect();
        let barrier = std::sync::Barrier::new(8);
        let won: Vec<SessionPlace> = std::thread::scope(|s| {
            let tries: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        hub.admit(&alice, 5).ok()
                    })
                })
                .collect();
            tries
                .into_iter()
                .filter_map(|t| t.join().expect("thread"))
                .collect()
        });
        assert_eq!(won.len(), 1);
    }

    #[test]
    fn disconnect_closes_every_registered_session_of_the_user_once() {
        let hub = hub();
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let places: Vec<SessionPlace> = (0..3).map(|_| hub.admit(&alice, 9).unwrap()).collect();
        let handles: Vec<SessionHandle> = places[..2]
            .iter()
            .map(|p| session(&hub, p, &alice))
            .collect();
        let bob_place = hub.admit(&bob, 9).unwrap();
        let bob_handle = session(&hub, &bob_place, &bob);
        assert_eq!(hub.disconnect_user("alice", close::KICKED), 2);
        assert!(handles.iter().all(|h| h.ctl.code() == close::KICKED));
        assert!(!bob_handle.ctl.token().is_cancelled());
        assert_eq!(
            hub.disconnect_user("alice", close::KICKED),
            0,
            "already closing"
        );
        assert_eq!(hub.disconnect_user("nobody", close::KICKED), 0);
    }
}
