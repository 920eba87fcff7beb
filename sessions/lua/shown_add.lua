-- Confirm one user in one item's shown-index entry (sessions/feeds.py): one item's key, one slot.
-- KEYS[1] the item's index zset for one feed (pr:{i:<item>}:shown:<feed>; member user, score ms)
-- ARGV[1] member (the user id)   ARGV[2] now, ms   ARGV[3] index bound, s
-- The score only moves forward (GT: a writer whose clock is behind never ages an entry). When the
-- set gains a member, entries older than the bound are trimmed (surely stale: see
-- sessions/feeds.py); a set untouched that long expires. Returns 1 when the member is new.
local added = redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
if added == 1 then
  local oldest = string.format('(%d', tonumber(ARGV[2]) - tonumber(ARGV[3]) * 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', oldest)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return added
