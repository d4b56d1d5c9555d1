//! Pusher protocol 7 frames: `{"event":…,"channel":…,"data":…}`.
//!
//! Inbound, [`PusherWire::decode`] turns a client event into what it means for the session —
//! a join (`pusher:subscribe`, once its auth checks out), a leave (`pusher:unsubscribe`), a
//! publish (`client-*`) — or into a direct answer (`pusher:pong`). The session then applies
//! the same rules as to a native request: command and message buckets, room limits, refusal
//! streaks, flooding.
//!
//! Outbound, the same [`PusherWire`] frames what the session and the hub produce: replies
//! (`subscription_succeeded`, `subscription_error`, `pusher:error`) and publications. A
//! publication's Pusher frame is built from its stored message once, by the first recipient
//! that writes it, and shared by the others ([`PusherWire::publication`]).
//!
//! A request made from a Pusher event carries a [`Tag`] as its request id, so that its reply,
//! which may come later from the broker, can name its channel.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::Publication;
use crate::hub::{JoinTerms, JoinedRoom, PresenceNotice, Replay};
use crate::protocol::{
    to_json, ClientMsg, ErrorCode, PresenceEvent, RequestId, RoomName, ServerMsg,
};
use crate::pusher::channel::{channel_of, is_cache, Channel, ChannelKind};
use crate::pusher::{sign, PusherApp};
use crate::sanitize::{json_depth, sanitize_value, MAX_DEPTH};

/// Largest `data` of a client event, serialized (Pusher's limit).
pub const MAX_EVENT_DATA_BYTES: usize = 10 * 1024;

/// Pusher's error codes this gateway sends.
pub mod code {
    /// Unknown app key.
    pub const APP_UNKNOWN: u16 = 4001;
    /// Missing or unsupported `protocol` parameter.
    pub const PROTOCOL: u16 = 4007;
    /// Not allowed (client events where they are not, a terminated or kicked connection).
    pub const UNAUTHORIZED: u16 = 4009;
    /// Too slow to read its messages.
    pub const SLOW: u16 = 4100;
    /// Server shutting down: reconnect.
    pub const GOING_AWAY: u16 = 4200;
    /// Idle: reconnect.
    pub const IDLE: u16 = 4201;
    /// Over a rate limit.
    pub const RATE_LIMITED: u16 = 4301;
}

/// The Pusher close code for one of the gateway's (CONTRACT §6 → §10).
pub fn close_code(native: u16) -> u16 {
    use crate::protocol::close;
    match native {
        close::GOING_AWAY | close::RECONNECT | close::INTERNAL => code::GOING_AWAY,
        close::IDLE => code::IDLE,
        close::SLOW => code::SLOW,
        close::POLICY => code::RATE_LIMITED,
        close::KICKED => code::UNAUTHORIZED,
        other => other,
    }
}

/// What a request made from a Pusher event was, carried as its request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Subscribe,
    Unsubscribe,
    ClientEvent,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
            Op::ClientEvent => "client_event",
        }
    }
}

/// A request id naming the Pusher operation and its channel.
struct Tag;

impl Tag {
    fn make(op: Op, channel: &str) -> RequestId {
        json!({ "op": op.as_str(), "channel": channel })
    }

    fn read(id: Option<&RequestId>) -> Option<(Op, &str)> {
        let id = id?;
        let op = match id.get("op")?.as_str()? {
            "subscribe" => Op::Subscribe,
            "unsubscribe" => Op::Unsubscribe,
            "client_event" => Op::ClientEvent,
            _ => return None,
        };
        Some((op, id.get("channel")?.as_str()?))
    }
}

/// What a client event means for the session.
#[derive(Debug)]
pub enum Decoded {
    /// A request the session handles as it would a native one.
    Command(ClientMsg),
    /// Answered at once, free of any bucket (`pusher:pong`).
    Reply(Utf8Bytes),
    /// Refused before it became a request: answered (and counted) like a refused request.
    Refuse {
        id: Option<RequestId>,
        code: ErrorCode,
        message: &'static str,
    },
    /// Nothing to do (an event this gateway does not act on).
    Ignore,
    /// `pusher:signin`: the user its signature vouches for, or why it was refused (a refused
    /// sign-in closes the socket, as with Pusher).
    SignIn(Result<SignIn, &'static str>),
}

/// A checked `pusher:signin`: the user the app's signature vouches for.
#[derive(Debug)]
pub struct SignIn {
    pub user: Arc<str>,
    /// The `user_data` string the app signed, returned in `pusher:signin_success`.
    user_data: String,
}

/// `pusher:signin`'s data.
#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// The fields of `user_data` the gateway reads.
#[derive(Deserialize)]
struct UserData {
    id: Value,
}

/// The user a signed `user_data` names: its `id`, a non-empty string (what pusher-js
/// requires) that makes a valid `#server-to-user-<id>` channel name.
fn signin_user(user_data: &str) -> Option<Arc<str>> {
    let data: UserData = serde_json::from_str(user_data).ok()?;
    let Value::String(id) = data.id else {
        return None;
    };
    let channel = Channel::parse(&format!("{SERVER_TO_USER}{id}")).ok()?;
    (channel.kind == ChannelKind::ServerToUser).then(|| Arc::from(id))
}

/// The prefix of a signed-in user's own channel.
const SERVER_TO_USER: &str = "#server-to-user-";

/// The client's frame.
#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// `pusher:subscribe`'s data.
#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

/// A presence channel's `channel_data`, as signed by the app's auth endpoint.
#[derive(Deserialize)]
struct ChannelData {
    user_id: Value,
    #[serde(default)]
    user_info: Option<Value>,
}

/// Longest presence `user_id`.
const MAX_USER_ID_CHARS: usize = 128;

/// A presence member as the hub counts it: `<user id>\n<user_info JSON>`. The id is the
/// `user_id` as text, so `1` and `"1"` are one user; the info travels with it, so every node
/// can tell every member who arrived.
pub fn member_key(data: &str) -> Option<Arc<str>> {
    let parsed: ChannelData = serde_json::from_str(data).ok()?;
    let id = match &parsed.user_id {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if id.is_empty() || id.chars().count() > MAX_USER_ID_CHARS || id.chars().any(char::is_control) {
        return None;
    }
    let mut info = parsed.user_info.unwrap_or(Value::Null);
    sanitize_value(&mut info);
    Some(Arc::from(format!("{id}\n{}", to_json(&info).ok()?)))
}

/// A member key's `user_id` as Pusher clients get it (a number when it is one: Laravel's ids
/// are) and its `user_info`.
fn member_parts(key: &str) -> (Value, Value) {
    let (id, info) = key.split_once('\n').unwrap_or((key, "null"));
    let numeric = !id.is_empty()
        && id.len() <= 15
        && id.bytes().all(|b| b.is_ascii_digit())
        && (id == "0" || !id.starts_with('0'));
    let id_value = match id.parse::<u64>() {
        Ok(n) if numeric => Value::from(n),
        _ => Value::String(id.to_string()),
    };
    (id_value, serde_json::from_str(info).unwrap_or(Value::Null))
}

/// A member key's `user_id` as Pusher clients get it (the HTTP API's users list).
pub fn member_id(key: &str) -> Value {
    member_parts(key).0
}

/// `pusher:unsubscribe`'s data.
#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

/// One socket's side of the Pusher protocol: its app and `socket_id`.
#[derive(Debug, Clone)]
pub struct PusherWire {
    pub app: Arc<PusherApp>,
    pub socket_id: Arc<str>,
    /// The member key this socket subscribed to each presence channel under.
    presence: Vec<(String, Arc<str>)>,
    /// The user this socket signed in as (`pusher:signin`).
    user: Option<Arc<str>>,
}

impl PusherWire {
    pub fn new(app: Arc<PusherApp>, socket_id: Arc<str>) -> Self {
        PusherWire {
            app,
            socket_id,
            presence: Vec::new(),
            user: None,
        }
    }

    /// Records a sign-in the session accepted; returns `pusher:signin_success`.
    pub fn signed_in(&mut self, signin: &SignIn) -> Utf8Bytes {
        self.user = Some(signin.user.clone());
        let data = json!({ "user_data": signin.user_data });
        event_frame("pusher:signin_success", None, &data.to_string())
    }

    /// The `pusher:error` that goes before the close of a refused sign-in.
    pub fn signin_refused(&self, message: &str) -> Utf8Bytes {
        pusher_error(Some(code::UNAUTHORIZED), message)
    }

    /// The names a socket signed in as `user` answers to for disconnects: the user's id (the
    /// admin API's `/api/disconnect`) and the id within this app (the HTTP API's
    /// `terminate_connections`).
    pub fn user_names(&self, user: &Arc<str>) -> Vec<Arc<str>> {
        vec![
            user.clone(),
            Arc::from(crate::pusher::user_name(&self.app.id, user)),
        ]
    }

    /// Who this socket is in `room` when that is a presence channel it subscribed to.
    pub fn member_of(&self, room: &RoomName) -> Option<Arc<str>> {
        let channel = channel_of(room, &self.app.id)?;
        self.presence
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, key)| key.clone())
    }

    /// `pusher:connection_established`: the first frame of every socket.
    pub fn connection_established(&self) -> Utf8Bytes {
        let data = json!({
            "socket_id": &*self.socket_id,
            "activity_timeout": self.app.activity_timeout.as_secs(),
        });
        event_frame("pusher:connection_established", None, &data.to_string())
    }

    /// Decodes one client text frame. Size, UTF-8 and binary frames were checked before.
    pub fn decode(&mut self, text: &str) -> Decoded {
        let bad = |message| Decoded::Refuse {
            id: None,
            code: ErrorCode::BadRequest,
            message,
        };
        if json_depth(text, MAX_DEPTH + 2) > MAX_DEPTH + 1 {
            return bad("nested too deep");
        }
        let Ok(msg) = serde_json::from_str::<Inbound<'_>>(text) else {
            return bad("not a Pusher event");
        };
        match &*msg.event {
            "pusher:ping" => Decoded::Reply(Utf8Bytes::from_static(
                r#"{"event":"pusher:pong","data":"{}"}"#,
            )),
            "pusher:pong" => Decoded::Ignore,
            "pusher:subscribe" => self.subscribe(msg.data),
            "pusher:signin" => Decoded::SignIn(self.signin(msg.data)),
            "pusher:unsubscribe" => {
                let Some(data) = msg.data.and_then(parse_data::<UnsubscribeData>) else {
                    return bad("pusher:unsubscribe needs data.channel");
                };
                let Ok(channel) = Channel::parse(&data.channel) else {
                    return Decoded::Ignore;
                };
                self.presence.retain(|(c, _)| *c != channel.name);
                Decoded::Command(ClientMsg::Leave {
                    room: channel.room(&self.app.id),
                    id: Some(Tag::make(Op::Unsubscribe, &channel.name)),
                })
            }
            event if event.starts_with("client-") => {
                self.client_event(event, msg.channel.as_deref(), msg.data)
            }
            _ => Decoded::Ignore,
        }
    }

    fn subscribe(&mut self, data: Option<&RawValue>) -> Decoded {
        let Some(data) = data.and_then(parse_data::<SubscribeData>) else {
            return Decoded::Refuse {
                id: None,
                code: ErrorCode::BadRequest,
                message: "pusher:subscribe needs data.channel",
            };
        };
        let id = Some(Tag::make(Op::Subscribe, &data.channel));
        let refuse = |code, message| Decoded::Refuse {
            id: id.clone(),
            code,
            message,
        };
        let channel = match Channel::parse(&data.channel) {
            Ok(c) => c,
            Err(_) => return refuse(ErrorCode::BadRequest, "invalid channel name"),
        };
        match channel.kind {
            ChannelKind::Public | ChannelKind::Cache => {}
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                // Signed over channel_data too when the client sends one (an SDK asked for
                // a private channel's auth with user data does).
                let ok = data.auth.as_deref().is_some_and(|auth| {
                    sign::channel_auth_ok(
                        &self.app,
                        auth,
                        &self.socket_id,
                        &channel.name,
                        data.channel_data.as_deref(),
                    )
                });
                if !ok {
                    return refuse(ErrorCode::Forbidden, "invalid or missing auth signature");
                }
            }
            ChannelKind::Presence => {
                let (Some(auth), Some(channel_data)) = (&data.auth, &data.channel_data) else {
                    return refuse(
                        ErrorCode::Forbidden,
                        "presence channels need auth and channel_data",
                    );
                };
                let signed = sign::channel_auth_ok(
                    &self.app,
                    auth,
                    &self.socket_id,
                    &channel.name,
                    Some(channel_data),
                );
                if !signed {
                    return refuse(ErrorCode::Forbidden, "invalid auth signature");
                }
                let Some(key) = member_key(channel_data) else {
                    return refuse(
                        ErrorCode::BadRequest,
                        "channel_data needs a user_id (a string or a number)",
                    );
                };
                self.presence.retain(|(c, _)| *c != channel.name);
                self.presence.push((channel.name.clone(), key));
            }
            ChannelKind::ServerToUser => {
                let own = channel.name.strip_prefix(SERVER_TO_USER);
                if own.is_none() || own != self.user.as_deref() {
                    return refuse(
                        ErrorCode::Forbidden,
                        "only a connection signed in as this user may subscribe",
                    );
                }
            }
        }
        Decoded::Command(ClientMsg::Join {
            room: channel.room(&self.app.id),
            since: None,
            id,
        })
    }

    fn signin(&self, data: Option<&RawValue>) -> Result<SignIn, &'static str> {
        let data = data
            .and_then(parse_data::<SigninData>)
            .ok_or("pusher:signin needs data.auth and data.user_data")?;
        if !sign::user_auth_ok(&self.app, &data.auth, &self.socket_id, &data.user_data) {
            return Err("invalid signin signature");
        }
        let user = signin_user(&data.user_data)
            .ok_or("user_data needs an id: a string of channel-name characters")?;
        if self.user.as_ref().is_some_and(|u| *u != user) {
            return Err("this connection is signed in as another user");
        }
        Ok(SignIn {
            user,
            user_data: data.user_data,
        })
    }

    fn client_event(&self, event: &str, channel: Option<&str>, data: Option<&RawValue>) -> Decoded {
        let channel = channel.unwrap_or_default();
        let id = Some(Tag::make(Op::ClientEvent, channel));
        let refuse = |code, message| Decoded::Refuse {
            id: id.clone(),
            code,
            message,
        };
        let Ok(parsed) = Channel::parse(channel) else {
            return refuse(
                ErrorCode::NotJoined,
                "client events need a subscribed channel",
            );
        };
        let allowed = matches!(parsed.kind, ChannelKind::Private | ChannelKind::Presence);
        if !allowed || !self.app.client_events {
            return refuse(
                ErrorCode::Forbidden,
                "client events are only allowed on private and presence channels",
            );
        }
        let raw = data.map_or("null", RawValue::get);
        if raw.len() > MAX_EVENT_DATA_BYTES {
            return refuse(ErrorCode::BadRequest, "client event data over 10 KB");
        }
        let Ok(mut value) = serde_json::from_str::<Value>(raw) else {
            return refuse(ErrorCode::BadRequest, "client event data is not JSON");
        };
        sanitize_value(&mut value);
        let mut event = event.to_string();
        if let std::borrow::Cow::Owned(clean) = crate::sanitize::clean_str(&event) {
            event = clean;
        }
        let room = parsed.room(&self.app.id);
        let mut data = json!({ "event": event, "data": value });
        if parsed.kind == ChannelKind::Presence {
            if let Some(key) = self.member_of(&room) {
                data["user_id"] = member_parts(&key).0;
            }
        }
        Decoded::Command(ClientMsg::Publish { room, data, id })
    }

    /// The Pusher frame for a reply of the session, or `None` when Pusher has no answer for
    /// it (`left`, `ack`).
    pub fn reply(&self, msg: &ServerMsg<'_>) -> Option<Utf8Bytes> {
        match msg {
            ServerMsg::Error { id, code, message } => Some(self.error(*id, *code, message)),
            _ => None,
        }
    }

    fn error(&self, id: Option<&RequestId>, code: ErrorCode, message: &str) -> Utf8Bytes {
        match (Tag::read(id), code) {
            (_, ErrorCode::RateLimited) => pusher_error(Some(code::RATE_LIMITED), message),
            (Some((Op::Subscribe, channel)), _) => {
                let (kind, status) = match code {
                    ErrorCode::TooManyRooms => ("LimitReached", 403),
                    ErrorCode::Unavailable | ErrorCode::Internal => ("ServerError", 503),
                    _ => ("AuthError", 401),
                };
                let data = json!({ "type": kind, "error": message, "status": status });
                event_frame(
                    "pusher:subscription_error",
                    Some(channel),
                    &data.to_string(),
                )
            }
            (Some((Op::ClientEvent, _)), ErrorCode::Unavailable) => pusher_error(None, message),
            (Some((Op::ClientEvent, _)), _) => pusher_error(Some(code::UNAUTHORIZED), message),
            _ => pusher_error(None, message),
        }
    }

    /// How this socket joins `room`: on a presence channel as the member its channel auth
    /// named (`user` elsewhere) under the app's `max_presence_members`; on a cache channel
    /// with its last event replayed.
    pub fn join_terms(&self, room: &RoomName, user: &Arc<str>) -> JoinTerms {
        let channel = channel_of(room, &self.app.id).unwrap_or_default();
        let member = self.member_of(room);
        JoinTerms {
            max_users: member.as_ref().map(|_| self.app.max_presence_members),
            user: member.unwrap_or_else(|| user.clone()),
            replay: if is_cache(channel) {
                Replay::Last
            } else {
                Replay::Since(None)
            },
        }
    }

    /// `pusher_internal:subscription_succeeded` for a room this socket joined (on a presence
    /// channel with its members: `ids`, `hash`, `count`), and on a cache channel with nothing
    /// to replay, `pusher:cache_miss` after it.
    pub fn joined(&self, joined: &JoinedRoom) -> (Option<Utf8Bytes>, Option<Utf8Bytes>) {
        let Some(channel) = channel_of(&joined.room, &self.app.id) else {
            return (None, None);
        };
        let miss = (is_cache(channel) && joined.replayed == 0)
            .then(|| event_frame("pusher:cache_miss", Some(channel), "{}"));
        (Some(self.subscription_succeeded(channel, joined)), miss)
    }

    fn subscription_succeeded(&self, channel: &str, joined: &JoinedRoom) -> Utf8Bytes {
        let data = if is_presence(channel) {
            let mut ids = Vec::with_capacity(joined.members.len());
            let mut hash = serde_json::Map::with_capacity(joined.members.len());
            for key in &joined.members {
                let (id, info) = member_parts(key);
                let name = match &id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                hash.insert(name, info);
                ids.push(id);
            }
            let count = joined.members_total.unwrap_or(joined.members.len());
            json!({ "presence": { "ids": ids, "hash": hash, "count": count } }).to_string()
        } else {
            "{}".to_string()
        };
        event_frame(
            "pusher_internal:subscription_succeeded",
            Some(channel),
            &data,
        )
    }

    /// `pusher_internal:member_added` / `member_removed` on presence channels; nothing on
    /// the others (the hub counts their sockets, Pusher shows no one).
    pub fn presence(&self, notice: &PresenceNotice) -> Option<Utf8Bytes> {
        let channel = channel_of(&notice.room, &self.app.id)?;
        if !is_presence(channel) {
            return None;
        }
        let (id, info) = member_parts(&notice.change.user);
        let (event, data) = match notice.change.event {
            PresenceEvent::Join => (
                "pusher_internal:member_added",
                json!({ "user_id": id, "user_info": info }),
            ),
            PresenceEvent::Leave => ("pusher_internal:member_removed", json!({ "user_id": id })),
        };
        Some(event_frame(event, Some(channel), &data.to_string()))
    }

    /// A publication of one of this app's channels, framed once and shared.
    pub fn publication(&self, p: &Publication) -> Utf8Bytes {
        p.wire_frame
            .get_or_init(|| publication_frame(&p.frame).unwrap_or_default())
            .clone()
    }
}

/// `{"event":…,"channel":…,"data":…}` from a stored `message` frame whose `data` is
/// `{"event":E,"data":D}`: D goes out as it came (a string from the HTTP API, JSON from a
/// client event).
fn publication_frame(stored: &str) -> Option<Utf8Bytes> {
    #[derive(Deserialize)]
    struct Stored<'a> {
        room: &'a str,
        #[serde(borrow)]
        data: Payload<'a>,
    }
    #[derive(Deserialize)]
    struct Payload<'a> {
        event: String,
        #[serde(borrow)]
        data: &'a RawValue,
        #[serde(default, borrow)]
        user_id: Option<&'a RawValue>,
    }
    let s: Stored<'_> = serde_json::from_str(stored).ok()?;
    let (_, channel) = crate::pusher::channel::split_room(s.room)?;
    let mut out = String::with_capacity(stored.len());
    out.push_str(r#"{"event":"#);
    out.push_str(&to_json(&s.data.event).ok()?);
    out.push_str(r#","channel":"#);
    out.push_str(&to_json(channel).ok()?);
    out.push_str(r#","data":"#);
    out.push_str(s.data.data.get());
    if let Some(user) = s.data.user_id {
        out.push_str(r#","user_id":"#);
        out.push_str(user.get());
    }
    out.push('}');
    Some(Utf8Bytes::from(out))
}

fn is_presence(channel: &str) -> bool {
    channel.starts_with("presence-")
}

fn parse_data<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Option<T> {
    // pusher-js sends data as an object; some clients send it JSON-encoded in a string.
    if let Ok(v) = serde_json::from_str::<T>(raw.get()) {
        return Some(v);
    }
    let inner: String = serde_json::from_str(raw.get()).ok()?;
    serde_json::from_str(&inner).ok()
}

/// An event frame with `data` given as the JSON-encoded string Pusher expects.
pub fn event_frame(event: &str, channel: Option<&str>, data: &str) -> Utf8Bytes {
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        data: &'a str,
    }
    Utf8Bytes::from(
        to_json(&Frame {
            event,
            channel,
            data,
        })
        .unwrap_or_default(),
    )
}

/// `pusher:error` with a Pusher code (or `null`).
pub fn pusher_error(code: Option<u16>, message: &str) -> Utf8Bytes {
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        event: &'static str,
        data: Data<'a>,
    }
    #[derive(serde::Serialize)]
    struct Data<'a> {
        code: Option<u16>,
        message: &'a str,
    }
    Utf8Bytes::from(
        to_json(&Frame {
            event: "pusher:error",
            data: Data { code, message },
        })
        .unwrap_or_default(),
    )
}
