//! An HTTP request, written as text (request line, then `Name: value` lines), through the
//! gateway's whole pre-`101` gate (`gateway::handshake::check`): upgrade validation, the Origin
//! allowlist (with a wildcard entry), token extraction from the subprotocol, Authorization,
//! the query and a cookie, and verification. `$TOKEN` in the text stands for a valid token.
//!
//! Invariants: no panic; a refusal maps to exactly one status, the one its reason names;
//! two or more token places are never admitted; an admitted request is a GET over HTTP/1.1
//! with a valid upgrade, an Origin the allowlist names (checked here independently) and
//! exactly one token place (or none and the cookie).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use libfuzzer_sys::fuzz_target;
use wsgate::auth::{mint_hs256, unix_now, AuthError, MintClaims};
use wsgate::broker::{MemoryBroker, RoomSettings};
use wsgate::config::Config;
use wsgate::gateway::handshake::{check, Gate, Refusal};
use wsgate::hub::Hub;
use wsgate::limits::{ConnectionCounter, HandshakeLimiter};
use wsgate::live::Live;
use wsgate::metrics::Metrics;

const SECRET: &str = "fuzzing-only-secret-0123456789abcdef";
const COOKIE: &str = "wsgate";
const ALLOWED: [&str; 3] = [
    "https://chat.example.com",
    "https://*.example.org",
    "http://localhost:8080",
];

struct World {
    live: Live,
    rate: HandshakeLimiter,
    conns: Arc<ConnectionCounter>,
    hub: Arc<Hub>,
    token: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut cfg = Config::default();
        cfg.auth.hs_secret = SECRET.into();
        cfg.auth.cookie_name = COOKIE.into();
        cfg.origin.allowed = ALLOWED.iter().map(|s| s.to_string()).collect();
        let live = Live::from_config(&cfg).expect("live settings");
        let broker = Arc::new(MemoryBroker::new(
            RoomSettings {
                history_size: 1,
                history_ttl: Duration::from_secs(1),
                history_max_bytes: 1 << 20,
                presence_limit: 10,
            },
            wsgate::broker::memory::NodeIdentity {
                name: "fuzz".into(),
                started_at: 0,
            },
        ));
        let hub = Hub::new(broker, Arc::new(Metrics::new()), 16, 1);
        let token = mint_hs256(
            SECRET.as_bytes(),
            &MintClaims {
                sub: "alice",
                exp: unix_now() + 24 * 3600,
                iat: unix_now(),
                name: None,
                rooms: None,
                iss: None,
                aud: None,
            },
        )
        .expect("mint");
        World {
            live,
            rate: HandshakeLimiter::new(u32::MAX),
            conns: Arc::default(),
            hub,
            token,
        }
    })
}

/// Builds the request the text describes; `None` when its request line is unusable.
/// Header lines that are not valid HTTP are left out.
fn request(bytes: &[u8], token: &str) -> Option<Request<()>> {
    let text = bytes
        .split(|b| *b == b'$')
        .enumerate()
        .fold(Vec::new(), |mut out, (i, part)| {
            if i > 0 {
                match part.strip_prefix(b"TOKEN") {
                    Some(rest) => {
                        out.extend_from_slice(token.as_bytes());
                        out.extend_from_slice(rest);
                        return out;
                    }
                    None => out.push(b'$'),
                }
            }
            out.extend_from_slice(part);
            out
        });
    let mut lines = text
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next()?;
    let mut parts = first.splitn(3, |b| *b == b' ');
    let method = Method::from_bytes(parts.next()?).ok()?;
    let uri = Uri::try_from(parts.next()?).ok()?;
    let version = match parts.next().unwrap_or(b"HTTP/1.1") {
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/2" => Version::HTTP_2,
        _ => Version::HTTP_09,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .ok()?;
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            req.headers_mut().append(n, v);
        }
    }
    Some(req)
}

/// Whether `origin` is one the allowlist names, by a separate reading of the same rules:
/// scheme and host case-insensitive, the default port optional, `*.example.org` one or more
/// labels before `.example.org`.
fn origin_allowed(origin: &str) -> bool {
    let o = origin.to_ascii_lowercase();
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if let Some(rest) = o.strip_prefix("https://") {
        let host = rest.strip_suffix(":443").unwrap_or(rest);
        if host == "chat.example.com" {
            return true;
        }
        if let Some(sub) = host.strip_suffix(".example.org") {
            return host_ok(sub) && !sub.ends_with('.');
        }
        return false;
    }
    o == "http://localhost:8080"
}

/// The places a token is given in, counted separately from the gateway's own search:
/// `bearer.` subprotocol entries, Authorization headers and `token=` query pairs.
fn token_places(req: &Request<()>) -> usize {
    let h = req.headers();
    let subprotocols = h
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|p| p.trim().starts_with("bearer."))
        .count();
    let authorization = h.get_all("authorization").iter().count();
    let query = req.uri().query().map_or(0, |q| {
        q.split('&').filter(|p| p.starts_with("token=")).count()
    });
    subprotocols + authorization + query
}

/// The one status each refusal reason answers with.
fn status_for(reason: &str) -> StatusCode {
    match reason {
        "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        "max_connections" | "max_connections_per_ip" | "max_connections_per_user" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "not_an_upgrade" => StatusCode::UPGRADE_REQUIRED,
        "bad_upgrade" => StatusCode::BAD_REQUEST,
        "origin_missing" | "origin_not_allowed" => StatusCode::FORBIDDEN,
        r if r.starts_with("token_") => StatusCode::UNAUTHORIZED,
        other => panic!("unknown refusal reason {other:?}"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let w = world();
    let Some(req) = request(bytes, &w.token) else {
        return;
    };
    let gate = Gate {
        live: &w.live,
        rate: &w.rate,
        conns: &w.conns,
        hub: &w.hub,
    };
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let places = token_places(&req);
    match check(&req, ip, &gate) {
        Err(refusal) => {
            let status = refusal.status();
            assert_eq!(status, status_for(refusal.reason()), "{refusal:?}");
            match &refusal {
                Refusal::Token(e) => {
                    assert_eq!(refusal.body(), "unauthorized\n");
                    assert_eq!(e.reason(), refusal.reason());
                    if *e == AuthError::Ambiguous {
                        assert!(places >= 2, "ambiguous with {places} places");
                    }
                }
                other => assert!(!other.body().contains(&w.token)),
            }
        }
        Ok(admitted) => {
            assert!(places <= 1, "admitted with the token in {places} places");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.version(), Version::HTTP_11);
            let h = req.headers();
            let origin = h.get("origin").and_then(|v| v.to_str().ok());
            assert!(
                origin.is_some_and(origin_allowed),
                "admitted Origin {origin:?}"
            );
            if places == 0 {
                let cookie = h
                    .get_all("cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains(&format!("{COOKIE}={}", w.token)));
                assert!(cookie, "admitted without a token place or cookie");
            }
            assert_eq!(&*admitted.identity.user, "alice");
            let offered: Vec<String> = h
                .get_all("sec-websocket-protocol")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            assert_eq!(
                admitted.subprotocol,
                offered.iter().any(|p| p == "wsgate.v1")
            );
            assert!(offered.is_empty() || admitted.subprotocol);
            assert_eq!(admitted.accept_key.len(), 28);
        }
    }
});
