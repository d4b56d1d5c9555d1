//! The ordered pre-`101` checks of CONTRACT §3: per-IP handshake rate → capacity → upgrade
//! validity → Origin → token → per-user cap. The first that fails answers with its status;
//! nothing about the token is ever echoed or logged.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Version};

use crate::auth::{AuthError, Identity};
use crate::hub::{Hub, SessionPlace, UserAtCap};
use crate::limits::{CapacityRefusal, ConnPermit, ConnectionCounter, HandshakeLimiter};
use crate::live::Live;
use crate::metrics::HandshakeResult;
use crate::origin::{OriginPolicy, OriginRefusal};

/// The subprotocol the gateway speaks.
pub const SUBPROTOCOL: &str = "wsgate.v1";
/// Prefix of the subprotocol entry that carries the token.
pub const BEARER_PREFIX: &str = "bearer.";

/// Why a handshake was refused. The `Display` text says exactly what failed: it goes to the log
/// line; the client gets [`Refusal::body`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many handshakes from this address; retry later")]
    RateLimited { retry_after: Duration },
    #[error("the gateway is at its connection limit")]
    Full,
    #[error("too many connections from this address")]
    FullForIp,
    #[error("too many connections for this user")]
    FullForUser,
    #[error("{0}")]
    UpgradeRequired(&'static str),
    #[error("{0}")]
    BadUpgrade(&'static str),
    #[error("Origin header missing")]
    OriginMissing,
    #[error("Origin not allowed")]
    OriginNotAllowed,
    #[error("{0}")]
    Token(AuthError),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Full | Refusal::FullForIp | Refusal::FullForUser => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            Refusal::BadUpgrade(_) => StatusCode::BAD_REQUEST,
            Refusal::OriginMissing | Refusal::OriginNotAllowed => StatusCode::FORBIDDEN,
            Refusal::Token(_) => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn metric(&self) -> HandshakeResult {
        match self {
            Refusal::RateLimited { .. } => HandshakeResult::RateLimited,
            Refusal::Full | Refusal::FullForIp | Refusal::FullForUser => {
                HandshakeResult::Overloaded
            }
            Refusal::UpgradeRequired(_) | Refusal::BadUpgrade(_) => HandshakeResult::BadRequest,
            Refusal::OriginMissing | Refusal::OriginNotAllowed => HandshakeResult::BadOrigin,
            Refusal::Token(_) => HandshakeResult::BadToken,
        }
    }

    /// What the client is told. A token refusal says `unauthorized` whatever failed (CONTRACT
    /// §3): naming the check would let anyone probe which key ids, algorithms, issuers and
    /// audiences the gateway accepts. The other refusals name their cause, which is no secret
    /// and helps whoever wires up a client.
    pub fn body(&self) -> String {
        match self {
            Refusal::Token(_) => "unauthorized\n".to_string(),
            other => format!("{other}\n"),
        }
    }

    /// A short reason for the log line and the `reason` label of `wsgate_handshakes_total`:
    /// one of a fixed set, never user data.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::Full => "max_connections",
            Refusal::FullForIp => "max_connections_per_ip",
            Refusal::FullForUser => "max_connections_per_user",
            Refusal::UpgradeRequired(_) => "not_an_upgrade",
            Refusal::BadUpgrade(_) => "bad_upgrade",
            Refusal::OriginMissing => "origin_missing",
            Refusal::OriginNotAllowed => "origin_not_allowed",
            Refusal::Token(e) => e.reason(),
        }
    }
}

/// A handshake that passed every check.
pub struct Admitted {
    pub identity: Identity,
    pub permit: ConnPermit,
    /// The session's place among its user's sessions on this node.
    pub place: SessionPlace,
    /// `Sec-WebSocket-Accept` value.
    pub accept_key: String,
    /// Whether the client offered `wsgate.v1` (then the answer names it).
    pub subprotocol: bool,
}

/// Everything the checks need besides the request.
pub struct Gate<'a> {
    pub live: &'a Live,
    pub rate: &'a HandshakeLimiter,
    pub conns: &'a std::sync::Arc<ConnectionCounter>,
    /// Holds the sessions per user, for `limits.max_connections_per_user`.
    pub hub: &'a std::sync::Arc<Hub>,
}

fn header_str<'h>(headers: &'h HeaderMap, name: &header::HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether a comma-separated header (all its instances) contains `token`, case-insensitively.
fn header_has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A request that passed the checks every WebSocket endpoint shares: per-IP rate, capacity
/// and a valid upgrade.
pub struct Upgrade {
    pub permit: ConnPermit,
    /// `Sec-WebSocket-Accept` value.
    pub accept_key: String,
}

/// Per-IP handshake rate → capacity → upgrade validity: the first checks of every WebSocket
/// endpoint (native and Pusher).
pub fn check_upgrade<B>(
    req: &Request<B>,
    ip: IpAddr,
    live: &Live,
    rate: &HandshakeLimiter,
    conns: &std::sync::Arc<ConnectionCounter>,
) -> Result<Upgrade, Refusal> {
    rate.check(ip)
        .map_err(|retry_after| Refusal::RateLimited { retry_after })?;
    let permit = conns
        .acquire(
            ip,
            live.server.max_connections,
            live.limits.max_connections_per_ip,
        )
        .map_err(|e| match e {
            CapacityRefusal::Total => Refusal::Full,
            CapacityRefusal::PerIp => Refusal::FullForIp,
        })?;
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(Refusal::BadUpgrade(
            "a WebSocket handshake is a GET request",
        ));
    }
    if req.version() != Version::HTTP_11 {
        return Err(Refusal::BadUpgrade("a WebSocket handshake needs HTTP/1.1"));
    }
    if !header_has_token(headers, &header::UPGRADE, "websocket")
        || !header_has_token(headers, &header::CONNECTION, "upgrade")
    {
        return Err(Refusal::UpgradeRequired(
            "this is the WebSocket endpoint: send Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if header_str(headers, &header::SEC_WEBSOCKET_VERSION).map(str::trim) != Some("13") {
        return Err(Refusal::UpgradeRequired("Sec-WebSocket-Version must be 13"));
    }
    let key = header_str(headers, &header::SEC_WEBSOCKET_KEY)
        .map(str::trim)
        .filter(|k| valid_ws_key(k))
        .ok_or(Refusal::BadUpgrade(
            "Sec-WebSocket-Key missing or malformed",
        ))?;
    Ok(Upgrade {
        permit,
        accept_key: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
    })
}

/// The request's Origin against `policy`.
pub fn check_origin(headers: &HeaderMap, policy: &OriginPolicy) -> Result<(), Refusal> {
    policy
        .check(header_str(headers, &header::ORIGIN))
        .map_err(|e| match e {
            OriginRefusal::Missing => Refusal::OriginMissing,
            OriginRefusal::NotAllowed => Refusal::OriginNotAllowed,
        })
}

/// Runs the native endpoint's checks in contract order.
pub fn check<B>(req: &Request<B>, ip: IpAddr, gate: &Gate<'_>) -> Result<Admitted, Refusal> {
    let upgrade = check_upgrade(req, ip, gate.live, gate.rate, gate.conns)?;
    let headers = req.headers();
    check_origin(headers, &gate.live.origin)?;
    let offered = offered_subprotocols(headers);
    let subprotocol = offered.contains(&SUBPROTOCOL);
    let token = find_token(req, &offered, &gate.live.cookie_name).map_err(Refusal::Token)?;
    if !offered.is_empty() && !subprotocol {
        return Err(Refusal::BadUpgrade("offer the wsgate.v1 subprotocol"));
    }
    let identity = gate.live.verifier.verify(token).map_err(Refusal::Token)?;
    let place = gate
        .hub
        .admit(&identity.user, gate.live.limits.max_connections_per_user)
        .map_err(|UserAtCap| Refusal::FullForUser)?;
    Ok(Admitted {
        identity,
        permit: upgrade.permit,
        place,
        accept_key: upgrade.accept_key,
        subprotocol,
    })
}

fn valid_ws_key(k: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(k)
        .is_ok_and(|raw| raw.len() == 16)
}

fn offered_subprotocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Finds the token in exactly one of: subprotocol, Authorization, `?token=`; the cookie only
/// when none of those carries one.
fn find_token<'r, B>(
    req: &'r Request<B>,
    offered: &[&'r str],
    cookie_name: &str,
) -> Result<&'r str, AuthError> {
    let mut found: Vec<&'r str> = offered
        .iter()
        .filter_map(|p| p.strip_prefix(BEARER_PREFIX))
        .collect();
    let headers = req.headers();
    for value in headers.get_all(header::AUTHORIZATION) {
        let v = value.to_str().map_err(|_| AuthError::Malformed)?;
        match v.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => found.push(t.trim()),
            _ => return Err(AuthError::Malformed),
        }
    }
    if let Some(query) = req.uri().query() {
        for pair in query.split('&') {
            if let Some(t) = pair.strip_prefix("token=") {
                found.push(t);
            }
        }
    }
    match found[..] {
        [] => {}
        [""] => return Err(AuthError::Missing),
        [token] => return Ok(token),
        _ => return Err(AuthError::Ambiguous),
    }
    if !cookie_name.is_empty() {
        for value in headers.get_all(header::COOKIE) {
            let Ok(v) = value.to_str() else { continue };
            for pair in v.split(';') {
                if let Some((name, t)) = pair.trim().split_once('=') {
                    if name == cookie_name && !t.is_empty() {
                        return Ok(t);
                    }
                }
            }
        }
    }
    Err(AuthError::Missing)
}

/// Headers for a `101 Switching Protocols`.
pub fn switching_headers(
    accept_key: &str,
    subprotocol: Option<&'static str>,
) -> Vec<(header::HeaderName, HeaderValue)> {
    let mut h = vec![
        (header::UPGRADE, HeaderValue::from_static("websocket")),
        (header::CONNECTION, HeaderValue::from_static("Upgrade")),
    ];
    if let Ok(v) = HeaderValue::from_str(accept_key) {
        h.push((header::SEC_WEBSOCKET_ACCEPT, v));
    }
    if let Some(p) = subprotocol {
        h.push((header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p)));
    }
    h
}

/// Removes `token=…` from a query string, for anything that wants to show a URL.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|p| {
            if p.starts_with("token=") {
                "token=<redacted>"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(builder: http::request::Builder) -> Request<()> {
        builder.body(()).expect("request")
    }

    #[test]
    fn token_is_found_in_each_place_and_only_one() {
        let r = req(Request::get("/ws?token=abc"));
        assert_eq!(find_token(&r, &[], ""), Ok("abc"));
        let r = req(Request::get("/ws").header("authorization", "Bearer xyz"));
        assert_eq!(find_token(&r, &[], ""), Ok("xyz"));
        let r = req(Request::get("/ws"));
        assert_eq!(find_token(&r, &["wsgate.v1", "bearer.jwt"], ""), Ok("jwt"));
        let r = req(Request::get("/ws?token=abc").header("authorization", "Bearer xyz"));
        assert_eq!(find_token(&r, &[], ""), Err(AuthError::Ambiguous));
        let r = req(Request::get("/ws?token=abc"));
        assert_eq!(find_token(&r, &["bearer.x"], ""), Err(AuthError::Ambiguous));
        let r = req(Request::get("/ws"));
        assert_eq!(find_token(&r, &[], ""), Err(AuthError::Missing));
    }

    #[test]
    fn cookie_is_used_only_when_nothing_else_is() {
        let r = req(Request::get("/ws").header("cookie", "a=1; wsgate=cookiejwt"));
        assert_eq!(find_token(&r, &[], "wsgate"), Ok("cookiejwt"));
        assert_eq!(find_token(&r, &[], ""), Err(AuthError::Missing));
        let r = req(Request::get("/ws?token=explicit").header("cookie", "wsgate=old"));
        assert_eq!(find_token(&r, &[], "wsgate"), Ok("explicit"));
    }

    #[test]
    fn a_token_refusal_tells_the_client_nothing_more() {
        for e in [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::BadSignature,
            AuthError::UnknownKid,
            AuthError::AlgorithmNotAllowed,
            AuthError::BadClaims("sub is empty"),
        ] {
            let refusal = Refusal::Token(e);
            assert_eq!(refusal.body(), "unauthorized\n");
            assert_eq!(refusal.reason(), e.reason());
        }
        assert_eq!(Refusal::OriginNotAllowed.body(), "Origin not allowed\n");
    }

    #[test]
    fn query_redaction_hides_the_token() {
        assert_eq!(
            redact_query("a=1&token=secret&b=2"),
            "a=1&token=<redacted>&b=2"
        );
    }
}
