//! wsgate: a TLS WebSocket gateway with authenticated broadcast rooms.
//!
//! ```text
//! TCP ─▶ TLS (rustls) ─▶ HTTP/1.1 (hyper) ─┬─▶ static files (demo page, client library)
//!                                          └─▶ handshake gate: rate ▸ capacity ▸ upgrade ▸ Origin ▸ JWT
//!                                                 │ 101
//!                                                 ▼
//!                                   session (one task: read, write queue, ping, expiry)
//!                                                 │ join / leave / publish
//!                                                 ▼
//!                                   hub (rooms, presence, local fan-out) ◀──▶ broker (streams, history)
//! ```
//!
//! # Layout
//! Each module has one job; a module imports only from the layers above it in this list.
//! 1. [`protocol`] wire types and close codes, [`config`] the file, [`metrics`] Prometheus.
//! 2. [`sanitize`] raw text → checked messages, [`origin`] the Origin allowlist, [`auth`] JWT →
//!    identity, [`limits`] rate limits and connection permits, [`tls`] certificates,
//!    [`broker`] streams, offsets and history behind a trait.
//! 3. [`hub`] rooms, presence and fan-out; [`live`] the settings a reload swaps.
//! 4. [`handshake`] the pre-101 checks, [`session`] one connection.
//! 5. [`server`] the public listener, [`admin`] the internal one.
//! 6. [`cli`] commands and wiring, [`bench`] the load generator.
//!
//! # Non-goals (for now)
//! permessage-deflate (tungstenite has none), multi-node fan-out (the [`broker::Broker`] trait
//! is the seam for it), binary payloads.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod hub;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod origin;
pub mod protocol;
pub mod sanitize;
pub mod tls;
