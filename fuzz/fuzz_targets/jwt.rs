//! Tokens against the gateway's verifier (`auth::Verifier`) configured with HS256, two ES256
//! keys and an EdDSA key (fixed keys in `fuzz/keys/`, made for fuzzing only).
//!
//! Two kinds of input:
//! - any text: a token as a client sends it. It must never be accepted unless its signature
//!   verifies, by a separate check here, under one configured key of the header's algorithm.
//! - `SIGN <key>\n<header JSON>\n<claims JSON>`: the harness signs the two (base64url-encoded)
//!   with that key, so the fuzzer explores headers and claims behind a valid signature.
//!   Accepted then only when the header names the key's algorithm (and its `kid`, if it names
//!   a configured one), and the claims pass the rules: `sub` non-empty, at most 128 bytes,
//!   nothing hidden, not posing as `@server`; `exp` not past; `iss` and `aud` the configured.
//!
//! Never panics.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wsgate::auth::{is_hidden_or_control, unix_now, Verifier};
use wsgate::config::{AuthConfig, PublicKeyConfig};

const SECRET: &[u8] = b"fuzzing-only-secret-0123456789abcdef";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "wsgate";
const LEEWAY: u64 = 30;

/// A configured key: its `kid` (`hs` for the shared secret), algorithm and signer.
struct Key {
    kid: &'static str,
    alg: &'static str,
    signer: Signer,
    public: Vec<u8>,
}

enum Signer {
    Hmac(hmac::Key),
    Ecdsa(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct World {
    verifier: Verifier,
    keys: Vec<Key>,
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).expect("PEM body")
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("wsgate-fuzz-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let public = [
            ("ec-a", "ES256", include_str!("../keys/es256-a.pub")),
            ("ec-b", "ES256", include_str!("../keys/es256-b.pub")),
            ("ed", "EdDSA", include_str!("../keys/ed25519.pub")),
        ];
        let mut public_keys = Vec::new();
        for (kid, alg, pem) in public {
            let file = dir.join(format!("{kid}.pem"));
            std::fs::write(&file, pem).expect("write key");
            public_keys.push(PublicKeyConfig {
                kid: kid.into(),
                alg: alg.into(),
                file,
            });
        }
        let cfg = AuthConfig {
            algorithms: vec!["HS256".into(), "ES256".into(), "EdDSA".into()],
            hs_secret: String::from_utf8(SECRET.to_vec()).expect("ascii"),
            public_keys,
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway: Duration::from_secs(LEEWAY),
            ..AuthConfig::default()
        };
        let verifier = Verifier::from_config(&cfg).expect("verifier");
        let _ = std::fs::remove_dir_all(&dir);
        let ec = |pem: &str| {
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pem_der(pem))
                .expect("EC key")
        };
        let ec_a = ec(include_str!("../keys/es256-a.key"));
        let ec_b = ec(include_str!("../keys/es256-b.key"));
        let ed = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pem_der(include_str!(
            "../keys/ed25519.key"
        )))
        .expect("Ed25519 key");
        let keys = vec![
            Key {
                kid: "hs",
                alg: "HS256",
                signer: Signer::Hmac(hmac::Key::new(hmac::HMAC_SHA256, SECRET)),
                public: SECRET.to_vec(),
            },
            Key {
                kid: "ec-a",
                alg: "ES256",
                public: ec_a.public_key().as_ref().to_vec(),
                signer: Signer::Ecdsa(ec_a),
            },
            Key {
                kid: "ec-b",
                alg: "ES256",
                public: ec_b.public_key().as_ref().to_vec(),
                signer: Signer::Ecdsa(ec_b),
            },
            Key {
                kid: "ed",
                alg: "EdDSA",
                public: ed.public_key().as_ref().to_vec(),
                signer: Signer::Ed(ed),
            },
        ];
        World { verifier, keys }
    })
}

impl Key {
    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Hmac(k) => hmac::sign(k, input).as_ref().to_vec(),
            Signer::Ecdsa(k) => k
                .sign(&SystemRandom::new(), input)
                .expect("sign")
                .as_ref()
                .to_vec(),
            Signer::Ed(k) => k.sign(input).as_ref().to_vec(),
        }
    }

    /// Whether `sig` is this key's signature of `input`: checked here, not by the verifier.
    fn verifies(&self, input: &[u8], sig: &[u8]) -> bool {
        match &self.signer {
            Signer::Hmac(k) => hmac::verify(k, input, sig).is_ok(),
            Signer::Ecdsa(_) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.public)
                    .verify(input, sig)
                    .is_ok()
            }
            Signer::Ed(_) => UnparsedPublicKey::new(&signature::ED25519, &self.public)
                .verify(input, sig)
                .is_ok(),
        }
    }
}

/// The segments of a compact token, decoded: (signing input, header, claims, signature).
fn split(token: &str) -> Option<(&str, Value, Value, Vec<u8>)> {
    let (input, sig) = token.rsplit_once('.')?;
    let (header, claims) = input.split_once('.')?;
    let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    Some((input, header, claims, URL_SAFE_NO_PAD.decode(sig).ok()?))
}

/// Checks an accepted token's claims against the rules, read from the claims JSON itself.
fn check_claims(claims: &Value, identity: &wsgate::auth::Identity) {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .expect("accepted without a string sub");
    assert!(!sub.is_empty() && sub.len() <= 128, "sub {sub:?}");
    assert!(!sub.chars().any(is_hidden_or_control), "sub {sub:?}");
    assert!(!sub.trim_start().starts_with('@'), "sub {sub:?}");
    assert_eq!(&*identity.user, sub);
    if let Some(name) = claims.get("name").and_then(Value::as_str) {
        assert!(
            name.len() <= 128 && !name.chars().any(is_hidden_or_control),
            "name {name:?}"
        );
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .expect("accepted without exp");
    assert!(
        exp.saturating_add(LEEWAY) >= unix_now(),
        "expired token accepted"
    );
    assert_eq!(identity.expires_at, exp);
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_u64) {
        assert!(nbf <= unix_now() + LEEWAY, "token not valid yet accepted");
    }
    assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "audience {:?}", claims.get("aud"));
}

fuzz_target!(|bytes: &[u8]| {
    let w = world();
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let signed_by = text.strip_prefix("SIGN ").and_then(|rest| {
        let (kid, rest) = rest.split_once('\n')?;
        let (header, claims) = rest.split_once('\n')?;
        let key = w.keys.iter().find(|k| k.kid == kid.trim())?;
        Some((key, header, claims))
    });
    let token = match signed_by {
        Some((key, header, claims)) => {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let sig = key.sign(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }
        None => text.to_string(),
    };
    let Ok(identity) = w.verifier.verify(&token) else {
        return;
    };
    // Accepted: the signature must be one of the configured keys', for the header's
    // algorithm, and the kid (when it names a configured key) that key's.
    let (input, header, claims, sig) = split(&token).expect("accepted token splits");
    let alg = header.get("alg").and_then(Value::as_str).expect("alg");
    let kid = header.get("kid").and_then(Value::as_str);
    let signer = w
        .keys
        .iter()
        .find(|k| k.alg == alg && k.verifies(input.as_bytes(), &sig))
        .unwrap_or_else(|| panic!("accepted a token no configured key signed: {header}"));
    if let Some(kid) = kid {
        if let Some(named) = w.keys.iter().find(|k| k.kid == kid && k.kid != "hs") {
            assert_eq!(named.kid, signer.kid, "kid names another key");
        }
    }
    if let Some((key, _, _)) = signed_by {
        assert_eq!(key.kid, signer.kid);
    }
    check_claims(&claims, &identity);
});
