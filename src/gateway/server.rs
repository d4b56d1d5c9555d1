//! The public listener: accept → TLS → HTTP/1.1 (hyper) → either static files or the
//! WebSocket handshake gate → a session task.
//!
//! `server.handshake_timeout` bounds everything from accept to `101`: a client that sends
//! nothing, stalls in TLS or dribbles its headers is dropped when it runs out. Plain HTTP on
//! the TLS port gets a readable `400` instead of a TLS alert.
//!
//! Each client address may have `limits.handshakes_in_flight_per_ip` connections before `101`
//! at once; a further one is closed at accept, before any TLS work. Stalling clients thus
//! cost the gateway a bounded number of sockets per address, and a slowloris from one address
//! never keeps clients of another out.
//!
//! Behind a load balancer (`server.proxy_protocol`), a connection first passes
//! [`proxy_header`]: only trusted proxies may connect, and the client address in their header
//! is the connection's `peer` from there on — for every per-IP limit (the in-flight check runs
//! once the header is read) and every log line.
//! Every HTTPS answer carries `Strict-Transport-Security` (unless addressed as `localhost`).
//! Static files never include hidden files or anything a symlink leads to outside
//! `static_dir` (see [`servable`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{Identity, RoomAccess};
use crate::gateway::handshake::{self, Gate};
use crate::gateway::proxy_header::{self, TrustedProxies};
use crate::gateway::pusher_api;
use crate::gateway::session::{self, Accepted, Wire};
use crate::limits::{ConnPermit, ConnectionCounter, HandshakeLimiter};
use crate::live::Live;
use crate::live::Shared;
use crate::metrics::{HandshakeResult, Protocol};
use crate::pusher::{self, wire::PusherWire};
use crate::tls::ReloadableCert;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// tungstenite's read chunk. Its default (128 KiB, allocated per connection) would make idle
/// connections cost ~130 KiB each; 4 KiB keeps them small and still reads a typical chat
/// message in one go (larger ones just take more reads).
const WS_READ_BUFFER: usize = 1024;
/// Bytes gathered before tungstenite writes to the socket; batches of small frames go out in
/// one TLS record stream.
const WS_WRITE_BUFFER: usize = 16 * 1024;

/// Content-Security-Policy for the static files (CONTRACT §8).
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// How a connection ended before reaching `101`.
enum EarlyEnd {
    /// Closed (or failed) before sending a byte: health checks, port scanners.
    Silent,
    /// Plain HTTP on the TLS port; answered with a readable `400`.
    NotTls,
    Tls(std::io::Error),
    /// `server.handshake_timeout` ran out.
    Timeout,
    Http(hyper::Error),
}
/// `Strict-Transport-Security` for every response of the public listener. The listener speaks
/// TLS only, so there is no plain-HTTP site to fall back to: one year (the usual value, and
/// what browsers' preload lists ask for) keeps a returning browser from ever trying
/// `http://` first. No `includeSubDomains`: the gateway speaks for its own host name, not for
/// sibling services under the same domain that may still need plain HTTP.
const HSTS: &str = "max-age=31536000";

/// Longest Origin value written to a refusal's log line, in characters: a real origin
/// (`scheme://host:port`) fits easily; anything longer is noise or an attack on the log.
const LOGGED_ORIGIN_CHARS: usize = 200;

/// The public listener's shared state.
pub struct Server {
    pub shared: Arc<Shared>,
    pub cert: Arc<ReloadableCert>,
    pub acceptor: TlsAcceptor,
    pub rate: HandshakeLimiter,
    pub conns: Arc<ConnectionCounter>,
    /// Connections per client address before `101` (TLS, HTTP), for
    /// `limits.handshakes_in_flight_per_ip`.
    pub handshakes_in_flight: Arc<ConnectionCounter>,
    pub tracker: TaskTracker,
    pub ws_path: String,
    pub static_dir: Option<PathBuf>,
    /// Set when shutdown begins; `/readyz` turns 503.
    pub draining: AtomicBool,
    /// `server.trusted_proxies` when `server.proxy_protocol` is on: every connection then
    /// starts with a PROXY header naming the client.
    pub proxy_protocol: Option<TrustedProxies>,
}

impl Server {
    /// Accepts until shutdown. Each connection runs on its own task in `tracker`.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let shutdown = self.shared.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    if let Some(proxies) = &self.proxy_protocol {
                        if proxies.admit(peer, &self.shared.metrics) {
                            let _ = tcp.set_nodelay(true);
                            let deadline = self.handshake_deadline();
                            self.tracker
                                .spawn(self.clone().proxied(tcp, peer, deadline));
                        }
                        continue; // refused: dropping `tcp` closes it, before reading anything
                    }
                    // Checked here, in accept order, before any byte is read: a client's
                    // earlier connections are always counted before its next one is judged.
                    let Some(in_flight) = self.enter_handshake(peer) else {
                        continue; // dropping `tcp` closes it, before any TLS
                    };
                    let _ = tcp.set_nodelay(true);
                    let deadline = self.handshake_deadline();
                    self.tracker
                        .spawn(self.clone().connection(tcp, peer, in_flight, deadline));
                }
                Err(e) => {
                    // Usually EMFILE: back off a little instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.draining.store(true, Ordering::SeqCst);
    }

    /// When a connection accepted now must have reached `101`.
    fn handshake_deadline(&self) -> Instant {
        Instant::now() + self.shared.live.load().server.handshake_timeout
    }

    /// A connection from the trusted proxy `proxy`: its header names the client, which is
    /// then judged like a direct one.
    async fn proxied(self: Arc<Self>, mut tcp: TcpStream, proxy: SocketAddr, deadline: Instant) {
        let metrics = &self.shared.metrics;
        let Some(client) = proxy_header::client_address(&mut tcp, proxy, deadline, metrics).await
        else {
            return;
        };
        let Some(in_flight) = self.enter_handshake(client) else {
            return;
        };
        // Once counted: whoever reads this line sees the handshake in flight.
        debug!(peer = %client.ip(), proxy = %proxy.ip(), "proxy header read");
        self.connection(tcp, client, in_flight, deadline).await;
    }

    /// Counts a new connection of `client` as a handshake in flight, or refuses it when that
    /// address already has `limits.handshakes_in_flight_per_ip` connections before `101`: so
    /// connections that stall in TLS or HTTP cost one address a bounded number of sockets and
    /// handshakes, and never keep other addresses out.
    fn enter_handshake(&self, client: SocketAddr) -> Option<ConnPermit> {
        let max = self.shared.live.load().limits.handshakes_in_flight_per_ip;
        // No total here: `server.max_connections` bounds the sessions, the timeout the rest.
        match self
            .handshakes_in_flight
            .acquire(client.ip(), usize::MAX, max)
        {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.shared
                    .metrics
                    .handshake(HandshakeResult::TooManyInFlight);
                info!(peer = %client.ip(), result = "refused", reason = "handshakes_in_flight_per_ip", "handshake");
                None
            }
        }
    }

    /// One connection until `101` or its end before that. `in_flight` is given back when this
    /// returns — at `101` the HTTP connection ends, handing the socket to the session — and
    /// before the end is logged, so a log line never precedes the freed slot.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        in_flight: ConnPermit,
        deadline: Instant,
    ) {
        let ended = self.before_upgrade(tcp, peer, deadline).await;
        drop(in_flight);
        let metrics = &self.shared.metrics;
        let peer = peer.ip();
        match ended {
            Ok(()) => {}
            Err(EarlyEnd::Silent) => debug!(%peer, "connection ended before sending anything"),
            Err(EarlyEnd::Http(e)) => debug!(%peer, error = %e, "http connection ended"),
            Err(EarlyEnd::NotTls) => {
                metrics.handshake(HandshakeResult::TlsError);
                info!(%peer, result = "refused", reason = "not_tls", "handshake");
            }
            Err(EarlyEnd::Tls(e)) => {
                metrics.handshake(HandshakeResult::TlsError);
                info!(%peer, result = "refused", reason = "tls_error", error = %e, "handshake");
            }
            Err(EarlyEnd::Timeout) => {
                metrics.handshake(HandshakeResult::Timeout);
                info!(%peer, result = "refused", reason = "timeout", "handshake");
            }
        }
    }

    /// TLS, then HTTP until the connection ends or is upgraded, all by `deadline`
    /// (`server.handshake_timeout` after accept).
    async fn before_upgrade(
        self: &Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<(), EarlyEnd> {
        let timeout = self.shared.live.load().server.handshake_timeout;
        // TLS records start with 0x16; anything else is most likely plain HTTP.
        let mut first = [0u8; 1];
        match timeout_at(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] != 0x16 => {
                reply_not_tls(tcp).await;
                return Err(EarlyEnd::NotTls);
            }
            Ok(Ok(1)) => {}
            Ok(_) => return Err(EarlyEnd::Silent),
            Err(_) => return Err(EarlyEnd::Timeout),
        }
        let tls = match timeout_at(deadline, self.acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(EarlyEnd::Tls(e)),
            Err(_) => return Err(EarlyEnd::Timeout),
        };
        // Told of every request's arrival; the first ends the deadline's reign.
        let arrived = Arc::new(tokio::sync::Notify::new());
        let server = self.clone();
        let signal = arrived.clone();
        let svc = hyper::service::service_fn(move |req| {
            let server = server.clone();
            signal.notify_one();
            async move { Ok::<_, Infallible>(server.request(req, peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(tls), svc)
            .with_upgrades();
        tokio::pin!(conn);
        // Until the first request's headers are in, `deadline` bounds the connection. From
        // then on hyper's header timeout bounds each wait for a request's headers (the idle
        // time between keep-alive requests included), and a request being served is never
        // cut: an HTTP API client or a page loading files keeps its connection.
        let first = tokio::select! {
            r = &mut conn => Some(r),
            _ = arrived.notified() => None,
            _ = tokio::time::sleep_until(deadline) => return Err(EarlyEnd::Timeout),
        };
        let served = first.is_none();
        let ended = match first {
            Some(r) => r,
            None => conn.await,
        };
        match ended {
            Ok(()) => Ok(()),
            // Idle between requests past the header timeout: a normal end of keep-alive.
            Err(e) if e.is_timeout() && served => Ok(()),
            Err(e) if e.is_timeout() => Err(EarlyEnd::Timeout),
            Err(e) => Err(EarlyEnd::Http(e)),
        }
    }

    async fn request(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let hsts = !loopback_request(&req);
        let pusher = !self.shared.live.load().pusher.is_empty();
        let path = req.uri().path();
        let mut resp = if path == self.ws_path {
            self.websocket(req, peer)
        } else if pusher && path.starts_with("/app/") {
            self.pusher_socket(req, peer)
        } else if pusher && path.starts_with("/apps/") {
            pusher_api::serve(&self.shared, req).await
        } else {
            match &self.static_dir {
                Some(dir) => serve_static(dir, req).await,
                None => plain(StatusCode::NOT_FOUND, "not found\n"),
            }
        };
        if hsts {
            resp.headers_mut().insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS),
            );
        }
        resp
    }

    fn websocket(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let live = self.shared.live.load_full();
        let gate = Gate {
            live: &live,
            rate: &self.rate,
            conns: &self.conns,
            hub: &self.shared.hub,
        };
        let admitted = match handshake::check(&req, peer.ip(), &gate) {
            Ok(a) => a,
            Err(refusal) => return self.refused(&req, peer, refusal, Protocol::Native),
        };
        self.shared.metrics.handshake(HandshakeResult::Ok);
        info!(peer = %peer.ip(), result = "ok", user = %admitted.identity.user, "handshake");
        let shared = self.shared.clone();
        let accepted = Accepted {
            wire: Wire::Native,
            identity: admitted.identity,
            peer,
            permit: admitted.permit,
            place: admitted.place,
        };
        let subprotocol = admitted.subprotocol.then_some(handshake::SUBPROTOCOL);
        self.switch(
            req,
            &live,
            &admitted.accept_key,
            subprotocol,
            peer,
            move |ws| session::run(ws, accepted, shared),
        )
    }

    /// `GET /app/{key}?protocol=7`: a Pusher socket. Gated like the native endpoint up to the
    /// Origin (the app's list); no token. An unknown key or protocol is told so after `101`,
    /// as Pusher clients expect (`pusher:error`, then close 4001 or 4007).
    fn pusher_socket(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let live = self.shared.live.load_full();
        let key = req.uri().path().trim_start_matches("/app/");
        let app = live.pusher.by_key(key).cloned();
        let checked = handshake::check_upgrade(&req, peer.ip(), &live, &self.rate, &self.conns)
            .and_then(|upgrade| {
                let policy = app.as_ref().map_or(&live.origin, |a| &a.origin);
                handshake::check_origin(req.headers(), policy).map(|()| upgrade)
            });
        let upgrade = match checked {
            Ok(u) => u,
            Err(refusal) => return self.refused(&req, peer, refusal, Protocol::Pusher),
        };
        self.shared
            .metrics
            .handshake_of(Protocol::Pusher, HandshakeResult::Ok);
        let protocol = pusher_protocol(req.uri().query());
        let app = match (app, protocol) {
            (Some(app), Some(_)) => app,
            (app, _) => {
                let (code, message) = match app {
                    None => (
                        pusher::wire::code::APP_UNKNOWN,
                        "App key not in this cluster",
                    ),
                    Some(_) => (pusher::wire::code::PROTOCOL, "Unsupported protocol version"),
                };
                info!(peer = %peer.ip(), result = "ok", protocol = "pusher", refused = code, "handshake");
                let permit = upgrade.permit;
                return self.switch(req, &live, &upgrade.accept_key, None, peer, move |ws| {
                    refuse_pusher_socket(ws, permit, code, message)
                });
            }
        };
        let hub = &self.shared.hub;
        let node = hub.node();
        let place = hub.admit_unnamed(Protocol::Pusher, |id| {
            Arc::from(format!("@pusher:{}", pusher::socket_id(node, id)))
        });
        let socket_id: Arc<str> = Arc::from(pusher::socket_id(node, place.id()));
        info!(peer = %peer.ip(), result = "ok", protocol = "pusher", app = %app.id, socket_id = %socket_id, "handshake");
        let accepted = Accepted {
            wire: Wire::Pusher(PusherWire::new(app, socket_id.clone())),
            identity: Identity {
                user: Arc::from(format!("@pusher:{socket_id}")),
                name: None,
                rooms: RoomAccess::All,
                expires_at: u64::MAX,
            },
            peer,
            permit: upgrade.permit,
            place,
        };
        let shared = self.shared.clone();
        self.switch(req, &live, &upgrade.accept_key, None, peer, move |ws| {
            session::run(ws, accepted, shared)
        })
    }

    /// The plain HTTP answer to a refused handshake, logged and counted.
    fn refused(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
        refusal: handshake::Refusal,
        protocol: Protocol,
    ) -> Response<Body> {
        self.shared
            .metrics
            .handshake_refused_of(protocol, refusal.metric(), refusal.reason());
        // The refused Origin is what an operator needs to fix `origin.allowed`; it is
        // the client's text, so it is shortened (and escaped by the log formatter).
        let origin = matches!(
            refusal,
            handshake::Refusal::OriginMissing | handshake::Refusal::OriginNotAllowed
        )
        .then(|| req.headers().get(header::ORIGIN))
        .flatten()
        .map(|v| shorten(&String::from_utf8_lossy(v.as_bytes()), LOGGED_ORIGIN_CHARS));
        info!(peer = %peer.ip(), result = "refused", status = refusal.status().as_u16(), reason = refusal.reason(), detail = %refusal, origin = origin.as_deref(), "handshake");
        let mut resp = plain(refusal.status(), &refusal.body());
        let h = resp.headers_mut();
        match &refusal {
            handshake::Refusal::RateLimited { retry_after } => {
                let secs = retry_after.as_secs().max(1);
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    h.insert(header::RETRY_AFTER, v);
                }
            }
            handshake::Refusal::UpgradeRequired(_) => {
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            handshake::Refusal::Token(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }

    /// Answers `101` and runs `serve` on the WebSocket once hyper hands the connection over.
    fn switch<F, Fut>(
        &self,
        mut req: Request<Incoming>,
        live: &Live,
        accept_key: &str,
        subprotocol: Option<&'static str>,
        peer: SocketAddr,
        serve: F,
    ) -> Response<Body>
    where
        F: FnOnce(WebSocketStream<TlsStream<TcpStream>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (k, v) in handshake::switching_headers(accept_key, subprotocol) {
            resp.headers_mut().insert(k, v);
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(WS_WRITE_BUFFER)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(live.limits.max_message_bytes))
            .max_frame_size(Some(live.limits.max_message_bytes));
        let upgrade = hyper::upgrade::on(&mut req);
        self.tracker.spawn(async move {
            let upgraded = match upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    debug!(peer = %peer.ip(), error = %e, "upgrade failed");
                    return;
                }
            };
            let Some(ws) = websocket_stream(upgraded, ws_config, peer) else {
                return;
            };
            // Boxed: this task then holds a pointer, and the session its exact size.
            Box::pin(serve(ws)).await;
        });
        resp
    }
}

/// The Pusher protocol version a client asked for (`?protocol=N`), when this gateway speaks
/// it (5 to 7: the versions whose frames are the same).
fn pusher_protocol(query: Option<&str>) -> Option<u8> {
    let value = query?
        .split('&')
        .find_map(|p| p.strip_prefix("protocol="))?;
    value.parse::<u8>().ok().filter(|v| (5..=7).contains(v))
}

/// A Pusher socket that cannot be served: `pusher:error` with `code`, then a close with it.
async fn refuse_pusher_socket(
    mut ws: WebSocketStream<TlsStream<TcpStream>>,
    permit: ConnPermit,
    code: u16,
    message: &'static str,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws
            .send(Message::Text(pusher::wire::pusher_error(
                Some(code),
                message,
            )))
            .await;
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: message.into(),
        };
        let _ = ws.close(Some(frame)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.get_mut().shutdown()).await;
    drop(permit);
}

/// Takes the TLS stream back from hyper (no boxed IO on the hot path), lets go of hyper's read
/// buffer (it would otherwise stay allocated for the session's life) and wraps the stream.
fn websocket_stream(
    upgraded: hyper::upgrade::Upgraded,
    config: WebSocketConfig,
    peer: SocketAddr,
) -> Option<WebSocketStream<TlsStream<TcpStream>>> {
    let Ok(parts) = upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() else {
        warn!(peer = %peer.ip(), "upgrade: unexpected connection type");
        return None;
    };
    let io = parts.io.into_inner();
    let leftover = (!parts.read_buf.is_empty()).then(|| parts.read_buf.to_vec());
    drop(parts.read_buf);
    // Neither constructor awaits anything.
    let ws = match leftover {
        None => WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).now_or_never(),
        Some(bytes) => WebSocketStream::from_partially_read(io, bytes, Role::Server, Some(config))
            .now_or_never(),
    };
    if ws.is_none() {
        warn!(peer = %peer.ip(), "upgrade: stream setup did not complete");
    }
    ws
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A plain-text response.
pub fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Files under `static_dir`, with the security headers of CONTRACT §8. What [`servable`]
/// refuses answers the same empty 404 as a missing file.
async fn serve_static(dir: &Path, req: Request<Incoming>) -> Response<Body> {
    use tower::ServiceExt;
    let mut resp = match servable(dir, req.uri().path()).await {
        None => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        Some(file) => {
            let svc =
                tower_http::services::ServeDir::new(dir).append_index_html_on_directories(true);
            let (parts, _) = req.into_parts();
            let req = Request::from_parts(parts, Full::new(Bytes::new()));
            let mut r = match svc.oneshot(req).await {
                Ok(r) => r.map(|b| b.map_err(std::io::Error::other).boxed_unsync()),
                Err(never) => match never {},
            };
            if r.status().is_success() && is_typescript(&file) {
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(TYPESCRIPT));
            }
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Text types get an explicit charset (ServeDir sends e.g. `text/css` bare).
    let bare_text = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|ct| {
            (ct.starts_with("text/") || ct.contains("javascript")) && !ct.contains("charset")
        })
        .map(|ct| format!("{ct}; charset=utf-8"));
    if let Some(v) = bare_text.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// The file under `dir` that the request path names, or `None` when it must look absent:
/// - a hidden file or directory: any path segment starting with `.` (`/.env`, `/.git/config`,
///   `/a/.hidden`), except a leading `/.well-known/` (RFC 8615: public by design, for
///   `security.txt` and the like), whose own segments follow the same rule;
/// - anything whose real location, symlinks followed, is outside the real `dir` (a link to
///   `/etc/passwd` or `../secret`). Symlinks that stay inside are followed, so a
///   `latest.js` → `wsgate-1.2.js` link or a `static_dir` that is itself a link (swapped on
///   deploy) keep working;
/// - a missing file.
///
/// The path is percent-decoded first, as `ServeDir` does (`/%2eenv` is `/.env`).
async fn servable(dir: &Path, uri_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(uri_path)
        .decode_utf8()
        .ok()?;
    let mut path = dir.to_path_buf();
    for (i, segment) in decoded.split('/').filter(|s| !s.is_empty()).enumerate() {
        if segment.starts_with('.') && !(i == 0 && segment == ".well-known") {
            return None;
        }
        path.push(segment);
    }
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let inside = |real: &Path| real.starts_with(&root);
    let real = tokio::fs::canonicalize(&path).await.ok()?;
    if !inside(&real) {
        return None;
    }
    // A directory is served through its index.html, which may be a link of its own.
    if tokio::fs::metadata(&real).await.ok()?.is_dir() {
        if let Ok(index) = tokio::fs::canonicalize(real.join("index.html")).await {
            if !inside(&index) {
                return None;
            }
        }
    }
    Some(path)
}

/// `Content-Type` of TypeScript files (`wsgate.d.ts`): the extension table would call `.ts`
/// an MPEG transport stream (`video/mp2t`); `application/typescript` is what TypeScript
/// tooling and Deno serve and expect.
const TYPESCRIPT: &str = "application/typescript; charset=utf-8";

fn is_typescript(file: &Path) -> bool {
    matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("ts" | "mts" | "cts")
    )
}

/// `s` cut to `max` characters, marked with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// Whether `host` (a `Host` header value or a URI authority: a name or an address, any port)
/// names the local machine: `localhost` (and `*.localhost`, which browsers resolve to it
/// themselves), `127.0.0.0/8` or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    // Exactly `host` or `host:port`: no userinfo, no port that is not a number.
    let port_ok = match authority.as_str().strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest.len() > 1 && rest[1..].bytes().all(|b| b.is_ascii_digit()),
        None => false,
    };
    if !port_ok {
        return false;
    }
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    }
    if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
        return ip.is_loopback();
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether the request was addressed to the local machine by name (its `Host`). HSTS is left
/// off there: browsers ignore it for IP addresses, but for `localhost` they would keep it a
/// year and force https on every other development server on that machine, whatever its port.
fn loopback_request<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(is_loopback_host)
}

async fn reply_not_tls(mut tcp: TcpStream) {
    const BODY: &str = "This port speaks TLS only: use https:// or wss://.\n";
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(resp.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_names_and_addresses_of_this_machine() {
        for h in [
            "localhost",
            "LocalHost:8443",
            "localhost.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.1.2.3:9090",
            "[::1]",
            "[::1]:9090",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "localhost@evil.example",
            "user@localhost",
            "10.0.0.1",
            "[::2]",
            "::1",
            "localhost:port",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn shorten_cuts_on_characters() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("hé", 2), "hé");
    }
}
