"""Lua scripts of the job queue and the watch ticks: each decision that must not race is one script.

Every script touches keys of one hash tag only (a job's `{id}`, a stream's `{name}`, or the job
stream alone), so all of them are legal on a Redis Cluster. Commands used exist in Redis 6.2+
(exclusive XRANGE bounds `(id` are 6.2).
"""

from __future__ import annotations

# -- jobs -----------------------------------------------------------------------------------------
# A job's state hash: status (queued | running | done | failed), attempt (count of starts), owner
# (worker of the current attempt), cancel ("1" once asked), final (id of the terminal record),
# submitted / deadline / started (ms).

# KEYS: state. ARGV: 1 worker, 2 now ms, 3 deadline ms, 4 expire-at ms (state TTL while it runs)
# Returns {status, attempt}: run/<n> (start attempt n), finished/<n>, cancelled/0, expired/0.
BEGIN = r"""
local st = KEYS[1]
if redis.call('HEXISTS', st, 'final') == 1 then
  return {'finished', redis.call('HGET', st, 'attempt') or '0'}
end
if redis.call('HGET', st, 'cancel') == '1' then return {'cancelled', '0'} end
if tonumber(ARGV[2]) > tonumber(ARGV[3]) then return {'expired', '0'} end
local attempt = redis.call('HINCRBY', st, 'attempt', 1)
redis.call('HSET', st, 'status', 'running', 'owner', ARGV[1], 'started', ARGV[2], 'deadline', ARGV[3])
redis.call('HSETNX', st, 'submitted', ARGV[2])
local pttl = redis.call('PTTL', st)
if pttl < 0 or tonumber(ARGV[2]) + pttl < tonumber(ARGV[4]) then redis.call('PEXPIREAT', st, ARGV[4]) end
return {'run', tostring(attempt)}
"""

# KEYS: state, results. ARGV: 1 attempt, 2 piece JSON, 3 expire-at ms
# Returns ok | finished (a terminal record exists) | superseded (another attempt took over) | cancelled.
PIECE = r"""
local st = KEYS[1]
if redis.call('HEXISTS', st, 'final') == 1 then return 'finished' end
if redis.call('HGET', st, 'attempt') ~= ARGV[1] then return 'superseded' end
if redis.call('HGET', st, 'cancel') == '1' then return 'cancelled' end
redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
redis.call('PEXPIREAT', KEYS[2], ARGV[3])
return 'ok'
"""

# KEYS: state, results. ARGV: 1 attempt ("0": outside any attempt), 2 record JSON, 3 status
# (done | failed), 4 TTL ms of the finished job.
# Returns {written, id} | {duplicate, id of the terminal record already there} | {superseded, ""}.
# The guard that makes the viewer see exactly one terminal record per job, however often it is run.
FINISH = r"""
local st = KEYS[1]
local final = redis.call('HGET', st, 'final')
if final then return {'duplicate', final} end
if ARGV[1] ~= '0' and redis.call('HGET', st, 'attempt') ~= ARGV[1] then return {'superseded', ''} end
local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
redis.call('HSET', st, 'final', id, 'status', ARGV[3])
redis.call('PEXPIRE', st, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {'written', id}
"""

# KEYS: state, results. ARGV: 1 cancelled-record JSON, 2 TTL ms
# Returns unknown | finished | cancelled (still queued: the terminal record is written here) |
# signalled (running: the worker stops at its next step and writes the record).
CANCEL = r"""
local st = KEYS[1]
if redis.call('EXISTS', st) == 0 then return 'unknown' end
if redis.call('HEXISTS', st, 'final') == 1 then return 'finished' end
redis.call('HSET', st, 'cancel', '1')
if redis.call('HGET', st, 'status') ~= 'running' then
  local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[1])
  redis.call('HSET', st, 'final', id, 'status', 'failed')
  redis.call('PEXPIRE', st, ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 'cancelled'
end
return 'signalled'
"""

# KEYS: jobs. ARGV: 1 group, 2 consumer, 3 idle ms to set, 4.. entry ids
# Sets the idle time of the entries this consumer still owns (XCLAIM JUSTID does not count a
# delivery): 0 keeps a running job ours, so XAUTOCLAIM takes only jobs whose worker stopped touching
# them (dead or frozen); the lease hands a job back at once (a worker shutting down). An entry another
# worker has claimed meanwhile is left alone. Returns the ids touched.
TOUCH = r"""
local touched = {}
for i = 4, #ARGV do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    touched[#touched + 1] = ARGV[i]
  end
end
return touched
"""

# -- watch ticks ----------------------------------------------------------------------------------
# A stream's tick cursor hash: done (id of the last clip evaluated, "0-0" before any), done_end
# (its end time), inflight / owner / lease (ms) while a worker evaluates the next clip, again (a
# watch was registered since the last claim: see TICK_INIT), and counters evaluated, reclaimed,
# skipped (clips jumped over by the max-lag rule), failed.

# KEYS: ticks, clips. ARGV: 1 worker, 2 now ms, 3 lease ms, 4 max lag ms (0: never skip)
# Returns {busy, id} | {idle, ""} | {claimed, id, reclaimed 0|1, skipped count}.
TICK_CLAIM = r"""
local t, clips = KEYS[1], KEYS[2]
local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local inflight = redis.call('HGET', t, 'inflight')
if inflight then
  if tonumber(redis.call('HGET', t, 'lease') or '0') > now then return {'busy', inflight} end
  -- its worker died or froze: the same clip again, so nothing is skipped (and the watches are read
  -- again, a new one included)
  redis.call('HSET', t, 'owner', ARGV[1], 'lease', tostring(now + lease))
  redis.call('HDEL', t, 'again')
  redis.call('HINCRBY', t, 'reclaimed', 1)
  return {'claimed', inflight, '1', '0'}
end
local done = redis.call('HGET', t, 'done')
if not done then return {'idle', ''} end
-- any tick claimed from here on reads the stream's watches after this point: a watch registered
-- before now is in it, so the request to evaluate the newest clip again (TICK_INIT) is met
local again = redis.call('HDEL', t, 'again') == 1
local nxt = redis.call('XRANGE', clips, '(' .. done, '+', 'COUNT', 1)
if #nxt == 0 then
  -- caught up: the last clip evaluated once more, for watches registered since (the only ones due)
  if not again or #redis.call('XRANGE', clips, done, done) == 0 then return {'idle', ''} end
  redis.call('HSET', t, 'inflight', done, 'owner', ARGV[1], 'lease', tostring(now + lease))
  return {'claimed', done, '0', '0'}
end
local id = nxt[1][1]
local skipped = 0
local max_lag = tonumber(ARGV[4])
if max_lag > 0 then
  local newest = redis.call('XREVRANGE', clips, '+', '-', 'COUNT', 1)[1][1]
  local function ms(x) return tonumber(string.match(x, '^(%d+)')) end
  if ms(newest) - ms(id) > max_lag then
    skipped = #redis.call('XRANGE', clips, id, '(' .. newest)
    id = newest
    redis.call('HINCRBY', t, 'skipped', skipped)
  end
end
redis.call('HSET', t, 'inflight', id, 'owner', ARGV[1], 'lease', tostring(now + lease))
return {'claimed', id, '0', tostring(skipped)}
"""

# KEYS: ticks. ARGV: 1 worker, 2 clip id, 3 now ms, 4 lease ms. Returns 1 if still ours (extended).
TICK_EXTEND = r"""
if redis.call('HGET', KEYS[1], 'inflight') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease', tostring(tonumber(ARGV[3]) + tonumber(ARGV[4])))
return 1
"""

# KEYS: ticks, watches, states, events.
# ARGV: 1 worker, 2 clip id, 3 clip end, 4 outcome (evaluated | failed), 5 events MAXLEN (~),
#       6 channel, 7 number of states S, then S pairs (watch id, state JSON), then pairs
#       (watch id, event JSON).
# Applies one tick's result only if this worker still holds it, so a tick's states and events are
# written once even when a frozen worker wakes up after its tick was reclaimed. Watches deleted
# meanwhile are left out. Returns {lost} | {ok, event ids...}.
TICK_COMPLETE = r"""
local t, watches, states, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HGET', t, 'inflight') ~= ARGV[2] or redis.call('HGET', t, 'owner') ~= ARGV[1] then
  return {'lost'}
end
local n = tonumber(ARGV[7])
local i = 8
for _ = 1, n do
  if redis.call('HEXISTS', watches, ARGV[i]) == 1 then redis.call('HSET', states, ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
local out = {'ok'}
while i < #ARGV do
  if redis.call('HEXISTS', watches, ARGV[i]) == 1 then
    local id = redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], '*', 'm', ARGV[i + 1])
    redis.call('PUBLISH', ARGV[6], '{"id":"' .. id .. '","event":' .. ARGV[i + 1] .. '}')
    out[#out + 1] = id
  end
  i = i + 2
end
redis.call('HSET', t, 'done', ARGV[2], 'done_end', ARGV[3])
redis.call('HDEL', t, 'inflight', 'owner', 'lease')
redis.call('HINCRBY', t, ARGV[4], 1)
return out
"""

# KEYS: ticks, clips. A watch was registered: it is evaluated at once over the newest clip's window.
# A stream without a cursor gets one: its newest clip is evaluated first, older clips are not. A
# stream with one is asked (`again`) to evaluate its last evaluated clip once more when it is caught
# up: on a stream that is stopped, or gets no new clip, nothing else would evaluate the new watch;
# watches already evaluated at that clip are not due then (events.due). Returns the cursor's `done` id.
TICK_INIT = r"""
local done = redis.call('HGET', KEYS[1], 'done')
if done then
  redis.call('HSET', KEYS[1], 'again', '1')
  return done
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 2)
done = '0-0'
local done_end = ''
if #last == 2 then
  done = last[2][1]
  local f = last[2][2]
  for j = 1, #f, 2 do if f[j] == 'e' then done_end = f[j + 1] end end
end
redis.call('HSET', KEYS[1], 'done', done, 'done_end', done_end)
return done
"""
