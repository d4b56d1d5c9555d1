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
