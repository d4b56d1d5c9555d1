//! Raw client text → the gateway's parse, sanitize and re-serialize path (`sanitize`,
//! `protocol`): what a session does with each text frame.
//!
//! Invariants: no panic; a refusal's error frame is JSON and its `id` and message hold no
//! forbidden character; an accepted `publish` becomes a `message` frame that is JSON, whose
//! `data` holds no forbidden character, is no longer than the text the client sent (plus the
//! fixed envelope), and survives being published again unchanged (sanitizing is idempotent);
//! nothing nested deeper than 32 levels is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wsgate::protocol::{to_json, ClientMsg, ErrorCode, MessageDraft, RoomName, ServerMsg};
use wsgate::sanitize::{parse_client, sanitize_value, MAX_DEPTH};

const FROM: &str = "alice";
const EPOCH: &str = "0123456789abcdef";
const OFFSET: u64 = u64::MAX;
const TS: u64 = u64::MAX;

/// Characters no relayed string may hold, listed here independently of the gateway's own
/// predicate: C0 but `\n` and `\t`, DEL, C1, bidi embeddings, overrides and isolates.
fn forbidden(c: char) -> bool {
    let n = c as u32;
    (n < 0x20 && c != '\n' && c != '\t')
        || (0x7f..=0x9f).contains(&n)
        || (0x202a..=0x202e).contains(&n)
        || (0x2066..=0x2069).contains(&n)
}

fn has_forbidden(v: &Value) -> bool {
    match v {
        Value::String(s) => s.chars().any(forbidden),
        Value::Array(a) => a.iter().any(has_forbidden),
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| k.chars().any(forbidden) || has_forbidden(v)),
        _ => false,
    }
}

/// Nesting depth of a JSON value.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Nesting depth of a JSON text, brackets inside strings skipped: an independent count.
fn text_depth(text: &str) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for c in text.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '[' | '{' => {
                d += 1;
                max = max.max(d);
            }
            ']' | '}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The frame a session sends for an accepted publish, for `data`.
fn message_frame(room: &RoomName, data: &Value) -> String {
    MessageDraft::new(room, FROM, data, TS).finish(EPOCH, OFFSET)
}

fuzz_target!(|bytes: &[u8]| {
    // Text frames are UTF-8 by the time they are parsed (the WebSocket layer closes with
    // 1007 otherwise).
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match parse_client(text) {
        Err(bad) => {
            let frame = ServerMsg::Error {
                id: bad.id.as_ref(),
                code: ErrorCode::BadRequest,
                message: &bad.message,
            }
            .to_text();
            let back: Value = serde_json::from_str(&frame).expect("error frame is JSON");
            assert!(
                !has_forbidden(&back),
                "error frame with a forbidden character: {frame:?}"
            );
            if let Some(id) = &bad.id {
                assert!(id.is_number() || id.as_str().is_some_and(|s| s.len() <= 64));
            }
        }
        Ok(msg) => {
            assert!(
                text_depth(text) <= MAX_DEPTH,
                "accepted a message nested deeper than {MAX_DEPTH}"
            );
            let id = match &msg {
                ClientMsg::Join { id, room, .. }
                | ClientMsg::Leave { id, room }
                | ClientMsg::Publish { id, room, .. } => {
                    assert_eq!(RoomName::parse(room.as_str()).as_ref(), Ok(room));
                    id
                }
                ClientMsg::Refresh { id, .. } => id,
            };
            if let Some(id) = id {
                assert!(
                    id.is_number()
                        || id
                            .as_str()
                            .is_some_and(|s| s.len() <= 64 && !s.chars().any(forbidden)),
                    "bad id accepted: {id:?}"
                );
            }
            let ClientMsg::Publish { room, data, id } = msg else {
                return;
            };
            assert!(!data.is_null());
            assert!(!has_forbidden(&data), "forbidden character kept: {data:?}");
            assert!(depth(&data) < MAX_DEPTH);
            // Sanitizing again changes nothing.
            let mut again = data.clone();
            sanitize_value(&mut again);
            assert_eq!(again, data, "sanitizing is not idempotent");
            // The relayed frame: JSON, carrying exactly the sanitized data.
            let frame = message_frame(&room, &data);
            let parsed: Value = serde_json::from_str(&frame).expect("message frame is JSON");
            assert_eq!(parsed.get("data"), Some(&data), "frame: {frame}");
            assert_eq!(
                parsed.get("room").and_then(Value::as_str),
                Some(room.as_str())
            );
            // Size: the data is never longer than the text it came in; the frame adds only
            // the envelope (type, room, from, ts, epoch, offset), at most its size for `0`.
            let data_json = to_json(&data).expect("data serializes");
            assert!(
                data_json.len() <= text.len(),
                "data grew: {} > {}: {data_json}",
                data_json.len(),
                text.len()
            );
            let envelope = message_frame(&room, &Value::from(0)).len() - 1;
            assert!(frame.len() <= text.len() + envelope);
            // Published again, the relayed data comes back unchanged.
            let mut republish = serde_json::Map::new();
            republish.insert("type".into(), "publish".into());
            republish.insert("room".into(), room.as_str().into());
            republish.insert("data".into(), data.clone());
            if let Some(id) = &id {
                republish.insert("id".into(), id.clone());
            }
            let text2 = to_json(&Value::Object(republish)).expect("serializes");
            match parse_client(&text2) {
                Ok(ClientMsg::Publish {
                    room: room2,
                    data: data2,
                    id: id2,
                }) => {
                    assert_eq!(room2, room);
                    assert_eq!(data2, data, "republished data changed");
                    assert_eq!(id2, id);
                    assert_eq!(message_frame(&room2, &data2), frame);
                }
                other => panic!("republishing {text2:?} gave {other:?}"),
            }
        }
    }
});
