//! The Lua scripts behind every write, and the Redis key layout they use.
//!
//! Every write is one script, so its checks, the write itself, the version
//! bump and the change message happen atomically (Redis runs a script to the
//! end before anything else). Reads that need a consistent snapshot (watch
//! re-reads, listings) are scripts too.
//!
//! # Layout (per database)
//!
//! | Redis key                     | type   | what                                            |
//! |-------------------------------|--------|-------------------------------------------------|
//! | `anykv:k:<full key>`          | hash   | `v` value, `i` version; plain keys add the marker `p` (see [`PUT_PLAIN`]); ephemeral/lock keys add `s` session, `x` refresh TTL in ms; locks add `o` owner token |
//! | `anykv:version`               | string | the version counter every write bumps           |
//! | `anykv:index`                 | zset   | every full key (score 0), for ordered prefix scans |
//! | `anykv:session:<id>`          | set    | full keys written by session `<id>` that it keeps alive |
//! | `anykv:q:<full key>`          | zset   | the lock's waiters: owner token, scored by arrival (server µs) |
//! | `anykv:ql:<full key>`         | hash   | each waiter's lease end (server ms), which it renews while it waits; `g:<owner token>` its lock TTL in ms, `:`, its value (what a release hands the lock on with) |
//!
//! Change messages go to the pub/sub channel `anykv:<db>:k:<full key>`
//! (pub/sub is not scoped by database, the channel name is) with the new
//! version as payload. When a lock key with waiters is deleted, the same
//! script grants it to the first live waiter and sends the fencing token on
//! `anykv:<db>:g:<owner token>`; a waiter without grant information is
//! woken on `anykv:<db>:w:<owner token>` instead.

use std::sync::LazyLock;

/// Prefix of the hash holding a key.
pub(crate) const DATA_PREFIX: &str = "anykv:k:";
/// The version counter.
pub(crate) const COUNTER: &str = "anykv:version";
/// The ordered index of all keys.
pub(crate) const INDEX: &str = "anykv:index";
/// Prefix of a session's key set.
pub(crate) const SESSION_PREFIX: &str = "anykv:session:";
/// Prefix of a lock key's waiter queue (the scripts build it too).
pub(crate) const QUEUE_PREFIX: &str = "anykv:q:";
/// Prefix of a lock key's waiter leases (the scripts build it too).
pub(crate) const LEASE_PREFIX: &str = "anykv:ql:";

/// A script with its SHA1, invoked with `EVALSHA` (and loaded on `NOSCRIPT`).
pub(crate) struct Script {
    pub(crate) name: &'static str,
    pub(crate) source: String,
    pub(crate) sha: String,
}

impl Script {
    fn new(name: &'static str, body: &str) -> Self {
        Self::from_source(name, format!("{PRELUDE}\n{body}"))
    }

    /// A script that also uses the waiter-queue helpers.
    fn with_queue(name: &'static str, body: &str) -> Self {
        Self::from_source(name, format!("{PRELUDE}\n{QUEUE_PRELUDE}\n{body}"))
    }

    /// A lock script: the waiter-queue helpers and [`SERVER_ID`].
    fn for_lock(name: &'static str, body: &str) -> Self {
        Self::from_source(
            name,
            format!("{PRELUDE}\n{QUEUE_PRELUDE}\n{SERVER_ID}\n{body}"),
        )
    }

    fn from_source(name: &'static str, source: String) -> Self {
        let sha = redis::Script::new(&source).get_hash().to_owned();
        Script { name, source, sha }
    }

    /// `EVALSHA <sha>`; the caller appends the key count, keys and arguments.
    pub(crate) fn cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha);
        cmd
    }
}

/// Shared by every script: the version bump.
///
/// `INCR` answers 1 only when the counter was missing: a new database, or a
/// restart without persistence that lost it. The counter is then lifted to
/// the server clock in microseconds, which is above every version handed out
/// before (versions grow by one per write, far slower than a microsecond
/// clock), so versions and fencing tokens keep increasing across such a
/// restart as long as the server clock does not step back.
///
/// With `clock` (lock grants, session ids) the counter is lifted to the
/// clock whenever it lags behind, even if it exists (`clock` is `true`, or
/// the server time in µs the script has already read): after a restart that
/// restored an *older* counter (snapshots, `appendfsync everysec`) or a
/// failover to a replica that missed the last writes, a fencing token is
/// still above every token handed out before. That bump is one
/// `SET … GET`, which writes the clock and reads what it replaced; only if
/// the counter was at or above the clock is it set again, to one more.
const PRELUDE: &str = r#"
local function bump(counter, clock)
  if clock then
    local now = clock
    if type(now) ~= 'number' then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    local old = tonumber(redis.call('SET', counter, string.format('%d', now), 'GET') or '0')
    if old < now then return string.format('%d', now) end
    local v = string.format('%d', old + 1)
    redis.call('SET', counter, v)
    return v
  end
  local v = redis.call('INCR', counter)
  if v == 1 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    if now > v then
      v = now
      redis.call('SET', counter, string.format('%d', v))
    end
  end
  return string.format('%d', v)
end
"#;

/// The server's `run_id` (`INFO server`), which changes on every restart
/// and differs between a primary and its replicas: a lock grant and each
/// renewal return it, so the guard notices a restart or failover in between.
/// `''` when the user may not run `INFO` (the check is then skipped).
const SERVER_ID: &str = r#"
local function server_id()
  local info = redis.pcall('INFO', 'server')
  if type(info) ~= 'string' then return '' end
  return string.match(info, 'run_id:(%x+)') or ''
end
"#;

/// Helpers of the scripts that keep lock waiter queues (kept out of the
/// others, which would pay for defining them on every call).
///
/// `hand_on` is how a freed lock reaches its next holder: the script that
/// deleted the lock key grants it at once to the first live waiter, with
/// the value and lock TTL that waiter queued with (the `g:<owner>` field of
/// the leases hash), a fencing token bumped like [`LOCK_TAKE`]'s, and a
/// change message; then it sends the token on the waiter's grant channel.
/// The waiter does not ask again: it holds the lock when the message
/// arrives. A waiter queued without grant information (an older client) is
/// only woken, on its wake-up channel, and takes the lock itself.
const QUEUE_PRELUDE: &str = r#"
-- The server time in µs.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function now_ms()
  return math.floor(clock() / 1000)
end

-- Takes a waiter out of the queue.
local function unqueue(q, l, h)
  redis.call('ZREM', q, h)
  redis.call('HDEL', l, h, 'g:' .. h)
end

-- The first waiter of a queue whose lease has not ended, and that lease;
-- waiters whose lease ended (crashed, or gone without a word) are dropped.
local function queue_head(q, l, now)
  while true do
    local h = redis.call('ZRANGE', q, 0, 0)[1]
    if not h then return nil, 0 end
    local lease = tonumber(redis.call('HGET', l, h) or '0')
    if lease > now then return h, lease end
    unqueue(q, l, h)
  end
end

-- The waiter a freed lock goes to: the first waiter whose lease has not
-- ended, taken out of the queue, with the server time (µs), its owner
-- token, its session id and its grant information (`ttl:value`). Waiters
-- whose lease ended are dropped, and so are waiters of the session `skip`
-- (one being closed). A live waiter queued without grant information stays
-- first in line and is returned without it (it is only woken). Nothing
-- when the queue is empty. (`ZRANGE` and `ZREM`, not `ZPOPMIN`, whose
-- reply formats the score as a double: several µs on a cold server.)
local function successor(q, l, skip)
  local now
  while true do
    local h = redis.call('ZRANGE', q, 0, 0)[1]
    if not h then return nil end
    now = now or clock()
    local f = redis.call('HMGET', l, h, 'g:' .. h)
    local sid = string.match(h, '^(.+):%d+$')
    local live = tonumber(f[1] or '0') > math.floor(now / 1000) and (not skip or sid ~= skip)
    local granted = live and sid and f[2] and string.find(f[2], ':', 1, true)
    if live and not granted then return now, h end
    unqueue(q, l, h)
    if live then return now, h, sid, f[2] end
  end
end

-- Grants the lock on `member` (data key `data`) to `owner` of session
-- `sid` with fencing token `t`: the key bound to the session's key set
-- `set`, its index entry (unless `index` is false: the key never left the
-- index) and the change message on `channel`.
local function grant(data, member, value, ttl, sid, owner, t, index, set, channel)
  redis.call('HSET', data, 'v', value, 'i', t, 's', sid, 'x', ttl, 'o', owner)
  redis.call('PEXPIRE', data, ttl)
  redis.call('SADD', set, member)
  if redis.call('PTTL', set) < tonumber(ttl) then redis.call('PEXPIRE', set, ttl) end
  if index then redis.call('ZADD', index, 0, member) end
  redis.call('PUBLISH', channel, t)
end

-- Grants the lock on `member` to the waiter `successor` returned (`now`,
-- `h`, `sid`, `g`), with a fencing token bumped with the clock lift, and
-- sends the token on its grant channel (prefix `grants`). Returns the token.
local function grant_to(member, now, h, sid, g, counter, index, channel, grants)
  local sep = string.find(g, ':', 1, true)
  local t = bump(counter, now)
  grant('anykv:k:' .. member, member, string.sub(g, sep + 1), string.sub(g, 1, sep - 1),
    sid, h, t, index, 'anykv:session:' .. sid, channel)
  redis.call('PUBLISH', grants .. h, t)
  return t
end

-- After `member` was deleted (change version `v`): hands the lock on to
-- its first live waiter (see the rustdoc of QUEUE_PRELUDE), or wakes that
-- waiter if it queued without grant information.
-- `counter`, `index`: those keys; `channel`: the member's change channel;
-- `wake`, `grants`: the channel prefixes; `skip`: a session id to pass over.
local function hand_on(member, v, counter, index, channel, wake, grants, skip)
  local now, h, sid, g = successor('anykv:q:' .. member, 'anykv:ql:' .. member, skip)
  if not h then return end
  if not g then
    redis.call('PUBLISH', wake .. h, v)
    return
  end
  grant_to(member, now, h, sid, g, counter, index, channel, grants)
end
"#;

/// Write one key, with an optional precondition.
///
/// KEYS: data, counter, index, session set.
/// ARGV: member (full key), value, expect (`''` none, `c` create-only, or a
/// version), kind (`n` plain, `t` TTL, `e` ephemeral), TTL in ms, session
/// id, channel. (Locks are taken by [`LOCK_TAKE`].)
///
/// Returns the new version (string), or `{'exists', pttl}`, `{'missing'}`,
/// `{'modified'}`.
pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "put",
        r#"
local expect = ARGV[3]
if expect ~= '' then
  local cur = redis.call('HGET', KEYS[1], 'i')
  if expect == 'c' then
    if cur then return {'exists', redis.call('PTTL', KEYS[1])} end
  elseif not cur then
    return {'missing'}
  elseif cur ~= expect then
    return {'modified'}
  end
end
local kind = ARGV[4]
local v = bump(KEYS[2])
local existed = redis.call('DEL', KEYS[1])
if kind == 'n' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'i', v, 'p', '')
elseif kind == 't' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'i', v)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'i', v, 's', ARGV[6], 'x', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('SADD', KEYS[4], ARGV[1])
  if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[5]) then
    redis.call('PEXPIRE', KEYS[4], ARGV[5])
  end
end
if existed == 0 then
  redis.call('ZADD', KEYS[3], 0, ARGV[1])
end
redis.call('PUBLISH', ARGV[7], v)
return v
"#,
    )
});

/// The common case of [`PUT`], kept lean because it is the hot path: an
/// unconditional write of a plain key (no TTL, not ephemeral).
///
/// It does not delete the old hash first, as [`PUT`] does. It writes `v`, `i`
/// and the plain-key marker `p`, and the number of fields `HSET` added tells
/// what was there: 3, nothing (the key is new, so it joins the index); 0, a
/// plain key (nothing else to clear); 1, a TTL, ephemeral or lock key, whose
/// expiry and session/owner fields are cleared. The steady state is then three
/// commands (`INCR`, `HSET`, `PUBLISH`) instead of four. The version bump is
/// [`PRELUDE`]'s `bump`, written out, because defining that function costs
/// every call a closure.
///
/// KEYS: data, counter, index. ARGV: value, member, channel.
///
/// Returns the new version (string).
pub(crate) static PUT_PLAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::from_source(
        "put_plain",
        r#"
local v = redis.call('INCR', KEYS[2])
if v == 1 then
  local t = redis.call('TIME')
  v = tonumber(t[1]) * 1000000 + tonumber(t[2])
  redis.call('SET', KEYS[2], string.format('%d', v))
end
v = string.format('%d', v)
local added = redis.call('HSET', KEYS[1], 'v', ARGV[1], 'i', v, 'p', '')
if added == 3 then
  redis.call('ZADD', KEYS[3], 0, ARGV[2])
elseif added ~= 0 then
  redis.call('HDEL', KEYS[1], 's', 'x', 'o')
  redis.call('PERSIST', KEYS[1])
end
redis.call('PUBLISH', ARGV[3], v)
return v
"#
        .to_owned(),
    )
});

/// Delete one key, with an optional precondition on one hash field.
///
/// KEYS: data, counter, index.
/// ARGV: member, field to compare (`''` none, `i` version, `o` owner),
/// expected value, channel, wake-up channel prefix, grant channel prefix.
/// A lock key with waiters is handed on to the first (see
/// [`QUEUE_PRELUDE`]) in the same step: the holder's key becomes the
/// waiter's as one change, with one version (the grant's fencing token) and
/// one change message, and stays in the index. A release (compared on `o`)
/// overwrites the holder's fields, which are the grant's; any other delete
/// clears the key first.
///
/// Returns the change's version (string), `0` if there was nothing to
/// delete, or `{'missing'}`, `{'modified'}`.
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::with_queue(
        "delete",
        r#"
local field = ARGV[2]
if field == '' then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('ZREM', KEYS[3], ARGV[1])
    return 0
  end
elseif redis.call('HGET', KEYS[1], field) ~= ARGV[3] then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {'modified'} end
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {'missing'}
end
local now, h, sid, g = successor('anykv:q:' .. ARGV[1], 'anykv:ql:' .. ARGV[1], false)
if g then
  if field ~= 'o' then redis.call('DEL', KEYS[1]) end
  return grant_to(ARGV[1], now, h, sid, g, KEYS[2], false, ARGV[4], ARGV[6])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local v = bump(KEYS[2])
redis.call('PUBLISH', ARGV[4], v)
if h then redis.call('PUBLISH', ARGV[5] .. h, v) end
return v
"#,
    )
});

/// Read one key for a watcher: `{counter}` if absent, else
/// `{counter, value, version, pttl}`.
///
/// KEYS: data, counter.
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "read",
        r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'i')
local c = redis.call('GET', KEYS[2]) or '0'
if not f[2] then return {c} end
return {c, f[1], f[2], redis.call('PTTL', KEYS[1])}
"#,
    )
});

/// Read several keys for a tree watcher, in one consistent step:
/// `{counter, value, version, pttl, …}`, one triple per data key; an absent
/// key is `'', '0', -2` (versions start at 1).
///
/// KEYS: counter, data keys.
pub(crate) static READ_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::from_source(
        "read_many",
        r#"
local out = {redis.call('GET', KEYS[1]) or '0'}
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'v', 'i')
  if f[2] then
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = redis.call('PTTL', KEYS[i])
  else
    out[#out + 1] = ''
    out[#out + 1] = '0'
    out[#out + 1] = -2
  end
end
return out
"#
        .to_owned(),
    )
});

/// List a key range: `{counter, member, value, version, pttl, …}` in key
/// order. Index entries of keys that expired are dropped on the way.
///
/// KEYS: counter, index.
/// ARGV: range min, range max (`ZRANGEBYLEX` syntax), data prefix.
pub(crate) static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "list",
        r#"
local out = {redis.call('GET', KEYS[1]) or '0'}
for _, m in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2])) do
  local k = ARGV[3] .. m
  local f = redis.call('HMGET', k, 'v', 'i')
  if f[2] then
    out[#out + 1] = m
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = redis.call('PTTL', k)
  else
    redis.call('ZREM', KEYS[2], m)
  end
end
return out
"#,
    )
});

/// Delete a key range and, optionally, one exact key; one version for the
/// whole batch. Returns the number of keys deleted.
///
/// KEYS: counter, index.
/// ARGV: range min, range max, data prefix, channel prefix, exact member
/// (`''` none), wake-up channel prefix, grant channel prefix. Lock keys
/// with waiters are handed on once every key is deleted, so the grants'
/// versions come after the batch's.
pub(crate) static DELETE_TREE: LazyLock<Script> = LazyLock::new(|| {
    Script::with_queue(
        "delete_tree",
        r#"
local members = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2])
if ARGV[5] ~= '' then members[#members + 1] = ARGV[5] end
local v = false
local n = 0
local deleted = {}
for _, m in ipairs(members) do
  if redis.call('DEL', ARGV[3] .. m) == 1 then
    if not v then v = bump(KEYS[1]) end
    redis.call('PUBLISH', ARGV[4] .. m, v)
    n = n + 1
    deleted[n] = m
  end
  redis.call('ZREM', KEYS[2], m)
end
for _, m in ipairs(deleted) do
  hand_on(m, v, KEYS[1], KEYS[2], ARGV[4] .. m, ARGV[6], ARGV[7], false)
end
return n
"#,
    )
});

/// A fresh, never repeating number: a new session id.
///
/// KEYS: counter.
pub(crate) static SESSION_OPEN: LazyLock<Script> =
    LazyLock::new(|| Script::new("session_open", "return bump(KEYS[1], true)"));

/// Re-arm the expiry of every ephemeral key the session still owns (each by
/// its own `x`; lock keys, which have an owner `o`, are left to their
/// guard's renewal); forget members it no longer owns; re-arm the session's
/// liveness marker for `session_ttl`. Returns `{kept, dropped, alive}`,
/// `alive` 0 if the marker was gone — it expired after missed refreshes, or
/// the server lost its data — so the session's keys may be gone (the marker
/// is then set again: the session starts over).
///
/// KEYS: session set, liveness marker.
/// ARGV: session id, data prefix, session TTL (ms).
pub(crate) static SESSION_REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "session_refresh",
        r#"
local kept, dropped, longest = 0, 0, 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[2] .. m
  local f = redis.call('HMGET', k, 's', 'x', 'o')
  if f[1] == ARGV[1] and f[2] then
    if not f[3] then
      redis.call('PEXPIRE', k, f[2])
    end
    kept = kept + 1
    local x = tonumber(f[2])
    if x > longest then longest = x end
  else
    redis.call('SREM', KEYS[1], m)
    dropped = dropped + 1
  end
end
if longest > 0 then redis.call('PEXPIRE', KEYS[1], longest) end
local alive = 1
if not redis.call('SET', KEYS[2], '1', 'PX', ARGV[3], 'XX') then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  alive = 0
end
return {kept, dropped, alive}
"#,
    )
});

/// Delete every key the session still owns (with change messages), the
/// session set and its liveness marker. Returns the number of keys deleted.
///
/// KEYS: session set, counter, index, liveness marker.
/// ARGV: session id, data prefix, channel prefix, wake-up channel prefix,
/// grant channel prefix. Lock keys with waiters are handed on once every
/// key is deleted, passing over waiters of the closing session.
pub(crate) static SESSION_CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::with_queue(
        "session_close",
        r#"
local v = false
local n = 0
local deleted = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[2] .. m
  if redis.call('HGET', k, 's') == ARGV[1] then
    redis.call('DEL', k)
    redis.call('ZREM', KEYS[3], m)
    if not v then v = bump(KEYS[2]) end
    redis.call('PUBLISH', ARGV[3] .. m, v)
    n = n + 1
    deleted[n] = m
  end
end
redis.call('DEL', KEYS[1], KEYS[4])
for _, m in ipairs(deleted) do
  hand_on(m, v, KEYS[2], KEYS[3], ARGV[3] .. m, ARGV[4], ARGV[5], ARGV[1])
end
return n
"#,
    )
});

/// Extend a lock if `owner` still holds it: `{1, run_id}` (see
/// [`SERVER_ID`]) if so; `0` if the key is missing or has another owner.
///
/// KEYS: data. ARGV: owner token, TTL in ms.
pub(crate) static LOCK_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::from_source(
        "lock_renew",
        format!(
            "{SERVER_ID}\n{}",
            r#"
if redis.call('HGET', KEYS[1], 'o') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, server_id()}
end
return 0
"#
        ),
    )
});

/// Takes a lock. Waiting (`lock()`, ARGV queue = `1`): joins the key's
/// waiter queue (or renews its lease there), with what a release needs to
/// hand the lock on to it (see [`QUEUE_PRELUDE`]), and takes the lock only
/// if it is free *and* this waiter is the first live one, so a release
/// hands over in arrival order and reaches one waiter, not all. A waiter
/// the lock was already handed on to gets its grant again, with the TTL
/// re-armed (its grant message may still be on its way, or lost). Trying
/// (`try_lock()`, queue = `''`): takes it if free, without queueing.
///
/// KEYS: data, counter, index, session set, queue, leases.
/// ARGV: member, value, lock TTL in ms, session id, owner token, channel,
/// lease in ms, queue.
///
/// Returns `{'granted', version, run_id}` (see [`SERVER_ID`]). While the
/// key is held: `{'exists', pttl}` when trying, `{'held', pttl, run_id,
/// holder's version}` when waiting. `{'queued', ms, run_id, counter}` when
/// it is free but another waiter is first (`ms`: until that waiter's lease
/// ends). A waiting answer's last item is a version no older than anything
/// the server did before it ran: a hand-on grant whose token is not above
/// it came before that answer and may have lapsed since.
pub(crate) static LOCK_TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::for_lock(
        "lock_take",
        r#"
local q, l, owner = KEYS[5], KEYS[6], ARGV[5]
local queued = ARGV[8] == '1'
local now, head, head_lease
if queued then
  local cur = redis.call('HMGET', KEYS[1], 'o', 'i')
  if cur[1] == owner then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return {'granted', cur[2], server_id()}
  end
  local lease = tonumber(ARGV[7])
  now = now_ms()
  if not redis.call('ZSCORE', q, owner) then
    local t = redis.call('TIME')
    redis.call('ZADD', q, tonumber(t[1]) * 1000000 + tonumber(t[2]), owner)
  end
  redis.call('HSET', l, owner, now + lease, 'g:' .. owner, ARGV[3] .. ':' .. ARGV[2])
  if redis.call('PTTL', q) < lease then redis.call('PEXPIRE', q, lease) end
  if redis.call('PTTL', l) < lease then redis.call('PEXPIRE', l, lease) end
  head, head_lease = queue_head(q, l, now)
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then
  if queued then return {'held', pttl, server_id(), redis.call('HGET', KEYS[1], 'i') or '0'} end
  return {'exists', pttl}
end
if queued then
  if head ~= owner then
    return {'queued', head_lease - now, server_id(), redis.call('GET', KEYS[2]) or '0'}
  end
  unqueue(q, l, owner)
end
local v = bump(KEYS[2], true)
grant(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], owner, v, KEYS[3], KEYS[4], ARGV[6])
return {'granted', v, server_id()}
"#,
    )
});

/// A waiter gives up (its `lock()` was dropped): leaves the queue, and if
/// it was first and the key is free, hands the lock on to the next one.
///
/// KEYS: queue, leases, data, counter, index.
/// ARGV: owner token, member, wake-up channel prefix, channel, grant
/// channel prefix.
pub(crate) static LOCK_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::with_queue(
        "lock_leave",
        r#"
local first = redis.call('ZRANGE', KEYS[1], 0, 0)[1] == ARGV[1]
unqueue(KEYS[1], KEYS[2], ARGV[1])
if first and redis.call('EXISTS', KEYS[3]) == 0 then
  local v = redis.call('GET', KEYS[4]) or '0'
  hand_on(ARGV[2], v, KEYS[4], KEYS[5], ARGV[4], ARGV[3], ARGV[5], false)
end
return 1
"#,
    )
});
