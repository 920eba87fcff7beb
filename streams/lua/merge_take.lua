-- Step 1 of a merge (streams/merge.py), in the visitor's slot: snapshot the visitor's profile and
-- trigger event times, keep the snapshot in the visitor's merging hash, and delete the visitor's
-- keys -- atomically. When a snapshot is already kept (a merge that died before its last step),
-- nothing is read or deleted: that snapshot is returned, so a redo applies the same data.
--
-- KEYS: 1 dedup zset, 2 recent zset, 3 affinity zset, 4 cart set, 5 bought zset, 6 profile hash
--       of the visitor; 7..6+m the visitor's trigger event-time hashes (m = ARGV[1] types, in
--       the caller's order); 7+m the visitor's merging hash; 8+m.. other keys of the visitor,
--       deleted (feeds, histories)
-- ARGV: 1 m, 2 the user merged into, 3 the snapshot's TTL, s
-- Returns the snapshot (msgpack map: id, user, recent, aff, cart, bought, dedup -- flat
-- member, score lists, scores as Redis wrote them --, p (flat field, value), events (per type a
-- flat field, value list), events_ms (the longest PTTL of those hashes), deleted).
local m = tonumber(ARGV[1])
local merging = KEYS[7 + m]
local kept = redis.call('HGET', merging, 'data')
if kept then return kept end

local function flat(key, kind)
  if kind == 'z' then return redis.call('ZRANGE', key, 0, -1, 'WITHSCORES') end
  if kind == 's' then return redis.call('SMEMBERS', key) end
  return redis.call('HGETALL', key)
end
local t = redis.call('TIME')
local snap = {
  id = t[1] .. '.' .. t[2],
  user = ARGV[2],
  dedup = flat(KEYS[1], 'z'),
  recent = flat(KEYS[2], 'z'),
  aff = flat(KEYS[3], 'z'),
  cart = flat(KEYS[4], 's'),
  bought = flat(KEYS[5], 'z'),
  p = flat(KEYS[6], 'h'),
  events = {},
  events_ms = -1,
  deleted = 0,
}
for i = 1, m do
  local key = KEYS[6 + i]
  local fields = flat(key, 'h')
  snap.events[i] = fields
  if #fields > 0 then snap.events_ms = math.max(snap.events_ms, redis.call('PTTL', key)) end
end
local deleted = 0
for i = 1, 6 + m do deleted = deleted + redis.call('DEL', KEYS[i]) end
for i = 8 + m, #KEYS do deleted = deleted + redis.call('DEL', KEYS[i]) end
snap.deleted = deleted
local data = cmsgpack.pack(snap)
redis.call('HSET', merging, 'id', snap.id, 'data', data)
redis.call('EXPIRE', merging, ARGV[3])
return data
