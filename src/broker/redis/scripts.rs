//! The Lua scripts: each one room operation, atomic in Redis and one round trip (EVALSHA,
//! loaded again on NOSCRIPT). Every key a script touches shares the room's hash tag, and so
//! does the channel it publishes on (a Redis Cluster requires both of sharded pub/sub in a
//! script).
//!
//! The room's meta hash lives while anyone is in the room anywhere: scripts that see users
//! set its expiry to the *hold* time (`max(history_ttl, 3 position checks)`: nodes with local
//! members refresh it at every check), and the last leave sets it to `history_ttl`, so a room
//! nobody is in starts afresh (a new epoch) `history_ttl` after its last message or member,
//! as on one node. A new epoch always comes with an empty stream and offsets from 1.

use redis::Script;

/// `ensure(meta, stream, fresh)`: the room's epoch, made (with an empty stream) when missing.
const ENSURE: &str = r#"
local function ensure(meta, stream, fresh)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = fresh
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
    redis.call('DEL', stream)
  end
  return epoch
end
"#;

/// KEYS: meta, stream, users. ARGV: frame head, fresh epoch, history_size, idle ms, hold ms,
/// origin, publish command, channel. Returns the offset.
const PUBLISH: &str = r#"
local epoch = ensure(KEYS[1], KEYS[2], ARGV[2])
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'offset', 1))
local frame = ARGV[1] .. epoch .. '","offset":' .. offset .. '}'
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '=', ARGV[3], offset .. '-0', 'f', frame, 'o', ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  redis.call('DEL', KEYS[2])
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call(ARGV[7], ARGV[8], 'm ' .. offset .. ' ' .. epoch .. ' ' .. ARGV[6] .. '\n' .. frame)
return tonumber(offset)
"#;

/// KEYS: meta, stream, users. ARGV: mode (`join` makes the room when missing, `fill` does
/// not), fresh epoch, since epoch, since offset (`""`: none), presence limit.
///
/// Returns `{epoch, offset, recovered, pv, users, members, entries}` with entries flattened
/// as `offset, frame, origin, ...`; `{""}` when the room is missing in `fill` mode.
///
/// In `fill` mode the `since` is the node's own last delivered offset: one above the room's
/// means Redis went back in time (restored from an older snapshot), and the room gets a new
/// epoch so that nobody recovers across the hole. A client's `since` never does that (any
/// client could otherwise reset any room): it only gets `recovered = 0`.
const READ: &str = r#"
local epoch
if ARGV[1] == 'join' then
  epoch = ensure(KEYS[1], KEYS[2], ARGV[2])
else
  epoch = redis.call('HGET', KEYS[1], 'epoch')
  if not epoch then return {''} end
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local entries = {}
local recovered = 1
if ARGV[4] ~= '' then
  local since = tonumber(ARGV[4])
  if ARGV[3] ~= epoch then
    recovered = 0
  elseif since > offset then
    recovered = 0
    if ARGV[1] == 'fill' then
      epoch = ARGV[2]
      offset = 0
      redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
      redis.call('DEL', KEYS[2])
    end
  elseif since < offset then
    local rows = redis.call('XRANGE', KEYS[2], string.format('%d', since + 1), '+')
    for i, row in ipairs(rows) do
      local id = tonumber(string.match(row[1], '^(%d+)'))
      if i == 1 and id ~= since + 1 then recovered = 0 end
      local f, o = '', '-'
      local fields = row[2]
      for j = 1, #fields, 2 do
        if fields[j] == 'f' then f = fields[j + 1] elseif fields[j] == 'o' then o = fields[j + 1] end
      end
      entries[#entries + 1] = id
      entries[#entries + 1] = f
      entries[#entries + 1] = o
    end
    if #rows == 0 then recovered = 0 end
  end
end
local pv = tonumber(redis.call('HGET', KEYS[1], 'pv') or '0')
local total = 0
local members = {}
if ARGV[1] == 'join' then
  total = redis.call('HLEN', KEYS[3])
  local limit = tonumber(ARGV[5])
  if total <= limit then
    members = redis.call('HKEYS', KEYS[3])
  elseif limit > 0 then
    members = redis.call('HRANDFIELD', KEYS[3], limit)
  end
end
return {epoch, offset, recovered, pv, total, members, entries}
"#;

/// KEYS: meta, stream, users, contrib. ARGV: fresh epoch, `<node>|<user>`, user, presence
/// limit, hold ms, publish command, channel. Counts the node's share once; the user's first
/// share anywhere bumps the presence version and announces the join (unless the room is past
/// the presence limit).
const PRESENCE_JOIN: &str = r#"
ensure(KEYS[1], KEYS[2], ARGV[1])
if redis.call('SADD', KEYS[4], ARGV[2]) == 1 then
  if redis.call('HINCRBY', KEYS[3], ARGV[3], 1) == 1 then
    local pv = redis.call('HINCRBY', KEYS[1], 'pv', 1)
    if redis.call('HLEN', KEYS[3]) <= tonumber(ARGV[4]) then
      redis.call(ARGV[6], ARGV[7], 'j ' .. pv .. ' ' .. ARGV[3])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('PEXPIRE', KEYS[4], ARGV[5])
return 1
"#;

/// KEYS: meta, users, contrib. ARGV: `<node>|<user>`, user, presence limit, idle ms, publish
/// command, channel. Takes the node's share away once; the user's last share anywhere bumps
/// the presence version and announces the leave; the room's last user starts its idle time.
const PRESENCE_LEAVE: &str = r#"
if redis.call('SREM', KEYS[3], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) > 0 then return 1 end
redis.call('HDEL', KEYS[2], ARGV[2])
local left = redis.call('HLEN', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  local pv = redis.call('HINCRBY', KEYS[1], 'pv', 1)
  if left < tonumber(ARGV[3]) then
    redis.call(ARGV[5], ARGV[6], 'l ' .. pv .. ' ' .. ARGV[2])
  end
  if left == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
end
return 1
"#;

/// KEYS: meta, users, contrib. ARGV: hold ms. A node with members in the room keeps it alive
/// and learns its position: `{epoch, offset}`, or `{""}` when the room is gone.
const CHECK: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not v[1] then return {''} end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return {v[1], tonumber(v[2] or '0')}
"#;

/// KEYS: beats, this node's presence set. ARGV: node id, node_ttl ms, keep ms. Records this
/// node's heartbeat (Redis server time, so nodes' clocks do not matter) and returns
/// `{live nodes, dead node ids...}`. Both keys expire `keep` after the last beat of any node:
/// a cluster whose every node is gone leaves nothing behind for long.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local out = {0}
for i = 1, #all, 2 do
  if now - tonumber(all[i + 1]) > tonumber(ARGV[2]) then
    out[#out + 1] = all[i]
  else
    out[1] = out[1] + 1
  end
end
return out
"#;

/// Every script, compiled once (their SHA1 computed once).
pub struct Scripts {
    pub publish: Script,
    pub read: Script,
    pub presence_join: Script,
    pub presence_leave: Script,
    pub check: Script,
    pub heartbeat: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let with_ensure = |body: &str| Script::new(&format!("{ENSURE}{body}"));
        Scripts {
            publish: with_ensure(PUBLISH),
            read: with_ensure(READ),
            presence_join: with_ensure(PRESENCE_JOIN),
            presence_leave: Script::new(PRESENCE_LEAVE),
            check: Script::new(CHECK),
            heartbeat: Script::new(HEARTBEAT),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
