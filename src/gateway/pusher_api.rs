//! The Pusher HTTP API on the public listener (CONTRACT §10): what the Pusher server SDKs
//! (`pusher` on npm, pusher-php-server, Laravel's broadcaster) call to trigger events.
//!
//! | request | answer |
//! |---|---|
//! | `POST /apps/{id}/events` `{"name","data","channels"|"channel","socket_id"?}` | 200 `{}` |
//! | `POST /apps/{id}/batch_events` `{"batch":[{"name","data","channel","socket_id"?}]}` | 200 `{"batch":[{},…]}` |
//! | `GET /apps/{id}/channels[?filter_by_prefix=…&info=user_count]` | 200 `{"channels":{name:{…}}}`: channels with subscribers |
//! | `GET /apps/{id}/channels/{name}[?info=user_count,subscription_count]` | 200 `{"occupied":…,…}` |
//! | `GET /apps/{id}/channels/{name}/users` | 200 `{"users":[{"id":…}]}`: a presence channel's users (400 for other channels) |
//! | `POST /apps/{id}/users/{user}/terminate_connections` | 200 `{}`: every socket signed in as the user, on every node, closed with 4009 |
//!
//! `events` and `batch_events` take `info` (`user_count`, `subscription_count`): the answer
//! then carries those attributes of each channel after the publish (`{"channels":{…}}`, and
//! per event in a batch).
//!
//! Order of the checks: unknown app 404 (before any signature work), body over
//! [`MAX_BODY_BYTES`] 413, signature ([`sign::verify_request`]) 401, then the request itself:
//! 400 for a malformed one, 413 for `data` over 10 KB. The signature, the query and the body
//! never reach a log.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::auth::unix_now;
use crate::broker::{BrokerError, Origin};
use crate::live::Shared;
use crate::protocol::close;
use crate::pusher::channel::{split_room, Channel, ChannelKind};
use crate::pusher::wire::{member_id, MAX_EVENT_DATA_BYTES};
use crate::pusher::{parse_socket_id, sign, user_name, PusherApp};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Largest request body: a batch of 10 events of 10 KB each, with room for their envelopes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most channels one event may go to (Pusher's limit).
pub const MAX_CHANNELS_PER_EVENT: usize = 100;
/// Most events in one batch (Pusher's limit).
pub const MAX_BATCH_EVENTS: usize = 10;
/// Longest event name (Pusher's limit).
const MAX_EVENT_NAME_CHARS: usize = 200;
/// How long a request body may take to arrive once its headers have.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A refused API request: its status and the message the client gets.
struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(status, message.into())
    }
}

/// Serves one request under `/apps/`.
pub async fn serve(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match handle(shared, req).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(ApiError(status, message)) => json_response(status, &json!({ "error": message })),
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Value, ApiError> {
    let live = shared.live.load_full();
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches("/apps/").splitn(2, '/');
    let app_id = parts.next().unwrap_or_default();
    let route = parts.next().unwrap_or_default().to_string();
    let Some(app) = live.pusher.by_id(app_id).cloned() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown app"));
    };
    let method = req.method().clone();
    let params = sign::query_params(req.uri().query().unwrap_or_default());
    let body = read_body(req).await?;
    if let Err(e) = sign::verify_request(&app, method.as_str(), &path, &params, &body, unix_now()) {
        info!(app = %app.id, reason = %e, "pusher api request refused");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    match (&method, route.as_str()) {
        (&Method::POST, "events") => {
            let event: Event = parse_json(&body)?;
            let (channels, excluded) = check_event(&event)?;
            publish(shared, &app, &event, &channels, excluded).await?;
            match &event.info {
                Some(info) => {
                    let occupied = occupied(shared, &app).await?;
                    Ok(json!({ "channels": attributes(&occupied, &channels, info) }))
                }
                None => Ok(json!({})),
            }
        }
        (&Method::POST, "batch_events") => {
            let batch: Batch = parse_json(&body)?;
            if batch.batch.len() > MAX_BATCH_EVENTS {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("at most {MAX_BATCH_EVENTS} events per batch"),
                ));
            }
            // Every event is checked before any is published: a bad one refuses the batch.
            let checked = batch
                .batch
                .iter()
                .map(check_event)
                .collect::<Result<Vec<_>, _>>()?;
            for (event, (channels, excluded)) in batch.batch.iter().zip(&checked) {
                publish(shared, &app, event, channels, *excluded).await?;
            }
            // The counts, read once for the batch, after every publish.
            let occupied = if batch.batch.iter().any(|e| e.info.is_some()) {
                occupied(shared, &app).await?
            } else {
                Vec::new()
            };
            let answers: Vec<Value> = batch
                .batch
                .iter()
                .zip(&checked)
                .map(|(event, (channels, _))| match &event.info {
                    // One channel per batched event: its attributes, flat.
                    Some(info) => attributes(&occupied, channels, info)
                        .into_iter()
                        .next()
                        .map_or_else(|| json!({}), |(_, v)| v),
                    None => json!({}),
                })
                .collect();
            Ok(json!({ "batch": answers }))
        }
        (&Method::GET, "channels") => channels(shared, &app, &params).await,
        (&Method::GET, route) if route.starts_with("channels/") => {
            let rest = &route["channels/".len()..];
            // Channel names have no `/`: a trailing `/users` is the users route.
            match rest.strip_suffix("/users") {
                Some(name) => channel_users(shared, &app, &decode(name)).await,
                None => channel_info(shared, &app, &decode(rest), &params).await,
            }
        }
        (&Method::POST, route) if route.starts_with("users/") => {
            let user = route["users/".len()..]
                .strip_suffix("/terminate_connections")
                .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such endpoint"))?;
            terminate(shared, &app, &decode(user)).await
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
    }
}

/// A percent-encoded path segment, decoded.
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// What a broker failure answers: 503, the cause in the log only.
fn unavailable(app: &PusherApp, what: &'static str, e: &BrokerError) -> ApiError {
    warn!(app = %app.id, error = %e, "pusher api {what} failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable; retry later")
}

/// `GET /apps/{id}/channels/{name}/users`: a presence channel's users, anywhere.
async fn channel_users(
    shared: &Arc<Shared>,
    app: &PusherApp,
    name: &str,
) -> Result<Value, ApiError> {
    let channel = Channel::parse(name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    if channel.kind != ChannelKind::Presence {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "users are listed for presence channels only",
        ));
    }
    let members = shared
        .hub
        .broker()
        .users(&channel.room(&app.id))
        .await
        .map_err(|e| unavailable(app, "users query", &e))?;
    // A member is its user id and info: one user whose tabs sent other info is listed once.
    let mut seen = HashSet::with_capacity(members.len());
    let users: Vec<Value> = members
        .iter()
        .map(|member| member_id(member))
        .filter(|id| seen.insert(id.to_string()))
        .map(|id| json!({ "id": id }))
        .collect();
    Ok(json!({ "users": users }))
}

/// `POST /apps/{id}/users/{user}/terminate_connections`: closes every socket signed in as
/// the user in this app, on every node (the broker's disconnect), with Pusher's 4009.
async fn terminate(shared: &Arc<Shared>, app: &PusherApp, user: &str) -> Result<Value, ApiError> {
    if user.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a user id is required",
        ));
    }
    let closed = shared
        .hub
        .broker()
        .disconnect_user(&user_name(&app.id, user), close::KICKED)
        .await
        .map_err(|e| unavailable(app, "terminate_connections", &e))?;
    info!(app = %app.id, closed, "pusher user connections terminated");
    Ok(json!({}))
}

/// The `info` attributes of `channels` after a publish: `{channel: {attribute: n}}`, with
/// `user_count` for presence channels only; `occupied` is [`occupied`]'s answer.
fn attributes(
    occupied: &[(String, usize, usize)],
    channels: &[Channel],
    info: &str,
) -> serde_json::Map<String, Value> {
    let wanted = |a: &str| info.split(',').any(|w| w.trim() == a);
    let (user_count, subscription_count) = (wanted("user_count"), wanted("subscription_count"));
    let mut out = serde_json::Map::new();
    for channel in channels {
        let (users, sockets) = occupied
            .iter()
            .find(|(c, _, _)| *c == channel.name)
            .map_or((0, 0), |(_, u, s)| (*u, *s));
        let mut attrs = serde_json::Map::new();
        if user_count && channel.kind == ChannelKind::Presence {
            attrs.insert("user_count".into(), json!(users));
        }
        if subscription_count {
            attrs.insert("subscription_count".into(), json!(sockets));
        }
        out.insert(channel.name.clone(), Value::Object(attrs));
    }
    out
}

/// The app's channels with members anywhere in the cluster: `(channel, users, sockets)`.
async fn occupied(
    shared: &Arc<Shared>,
    app: &PusherApp,
) -> Result<Vec<(String, usize, usize)>, ApiError> {
    let rooms = shared
        .hub
        .broker()
        .rooms()
        .await
        .map_err(|e| unavailable(app, "channel query", &e))?;
    Ok(rooms
        .into_iter()
        .filter_map(|r| {
            let (id, channel) = split_room(&r.room)?;
            (id == &*app.id).then(|| (channel.to_string(), r.members, r.connections))
        })
        .collect())
}

/// The `info` attributes asked for (`user_count`, `subscription_count`).
fn info_wanted(params: &[(String, String)], attribute: &str) -> bool {
    params
        .iter()
        .filter(|(k, _)| k == "info")
        .any(|(_, v)| v.split(',').any(|a| a.trim() == attribute))
}

/// `GET /apps/{id}/channels[?filter_by_prefix=…&info=user_count]`.
async fn channels(
    shared: &Arc<Shared>,
    app: &PusherApp,
    params: &[(String, String)],
) -> Result<Value, ApiError> {
    let prefix = params
        .iter()
        .find(|(k, _)| k == "filter_by_prefix")
        .map_or("", |(_, v)| v.as_str());
    let user_count = info_wanted(params, "user_count");
    if user_count && !prefix.starts_with("presence-") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "info=user_count needs filter_by_prefix=presence-",
        ));
    }
    let mut out = serde_json::Map::new();
    for (channel, users, _) in occupied(shared, app).await? {
        if channel.starts_with(prefix) {
            let info = match user_count {
                true => json!({ "user_count": users }),
                false => json!({}),
            };
            out.insert(channel, info);
        }
    }
    Ok(json!({ "channels": out }))
}

/// `GET /apps/{id}/channels/{name}[?info=user_count,subscription_count]`.
async fn channel_info(
    shared: &Arc<Shared>,
    app: &PusherApp,
    name: &str,
    params: &[(String, String)],
) -> Result<Value, ApiError> {
    let channel = Channel::parse(name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let found = occupied(shared, app)
        .await?
        .into_iter()
        .find(|(c, _, _)| *c == channel.name);
    let (users, sockets) = found.map_or((0, 0), |(_, u, s)| (u, s));
    let mut out = json!({ "occupied": sockets > 0 });
    if info_wanted(params, "user_count") {
        if channel.kind != ChannelKind::Presence {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "user_count is only for presence channels",
            ));
        }
        out["user_count"] = json!(users);
    }
    if info_wanted(params, "subscription_count") {
        out["subscription_count"] = json!(sockets);
    }
    Ok(out)
}

/// One event to trigger.
#[derive(Deserialize)]
struct Event {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    /// Attributes to answer with (`user_count`, `subscription_count`).
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

impl Event {
    fn channels(&self) -> Vec<&str> {
        match (&self.channels, &self.channel) {
            (Some(list), _) => list.iter().map(String::as_str).collect(),
            (None, Some(one)) => vec![one.as_str()],
            (None, None) => Vec::new(),
        }
    }

    /// `data` as Pusher carries it: a string (an SDK sends JSON already encoded).
    fn data_string(&self) -> String {
        match &self.data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// The checks of one event that need no broker.
fn check_event(event: &Event) -> Result<(Vec<Channel>, Option<Origin>), ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m);
    if event.name.is_empty() || event.name.chars().count() > MAX_EVENT_NAME_CHARS {
        return Err(bad("name must be 1 to 200 characters"));
    }
    let names = event.channels();
    if names.is_empty() {
        return Err(bad("channels (or channel) is required"));
    }
    if names.len() > MAX_CHANNELS_PER_EVENT {
        return Err(bad("at most 100 channels per event"));
    }
    let channels = names
        .iter()
        .map(|n| Channel::parse(n).map_err(&bad))
        .collect::<Result<Vec<_>, _>>()?;
    if event.data_string().len() > MAX_EVENT_DATA_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "data over 10 KB",
        ));
    }
    let excluded = match event.socket_id.as_deref() {
        None | Some("") => None,
        Some(s) => Some(parse_socket_id(s).ok_or_else(|| bad("invalid socket_id"))?),
    };
    Ok((channels, excluded))
}

/// Publishes one event, checked by [`check_event`], to its channels.
async fn publish(
    shared: &Arc<Shared>,
    app: &PusherApp,
    event: &Event,
    channels: &[Channel],
    excluded: Option<Origin>,
) -> Result<(), ApiError> {
    let data = json!({ "event": event.name, "data": event.data_string() });
    let from: Arc<str> = Arc::from("@server");
    for channel in channels {
        let room = channel.room(&app.id);
        shared
            .hub
            .publish_excluding(room, from.clone(), data.clone(), excluded)
            .await
            .map_err(|e| unavailable(app, "publish", &e))?;
    }
    Ok(())
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// The body, at most [`MAX_BODY_BYTES`] (413 beyond), within [`BODY_TIMEOUT`].
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_big = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_big());
    }
    let limited = Limited::new(req.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Ok(Err(_)) => Err(ApiError::new(StatusCode::BAD_REQUEST, "body not read")),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body took too long",
        )),
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
