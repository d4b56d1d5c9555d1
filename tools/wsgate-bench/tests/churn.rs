//! A few seconds of `wsgate-bench --churn` against the real gateway binary (built next to this
//! crate's binary: `cargo test --workspace`, or `cargo build -p wsgate` first): the JSON lines
//! come out, nothing is lost, the misbehaving clients are there, and the gateway is back at
//! its baseline after the load.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gateway_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_wsgate-bench")).with_file_name("wsgate");
    assert!(
        bin.exists(),
        "{} is missing: build the gateway first (`cargo build -p wsgate`, or run `cargo test --workspace`)",
        bin.display()
    );
    bin
}

#[test]
fn churn_smoke_reports_lines_and_comes_back_to_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    wsgate::tls::generate_dev_certs(&certs, &["localhost".to_string()]).expect("certs");
    let secret = "churn-smoke-secret-0123456789abcdef";
    let config = dir.path().join("wsgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
static_dir = ""
ping_interval = "1s"
idle_timeout = "3s"
[tls]
cert = "{cert}"
key = "{key}"
[origin]
allowed = ["https://localhost"]
allow_missing = true
[auth]
hs_secret = "{secret}"
[admin]
listen = "127.0.0.1:0"
api_key = "churn-smoke-admin-key"
[limits]
handshakes_per_ip_per_minute = 1000000
handshakes_in_flight_per_ip = 100000
[log]
format = "json"
level = "info"
"#,
            cert = certs.join("server.crt").display(),
            key = certs.join("server.key").display(),
        ),
    )
    .expect("config");
    let mut child = Command::new(gateway_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsgate");
    let stderr = child.stderr.take().expect("stderr");
    let gw = Gateway(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("wsgate ready") {
                let _ = tx.send(line);
            }
        }
    });
    let ready: Value = serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(30))
            .expect("the gateway is ready"),
    )
    .expect("JSON log line");
    let field = |k: &str| ready["fields"][k].as_str().expect(k).to_string();
    let port = field("listen")
        .rsplit_once(':')
        .expect("port")
        .1
        .to_string();
    let admin = field("admin");

    let json = dir.path().join("churn.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
        .args([
            "--churn",
            "--url",
            &format!("wss://localhost:{port}/ws"),
            "--origin",
            "",
            "--metrics-url",
            &format!("http://{admin}/metrics"),
            "--server-pid",
            &gw.0.id().to_string(),
            "--duration",
            "4s",
            "--every",
            "1s",
            "--settle",
            "20s",
            "--connect-rate",
            "40",
            "--open",
            "30",
            "--publish-rate",
            "40",
            "--rooms",
            "4",
            "--misbehave",
            "0.25",
        ])
        .arg("--ca")
        .arg(certs.join("ca.crt"))
        .arg("--json")
        .arg(&json)
        .env("WSGATE_BENCH_SECRET", secret)
        .output()
        .expect("run wsgate-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wsgate-bench --churn failed:\n{stderr}"
    );

    let lines: Vec<Value> = std::fs::read_to_string(&json)
        .expect("--json file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let phase = |p: &str| -> Vec<&Value> { lines.iter().filter(|l| l["phase"] == p).collect() };
    assert_eq!(phase("baseline").len(), 1, "{lines:#?}");
    assert!(phase("load").len() >= 4, "one line a second: {lines:#?}");
    for l in phase("load") {
        for k in ["rss_mib", "fds", "tasks", "connections", "rooms"] {
            assert!(l["gateway"][k].is_number(), "{k} in {l}");
        }
    }
    // Connections were open while the load ran.
    assert!(phase("load")
        .iter()
        .any(|l| l["gateway"]["connections"].as_f64() > Some(0.0)));
    let summary = lines.last().expect("a summary");
    assert_eq!(summary["phase"], "summary");
    assert_eq!(summary["pass"], true, "{summary:#}");
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["duplicates"], 0);
    assert_eq!(summary["final"]["connections"], 0.0, "{summary:#}");
    assert!(summary["publishes"].as_u64() > Some(0), "{summary:#}");
    assert!(summary["deliveries"].as_u64() > Some(0), "{summary:#}");
    assert!(
        summary["clients"]["well_behaved_completed"].as_u64() > Some(0),
        "{summary:#}"
    );
    assert!(
        summary["clients"]["misbehaved"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "{summary:#}"
    );
    assert!(
        summary["latency_p99_ms"]["first"].is_number(),
        "{summary:#}"
    );
}
