use serde_json::json;

use crate::support::Gateway;

#[tokio::test]
async fn two_clients_chat_through_a_room() {
    let gw = Gateway::start().await;
    let mut alice = gw.connect("alice").await;
    let mut bob = gw.connect("bob").await;
    assert_eq!(alice.welcome["user"], "alice");
    let joined = alice.join("lobby").await;
    assert_eq!(joined["offset"], 0);
    bob.join("lobby").await;
    let p = alice.recv_type("presence").await;
    assert_eq!(
        p,
        json!({"type":"presence","room":"lobby","event":"join","user":"bob"})
    );
    let ack = bob
        .request(
            json!({"type":"publish","room":"lobby","data":{"text":"hi"}}),
            4,
        )
        .await;
    assert_eq!(ack, json!({"type":"ack","id":4,"offset":1}));
    let m = alice.recv_type("message").await;
    assert_eq!(m["from"], "bob");
    assert_eq!(m["data"], json!({"text":"hi"}));
    assert_eq!(m["offset"], 1);
    assert_eq!(m["epoch"], joined["epoch"]);
}

#[tokio::test]
async fn big_rooms_stop_announcing_presence_at_the_limit() {
    let gw = Gateway::start_with(|s| {
        s.set("rooms", "presence_limit", json!(2));
    })
    .await;
    let mut a = gw.connect("a").await;
    let mut b = gw.connect("b").await;
    let mut c = gw.connect("c").await;
    a.join("big").await;
    b.join("big").await;
    assert_eq!(a.recv_type("presence").await["user"], "b");
    let joined = c.join("big").await;
    assert_eq!(
        joined["members"].as_array().map(Vec::len),
        Some(2),
        "{joined}"
    );
    assert_eq!(joined["members_total"], 3, "{joined}");
    // c's join was not announced: the next thing a sees is c's message, not a presence event.
    c.request(json!({"type":"publish","room":"big","data":{"n":1}}), 1)
        .await;
    let next = a.recv().await;
    assert_eq!(next["type"], "message", "{next}");
    assert_eq!(next["from"], "c");
}
