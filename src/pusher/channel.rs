//! Pusher channel names (≤ 164 characters of `[A-Za-z0-9_\-=@,.;]`, or `#server-to-user-…`)
//! and the hub rooms that carry them: `#pusher/<app id>/<channel>`.

use crate::protocol::RoomName;

/// Longest channel name Pusher accepts.
pub const MAX_CHANNEL_CHARS: usize = 164;

/// Prefix of every room that carries a Pusher channel. `#` and `/` are outside the native
/// room-name characters: no native client can join one.
pub const ROOM_PREFIX: &str = "#pusher/";

/// What a channel's prefix makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    /// `private-encrypted-`: relayed as is (the payload is encrypted end to end).
    PrivateEncrypted,
    Presence,
    /// `cache-` (and `private-cache-`, `presence-cache-` count as their base kind).
    Cache,
    /// `#server-to-user-<id>`: events for one signed-in user.
    ServerToUser,
}

impl ChannelKind {
    /// Whether subscribing needs an `auth` signature.
    pub fn needs_auth(self) -> bool {
        matches!(
            self,
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }
}

/// A checked channel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
}

impl Channel {
    pub fn parse(name: &str) -> Result<Channel, &'static str> {
        if name.is_empty() || name.len() > MAX_CHANNEL_CHARS {
            return Err("channel names are 1 to 164 characters");
        }
        if let Some(user) = name.strip_prefix("#server-to-user-") {
            if user.is_empty() || !user.bytes().all(channel_byte) {
                return Err("invalid user channel");
            }
            return Ok(Channel {
                name: name.to_string(),
                kind: ChannelKind::ServerToUser,
            });
        }
        if !name.bytes().all(channel_byte) {
            return Err("channel names use only A-Z a-z 0-9 _ - = @ , . ;");
        }
        let kind = if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else if name.starts_with("cache-") {
            ChannelKind::Cache
        } else {
            ChannelKind::Public
        };
        Ok(Channel {
            name: name.to_string(),
            kind,
        })
    }

    /// The hub room of this channel in app `app`.
    pub fn room(&self, app: &str) -> RoomName {
        RoomName::internal(&format!("{ROOM_PREFIX}{app}/{}", self.name))
    }
}

/// Whether a channel keeps its last event for new subscribers: `cache-`, `private-cache-`,
/// `private-encrypted-cache-` and `presence-cache-` channels.
pub fn is_cache(channel: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|prefix| channel.starts_with(prefix))
}

fn channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

/// The channel a room of app `app` carries, or `None` when the room is not one of its.
pub fn channel_of<'r>(room: &'r RoomName, app: &str) -> Option<&'r str> {
    room.as_str()
        .strip_prefix(ROOM_PREFIX)?
        .strip_prefix(app)?
        .strip_prefix('/')
}

/// The app and channel of any Pusher room.
pub fn split_room(room: &str) -> Option<(&str, &str)> {
    room.strip_prefix(ROOM_PREFIX)?.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_kinds_follow_their_prefix() {
        let kind = |n: &str| Channel::parse(n).map(|c| c.kind);
        assert_eq!(kind("chat"), Ok(ChannelKind::Public));
        assert_eq!(kind("private-chat.1"), Ok(ChannelKind::Private));
        assert_eq!(
            kind("private-encrypted-x"),
            Ok(ChannelKind::PrivateEncrypted)
        );
        assert_eq!(kind("presence-room"), Ok(ChannelKind::Presence));
        assert_eq!(kind("cache-scores"), Ok(ChannelKind::Cache));
        assert_eq!(kind("#server-to-user-42"), Ok(ChannelKind::ServerToUser));
        assert!(Channel::parse("").is_err());
        assert!(Channel::parse("has space").is_err());
        assert!(Channel::parse("slash/no").is_err());
        assert!(Channel::parse("#other").is_err());
        assert!(Channel::parse(&"a".repeat(165)).is_err());
        assert!(Channel::parse(&"a".repeat(164)).is_ok());
        for cached in ["cache-a", "private-cache-a", "presence-cache-a"] {
            assert!(is_cache(cached), "{cached}");
        }
        assert!(!is_cache("private-a") && !is_cache("a-cache-"));
    }

    #[test]
    fn rooms_of_channels_are_out_of_native_reach_and_per_app() {
        let c = Channel::parse("private-a").unwrap();
        let room = c.room("1001");
        assert_eq!(room.as_str(), "#pusher/1001/private-a");
        assert!(RoomName::parse(room.as_str()).is_err());
        assert_eq!(channel_of(&room, "1001"), Some("private-a"));
        assert_eq!(channel_of(&room, "100"), None);
        assert_eq!(split_room(room.as_str()), Some(("1001", "private-a")));
    }
}
