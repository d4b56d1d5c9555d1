// Raw HTTP API requests signed by hand (Node's crypto), for what the `pusher` SDK will not
// send: a stale timestamp, a body_md5 of another body, oversized or over-long requests.
// Signing as Pusher documents it: HMAC-SHA256 over "METHOD\npath\nsorted query".
import { createHash, createHmac } from "node:crypto";
import https from "node:https";
import { env, WAIT_MS } from "./common.mjs";

export const md5 = (text) => createHash("md5").update(text).digest("hex");

/**
 * The query of a signed request for `body` (JSON text) to `path`. `overrides` replace the
 * signed parameters (e.g. an old `auth_timestamp`, another `body_md5`) before signing.
 */
export function signedQuery(method, path, body, overrides = {}) {
  const params = {
    auth_key: env.key,
    auth_timestamp: String(Math.floor(Date.now() / 1000)),
    auth_version: "1.0",
    ...(body ? { body_md5: md5(body) } : {}),
    ...overrides,
  };
  const query = Object.keys(params)
    .sort()
    .map((k) => `${k}=${params[k]}`)
    .join("&");
  const signature = createHmac("sha256", env.secret)
    .update(`${method}\n${path}\n${query}`)
    .digest("hex");
  return `${query}&auth_signature=${signature}`;
}

/** Sends one request to the gateway; resolves `{ status, body }` (JSON when it parses). */
export function request(method, pathAndQuery, body) {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: env.host,
        port: env.port,
        method,
        path: pathAndQuery,
        headers: body ? { "content-type": "application/json" } : {},
        timeout: WAIT_MS,
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => {
          let parsed = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON: kept as text
          }
          resolve({ status: res.statusCode, body: parsed });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`no answer to ${method} within ${WAIT_MS} ms`)));
    req.on("error", reject);
    if (body) req.write(body);
    req.end();
  });
}

/** A signed `POST /apps/{id}/<route>` of `payload` (an object, sent as JSON). */
export function signedPost(route, payload, overrides = {}) {
  const path = `/apps/${env.appId}/${route}`;
  const body = JSON.stringify(payload);
  return request("POST", `${path}?${signedQuery("POST", path, body, overrides)}`, body);
}
