//! Wire types of CONTRACT §4 and the close codes of §6. Serde only: checking happens in
//! [`crate::sanitize`], which is the only producer of [`ClientMsg`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Close codes the gateway sends (CONTRACT §6).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_UTF8: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// Cluster mode: this node missed messages of a room it can no longer replay.
    pub const RECONNECT: u16 = 1012;
    pub const SLOW: u16 = 1013;
    pub const IDLE: u16 = 4000;
    pub const EXPIRED: u16 = 4001;
    pub const KICKED: u16 = 4003;

    /// Every code the gateway may send, for metrics labels.
    pub const ALL: [u16; 12] = [
        NORMAL,
        GOING_AWAY,
        UNSUPPORTED,
        INVALID_UTF8,
        POLICY,
        TOO_BIG,
        INTERNAL,
        RECONNECT,
        SLOW,
        IDLE,
        EXPIRED,
        KICKED,
    ];

    /// The reason text sent with a close code.
    pub fn reason(code: u16) -> &'static str {
        match code {
            NORMAL => "bye",
            GOING_AWAY => "server shutting down",
            UNSUPPORTED => "binary frames are not accepted",
            INVALID_UTF8 => "invalid UTF-8",
            POLICY => "policy violation",
            TOO_BIG => "message too big",
            RECONNECT => "missed messages: reconnect and recover",
            SLOW => "too slow to read messages",
            IDLE => "idle timeout",
            EXPIRED => "token expired",
            KICKED => "disconnected by the server",
            _ => "internal error",
        }
    }
}

/// Longest accepted string `id`.
pub const MAX_ID_BYTES: usize = 64;

/// A checked room name: 1–64 characters of `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    pub fn parse(s: &str) -> Result<RoomName, &'static str> {
        if s.is_empty() || s.len() > 64 {
            return Err("room names are 1 to 64 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        {
            return Err("room names use only A-Z a-z 0-9 _ . : -");
        }
        Ok(RoomName(Arc::from(s)))
    }

    /// A room no native client can name: the rooms of other wire protocols (their names
    /// start with a character the native rules refuse, such as `#`). Only code that builds
    /// such names from checked parts calls this.
    pub fn internal(s: &str) -> RoomName {
        RoomName(Arc::from(s))
    }

    /// A room name as stored by a broker (in Redis keys and messages): a native name or an
    /// internal one (starting with `#`, no spaces or control characters).
    pub fn from_stored(s: &str) -> Result<RoomName, &'static str> {
        if s.starts_with('#') {
            if s.len() > 512 || s.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err("bad internal room name");
            }
            return Ok(RoomName::internal(s));
        }
        RoomName::parse(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RoomName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A client's request id: a number or a short string, echoed in the reply.
pub type RequestId = Value;

/// A recovery position: the last message a client has seen in a room.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

/// A checked client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Join {
        room: RoomName,
        since: Option<Since>,
        id: Option<RequestId>,
    },
    Leave {
        room: RoomName,
        id: Option<RequestId>,
    },
    Publish {
        room: RoomName,
        /// Sanitized: no forbidden characters, depth checked.
        data: Value,
        id: Option<RequestId>,
    },
    Refresh {
        token: String,
        id: Option<RequestId>,
    },
}

/// Error codes of CONTRACT §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    NotJoined,
    RateLimited,
    TooManyRooms,
    TokenInvalid,
    /// Cluster mode: the shared state (Redis) is out of reach; retry later.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether this refusal counts toward the "10 in a row" abuse limit (CONTRACT §4, §5):
    /// an invalid `refresh` too, since each one costs a signature check.
    pub fn counts_as_abuse(&self) -> bool {
        matches!(
            self,
            ErrorCode::BadRequest
                | ErrorCode::Forbidden
                | ErrorCode::NotJoined
                | ErrorCode::TokenInvalid
        )
    }
}

/// Messages the server sends. Serialized with [`ServerMsg::to_text`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    Welcome {
        user: &'a str,
        session: &'a str,
        expires_at: u64,
    },
    Joined {
        room: &'a str,
        epoch: &'a str,
        offset: u64,
        recovered: bool,
        members: &'a [Arc<str>],
        /// Present when `members` was cut at `rooms.presence_limit`: the room's distinct users.
        #[serde(skip_serializing_if = "Option::is_none")]
        members_total: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Left {
        room: &'a str,
        /// Why the server made the session leave (`forbidden`: a refreshed token no longer
        /// allows the room); absent when the client asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Presence {
        room: &'a str,
        event: PresenceEvent,
        user: &'a str,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        offset: u64,
    },
    Refreshed {
        expires_at: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        code: ErrorCode,
        message: &'a str,
    },
}

/// A `message` frame before the broker gives it its place in the room's stream: every field
/// but `epoch` and `offset`, which come last so the frame is finished by appending them — in
/// this process on one node, in the Redis script that assigns the offset in a cluster. Either
/// way the message is serialized once.
#[derive(Debug, Clone)]
pub struct MessageDraft {
    /// `{"type":"message",...,"ts":N,"epoch":"`
    head: String,
}

impl MessageDraft {
    pub fn new(room: &RoomName, from: &str, data: &Value, ts: u64) -> MessageDraft {
        #[derive(Serialize)]
        struct Head<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            room: &'a str,
            from: &'a str,
            data: &'a Value,
            ts: u64,
        }
        let head = Head {
            kind: "message",
            room: room.as_str(),
            from,
            data,
            ts,
        };
        // Serializing a `Value` with string keys cannot fail; the fallback is never taken.
        let mut head = to_json(&head).unwrap_or_else(|_| r#"{"type":"message"}"#.to_string());
        head.pop(); // the closing brace
        head.push_str(r#","epoch":""#);
        MessageDraft { head }
    }

    /// The frame up to the epoch's value.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// The whole frame. `epoch` is one of the broker's own (hex digits: nothing to escape).
    pub fn finish(&self, epoch: &str, offset: u64) -> String {
        let mut frame = String::with_capacity(self.head.len() + epoch.len() + 32);
        frame.push_str(&self.head);
        frame.push_str(epoch);
        frame.push_str(r#"","offset":"#);
        frame.push_str(itoa::Buffer::new().format(offset));
        frame.push('}');
        frame
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Leave,
}

impl ServerMsg<'_> {
    /// The JSON text of this message. Serializing these types cannot fail (string keys,
    /// no maps with non-string keys), so the fallback is never taken.
    pub fn to_text(&self) -> String {
        to_json(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_string()
        })
    }
}

/// Compact JSON with every number as short as its sender wrote it.
///
/// serde_json (with `arbitrary_precision`) keeps each number's text as parsed, so `1e15` is
/// not re-written as `1000000000000000.0`; its parser only spells every exponent with a sign
/// (`1e15` → `1e+15`), and that `+` is dropped again here. Relayed `data` is then never
/// longer than the client sent it.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    struct ShortNumbers;
    impl serde_json::ser::Formatter for ShortNumbers {
        fn write_number_str<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            value: &str,
        ) -> std::io::Result<()> {
            match value.split_once("e+") {
                Some((mantissa, exponent)) => {
                    writer.write_all(mantissa.as_bytes())?;
                    writer.write_all(b"e")?;
                    writer.write_all(exponent.as_bytes())
                }
                None => writer.write_all(value.as_bytes()),
            }
        }
    }
    let mut out = Vec::with_capacity(128);
    value.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out,
        ShortNumbers,
    ))?;
    // serde_json writes UTF-8 only; the check is one pass over the frame, once per message.
    String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.utf8_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_contract() {
        assert!(RoomName::parse("lobby").is_ok());
        assert!(RoomName::parse("team:42:chat-1_a.b").is_ok());
        assert!(RoomName::parse(&"a".repeat(64)).is_ok());
        assert!(RoomName::parse(&"a".repeat(65)).is_err());
        assert!(RoomName::parse("").is_err());
        assert!(RoomName::parse("with space").is_err());
        assert!(RoomName::parse("émoji").is_err());
    }

    #[test]
    fn a_message_draft_finishes_into_the_documented_frame() {
        let room = RoomName::parse("lobby").unwrap();
        let data = serde_json::json!({"text": "hi"});
        let frame = MessageDraft::new(&room, "bob", &data, 1767225000123).finish("a1b2", 58);
        let v: Value = serde_json::from_str(&frame).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"type":"message","room":"lobby","from":"bob","data":{"text":"hi"},
                "epoch":"a1b2","offset":58,"ts":1767225000123u64})
        );
    }

    #[test]
    fn server_messages_serialize_as_documented() {
        let id = Value::from(4);
        assert_eq!(
            ServerMsg::Ack {
                id: Some(&id),
                offset: 58
            }
            .to_text(),
            r#"{"type":"ack","id":4,"offset":58}"#
        );
        assert_eq!(
            ServerMsg::Error {
                id: None,
                code: ErrorCode::RateLimited,
                message: "slow down"
            }
            .to_text(),
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
        );
        assert_eq!(
            ServerMsg::Presence {
                room: "lobby",
                event: PresenceEvent::Leave,
                user: "carol"
            }
            .to_text(),
            r#"{"type":"presence","room":"lobby","event":"leave","user":"carol"}"#
        );
    }
}
