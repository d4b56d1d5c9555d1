//! Measures the gateway's memory while one client churns through new rooms: join, publish
//! once, leave, over and over, each room new. Every such room keeps its history for
//! `rooms.history_ttl` (10 minutes), so only `rooms.history_max_bytes` bounds what they hold.
//! Prints the gateway's resident memory every 10 seconds.
//!
//! ```sh
//! cargo build --release && cargo run --release --example history_churn -- [SECONDS] [BUDGET]
//! ```
//!
//! Defaults: 60 seconds, a budget of "8MiB". The gateway is the `target/<profile>/wsgate`
//! binary with the test settings (rate limits raised so one client can loop fast).

#[path = "../tests/it/support.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::Gateway;

/// Rooms sent back to back before waiting for the server's replies.
const BATCH: u64 = 100;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let budget = args.next().unwrap_or_else(|| "8MiB".to_string());
    let gw = Gateway::start_with(|s| {
        s.set("rooms", "history_max_bytes", json!(budget))
            .unlimited_rate();
    })
    .await;
    let mut client = gw.connect("churner").await;
    // Small frames back to back: do not wait for acknowledgements to send the next one.
    let _ = client.ws.get_ref().get_ref().0.set_nodelay(true);
    let text = "x".repeat(200);
    println!("history_max_bytes {budget}, {seconds} s, 200-byte messages");
    println!(
        "{:>6} {:>10} {:>10} {:>10}",
        "time_s", "rss_kib", "rooms_made", "rooms_kept"
    );
    println!("{:>6} {:>10} {:>10} {:>10}", 0, gw.rss_kib(), 0, 0);
    let start = Instant::now();
    let mut next_report = Duration::from_secs(10);
    let mut n: u64 = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        // A batch of rooms back to back, then the last leave's reply.
        for _ in 0..BATCH {
            let room = format!("churn-{n}");
            client.send(json!({"type":"join","room":room})).await;
            client
                .send(json!({"type":"publish","room":room,"data":{"text":text}}))
                .await;
            client
                .send(json!({"type":"leave","room":room,"id":n}))
                .await;
            n += 1;
        }
        loop {
            let r = client.recv().await;
            assert!(r["type"] != "error", "{r}");
            if r["type"] == "left" && r["id"] == n - 1 {
                break;
            }
        }
        if start.elapsed() >= next_report {
            println!(
                "{:>6} {:>10} {:>10} {:>10}",
                next_report.as_secs(),
                gw.rss_kib(),
                n,
                rooms_kept(&gw).await
            );
            next_report += Duration::from_secs(10);
        }
    }
    println!(
        "end: {} KiB after {n} rooms, {} kept",
        gw.rss_kib(),
        rooms_kept(&gw).await
    );
}

/// The `wsgate_rooms` gauge: rooms the gateway keeps (members or history).
async fn rooms_kept(gw: &Gateway) -> u64 {
    let (_, body) = gw.admin_request("GET", "/metrics", None, None).await;
    body.lines()
        .find_map(|l| l.strip_prefix("wsgate_rooms "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}
