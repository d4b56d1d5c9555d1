//! Black-box tests: the real binary, real TLS, real WebSocket clients, real signals.

mod admin;
mod edge;
mod handshake;
mod hub;
mod smoke;
mod support;
