-- Atomic read of a feed's stored version and of the history a client holding an older version
-- of the same epoch missed: the state and the entries come from one moment, so a concurrent
-- write (feed_write.lua) can never land between them.
-- KEYS[1] feed hash (e, n, b, r)   KEYS[2] history list (newest first, see feed_write.lua)
-- ARGV[1] held epoch   ARGV[2] held n   ARGV[3] history max length   ARGV[4] time bound, ms
-- Returns nil when the feed does not exist; else {epoch, n, body, tag}, plus a 5th element when the
-- held version is of the stored epoch, behind it, and at most ARGV[3] changes behind: the last
-- (n - held n) history entries, newest first, that are within the time bound (by Redis's
-- clock; older ones may still be stored until the next write or the key's expiry, and are
-- never replayed). The caller checks the chain.
local cur = redis.call('HMGET', KEYS[1], 'e', 'n', 'b', 'r')
if not cur[1] or not cur[2] then
  return false
end
local out = {cur[1], cur[2], cur[3], cur[4] or ''}
local held_n = tonumber(ARGV[2])
local k = tonumber(cur[2]) - held_n
if cur[1] == ARGV[1] and held_n >= 1 and k >= 1 and k <= tonumber(ARGV[3]) then
  local entries = {}
  if redis.call('TYPE', KEYS[2]).ok == 'list' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local bound = tonumber(ARGV[4])
    for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, k - 1)) do
      local ok, _, ms = pcall(cmsgpack.unpack_one, entry)
      if not ok or type(ms) ~= 'number' or now - ms > bound then break end
      entries[#entries + 1] = entry
    end
  end
  out[5] = entries
end
return out
