// Joins presence-lobby with Laravel Echo (`broadcaster: 'pusher'`) through the gateway this
// page came from, and records what Echo reports in `window.__echo`: `here`, `joining`,
// `leaving`, whispers received, errors. The fragment carries `key`, `user`, `name` and, for
// this test page only, `secret`: the channel auth an app's /broadcasting/auth would return is
// signed here with WebCrypto (the Node tests sign it with the `pusher` SDK).
const params = new URLSearchParams(location.hash.slice(1));
const key = params.get("key");
const member = { user_id: params.get("user"), user_info: { name: params.get("name") } };
const state = (window.__echo = { here: null, joining: [], leaving: [], whispers: [], errors: [] });

async function hmacHex(secret, message) {
  const enc = new TextEncoder();
  const k = await crypto.subtle.importKey(
    "raw",
    enc.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const sig = new Uint8Array(await crypto.subtle.sign("HMAC", k, enc.encode(message)));
  return [...sig].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const echo = new Echo.default({
  broadcaster: "pusher",
  key,
  cluster: "wsgate",
  wsHost: location.hostname,
  wssPort: Number(location.port),
  forceTLS: true,
  enabledTransports: ["ws", "wss"],
  disableStats: true,
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) => {
      const channelData = JSON.stringify(member);
      hmacHex(params.get("secret"), `${socketId}:${channelName}:${channelData}`).then(
        (signature) => callback(null, { auth: `${key}:${signature}`, channel_data: channelData }),
        (e) => callback(e, null),
      );
    },
  },
});

function show(list, text) {
  const li = document.createElement("li");
  li.textContent = text;
  document.getElementById(list).append(li);
}

const lobby = echo
  .join("lobby")
  .here((members) => {
    state.here = members;
    members.forEach((m) => show("members", m.name));
  })
  .joining((m) => {
    state.joining.push(m);
    show("members", m.name);
  })
  .leaving((m) => state.leaving.push(m))
  .listenForWhisper("typing", (d) => {
    state.whispers.push(d);
    show("whispers", `${d.from}: ${d.text}`);
  })
  .error((e) => state.errors.push(e));

window.whisper = (text) => lobby.whisper("typing", { from: member.user_info.name, text });
window.leave = () => echo.disconnect();
