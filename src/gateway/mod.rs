//! The public side of the gateway: the listener ([`server`]), behind a load balancer the PROXY
//! header before anything else ([`proxy_header`]), the checks before `101` ([`handshake`]) and
//! one task per connection after it ([`session`]).

pub mod handshake;
pub mod proxy_header;
pub mod pusher_api;
pub mod server;
pub mod session;
