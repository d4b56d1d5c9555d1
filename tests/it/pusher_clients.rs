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

#[tokio::test]
async fn laravel_echo_listens_authorizes_refuses_and_excludes_the_sender() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "echo_channels.mjs").await;
    assert_eq!(r["publicEvent"], json!({"order": 7}), "{r}");
    assert_eq!(r["privateEvent"], json!({"state": "packed"}), "{r}");
    // Refused by the app's auth endpoint: Echo's error callback, before the gateway is asked.
    assert_eq!(r["refused"]["type"], "AuthError", "{r}");
    assert_eq!(r["refused"]["status"], 403, "{r}");
    // A whisper on a public channel: pusher:error 4009, delivered to nobody.
    assert_eq!(r["whisperError"]["type"], "PusherError", "{r}");
    assert_eq!(r["whisperError"]["data"]["code"], 4009, "{r}");
    assert_eq!(r["whispersOnNews"], json!([]), "{r}");
    // toOthers(): the sender's socket_id excluded it, and only it.
    assert_eq!(r["bobGot"], json!({"text": "hello"}), "{r}");
    assert_eq!(r["aliceGot"], json!([]), "{r}");
}

#[tokio::test]
async fn laravel_echo_presence_counts_a_user_with_two_tabs_once_and_whispers_skip_the_sender() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "echo_presence.mjs").await;
    let alice = json!({"id": 1, "name": "Alice"});
    let bob = json!({"id": "bob", "name": "Bob"});
    assert_eq!(r["hereAlone"], json!([alice]), "{r}");
    assert_eq!(r["hereBob1"], json!([1, "bob"]), "{r}");
    assert_eq!(r["hereBob2"], json!([1, "bob"]), "{r}");
    assert_eq!(r["joined"], bob, "{r}");
    assert_eq!(r["joining"], json!([bob]), "{r}");
    assert_eq!(r["left"], bob, "{r}");
    assert_eq!(r["leaving"], json!([bob]), "{r}");
    let whisper = json!({"name": "Alice", "typing": true});
    assert_eq!(r["whispered"], json!([whisper, whisper]), "{r}");
    assert_eq!(r["aliceWhispers"], json!([]), "{r}");
    assert_eq!(r["reply"]["data"], json!({"text": "hi"}), "{r}");
    assert_eq!(r["reply"]["meta"]["user_id"], json!("bob"), "{r}");
}

#[tokio::test]
async fn an_encrypted_channel_is_relayed_as_ciphertext_and_decrypted_by_the_client() {
    let gw = Gateway::start_with(with_app).await;
    let r = node(&gw, "echo_encrypted.mjs").await;
    assert_eq!(r["decrypted"], json!({"pin": "4711", "note": "héllo"}), "{r}");
    // The frame on the socket carried the SDK's envelope, not the data.
    assert_eq!(r["relayedKeys"], json!(["ciphertext", "nonce"]), "{r}");
    assert_eq!(r["plaintextOnTheWire"], false, "{r}");
    assert!(!gw.logs().contains("4711"), "the plaintext reached the log");
}
