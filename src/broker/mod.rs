//! The seam between this node's hub and "every node that has members of a room".
//!
//! A [`Broker`] owns each room's stream — epoch, offsets, history — and its presence (which
//! users are in the room anywhere). It hands every publication, whichever node it came from,
//! to the local hub through a [`BrokerHandler`], in offset order, and tells it about presence
//! changes and rooms whose stream this node can no longer follow.
//!
//! Two implementations: [`memory::MemoryBroker`] for one node (every call is answered at once,
//! as a ready future) and a Redis backplane for a cluster. Everything the cluster must agree on
//! goes through here — publishing, subscribing, recovery, presence, readiness, the admin API's
//! view of sessions and rooms — so neither the hub nor the sessions know which one runs.
//!
//! Calls that may wait on the network are async and fallible ([`BrokerError::Unavailable`]);
//! the ones a session must be able to make during an outage (leaving a room, unsubscribing)
//! are not: the broker catches up on its own once it is reachable again.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::{PresenceEvent, RoomName, Since};

pub use memory::MemoryBroker;

/// Identifies a session on its node.
pub type SessionId = u64;

/// Identifies a gateway process: random at every start, so a restarted node is a new one.
pub type NodeId = u64;

/// Where a publication came from: a session on some node, which does not get it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub node: NodeId,
    pub session: SessionId,
}

/// One message in a room's stream, serialized once for every recipient.
#[derive(Debug)]
pub struct Publication {
    pub epoch: Arc<str>,
    pub offset: u64,
    /// The `message` frame, shared by every recipient and the history.
    pub frame: Utf8Bytes,
    /// The publishing session; `None` for the server's own (admin API) publications.
    pub origin: Option<Origin>,
    /// When this node accepted or received the publication, for the fan-out latency histogram.
    pub accepted: Instant,
    /// Live recipients that have not written it yet (see the hub's fan-out).
    pub pending: AtomicUsize,
    /// The frame of another wire protocol (Pusher) for rooms of that protocol: built from
    /// `frame` by the first recipient that writes it, then shared by the others.
    pub wire_frame: OnceLock<Utf8Bytes>,
}

impl Publication {
    pub fn new(epoch: Arc<str>, offset: u64, frame: Utf8Bytes, origin: Option<Origin>) -> Self {
        Publication {
            epoch,
            offset,
            frame,
            origin,
            accepted: Instant::now(),
            pending: AtomicUsize::new(0),
            wire_frame: OnceLock::new(),
        }
    }
}

/// What a publisher hands the broker.
pub struct PublishRequest<'a> {
    pub room: &'a RoomName,
    pub from: &'a str,
    pub data: &'a Value,
    pub origin: Option<Origin>,
}

/// The answer to a join: where the room stands, what the client missed, and who is there.
#[derive(Debug)]
pub struct Recovery {
    pub epoch: Arc<str>,
    /// The room's last offset: where the replay ends.
    pub offset: u64,
    pub publications: Vec<Arc<Publication>>,
    /// False when the history no longer holds everything after `since`, or the epoch changed.
    pub recovered: bool,
    /// The room's users (at most `rooms.presence_limit` of them) ...
    pub members: Vec<Arc<str>>,
    /// ... and how many there are, when that is more than `members` lists.
    pub members_total: Option<usize>,
    /// The presence version `members` reflects: presence events up to it are already in it.
    pub presence_version: u64,
}

/// A presence change as every member sees it, numbered so a joining member can tell which
/// changes its `joined.members` already holds.
#[derive(Debug, Clone)]
pub struct PresenceChange {
    pub event: PresenceEvent,
    pub user: Arc<str>,
    pub version: u64,
}

/// Why a broker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The shared state is out of reach (cluster mode: Redis). Clients get `unavailable`.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// The answer of a broker call that may wait on the network.
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BrokerError>> + Send + 'a>>;

/// A finished broker call, for implementations that answer at once.
pub fn ready<'a, T: Send + 'a>(value: Result<T, BrokerError>) -> BrokerFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// A room as the admin API lists it: distinct users and open sessions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomInfo {
    pub room: String,
    pub members: usize,
    pub connections: usize,
}

/// A gateway process as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    pub node: String,
    pub connections: usize,
    /// Rooms with members on that node.
    pub rooms: usize,
    /// Unix seconds.
    pub started_at: u64,
}

/// What the hub of this node knows and does, for the broker: it delivers to local sessions
/// and answers for them when the admin API asks the cluster.
pub trait BrokerHandler: Send + Sync {
    /// A publication for a room this node is subscribed to, in offset order per room.
    fn on_publication(&self, room: &RoomName, publication: Arc<Publication>);
    /// A user's first session in the room anywhere arrived, or its last one left.
    fn on_presence(&self, room: &RoomName, change: PresenceChange);
    /// This node missed publications of the room that it can no longer replay, or the room's
    /// epoch changed under its members: their sessions must reconnect and recover (1012).
    fn on_stream_lost(&self, room: &RoomName);
    /// Closes every session of `user` on this node with `code`; returns how many.
    fn disconnect_local(&self, user: &str, code: u16) -> usize;
    /// Rooms with members on this node: `(room, sessions)`.
    fn local_rooms(&self) -> Vec<(RoomName, usize)>;
    /// Sessions open on this node.
    fn local_sessions(&self) -> usize;
}

/// Room settings the broker applies; a reload changes them.
#[derive(Debug, Clone, Copy)]
pub struct RoomSettings {
    pub history_size: usize,
    pub history_ttl: Duration,
    /// All rooms' history together, in bytes as the broker counts them (single node).
    pub history_max_bytes: u64,
    /// Rooms with more distinct users announce no presence and list only this many members.
    pub presence_limit: usize,
}

/// Streams, history, presence and cross-node fan-out for rooms.
pub trait Broker: Send + Sync {
    /// Where publications go; set once, after the hub exists.
    fn attach(&self, handler: Weak<dyn BrokerHandler>);

    /// Appends a message to the room's stream and delivers it to every subscribed node.
    /// Returns its offset.
    fn publish<'a>(&'a self, req: PublishRequest<'a>) -> BrokerFuture<'a, u64>;

    /// This node now has (one more) member in `room`. Resolves once publications of the room
    /// reach this node, so a [`Broker::recover`] after it leaves no gap.
    fn subscribe<'a>(&'a self, room: &'a RoomName) -> BrokerFuture<'a, ()>;

    /// One member fewer in `room` on this node. Never waits and never fails: during an
    /// outage the broker forgets the subscription once it is reachable again.
    fn unsubscribe(&self, room: &RoomName);

    /// The room's position and users, and the publications after `since` when it is given.
    fn recover<'a>(
        &'a self,
        room: &'a RoomName,
        since: Option<&'a Since>,
    ) -> BrokerFuture<'a, Recovery>;

    /// `user`'s first session in `room` on this node: announces them to the room when they
    /// were nowhere in it before. Resolves once the change is recorded.
    fn presence_join<'a>(&'a self, room: &'a RoomName, user: &'a Arc<str>) -> BrokerFuture<'a, ()>;

    /// The room's users anywhere (every one: callers cap the rooms they ask about).
    fn users<'a>(&'a self, room: &'a RoomName) -> BrokerFuture<'a, Vec<Arc<str>>>;

    /// `user`'s last session in `room` on this node left. Never waits and never fails (like
    /// [`Broker::unsubscribe`]).
    fn presence_leave(&self, room: &RoomName, user: &Arc<str>);

    /// Closes every session of `user` on every node with `code`; returns how many.
    fn disconnect_user<'a>(&'a self, user: &'a str, code: u16) -> BrokerFuture<'a, usize>;

    /// Rooms with members anywhere, sorted by name.
    fn rooms(&self) -> BrokerFuture<'_, Vec<RoomInfo>>;

    /// The live nodes.
    fn nodes(&self) -> BrokerFuture<'_, Vec<NodeInfo>>;

    /// Whether the broker can serve joins and publishes now (`/readyz`).
    fn ready(&self) -> bool;

    /// New room settings (a reload).
    fn set_settings(&self, settings: RoomSettings);

    /// Periodic upkeep: drops expired history. Called once a second: it must cost what it
    /// drops, not what it keeps.
    fn sweep(&self, now: Instant);

    /// Rooms this node keeps (with members, or kept for recovery).
    fn room_count(&self) -> usize;
}
