//! Cluster mode end to end: gateways sharing a private `redis-server` (started on a free port
//! per test, never the shared one on 6379) behave as one gateway (CONTRACT §9).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::hub::{metric, wait_metric};
use crate::support::{Closed, Gateway, WAIT};

use crate::redis_server::{cluster_url, redis_cluster, Redis};

async fn node(redis: &Redis, name: &str, node_ttl: &str) -> Gateway {
    node_on(redis.url(), name, node_ttl).await
}

/// A gateway node on `url`: one Redis, or every master of a Redis Cluster.
async fn node_on(url: String, name: &str, node_ttl: &str) -> Gateway {
    Gateway::start_with(|s| {
        s.set("cluster", "redis_url", json!(url))
            .set("cluster", "node_name", json!(name))
            .set("cluster", "node_ttl", json!(node_ttl))
            .unlimited_rate();
    })
    .await
}

async fn readyz(gw: &Gateway) -> u16 {
    gw.admin_request("GET", "/readyz", None, None).await.0
}

/// Polls `/readyz` until it answers `status`; returns how long that took.
async fn wait_readyz(gw: &Gateway, status: u16) -> Duration {
    let started = Instant::now();
    while readyz(gw).await != status {
        assert!(started.elapsed() < WAIT, "/readyz never {status}");
        // Readiness has no push notification: poll it.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behave_as_one_gateway() {
    let redis = Redis::start().await;
    let a = node(&redis, "gw-a", "15s").await;
    let b = node(&redis, "gw-b", "15s").await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.join("lobby").await;
    let joined = bob.join("lobby").await;
    let mut members: Vec<&str> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    members.sort();
    assert_eq!(members, ["alice", "bob"], "{joined}");
    let p = alice.recv().await;
    assert_eq!(
        (&p["type"], &p["event"], &p["user"]),
        (&json!("presence"), &json!("join"), &json!("bob"))
    );

    let ack = alice
        .request(
            json!({"type":"publish","room":"lobby","data":{"text":"hi"}}),
            1,
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = bob.recv_type("message").await;
    assert_eq!(
        (&m["from"], &m["offset"]),
        (&json!("alice"), &ack["offset"])
    );
    assert_eq!(m["epoch"], joined["epoch"]);

    // The admin API of either node answers for the cluster.
    let (status, nodes) = b.api("GET", "/api/nodes", None).await;
    assert_eq!(status, 200);
    let mut nodes: Vec<(String, u64)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    nodes.sort();
    assert_eq!(nodes, [("gw-a".to_string(), 1), ("gw-b".to_string(), 1)]);
    let (_, rooms) = a.api("GET", "/api/rooms", None).await;
    assert_eq!(rooms, json!([{"room":"lobby","members":2,"connections":2}]));
    assert_eq!(metric(&a, "wsgate_cluster_redis_up").await, 1.0);
    wait_metric(&b, "wsgate_cluster_nodes", |n| n == 2.0).await;
    let (status, closed) = b
        .api("POST", "/api/disconnect", Some(json!({"user":"alice"})))
        .await;
    assert_eq!((status, closed), (200, json!({"closed":1})));
    assert_eq!(alice.closed().await, Closed::Code(4003));
    let p = bob.recv_type("presence").await;
    assert_eq!(
        (&p["event"], &p["user"]),
        (&json!("leave"), &json!("alice"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_refuses_honestly_and_heals_by_itself() {
    let mut redis = Redis::start().await;
    let a = node(&redis, "gw-a", "15s").await;
    assert_eq!(readyz(&a).await, 200);
    let mut alice = a.connect("alice").await;
    alice.join("r").await;
    alice.join("s").await;
    redis.kill().await;
    wait_readyz(&a, 503).await;
    assert_eq!(metric(&a, "wsgate_cluster_redis_up").await, 0.0);
    let e = alice
        .request(json!({"type":"publish","room":"r","data":1}), 2)
        .await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("unavailable"))
    );
    let e = alice.request(json!({"type":"join","room":"t"}), 3).await;
    assert_eq!(e["code"], "unavailable", "{e}");
    // The session stays, and leaving works.
    let left = alice.request(json!({"type":"leave","room":"s"}), 4).await;
    assert_eq!(left["type"], "left", "{left}");
    let (status, body) = a.api("GET", "/api/rooms", None).await;
    assert_eq!((status, body), (503, json!({"error":"unavailable"})));

    // Back, empty: ready again by itself; the room's member is told to reconnect (its
    // epoch is gone), and new publishes work.
    redis.restart().await;
    wait_readyz(&a, 200).await;
    assert_eq!(alice.closed().await, Closed::Code(1012));
    assert_eq!(metric(&a, "wsgate_cluster_redis_up").await, 1.0);
    assert!(metric(&a, r#"wsgate_cluster_resyncs_total{kind="lost"}"#).await >= 1.0);
    let mut carol = a.connect("carol").await;
    carol.join("r").await;
    let ack = carol
        .request(json!({"type":"publish","room":"r","data":1}), 5)
        .await;
    assert_eq!((&ack["type"], &ack["offset"]), (&json!("ack"), &json!(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_presence_and_history_outlives_every_node() {
    let redis = Redis::start().await;
    let a = node(&redis, "gw-a", "3s").await;
    let b = node(&redis, "gw-b", "3s").await;
    let mut alice = a.connect("alice").await;
    let mut bob = b.connect("bob").await;
    alice.join("room").await;
    let joined = bob.join("room").await;
    alice.recv_type("presence").await;
    for i in 1..=3 {
        alice
            .request(json!({"type":"publish","room":"room","data":i}), i)
            .await;
    }
    assert_eq!(bob.recv_type("message").await["offset"], 1);

    a.signal("KILL");
    let killed = Instant::now();
    let p = bob.recv_type("presence").await;
    assert_eq!(
        (&p["event"], &p["user"]),
        (&json!("leave"), &json!("alice"))
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "removed before node_ttl"
    );

    // Every gateway gone; a new one recovers from the history in Redis.
    drop(bob);
    drop(b);
    drop(a);
    let c = node(&redis, "gw-c", "3s").await;
    let mut dave = c.connect("dave").await;
    let r = dave
        .request(
            json!({"type":"join","room":"room","since":{"epoch":joined["epoch"],"offset":1}}),
            7,
        )
        .await;
    assert_eq!(
        (&r["recovered"], &r["offset"]),
        (&json!(true), &json!(3)),
        "{r}"
    );
    assert_eq!(dave.recv_type("message").await["offset"], 2);
    assert_eq!(dave.recv_type("message").await["offset"], 3);
}

#[test]
fn check_config_needs_no_redis_and_never_shows_its_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on port 1.
    let path = crate::support::write_config(dir.path(), |s| {
        s.set(
            "cluster",
            "redis_url",
            json!("redis://:hunter2-secret@127.0.0.1:1/0"),
        );
    });
    let out =
        crate::support::run_wsgate(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("redis_url = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    // A URL that is not one is refused, naming the key, without repeating it.
    let path = crate::support::write_config(dir.path(), |s| {
        s.set(
            "cluster",
            "redis_url",
            json!("http://:hunter2-secret@127.0.0.1:1"),
        );
    });
    let out =
        crate::support::run_wsgate(&["check-config", "--config", path.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("cluster.redis_url: the URL must start with redis://"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"));
}

/// `rediss://`: the gateway talks TLS to Redis, trusting the system's roots (here a private
/// CA given as `SSL_CERT_FILE`, as an operator would add theirs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_talk_tls_to_redis() {
    let certs = tempfile::tempdir().expect("tempdir");
    let paths =
        wsgate::tls::generate_dev_certs(certs.path(), &["127.0.0.1".to_string()]).expect("certs");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _redis = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(&paths.server_cert)
        .arg("--tls-key-file")
        .arg(&paths.server_key)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "redis-server with TLS did not start"
        );
        // A starting redis-server has no readiness signal but its port.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gw_dir = tempfile::tempdir().expect("tempdir");
    wsgate::tls::generate_dev_certs(
        &gw_dir.path().join("certs"),
        &wsgate::tls::default_dev_hosts(),
    )
    .expect("certs");
    let mut settings = crate::support::base_settings(gw_dir.path());
    settings
        .set(
            "cluster",
            "redis_url",
            json!(format!("rediss://127.0.0.1:{port}")),
        )
        .set("cluster", "node_name", json!("gw-tls"));
    let ca = paths.ca_cert.to_str().unwrap().to_string();
    let gw = Gateway::spawn(gw_dir, settings, &[("SSL_CERT_FILE", &ca)]).await;
    assert_eq!(readyz(&gw).await, 200, "{}", gw.logs());
    let (mut alice, mut bob, _) = gw.pair_in_room("alice", "secure").await;
    alice
        .request(
            json!({"type":"publish","room":"secure","data":"over tls"}),
            1,
        )
        .await;
    assert_eq!(bob.recv_type("message").await["data"], "over tls");
}

/// Three nodes, a publisher and a listener on each, all publishing at once: every listener
/// gets every message once, offsets 1..N in order with no gap; a client arriving late on any
/// node recovers exactly the tail it asks for.
async fn concurrent_publishers_on_every_node(url: String) {
    const EACH: u64 = 30;
    let nodes = [
        node_on(url.clone(), "gw-a", "15s").await,
        node_on(url.clone(), "gw-b", "15s").await,
        node_on(url, "gw-c", "15s").await,
    ];
    let mut listeners = Vec::new();
    let mut publishers = Vec::new();
    for (i, gw) in nodes.iter().enumerate() {
        let mut l = gw.connect(&format!("listener-{i}")).await;
        l.join("stream").await;
        listeners.push(l);
        let mut p = gw.connect(&format!("publisher-{i}")).await;
        p.join("stream").await;
        publishers.push(p);
    }
    let publish_all = |mut p: crate::support::Client| async move {
        let mut offsets = Vec::new();
        for n in 1..=EACH {
            let ack = p
                .request(json!({"type":"publish","room":"stream","data":{"n":n}}), n)
                .await;
            assert_eq!(ack["type"], "ack", "{ack}");
            offsets.push(ack["offset"].as_u64().expect("offset"));
        }
        (p, offsets)
    };
    let mut ps = publishers.into_iter();
    let (p0, p1, p2) = (ps.next().unwrap(), ps.next().unwrap(), ps.next().unwrap());
    let ((_p0, a0), (_p1, a1), (_p2, a2)) =
        tokio::join!(publish_all(p0), publish_all(p1), publish_all(p2));
    let total = 3 * EACH;
    let mut acked: Vec<u64> = [a0, a1, a2].concat();
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "acks hold every offset once"
    );
    let mut epoch = Value::Null;
    for l in &mut listeners {
        let mut got = Vec::new();
        while got.len() < total as usize {
            let m = l.recv_type("message").await;
            epoch = m["epoch"].clone();
            got.push(m["offset"].as_u64().expect("offset"));
        }
        assert_eq!(got, (1..=total).collect::<Vec<_>>(), "in order, once each");
        l.assert_silent(Duration::from_millis(200)).await;
    }
    // Recovery on each node: the tail after offset `total - 5`, in order.
    for (i, gw) in nodes.iter().enumerate() {
        let mut late = gw.connect(&format!("late-{i}")).await;
        let r = late
            .request(
                json!({"type":"join","room":"stream","since":{"epoch":epoch,"offset":total - 5}}),
                1,
            )
            .await;
        assert_eq!(
            (&r["recovered"], &r["offset"]),
            (&json!(true), &json!(total)),
            "{r}"
        );
        for want in total - 4..=total {
            assert_eq!(late.recv_type("message").await["offset"], want);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_three_nodes_reach_every_member_once_in_order() {
    let redis = Redis::start().await;
    concurrent_publishers_on_every_node(redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_three_nodes_behave_as_one_gateway() {
    let cluster = redis_cluster().await;
    concurrent_publishers_on_every_node(cluster_url(&cluster)).await;
}
