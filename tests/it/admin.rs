//! The admin listener (CONTRACT §7) over real HTTP, and the operator's signals: SIGHUP reloads
//! and SIGTERM draining.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use wsgate::auth::unix_now;

use crate::hub::{
    admin_publish, connect_origin, metric, metric_value, metrics_text, next_event, next_message,
    wait_metric, without_ts, Event,
};
use crate::support::{Closed, Gateway, ORIGIN, WAIT};

#[tokio::test]
async fn health_and_readiness() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.admin_request("GET", "/healthz", None, None).await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        gw.admin_request("GET", "/readyz", None, None).await,
        (200, "ready\n".to_string())
    );
}

#[tokio::test]
async fn readyz_turns_503_while_draining() {
    let mut gw = Gateway::start_with(|s| {
        s.set("server", "shutdown_grace", json!("60s")).set(
            "server",
            "handshake_timeout",
            json!("60s"),
        );
    })
    .await;
    let mut client = gw.connect("alice").await;
    client.join("r").await;
    // A connection still in its handshake (TLS done, no request yet): the drain waits for it,
    // so the gateway stays draining until the test lets go, however busy the machine.
    let stalled = gw.tls().await;
    assert_eq!(
        gw.admin_request("GET", "/readyz", None, None).await,
        (200, "ready\n".to_string())
    );
    gw.signal("TERM");
    gw.wait_log("shutting down").await;
    assert_eq!(
        gw.admin_request("GET", "/readyz", None, None).await,
        (503, "draining\n".to_string())
    );
    // The process is alive while it drains: /healthz still answers.
    assert_eq!(
        gw.admin_request("GET", "/healthz", None, None).await,
        (200, "ok\n".to_string())
    );
    assert_eq!(client.closed().await, Closed::Code(1001));
    drop(stalled);
    assert_eq!(gw.wait_exit(WAIT).await, Some(0));
}

#[tokio::test]
async fn the_api_needs_the_key_and_answers_errors_plainly() {
    let gw = Gateway::start().await;
    let unauthorized = json!({"error":"missing or wrong Authorization: Bearer <admin.api_key>"});
    for key in [
        None,
        Some("wrong-key"),
        Some(""),
        Some("test-admin-key-but-longer"),
    ] {
        for (method, path) in [
            ("GET", "/api/rooms"),
            ("POST", "/api/publish"),
            ("POST", "/api/disconnect"),
            ("GET", "/api/nope"),
        ] {
            let (status, body) = gw
                .admin_request(method, path, key, Some(r#"{"user":"bob"}"#))
                .await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {body}");
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), unauthorized);
        }
    }
    // Another scheme is not the key either; the scheme name is case-insensitive.
    let (status, body) = raw_get(&gw, "/api/rooms", "Basic test-admin-key").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = raw_get(&gw, "/api/rooms", "bearer test-admin-key").await;
    assert_eq!((status, body.as_str()), (200, "[]"));

    let (status, body) = gw.api("GET", "/api/nope", None).await;
    assert_eq!(
        (status, body),
        (404, json!({"error":"no such admin route"}))
    );
    let (status, body) = gw.admin_request("GET", "/nope", None, None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = gw.api("GET", "/api/publish", None).await;
    assert_eq!((status, body), (405, json!({"error":"method not allowed"})));

    // Bad JSON: 400 with the reason.
    assert_error_starts_with(
        &admin_json(&gw, "POST", "/api/publish", "{\"room\":").await,
        400,
        "bad JSON: EOF while parsing",
    );
    assert_error_starts_with(
        &gw.api("POST", "/api/publish", Some(json!({"data":{"text":"hi"}})))
            .await,
        400,
        "bad JSON: missing field `room`",
    );
    assert_error_starts_with(
        &gw.api("POST", "/api/disconnect", Some(json!({"user":5})))
            .await,
        400,
        "bad JSON: invalid type: integer `5`",
    );
    // Nested deeper than a client may: 400 too.
    let deep = format!(
        r#"{{"room":"r","data":{}1{}}}"#,
        "[".repeat(32),
        "]".repeat(32)
    );
    assert_eq!(
        admin_json(&gw, "POST", "/api/publish", &deep).await,
        (400, json!({"error":"JSON nested deeper than 32 levels"}))
    );

    // Oversized bodies: 413 (publish allows max_message_bytes plus 1 KiB of envelope).
    let big = json!({"room":"r","data":"x".repeat(20_000)}).to_string();
    assert_eq!(
        admin_json(&gw, "POST", "/api/publish", &big).await,
        (413, json!({"error":"body larger than 17408 bytes"}))
    );
    let big = json!({"user":"x".repeat(5_000)}).to_string();
    assert_eq!(
        admin_json(&gw, "POST", "/api/disconnect", &big).await,
        (413, json!({"error":"body larger than 4096 bytes"}))
    );
}

/// Expects `status` and a JSON body whose `error` starts with `prefix`.
fn assert_error_starts_with((status, body): &(u16, Value), want: u16, prefix: &str) {
    assert_eq!(*status, want, "{body}");
    let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(error.starts_with(prefix), "{body}");
}

/// An admin request with the key whose JSON answer is compared as a whole.
async fn admin_json(gw: &Gateway, method: &str, path: &str, body: &str) -> (u16, Value) {
    let key = Some(gw.api_key.as_str());
    let (status, body) = gw.admin_request(method, path, key, Some(body)).await;
    (status, serde_json::from_str::<Value>(&body).unwrap())
}

/// The status a handshake with `token` from `origin` is refused with, if it is.
async fn refusal_status(gw: &Gateway, origin: &str, token: &str) -> Option<u16> {
    connect_origin(gw, origin, token).await.err().map(|e| e.0)
}

/// A GET with a raw Authorization header value.
async fn raw_get(gw: &Gateway, path: &str, authorization: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: {authorization}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .unwrap();
    crate::support::parse_http(&raw)
}

#[tokio::test]
async fn admin_publish_reaches_clients_as_the_server_and_is_sanitized() {
    let gw = Gateway::start().await;
    let (mut alice, mut bob, epoch) = gw.pair_in_room("alice", "lobby").await;

    let (status, body) = gw
        .api(
            "POST",
            "/api/publish",
            Some(json!({"room":"lobby","data":{"te\u{7}xt":"hi\r\n\u{202e}there\u{85}","n":[1,"\u{1b}x"]},"from":"mallory"})),
        )
        .await;
    assert_eq!((status, body), (200, json!({"offset":1})));
    let expected = crate::hub::message(
        "lobby",
        "@server",
        json!({"text":"hi\nthere","n":[1,"x"]}),
        &epoch,
        1,
    );
    assert_eq!(next_message(&mut alice).await, expected);
    assert_eq!(next_message(&mut bob).await, expected);
    // Offsets are shared with client publishes.
    let ack = crate::hub::publish(&mut alice, "lobby", json!("from alice"), 1).await;
    assert_eq!(ack, json!({"type":"ack","id":1,"offset":2}));
    assert_eq!(admin_publish(&gw, "lobby", json!(3)).await, 3);
    assert_eq!(
        next_message(&mut bob).await,
        crate::hub::message("lobby", "alice", json!("from alice"), &epoch, 2)
    );
    assert_eq!(
        next_message(&mut bob).await,
        crate::hub::message("lobby", "@server", json!(3), &epoch, 3)
    );

    // Refusals: a bad room name, and no data (null is not data, as for a client).
    let (status, body) = gw
        .api("POST", "/api/publish", Some(json!({"room":"a b","data":1})))
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error":"room names use only A-Z a-z 0-9 _ . : -"})
        )
    );
    assert_error_starts_with(
        &gw.api("POST", "/api/publish", Some(json!({"room":"lobby"})))
            .await,
        400,
        "bad JSON: missing field `data`",
    );
    let (status, body) = gw
        .api(
            "POST",
            "/api/publish",
            Some(json!({"room":"lobby","data":null})),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error":"missing field `data` (null is not data)"})
        )
    );
    // Nothing of the refused ones reached the room: after 3 comes offset 4.
    assert_eq!(admin_publish(&gw, "lobby", json!("four")).await, 4);
    assert_eq!(
        next_message(&mut alice).await,
        crate::hub::message("lobby", "@server", json!(3), &epoch, 3)
    );
    assert_eq!(
        next_message(&mut alice).await,
        crate::hub::message("lobby", "@server", json!("four"), &epoch, 4)
    );
}

#[tokio::test]
async fn admin_publish_to_an_empty_room_is_kept_in_its_history() {
    let gw = Gateway::start().await;
    let mut alice = gw.connect("alice").await;
    let epoch = alice.join("ghost").await["epoch"].clone();
    alice
        .request(json!({"type":"leave","room":"ghost"}), 1)
        .await;
    // Nobody is in the room.
    let (_, rooms) = gw.api("GET", "/api/rooms", None).await;
    assert_eq!(rooms, json!([]));
    assert_eq!(admin_publish(&gw, "ghost", json!({"n":1})).await, 1);
    assert_eq!(admin_publish(&gw, "ghost", json!({"n":2})).await, 2);
    // A room nobody ever joined gets a stream too.
    assert_eq!(admin_publish(&gw, "never-joined", json!("x")).await, 1);

    let j = crate::hub::join_since(&mut alice, "ghost", &epoch, 0, 2).await;
    assert_eq!(
        j,
        json!({"type":"joined","room":"ghost","epoch":epoch,"offset":2,"recovered":true,
               "members":["alice"],"id":2})
    );
    for n in 1..=2 {
        assert_eq!(
            next_message(&mut alice).await,
            crate::hub::message("ghost", "@server", json!({"n":n}), &epoch, n)
        );
    }
    let j = alice.join("never-joined").await;
    assert_eq!(j["offset"], 1, "{j}");
}

#[tokio::test]
async fn admin_disconnect_closes_every_session_of_the_user_with_4003() {
    let gw = Gateway::start().await;
    let mut alice = gw.connect("alice").await;
    let epoch = alice.join("lobby").await["epoch"].clone();
    let mut bob1 = gw.connect("bob").await;
    let mut bob2 = gw.connect("bob").await;
    let mut bobby = gw.connect("bobby").await; // a user whose name starts with "bob"
    bob1.join("lobby").await;
    bob2.join("lobby").await;
    bob2.join("elsewhere").await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","room":"lobby","event":"join","user":"bob"})
    );

    let (status, body) = gw
        .api("POST", "/api/disconnect", Some(json!({"user":"bob"})))
        .await;
    assert_eq!((status, body), (200, json!({"closed":2})));
    assert_eq!(bob1.closed().await, Closed::Code(4003));
    assert_eq!(bob2.closed().await, Closed::Code(4003));
    // alice sees bob leave once, then the barrier.
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","room":"lobby","event":"leave","user":"bob"})
    );
    let barrier = admin_publish(&gw, "lobby", json!("barrier")).await;
    assert_eq!(
        next_message(&mut alice).await,
        crate::hub::message("lobby", "@server", json!("barrier"), &epoch, barrier)
    );
    let (_, rooms) = gw.api("GET", "/api/rooms", None).await;
    assert_eq!(rooms, json!([{"room":"lobby","members":1,"connections":1}]));
    // bobby was not touched.
    assert_eq!(bobby.join("lobby").await["type"], "joined");

    for user in ["bob", "nobody", ""] {
        let (status, body) = gw
            .api("POST", "/api/disconnect", Some(json!({ "user": user })))
            .await;
        assert_eq!((status, body), (200, json!({"closed":0})), "{user:?}");
    }
    assert_eq!(metric(&gw, "wsgate_closes_total{code=\"4003\"}").await, 2.0);
}

#[tokio::test]
async fn admin_rooms_lists_members_and_connections() {
    let gw = Gateway::start().await;
    let (status, rooms) = gw.api("GET", "/api/rooms", None).await;
    assert_eq!((status, rooms), (200, json!([])));
    let mut alice1 = gw.connect("alice").await;
    let mut alice2 = gw.connect("alice").await;
    let mut bob = gw.connect("bob").await;
    alice1.join("lobby").await;
    alice2.join("lobby").await;
    bob.join("lobby").await;
    bob.join("side").await;
    let (status, rooms) = gw.api("GET", "/api/rooms", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        rooms,
        json!([
            {"room":"lobby","members":2,"connections":3},
            {"room":"side","members":1,"connections":1},
        ])
    );
    bob.request(json!({"type":"leave","room":"side"}), 1).await;
    alice2
        .request(json!({"type":"leave","room":"lobby"}), 2)
        .await;
    let (_, rooms) = gw.api("GET", "/api/rooms", None).await;
    assert_eq!(rooms, json!([{"room":"lobby","members":2,"connections":2}]));
}

// ---------------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------------

/// Checks the Prometheus text exposition format (version 0.0.4) strictly: comment lines,
/// metric and label names, quoting and escapes, float values, one TYPE per family before its
/// samples, no duplicate series, consistent histograms. Returns the samples.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    fn is_name(s: &str, colons: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
    }
    fn value(s: &str) -> Option<f64> {
        match s {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ if s
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
            {
                s.parse().ok()
            }
            _ => None,
        }
    }
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    let mut sampled: BTreeSet<String> = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let ctx = format!("line {}: {line:?}", n + 1);
        assert!(!line.is_empty(), "{ctx}: empty line");
        if let Some(rest) = line.strip_prefix("# ") {
            let (kind, rest) = rest.split_once(' ').expect(&ctx);
            let (name, arg) = rest.split_once(' ').expect(&ctx);
            assert!(is_name(name, true), "{ctx}: metric name");
            match kind {
                "HELP" => assert!(helped.insert(name.to_string()), "{ctx}: second HELP"),
                "TYPE" => {
                    assert!(
                        matches!(
                            arg,
                            "counter" | "gauge" | "histogram" | "summary" | "untyped"
                        ),
                        "{ctx}: type"
                    );
                    assert!(!sampled.contains(name), "{ctx}: TYPE after samples");
                    assert!(
                        types.insert(name.to_string(), arg.to_string()).is_none(),
                        "{ctx}: second TYPE"
                    );
                }
                _ => panic!("{ctx}: unknown comment kind"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{ctx}: malformed comment");
        // name{labels} value
        let name_end = line.find(['{', ' ']).expect(&ctx);
        let name = &line[..name_end];
        assert!(is_name(name, true), "{ctx}: metric name");
        let mut rest = &line[name_end..];
        let mut labels: Vec<(String, String)> = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let close;
            loop {
                let start = chars.peek().expect(&ctx).0;
                if body[start..].starts_with('}') {
                    close = start;
                    break;
                }
                let eq = body[start..].find('=').expect(&ctx) + start;
                let label = &body[start..eq];
                assert!(is_name(label, false), "{ctx}: label name {label:?}");
                assert!(!label.starts_with("__"), "{ctx}: reserved label");
                assert_eq!(body[eq + 1..].chars().next(), Some('"'), "{ctx}: quote");
                let mut value = String::new();
                let mut i = eq + 2;
                loop {
                    let c = body[i..].chars().next().expect(&ctx);
                    i += c.len_utf8();
                    match c {
                        '"' => break,
                        '\\' => {
                            let e = body[i..].chars().next().expect(&ctx);
                            i += 1;
                            value.push(match e {
                                '\\' => '\\',
                                '"' => '"',
                                'n' => '\n',
                                _ => panic!("{ctx}: bad escape"),
                            });
                        }
                        '\n' => panic!("{ctx}: raw newline"),
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.iter().all(|(l, _)| l != label),
                    "{ctx}: duplicate label"
                );
                labels.push((label.to_string(), value));
                match body[i..].chars().next().expect(&ctx) {
                    ',' => i += 1,
                    '}' => {}
                    _ => panic!("{ctx}: expected , or }}"),
                }
                while chars.peek().is_some_and(|(j, _)| *j < i) {
                    chars.next();
                }
            }
            rest = &body[close + 1..];
        }
        let rest = rest.strip_prefix(' ').expect(&ctx);
        let mut parts = rest.split(' ');
        let v = value(parts.next().expect(&ctx)).unwrap_or_else(|| panic!("{ctx}: value"));
        if let Some(ts) = parts.next() {
            assert!(ts.parse::<i64>().is_ok(), "{ctx}: timestamp");
        }
        assert!(parts.next().is_none(), "{ctx}: trailing fields");
        // The family this sample belongs to must have been TYPEd.
        let family = types
            .get_key_value(name)
            .or_else(|| {
                ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    types
                        .get_key_value(base)
                        .filter(|(_, t)| t.as_str() == "histogram" || t.as_str() == "summary")
                })
            })
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| panic!("{ctx}: no TYPE for this family"));
        sampled.insert(family.clone());
        if types[&family] == "counter" {
            assert!(v >= 0.0, "{ctx}: negative counter");
        }
        let series = if labels.is_empty() {
            name.to_string()
        } else {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("{name}{{{}}}", l.join(","))
        };
        assert!(
            samples.insert(series, v).is_none(),
            "{ctx}: duplicate series"
        );
    }
    // Histograms: cumulative buckets ending in +Inf = _count.
    for (family, t) in &types {
        if t != "histogram" {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&format!("{family}_bucket{{le=\""))?;
                Some((value(le.strip_suffix("\"}")?)?, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(!buckets.is_empty(), "{family}: no buckets");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family}: not cumulative"
        );
        let (le, last) = *buckets.last().unwrap();
        assert_eq!(le, f64::INFINITY, "{family}: no +Inf bucket");
        assert_eq!(Some(last), samples.get(&format!("{family}_count")).copied());
        assert!(
            samples.contains_key(&format!("{family}_sum")),
            "{family}_sum"
        );
    }
    samples
}

/// `promtool check metrics` on the text, when promtool is installed.
fn promtool_check(text: &str) -> Option<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

#[test]
fn the_exposition_parser_rejects_what_prometheus_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n";
    assert_eq!(parse_exposition(ok)["a_total{x=\"1\",y=\"q\\\"\"}"], 3.0);
    for bad in [
        "a 1\n",                                                             // no TYPE
        "# TYPE a gauge\na 1\na 2\n",                                        // duplicate series
        "# TYPE a gauge\na{x=1} 1\n",                                        // unquoted label
        "# TYPE a gauge\na one\n",                                           // not a number
        "# TYPE a gauge\n1a 1\n",                                            // bad name
        "# TYPE a gauge\na 1",                                               // no final newline
        "# TYPE a gauge\na{x=\"1\"}  1\n",                                   // two spaces
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\nh_sum 1\n", // +Inf != count
    ] {
        let r = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(r.is_err(), "accepted {bad:?}");
    }
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_and_count_what_happened() {
    let gw = Gateway::start().await;
    let mut alice1 = gw.connect("alice").await;
    let mut alice2 = gw.connect("alice").await;
    let mut bob = gw.connect("bob").await;
    alice1.join("r").await;
    alice2.join("r").await;
    bob.join("r").await;
    crate::hub::publish(&mut bob, "r", json!("hi"), 1).await;
    // Both recipients have it, so its fan-out is complete.
    crate::hub::next_message_skipping_presence(&mut alice1).await;
    crate::hub::next_message_skipping_presence(&mut alice2).await;
    // Refused handshakes: a foreign Origin and a bad token.
    let token = gw.token("carol");
    assert_eq!(
        refusal_status(&gw, "https://evil.example", &token).await,
        Some(403)
    );
    let bad = gw.token_claims(json!({"sub":"carol","exp":unix_now() - 100}));
    assert_eq!(refusal_status(&gw, ORIGIN, &bad).await, Some(401));

    let text = metrics_text(&gw).await;
    let samples = parse_exposition(&text);
    if promtool_check(&text).is_none() {
        eprintln!("promtool not installed: checked with the built-in parser only");
    }
    let get = |s: &str| {
        *samples
            .get(s)
            .unwrap_or_else(|| panic!("no {s} in:\n{text}"))
    };
    assert_eq!(get("wsgate_connections"), 3.0);
    assert_eq!(get("wsgate_handshakes_total{result=\"ok\"}"), 3.0);
    assert_eq!(
        get("wsgate_handshakes_total{result=\"bad_origin\",reason=\"origin_not_allowed\"}"),
        1.0
    );
    assert_eq!(
        get("wsgate_handshakes_total{result=\"bad_token\",reason=\"token_expired\"}"),
        1.0
    );
    assert_eq!(get("wsgate_rooms"), 1.0);
    // Three joins and one publish came in.
    assert_eq!(get("wsgate_messages_in_total"), 4.0);
    assert_eq!(get("wsgate_fanout_latency_seconds_count"), 1.0);
    assert!(get("process_resident_memory_bytes") > 1e6);
    assert!(get("process_open_fds") >= 3.0);
    assert!(get("process_cpu_seconds_total") > 0.0);
    // Every family the contract lists is there.
    for family in [
        "wsgate_bytes_in_total",
        "wsgate_bytes_out_total",
        "wsgate_messages_out_total",
        "wsgate_messages_dropped_total{reason=\"rate_limited\"}",
        "wsgate_slow_consumer_closes_total",
    ] {
        get(family);
    }

    // The connection gauge follows closes.
    drop(alice2);
    let _ = bob.ws.close(None).await;
    wait_metric(&gw, "wsgate_connections", |v| v == 1.0).await;
    let text = metrics_text(&gw).await;
    parse_exposition(&text);
    assert_eq!(
        metric_value(&text, "wsgate_handshakes_total{result=\"ok\"}"),
        Some(3.0)
    );
}

/// `wsgate_runtime_tasks` counts the runtime's live tasks: each open session adds at least
/// one, and once the sessions are gone the count is back where it started (nothing left
/// behind by a closed connection).
#[tokio::test]
async fn runtime_tasks_follow_connections_and_come_back_down() {
    let gw = Gateway::start().await;
    let before = metric(&gw, "wsgate_runtime_tasks").await;
    assert!(before >= 1.0, "the listeners are tasks: {before}");
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = gw.connect(&format!("u{i}")).await;
        c.join("r").await;
        clients.push(c);
    }
    wait_metric(&gw, "wsgate_connections", |v| v == 10.0).await;
    let during = metric(&gw, "wsgate_runtime_tasks").await;
    assert!(
        during >= before + 10.0,
        "10 sessions but tasks went {before} -> {during}"
    );
    for c in clients {
        c.close_and_wait_gone().await;
    }
    wait_metric(&gw, "wsgate_connections", |v| v == 0.0).await;
    wait_metric(&gw, "wsgate_runtime_tasks", |v| v <= before).await;
}

// ---------------------------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------------------------

const NEW_ORIGIN: &str = "https://new.example.net";

/// Publishes `n` messages back to back; returns how many were acked before the first refusal,
/// checking the refusals' text.
async fn burst(c: &mut crate::support::Client, room: &str, n: u64, base: u64) -> u64 {
    for id in base..base + n {
        c.send(json!({"type":"publish","room":room,"data":id,"id":id}))
            .await;
    }
    let mut acked = 0;
    for id in base..base + n {
        let r = recv_type_of(c, &["ack", "error"]).await;
        assert_eq!(r["id"], id, "{r}");
        if r["type"] == "ack" {
            acked += 1;
        } else {
            assert_eq!(
                r,
                json!({"type":"error","id":id,"code":"rate_limited","message":"1 messages/s exceeded"})
            );
        }
    }
    acked
}

/// The next frame whose type is one of `types` (presence and others skipped).
async fn recv_type_of(c: &mut crate::support::Client, types: &[&str]) -> Value {
    loop {
        let v = c.recv().await;
        if types.iter().any(|t| v["type"] == *t) {
            return v;
        }
    }
}

#[tokio::test]
async fn sighup_applies_origin_and_limits_and_a_broken_file_changes_nothing() {
    let gw = Gateway::start_with(|s| {
        s.rate_limit(1, 6);
    })
    .await;
    let alice_token = gw.token("alice");
    let mut alice = connect_origin(&gw, ORIGIN, &alice_token).await.unwrap();
    alice.join("r").await;
    assert_eq!(
        refusal_status(&gw, NEW_ORIGIN, &alice_token).await,
        Some(403)
    );
    // Two of six: a reload that did not apply would leave four.
    assert_eq!(
        burst(&mut alice, "r", 2, 1).await,
        2,
        "burst 6 before the reload"
    );

    // New origin list and a smaller burst.
    let mut next = gw.settings.clone();
    next.set("origin", "allowed", json!([NEW_ORIGIN]))
        .set("limits", "burst", json!(2));
    std::fs::write(&gw.config_path, next.toml()).unwrap();
    let line = gw.sighup("configuration reloaded").await;
    assert!(line.contains("origin") && line.contains("limits"), "{line}");

    assert_eq!(
        refusal_status(&gw, ORIGIN, &alice_token).await,
        Some(403),
        "the removed origin is refused"
    );
    let mut bob = connect_origin(&gw, NEW_ORIGIN, &gw.token("bob"))
        .await
        .expect("the added origin connects");
    bob.join("r").await;
    // The new burst applies to new and to existing sessions.
    assert_eq!(burst(&mut bob, "r", 3, 100).await, 2);
    assert_eq!(burst(&mut alice, "r", 3, 200).await, 2);
    assert_eq!(
        metric(&gw, "wsgate_config_reloads_total{result=\"ok\"}").await,
        1.0
    );

    // A file that does not parse: refused, and the running settings stay.
    std::fs::write(&gw.config_path, "[limits\nburst = \n").unwrap();
    let line = gw.sighup("reload refused").await;
    assert!(line.contains("ERROR"), "{line}");
    assert_eq!(
        metric(&gw, "wsgate_config_reloads_total{result=\"error\"}").await,
        1.0
    );
    assert_eq!(refusal_status(&gw, ORIGIN, &alice_token).await, Some(403));
    let mut carol = connect_origin(&gw, NEW_ORIGIN, &gw.token("carol"))
        .await
        .expect("still serving with the reloaded settings");
    carol.join("r").await;
    assert_eq!(burst(&mut carol, "r", 3, 300).await, 2);
    // Existing sessions were not disturbed by either reload.
    let offset = admin_publish(&gw, "r", json!("barrier")).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        loop {
            match next_event(c).await {
                Event::Msg(m) if m["type"] == "message" && m["from"] == "@server" => {
                    assert_eq!(without_ts(m)["offset"], offset);
                    break;
                }
                Event::Msg(_) => {}
                Event::Closed(code) => panic!("closed: {code:?}"),
            }
        }
    }
}
