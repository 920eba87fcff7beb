-- Step 2 of a merge (streams/merge.py), in the user's slot: fold a visitor's snapshot (taken by
-- merge_take.lua) into the user's profile and trigger event times, once per snapshot -- field
-- mg of the user's profile hash remembers the last MERGES_KEPT snapshots applied (ids, space-
-- separated), so a redo after a crash changes nothing. An empty snapshot is not remembered.
-- See streams/merge.py for the semantics of each key; streams/lua/user_event.lua writes them.
--
-- KEYS: 1 dedup zset, 2 recent zset, 3 affinity zset, 4 cart set, 5 bought zset, 6 profile hash
--       of the user; 7..6+m the user's trigger event-time hashes (the snapshot's types, same
--       order); 7+m the user's consent record (streams/consent.py)
-- ARGV: 1 the snapshot (msgpack), 2 ttl s, 3 dedup window ms, 4 dedup max, 5 recent max,
--       6 bought max, 7 affinity half-life ms, 8 m, 9 event-time entries kept per item,
--       10 '1' when the consent policy requires a recorded grant
-- Returns {applied, recent, aff, cart, bought, dedup, events}: applied 1 (now), 2 (before: a
-- redo), 0 (the user has no personalization consent: nothing merged, zeros); then how many
-- members each of the visitor's profile keys held and (event type, item) fields carried.
local snap = cmsgpack.unpack(ARGV[1])
local ttl, window, dedup_max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local recent_max, bought_max, hl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local m, keep = tonumber(ARGV[8]), tonumber(ARGV[9])
local u_dedup, u_recent, u_aff, u_cart, u_bought, u_p = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6]

-- No profile may be stored for a user without personalization consent.
local state = redis.call('HGET', KEYS[7 + m], 'state')
if not (state == 'granted' or (not state and ARGV[10] ~= '1')) then
  return {0, 0, 0, 0, 0, 0, 0}
end

local n_events = 0
for i = 1, m do n_events = n_events + #(snap.events[i] or {}) / 2 end
local counts = {#snap.recent / 2, #snap.aff / 2, #snap.cart, #snap.bought / 2, #snap.dedup / 2,
  n_events}
local any = n_events > 0 or #snap.p > 0
for i = 1, 5 do any = any or counts[i] > 0 end
local applied = redis.call('HGET', u_p, 'mg') or ''
if any and string.find(' ' .. applied .. ' ', ' ' .. snap.id .. ' ', 1, true) then
  return {2, unpack(counts)}
end

-- Sorted sets scored by a time: the later time kept per member (ZADD GT adds new members too),
-- then the oldest beyond the cap go.
local function add_latest(dst, flat)
  for i = 1, #flat, 2 do redis.call('ZADD', dst, 'GT', flat[i + 1], flat[i]) end
end
if #snap.recent > 0 then
  add_latest(u_recent, snap.recent)
  redis.call('ZREMRANGEBYRANK', u_recent, 0, -recent_max - 1)
end

-- Cart: what the visitor bought leaves the user's cart (a purchase empties the cart of that item,
-- and the visitor's session is the latest), then the visitor's cart is added -- in that order, so
-- an item the visitor bought and then put in the cart again stays.
for i = 1, #snap.bought, 2 do redis.call('SREM', u_cart, snap.bought[i]) end
for _, item in ipairs(snap.cart) do redis.call('SADD', u_cart, item) end
if #snap.bought > 0 then
  add_latest(u_bought, snap.bought)
  redis.call('ZREMRANGEBYRANK', u_bought, 0, -bought_max - 1)
end

-- Dedup: the visitor's event ids join the user's; the window is counted back from the newest id,
-- then the cap by count, as the user lane trims.
if #snap.dedup > 0 then
  add_latest(u_dedup, snap.dedup)
  local newest = redis.call('ZRANGE', u_dedup, -1, -1, 'WITHSCORES')
  redis.call('ZREMRANGEBYSCORE', u_dedup, '-inf', tonumber(newest[2]) - window)
  redis.call('ZREMRANGEBYRANK', u_dedup, 0, -dedup_max - 1)
end

-- Affinity: an increment at time t is stored as w * 2^((t - a0)/hl), a0 being the origin kept in
-- field a0 of the profile hash. Under origin o instead, the same increment is stored *
-- 2^((a0 - o)/hl). Both move to the later of the two origins (factors <= 1: no overflow), then
-- add up: the user's set is rescaled in place, the visitor's weights added to it.
local a_p = {}
for i = 1, #snap.p, 2 do a_p[snap.p[i]] = snap.p[i + 1] end
local u_a0 = redis.call('HGET', u_p, 'a0')
local a_a0 = a_p['a0']
if #snap.aff > 0 then
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
  if w_u ~= '1' then
    redis.call('ZUNIONSTORE', u_aff, 1, u_aff, 'WEIGHTS', w_u)
  end
  for i = 1, #snap.aff, 2 do
    local w = snap.aff[i + 1]
    if w_a ~= '1' then w = string.format('%.17g', tonumber(w) * tonumber(w_a)) end
    redis.call('ZINCRBY', u_aff, w, snap.aff[i])
  end
  if origin then redis.call('HSET', u_p, 'a0', origin) end
end

-- Other profile scalars: x (when every key's TTL was last refreshed) takes the later of the two
-- (the merge refreshes the TTLs anyway); any other field of the visitor's is taken only where the
-- user has none.
for f, v in pairs(a_p) do
  if f == 'x' then
    local mine, theirs = tonumber(redis.call('HGET', u_p, 'x') or ''), tonumber(v)
    if theirs and (not mine or theirs > mine) then redis.call('HSET', u_p, 'x', v) end
  elseif f ~= 'a0' and f ~= 'mg' then
    redis.call('HSETNX', u_p, f, v)
  end
end

if any then
  local ids = {}
  for id in string.gmatch(applied, '%S+') do ids[#ids + 1] = id end
  ids[#ids + 1] = snap.id
  redis.call('HSET', u_p, 'mg', table.concat(ids, ' ', math.max(1, #ids - 7), #ids))
end
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ttl) end

-- Trigger event times (streams/triggers.py): under each item the visitor's "<ts>/<event_id>"
-- entries join the user's -- union by event id, the newest `keep` kept, as trigger_record.lua
-- keeps them. Each hash then expires at the later of the two expiries (the visitor's as the
-- snapshot saw it).
local function entries(raw, into, seen)
  for line in string.gmatch(raw, '[^\n]+') do
    local t, id = string.match(line, '^(%-?%d+)/(.+)$')
    if t and not seen[id] then
      seen[id] = true
      into[#into + 1] = {tonumber(t), id, line}
    end
  end
end
for i = 1, m do
  local dst, fields = KEYS[6 + i], snap.events[i] or {}
  if #fields > 0 then
    local dst_ms = redis.call('PTTL', dst)
    for j = 1, #fields, 2 do
      local item, value = fields[j], fields[j + 1]
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
    end
    local expiry = math.max(snap.events_ms, dst_ms)
    if expiry > 0 then redis.call('PEXPIRE', dst, expiry) else redis.call('EXPIRE', dst, ttl) end
  end
end
return {1, unpack(counts)}
