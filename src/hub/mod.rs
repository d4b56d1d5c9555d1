//! The room hub: membership and local fan-out. It never sees a socket: each session is a
//! [`SessionHandle`] (a bounded queue plus a close switch), and it never owns a stream:
//! offsets, history and presence belong to the [`Broker`], which hands this node every
//! publication and presence change of the rooms it has members in ([`BrokerHandler`]).
//!
//! A join is ordered against live traffic without holding a lock across the broker's calls:
//! the member is added in a *joining* state that buffers live publications and presence
//! changes; the broker subscribes, records the user's presence and answers with the room's
//! position, replay and users; then (under the room lock again) `joined`, the replay and the
//! buffered publications past the replay's end are queued, and the member goes live. Each live
//! member keeps the last offset it was given and the presence version its `joined.members`
//! reflected, and drops anything at or below them: a session never sees a message twice or out
//! of order, and presence never precedes `joined`, whatever the broker delivers meanwhile.
//! A join whose future is dropped halfway (its session closed) takes its member out again.
//!
//! Locks: the room map, then one room; never across an await, never while calling the broker.

mod registry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

pub use registry::{SessionPlace, UserAtCap};

use crate::broker::{
    Broker, BrokerError, BrokerHandler, NodeId, Origin, PresenceChange, Publication,
    PublishRequest, Recovery, SessionId,
};
use crate::metrics::Metrics;
use crate::protocol::{close, RequestId, RoomName, Since};

/// What a session's writer sends, in queue order. The hub says what happened; the session's
/// wire protocol frames it (native JSON or Pusher events).
#[derive(Debug)]
pub enum Outbound {
    /// A reply already framed for this session.
    Frame(Utf8Bytes),
    /// The session is in the room: its position, replay status and users.
    Joined(Box<JoinedRoom>),
    /// A user arrived in or left a room the session is in.
    Presence(Box<PresenceNotice>),
    /// A live publication; the writer accounts it for the fan-out latency.
    Live(Arc<Publication>),
    /// A publication replayed on join.
    Replay(Arc<Publication>),
}

/// The answer to a join, before framing.
#[derive(Debug)]
pub struct JoinedRoom {
    pub room: RoomName,
    pub epoch: Arc<str>,
    pub offset: u64,
    pub recovered: bool,
    pub members: Vec<Arc<str>>,
    pub members_total: Option<usize>,
    pub id: Option<RequestId>,
    /// How many publications the join replays (they follow this in the queue).
    pub replayed: usize,
}

/// What a join replays before live traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// What the session missed after a position it had (`None`: nothing).
    Since(Option<Since>),
    /// The room's last message, while its history holds it (Pusher's cache channels).
    Last,
}

/// How a session joins a room.
#[derive(Debug, Clone)]
pub struct JoinTerms {
    /// Who the member is in the room's presence (normally its session's user; a Pusher socket
    /// is a presence channel's member under the `user_id` its channel auth names).
    pub user: Arc<str>,
    pub replay: Replay,
    /// Most distinct users the room may have: a new user past it is refused (Pusher's
    /// `max_presence_members`); another session of a user already there is not.
    pub max_users: Option<usize>,
}

/// A presence change in a room, before framing.
#[derive(Debug)]
pub struct PresenceNotice {
    pub room: RoomName,
    pub change: PresenceChange,
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

/// Where a member stands in the room's stream.
enum MemberState {
    /// Its join is under way: live publications and presence changes wait here.
    Joining {
        publications: Vec<Arc<Publication>>,
        presence: Vec<PresenceChange>,
    },
    /// It has been given everything up to `offset` of `epoch`, and presence up to `presence`.
    Live {
        epoch: Arc<str>,
        offset: u64,
        presence: u64,
    },
}

struct Member {
    handle: SessionHandle,
    /// Who the member is in the room's presence (normally its session's user).
    user: Arc<str>,
    state: MemberState,
}

#[derive(Default)]
struct Room {
    members: HashMap<SessionId, Member>,
    /// This node's sessions per user: a user's first one joins presence, its last one leaves.
    users: HashMap<Arc<str>, u32>,
    /// Set when the room left the map; a join that raced with it retries.
    closed: bool,
}

/// What became of a publication for one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Queued,
    /// It had it already, it is its own, or it is still joining.
    Skipped,
    /// Its queue was full: it is being closed as too slow.
    Refused,
}

/// Why a join did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("already joined this room")]
    AlreadyJoined,
    /// The room has its [`JoinTerms::max_users`] distinct users, and this one is not among them.
    #[error("the room is full ({0} users)")]
    Full(usize),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Why a session leaves a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The session asked, was refused the room, or closed: the room is told (presence).
    Left,
    /// The gateway is shutting down and everyone leaves at once: presence is not announced
    /// (n² frames for nobody); a cluster's broker accounts for the node as a whole.
    Shutdown,
}

pub struct Hub {
    /// This process, in the origin of its sessions' publications.
    node: NodeId,
    rooms: RwLock<HashMap<RoomName, Arc<Mutex<Room>>>>,
    broker: Arc<dyn Broker>,
    sessions_by_user: Mutex<registry::SessionsByUser>,
    /// The other names sessions answer to for disconnects (a Pusher socket's signed-in user).
    aliases: Mutex<registry::Aliases>,
    next_session: std::sync::atomic::AtomicU64,
    /// Most publications buffered for one joining member before it counts as slow.
    recovery_buffer: AtomicUsize,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        send_queue: usize,
        node: NodeId,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            node,
            rooms: RwLock::new(HashMap::new()),
            broker,
            sessions_by_user: Mutex::new(HashMap::new()),
            aliases: Mutex::new(registry::Aliases::default()),
            next_session: std::sync::atomic::AtomicU64::new(1),
            recovery_buffer: AtomicUsize::new(send_queue),
            metrics,
        });
        let weak: Weak<Hub> = Arc::downgrade(&hub);
        hub.broker.attach(weak);
        hub
    }

    pub fn set_send_queue(&self, n: usize) {
        self.recovery_buffer.store(n, Ordering::Relaxed);
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn next_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    fn read_rooms(&self) -> std::sync::RwLockReadGuard<'_, HashMap<RoomName, Arc<Mutex<Room>>>> {
        self.rooms.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_rooms(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<RoomName, Arc<Mutex<Room>>>> {
        self.rooms.write().unwrap_or_else(|p| p.into_inner())
    }

    fn room(&self, name: &RoomName) -> Option<Arc<Mutex<Room>>> {
        self.read_rooms().get(name).cloned()
    }

    /// Adds a session to a room and queues `joined`, the replay and then live messages.
    ///
    /// Owns what it needs, so a session can keep serving its socket while the broker answers
    /// (cluster mode: a Redis round trip). Dropped before it finishes, it takes the member
    /// out again.
    pub async fn join(
        self: Arc<Self>,
        handle: SessionHandle,
        room: RoomName,
        since: Option<Since>,
        id: Option<RequestId>,
    ) -> Result<(), JoinError> {
        let terms = JoinTerms {
            user: handle.user.clone(),
            replay: Replay::Since(since),
            max_users: None,
        };
        self.join_as(handle, room, terms, id).await
    }

    /// [`Hub::join`] on other terms: another presence identity, another replay, a cap on
    /// the room's users.
    pub async fn join_as(
        self: Arc<Self>,
        handle: SessionHandle,
        room: RoomName,
        terms: JoinTerms,
        id: Option<RequestId>,
    ) -> Result<(), JoinError> {
        let user = terms.user;
        // 1. Become a joining member: live traffic is buffered from now on.
        let (entry, first_of_user) = self.add_member(&handle, &room, &user)?;
        let mut joining = Joining {
            hub: &self,
            handle: &handle,
            user: &user,
            room: &room,
            subscribed: false,
            presence: first_of_user.then_some(false),
            done: false,
        };
        // 2. Ask the broker (no hub lock held): every local member holds one subscription.
        self.broker.subscribe(&room).await?;
        joining.subscribed = true;
        if first_of_user {
            if let Some(max) = terms.max_users {
                // Checked before the user is announced. Two new users joining at once may
                // both see the last free place: the cap is a guard, not a reservation.
                let users = self.broker.users(&room).await?;
                if users.len() >= max && !users.contains(&user) {
                    return Err(JoinError::Full(max));
                }
            }
            self.broker.presence_join(&room, &user).await?;
            joining.presence = Some(true);
        }
        let recovery = match terms.replay {
            Replay::Since(since) => self.broker.recover(&room, since.as_ref()).await?,
            Replay::Last => {
                // The room's position, then what follows the message before its last one.
                let now = self.broker.recover(&room, None).await?;
                match now.offset.checked_sub(1) {
                    None => now,
                    Some(offset) => {
                        let since = Since {
                            epoch: now.epoch.to_string(),
                            offset,
                        };
                        self.broker.recover(&room, Some(&since)).await?
                    }
                }
            }
        };
        // 3. Queue joined + replay + what was buffered past it, then go live.
        self.go_live(&entry, &handle, &room, recovery, id.as_ref());
        joining.done = true;
        Ok(())
    }

    /// Step 1 of a join: the member in its joining state. Returns the room and whether this is
    /// the user's first session in it on this node.
    fn add_member(
        &self,
        handle: &SessionHandle,
        name: &RoomName,
        user: &Arc<str>,
    ) -> Result<(Arc<Mutex<Room>>, bool), JoinError> {
        loop {
            let room = match self.room(name) {
                Some(r) => r,
                None => self
                    .write_rooms()
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(Mutex::new(Room::default())))
                    .clone(),
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
                    user: user.clone(),
                    state: MemberState::Joining {
                        publications: Vec::new(),
                        presence: Vec::new(),
                    },
                },
            );
            let count = r.users.entry(user.clone()).or_insert(0);
            *count += 1;
            let first = *count == 1;
            drop(r);
            return Ok((room, first));
        }
    }

    /// Step 3 of a join: `joined`, the replay, the buffered traffic past it; the member is
    /// live from here on.
    fn go_live(
        &self,
        room: &Mutex<Room>,
        handle: &SessionHandle,
        name: &RoomName,
        recovery: Recovery,
        id: Option<&RequestId>,
    ) {
        let mut r = lock(room);
        let Some(member) = r.members.get_mut(&handle.id) else {
            return; // the session left meanwhile
        };
        let live = MemberState::Live {
            epoch: recovery.epoch.clone(),
            offset: recovery.offset,
            presence: recovery.presence_version,
        };
        let MemberState::Joining {
            publications,
            presence,
        } = std::mem::replace(&mut member.state, live)
        else {
            return;
        };
        let joined = JoinedRoom {
            room: name.clone(),
            epoch: recovery.epoch.clone(),
            offset: recovery.offset,
            recovered: recovery.recovered,
            members: recovery.members,
            members_total: recovery.members_total,
            id: id.cloned(),
            replayed: recovery.publications.len(),
        };
        let h = member.handle.clone();
        let mut ok = h.send(Outbound::Joined(Box::new(joined)), &self.metrics);
        for p in recovery.publications {
            if !ok {
                break;
            }
            ok = h.send(Outbound::Replay(p), &self.metrics);
        }
        // Buffered traffic goes through the same checks as live traffic: past the replay's
        // end and the members list only.
        for p in publications {
            if !ok {
                break;
            }
            ok = self.deliver(member, &p, Outbound::Replay(p.clone())) != Delivery::Refused;
        }
        for change in presence {
            if !ok {
                break;
            }
            ok = self.announce(member, name, &change);
        }
    }

    /// Queues a publication for a live member unless it has it already (or it is its own).
    fn deliver(&self, member: &mut Member, p: &Publication, item: Outbound) -> Delivery {
        let MemberState::Live { epoch, offset, .. } = &mut member.state else {
            return Delivery::Skipped;
        };
        let own = p.origin
            == Some(Origin {
                node: self.node,
                session: member.handle.id,
            });
        // Another epoch: the broker closes the room's sessions (1012) instead.
        if p.offset <= *offset || *p.epoch != **epoch || own {
            return Delivery::Skipped;
        }
        *offset = p.offset;
        if member.handle.send(item, &self.metrics) {
            Delivery::Queued
        } else {
            Delivery::Refused
        }
    }

    /// Queues a presence change for a live member unless its `joined.members` had it.
    fn announce(&self, member: &mut Member, room: &RoomName, change: &PresenceChange) -> bool {
        let MemberState::Live { presence, .. } = &mut member.state else {
            return true;
        };
        if change.version <= *presence {
            return true;
        }
        *presence = change.version;
        let notice = PresenceNotice {
            room: room.clone(),
            change: change.clone(),
        };
        member
            .handle
            .send(Outbound::Presence(Box::new(notice)), &self.metrics)
    }

    /// Takes a session out of a room. Returns false when it was not a member.
    pub fn leave(&self, handle: &SessionHandle, room: &RoomName, departure: Departure) -> bool {
        let Some((last_of_user, user)) = self.remove_member(handle, room) else {
            return false;
        };
        if departure == Departure::Left {
            if last_of_user {
                self.broker.presence_leave(room, &user);
            }
            self.broker.unsubscribe(room);
        }
        true
    }

    /// Removes the member; `Some((last session of its user here, its user))`, or `None` when
    /// it was not a member. An empty room leaves the map.
    fn remove_member(&self, handle: &SessionHandle, name: &RoomName) -> Option<(bool, Arc<str>)> {
        let room = self.room(name)?;
        let (last_of_user, user, empty) = {
            let mut r = lock(&room);
            let user = r.members.remove(&handle.id)?.user;
            let last_of_user = match r.users.get_mut(&user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    r.users.remove(&user);
                    true
                }
            };
            (last_of_user, user, r.members.is_empty())
        };
        if empty {
            let mut rooms = self.write_rooms();
            let mut r = lock(&room);
            if r.members.is_empty() && !r.closed {
                r.closed = true;
                rooms.remove(name);
            }
        }
        Some((last_of_user, user))
    }

    /// Publishes into a room through the broker; returns the message's offset.
    pub async fn publish(
        self: Arc<Self>,
        room: RoomName,
        from: Arc<str>,
        data: Value,
        origin: Option<SessionId>,
    ) -> Result<u64, BrokerError> {
        let origin = origin.map(|session| Origin {
            node: self.node,
            session,
        });
        self.publish_excluding(room, from, data, origin).await
    }

    /// Publishes into a room for every member but `excluded`, a session on any node (the
    /// Pusher HTTP API's `socket_id`); returns the message's offset.
    pub async fn publish_excluding(
        &self,
        room: RoomName,
        from: Arc<str>,
        data: Value,
        excluded: Option<Origin>,
    ) -> Result<u64, BrokerError> {
        let origin = excluded;
        self.broker
            .publish(PublishRequest {
                room: &room,
                from: &from,
                data: &data,
                origin,
            })
            .await
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

/// A join under way; dropped before `done`, it undoes what the join did so far, so a session
/// that closes mid-join leaves no member behind (nor a subscription or presence).
struct Joining<'a> {
    hub: &'a Hub,
    handle: &'a SessionHandle,
    user: &'a Arc<str>,
    room: &'a RoomName,
    subscribed: bool,
    /// `Some` for the user's first session here: whether the broker recorded its presence.
    presence: Option<bool>,
    done: bool,
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let removed = self.hub.remove_member(self.handle, self.room);
        if self.presence == Some(true) && removed.is_some_and(|(last, _)| last) {
            self.hub.broker.presence_leave(self.room, self.user);
        }
        if self.subscribed {
            self.hub.broker.unsubscribe(self.room);
        }
    }
}

impl BrokerHandler for Hub {
    fn on_publication(&self, name: &RoomName, p: Arc<Publication>) {
        let Some(room) = self.room(name) else {
            return;
        };
        let mut r = lock(&room);
        let cap = self.recovery_buffer.load(Ordering::Relaxed);
        // Every potential recipient is counted up front; the ones skipped are taken off
        // below, so a writer can never bring the count to zero before the loop ends.
        p.pending.store(r.members.len() + 1, Ordering::Release);
        let mut not_sent = 1;
        for m in r.members.values_mut() {
            match &mut m.state {
                MemberState::Joining { publications, .. } => {
                    not_sent += 1;
                    if publications.len() >= cap {
                        m.handle.close_slow(&self.metrics);
                    } else {
                        publications.push(p.clone());
                    }
                }
                MemberState::Live { .. } => {
                    if self.deliver(m, &p, Outbound::Live(p.clone())) != Delivery::Queued {
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

    fn on_presence(&self, name: &RoomName, change: PresenceChange) {
        let Some(room) = self.room(name) else {
            return;
        };
        let mut r = lock(&room);
        for m in r.members.values_mut() {
            match &mut m.state {
                MemberState::Joining { presence, .. } => presence.push(change.clone()),
                MemberState::Live { .. } => {
                    self.announce(m, name, &change);
                }
            }
        }
    }

    fn on_stream_lost(&self, name: &RoomName) {
        let Some(room) = self.room(name) else {
            return;
        };
        let r = lock(&room);
        for m in r.members.values() {
            m.handle.ctl.close(close::RECONNECT);
        }
    }

    fn disconnect_local(&self, user: &str, code: u16) -> usize {
        self.disconnect_local_sessions(user, code)
    }

    fn local_rooms(&self) -> Vec<(RoomName, usize)> {
        let rooms: Vec<(RoomName, Arc<Mutex<Room>>)> = self
            .read_rooms()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rooms
            .into_iter()
            .map(|(name, room)| {
                let connections = lock(&room).members.len();
                (name, connections)
            })
            .filter(|(_, connections)| *connections > 0)
            .collect()
    }

    fn local_sessions(&self) -> usize {
        self.session_count()
    }
}
