//! End-to-end tests in a real headless Chromium: the gateway's own demo page (`web/`), served
//! by the real binary over TLS, driven over the DevTools protocol the way a user would —
//! typing, clicking and reading what the page shows — plus the Node unit tests of the client
//! library, so one `cargo test` runs everything.
//!
//! Needs Debian's Chromium at `/usr/bin/chromium` (`apt-get install -y chromium`) and `node`;
//! without them these tests fail rather than skip.

#[path = "browser/cdp.rs"]
mod cdp;
#[path = "it/npm.rs"]
mod npm;
#[path = "it/support.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use cdp::{crate_path, Browser, Page};
use support::{Gateway, WAIT};

/// Backoff base the pages use (`#backoff=`), so reconnects take a fraction of a second.
const BACKOFF_MS: u32 = 200;

/// Texts of the chat lines in `#messages`, oldest first.
const TEXTS: &str =
    "[...document.querySelectorAll('#messages li.msg .text')].map(e => e.textContent)";
/// `{event, payload}` log of the page's client.
const EVENTS: &str = "(window.__wsgateEvents ?? [])";

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn two_pages_chat_through_the_gateway_both_ways() {
    let (_certs, front, gw, browser) = gateway_and_browser().await;
    let (alice, bob) = alice_and_bob(&browser, &gw, front.port).await;
    for page in [&alice, &bob] {
        page.wait_for(
            "both members listed",
            "(() => { const m = [...document.querySelectorAll('#members li')].map(e => e.textContent);
                      return m.includes('alice') && m.includes('bob'); })()",
        )
        .await;
    }

    say(&alice, "hello from alice").await;
    let line = bob
        .wait_for("alice's message", &last_line_from("alice"))
        .await;
    assert_eq!(line, json!("hello from alice"));
    // The sender sees its own line confirmed (acked), not pending or failed.
    alice
        .wait_for(
            "alice's line acked",
            "(() => { const l = document.querySelector('#messages li.msg.mine');
                      return l && !l.matches('.pending, .failed'); })()",
        )
        .await;

    say(&bob, "hi alice, bob here").await;
    let line = alice
        .wait_for("bob's message", &last_line_from("bob"))
        .await;
    assert_eq!(line, json!("hi alice, bob here"));

    // Nobody receives their own message back: each page shows exactly the two lines.
    for page in [&alice, &bob] {
        assert_eq!(
            page.eval(TEXTS).await,
            json!(["hello from alice", "hi alice, bob here"])
        );
    }
}

#[tokio::test]
async fn message_markup_is_shown_as_text_never_run() {
    let (_certs, front, gw, browser) = gateway_and_browser().await;
    let (alice, bob) = alice_and_bob(&browser, &gw, front.port).await;
    alice
        .wait_for(
            "bob listed",
            "!!document.querySelector('#members li[data-user=\"bob\"]')",
        )
        .await;

    let from_page = r#"<img src=x onerror="window.__pwned=1">"#;
    let from_api = r#"<img src=x onerror="window.__pwned=2"><script>window.__pwned=3</script>"#;
    say(&bob, from_page).await;
    bob.wait_for(
        "bob's line acked",
        "!!document.querySelector('#messages li.msg.mine:not(.pending):not(.failed)')",
    )
    .await;
    publish(&gw, from_api).await;
    publish(&gw, "after the markup").await;

    let texts = wait_for_texts(&alice, "all three lines", 3).await;
    assert_eq!(texts, json!([from_page, from_api, "after the markup"]));
    let from: Value = alice
        .eval("[...document.querySelectorAll('#messages li.msg .from')].map(e => e.textContent)")
        .await;
    assert_eq!(from, json!(["bob", "@server", "@server"]));
    for page in [&alice, &bob] {
        assert_eq!(
            page.eval("document.querySelectorAll('#messages img, #messages script').length")
                .await,
            json!(0),
            "markup became elements"
        );
        assert_eq!(
            page.eval("document.querySelectorAll('img').length").await,
            json!(0)
        );
        assert_eq!(page.eval("typeof window.__pwned").await, json!("undefined"));
    }
}

#[tokio::test]
async fn page_reconnects_through_a_cut_proxy_and_catches_up_in_order() {
    let (_certs, gw, proxy, _browser, page) = alice_behind_a_proxy().await;

    // A first message gives the page a position in the room to recover from.
    publish(&gw, "before the cut").await;
    page.wait_for("the first message", &format!("{TEXTS}.length === 1"))
        .await;

    proxy.cut();
    wait_for_state(&page, "reconnecting").await;
    for text in ["missed 1", "missed 2", "missed 3"] {
        publish(&gw, text).await;
    }
    proxy.restore();

    let texts = wait_for_texts(&page, "the missed messages", 4).await;
    assert_eq!(
        texts,
        json!(["before the cut", "missed 1", "missed 2", "missed 3"])
    );
    wait_for_state(&page, "open").await;
    let offsets = page
        .eval(&format!(
            "{EVENTS}.filter(e => e.event === 'message').map(e => e.payload.offset)"
        ))
        .await;
    assert_eq!(offsets, json!([1, 2, 3, 4]), "in order, no duplicates");
    let states = event_payloads(&page, "state").await;
    assert_eq!(
        states,
        json!(["connecting", "open", "reconnecting", "open"]),
        "one outage, one recovery"
    );
    let backoffs = event_payloads(&page, "backoff").await;
    assert!(
        backoffs
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["code"] == 1006),
        "a backoff after the drop: {backoffs}"
    );
    assert!(
        event_payloads(&page, "gap").await == json!([]),
        "the history covered the outage"
    );
    // Still chatting: a live message after the catch-up arrives too.
    publish(&gw, "live again").await;
    page.wait_for("the live message", &format!("{TEXTS}.length === 5"))
        .await;
    drop(proxy);
}

#[tokio::test]
async fn gateway_restart_is_reported_as_a_gap() {
    let (certs, front, mut gw, browser) = gateway_and_browser().await;
    let page = open_chat(&browser, &gw, front.port, "alice").await;
    publish(&gw, "before the restart").await;
    page.wait_for("the first message", &format!("{TEXTS}.length === 1"))
        .await;
    let notice_hidden = "document.querySelector('#notice').hidden";
    assert_eq!(page.eval(notice_hidden).await, json!(true));

    // Graceful stop: sessions get 1001 (reconnect), and the in-memory history is gone.
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(WAIT).await, Some(0), "{}", gw.logs());
    drop(gw);
    // The new process, on a port of its own, behind the page's origin.
    let gw = start_gateway(&certs, Some(front.port)).await;
    front.forward_to(gw.addr);

    let gap = first_event_payload(&page, "a gap event", "gap").await;
    assert_eq!(gap, json!({"room": "lobby"}));
    let notice = page
        .wait_for(
            "the gap notice",
            "!document.querySelector('#notice').hidden && document.querySelector('#notice').textContent",
        )
        .await;
    assert!(
        notice.as_str().unwrap().contains("missed"),
        "notice: {notice}"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#messages li.divider').length")
            .await,
        json!(1)
    );
    let rejoin = page
        .eval(&format!(
            "{EVENTS}.filter(e => e.event === 'joined').at(-1).payload"
        ))
        .await;
    assert_eq!(rejoin["recovered"], false, "{rejoin}");
    let backoffs = event_payloads(&page, "backoff").await;
    assert_eq!(backoffs[0]["code"], 1001, "{backoffs}");

    // The new epoch's first message (offset 1 again) is not mistaken for a duplicate.
    publish(&gw, "after the restart").await;
    let texts = wait_for_texts(&page, "the new epoch's message", 2).await;
    assert_eq!(texts, json!(["before the restart", "after the restart"]));
}

#[tokio::test]
async fn kicked_page_stays_disconnected() {
    let (_certs, front, gw, browser) = gateway_and_browser().await;
    let page = open_chat(&browser, &gw, front.port, "mallory").await;
    // The page is in before the test has read the gateway's line about it.
    gw.wait_log("\"user\":\"mallory\"").await;
    assert_eq!(handshakes_of(&gw, "mallory", 0), 1);
    assert_eq!(page.websockets_created(), 1);

    let skip = gw.log_len();
    let (status, body) = gw
        .api("POST", "/api/disconnect", Some(json!({"user": "mallory"})))
        .await;
    assert_eq!((status, body), (200, json!({"closed": 1})));

    wait_for_state(&page, "closed").await;
    let error = first_event_payload(&page, "the close error", "error").await;
    assert_eq!(error["type"], "close");
    assert_eq!(error["code"], 4003);
    let notice = page
        .eval("document.querySelector('#notice').textContent")
        .await;
    assert!(
        notice
            .as_str()
            .unwrap()
            .contains("disconnected by an administrator"),
        "notice: {notice}"
    );

    // Absence is the point here. A reconnect would be scheduled at the close, at most the
    // backoff base (200 ms) away; a timer the page sets now for ten times that fires after
    // it, and DevTools reports a socket the page created before the timer's result.
    let wait = format!("new Promise(done => setTimeout(done, {}))", 10 * BACKOFF_MS);
    page.eval(&wait).await;
    assert_eq!(
        page.websockets_created(),
        1,
        "the page opened another socket"
    );
    assert_eq!(handshakes_of(&gw, "mallory", skip), 0, "{}", gw.logs());
    assert_eq!(
        page.eval("document.querySelector('#state').textContent")
            .await,
        json!("closed")
    );
    assert_eq!(event_payloads(&page, "backoff").await, json!([]));
}

#[tokio::test]
async fn a_token_arriving_later_in_the_fragment_does_not_switch_the_account() {
    let (_certs, gw, proxy, _browser, page) = alice_behind_a_proxy().await;
    page.eval("window.__aliceGate = window.__wsgate").await;
    let skip = gw.log_len();

    // Whoever can navigate the tab (an opener, a link into it) changes only its fragment.
    let mallory = gw.token("mallory");
    page.eval(&format!(
        "location.hash = {:?}",
        format!("#token={mallory}&room=lobby")
    ))
    .await;
    // The page read it (the token leaves the address bar) and kept alice's connection ...
    page.wait_for("the new fragment read", "!location.href.includes('token=')")
        .await;
    assert_eq!(
        page.eval("window.__wsgate === window.__aliceGate").await,
        json!(true),
        "the page connected again on its own: {}",
        page.eval(&format!("JSON.stringify({EVENTS})")).await
    );
    assert_eq!(
        page.eval("document.querySelector('#whoami').textContent")
            .await,
        json!("signed in as alice")
    );
    // ... and asks the user to press Connect to use the new token.
    let notice = page
        .eval("!document.querySelector('#notice').hidden && document.querySelector('#notice').textContent")
        .await;
    assert!(
        notice.as_str().is_some_and(|n| n.contains("press Connect")),
        "{notice}"
    );

    // A reconnect asks for a token again: still alice's, not the one now in the field.
    proxy.cut();
    wait_for_state(&page, "reconnecting").await;
    proxy.restore();
    page.wait_for(
        "a second welcome",
        &format!("{EVENTS}.filter(e => e.event === 'welcome').length === 2"),
    )
    .await;
    wait_for_state(&page, "open").await;
    let users = page
        .eval(&format!(
            "{EVENTS}.filter(e => e.event === 'welcome').map(e => e.payload.user)"
        ))
        .await;
    assert_eq!(users, json!(["alice", "alice"]));
    assert_eq!(handshakes_of(&gw, "mallory", skip), 0, "{}", gw.logs());

    // Connecting with the new token takes the user's click.
    page.click("#connect").await;
    page.wait_for(
        "signed in as mallory after the click",
        "document.querySelector('#whoami').textContent === 'signed in as mallory'",
    )
    .await;
    drop(proxy);
}

#[tokio::test]
async fn static_files_carry_security_headers_and_content_types() {
    let certs = Certs::new();
    let gw = start_gateway(&certs, None).await;
    for (path, content_type, body_part) in [
        ("/", "text/html", "<title>wsgate chat</title>"),
        ("/wsgate.js", "javascript", "export class WsGate"),
        ("/app.js", "javascript", "import { WsGate }"),
        ("/style.css", "text/css", "{"),
    ] {
        let (status, headers, body) = https_get(gw.addr, &certs.ca(), path).await;
        assert_eq!(status, 200, "{path}");
        let ct = &headers["content-type"];
        assert!(ct.contains(content_type), "{path}: content-type {ct}");
        let csp = &headers["content-security-policy"];
        for directive in [
            "default-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: CSP {csp} lacks {directive}"
            );
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: CSP {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(body.contains(body_part), "{path}: {body}");
    }
}

#[test]
fn node_unit_tests_of_the_client_pass() {
    let out = Command::new("node")
        .args(["--test", "--test-reporter=tap", "tests/web/"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): install it: apt-get install -y nodejs"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed:\n{report}");
    let count = |key: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# {key} "))?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no '# {key}' line in:\n{report}"))
    };
    assert!(count("pass") > 0, "no test ran:\n{report}");
    assert_eq!(count("fail"), 0, "{report}");
}

/// The Pusher app of the Echo pages.
const PUSHER_KEY: &str = "browser-app-key";
const PUSHER_SECRET: &str = "browser-app-secret-0123456789abcdef";

#[tokio::test]
async fn echo_pages_meet_in_a_presence_channel_and_whisper() {
    npm::install_packages();
    let site = pusher_site();
    let certs = Certs::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
    let port = listener.local_addr().unwrap().port();
    let gw = Gateway::start_with(|s| {
        s.set("server", "handshake_timeout", json!("30s"))
            .set("server", "static_dir", json!(site.path()))
            .set("tls", "cert", json!(certs.0.path().join("server.crt")))
            .set("tls", "key", json!(certs.0.path().join("server.key")))
            .set(
                "pusher",
                "apps",
                json!([{
                    "id": "2001",
                    "key": PUSHER_KEY,
                    "secret": PUSHER_SECRET,
                    "allowed_origins": [format!("https://localhost:{port}")],
                }]),
            );
    })
    .await;
    let _front = Proxy::start(listener, gw.addr);
    let browser = Browser::launch(&certs.spki_sha256()).await;
    let url = |user: &str, name: &str| {
        format!(
            "https://localhost:{port}/index.html#key={PUSHER_KEY}&secret={PUSHER_SECRET}&user={user}&name={name}"
        )
    };
    let alice = browser.open(&url("1", "Alice")).await;
    alice
        .wait_for("alice's here", "window.__echo?.here?.length === 1")
        .await;
    let bob = browser.open(&url("2", "Bob")).await;
    bob.wait_for("bob's here", "window.__echo?.here?.length === 2")
        .await;
    assert_eq!(
        bob.eval("window.__echo.here.map(m => m.name).sort()").await,
        json!(["Alice", "Bob"])
    );
    let joined = alice
        .wait_for(
            "bob joining",
            "window.__echo.joining.length === 1 && window.__echo.joining",
        )
        .await;
    assert_eq!(joined, json!([{"name": "Bob"}]));

    // Alice's whisper appears on Bob's page, not on hers; Bob's answer on hers.
    alice.eval("window.whisper('hi bob'), true").await;
    let shown = bob
        .wait_for(
            "alice's whisper",
            "document.querySelector('#whispers li')?.textContent",
        )
        .await;
    assert_eq!(shown, json!("Alice: hi bob"));
    bob.eval("window.whisper('hi alice'), true").await;
    alice
        .wait_for("bob's whisper", "window.__echo.whispers.length > 0")
        .await;
    assert_eq!(
        alice.eval("window.__echo.whispers").await,
        json!([{"from": "Bob", "text": "hi alice"}]),
        "the sender never gets its own whisper"
    );

    // Bob goes: Alice's page sees him leave.
    bob.eval("window.leave(), true").await;
    let left = alice
        .wait_for(
            "bob leaving",
            "window.__echo.leaving.length === 1 && window.__echo.leaving",
        )
        .await;
    assert_eq!(left, json!([{"name": "Bob"}]));
    for page in [&alice, &bob] {
        assert_eq!(page.eval("window.__echo.errors").await, json!([]));
    }
}

/// A static directory for the Echo pages: `tests/browser/pusher/` and the browser bundles of
/// `pusher-js` and `laravel-echo` from the pinned npm packages.
fn pusher_site() -> tempfile::TempDir {
    let site = tempfile::tempdir().expect("tempdir");
    let pages = crate_path("tests/browser/pusher");
    let modules = npm::pusher_dir().join("node_modules");
    for (from, to) in [
        (pages.join("index.html"), "index.html"),
        (pages.join("page.js"), "page.js"),
        (
            modules.join("pusher-js/dist/web/pusher.min.js"),
            "pusher.js",
        ),
        (modules.join("laravel-echo/dist/echo.iife.js"), "echo.js"),
    ] {
        std::fs::copy(&from, site.path().join(to))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    site
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A dev CA and server certificate in a directory that outlives any one gateway, so a
/// restarted gateway presents the key the browser was told to trust.
struct Certs(tempfile::TempDir);

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        wsgate::tls::generate_dev_certs(dir.path(), &wsgate::tls::default_dev_hosts())
            .expect("certs");
        Certs(dir)
    }

    fn ca(&self) -> PathBuf {
        self.0.path().join("ca.crt")
    }

    /// Base64 of SHA-256 over the server key's SubjectPublicKeyInfo: what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes.
    fn spki_sha256(&self) -> String {
        use rcgen::PublicKeyData as _;
        let pem = std::fs::read_to_string(self.0.path().join("server.key")).expect("key");
        let key = rcgen::KeyPair::from_pem(&pem).expect("server key");
        let hash =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    }
}

/// The gateway on a port it picks (the test reads it from its log), serving `web/`, allowing
/// pages from `https://localhost:{page_port}` (with `None`, only the base settings' origins).
async fn start_gateway(certs: &Certs, page_port: Option<u16>) -> Gateway {
    Gateway::start_with(|s| {
        // The base settings' 2 s (for the handshake timeout's own tests) would let a busy
        // machine cut the browser's page loads, which are not retried.
        s.set("server", "handshake_timeout", json!("30s"))
            .set("server", "static_dir", json!(crate_path("web")))
            .set("tls", "cert", json!(certs.0.path().join("server.crt")))
            .set("tls", "key", json!(certs.0.path().join("server.key")));
        if let Some(port) = page_port {
            s.set(
                "origin",
                "allowed",
                json!([format!("https://localhost:{port}")]),
            );
        }
    })
    .await
}

/// alice's chat page loaded through the [`Proxy`] in front of the gateway (which the test can
/// cut), with the certificates, the gateway, the proxy, the browser and the page.
async fn alice_behind_a_proxy() -> (Certs, Gateway, Proxy, Browser, Page) {
    let (certs, proxy, gw, browser) = gateway_and_browser().await;
    let page = open_chat(&browser, &gw, proxy.port, "alice").await;
    (certs, gw, proxy, browser, page)
}

/// Fresh certificates, the gateway, the pages' origin in front of it (a [`Proxy`]; pages from
/// it allowed) and a browser trusting the certificates.
///
/// The origin's port is the proxy's listener, bound (port 0) and held by the test for the
/// whole test: no port is closed and bound again (another process could take it meanwhile),
/// and a restarted gateway, on whatever port it gets, is reached at the same origin.
async fn gateway_and_browser() -> (Certs, Proxy, Gateway, Browser) {
    let certs = Certs::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
    let port = listener.local_addr().unwrap().port();
    let gw = start_gateway(&certs, Some(port)).await;
    let proxy = Proxy::start(listener, gw.addr);
    let browser = Browser::launch(&certs.spki_sha256()).await;
    (certs, proxy, gw, browser)
}

/// The chat pages of alice and bob, both in lobby.
async fn alice_and_bob(browser: &Browser, gw: &Gateway, port: u16) -> (Page, Page) {
    let alice = open_chat(browser, gw, port, "alice").await;
    let bob = open_chat(browser, gw, port, "bob").await;
    (alice, bob)
}

/// Waits until the page's `#state` shows `state`.
async fn wait_for_state(page: &Page, state: &str) {
    page.wait_for(
        state,
        &format!("document.querySelector('#state').textContent === {state:?}"),
    )
    .await;
}

/// Waits until the page shows at least `n` chat lines; returns their texts.
async fn wait_for_texts(page: &Page, what: &str, n: usize) -> Value {
    page.wait_for(
        what,
        &format!("(() => {{ const t = {TEXTS}; return t.length >= {n} && t; }})()"),
    )
    .await
}

/// Waits for the page's client to report `event`; returns the first one's payload.
async fn first_event_payload(page: &Page, what: &str, event: &str) -> Value {
    page.wait_for(
        what,
        &format!("{EVENTS}.find(e => e.event === {event:?})?.payload"),
    )
    .await
}

/// Opens the chat page at `https://localhost:{port}` as `user`, in room lobby, and waits
/// until it is connected and in the room.
async fn open_chat(browser: &Browser, gw: &Gateway, port: u16, user: &str) -> Page {
    let token = gw.token(user);
    let url = format!("https://localhost:{port}/#token={token}&room=lobby&backoff={BACKOFF_MS}");
    let page = browser.open(&url).await;
    page.wait_for(
        "open and in lobby",
        &format!(
            "document.querySelector('#state')?.textContent === 'open'
             && {EVENTS}.some(e => e.event === 'joined' && e.payload.room === 'lobby')"
        ),
    )
    .await;
    // The token left the address bar once read.
    let href = page.eval("location.href").await;
    assert!(!href.as_str().unwrap().contains("token="), "{href}");
    page
}

/// Types `text` into the composer and clicks Send.
async fn say(page: &Page, text: &str) {
    page.type_into("#text", text).await;
    page.click("#send").await;
}

/// JS: the text of the last chat line from `user`, or null.
fn last_line_from(user: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages li.msg')]
           .filter(l => l.querySelector('.from').textContent === {user:?})
           .map(l => l.querySelector('.text').textContent).at(-1) ?? null"
    )
}

/// Publishes `{text}` to lobby through the admin API.
async fn publish(gw: &Gateway, text: &str) {
    let (status, body) = gw
        .api(
            "POST",
            "/api/publish",
            Some(json!({"room": "lobby", "data": {"text": text}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn event_payloads(page: &Page, event: &str) -> Value {
    page.eval(&format!(
        "{EVENTS}.filter(e => e.event === {event:?}).map(e => e.payload)"
    ))
    .await
}

/// Accepted handshakes of `user` in the gateway's log after its first `skip` lines.
fn handshakes_of(gw: &Gateway, user: &str, skip: usize) -> usize {
    gw.logs()
        .lines()
        .skip(skip)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            let f = &v["fields"];
            f["message"] == "handshake" && f["result"] == "ok" && f["user"] == user
        })
        .count()
}

/// One HTTPS GET trusting the test CA: (status, lowercased headers, body).
async fn https_get(
    addr: SocketAddr,
    ca: &std::path::Path,
    path: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut tls = support::tls_connect(addr, ca).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // A close_notify-less end still leaves a complete response; only the bytes matter here.
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut raw))
        .await
        .expect("response in time");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.lines();
    let status = support::status_code(lines.next().expect("status line"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A TCP proxy in front of the gateway whose connections the test can cut: while cut, open
/// connections are dropped and new ones are accepted and closed at once, as when a network
/// path fails; `restore` lets connections through again on the same port, and `forward_to`
/// sends new ones to another gateway.
struct Proxy {
    /// The port it listens on: the pages' origin.
    port: u16,
    up: watch::Sender<bool>,
    upstream: watch::Sender<SocketAddr>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    fn start(listener: TcpListener, upstream: SocketAddr) -> Proxy {
        let port = listener.local_addr().expect("proxy address").port();
        let (up, up_rx) = watch::channel(true);
        let (upstream, upstream_rx) = watch::channel(upstream);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*up_rx.borrow() {
                    continue; // dropped: the client sees the connection closed
                }
                let mut up_rx = up_rx.clone();
                let upstream = *upstream_rx.borrow();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up_rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            upstream,
            accept,
        }
    }

    /// Sends connections made from now on to `gateway`.
    fn forward_to(&self, gateway: SocketAddr) {
        self.upstream.send_replace(gateway);
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
