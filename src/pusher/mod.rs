//! Pusher protocol compatibility (CONTRACT §10): what Laravel Echo, pusher-js and the Pusher
//! HTTP SDKs need from a server, on top of the same hub, rooms and limits as the native
//! protocol.
//!
//! - [`PusherApps`]: the `[[pusher.apps]]` of the configuration, compiled (secrets read, Origin
//!   lists built); part of the live settings, so a reload swaps them.
//! - [`channel`]: Pusher channel names and the hub rooms they live in. A channel of app `A`
//!   named `c` is the room `#pusher/A/c`: `#` and `/` are refused by the native room-name rules,
//!   so no native client can name it, and apps never share a room.
//! - [`sign`]: HMAC request signing and channel auth (constant-time comparisons).
//! - [`wire`]: the Pusher frames: decoding client events into the session's commands, and
//!   framing the hub's output (replies, publications, presence) as Pusher events.
//!
//! Not here: the socket loop and the rules (rate limits, sanitizing, slow consumers, drain)
//! are the session's, shared with the native protocol; the HTTP API is the gateway's.

pub mod channel;
pub mod sign;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use crate::broker::{NodeId, Origin, SessionId};
use crate::config::{ConfigError, OriginConfig, PusherConfig};
use crate::origin::OriginPolicy;

/// One configured app, ready to serve.
#[derive(Debug)]
pub struct PusherApp {
    pub id: Arc<str>,
    pub key: String,
    secret: Vec<u8>,
    /// The app's `allowed_origins` (or `origin.allowed`) and `allow_missing_origin`.
    pub origin: OriginPolicy,
    /// Whether `client-*` events are relayed (`client_events = "members"`).
    pub client_events: bool,
    pub max_presence_members: usize,
    pub activity_timeout: Duration,
}

impl PusherApp {
    /// The app secret, for [`sign`].
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// Every configured app, by key (sockets) and by id (HTTP API).
#[derive(Debug, Default)]
pub struct PusherApps {
    apps: Vec<Arc<PusherApp>>,
}

impl PusherApps {
    /// Compiles `[[pusher.apps]]`; `origin` is `[origin]`, used by apps without their own list.
    pub fn from_config(cfg: &PusherConfig, origin: &OriginConfig) -> Result<Self, ConfigError> {
        let mut apps = Vec::with_capacity(cfg.apps.len());
        for app in &cfg.apps {
            let allowed = if app.allowed_origins.is_empty() {
                origin.allowed.clone()
            } else {
                app.allowed_origins.clone()
            };
            let policy = OriginPolicy::new(&OriginConfig {
                allowed,
                allow_missing: app.allow_missing_origin,
            })
            .map_err(|e| ConfigError::Invalid {
                key: "pusher.apps.allowed_origins",
                message: format!("app {}: {e}", app.id),
            })?;
            apps.push(Arc::new(PusherApp {
                id: Arc::from(app.id.as_str()),
                key: app.key.clone(),
                secret: app.secret()?,
                origin: policy,
                client_events: app.client_events == "members",
                max_presence_members: app.max_presence_members,
                activity_timeout: app.activity_timeout,
            }));
        }
        Ok(PusherApps { apps })
    }

    /// Whether any app is configured (otherwise the Pusher endpoints answer 404).
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<PusherApp>> {
        self.apps.iter().find(|a| a.key == key)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<PusherApp>> {
        self.apps.iter().find(|a| &*a.id == id)
    }
}

/// A socket's `socket_id`: `<node>.<session>` in decimal, so the HTTP API's `socket_id`
/// (a publisher excluding its own socket) names the session on whichever node it lives.
pub fn socket_id(node: NodeId, session: SessionId) -> String {
    format!("{node}.{session}")
}

/// The name a socket signed in as `user` in app `app` answers to for disconnects (the HTTP
/// API's `terminate_connections`). `@` starts no token's `sub`, so no native user has it.
pub fn user_name(app: &str, user: &str) -> String {
    format!("@pusher-user/{app}/{user}")
}

/// The session a `socket_id` names, or `None` when it is not one of ours.
pub fn parse_socket_id(s: &str) -> Option<Origin> {
    let (node, session) = s.split_once('.')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(node) || !digits(session) {
        return None;
    }
    Some(Origin {
        node: node.parse().ok()?,
        session: session.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_round_trip_and_refuse_anything_else() {
        let s = socket_id(18_446_744_073_709_551_615, 42);
        assert_eq!(s, "18446744073709551615.42");
        assert_eq!(
            parse_socket_id(&s),
            Some(Origin {
                node: u64::MAX,
                session: 42
            })
        );
        for bad in ["", "1", "1.", ".1", "1.2.3", "a.1", "-1.2", "1.+2"] {
            assert_eq!(parse_socket_id(bad), None, "{bad}");
        }
    }
}
