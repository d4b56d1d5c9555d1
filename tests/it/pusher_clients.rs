//! The Pusher endpoints (CONTRACT §10) against the clients Laravel apps use, end to end:
//! `laravel-echo` over `pusher-js` in Node, hand-signed HTTP API requests for the limits the
//! `pusher` SDK never crosses, the close codes a raw client provokes, and the PHP example.
//! The scripts live in `tests/pusher/`, their packages pinned in its lockfile.

use serde_json::{json, Value};

use crate::pusher::{node, with_app};
use crate::support::*;

#[tokio::test]
async fn the_http_api_refuses_stale_mismatched_oversized_and_overlong_requests() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "api_limits.mjs").await;
    let status = |case: &str| r[case]["status"].as_u64().unwrap_or(0);
    assert_eq!(status("stale"), 401, "{r}");
    assert_eq!(status("future"), 401, "{r}");
    assert_eq!(status("bodyMd5"), 401, "{r}");
    assert!(
        r["bodyMd5"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("body_md5")),
        "{r}"
    );
    assert_eq!(status("at10k"), 200, "{r}");
    assert_eq!(status("over10k"), 413, "{r}");
    assert_eq!(status("batchOf10"), 200, "{r}");
    assert_eq!(status("batchOf11"), 400, "{r}");
    assert_eq!(status("channels101"), 400, "{r}");
    assert_eq!(status("channels100"), 200, "{r}");
    assert_eq!(status("marker"), 200, "{r}");
    // The subscriber got the accepted events, in order, and nothing of the refused ones.
    let mut expected: Vec<Value> = vec![json!("len:10240")];
    expected.extend((0..10).map(|i| json!(format!("b{i}"))));
    expected.push(json!("wide-ok"));
    assert_eq!(r["seen"], Value::Array(expected), "{r}");
}
