// Helpers of the scripts about signed-in users (`pusher:signin`): a pusher-js client whose
// user authentication comes from the `pusher` SDK, as an app's /broadcasting/user-auth
// endpoint does it.
import { client, server, next, WAIT_MS } from "./common.mjs";

/** A pusher-js client that signs in as `id`; `badAuth` signs with another secret. */
export function userClient(id, { badAuth = false, port } = {}) {
  const signer = badAuth ? server({ secret: "another-secret-0123456789abcdef0123456" }) : server();
  return client({
    port,
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        try {
          callback(null, signer.authenticateUser(socketId, { id, user_info: { name: id } }));
        } catch (e) {
          callback(e, null);
        }
      },
    },
  });
}

/** Signs in and waits until the user's own channel is subscribed; returns that channel. */
export async function signedIn(pusher) {
  pusher.signin();
  await pusher.user.signinDonePromise;
  const channel = pusher.user.serverToUserChannel;
  if (!channel) throw new Error("the signin failed");
  if (!channel.subscribed) {
    await next(channel, "pusher:subscription_succeeded", `the channel ${channel.name}`);
  }
  return channel;
}

/** Resolves with the first raw event named `name` the connection receives. */
export function rawEvent(pusher, name) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} within ${WAIT_MS} ms`)), WAIT_MS);
    const handler = (event) => {
      if (event.event !== name) return;
      clearTimeout(timer);
      pusher.connection.unbind("message", handler);
      resolve({ channel: event.channel, data: event.data });
    };
    pusher.connection.bind("message", handler);
  });
}
