//! What travels on a room's pub/sub channel and in its stream, and the names of the keys and
//! channels. A publication's payload is a one-line header and the finished `message` frame,
//! put together by the publish script, so the frame is serialized once for the whole cluster
//! and every node forwards the same bytes:
//!
//! ```text
//! m <offset> <epoch> <origin>\n<frame>       origin: <node>:<session>, or "-" for the server's own
//! j <presence version> <user>                a user's first session anywhere
//! l <presence version> <user>                a user's last session anywhere left
//! ```
//!
//! Every key of a room shares the hash tag `{<prefix>:<room>}`, so Redis Cluster keeps a
//! room in one slot and its scripts may touch all of them; the node registry and the control
//! channels share `{<prefix>}`.

use std::sync::Arc;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::{NodeId, Origin};
use crate::protocol::{PresenceEvent, RoomName};

/// A decoded channel payload.
#[derive(Debug, PartialEq)]
pub enum Payload<'a> {
    Message {
        offset: u64,
        epoch: &'a str,
        origin: Option<Origin>,
        frame: Utf8Bytes,
    },
    Presence {
        event: PresenceEvent,
        version: u64,
        user: &'a str,
    },
}

/// `<node>:<session>`, or `-`: how the publish script records and announces an origin.
pub fn encode_origin(origin: Option<Origin>) -> String {
    match origin {
        Some(o) => format!("{}:{}", o.node, o.session),
        None => "-".into(),
    }
}

pub fn decode_origin(s: &[u8]) -> Option<Origin> {
    let s = std::str::from_utf8(s).ok()?;
    let (node, session) = s.split_once(':')?;
    Some(Origin {
        node: node.parse().ok()?,
        session: session.parse().ok()?,
    })
}

/// Decodes a room channel payload; `None` for anything else (it is ignored).
pub fn decode(payload: &Bytes) -> Option<Payload<'_>> {
    let text = payload.as_ref();
    let kind = *text.first()?;
    let rest = text.get(2..)?;
    match kind {
        b'm' => {
            let nl = rest.iter().position(|b| *b == b'\n')?;
            let header = std::str::from_utf8(&rest[..nl]).ok()?;
            let mut parts = header.split(' ');
            let offset = parts.next()?.parse().ok()?;
            let epoch = parts.next()?;
            let origin = decode_origin(parts.next()?.as_bytes());
            let start = 2 + nl + 1;
            let frame = Utf8Bytes::try_from(payload.slice(start..)).ok()?;
            Some(Payload::Message {
                offset,
                epoch,
                origin,
                frame,
            })
        }
        b'j' | b'l' => {
            let line = std::str::from_utf8(rest).ok()?;
            let (version, user) = line.split_once(' ')?;
            Some(Payload::Presence {
                event: if kind == b'j' {
                    PresenceEvent::Join
                } else {
                    PresenceEvent::Leave
                },
                version: version.parse().ok()?,
                user,
            })
        }
        _ => None,
    }
}

/// Key and channel names under one `cluster.key_prefix`.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    /// `{<prefix>:`: what a room channel starts with.
    room_start: String,
}

/// What a room channel ends with.
const CHANNEL_SUFFIX: &str = "}:ch";

/// The keys of one room.
pub struct RoomKeys {
    /// Hash: `epoch`, `offset` (the last one), `pv` (presence version).
    pub meta: String,
    /// Stream of the history: entry id `<offset>-0`, fields `f` (frame) and `o` (origin).
    pub stream: String,
    /// Hash: user → how many nodes have a session of that user in the room.
    pub users: String,
    /// Set of `<node>|<user>`: which node counted which user, so a node's leave (or the
    /// removal of a dead node) is applied once.
    pub contrib: String,
    pub channel: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            room_start: format!("{{{prefix}:"),
        }
    }

    pub fn room(&self, room: &RoomName) -> RoomKeys {
        let tag = format!("{}{}", self.room_start, room);
        RoomKeys {
            meta: format!("{tag}}}:meta"),
            stream: format!("{tag}}}:history"),
            users: format!("{tag}}}:users"),
            contrib: format!("{tag}}}:contrib"),
            channel: format!("{tag}{CHANNEL_SUFFIX}"),
        }
    }

    /// The room whose channel this is.
    pub fn room_of_channel(&self, channel: &[u8]) -> Option<RoomName> {
        let channel = std::str::from_utf8(channel).ok()?;
        let name = channel
            .strip_prefix(&self.room_start)?
            .strip_suffix(CHANNEL_SUFFIX)?;
        RoomName::from_stored(name).ok()
    }

    /// Hash: node id → its last heartbeat (Redis server time, ms).
    pub fn beats(&self) -> String {
        format!("{{{}}}:beats", self.prefix)
    }

    /// Set of `<room> <user>` this node counted in presence (for its removal once dead).
    pub fn node_presence(&self, node: NodeId) -> String {
        format!("{{{}}}:node:{node}:presence", self.prefix)
    }

    /// Claimed by the node removing a dead node, so one does it.
    pub fn reaper(&self, node: NodeId) -> String {
        format!("{{{}}}:reap:{node}", self.prefix)
    }

    /// Admin requests to every node.
    pub fn control(&self) -> String {
        format!("{{{}}}:ctl", self.prefix)
    }

    /// Answers to one node's admin requests.
    pub fn replies(&self, node: NodeId) -> String {
        format!("{{{}}}:reply:{node}", self.prefix)
    }
}

/// `<node>|<user>`: one node's share of a user's presence in a room.
pub fn contribution(node: NodeId, user: &str) -> String {
    format!("{node}|{user}")
}

/// `<room> <user>`: an entry of a node's presence set (room names have no spaces).
pub fn node_entry(room: &RoomName, user: &str) -> String {
    format!("{room} {user}")
}

pub fn parse_node_entry(entry: &str) -> Option<(RoomName, Arc<str>)> {
    let (room, user) = entry.split_once(' ')?;
    Some((RoomName::from_stored(room).ok()?, Arc::from(user)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_payload_decodes_to_its_header_and_the_frame_bytes() {
        let frame =
            r#"{"type":"message","room":"r","from":"a b","data":"x\ny","epoch":"e1","offset":7}"#;
        let payload = Bytes::from(format!("m 7 e1 42:9\n{frame}"));
        let Some(Payload::Message {
            offset,
            epoch,
            origin,
            frame: got,
        }) = decode(&payload)
        else {
            panic!("not a message")
        };
        assert_eq!((offset, epoch), (7, "e1"));
        assert_eq!(
            origin,
            Some(Origin {
                node: 42,
                session: 9
            })
        );
        assert_eq!(got.as_str(), frame);
        let server = Bytes::from(format!("m 8 e1 -\n{frame}"));
        assert!(matches!(
            decode(&server),
            Some(Payload::Message { origin: None, .. })
        ));
    }

    #[test]
    fn presence_payloads_carry_the_version_and_the_whole_user() {
        let p = Bytes::from_static(b"j 12 carol smith");
        assert_eq!(
            decode(&p),
            Some(Payload::Presence {
                event: PresenceEvent::Join,
                version: 12,
                user: "carol smith"
            })
        );
        let p = Bytes::from_static(b"l 13 carol");
        assert!(matches!(
            decode(&p),
            Some(Payload::Presence {
                event: PresenceEvent::Leave,
                ..
            })
        ));
    }

    #[test]
    fn garbage_is_ignored() {
        for bad in [
            &b""[..],
            b"m",
            b"m x e -\n{}",
            b"m 1 e -",
            b"j x carol",
            b"q 1 2",
            b"m 1 e -\n\xff",
        ] {
            assert_eq!(decode(&Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn room_keys_share_one_hash_tag_and_channels_map_back_to_rooms() {
        let names = Names::new("wsgate");
        let room = RoomName::parse("team:42:chat").unwrap();
        let k = names.room(&room);
        for key in [&k.meta, &k.stream, &k.users, &k.contrib, &k.channel] {
            assert!(key.starts_with("{wsgate:team:42:chat}:"), "{key}");
        }
        assert_eq!(names.room_of_channel(k.channel.as_bytes()), Some(room));
        assert_eq!(names.room_of_channel(b"{other:team}:ch"), None);
        assert_eq!(names.room_of_channel(names.control().as_bytes()), None);
        assert!(names.beats().starts_with("{wsgate}"));
        let entry = node_entry(&RoomName::parse("r").unwrap(), "carol smith");
        let (r, u) = parse_node_entry(&entry).unwrap();
        assert_eq!((r.as_str(), &*u), ("r", "carol smith"));
    }
}
