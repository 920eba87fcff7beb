-- Merge an anonymous visitor's profile into a user's, then delete the visitor's keys, atomically.
-- See streams/merge.py for the semantics of each key; streams/lua/event.lua writes them.
--
-- KEYS: 1 dedup zset, 2 recent zset, 3 affinity zset, 4 cart set, 5 bought zset, 6 profile hash
--       of the user; 7-12 the same keys of the visitor; then, m = ARGV[7] event types:
--       13..12+m the user's trigger event-time hashes, 13+m..12+2m the visitor's (same types,
--       same order); 13+2m the visitor's merge marker (pr:merged:<visitor>); 14+2m the user's
--       consent record (streams/consent.py); 15+2m.. other keys of the visitor, deleted (feeds,
--       histories)
-- ARGV: 1 ttl s, 2 dedup window ms, 3 dedup max, 4 recent max, 5 bought max,
--       6 affinity half-life ms, 7 m, 8 event-time entries kept per item, 9 the user's id,
--       10 '1' when the consent policy requires a recorded grant
-- Returns {recent, aff, cart, bought, dedup, deleted, events}: how many members each of the
-- visitor's profile keys held (what was merged), how many of the visitor's keys were deleted,
-- and how many (event type, item) fields of event times were carried over. A user without
-- personalization consent gets nothing: the visitor's keys are only deleted (zeros merged).
local ttl, window, dedup_max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local recent_max, bought_max, hl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local m, keep, me = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local u_dedup, u_recent, u_aff, u_cart, u_bought, u_p = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6]
local a_dedup, a_recent, a_aff, a_cart, a_bought, a_p = KEYS[7], KEYS[8], KEYS[9], KEYS[10],
  KEYS[11], KEYS[12]

-- No profile may be stored for a user without personalization consent: the visitor's goes.
local state = redis.call('HGET', KEYS[14 + 2 * m], 'state')
if not (state == 'granted' or (not state and ARGV[10] ~= '1')) then
  local deleted = 0
  for i = 7, 12 do deleted = deleted + redis.call('DEL', KEYS[i]) end
  for i = 13 + m, 12 + 2 * m do deleted = deleted + redis.call('DEL', KEYS[i]) end
  for i = 15 + 2 * m, #KEYS do deleted = deleted + redis.call('DEL', KEYS[i]) end
  return {0, 0, 0, 0, 0, deleted, 0}
end

local n_recent = redis.call('ZCARD', a_recent)
local n_aff = redis.call('ZCARD', a_aff)
local n_cart = redis.call('SCARD', a_cart)
local n_bought = redis.call('ZCARD', a_bought)
local n_dedup = redis.call('ZCARD', a_dedup)

-- Sorted sets scored by a time: union keeping the later time, then the oldest beyond the cap go.
local function union_latest(dst, src, n, cap)
  if n == 0 then return end
  redis.call('ZUNIONSTORE', dst, 2, dst, src, 'AGGREGATE', 'MAX')
  redis.call('ZREMRANGEBYRANK', dst, 0, -cap - 1)
end
union_latest(u_recent, a_recent, n_recent, recent_max)

-- Cart: what the visitor bought leaves the user's cart (a purchase empties the cart of that item,
-- and the visitor's session is the latest), then the visitor's cart is added — in that order, so
-- an item the visitor bought and then put in the cart again stays.
if n_bought > 0 and redis.call('EXISTS', u_cart) == 1 then
  local bought = redis.call('ZRANGE', a_bought, 0, -1)
  for i = 1, #bought, 500 do
    redis.call('SREM', u_cart, unpack(bought, i, math.min(i + 499, #bought)))
  end
end
if n_cart > 0 then
  redis.call('SUNIONSTORE', u_cart, u_cart, a_cart)
end
union_latest(u_bought, a_bought, n_bought, bought_max)

-- Dedup: the visitor's event ids join the user's; the window is counted back from the newest id,
-- then the cap by count, as the event script trims.
if n_dedup > 0 then
  redis.call('ZUNIONSTORE', u_dedup, 2, u_dedup, a_dedup, 'AGGREGATE', 'MAX')
  local newest = redis.call('ZRANGE', u_dedup, -1, -1, 'WITHSCORES')
  redis.call('ZREMRANGEBYSCORE', u_dedup, '-inf', tonumber(newest[2]) - window)
  redis.call('ZREMRANGEBYRANK', u_dedup, 0, -dedup_max - 1)
end

-- Affinity: an increment at time t is stored as w * 2^((t - a0)/hl), a0 being the origin kept in
-- field a0 of the profile hash. Under origin o instead, the same increment is stored *
-- 2^((a0 - o)/hl). Both sets move to the later of the two origins (factors <= 1: no overflow),
-- then add up.
local u_a0 = redis.call('HGET', u_p, 'a0')
local a_a0 = redis.call('HGET', a_p, 'a0')
if n_aff > 0 then
  local w_u, w_a, origin = '1', '1', u_a0 or a_a0
  if redis.call('EXISTS', u_aff) == 0 then
    origin = a_a0 or u_a0  -- the user has no affinity yet: the visitor's scale is taken over
  elseif u_a0 and a_a0 then
    local t_u, t_a = tonumber(u_a0), tonumber(a_a0)
    local to = math.max(t_u, t_a)
    if t_a > t_u then origin = a_a0 end  -- the stored string, not a float's rendering
    -- %.17g: a Lua number sent as is would go out with 14 significant digits only.
    w_u = string.format('%.17g', math.pow(2, (t_u - to) / hl))
    w_a = string.format('%.17g', math.pow(2, (t_a - to) / hl))
  end
  redis.call('ZUNIONSTORE', u_aff, 2, u_aff, a_aff, 'WEIGHTS', w_u, w_a, 'AGGREGATE', 'SUM')
  if origin then redis.call('HSET', u_p, 'a0', origin) end
end

-- Other profile scalars: x (when every key's TTL was last refreshed) takes the later of the two
-- (the merge refreshes the TTLs anyway); any other field of the visitor's is taken only where the
-- user has none.
local scalars = redis.call('HGETALL', a_p)
for i = 1, #scalars, 2 do
  local f, v = scalars[i], scalars[i + 1]
  if f == 'x' then
    local mine, theirs = tonumber(redis.call('HGET', u_p, 'x') or ''), tonumber(v)
    if theirs and (not mine or theirs > mine) then redis.call('HSET', u_p, 'x', v) end
  elseif f ~= 'a0' then
    redis.call('HSETNX', u_p, f, v)
  end
end

for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ttl) end

-- Trigger event times (streams/triggers.py): under each item the visitor's "<ts>/<event_id>"
-- entries join the user's -- union by event id, the newest `keep` kept, as trigger_record.lua
-- keeps them -- so a trigger's window counts both visitors' events as one timeline would, and an
-- unless event of the visitor (a purchase before logging in) holds for the user. Each hash then
-- expires at the later of the two expiries (each was set to the rules' longest window + 1 h
-- when last recorded), so the bound stays the one recording keeps.
local function entries(raw, into, seen)
  for line in string.gmatch(raw, '[^\n]+') do
    local t, id = string.match(line, '^(%-?%d+)/(.+)$')
    if t and not seen[id] then
      seen[id] = true
      into[#into + 1] = {tonumber(t), id, line}
    end
  end
end
local n_events, carried_ms, deleted = 0, nil, 0
for i = 1, m do
  local dst, src = KEYS[12 + i], KEYS[12 + m + i]
  local flat = redis.call('HGETALL', src)
  if #flat > 0 then
    local src_ms, dst_ms = redis.call('PTTL', src), redis.call('PTTL', dst)
    for j = 1, #flat, 2 do
      local item, value = flat[j], flat[j + 1]
      local mine = redis.call('HGET', dst, item)
      if mine then
        local all, seen = {}, {}
        entries(mine, all, seen)
        entries(value, all, seen)
        table.sort(all, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
        local parts = {}
        for x = math.max(1, #all - keep + 1), #all do parts[#parts + 1] = all[x][3] end
        value = table.concat(parts, '\n')
      end
      redis.call('HSET', dst, item, value)
      n_events = n_events + 1
    end
    local expiry = math.max(src_ms, dst_ms)
    if expiry > 0 then redis.call('PEXPIRE', dst, expiry) else redis.call('EXPIRE', dst, ttl) end
    carried_ms = math.max(carried_ms or 0, src_ms)
    deleted = deleted + redis.call('DEL', src)
  end
end
-- The visitor's delayed triggers are timers in pr:timers naming the visitor; finding them here
-- would walk the whole zset. Instead a marker names the user the visitor became, and the timer
-- handler retargets such a timer to that user when it falls due. It lives as long as the
-- visitor's event times would have (no timer is due later than that) and at least the profile
-- TTL. Set only when there were event times: no trigger, no timer, no marker.
if carried_ms then
  redis.call('SET', KEYS[13 + 2 * m], me, 'PX', math.max(carried_ms, ttl * 1000))
end

for i = 7, 12 do deleted = deleted + redis.call('DEL', KEYS[i]) end
for i = 15 + 2 * m, #KEYS do deleted = deleted + redis.call('DEL', KEYS[i]) end
return {n_recent, n_aff, n_cart, n_bought, n_dedup, deleted, n_events}
