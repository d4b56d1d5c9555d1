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

impl BadRequest {
    fn new(id: Option<RequestId>, message: impl Into<String>) -> Self {
        BadRequest {
            id,
            message: message.into(),
        }
    }
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

fn check_id(id: Option<Value>) -> Result<Option<RequestId>, BadRequest> {
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(Value::Number(n))),
        Some(Value::String(s)) if s.len() <= MAX_ID_BYTES && !s.chars().any(is_forbidden_char) => {
            Ok(Some(Value::String(s)))
        }
        Some(_) => Err(BadRequest::new(
            None,
            format!("id must be a number or a string of at most {MAX_ID_BYTES} bytes"),
        )),
    }
}

/// Parses and checks one client text message.
pub fn parse_client(text: &str) -> Result<ClientMsg, BadRequest> {
    if json_depth(text, MAX_DEPTH) > MAX_DEPTH {
        return Err(BadRequest::new(
            None,
            format!("JSON nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        let message = if e.is_syntax() || e.is_eof() {
            format!("not JSON: {e}")
        } else if text.trim_start().starts_with('{') {
            format!("bad message: {e}")
        } else {
            "a message must be a JSON object".to_string()
        };
        // Echo the id when the message is a JSON object with a usable one.
        let id = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .and_then(|id| check_id(Some(id)).ok().flatten());
        BadRequest::new(id, message)
    })?;
    let id = check_id(env.id)?;
    let room = |room: Option<String>| -> Result<RoomName, BadRequest> {
        let name = room.ok_or_else(|| BadRequest::new(id.clone(), "missing field `room`"))?;
        RoomName::parse(&name).map_err(|m| BadRequest::new(id.clone(), m))
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
            let mut data = env.data.ok_or_else(|| {
                BadRequest::new(id.clone(), "missing field `data` (null is not data)")
            })?;
            sanitize_value(&mut data);
            Ok(ClientMsg::Publish { room, data, id })
        }
        "refresh" => {
            let token = env
                .token
                .ok_or_else(|| BadRequest::new(id.clone(), "missing field `token`"))?;
            Ok(ClientMsg::Refresh { token, id })
        }
        other => Err(BadRequest::new(
            id,
            format!(
                "unknown type {:?} (join, leave, publish, refresh)",
                clean_str(&other.chars().take(32).collect::<String>())
            ),
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

    proptest! {
        #[test]
        fn any_text_never_panics(text in any::<String>()) {
            let _ = parse_client(&text);
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
