//! Pusher's signatures: HMAC-SHA256 in lowercase hex, keyed with the app secret.
//!
//! - Channel auth (private, presence): `auth` is `<key>:<hmac("<socket_id>:<channel>")>`, and
//!   for presence `<hmac("<socket_id>:<channel>:<channel_data>")>` over the exact
//!   `channel_data` string the client sent.
//! - User sign-in (`pusher:signin`): `auth` is `<key>:<hmac("<socket_id>::user::<user_data>")>`
//!   over the exact `user_data` string the client sent.
//! - HTTP API requests: `auth_signature = hmac("<METHOD>\n<path>\n<query>")`, the query being
//!   every parameter but `auth_signature`, decoded, sorted by name, joined as `k=v` with `&`.
//!   `auth_timestamp` within [`MAX_CLOCK_SKEW`] of now, and `body_md5` the MD5 of the body
//!   when there is one.
//!
//! Every comparison of a signature is constant-time.

use aws_lc_rs::hmac;
use md5::Digest;
use subtle::ConstantTimeEq;

use crate::pusher::PusherApp;

/// How far `auth_timestamp` may be from the gateway's clock (Pusher's own rule: 600 s).
pub const MAX_CLOCK_SKEW: u64 = 600;

/// `hmac_sha256(secret, message)` as lowercase hex.
pub fn hmac_hex(secret: &[u8], message: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hex(hmac::sign(&key, message.as_bytes()).as_ref())
}

/// MD5 of `body` as lowercase hex (`body_md5`).
pub fn md5_hex(body: &[u8]) -> String {
    hex(&md5::Md5::digest(body))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Constant-time equality of two signatures (the length is no secret).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `auth` (`<key>:<signature>`) signs `socket_id:channel[:channel_data]` for `app`.
pub fn channel_auth_ok(
    app: &PusherApp,
    auth: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> bool {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    signs(app, auth, &message)
}

/// Whether `auth` (`<key>:<signature>`) signs `socket_id::user::user_data` for `app`.
pub fn user_auth_ok(app: &PusherApp, auth: &str, socket_id: &str, user_data: &str) -> bool {
    signs(app, auth, &format!("{socket_id}::user::{user_data}"))
}

/// Whether `auth` is `<the app's key>:<hmac(message)>`.
fn signs(app: &PusherApp, auth: &str, message: &str) -> bool {
    let Some((key, signature)) = auth.split_once(':') else {
        return false;
    };
    key == app.key && same(&hmac_hex(app.secret(), message), signature)
}

/// Why an HTTP API request's signature was refused (each a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("auth_key, auth_timestamp, auth_version and auth_signature are required")]
    Missing,
    #[error("auth_key does not match the app")]
    WrongKey,
    #[error("auth_timestamp is more than 600 s from the server's clock")]
    Stale,
    #[error("body_md5 does not match the body")]
    BodyMd5,
    #[error("invalid signature")]
    BadSignature,
}

/// Checks an HTTP API request of `app`: `params` are its decoded query parameters.
pub fn verify_request(
    app: &PusherApp,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    now: u64,
) -> Result<(), SignError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(key), Some(timestamp), Some(_version), Some(signature)) = (
        get("auth_key"),
        get("auth_timestamp"),
        get("auth_version"),
        get("auth_signature"),
    ) else {
        return Err(SignError::Missing);
    };
    if key != app.key {
        return Err(SignError::WrongKey);
    }
    let ts: u64 = timestamp.parse().map_err(|_| SignError::Stale)?;
    if ts.abs_diff(now) > MAX_CLOCK_SKEW {
        return Err(SignError::Stale);
    }
    match get("body_md5") {
        Some(md5) if !same(&md5_hex(body), &md5.to_ascii_lowercase()) => {
            return Err(SignError::BodyMd5)
        }
        None if !body.is_empty() => return Err(SignError::BodyMd5),
        _ => {}
    }
    let mut signed: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    signed.sort();
    let query: Vec<String> = signed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let message = format!("{method}\n{path}\n{}", query.join("&"));
    if same(&hmac_hex(app.secret(), &message), signature) {
        Ok(())
    } else {
        Err(SignError::BadSignature)
    }
}

/// A query string's parameters, percent-decoded (what a Guzzle or curl client sends encoded,
/// the Node SDK does not). A name repeated keeps its first value.
pub fn query_params(query: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let k = decode(k);
        if !out.iter().any(|(name, _)| *name == k) {
            out.push((k, decode(v)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OriginConfig, PusherAppConfig, PusherConfig};
    use crate::pusher::PusherApps;

    fn app() -> std::sync::Arc<PusherApp> {
        let cfg = PusherConfig {
            apps: vec![PusherAppConfig {
                id: "3".into(),
                key: "278d425bdf160c739803".into(),
                secret: "7ad3773142a6692b25b8".into(),
                ..PusherAppConfig::default()
            }],
        };
        let apps = PusherApps::from_config(&cfg, &OriginConfig::default()).unwrap();
        apps.by_id("3").unwrap().clone()
    }

    #[test]
    fn channel_auth_matches_pushers_documented_example() {
        // From Pusher's "authorizing connections" documentation.
        let app = app();
        let auth =
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert!(channel_auth_ok(
            &app,
            auth,
            "1234.1234",
            "private-foobar",
            None
        ));
        assert!(!channel_auth_ok(
            &app,
            auth,
            "1234.1235",
            "private-foobar",
            None
        ));
        assert!(!channel_auth_ok(
            &app,
            "other:58df8b",
            "1234.1234",
            "private-foobar",
            None
        ));
        assert!(!channel_auth_ok(
            &app,
            "no-colon",
            "1234.1234",
            "private-foobar",
            None
        ));
    }

    #[test]
    fn user_auth_signs_the_socket_and_the_exact_user_data() {
        let app = app();
        let data = r#"{"id":"42"}"#;
        let sig = hmac_hex(app.secret(), &format!("1.2::user::{data}"));
        let auth = format!("{}:{sig}", app.key);
        assert!(user_auth_ok(&app, &auth, "1.2", data));
        assert!(!user_auth_ok(&app, &auth, "1.3", data));
        assert!(!user_auth_ok(&app, &auth, "1.2", r#"{"id": "42"}"#));
        assert!(!user_auth_ok(&app, &format!("other:{sig}"), "1.2", data));
    }

    #[test]
    fn request_signatures_match_pushers_documented_example() {
        // From Pusher's HTTP API reference ("Generating authentication signatures").
        let app = app();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        let mut params = query_params(
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f",
        );
        params.push((
            "auth_signature".into(),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c".into(),
        ));
        let path = "/apps/3/events";
        assert_eq!(
            verify_request(&app, "POST", path, &params, body, 1353088179),
            Ok(())
        );
        assert_eq!(
            verify_request(&app, "POST", path, &params, body, 1353088179 + 601),
            Err(SignError::Stale)
        );
        assert_eq!(
            verify_request(&app, "POST", path, &params, b"{}", 1353088179),
            Err(SignError::BodyMd5)
        );
        assert_eq!(
            verify_request(&app, "POST", "/apps/4/events", &params, body, 1353088179),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn an_encoded_query_is_decoded_before_signing() {
        assert_eq!(
            query_params("info=user_count%2Csubscription_count&a=1&a=2"),
            vec![
                (
                    "info".to_string(),
                    "user_count,subscription_count".to_string()
                ),
                ("a".to_string(), "1".to_string())
            ]
        );
    }
}
