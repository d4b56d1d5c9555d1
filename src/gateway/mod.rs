//! The public side of the gateway: the listener ([`server`]), the checks before `101`
//! ([`handshake`]) and one task per connection after it ([`session`]).

pub mod handshake;
pub mod server;
pub mod session;
