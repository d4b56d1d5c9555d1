//! Takes `docs/demo.png`, the README's picture of the demo chat page: the real gateway (the
//! `target/<profile>/wsgate` binary) serving `web/`, two headless Chromium pages chatting in
//! lobby as alice and bob, one admin message, and a screenshot of alice's page.
//!
//! ```sh
//! cargo build && cargo run --example demo_screenshot
//! ```
//!
//! Needs Debian's Chromium at `/usr/bin/chromium`, like the browser tests whose helpers it uses.

#[allow(dead_code)]
#[path = "../tests/browser/cdp.rs"]
mod cdp;
#[path = "../tests/it/support.rs"]
mod support;

use base64::Engine as _;
use serde_json::json;

use cdp::{crate_path, Browser, Page};
use support::Gateway;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 700;

/// Who says what, in order; `@server` goes through the admin API.
const CHAT: &[(&str, &str)] = &[
    ("alice", "Morning! Is the new release out on staging yet?"),
    (
        "bob",
        "Rolling out now, the migrations are on their last step.",
    ),
    ("@server", "deploy finished"),
    ("alice", "Nice, starting the smoke tests."),
    ("bob", "Thanks! Ping me if anything looks off."),
    ("alice", "All green. Shipping it to production after lunch."),
];

#[tokio::main]
async fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let gw = Gateway::start_with(|s| {
        s.set("server", "listen", json!(format!("127.0.0.1:{port}")))
            .set("server", "static_dir", json!(crate_path("web")))
            .set(
                "origin",
                "allowed",
                json!([format!("https://localhost:{port}")]),
            );
    })
    .await;
    let browser = Browser::launch(&spki_sha256(&gw)).await;
    let alice = open_chat(&browser, &gw, port, "alice").await;
    let bob = open_chat(&browser, &gw, port, "bob").await;
    alice
        .wait_for(
            "bob listed",
            "!!document.querySelector('#members li[data-user=\"bob\"]')",
        )
        .await;

    for (n, &(from, text)) in CHAT.iter().enumerate() {
        match from {
            "alice" => say(&alice, text).await,
            "bob" => say(&bob, text).await,
            _ => {
                let data = json!({"room": "lobby", "data": {"text": text}});
                let (status, body) = gw.api("POST", "/api/publish", Some(data)).await;
                assert_eq!(status, 200, "{body}");
            }
        }
        // Both pages show the line, and the sender's is acked (not pending).
        let shown = format!(
            "document.querySelectorAll('#messages li.msg:not(.pending)').length === {}",
            n + 1
        );
        for page in [&alice, &bob] {
            page.wait_for("the line", &shown).await;
        }
    }

    let metrics =
        json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false});
    alice
        .call("Emulation.setDeviceMetricsOverride", metrics)
        .await;
    // A background tab never paints, and its capture would never return.
    alice.call("Page.bringToFront", json!({})).await;
    alice.eval("document.activeElement.blur()").await;
    let shot = alice
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64 PNG");
    let out = crate_path("docs/demo.png");
    std::fs::write(&out, png).expect("write the screenshot");
    println!("wrote {}", out.display());
}

/// Opens the chat page as `user` in lobby and waits until it is connected and in the room.
async fn open_chat(browser: &Browser, gw: &Gateway, port: u16, user: &str) -> Page {
    let url = format!(
        "https://localhost:{port}/#token={}&room=lobby",
        gw.token(user)
    );
    let page = browser.open(&url).await;
    page.wait_for(
        "open and in lobby",
        "document.querySelector('#state')?.textContent === 'open'
         && (window.__wsgateEvents ?? []).some(e => e.event === 'joined')",
    )
    .await;
    page
}

/// Types `text` into the composer and clicks Send, as a user would.
async fn say(page: &Page, text: &str) {
    page.type_into("#text", text).await;
    page.click("#send").await;
}

/// What Chromium's `--ignore-certificate-errors-spki-list` takes for the gateway's dev
/// certificate: base64 of SHA-256 over the server key's SubjectPublicKeyInfo.
fn spki_sha256(gw: &Gateway) -> String {
    use rcgen::PublicKeyData as _;
    let pem = std::fs::read_to_string(gw.dir.path().join("certs/server.key")).expect("key");
    let key = rcgen::KeyPair::from_pem(&pem).expect("server key");
    let hash =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
    base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
}
