//! The npm packages of the Pusher end-to-end tests (`tests/pusher/package-lock.json`), shared
//! by the Node-driven tests (`tests/it`) and the browser tests, which serve their bundles.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

pub fn pusher_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pusher")
}

/// `npm ci` from the lockfile, once per test run, unless `node_modules` was installed from
/// this very lockfile already (npm keeps its copy in `node_modules/.package-lock.json`).
pub fn install_packages() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let dir = pusher_dir();
    let lock = std::fs::read_to_string(dir.join("package-lock.json")).expect("lockfile");
    let installed = std::fs::read_to_string(dir.join("node_modules/.package-lock.json"));
    let packages = |text: &str| {
        serde_json::from_str::<Value>(text)
            .map(|v| {
                let mut p = v["packages"].clone();
                if let Some(map) = p.as_object_mut() {
                    map.remove("");
                }
                p
            })
            .ok()
    };
    if installed.is_ok_and(|i| packages(&i).is_some() && packages(&i) == packages(&lock)) {
        *done = true;
        return;
    }
    let out = Command::new("npm")
        .args([
            "ci",
            "--prefer-offline",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm ({e}): install Node 20 and npm"));
    assert!(
        out.status.success(),
        "npm ci failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    *done = true;
}
