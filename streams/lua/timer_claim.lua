-- Claim due timers, atomically: one script moves each due member from the timers zset to the
-- claimed zset with a lease, so exactly one caller gets it. Leases that ran out (a node died or
-- stalled between claim and acknowledgement) go back to the timers first, due now.
-- KEYS[1] timers zset (score: due ms)   KEYS[2] claimed zset (score: lease end ms)
-- ARGV[1] now ms   ARGV[2] lease ms   ARGV[3] at most this many
-- Returns {claimed members (earliest due first), how many ran-out leases were put back}.
local now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZADD', KEYS[1], now, m)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZADD', KEYS[2], now + lease, m)
end
return {due, #expired}
