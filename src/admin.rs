//! The internal admin listener (plain HTTP, CONTRACT §7):
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while accepting, 503 while draining or while the broker is out of reach |
//! | `GET /metrics` | Prometheus text |
//! | `POST /api/publish` | `{"room","data"}` → `{"offset":N}`, delivered `from:"@server"` |
//! | `POST /api/disconnect` | `{"user"}` → `{"closed":N}`, sessions closed with 4003 |
//! | `GET /api/rooms` | `[{"room","members","connections"}]` |
//! | `GET /api/nodes` | `[{"node","connections","rooms","started_at"}]` |
//!
//! The `/api/*` routes act on the whole gateway through the broker (in a cluster, on every
//! node); while it is out of reach they answer 503 `{"error":"unavailable"}`.
//! `/api/*` needs `Authorization: Bearer <admin.api_key>`, compared in constant time. Published
//! data goes through the same checks as a client's (size, depth, room name, sanitizing).
//!
//! On a loopback `admin.listen`, every route first checks that the request was addressed to
//! the local machine (CONTRACT §7), so a web page whose DNS name is rebound to 127.0.0.1
//! cannot reach it from a developer's browser: a `Host` that is not a loopback name or
//! address gets 421. An HTTP/1.1 request without `Host` gets 400 (RFC 9112 §3.2); an HTTP/1.0
//! one without it is served (browsers always send `Host`; bare probes written with `printf`
//! often do not).
//!
//! The listener is bounded like the public one: [`MAX_ADMIN_CONNECTIONS`] at once (more are
//! closed as soon as they are accepted), [`ADMIN_HEADER_TIMEOUT`] to send a request head (and
//! to stay idle between requests), [`ADMIN_BODY_TIMEOUT`] to send a body.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::broker::{Broker, BrokerError};
use crate::gateway::server::{is_loopback_host, Server};
use crate::protocol::{close, RoomName};
use crate::sanitize::{json_depth, sanitize_value, MAX_DEPTH};

/// Most admin connections open at once; more are closed as soon as they are accepted. Admin
/// clients are a Prometheus server or two, the orchestrator's probes and an operator's tools,
/// each needing a connection or two at a time: 64 leaves room for bursts and restarts while
/// capping what a misbehaving local client can hold (64 × [`ADMIN_MAX_BUF`] of buffers).
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Time to send a complete request head, and the longest a kept-alive connection may sit idle
/// between requests. Local tools send a head in one packet; 5 s forgives a stalled host.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to send a request body once its head is in. Admin bodies are at most
/// `limits.max_message_bytes` plus an envelope: a local client sends that in milliseconds.
pub const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's read buffer per admin connection (its minimum is 8 KiB): an admin request head is
/// a few hundred bytes; bodies are streamed, not buffered here.
const ADMIN_MAX_BUF: usize = 16 * 1024;

/// The sender name of messages published through the admin API.
pub const SERVER_SENDER: &str = "@server";
/// Room for the JSON envelope around `data` in an admin publish.
const ENVELOPE_ALLOWANCE: usize = 1024;

pub struct Admin {
    pub server: Arc<Server>,
    pub api_key: String,
}

type Resp = Response<Full<Bytes>>;

fn json_resp(status: StatusCode, body: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Resp {
    json_resp(status, json!({ "error": message }))
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[derive(Deserialize)]
struct PublishBody {
    room: String,
    data: Value,
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
}

impl Admin {
    /// Serves until the process stops it, after the drain: while draining, `/readyz` must
    /// answer 503 (not refuse connections) and `/healthz` 200. Admin connections are short
    /// and not drained.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(peer = %peer, max = MAX_ADMIN_CONNECTIONS, "admin connection closed: too many open");
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req, loopback).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .max_buf_size(ADMIN_MAX_BUF)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await
                {
                    debug!(peer = %peer, error = %e, "admin connection ended");
                }
            });
        }
    }

    /// On a loopback listener: the answer for a request not addressed to the local machine
    /// (see the module doc), or `None` to go on.
    fn misdirected(req: &Request<Incoming>) -> Option<Resp> {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(h), None) => Some(h.to_str().unwrap_or("")),
            (None, _) if req.version() < Version::HTTP_11 => None,
            (None, _) => {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "HTTP/1.1 requires a Host header",
                ))
            }
            (Some(_), Some(_)) => {
                return Some(error(StatusCode::BAD_REQUEST, "more than one Host header"))
            }
        };
        // An absolute-form target (`GET http://host/…`) names the host too, and wins over Host.
        let target = req.uri().authority().map(|a| a.as_str());
        if target.into_iter().chain(host).any(|h| !is_loopback_host(h)) {
            return Some(error(
                StatusCode::MISDIRECTED_REQUEST,
                "this admin listener answers only requests addressed to localhost",
            ));
        }
        None
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let Ok(v) = value.to_str() else { return false };
        let Some((scheme, key)) = v.split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && bool::from(key.trim().as_bytes().ct_eq(self.api_key.as_bytes()))
    }

    async fn route(&self, req: Request<Incoming>, loopback: bool) -> Resp {
        if loopback {
            if let Some(r) = Self::misdirected(&req) {
                return r;
            }
        }
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (method.clone(), path.as_str()) {
            (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), "text/plain"),
            (Method::GET, "/readyz") => {
                if self.server.draining.load(Ordering::SeqCst)
                    || self.server.shared.shutdown.is_cancelled()
                {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "draining\n".into(),
                        "text/plain",
                    )
                } else if !self.broker().ready() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "broker unavailable\n".into(),
                        "text/plain",
                    )
                } else {
                    text(StatusCode::OK, "ready\n".into(), "text/plain")
                }
            }
            (Method::GET, "/metrics") => {
                self.server.shared.hub.update_room_gauge();
                text(
                    StatusCode::OK,
                    self.server.shared.metrics.encode(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
            (_, p) if p.starts_with("/api/") => {
                if !self.authorized(&req) {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong Authorization: Bearer <admin.api_key>",
                    );
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return r;
                }
                let r = match (method, p) {
                    (Method::POST, "/api/publish") => self.publish(req).await,
                    (Method::POST, "/api/disconnect") => self.disconnect(req).await,
                    (Method::GET, "/api/rooms") => answer(self.broker().rooms().await),
                    (Method::GET, "/api/nodes") => answer(self.broker().nodes().await),
                    (_, "/api/publish" | "/api/disconnect" | "/api/rooms" | "/api/nodes") => {
                        error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                    }
                    _ => error(StatusCode::NOT_FOUND, "no such admin route"),
                };
                info!(route = p, status = r.status().as_u16(), "admin request");
                r
            }
            _ => error(StatusCode::NOT_FOUND, "no such admin route"),
        }
    }

    /// Reads a JSON body of at most `limit` bytes.
    async fn body<T: serde::de::DeserializeOwned>(
        req: Request<Incoming>,
        limit: usize,
    ) -> Result<T, Resp> {
        let read = tokio::time::timeout(
            ADMIN_BODY_TIMEOUT,
            Limited::new(req.into_body(), limit).collect(),
        );
        let bytes = match read.await {
            Err(_) => {
                let mut r = error(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "the body did not arrive within {}s",
                        ADMIN_BODY_TIMEOUT.as_secs()
                    ),
                );
                // The rest of the body may still come: this connection is done.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(r);
            }
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body larger than {limit} bytes"),
                ))
            }
            Ok(Err(_)) => return Err(error(StatusCode::BAD_REQUEST, "could not read the body")),
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| error(StatusCode::BAD_REQUEST, "body is not UTF-8"))?;
        if json_depth(text, MAX_DEPTH) > MAX_DEPTH {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("JSON nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        serde_json::from_str(text)
            .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}")))
    }

    async fn publish(&self, req: Request<Incoming>) -> Resp {
        let max = self.server.shared.live.load().limits.max_message_bytes;
        let body: PublishBody = match Self::body(req, max + ENVELOPE_ALLOWANCE).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let room = match RoomName::parse(&body.room) {
            Ok(r) => r,
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        };
        let mut data = body.data;
        if data.is_null() {
            // As for a client's publish: null is no data.
            return error(
                StatusCode::BAD_REQUEST,
                "missing field `data` (null is not data)",
            );
        }
        sanitize_value(&mut data);
        let hub = self.server.shared.hub.clone();
        let published = hub
            .publish(room, Arc::from(SERVER_SENDER), data, None)
            .await;
        answer(published.map(|offset| json!({ "offset": offset })))
    }

    async fn disconnect(&self, req: Request<Incoming>) -> Resp {
        let body: DisconnectBody = match Self::body(req, 4096).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let closed = self
            .broker()
            .disconnect_user(&body.user, close::KICKED)
            .await;
        answer(closed.map(|closed| json!({ "closed": closed })))
    }

    fn broker(&self) -> &Arc<dyn Broker> {
        self.server.shared.hub.broker()
    }
}

/// 200 with the value as JSON, or 503 `{"error":"unavailable"}` when the broker is out of
/// reach (CONTRACT §7); what went wrong stays in the log.
fn answer<T: serde::Serialize>(result: Result<T, BrokerError>) -> Resp {
    match result {
        Ok(value) => json_resp(StatusCode::OK, json!(value)),
        Err(e) => {
            warn!(error = %e, "admin request failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}
