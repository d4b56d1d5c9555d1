//! Admin requests that every node answers for its own sessions: `disconnect` (close a user's
//! sessions, count them), `rooms` (local rooms and their sessions), `nodes` (this node).
//!
//! The requester publishes the request on the control channel, which every node subscribes
//! to; Redis answers the publish with how many subscribers got it, which is how many answers
//! to wait for (each on the requester's own reply channel), for at most
//! `cluster.redis_timeout`. A node that does not answer in time is left out of the sums.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use super::{lock, unavailable, Backend, RedisBroker};
use crate::broker::{BrokerError, NodeId, NodeInfo};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Disconnect { user: String, code: u16 },
    Rooms,
    Nodes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Closed(usize),
    /// `(room, sessions)` of the rooms with members on the node.
    Rooms(Vec<(String, usize)>),
    Node(NodeInfo),
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    id: u64,
    from: NodeId,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize, Deserialize)]
struct ReplyEnvelope {
    id: u64,
    reply: Reply,
}

/// Which control channel a message came on.
pub enum Kind {
    Request,
    Reply,
}

/// The control channels of this node and its requests waiting for answers.
pub struct Control {
    requests: String,
    replies: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
}

impl<'de> Deserialize<'de> for NodeInfo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            node: String,
            connections: usize,
            rooms: usize,
            started_at: u64,
        }
        let w = Wire::deserialize(d)?;
        Ok(NodeInfo {
            node: w.node,
            connections: w.connections,
            rooms: w.rooms,
            started_at: w.started_at,
        })
    }
}

impl Control {
    pub fn new(requests: String, replies: String) -> Control {
        Control {
            requests,
            replies,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    pub fn which(&self, channel: &[u8]) -> Option<Kind> {
        if channel == self.requests.as_bytes() {
            Some(Kind::Request)
        } else if channel == self.replies.as_bytes() {
            Some(Kind::Reply)
        } else {
            None
        }
    }

    /// Channels this node subscribes to.
    pub fn channels(&self) -> [&str; 2] {
        [&self.requests, &self.replies]
    }
}

impl RedisBroker {
    /// Sends `request` to every node (this one included) and collects their answers.
    pub(super) async fn gather(
        &self,
        backend: &Backend,
        request: Request,
    ) -> Result<Vec<Reply>, BrokerError> {
        let control = &self.control;
        let id = control.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(64);
        lock(&control.waiting).insert(id, tx);
        let _forget = Forget { control, id };
        let body = serde_json::to_string(&Envelope {
            id,
            from: self.node,
            body: request,
        })
        .map_err(|e| unavailable(format!("control: {e}")))?;
        let mut conn = backend.cmd.clone();
        let receivers: usize = self
            .call(
                "control",
                redis::cmd(self.publish_cmd)
                    .arg(&control.requests)
                    .arg(body)
                    .query_async(&mut conn),
            )
            .await?;
        let mut replies = Vec::with_capacity(receivers);
        let deadline = tokio::time::Instant::now() + self.cluster.redis_timeout;
        while replies.len() < receivers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => replies.push(r),
                _ => {
                    debug!(
                        expected = receivers,
                        got = replies.len(),
                        "some nodes did not answer an admin request in time"
                    );
                    break;
                }
            }
        }
        Ok(replies)
    }

    pub(super) fn on_control(&self, kind: Kind, body: &[u8]) {
        match kind {
            Kind::Reply => {
                let Ok(r) = serde_json::from_slice::<ReplyEnvelope>(body) else {
                    return;
                };
                let tx = lock(&self.control.waiting).get(&r.id).cloned();
                if let Some(tx) = tx {
                    let _ = tx.try_send(r.reply);
                }
            }
            Kind::Request => {
                let Ok(req) = serde_json::from_slice::<Envelope<Request>>(body) else {
                    return;
                };
                let reply = match req.body {
                    Request::Disconnect { user, code } => Reply::Closed(
                        self.handler()
                            .map_or(0, |h| h.disconnect_local(&user, code)),
                    ),
                    Request::Rooms => Reply::Rooms(
                        self.handler()
                            .map(|h| h.local_rooms())
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(room, n)| (room.to_string(), n))
                            .collect(),
                    ),
                    Request::Nodes => Reply::Node(self.node_info()),
                };
                let Some(me) = self.me() else { return };
                let to = self.names.replies(req.from);
                let Ok(body) = serde_json::to_string(&ReplyEnvelope { id: req.id, reply }) else {
                    return;
                };
                tokio::spawn(async move {
                    let Ok(backend) = me.backend() else { return };
                    let mut conn = backend.cmd.clone();
                    let sent = me
                        .call(
                            "control",
                            redis::cmd(me.publish_cmd)
                                .arg(to)
                                .arg(body)
                                .exec_async(&mut conn),
                        )
                        .await;
                    if let Err(e) = sent {
                        debug!(error = %e, "could not answer an admin request");
                    }
                });
            }
        }
    }
}

/// Forgets a request once its answers are in (or it failed).
struct Forget<'a> {
    control: &'a Control,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.control.waiting).remove(&self.id);
    }
}
