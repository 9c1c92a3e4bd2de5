"""Lua scripts run inside Redis, so each append and its retention accounting is one atomic step.

Only commands that exist in Redis 5.0+ are used (XADD with an explicit id, XRANGE, XDEL, HSET with
several fields), so the same script runs on 6.2 and 7.x, and in a Redis Cluster, since every key of
one stream carries the same hash tag.
"""

from __future__ import annotations

# KEYS: clips, tokens, thumbs, meta, streams, lease
# ARGV: 1 id ms, 2 stream name, 3 start, 4 end, 5 frames, 6 encoder id, 7 dtype, 8 shape, 9 wall start,
#       10 extra (JSON), 11 token bytes, 12 thumbnail bytes, 13 retention ms (0 = off),
#       14 max bytes (0 = off), 15 now (unix s), 16 token tail bytes (kept in the entry, see codec),
#       17 content digest, 18 lease token ("" = an unleased writer), 19 lease ttl ms,
#       20 "1" when re-checking a clip Redis had acknowledged (a duplicate then is not counted)
# Returns {status, detail...}: stored/<trimmed count>, duplicate/<newest id>, encoder/<stored encoder id>,
#       order/<newest id>, conflict/<newest id>/<stored digest>, lease/<holder token>/<ttl ms>,
#       lost/<the writer that took over>. Redis's own errors (OOM, WRONGTYPE, ...) are raised as they are.
APPEND = r"""
local clips, tokens, thumbs, meta, streams, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ms = tonumber(ARGV[1])
local id = ARGV[1] .. '-1'
local enc = ARGV[6]
local token = ARGV[18]

-- One writer per stream: a lease held by another writer fences this one out.
local holder = redis.call('GET', lease)
if holder then
  if holder ~= token then
    return {'lease', holder, tostring(redis.call('PTTL', lease))}
  end
elseif token ~= '' then
  -- Our lease expired (Redis was away longer than its ttl). Take it back only if nobody took the stream
  -- in between: every acquire writes its token to meta.writer.
  local writer = redis.call('HGET', meta, 'writer')
  if writer and writer ~= token then
    return {'lost', writer}
  end
  redis.call('SET', lease, token, 'PX', ARGV[19])
end

local stored_enc = redis.call('HGET', meta, 'encoder_id')
if stored_enc and stored_enc ~= enc then
  return {'encoder', stored_enc}
end

local newest = redis.call('XREVRANGE', clips, '+', '-', 'COUNT', 1)
if #newest > 0 then
  local newest_id = newest[1][1]
  local newest_ms = tonumber(string.match(newest_id, '^(%d+)'))
  if ms <= newest_ms then
    -- Same id, same end and same content: a retry of a clip already stored (reply lost, buffer replay,
    -- a resumed backfill). Entries stored before digests existed are compared by their end alone.
    local same = redis.call('XRANGE', clips, id, id)
    if #same > 0 then
      local f = same[1][2]
      local e, h = nil, nil
      for i = 1, #f, 2 do
        if f[i] == 'e' then e = f[i + 1] elseif f[i] == 'h' then h = f[i + 1] end
      end
      if e == ARGV[4] and (h == nil or h == ARGV[17]) then
        if ARGV[20] ~= '1' then
          redis.call('HINCRBY', meta, 'duplicates', 1)
        end
        return {'duplicate', newest_id}
      end
      return {'conflict', newest_id, h or ''}
    end
    return {'order', newest_id}
  end
end

local tok, thumb, tail = ARGV[11], ARGV[12], ARGV[16]
local n = string.len(tok) + string.len(tail) + string.len(thumb)
local added = redis.pcall('XADD', clips, id,
  's', ARGV[3], 'e', ARGV[4], 'f', ARGV[5], 'enc', enc, 'dt', ARGV[7], 'sh', ARGV[8],
  'tb', tostring(string.len(tok) + string.len(tail)), 'n', tostring(n), 'w', ARGV[9], 'x', ARGV[10],
  'h', ARGV[17], 'tt', tail)
if type(added) == 'table' and added.err then
  if string.find(added.err, 'equal or smaller', 1, true) then
    -- the stream remembers a larger id than its newest entry (entries deleted by hand)
    return {'order', added.err}
  end
  return added  -- Redis's own refusal (out of memory, ...): nothing was written
end
redis.call('HSET', tokens, id, tok)
if string.len(thumb) > 0 then
  redis.call('HSET', thumbs, id, thumb)
end
local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0') + n
redis.call('HSET', meta, 'encoder_id', enc, 'last_start', ARGV[3], 'last_end', ARGV[4], 'last_id', id,
  'updated', ARGV[15], 'retention_ms', ARGV[13], 'max_bytes', ARGV[14])
redis.call('HSETNX', meta, 'created', ARGV[15])
redis.call('SADD', streams, ARGV[2])

local trimmed, trimmed_bytes = 0, 0
local function entry_size(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then return tonumber(fields[i + 1]) or 0 end
  end
  return 0
end
local function drop(ids)
  redis.call('XDEL', clips, unpack(ids))
  redis.call('HDEL', tokens, unpack(ids))
  redis.call('HDEL', thumbs, unpack(ids))
  trimmed = trimmed + #ids
end

-- Time window: keep every clip that starts at or after (newest start - retention).
local retention = tonumber(ARGV[13])
if retention > 0 and ms - retention > 0 then
  local bound = string.format('%.0f', ms - retention - 1)
  while true do
    local old = redis.call('XRANGE', clips, '-', bound, 'COUNT', 256)
    if #old == 0 then break end
    local ids = {}
    for _, e in ipairs(old) do
      local size = entry_size(e[2])
      bytes = bytes - size
      trimmed_bytes = trimmed_bytes + size
      ids[#ids + 1] = e[1]
    end
    drop(ids)
  end
end

-- Byte cap: drop the oldest clips until the stream fits; the newest clip always stays.
local cap = tonumber(ARGV[14])
while cap > 0 and bytes > cap do
  local old = redis.call('XRANGE', clips, '-', '+', 'COUNT', 64)
  local ids = {}
  for _, e in ipairs(old) do
    if e[1] == id or bytes <= cap then break end
    local size = entry_size(e[2])
    bytes = bytes - size
    trimmed_bytes = trimmed_bytes + size
    ids[#ids + 1] = e[1]
  end
  if #ids == 0 then break end
  drop(ids)
end

redis.call('HSET', meta, 'bytes', string.format('%.0f', bytes))
if trimmed > 0 then
  redis.call('HINCRBY', meta, 'trimmed_clips', trimmed)
  redis.call('HINCRBY', meta, 'trimmed_bytes', trimmed_bytes)
end
return {'stored', tostring(trimmed)}
"""

# KEYS: lease, meta, clips; ARGV: 1 token, 2 ttl ms, 3 source id, 4 "1" to allow another source.
# Takes the stream's write lease (SET NX PX) unless another writer holds it, and checks that the stream
# holds no clips of another source. Returns {'held', holder, ttl ms}, {'source', stored source id}, or
# {'ok', timeline origin, previous source id}: a file's media time starts at the origin, which is 0 for
# a new stream and just after the stream's last clip when another source continues it.
ACQUIRE = r"""
local lease, meta, clips = KEYS[1], KEYS[2], KEYS[3]
local token, source = ARGV[1], ARGV[3]
local held = redis.call('GET', lease)
if held and held ~= token then
  return {'held', held, tostring(redis.call('PTTL', lease))}
end
local stored = redis.call('HGET', meta, 'source_id')
local last_end = redis.call('HGET', meta, 'last_end')
if stored and stored ~= source and last_end and ARGV[4] ~= '1' then
  return {'source', stored}
end
redis.call('SET', lease, token, 'PX', ARGV[2])
local origin = redis.call('HGET', meta, 'source_origin') or '0'
if stored ~= source then
  origin = last_end or '0'
  redis.call('HSET', meta, 'source_id', source, 'source_origin', origin)
end
redis.call('HSET', meta, 'writer', token)
return {'ok', origin, stored or ''}
"""

# KEYS: lease, meta; ARGV: token, ttl ms. Extends the lease; takes it back if it expired and nobody took
# the stream since. Returns 1, or 0 when another writer has it (this one is fenced out).
RENEW = r"""
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not held and redis.call('HGET', KEYS[2], 'writer') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease; ARGV: token. Lets go of the lease if this writer still holds it.
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: meta; ARGV: field, value, field, value, ... A stream's final status even when Redis is out of
# memory (a few hundred bytes, so that `memory ls` can say why the stream stopped). Redis 7+ only: the
# shebang's flags are how a script may write past maxmemory; older servers refuse to load it.
REPORT_ALLOW_OOM = r"""#!lua flags=allow-oom
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: clips; ARGV: XRANGE bounds. The ids of a window as one space-separated string: a budgeted read
# picks its clips from these without parsing every entry's fields in Python (9,000 entries of a 10 h
# window take ~0.5 s through redis-py's parser, their ids ~10 ms this way).
WINDOW_IDS = r"""
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2])
local ids = {}
for i, e in ipairs(entries) do ids[i] = e[1] end
return table.concat(ids, ' ')
"""
