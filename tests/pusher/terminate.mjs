// terminate_connections: both of Alice's signed-in tabs are closed with 4009 and pusher-js
// does not reconnect them; Bob, signed in too, stays connected. With WSGATE_PORT2 set,
// Alice's second tab is on a second node of the cluster.
import { server, next, run, env } from "./common.mjs";
import { userClient, signedIn } from "./users.mjs";

/** Records a client's state changes and the close codes it is told. */
function record(pusher) {
  const log = { states: [], codes: [] };
  pusher.connection.bind("state_change", ({ current }) => log.states.push(current));
  pusher.connection.bind("error", (e) => {
    // Close codes come as PusherError data; transport errors carry none.
    const code = e?.error?.data?.code;
    if (typeof code === "number") log.codes.push(code);
  });
  return log;
}

run(async () => {
  const tab1 = userClient("alice");
  const tab2 = userClient("alice", { port: env.port2 });
  const bob = userClient("bob");
  await Promise.all([signedIn(tab1), signedIn(tab2), signedIn(bob)]);
  const logs = [record(tab1), record(tab2)];
  const api = server();
  const gone = [next(tab1.connection, "disconnected"), next(tab2.connection, "disconnected")];
  await api.terminateUserConnections("alice");
  await Promise.all(gone);

  // A full round trip through the gateway for Bob: a reconnect pusher-js had started would
  // have signed Alice in again (her channel occupied again) meanwhile.
  const note = next(bob.user, "note", "Bob's note");
  await api.sendToUser("bob", "note", { n: 1 });
  await note;
  const aliceChannel = await (
    await api.get({ path: `/channels/${encodeURIComponent("#server-to-user-alice")}`, params: { info: "subscription_count" } })
  ).json();
  const bobChannel = await (
    await api.get({ path: `/channels/${encodeURIComponent("#server-to-user-bob")}`, params: { info: "subscription_count" } })
  ).json();
  const states = [tab1.connection.state, tab2.connection.state, bob.connection.state];
  bob.disconnect();
  return { logs, states, aliceChannel, bobChannel };
});
