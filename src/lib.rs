//! wsgate: a TLS WebSocket gateway with authenticated broadcast rooms.
//!
//! ```text
//! TCP ─▶ TLS (rustls) ─▶ HTTP/1.1 (hyper) ─┬─▶ static files (demo page, client library)
//!                                          └─▶ handshake gate: rate ▸ capacity ▸ upgrade ▸ Origin ▸ JWT ▸ per-user cap
//!                                                 │ 101
//!                                                 ▼
//!                        session (one task: read, write queue, ping, expiry, a request waiting on the broker)
//!                                                 │ join / leave / publish
//!                                                 ▼
//!                        hub (members, local fan-out) ◀──▶ broker (streams, history, presence; one node or a cluster)
//! ```
//!
//! # Layout
//! Each module has one job; a module imports only from the layers above it in this list.
//! 1. [`protocol`] wire types and close codes, [`config`] the file (data and its own checks),
//!    [`metrics`] Prometheus.
//! 2. [`sanitize`] raw text → checked messages, [`origin`] the Origin allowlist, [`auth`] JWT →
//!    identity, [`limits`] rate limits and connection permits, [`tls`] certificates,
//!    [`broker`] streams, offsets, history and presence behind a trait.
//!    [`pusher`] Pusher apps, channel names, signatures and frames.
//! 3. [`hub`] rooms, members and local fan-out; [`live`] the settings a reload swaps (and the
//!    semantic checks of the config).
//! 4. [`gateway`]: the public listener, the pre-101 checks, one task per connection.
//! 5. [`admin`] the internal listener.
//! 6. [`cli`] commands and wiring.
//!
//! The load generator is its own crate (`tools/wsgate-bench`), not part of the gateway.
//!
//! # Non-goals (for now)
//! permessage-deflate (tungstenite has none), binary payloads.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod hub;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod origin;
pub mod protocol;
pub mod pusher;
pub mod sanitize;
pub mod tls;
