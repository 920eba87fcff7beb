-- Record one event's time for the triggers (docs/RULES.md, "Triggers") and evaluate the
-- immediate ones for its item, atomically; return the delayed ones' durable timers, which the
-- caller adds to the user's timers bucket (another slot: this script touches the user's only).
-- Idempotent: an entry is "<ts>/<event_id>", so the same event recorded twice (a retried batch)
-- counts once, and a timer member is fixed by (trigger, user, item, ts): the caller's ZADD NX.
--
-- KEYS: 1..k the user's event-time hashes (pr:{u:<id>}:ev:<type>, field item, value
--       newline-separated "<ts>/<event_id>" entries)
-- ARGV: 1 index (1-based) of this event's type among KEYS, 2 item, 3 ts ms, 4 key TTL s,
--       5 horizon ms (entries older than ts - horizon are dropped), 6 user, 7 event_id,
--       8 entries kept per item, 9 n immediate triggers, then 5 per trigger: count key index,
--       at_least, within ms, unless key index (0: none), unless within ms;
--       then n delayed triggers and 2 per trigger: name, delay ms
-- Returns {fired, blocked, timers}: the 1-based positions of the immediate triggers whose
-- condition holds, how many more had their count reached but were held back by their unless (a
-- metric), and the delayed triggers' timers as a flat list member, due ms, … (every time, also
-- for an event recorded before: a batch redelivered after a crash schedules what it missed).
local key = KEYS[tonumber(ARGV[1])]
local item, ts, ttl, horizon = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local me, eid, keep = ARGV[6], ARGV[7], tonumber(ARGV[8])

local function times(hkey)
  local out = {}
  local raw = redis.call('HGET', hkey, item)
  if raw then
    for line in string.gmatch(raw, '[^\n]+') do
      local t, id = string.match(line, '^(%-?%d+)/(.+)$')
      if t then out[#out + 1] = {tonumber(t), id} end
    end
  end
  return out
end

-- Record (once per event id).
local entries = times(key)
local seen = false
for _, e in ipairs(entries) do
  if e[2] == eid then seen = true end
end
if not seen then
  entries[#entries + 1] = {ts, eid}
end
local kept = {}
for _, e in ipairs(entries) do
  if e[1] >= ts - horizon then kept[#kept + 1] = e end
end
table.sort(kept, function(a, b) return a[1] < b[1] end)
local parts = {}
for i = math.max(1, #kept - keep + 1), #kept do
  parts[#parts + 1] = kept[i][1] .. '/' .. kept[i][2]
end
redis.call('HSET', key, item, table.concat(parts, '\n'))
if redis.call('HLEN', key) > 256 then
  -- Many items: drop those whose newest entry is past the horizon.
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local newest = -math.huge
    for line in string.gmatch(flat[i + 1], '[^\n]+') do
      local t = tonumber(string.match(line, '^(%-?%d+)/') or '')
      if t and t > newest then newest = t end
    end
    if newest < ts - horizon then redis.call('HDEL', key, flat[i]) end
  end
end
redis.call('EXPIRE', key, ttl)

-- Immediate triggers.
local fired, blocked = {}, 0
local n = tonumber(ARGV[9])
local at = 10
for i = 1, n do
  local ci, least, within = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local ui, uwithin = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  at = at + 5
  local count = 0
  for _, e in ipairs(times(KEYS[ci])) do
    if e[1] >= ts - within then count = count + 1 end
  end
  local ok = count >= least
  if ok and ui > 0 then
    for _, e in ipairs(times(KEYS[ui])) do
      if e[1] >= ts - uwithin then ok = false end
    end
    if not ok then blocked = blocked + 1 end
  end
  if ok then fired[#fired + 1] = i end
end

-- Delayed triggers: one durable timer each, due delay ms after the event.
local timers = {}
local d = tonumber(ARGV[at])
at = at + 1
for _ = 1, d do
  local name, delay = ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  local due = ts + delay
  local member = table.concat({'o', name, me, item, tostring(ts), tostring(due)}, '\n')
  timers[#timers + 1] = member
  timers[#timers + 1] = due
end
return {fired, blocked, timers}
