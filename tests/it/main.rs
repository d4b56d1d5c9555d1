//! Black-box tests: the real binary, real TLS, real WebSocket clients, real signals.

mod admin;
mod handshake;
mod hub;
mod session;
mod smoke;
mod support;
