//! Just enough of the Chrome DevTools Protocol to drive Debian's headless Chromium from a
//! test: launch it on a fresh profile, open pages, evaluate JavaScript, type and click, and
//! poll the page until a condition holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long a page may take to reach any awaited state: a bound on a hang, never a timing
/// claim (a state the page reaches sooner ends the wait). Chromium loading a page from a debug
/// build of the gateway takes far longer on a busy machine than anything else the tests wait
/// for: ten seconds were seen to run out with the machine loaded twenty-fold.
pub const PAGE_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting test re-reads the page.
const POLL: Duration = Duration::from_millis(50);

/// One headless Chromium on its own profile; killed on drop.
pub struct Browser {
    child: Child,
    devtools: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Launches Chromium trusting only the certificate key with this base64 SHA-256 SPKI hash.
    pub async fn launch(spki_sha256: &str) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} not found: install chromium: apt-get install -y chromium"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile");
        let log = std::fs::File::create(dir.path().join("chromium.log")).expect("log file");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
            ])
            .args(["--no-first-run", "--disable-background-networking"])
            .args(["--disable-component-update", "--disable-sync"])
            .args([
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--remote-debugging-port=0")
            .arg(format!(
                "--ignore-certificate-errors-spki-list={spki_sha256}"
            ))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn chromium");
        let mut browser = Browser {
            child,
            devtools: "127.0.0.1:0".parse().unwrap(),
            dir,
        };
        let port_file = profile.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        let port = loop {
            // Chromium writes the file once its DevTools server listens; no event to wait on.
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse::<u16>().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("chromium exited ({status}):\n{}", browser.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no DevToolsActivePort within {PAGE_WAIT:?}:\n{}",
                browser.log()
            );
            tokio::time::sleep(POLL).await;
        };
        browser.devtools.set_port(port);
        browser
    }

    /// Chromium's stderr so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default()
    }

    /// Opens a new tab (target) and navigates it to `url`.
    pub async fn open(&self, url: &str) -> Page {
        let target = self.http_json("PUT", "/json/new?about:blank").await;
        let ws_url = target["webSocketDebuggerUrl"].as_str().expect("ws url");
        let tcp = TcpStream::connect(self.devtools).await.expect("devtools");
        let (ws, _) = tokio_tungstenite::client_async(ws_url, tcp)
            .await
            .expect("devtools websocket");
        let page = Page::new(ws);
        page.call("Runtime.enable", json!({})).await;
        page.call("Log.enable", json!({})).await;
        // For `Network.webSocketCreated`: the sockets the page opens.
        page.call("Network.enable", json!({})).await;
        // Each tab behaves as if it had the focus, so typing works in a background tab.
        page.call(
            "Emulation.setFocusEmulationEnabled",
            json!({"enabled": true}),
        )
        .await;
        page.call("Page.navigate", json!({ "url": url })).await;
        page
    }
}

impl Browser {
    /// One request to the DevTools HTTP endpoint. It keeps the connection open whatever the
    /// request says, so the body is read up to its Content-Length.
    async fn http_json(&self, method: &str, path: &str) -> Value {
        let mut tcp = TcpStream::connect(self.devtools).await.expect("devtools");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let read = async {
            loop {
                let mut buf = [0u8; 4096];
                let n = tcp.read(&mut buf).await.expect("read");
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")?
                                .trim()
                                .parse()
                                .ok()
                        })
                        .unwrap_or(0usize);
                    if body.len() >= len || n == 0 {
                        assert!(head.starts_with("HTTP/1.1 200"), "DevTools {path}: {text}");
                        return serde_json::from_str(body).expect("DevTools JSON");
                    }
                }
                assert!(n > 0, "DevTools {path}: connection closed early");
            }
        };
        tokio::time::timeout(PAGE_WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("no DevTools answer to {path} within {PAGE_WAIT:?}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Replies = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One tab's DevTools session.
pub struct Page {
    sink: tokio::sync::Mutex<SplitSink<WebSocketStream<TcpStream>, Message>>,
    replies: Replies,
    /// Console output and uncaught exceptions, shown when a wait fails.
    console: Arc<Mutex<Vec<String>>>,
    /// URLs of the WebSockets the page created, in order.
    sockets: Arc<Mutex<Vec<String>>>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Page {
    fn new(ws: WebSocketStream<TcpStream>) -> Page {
        let (sink, mut stream) = ws.split();
        let replies: Replies = Arc::default();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        let sockets: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, c, ws) = (replies.clone(), console.clone(), sockets.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = r.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                } else if v["method"] == "Runtime.consoleAPICalled" {
                    let args = v["params"]["args"].as_array().cloned().unwrap_or_default();
                    let text: Vec<String> = args.iter().map(|a| a["value"].to_string()).collect();
                    c.lock()
                        .unwrap()
                        .push(format!("console: {}", text.join(" ")));
                } else if v["method"] == "Log.entryAdded" {
                    let e = &v["params"]["entry"];
                    c.lock()
                        .unwrap()
                        .push(format!("log: {} {}", e["text"], e["url"]));
                } else if v["method"] == "Network.webSocketCreated" {
                    let url = v["params"]["url"].as_str().unwrap_or_default();
                    ws.lock().unwrap().push(url.to_string());
                } else if v["method"] == "Runtime.exceptionThrown" {
                    let d = &v["params"]["exceptionDetails"];
                    c.lock().unwrap().push(format!("exception: {d}"));
                }
            }
        });
        Page {
            sink: tokio::sync::Mutex::new(sink),
            replies,
            console,
            sockets,
            next_id: AtomicU64::new(1),
            reader,
        }
    }

    /// Sends one command and returns its `result`; panics on a protocol error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().unwrap().insert(id, tx);
        let frame = json!({ "id": id, "method": method, "params": params });
        self.sink
            .lock()
            .await
            .send(Message::text(frame.to_string()))
            .await
            .expect("send to devtools");
        let reply = tokio::time::timeout(PAGE_WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("no DevTools reply to {method} within {PAGE_WAIT:?}"))
            .expect("devtools connection open");
        assert!(reply["error"].is_null(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// How many WebSockets the page has created. DevTools sends a page's events in order
    /// with its replies: a socket created before an evaluation's result was ready is counted
    /// once that result is back.
    pub fn websockets_created(&self) -> usize {
        self.sockets.lock().unwrap().len()
    }

    /// Evaluates `expr` (awaiting a promise) and returns its JSON value, or the exception.
    pub async fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let params = json!({ "expression": expr, "awaitPromise": true, "returnByValue": true });
        let r = self.call("Runtime.evaluate", params).await;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.to_string()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    pub async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr)
            .await
            .unwrap_or_else(|e| panic!("{expr} threw: {e}"))
    }

    /// Re-evaluates `expr` until it yields something truthy (not null/false/0/""), and returns
    /// it; panics after [`PAGE_WAIT`] with the last value and the page's console.
    pub async fn wait_for(&self, what: &str, expr: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            // Errors (page still loading, app not started yet) just mean "not yet".
            let last = self.try_eval(expr).await;
            match &last {
                Ok(v)
                    if !matches!(v, Value::Null | Value::Bool(false))
                        && v.as_f64() != Some(0.0)
                        && v.as_str() != Some("") =>
                {
                    return v.clone()
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                let state = self.try_eval(DEBUG_STATE).await;
                panic!(
                    "page never showed {what} within {PAGE_WAIT:?}\n  last: {last:?}\n  page: {state:?}\n  {}",
                    self.console.lock().unwrap().join("\n  ")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Types `text` into the element `selector` the way a keyboard would.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.eval(&format!("document.querySelector({selector:?}).focus()"))
            .await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Clicks the middle of the element `selector` with the mouse.
    pub async fn click(&self, selector: &str) {
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector:?}); e.scrollIntoView();
                   const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        for kind in ["mousePressed", "mouseReleased"] {
            let ev =
                json!({"type": kind, "x": at[0], "y": at[1], "button": "left", "clickCount": 1});
            self.call("Input.dispatchMouseEvent", ev).await;
        }
    }
}

/// What a failed wait prints about the page.
const DEBUG_STATE: &str = "JSON.stringify({ url: location.href, \
    state: document.querySelector('#state')?.textContent, \
    notice: document.querySelector('#notice')?.textContent, \
    events: window.__wsgateEvents })";

/// The path of a file below the crate root.
pub fn crate_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
