//! JWT → [`Identity`]: the only place tokens are decoded.
//!
//! Algorithms are an allowlist (`none` cannot even be parsed); the HS secret serves HS*
//! tokens, public keys are chosen by the header's `kid` with the algorithm pinned per key, so
//! keys rotate by adding the new `kid` before the old one is retired. `exp` and `sub` are
//! always required; `iss`/`aud` when configured; `nbf` is checked. Errors say which check
//! failed and never echo the token.
//!
//! `sub` and `name` are shown to other users and written to logs, so they may not hold
//! anything that is invisible or breaks a line ([`is_hidden_or_control`]), and a `sub` may not
//! read as one of the server's own `@` names.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, ConfigError};

/// Longest accepted `sub` / `name`, in bytes: they are shown to every member of a room.
pub const MAX_SUB_BYTES: usize = 128;
pub const MAX_NAME_BYTES: usize = 128;
/// Most room patterns one token may carry.
pub const MAX_ROOM_PATTERNS: usize = 256;

/// An authenticated user, as the gateway knows it after the handshake.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`: the user id, shown to others as `from`.
    pub user: Arc<str>,
    pub name: Option<Arc<str>>,
    pub rooms: RoomAccess,
    /// `exp` as Unix seconds.
    pub expires_at: u64,
}

/// Which rooms a token lets its holder join (the `rooms` claim).
#[derive(Debug, Clone)]
pub enum RoomAccess {
    /// No `rooms` claim: every room.
    All,
    Patterns(Arc<[RoomPattern]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    Exact(String),
    Prefix(String),
}

impl RoomAccess {
    pub fn allows(&self, room: &str) -> bool {
        match self {
            RoomAccess::All => true,
            RoomAccess::Patterns(ps) => ps.iter().any(|p| match p {
                RoomPattern::Exact(r) => r == room,
                RoomPattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
            }),
        }
    }

    fn from_claim(claim: Option<Vec<String>>) -> Result<Self, AuthError> {
        let Some(list) = claim else {
            return Ok(RoomAccess::All);
        };
        if list.len() > MAX_ROOM_PATTERNS {
            return Err(AuthError::BadClaims("too many room patterns"));
        }
        let patterns = list
            .into_iter()
            .map(|p| match p.strip_suffix('*') {
                Some(prefix) => RoomPattern::Prefix(prefix.to_string()),
                None => RoomPattern::Exact(p),
            })
            .collect();
        Ok(RoomAccess::Patterns(patterns))
    }
}

/// Why a token was refused. The message is safe to send to the client and to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token in the Sec-WebSocket-Protocol header (bearer.<jwt>), an Authorization: Bearer header, the token query parameter or the configured cookie")]
    Missing,
    #[error("token given in more than one place")]
    Ambiguous,
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    BadIssuer,
    #[error("token audience is not accepted")]
    BadAudience,
    #[error("token key id (kid) is unknown")]
    UnknownKid,
    #[error("token claims are invalid: {0}")]
    BadClaims(&'static str),
}

impl AuthError {
    /// Short reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Ambiguous => "token_ambiguous",
            AuthError::Malformed => "token_malformed",
            AuthError::AlgorithmNotAllowed => "token_alg_not_allowed",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::BadIssuer => "token_bad_issuer",
            AuthError::BadAudience => "token_bad_audience",
            AuthError::UnknownKid => "token_unknown_kid",
            AuthError::BadClaims(_) => "token_bad_claims",
        }
    }
}

fn cfg_err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Claims the gateway reads; everything else in the token is ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// The compiled `[auth]` section.
pub struct Verifier {
    allowed: Vec<Algorithm>,
    /// Shared secret for HS* tokens, with one pinned `Validation` per allowed HS algorithm.
    hs: Option<(DecodingKey, HashMap<Algorithm, Validation>)>,
    /// Public keys by `kid`, each with its algorithm pinned.
    keys: HashMap<String, (DecodingKey, Validation)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("allowed", &self.allowed)
            .field("hs", &self.hs.is_some())
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl Verifier {
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        let mut allowed = Vec::new();
        for name in &cfg.algorithms {
            let alg = Algorithm::from_str(name).map_err(|_| {
                cfg_err(
                    "auth.algorithms",
                    format!("{name:?} is not a supported algorithm (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"),
                )
            })?;
            allowed.push(alg);
        }
        let base = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = cfg.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            if !cfg.issuer.is_empty() {
                v.set_issuer(&[cfg.issuer.as_str()]);
                required.push("iss");
            }
            if cfg.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&[cfg.audience.as_str()]);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let hs_algs: Vec<Algorithm> = allowed.iter().copied().filter(|a| is_hmac(*a)).collect();
        let hs = if hs_algs.is_empty() {
            None
        } else {
            let secret = cfg.hs_secret()?;
            if secret.is_empty() {
                return Err(cfg_err(
                    "auth.hs_secret",
                    "is empty while an HS algorithm is allowed",
                ));
            }
            let validations = hs_algs.iter().map(|a| (*a, base(*a))).collect();
            Some((DecodingKey::from_secret(&secret), validations))
        };
        let mut keys = HashMap::new();
        for pk in &cfg.public_keys {
            let alg = Algorithm::from_str(&pk.alg).map_err(|_| {
                cfg_err(
                    "auth.public_keys",
                    format!(
                        "kid {:?}: {:?} is not a supported algorithm",
                        pk.kid, pk.alg
                    ),
                )
            })?;
            if is_hmac(alg) {
                return Err(cfg_err(
                    "auth.public_keys",
                    format!(
                        "kid {:?}: HS algorithms use auth.hs_secret, not a key file",
                        pk.kid
                    ),
                ));
            }
            if !allowed.contains(&alg) {
                return Err(cfg_err(
                    "auth.public_keys",
                    format!("kid {:?}: {} is not in auth.algorithms", pk.kid, pk.alg),
                ));
            }
            let pem = std::fs::read(&pk.file).map_err(|e| {
                cfg_err(
                    "auth.public_keys",
                    format!("kid {:?}: cannot read {}: {e}", pk.kid, pk.file.display()),
                )
            })?;
            let key = match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| {
                cfg_err(
                    "auth.public_keys",
                    format!(
                        "kid {:?}: {} is not a {} public key in PEM: {e}",
                        pk.kid,
                        pk.file.display(),
                        pk.alg
                    ),
                )
            })?;
            if keys.insert(pk.kid.clone(), (key, base(alg))).is_some() {
                return Err(cfg_err(
                    "auth.public_keys",
                    format!("kid {:?} is listed twice", pk.kid),
                ));
            }
        }
        if hs.is_none() && keys.is_empty() {
            return Err(cfg_err(
                "auth.public_keys",
                "no HS algorithm is allowed and no public key is configured: no token could ever be valid",
            ));
        }
        Ok(Verifier { allowed, hs, keys })
    }

    /// Verifies a token and returns who it belongs to.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.allowed.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let (key, validation) = match (&header.kid, is_hmac(header.alg)) {
            (Some(kid), _) if self.keys.contains_key(kid) => {
                let (key, validation) = &self.keys[kid];
                if !validation.algorithms.contains(&header.alg) {
                    return Err(AuthError::AlgorithmNotAllowed);
                }
                (key, validation)
            }
            (_, true) => {
                let (key, validations) = self.hs.as_ref().ok_or(AuthError::AlgorithmNotAllowed)?;
                let v = validations
                    .get(&header.alg)
                    .ok_or(AuthError::AlgorithmNotAllowed)?;
                (key, v)
            }
            (Some(_), false) => return Err(AuthError::UnknownKid),
            (None, false) => {
                // Without a kid, an asymmetric token is accepted only when exactly one key
                // has its algorithm: rotation needs a kid.
                let mut candidates = self
                    .keys
                    .values()
                    .filter(|(_, v)| v.algorithms.contains(&header.alg));
                match (candidates.next(), candidates.next()) {
                    (Some((k, v)), None) => (k, v),
                    _ => return Err(AuthError::UnknownKid),
                }
            }
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::BadIssuer,
                ErrorKind::InvalidAudience => AuthError::BadAudience,
                ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                    "exp" => AuthError::BadClaims("exp is required"),
                    "sub" => AuthError::BadClaims("sub is required"),
                    "iss" => AuthError::BadIssuer,
                    "aud" => AuthError::BadAudience,
                    _ => AuthError::BadClaims("a required claim is missing"),
                },
                ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) => {
                    AuthError::BadClaims("a claim has the wrong type")
                }
                _ => AuthError::Malformed,
            })?;
        identity_from(data.claims)
    }
}

/// Whether `c` must never be shown raw: it could break a log line, reorder or hide the text
/// around it, or pass for something else. That is every control character (C0 with `\n` and
/// `\t`, DEL, C1), every format character (Unicode category Cf: zero-width marks, bidi
/// embeddings, overrides and isolates, the Arabic letter mark, the BOM, invisible operators) and
/// the line and paragraph separators (U+2028, U+2029), which some viewers render as a new line.
pub fn is_hidden_or_control(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    c.is_control()
        || matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
}

/// Whether a `sub` would read as the server's own sender (`@server`): it starts with `@` once
/// compatibility forms are folded (NFKC turns U+FF20 FULLWIDTH and U+FE6B SMALL COMMERCIAL AT
/// into `@`) and leading spaces are dropped.
fn poses_as_server(sub: &str) -> bool {
    use unicode_normalization::UnicodeNormalization;
    sub.nfkc()
        .find(|c| !c.is_whitespace())
        .is_some_and(|c| c == '@')
}

/// Checks a claim others get to see (`sub`, `name`): at most `max` bytes, nothing hidden or
/// control.
fn check_shown(value: &str, max: usize, refusal: &'static str) -> Result<(), AuthError> {
    if value.len() > max || value.chars().any(is_hidden_or_control) {
        return Err(AuthError::BadClaims(refusal));
    }
    Ok(())
}

fn identity_from(c: Claims) -> Result<Identity, AuthError> {
    if c.sub.is_empty() {
        return Err(AuthError::BadClaims("sub is empty"));
    }
    check_shown(
        &c.sub,
        MAX_SUB_BYTES,
        "sub is longer than 128 bytes or has control, format or line-separator characters",
    )?;
    if poses_as_server(&c.sub) {
        return Err(AuthError::BadClaims(
            "sub must not start with '@' or a look-alike (reserved for the server)",
        ));
    }
    if let Some(name) = &c.name {
        check_shown(
            name,
            MAX_NAME_BYTES,
            "name is longer than 128 bytes or has control, format or line-separator characters",
        )?;
    }
    Ok(Identity {
        user: Arc::from(c.sub),
        name: c.name.map(Arc::from),
        rooms: RoomAccess::from_claim(c.rooms)?,
        expires_at: c.exp,
    })
}

/// Claims written by [`mint_hs256`] (`wsgate token` and the load generator).
#[derive(Debug, Serialize)]
pub struct MintClaims<'a> {
    pub sub: &'a str,
    pub exp: u64,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a str>,
}

/// Signs claims with an HS256 secret.
pub fn mint_hs256(
    secret: &[u8],
    claims: &MintClaims<'_>,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        let cfg = AuthConfig {
            hs_secret: "s3cret".into(),
            ..AuthConfig::default()
        };
        Verifier::from_config(&cfg).expect("valid")
    }

    fn token(sub: &str, exp: u64, rooms: Option<&[String]>) -> String {
        mint_hs256(
            b"s3cret",
            &MintClaims {
                sub,
                exp,
                iat: unix_now(),
                name: None,
                rooms,
                iss: None,
                aud: None,
            },
        )
        .expect("mint")
    }

    #[test]
    fn valid_token_gives_identity() {
        let rooms = vec!["lobby".to_string(), "team:42:*".to_string()];
        let id = verifier()
            .verify(&token("alice", unix_now() + 60, Some(&rooms)))
            .expect("valid");
        assert_eq!(&*id.user, "alice");
        assert!(id.rooms.allows("lobby"));
        assert!(id.rooms.allows("team:42:"));
        assert!(id.rooms.allows("team:42:x"));
        assert!(!id.rooms.allows("team:43:x"));
        assert!(!id.rooms.allows("lobby2"));
    }

    #[test]
    fn empty_rooms_claim_allows_nothing() {
        let id = verifier()
            .verify(&token("bob", unix_now() + 60, Some(&[])))
            .expect("valid");
        assert!(!id.rooms.allows("lobby"));
    }

    #[test]
    fn refusals_name_the_check() {
        let v = verifier();
        assert_eq!(v.verify("garbage").unwrap_err(), AuthError::Malformed);
        assert_eq!(
            v.verify(&token("a", unix_now() - 3600, None)).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            v.verify(&token("@server", unix_now() + 60, None))
                .unwrap_err()
                .reason(),
            "token_bad_claims"
        );
        let other = mint_hs256(
            b"other",
            &MintClaims {
                sub: "a",
                exp: unix_now() + 60,
                iat: 0,
                name: None,
                rooms: None,
                iss: None,
                aud: None,
            },
        )
        .expect("mint");
        assert_eq!(v.verify(&other).unwrap_err(), AuthError::BadSignature);
    }

    fn token_named(sub: &str, name: Option<&str>) -> String {
        mint_hs256(
            b"s3cret",
            &MintClaims {
                sub,
                exp: unix_now() + 60,
                iat: unix_now(),
                name,
                rooms: None,
                iss: None,
                aud: None,
            },
        )
        .expect("mint")
    }

    /// Characters that could forge a log line, hide or reorder text, or pass for another user.
    const HIDDEN: [&str; 17] = [
        "\n", "\t", "\r", "\u{1b}", "\u{7f}", "\u{85}", "\u{9b}", "\u{200b}", "\u{200d}",
        "\u{200f}", "\u{202e}", "\u{2060}", "\u{2064}", "\u{2067}", "\u{feff}", "\u{61c}",
        "\u{2028}",
    ];

    #[test]
    fn shown_claims_refuse_hidden_and_control_characters() {
        let v = verifier();
        for c in HIDDEN {
            let sub = format!("ali{c}ce");
            assert!(
                matches!(
                    v.verify(&token_named(&sub, None)),
                    Err(AuthError::BadClaims(_))
                ),
                "sub {sub:?} accepted"
            );
            let name = format!("Ali{c}ce");
            assert!(
                matches!(
                    v.verify(&token_named("alice", Some(&name))),
                    Err(AuthError::BadClaims(_))
                ),
                "name {name:?} accepted"
            );
        }
        for (sub, name) in [
            ("alice", "Alice Smith"),
            ("zoë", "Zoë"),
            ("李雷", "李雷"),
            ("a@b.example", "@alice"),
            ("user:42", ""),
        ] {
            let id = v.verify(&token_named(sub, Some(name))).expect(sub);
            assert_eq!(&*id.user, sub);
        }
    }

    #[test]
    fn sub_that_reads_as_the_server_is_refused() {
        let v = verifier();
        for sub in [
            "@server",
            "\u{ff20}server",
            "\u{fe6b}server",
            " @server",
            "\u{3000}@x",
        ] {
            assert!(
                matches!(
                    v.verify(&token_named(sub, None)),
                    Err(AuthError::BadClaims(_))
                ),
                "sub {sub:?} accepted"
            );
        }
    }

    #[test]
    fn alg_none_is_malformed() {
        // header {"alg":"none","typ":"JWT"}, payload {"sub":"a","exp":9999999999}
        let t = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(verifier().verify(t).unwrap_err(), AuthError::Malformed);
    }
}
