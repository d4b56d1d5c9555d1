//! The seam between the hub and "every node that has members of a room".
//!
//! A [`Broker`] owns each room's stream: it assigns offsets, keeps the history ring, and hands
//! every publication — whichever node it came from — to the local hub through a
//! [`BrokerHandler`], in offset order. [`MemoryBroker`] is the single-node implementation; a
//! Redis backplane implements the same trait (publish = append + PUBLISH, subscribe =
//! SUBSCRIBE on the first local member), so sessions and the protocol do not change.
//!
//! Lock order: a stream's lock may be held while calling the handler; the hub never calls the
//! broker while holding one of its own locks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::{RoomName, ServerMsg, Since};

/// Identifies a session on this node, to keep a publication from echoing to its sender.
pub type SessionId = u64;

/// One message in a room's stream, serialized once for every recipient.
#[derive(Debug)]
pub struct Publication {
    pub epoch: Arc<str>,
    pub offset: u64,
    /// The `message` frame, shared by every recipient and the history.
    pub frame: Utf8Bytes,
    /// The publishing session, when it is on this node.
    pub origin: Option<SessionId>,
    /// When the publication was accepted, for the fan-out latency histogram.
    pub accepted: Instant,
    /// Live recipients that have not written it yet (see the hub's fan-out).
    pub pending: AtomicUsize,
}

/// What a publisher hands the broker.
pub struct PublishRequest<'a> {
    pub room: &'a RoomName,
    pub from: &'a str,
    pub data: &'a Value,
    pub origin: Option<SessionId>,
}

/// The answer to a join: where the room stands and what the client missed.
#[derive(Debug)]
pub struct Recovery {
    pub epoch: Arc<str>,
    /// The room's last offset: where the replay ends.
    pub offset: u64,
    pub publications: Vec<Arc<Publication>>,
    /// False when the history no longer holds everything after `since`, or the epoch changed.
    pub recovered: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Receives publications for rooms this node is subscribed to.
pub trait BrokerHandler: Send + Sync {
    fn on_publication(&self, room: &RoomName, publication: Arc<Publication>);
}

/// Streams, history and cross-node fan-out for rooms.
pub trait Broker: Send + Sync {
    /// Where publications go; set once, after the hub exists.
    fn attach(&self, handler: Weak<dyn BrokerHandler>);
    /// Appends a message to the room's stream and delivers it to every subscribed node.
    /// Returns the message's offset.
    fn publish(&self, req: PublishRequest<'_>) -> Result<u64, BrokerError>;
    /// This node now has (one more) member in `room`.
    fn subscribe(&self, room: &RoomName);
    /// One member fewer in `room` on this node.
    fn unsubscribe(&self, room: &RoomName);
    /// The room's position, and the publications after `since` when it is given.
    fn recover(&self, room: &RoomName, since: Option<&Since>) -> Recovery;
    /// Drops expired history and forgets rooms nobody is in whose history is gone.
    fn sweep(&self, now: Instant);
    /// Rooms the broker keeps (with members or with history).
    fn room_count(&self) -> usize;
}

/// History settings, changeable on reload.
#[derive(Debug, Clone, Copy)]
pub struct HistorySettings {
    pub size: usize,
    pub ttl: Duration,
}

struct Stream {
    epoch: Arc<str>,
    last_offset: u64,
    history: VecDeque<Arc<Publication>>,
    /// When the last message was published: the history is kept `ttl` after it.
    last_publish: Instant,
    subscribers: usize,
}

/// The single-node broker: streams in memory.
pub struct MemoryBroker {
    streams: Mutex<HashMap<RoomName, Arc<Mutex<Stream>>>>,
    settings: arc_swap::ArcSwap<HistorySettings>,
    handler: OnceLock<Weak<dyn BrokerHandler>>,
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
    pub fn new(settings: HistorySettings) -> Self {
        MemoryBroker {
            streams: Mutex::new(HashMap::new()),
            settings: arc_swap::ArcSwap::from_pointee(settings),
            handler: OnceLock::new(),
        }
    }

    pub fn set_history(&self, settings: HistorySettings) {
        self.settings.store(Arc::new(settings));
    }

    fn stream(&self, room: &RoomName) -> Arc<Mutex<Stream>> {
        let mut streams = lock(&self.streams);
        streams
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Stream {
                    epoch: new_epoch(),
                    last_offset: 0,
                    history: VecDeque::new(),
                    last_publish: Instant::now(),
                    subscribers: 0,
                }))
            })
            .clone()
    }
}

impl Broker for MemoryBroker {
    fn attach(&self, handler: Weak<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    fn publish(&self, req: PublishRequest<'_>) -> Result<u64, BrokerError> {
        let settings = **self.settings.load();
        let stream = self.stream(req.room);
        let handler = self.handler.get().and_then(Weak::upgrade);
        let mut s = lock(&stream);
        s.last_offset += 1;
        let offset = s.last_offset;
        s.last_publish = Instant::now();
        let mut frame = ServerMsg::Message {
            room: req.room.as_str(),
            from: req.from,
            data: req.data,
            epoch: &s.epoch,
            offset,
            ts: now_ms(),
        }
        .to_text();
        // The serializer grows its buffer by doubling; the frame lives on in the history and
        // in every recipient's queue, so give the spare capacity (up to half) back.
        frame.shrink_to_fit();
        let publication = Arc::new(Publication {
            epoch: s.epoch.clone(),
            offset,
            frame: Utf8Bytes::from(frame),
            origin: req.origin,
            accepted: Instant::now(),
            pending: AtomicUsize::new(0),
        });
        if settings.size > 0 {
            if s.history.len() >= settings.size {
                s.history.pop_front();
            }
            s.history.push_back(publication.clone());
        }
        // Delivered under the stream lock, so every node sees offsets in order.
        if let Some(h) = handler {
            h.on_publication(req.room, publication);
        }
        Ok(offset)
    }

    fn subscribe(&self, room: &RoomName) {
        let stream = self.stream(room);
        lock(&stream).subscribers += 1;
    }

    fn unsubscribe(&self, room: &RoomName) {
        let streams = lock(&self.streams);
        if let Some(stream) = streams.get(room) {
            let mut s = lock(stream);
            s.subscribers = s.subscribers.saturating_sub(1);
        }
    }

    fn recover(&self, room: &RoomName, since: Option<&Since>) -> Recovery {
        let ttl = self.settings.load().ttl;
        let stream = self.stream(room);
        let s = lock(&stream);
        let mut recovery = Recovery {
            epoch: s.epoch.clone(),
            offset: s.last_offset,
            publications: Vec::new(),
            recovered: true,
        };
        let Some(since) = since else {
            return recovery;
        };
        if *since.epoch != *s.epoch || since.offset > s.last_offset {
            recovery.recovered = false;
            return recovery;
        }
        // The history as a whole lives `ttl` past the room's last message.
        if s.last_publish.elapsed() <= ttl {
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
    }

    fn sweep(&self, now: Instant) {
        let ttl = self.settings.load().ttl;
        let mut streams = lock(&self.streams);
        streams.retain(|_, stream| {
            let mut s = lock(stream);
            if now.duration_since(s.last_publish) > ttl {
                s.history.clear();
                s.history.shrink_to_fit();
            }
            s.subscribers > 0 || !s.history.is_empty()
        });
        if streams.capacity() > 64 && streams.len() < streams.capacity() / 4 {
            streams.shrink_to_fit();
        }
    }

    fn room_count(&self) -> usize {
        lock(&self.streams).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(size: usize) -> MemoryBroker {
        MemoryBroker::new(HistorySettings {
            size,
            ttl: Duration::from_secs(60),
        })
    }

    fn publish(b: &MemoryBroker, room: &RoomName, n: u64) -> u64 {
        b.publish(PublishRequest {
            room,
            from: "alice",
            data: &Value::from(n),
            origin: None,
        })
        .expect("memory broker never fails")
    }

    #[test]
    fn offsets_grow_by_one_from_one() {
        let b = broker(10);
        let room = RoomName::parse("r").unwrap();
        assert_eq!(b.recover(&room, None).offset, 0);
        assert_eq!(publish(&b, &room, 1), 1);
        assert_eq!(publish(&b, &room, 2), 2);
        assert_eq!(b.recover(&room, None).offset, 2);
    }

    #[test]
    fn recovery_is_exact_or_says_not_recovered() {
        let b = broker(3);
        let room = RoomName::parse("r").unwrap();
        for i in 1..=5 {
            publish(&b, &room, i);
        }
        let epoch = b.recover(&room, None).epoch.to_string();
        let r = b.recover(
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
        let r = b.recover(
            &room,
            Some(&Since {
                epoch: epoch.clone(),
                offset: 1,
            }),
        );
        assert!(!r.recovered, "offset 2 fell out of a 3-message history");
        assert_eq!(r.publications.len(), 3);
        let r = b.recover(
            &room,
            Some(&Since {
                epoch: "other".into(),
                offset: 3,
            }),
        );
        assert!(!r.recovered);
        let r = b.recover(&room, Some(&Since { epoch, offset: 5 }));
        assert!(r.recovered && r.publications.is_empty());
    }

    #[test]
    fn empty_rooms_are_forgotten_after_their_history_expires() {
        let b = MemoryBroker::new(HistorySettings {
            size: 10,
            ttl: Duration::from_millis(0),
        });
        let room = RoomName::parse("r").unwrap();
        b.subscribe(&room);
        publish(&b, &room, 1);
        b.unsubscribe(&room);
        assert_eq!(b.room_count(), 1);
        b.sweep(Instant::now() + Duration::from_millis(5));
        assert_eq!(b.room_count(), 0);
    }
}
