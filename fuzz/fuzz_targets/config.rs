//! TOML text through the gateway's configuration load (`Config::load`'s merge and checks,
//! from a string with an empty environment) and, for a loaded file that names no key files,
//! the live settings a reload compiles (`Live::from_config`: Origin allowlist, verifier).
//!
//! Invariants: no panic; every refusal of a text that is valid TOML names what it refuses:
//! a dotted key or a section of the file (`server`, `auth.public_keys`, …).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wsgate::config::{Config, ConfigError};
use wsgate::fuzzing::load_config_str;
use wsgate::live::Live;

/// Every section and dotted key of the file, from the defaults (plus the key-file list's
/// fields, which the defaults leave empty).
fn known_keys() -> &'static Vec<String> {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = vec![
            "auth.public_keys.kid".to_string(),
            "auth.public_keys.alg".to_string(),
            "auth.public_keys.file".to_string(),
        ];
        let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
        for (section, fields) in defaults.as_object().expect("sections") {
            keys.push(section.clone());
            for field in fields.as_object().expect("fields").keys() {
                keys.push(format!("{section}.{field}"));
            }
        }
        keys
    })
}

fn names_a_key(e: &ConfigError) -> bool {
    let keys = known_keys();
    match e {
        ConfigError::Invalid { key, .. } => keys.iter().any(|k| k == key),
        ConfigError::File { message, .. } => keys.iter().any(|k| {
            message.contains(&format!("`{k}`"))
                || message.contains(&format!("{k}."))
                || message.contains(&format!("[{k}]"))
                || message.contains(&format!("key {k}"))
        }),
    }
}

/// Whether the text names a file the load would read (the HS secret file): left out, so
/// the fuzzer cannot make the harness read whatever path it writes.
fn names_a_secret_file(table: &toml::Table) -> bool {
    table
        .get("auth")
        .and_then(|a| a.get("hs_secret_file"))
        .is_some()
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let table = toml::from_str::<toml::Table>(text).ok();
    if table.as_ref().is_some_and(names_a_secret_file) || (table.is_none() && text.contains("file"))
    {
        return;
    }
    match load_config_str(text) {
        Err(e) => {
            let message = e.to_string();
            if table.is_some() {
                assert!(names_a_key(&e), "refusal names no key: {message}");
            }
        }
        Ok(cfg) => {
            if cfg.auth.public_keys.is_empty() {
                if let Err(e) = Live::from_config(&cfg) {
                    assert!(names_a_key(&e), "refusal names no key: {e}");
                }
            }
            // What `check-config` prints.
            let _ = cfg.redacted_toml();
            let _ = cfg.warnings();
        }
    }
});
