//! One authenticated connection after `101`: reads client messages, writes its bounded queue,
//! pings, and enforces idle time, token expiry, rate limits and the abuse rules of CONTRACT §5.
//!
//! A single task owns the socket: it `select!`s over the close switch, the outbound queue, the
//! next client frame, the ping timer, the token's expiry and the request waiting on the broker.
//! A join or publish that waits on the broker (a Redis round trip in a cluster) does not stop
//! the session from writing and pinging; the next client message is read once it is answered,
//! so a session's publishes keep their order. Writes are batched (feed, then one
//! flush per burst) and can always be interrupted by the close switch, so a client that stops
//! reading cannot pin the task: its queue fills, the hub flips the switch (1013), and the
//! session ends, freeing its memory.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info_span, warn};

use crate::auth::{unix_now, Identity};
use crate::broker::{BrokerError, Publication};
use crate::hub::{
    Departure, JoinError, JoinTerms, Outbound, Replay, SessionCtl, SessionHandle, SessionPlace,
};
use crate::limits::{ConnPermit, MessageLimiter};
use crate::live::Shared;
use crate::metrics::DropReason;
use crate::protocol::{close, ClientMsg, ErrorCode, RequestId, RoomName, ServerMsg, Since};
use crate::pusher;
use crate::pusher::wire::{Decoded, PusherWire, SignIn};
use crate::sanitize::parse_client;

/// Most queued frames written before one flush.
const MAX_BATCH: usize = 256;
/// Refused messages in a row that close the connection (CONTRACT §5).
const MAX_REFUSED_STREAK: u32 = 10;
/// How long sending past a rate limit may go on before 1008 (CONTRACT §5). Publishes and
/// commands (join, leave, refresh) alike: a client stuck in a join/leave loop is flooding too.
const FLOOD_LIMIT: Duration = Duration::from_secs(5);
/// A pause this long between rate-limited requests ends a flood. The requests the buckets
/// let through meanwhile (one per refill) do not: a client sending far above its rate still
/// gets one through now and then, and is flooding all the same.
const FLOOD_PAUSE: Duration = Duration::from_secs(1);
/// How long a close frame may take to leave once the session has decided to end.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session's frames are spelled: what a client message means and what the session
/// does about it are the same for both; only the framing differs.
pub enum Wire {
    /// The gateway's own JSON protocol (CONTRACT §4).
    Native,
    /// Pusher protocol 7 (CONTRACT §10).
    Pusher(PusherWire),
}

impl Wire {
    /// The first frame: `welcome` or `pusher:connection_established`.
    fn greeting(&self, identity: &Identity, session_id: &str) -> Utf8Bytes {
        match self {
            Wire::Native => Utf8Bytes::from(
                ServerMsg::Welcome {
                    user: &identity.user,
                    session: session_id,
                    expires_at: identity.expires_at,
                }
                .to_text(),
            ),
            Wire::Pusher(w) => w.connection_established(),
        }
    }

    /// A reply, or `None` when this protocol has no frame for it.
    fn reply(&self, msg: &ServerMsg<'_>) -> Option<Utf8Bytes> {
        match self {
            Wire::Native => Some(Utf8Bytes::from(msg.to_text())),
            Wire::Pusher(w) => w.reply(msg),
        }
    }

    /// The frames for a queued item (none, one, or two: a Pusher cache channel's
    /// `subscription_succeeded` is followed by `pusher:cache_miss` when it has nothing to
    /// replay), and the live publication it carries, for the fan-out accounting.
    fn frame(&self, item: Outbound) -> Framed {
        let text = |t: Utf8Bytes| Some(Message::Text(t));
        match (self, item) {
            (_, Outbound::Frame(f)) => Framed::of(text(f)),
            (Wire::Native, Outbound::Replay(p)) => Framed::of(text(p.frame.clone())),
            (Wire::Native, Outbound::Live(p)) => Framed::live(p.frame.clone(), p),
            (Wire::Native, Outbound::Joined(j)) => Framed::of(text(Utf8Bytes::from(
                ServerMsg::Joined {
                    room: j.room.as_str(),
                    epoch: &j.epoch,
                    offset: j.offset,
                    recovered: j.recovered,
                    members: &j.members,
                    members_total: j.members_total,
                    id: j.id.as_ref(),
                }
                .to_text(),
            ))),
            (Wire::Native, Outbound::Presence(n)) => Framed::of(text(Utf8Bytes::from(
                ServerMsg::Presence {
                    room: n.room.as_str(),
                    event: n.change.event,
                    user: &n.change.user,
                }
                .to_text(),
            ))),
            (Wire::Pusher(w), Outbound::Replay(p)) => Framed::of(text(w.publication(&p))),
            (Wire::Pusher(w), Outbound::Live(p)) => Framed::live(w.publication(&p), p),
            (Wire::Pusher(w), Outbound::Joined(j)) => {
                let (joined, miss) = w.joined(&j);
                Framed {
                    msg: joined.map(Message::Text),
                    then: miss.map(Message::Text),
                    live: None,
                }
            }
            (Wire::Pusher(w), Outbound::Presence(n)) => Framed::of(w.presence(&n).and_then(text)),
        }
    }

    /// How a session of this protocol joins `room`: as which presence member, with what
    /// replay, under which cap on the room's users.
    fn join_terms(&self, room: &RoomName, since: Option<Since>, user: &Arc<str>) -> JoinTerms {
        match self {
            Wire::Native => JoinTerms {
                user: user.clone(),
                replay: Replay::Since(since),
                max_users: None,
            },
            Wire::Pusher(w) => w.join_terms(room, user),
        }
    }

    /// The close code this protocol sends for one of the gateway's.
    fn close_code(&self, code: u16) -> u16 {
        match self {
            Wire::Native => code,
            Wire::Pusher(_) => pusher::wire::close_code(code),
        }
    }
}

/// A queued item's frames, and the live publication it carries.
struct Framed {
    msg: Option<Message>,
    then: Option<Message>,
    live: Option<Arc<Publication>>,
}

impl Framed {
    /// One frame (or none), no live publication.
    fn of(msg: Option<Message>) -> Self {
        Framed {
            msg,
            then: None,
            live: None,
        }
    }

    /// A live publication's frame.
    fn live(frame: Utf8Bytes, publication: Arc<Publication>) -> Self {
        Framed {
            msg: Some(Message::Text(frame)),
            then: None,
            live: Some(publication),
        }
    }
}

/// Everything a session needs from its handshake.
pub struct Accepted {
    pub wire: Wire,
    pub identity: Identity,
    pub peer: SocketAddr,
    pub permit: ConnPermit,
    /// The session's place among its user's sessions, taken by the handshake.
    pub place: SessionPlace,
}

/// Builds a session and returns the future that runs it to its end.
///
/// The session (socket included) lives in one heap allocation that the future only points
/// to: an idle connection then costs its buffers plus a small task, not several copies of a
/// large async state machine.
pub fn run<S>(
    ws: WebSocketStream<S>,
    accepted: Accepted,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hub = shared.hub.clone();
    let id = accepted.place.id();
    // Unique across nodes and restarts: the node's random id, then the session's.
    let session_id = format!("{:016x}{id:x}", hub.node());
    let span = info_span!(
        "session",
        session = %session_id,
        peer = %accepted.peer.ip(),
        user = %accepted.identity.user
    );
    let live = shared.live.load_full();
    let (tx, rx) = mpsc::channel(live.limits.send_queue);
    let ctl = Arc::new(SessionCtl::new(shared.shutdown.child_token()));
    let handle = SessionHandle {
        id,
        user: accepted.identity.user.clone(),
        tx,
        ctl,
    };
    hub.register(&accepted.place, &handle);
    let greeting = accepted.wire.greeting(&accepted.identity, &session_id);
    handle.send(Outbound::Frame(greeting), &shared.metrics);
    let limiter = MessageLimiter::new(live.limits.messages_per_second, live.limits.burst);
    let commands = MessageLimiter::new(live.limits.commands_per_second, live.limits.command_burst);
    let mut session = Box::new(Session {
        ws,
        rx,
        wire: accepted.wire,
        shared,
        handle,
        identity: accepted.identity,
        joined: HashSet::new(),
        limiter,
        commands,
        refused_streak: 0,
        flood: None,
        last_seen: Instant::now(),
        settled: Vec::new(),
        waiting: None,
        _permit: accepted.permit,
        _place: accepted.place,
    });
    // The span is attached to the session's log lines rather than entered on every poll:
    // entering it per wake-up costs more than the lines it would annotate.
    async move {
        let code = session.serve().await;
        debug!(parent: &span, code = code.unwrap_or(0), "session ended");
    }
}

struct Session<S> {
    ws: WebSocketStream<S>,
    rx: mpsc::Receiver<Outbound>,
    wire: Wire,
    shared: Arc<Shared>,
    handle: SessionHandle,
    identity: Identity,
    joined: HashSet<RoomName>,
    /// The publish bucket (`limits.messages_per_second`, `burst`).
    limiter: MessageLimiter,
    /// The join/leave/refresh bucket (`limits.commands_per_second`, `command_burst`).
    commands: MessageLimiter,
    refused_streak: u32,
    /// The current run of rate-limited requests: when it began, and its latest refusal.
    flood: Option<(Instant, Instant)>,
    /// The last pong or text message from the client: what keeps a connection from idling
    /// out. A client's own pings do not count (CONTRACT §2: "no pong/data"), or a ping flood
    /// would keep a connection that never answers the server open forever.
    last_seen: Instant,
    /// Live publications written in the current batch, settled after its flush.
    settled: Vec<Arc<Publication>>,
    /// The request waiting on the broker, if any; no client message is read meanwhile.
    waiting: Option<Waiting>,
    /// The connection's slot in the connection limits, freed with the session.
    _permit: ConnPermit,
    /// Its place among its user's sessions; `unregister` frees it first, this at the latest.
    _place: SessionPlace,
}

enum WriteError {
    Cancelled,
    Socket,
}

/// A request waiting on the broker: its answer, once there, is applied to the session.
type Waiting = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// What the broker answered to a request.
enum Answer {
    Join {
        room: RoomName,
        id: Option<RequestId>,
        result: Result<(), JoinError>,
    },
    Publish {
        id: Option<RequestId>,
        result: Result<u64, BrokerError>,
    },
}

/// Longest a token may keep a session open without a refresh; a far-future `exp` (a token
/// can carry any u64) must not overflow the timer.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The session's deadline for a token: `exp` plus the configured leeway.
fn expiry_instant(expires_at: u64, leeway: u64) -> Instant {
    let left = expires_at.saturating_add(leeway).saturating_sub(unix_now());
    Instant::now() + Duration::from_secs(left).min(MAX_TOKEN_LIFE)
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn serve(&mut self) -> Option<u16> {
        let live = self.shared.live.load_full();
        let ping_every = live.server.ping_interval;
        let idle_timeout = live.server.idle_timeout;
        // One timer for the three deadlines (token expiry, idle, next ping), armed at the
        // earliest: a wakeup for a queued frame polls one timer, not three. A message only
        // stamps `last_seen` and a refresh only moves `expiry_at` (later, usually), so the
        // timer may fire before anything is due; it is then re-armed at the new earliest.
        let mut expiry_at = expiry_instant(self.identity.expires_at, live.leeway_secs);
        let mut ping_at = Instant::now() + ping_every;
        let timer =
            tokio::time::sleep_until(expiry_at.min(self.last_seen + idle_timeout).min(ping_at));
        tokio::pin!(timer);
        drop(live);
        let ctl = self.handle.ctl.clone();
        // One cancellation future for the whole loop (building one per iteration costs a lock).
        let cancelled = ctl.token().clone().cancelled_owned();
        tokio::pin!(cancelled);

        // Biased, and the timers first: a client that keeps its socket always readable (a
        // ping flood) must not starve the expiry and idle checks. They are ready once per
        // interval at most, so they cannot starve the queue or the socket in turn.
        let code = loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => break Some(ctl.code()),
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= expiry_at {
                        break Some(close::EXPIRED);
                    }
                    if now >= self.last_seen + idle_timeout {
                        break Some(close::IDLE);
                    }
                    if now >= ping_at {
                        // As an interval that delays missed ticks: the next ping one period
                        // after this one was sent.
                        ping_at = now.max(ping_at) + ping_every;
                        let send = self.ws.send(Message::Ping(Default::default()));
                        let r = tokio::select! {
                            r = send => r.map_err(|_| WriteError::Socket),
                            _ = &mut cancelled => Err(WriteError::Cancelled),
                        };
                        match r {
                            Ok(()) => {}
                            Err(WriteError::Cancelled) => break Some(ctl.code()),
                            Err(WriteError::Socket) => break None,
                        }
                    }
                    timer.as_mut().reset(expiry_at.min(self.last_seen + idle_timeout).min(ping_at));
                }
                item = self.rx.recv() => {
                    let Some(item) = item else { break Some(close::INTERNAL) };
                    let write = write_batch(&mut self.ws, &self.wire, item, &mut self.rx, &mut self.settled, &self.shared);
                    let r = tokio::select! {
                        r = write => r,
                        _ = &mut cancelled => Err(WriteError::Cancelled),
                    };
                    match r {
                        Ok(()) => {}
                        Err(WriteError::Cancelled) => break Some(ctl.code()),
                        Err(WriteError::Socket) => break None,
                    }
                }
                answer = wait(&mut self.waiting), if self.waiting.is_some() => {
                    self.waiting = None;
                    if let Some(code) = self.apply(answer) {
                        break Some(code);
                    }
                }
                msg = self.ws.next(), if self.waiting.is_none() => {
                    match msg {
                        None => break None,
                        Some(Ok(Message::Text(text))) => {
                            self.last_seen = Instant::now();
                            let expiry_was = expiry_at;
                            if let Some(code) = self.on_text(&text, &mut expiry_at) {
                                break Some(code);
                            }
                            if expiry_at < expiry_was {
                                timer.as_mut().reset(expiry_at.min(self.last_seen + idle_timeout).min(ping_at));
                            }
                            // A broker that answers at once (one node) is answered here,
                            // without another turn of the loop.
                            if let Some(answer) = poll_once(&mut self.waiting).await {
                                self.waiting = None;
                                if let Some(code) = self.apply(answer) {
                                    break Some(code);
                                }
                            }
                        }
                        Some(Ok(Message::Pong(_))) => self.last_seen = Instant::now(),
                        Some(Ok(Message::Binary(_))) => break Some(close::UNSUPPORTED),
                        // tungstenite answers pings itself.
                        Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) => {
                            // tungstenite has queued the reply; send it and stop.
                            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.ws.flush()).await;
                            break None;
                        }
                        Some(Err(e)) => break read_error_code(&e),
                    }
                }
            }
        };

        // Leave every room first so nothing new is queued. At shutdown everyone leaves at
        // once: presence is not announced then (it would be n² frames for nobody).
        // A join still waiting on the broker is dropped: it takes its member out itself.
        self.waiting = None;
        let departure = if code == Some(close::GOING_AWAY) {
            Departure::Shutdown
        } else {
            Departure::Left
        };
        for room in self.joined.drain() {
            self.shared.hub.leave(&self.handle, &room, departure);
        }
        self.shared.hub.unregister(&self.handle);
        if let Some(code) = code {
            self.rx.close();
            if code != close::SLOW {
                // Send what was queued before the close: at shutdown the last messages, after
                // a refusal the reply that explains the close. Not for a client too slow to
                // read: its queue is full and its socket blocked.
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
                    while let Ok(item) = self.rx.try_recv() {
                        let framed = self.wire.frame(item);
                        for msg in [framed.msg, framed.then].into_iter().flatten() {
                            if self.ws.feed(msg).await.is_err() {
                                return;
                            }
                        }
                    }
                })
                .await;
            }
            let frame = CloseFrame {
                code: CloseCode::from(self.wire.close_code(code)),
                reason: close::reason(code).into(),
            };
            self.shared.metrics.close_sent(code);
            let sent = matches!(
                tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.ws.close(Some(frame))).await,
                Ok(Ok(()))
            );
            // Wait briefly for the client's close reply so it sees a clean close, reading
            // (and dropping) what it sends meanwhile: a socket closed with unread input is
            // reset, and a reset makes the client's kernel discard what it has not read yet,
            // the close frame included. A client too slow to read gets this only if its close
            // frame went out (it is reading again: a pong to an old ping may be on its way).
            if code != close::SLOW || sent {
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
                    while let Some(Ok(_)) = self.ws.next().await {}
                })
                .await;
            }
        }
        // End TLS properly (close_notify) so clients do not see a truncated stream.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.ws.get_mut().shutdown()).await;
        code
    }

    fn reply(&self, msg: ServerMsg<'_>) {
        if let Some(frame) = self.wire.reply(&msg) {
            self.handle
                .send(Outbound::Frame(frame), &self.shared.metrics);
        }
    }

    /// Answers a request refused by a rate limit; returns 1008 once the client has gone on
    /// past its limits for [`FLOOD_LIMIT`]. Not counted toward the refusals in a row.
    fn rate_limited(&mut self, id: Option<&RequestId>, message: &str) -> Option<u16> {
        let now = Instant::now();
        let began = match self.flood {
            Some((began, last)) if now.duration_since(last) < FLOOD_PAUSE => began,
            _ => now,
        };
        self.flood = Some((began, now));
        if now.duration_since(began) >= FLOOD_LIMIT {
            return Some(close::POLICY);
        }
        self.refuse(id, ErrorCode::RateLimited, message)
    }

    /// Takes one token from the command bucket (join, leave, refresh), following a reload.
    fn command_allowed(&mut self, limits: &crate::config::LimitsConfig) -> bool {
        self.commands
            .set_rate(limits.commands_per_second, limits.command_burst);
        self.commands.allow()
    }

    /// Answers a refusal; returns a close code when the abuse limit is reached.
    fn refuse(&mut self, id: Option<&RequestId>, code: ErrorCode, message: &str) -> Option<u16> {
        self.reply(ServerMsg::Error { id, code, message });
        let reason = match code {
            ErrorCode::BadRequest => Some(DropReason::BadRequest),
            ErrorCode::Forbidden => Some(DropReason::Forbidden),
            ErrorCode::NotJoined => Some(DropReason::NotJoined),
            ErrorCode::TooManyRooms => Some(DropReason::TooManyRooms),
            ErrorCode::RateLimited => Some(DropReason::RateLimited),
            _ => None,
        };
        if let Some(r) = reason {
            self.shared.metrics.dropped(r);
        }
        if code.counts_as_abuse() {
            self.refused_streak += 1;
            if self.refused_streak > MAX_REFUSED_STREAK {
                return Some(close::POLICY);
            }
        }
        None
    }

    fn on_text(&mut self, text: &str, expiry_at: &mut Instant) -> Option<u16> {
        let metrics = &self.shared.metrics;
        metrics.messages_in.inc();
        metrics.bytes_in.inc_by(text.len() as u64);
        let live = self.shared.live.load();
        if text.len() > live.limits.max_message_bytes {
            return Some(close::TOO_BIG);
        }
        let msg = match &mut self.wire {
            Wire::Native => match parse_client(text) {
                Ok(m) => m,
                Err(e) => return self.refuse(e.id.as_ref(), ErrorCode::BadRequest, &e.message),
            },
            Wire::Pusher(w) => match w.decode(text) {
                Decoded::Command(m) => m,
                Decoded::Reply(frame) => {
                    self.handle
                        .send(Outbound::Frame(frame), &self.shared.metrics);
                    return None;
                }
                Decoded::Refuse { id, code, message } => {
                    return match code {
                        ErrorCode::RateLimited => self.rate_limited(id.as_ref(), message),
                        _ => self.refuse(id.as_ref(), code, message),
                    }
                }
                Decoded::Ignore => return None,
                Decoded::SignIn(result) => return self.sign_in(result, &live.limits),
            },
        };
        match msg {
            ClientMsg::Join { room, since, id } => {
                if !self.command_allowed(&live.limits) {
                    return self.rate_limited(id.as_ref(), &commands_exceeded(&live.limits));
                }
                if !self.identity.rooms.allows(room.as_str()) {
                    return self.refuse(
                        id.as_ref(),
                        ErrorCode::Forbidden,
                        "your token does not allow this room",
                    );
                }
                if self.joined.contains(&room) {
                    return self.refuse(
                        id.as_ref(),
                        ErrorCode::BadRequest,
                        "already joined this room",
                    );
                }
                if self.joined.len() >= live.limits.max_rooms_per_connection {
                    let message = format!(
                        "at most {} rooms per connection",
                        live.limits.max_rooms_per_connection
                    );
                    return self.refuse(id.as_ref(), ErrorCode::TooManyRooms, &message);
                }
                let terms = self.wire.join_terms(&room, since, &self.handle.user);
                let join = self.shared.hub.clone().join_as(
                    self.handle.clone(),
                    room.clone(),
                    terms,
                    id.clone(),
                );
                self.waiting = Some(Box::pin(async move {
                    let result = join.await;
                    Answer::Join { room, id, result }
                }));
            }
            ClientMsg::Leave { room, id } => {
                if !self.command_allowed(&live.limits) {
                    return self.rate_limited(id.as_ref(), &commands_exceeded(&live.limits));
                }
                if !self.joined.remove(&room) {
                    return self.refuse(id.as_ref(), ErrorCode::NotJoined, "not in this room");
                }
                self.shared.hub.leave(&self.handle, &room, Departure::Left);
                self.reply(ServerMsg::Left {
                    room: room.as_str(),
                    reason: None,
                    id: id.as_ref(),
                });
            }
            ClientMsg::Publish { room, data, id } => {
                if !self.joined.contains(&room) {
                    return self.refuse(
                        id.as_ref(),
                        ErrorCode::NotJoined,
                        "join the room before publishing",
                    );
                }
                self.limiter
                    .set_rate(live.limits.messages_per_second, live.limits.burst);
                if !self.limiter.allow() {
                    let message =
                        format!("{} messages/s exceeded", live.limits.messages_per_second);
                    return self.rate_limited(id.as_ref(), &message);
                }
                let publish = self.shared.hub.clone().publish(
                    room,
                    self.identity.user.clone(),
                    data,
                    Some(self.handle.id),
                );
                self.waiting = Some(Box::pin(async move {
                    let result = publish.await;
                    Answer::Publish { id, result }
                }));
            }
            ClientMsg::Refresh { token, id } => {
                if !self.command_allowed(&live.limits) {
                    return self.rate_limited(id.as_ref(), &commands_exceeded(&live.limits));
                }
                let next = match live.verifier.verify(&token) {
                    Ok(next) => next,
                    Err(e) => {
                        return self.refuse(id.as_ref(), ErrorCode::TokenInvalid, &e.to_string())
                    }
                };
                if next.user != self.identity.user {
                    return self.refuse(
                        id.as_ref(),
                        ErrorCode::Forbidden,
                        "a refresh token must be for the same user",
                    );
                }
                *expiry_at = expiry_instant(next.expires_at, live.leeway_secs);
                self.reply(ServerMsg::Refreshed {
                    expires_at: next.expires_at,
                    id: id.as_ref(),
                });
                // Rooms the new token no longer allows are left, as if the client had asked.
                let revoked: Vec<RoomName> = self
                    .joined
                    .iter()
                    .filter(|room| !next.rooms.allows(room.as_str()))
                    .cloned()
                    .collect();
                for room in revoked {
                    self.joined.remove(&room);
                    self.shared.hub.leave(&self.handle, &room, Departure::Left);
                    self.reply(ServerMsg::Left {
                        room: room.as_str(),
                        reason: Some("forbidden"),
                        id: None,
                    });
                }
                self.identity = next;
            }
        }
        self.refused_streak = 0;
        None
    }
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// A Pusher sign-in (it takes a command token): the socket answers to its user for
    /// disconnects from then on and may subscribe to the user's own channel. A refused one
    /// closes the socket (Pusher's 4009).
    fn sign_in(
        &mut self,
        result: Result<SignIn, &'static str>,
        limits: &crate::config::LimitsConfig,
    ) -> Option<u16> {
        if !self.command_allowed(limits) {
            return self.rate_limited(None, &commands_exceeded(limits));
        }
        let Wire::Pusher(w) = &mut self.wire else {
            return None;
        };
        match result {
            Err(message) => {
                debug!(reason = message, "pusher signin refused");
                let frame = w.signin_refused(message);
                self.handle
                    .send(Outbound::Frame(frame), &self.shared.metrics);
                Some(close::KICKED)
            }
            Ok(signin) => {
                let frame = w.signed_in(&signin);
                self.shared
                    .hub
                    .set_aliases(&self.handle, w.user_names(&signin.user));
                self.handle
                    .send(Outbound::Frame(frame), &self.shared.metrics);
                self.refused_streak = 0;
                None
            }
        }
    }

    /// Applies the broker's answer to a join or publish; returns a close code when the abuse
    /// limit is reached.
    fn apply(&mut self, answer: Answer) -> Option<u16> {
        match answer {
            Answer::Join {
                room,
                result: Ok(()),
                ..
            } => {
                self.joined.insert(room);
            }
            Answer::Join {
                id,
                result: Err(JoinError::AlreadyJoined),
                ..
            } => {
                return self.refuse(
                    id.as_ref(),
                    ErrorCode::BadRequest,
                    "already joined this room",
                )
            }
            Answer::Join {
                id,
                result: Err(JoinError::Full(max)),
                ..
            } => {
                let message = format!("the channel is full ({max} members)");
                return self.refuse(id.as_ref(), ErrorCode::TooManyRooms, &message);
            }
            Answer::Join {
                id,
                result: Err(JoinError::Broker(e)),
                ..
            }
            | Answer::Publish { id, result: Err(e) } => self.unavailable(id.as_ref(), &e),
            Answer::Publish {
                id,
                result: Ok(offset),
            } => {
                if id.is_some() {
                    self.reply(ServerMsg::Ack {
                        id: id.as_ref(),
                        offset,
                    });
                }
            }
        }
        None
    }

    /// Answers a request the broker could not serve: `unavailable`, not counted as abuse.
    /// The cause stays in the log: broker details are not the client's.
    fn unavailable(&mut self, id: Option<&RequestId>, e: &BrokerError) {
        warn!(error = %e, "request refused: broker unavailable");
        self.reply(ServerMsg::Error {
            id,
            code: ErrorCode::Unavailable,
            message: "the gateway cannot serve this right now; retry later",
        });
    }
}

/// The answer of the request waiting on the broker; pending forever when there is none (the
/// loop only polls it when there is).
async fn wait(waiting: &mut Option<Waiting>) -> Answer {
    match waiting {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

/// Polls the waiting request once: its answer when it is ready now.
async fn poll_once(waiting: &mut Option<Waiting>) -> Option<Answer> {
    let w = waiting.as_mut()?;
    std::future::poll_fn(|cx| match w.as_mut().poll(cx) {
        std::task::Poll::Ready(answer) => std::task::Poll::Ready(Some(answer)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// The refusal text for a request past the command bucket.
fn commands_exceeded(limits: &crate::config::LimitsConfig) -> String {
    format!("{} commands/s exceeded", limits.commands_per_second)
}

/// The close code for a read error, or `None` when the connection is simply gone.
fn read_error_code(e: &tungstenite::Error) -> Option<u16> {
    match e {
        tungstenite::Error::Capacity(_) => Some(close::TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(close::INVALID_UTF8),
        tungstenite::Error::Protocol(_) => Some(close::POLICY),
        _ => None,
    }
}

/// Writes `first` and whatever else is queued (up to [`MAX_BATCH`]), then flushes once.
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    wire: &Wire,
    first: Outbound,
    rx: &mut mpsc::Receiver<Outbound>,
    settled: &mut Vec<Arc<Publication>>,
    shared: &Shared,
) -> Result<(), WriteError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut item = Some(first);
    let mut count = 0u64;
    let mut bytes = 0u64;
    while let Some(it) = item {
        let framed = wire.frame(it);
        for msg in [framed.msg, framed.then].into_iter().flatten() {
            bytes += msg.len() as u64;
            ws.feed(msg).await.map_err(|_| WriteError::Socket)?;
            count += 1;
        }
        if let Some(p) = framed.live {
            settled.push(p);
        }
        if count as usize >= MAX_BATCH {
            break;
        }
        item = rx.try_recv().ok();
    }
    ws.flush().await.map_err(|_| WriteError::Socket)?;
    let metrics = &shared.metrics;
    metrics.messages_out.inc_by(count);
    metrics.bytes_out.inc_by(bytes);
    for p in settled.drain(..) {
        if p.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            metrics.fanout_done(p.accepted);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
