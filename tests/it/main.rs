//! Black-box tests: the real binary, real TLS, real WebSocket clients, real signals.

mod admin;
mod admission;
mod edge;
mod handshake;
mod hub;
mod npm;
mod ops;
mod proxy;
mod pusher;
mod pusher_clients;
mod redis_broker;
mod redis_server;
mod session;
mod smoke;
mod support;
