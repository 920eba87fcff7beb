-- Remove one user from one item's shown-index entry (sessions/feeds.py), only if the entry is
-- not newer than the caller knows: one item's key, one slot.
-- KEYS[1] the item's index zset for one feed   ARGV[1] member (the user id)
-- ARGV[2] 'lt': remove when the score is below ARGV[3] (ms); 'eq': only when it equals ARGV[3]
-- (the score the caller read); 'any': always
-- Why: a later write of the same feed may have put the item back in meanwhile (its index
-- addition lands before its compare-and-set, with a later score); its entry must stay.
-- Returns 1 when removed.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
local mode = ARGV[2]
if mode == 'any' or (mode == 'lt' and tonumber(score) < tonumber(ARGV[3]))
   or (mode == 'eq' and tonumber(score) == tonumber(ARGV[3])) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
