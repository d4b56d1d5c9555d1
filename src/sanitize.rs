//! Raw client text → checked [`ClientMsg`]. Pure: no I/O, no state.
//!
//! The gateway never relays a client's bytes: it parses them, checks every field, strips
//! forbidden characters from the strings in `data` (keys and values), and later re-serializes.
//! Nesting is measured on the raw text before parsing, so a deeply nested field that the
//! envelope would otherwise skip is refused too.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::protocol::{ClientMsg, RequestId, RoomName, Since, MAX_ID_BYTES};

/// Deepest JSON nesting accepted in a client message (CONTRACT §5).
pub const MAX_DEPTH: usize = 32;

/// A refused client message: answered with `bad_request`, the connection stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    /// The request's `id` when it could be read, so the client can match the error.
    pub id: Option<RequestId>,
    pub message: String,
}

/// The fields any client message may carry; unknown ones are ignored.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    token: Option<String>,
}

/// Whether `c` is removed from strings in `data`: C0 controls except `\n` and `\t`, DEL, C1
/// controls, and the Unicode bidi embedding/override/isolate controls.
pub fn is_forbidden_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Removes forbidden characters; borrows when there is nothing to remove.
pub fn clean_str(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(is_forbidden_char) {
        std::borrow::Cow::Owned(s.chars().filter(|c| !is_forbidden_char(*c)).collect())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Nesting depth of a JSON text (arrays and objects), counted without parsing. Brackets in
/// strings do not count. Stops early once `limit` is exceeded.
pub fn json_depth(text: &str, limit: usize) -> usize {
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > limit {
                        return max;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Sanitizes a `data` value in place.
pub fn sanitize_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = clean_str(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(sanitize_value),
        Value::Object(map) => {
            if map.keys().any(|k| k.chars().any(is_forbidden_char)) {
                let old = std::mem::take(map);
                let mut rebuilt = Map::with_capacity(old.len());
                for (k, mut v) in old {
                    sanitize_value(&mut v);
                    rebuilt.insert(clean_str(&k).into_owned(), v);
                }
                *map = rebuilt;
            } else {
                map.values_mut().for_each(sanitize_value);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A request id as the client wrote it, or `None` when it is absent, `null` or unusable.
fn check_id(id: Option<Value>) -> Result<Option<RequestId>, String> {
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(Value::Number(n))),
        Some(Value::String(s)) if s.len() <= MAX_ID_BYTES && !s.chars().any(is_forbidden_char) => {
            Ok(Some(Value::String(s)))
        }
        Some(_) => Err(format!(
            "id must be a number or a string of at most {MAX_ID_BYTES} bytes"
        )),
    }
}

/// The top-level `id` of a message, when it can be read: only the outer object is scanned,
/// and every other member's value is skipped by its brackets without being parsed. So a
/// message refused for its depth, its type or any field still gets its `id` echoed, even one
/// nested far deeper than serde_json's own recursion limit.
pub fn top_level_id(text: &str) -> Option<RequestId> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key: std::borrow::Cow<'_, str> = serde_json::from_str(&text[i..key_end]).ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value_end = value_end(b, i)?;
        if key == "id" {
            let id = serde_json::from_str(&text[i..value_end]).ok()?;
            return check_id(Some(id)).ok().flatten();
        }
        i = skip_ws(b, value_end);
        if b.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// The index just past the JSON string starting at `b[start]` (a `"`).
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while let Some(c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the JSON value starting at `b[start]`, found by counting brackets
/// (strings skipped); the value itself is not checked.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(c) = b.get(i) {
        match c {
            b'"' => {
                i = string_end(b, i)?;
                if depth == 0 {
                    return Some(i);
                }
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth == 0 => return Some(i),
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Parses and checks one client text message. A refusal carries the request's top-level
/// `id` whenever it can be read (CONTRACT §4).
pub fn parse_client(text: &str) -> Result<ClientMsg, BadRequest> {
    parse_checked(text).map_err(|message| BadRequest {
        id: top_level_id(text),
        message,
    })
}

fn parse_checked(text: &str) -> Result<ClientMsg, String> {
    if json_depth(text, MAX_DEPTH) > MAX_DEPTH {
        return Err(format!("JSON nested deeper than {MAX_DEPTH} levels"));
    }
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("not JSON: {e}")
        } else if text.trim_start().starts_with('{') {
            format!("bad message: {e}")
        } else {
            "a message must be a JSON object".to_string()
        }
    })?;
    let id = check_id(env.id)?;
    let room = |room: Option<String>| -> Result<RoomName, String> {
        let name = room.ok_or("missing field `room`")?;
        RoomName::parse(&name).map_err(str::to_string)
    };
    match env.kind.as_str() {
        "join" => Ok(ClientMsg::Join {
            room: room(env.room)?,
            since: env.since,
            id,
        }),
        "leave" => Ok(ClientMsg::Leave {
            room: room(env.room)?,
            id,
        }),
        "publish" => {
            let room = room(env.room)?;
            let mut data = env.data.ok_or("missing field `data` (null is not data)")?;
            sanitize_value(&mut data);
            Ok(ClientMsg::Publish { room, data, id })
        }
        "refresh" => {
            let token = env.token.ok_or("missing field `token`")?;
            Ok(ClientMsg::Refresh { token, id })
        }
        other => Err(format!(
            "unknown type {:?} (join, leave, publish, refresh)",
            clean_str(&other.chars().take(32).collect::<String>())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_message_type() {
        assert_eq!(
            parse_client(r#"{"type":"join","room":"lobby","id":1}"#),
            Ok(ClientMsg::Join {
                room: RoomName::parse("lobby").unwrap(),
                since: None,
                id: Some(Value::from(1))
            })
        );
        assert!(matches!(
            parse_client(r#"{"type":"join","room":"lobby","since":{"epoch":"a1","offset":41}}"#),
            Ok(ClientMsg::Join {
                since: Some(Since { offset: 41, .. }),
                ..
            })
        ));
        assert!(matches!(
            parse_client(r#"{"type":"leave","room":"lobby","id":"x"}"#),
            Ok(ClientMsg::Leave { .. })
        ));
        assert!(matches!(
            parse_client(r#"{"type":"refresh","token":"t","id":5}"#),
            Ok(ClientMsg::Refresh { .. })
        ));
    }

    #[test]
    fn unknown_fields_are_ignored_and_from_is_not_trusted() {
        let msg = parse_client(
            r#"{"type":"publish","room":"r","data":{"text":"hi"},"from":"mallory","extra":[1,2]}"#,
        )
        .expect("valid");
        assert_eq!(
            msg,
            ClientMsg::Publish {
                room: RoomName::parse("r").unwrap(),
                data: serde_json::json!({"text":"hi"}),
                id: None
            }
        );
    }

    #[test]
    fn refusals_are_specific() {
        let cases = [
            ("not json", "not JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"room":"x"}"#, "type"),
            (r#"{"type":"dance"}"#, "unknown type"),
            (r#"{"type":"join"}"#, "room"),
            (r#"{"type":"join","room":5}"#, "bad message"),
            (r#"{"type":"join","room":"a b"}"#, "room names"),
            (r#"{"type":"publish","room":"a"}"#, "data"),
            (r#"{"type":"join","room":"a","id":{"x":1}}"#, "id must be"),
        ];
        for (text, needle) in cases {
            let err = parse_client(text).expect_err(text);
            assert!(err.message.contains(needle), "{text}: {}", err.message);
        }
    }

    #[test]
    fn error_echoes_id_when_readable() {
        let err = parse_client(r#"{"type":"join","room":"a b","id":7}"#).expect_err("bad room");
        assert_eq!(err.id, Some(Value::from(7)));
        let err = parse_client(r#"{"type":"join","room":5,"id":"x"}"#).expect_err("bad type");
        assert_eq!(err.id, Some(Value::from("x")));
        let err = parse_client(r#"{"room":"r","id":8}"#).expect_err("no type");
        assert_eq!(err.id, Some(Value::from(8)));
    }

    #[test]
    fn error_echoes_the_top_level_id_for_depth_and_type_refusals() {
        let deep = |levels: usize| {
            format!(
                r#"{{"type":"publish","room":"r","data":{}1{},"id":"deep"}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        for levels in [MAX_DEPTH, 200, 20_000] {
            let err = parse_client(&deep(levels)).expect_err("too deep");
            assert!(err.message.contains("nested"), "{}", err.message);
            assert_eq!(err.id, Some(Value::from("deep")), "{levels} levels");
        }
        let cases = [
            (r#"{"type":"dance","id":1}"#, Value::from(1)),
            (r#"{"type":5,"id":2}"#, Value::from(2)),
            (r#"{"type":["join"],"room":"r","id":3}"#, Value::from(3)),
            (
                r#" { "x" : {"id":0,"s":"}\",\"id\":9"} , "id" : "a\"b" } "#,
                Value::from("a\"b"),
            ),
            (
                r#"{"type":"join","room":"a b","id":1e3}"#,
                serde_json::from_str("1e3").unwrap(),
            ),
        ];
        for (text, id) in cases {
            assert_eq!(parse_client(text).expect_err(text).id, Some(id), "{text}");
        }
        for text in [
            r#"{"type":"dance","id":{"x":1}}"#,
            r#"{"type":"dance","id":null}"#,
            r#"{"type":"dance","id":"\u0007"}"#,
            r#"["id",1]"#,
            r#"{"type":"dance","id":1"#,
            r#"{"type":"dance" "id":1}"#,
        ] {
            assert_eq!(parse_client(text).expect_err(text).id, None, "{text}");
        }
    }

    #[test]
    fn numbers_are_kept_as_the_client_wrote_them() {
        let data = "[1e15,1E+15,-0.0,0.1e-7,12345678901234567890123,1.50,-7]";
        let text = format!(r#"{{"type":"publish","room":"r","data":{data}}}"#);
        let Ok(ClientMsg::Publish { data: clean, .. }) = parse_client(&text) else {
            panic!("valid publish")
        };
        assert_eq!(
            crate::protocol::to_json(&clean).unwrap(),
            data.replace("E+", "e")
        );
    }

    #[test]
    fn depth_limit_counts_the_whole_message() {
        let ok = format!(
            r#"{{"type":"publish","room":"r","data":{}1{}}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(parse_client(&ok).is_ok());
        let deep = format!(
            r#"{{"type":"publish","room":"r","data":{}1{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(parse_client(&deep).unwrap_err().message.contains("nested"));
        let hidden = format!(
            r#"{{"type":"join","room":"r","junk":{}1{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(
            parse_client(&hidden).is_err(),
            "ignored fields are measured too"
        );
        assert_eq!(json_depth(r#"{"a":"[[[[["}"#, 32), 1);
    }

    #[test]
    fn strips_forbidden_characters_from_keys_and_values() {
        let msg = parse_client(
            "{\"type\":\"publish\",\"room\":\"r\",\"data\":{\"te\\u0007xt\":\"a\\r\\nb\\tc\\u0000\\u007f\\u0085\\u202ed\\u2069\",\"n\":[\"\\u001b[31m\"]}}",
        )
        .expect("valid");
        let ClientMsg::Publish { data, .. } = msg else {
            panic!("publish expected")
        };
        assert_eq!(data, serde_json::json!({"text": "a\nb\tcd", "n": ["[31m"]}));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn has_forbidden(v: &Value) -> bool {
        match v {
            Value::String(s) => s.chars().any(is_forbidden_char),
            Value::Array(a) => a.iter().any(has_forbidden),
            Value::Object(m) => m
                .iter()
                .any(|(k, v)| k.chars().any(is_forbidden_char) || has_forbidden(v)),
            _ => false,
        }
    }

    /// JSON text as a client might write it: numbers in every notation, escapes that
    /// re-serialize shorter or longer, forbidden characters, whitespace, duplicate keys.
    fn arb_json_text() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            Just("1e15".to_string()),
            Just("-0".to_string()),
            Just("1E+300".to_string()),
            Just("0.000001".to_string()),
            Just("-1.5e-7".to_string()),
            Just("123456789012345678901234567890".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
        ];
        let piece = prop_oneof![
            "[a-z ]{0,4}",
            Just("\\u00e9".to_string()),
            Just("\\ud83d\\ude00".to_string()),
            Just("\\u0007".to_string()),
            Just("\\r\\n\\t".to_string()),
            Just("\\/\\\"\\\\".to_string()),
            Just("\u{7f}\u{85}\u{202e}\u{2066}".to_string()),
            Just("\\u202e\\u0085".to_string()),
        ];
        let string = prop::collection::vec(piece, 0..4).prop_map(|p| format!("\"{}\"", p.concat()));
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            number,
            string.clone(),
        ];
        let ws = prop_oneof![Just(""), Just(" "), Just("\n\t ")];
        leaf.prop_recursive(5, 48, 6, move |inner| {
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..6), ws.clone())
                    .prop_map(|(items, w)| format!("[{w}{}{w}]", items.join(&format!("{w},{w}")))),
                (
                    prop::collection::vec((string.clone(), inner), 0..6),
                    ws.clone()
                )
                    .prop_map(|(members, w)| {
                        let members: Vec<String> = members
                            .iter()
                            .map(|(k, v)| format!("{k}{w}:{w}{v}"))
                            .collect();
                        format!("{{{w}{}{w}}}", members.join(","))
                    }),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_text_never_panics(text in any::<String>()) {
            let _ = parse_client(&text);
        }

        #[test]
        fn sanitized_data_is_never_longer_than_the_data_sent(data in arb_json_text()) {
            let text = format!(r#"{{"type":"publish","room":"r","data":{data}}}"#);
            // `data: null` reads as a missing field and is refused; all else is accepted.
            if let Ok(ClientMsg::Publish { data: clean, .. }) = parse_client(&text) {
                let out = crate::protocol::to_json(&clean).expect("serializes");
                prop_assert!(out.len() <= data.len(), "{} > {}: {data} -> {out}", out.len(), data.len());
            } else {
                prop_assert_eq!(data, "null");
            }
        }

        #[test]
        fn sanitized_output_is_valid_json_without_forbidden_chars(data in arb_json()) {
            // `data: null` reads as a missing field: refused (covered above).
            prop_assume!(!data.is_null());
            let text = serde_json::json!({"type":"publish","room":"r","data":data}).to_string();
            let ClientMsg::Publish { data: clean, .. } = parse_client(&text).expect("valid publish") else {
                panic!("publish expected");
            };
            prop_assert!(!has_forbidden(&clean));
            let out = serde_json::to_string(&clean).expect("serializes");
            let back: Value = serde_json::from_str(&out).expect("valid JSON out");
            prop_assert_eq!(&back, &clean);
            if !has_forbidden(&data) {
                prop_assert_eq!(clean, data);
            }
        }
    }
}
