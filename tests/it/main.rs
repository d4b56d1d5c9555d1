//! Black-box tests: the real binary, real TLS, real WebSocket clients, real signals.

mod smoke;
mod support;
