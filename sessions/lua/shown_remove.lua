-- Remove users from one item's shown-index entry (sessions/feeds.py), each only if its entry is
-- not newer than the caller knows: one item's key, one slot, every removal of a round merged.
-- KEYS[1] the item's index zset for one feed
-- ARGV: triples (member (the user id), mode, ms), one per removal, where mode is
-- 'lt': remove when the score is below ms; 'eq': only when it equals ms (the score the caller
-- read); 'any': always
-- Why: a later write of the same feed may have put the item back in meanwhile (its index
-- addition lands before its compare-and-set, with a later score); its entry must stay.
-- Returns how many were removed.
local removed = 0
for i = 1, #ARGV, 3 do
  local member, mode = ARGV[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and (mode == 'any' or (mode == 'lt' and tonumber(score) < tonumber(ARGV[i + 2]))
     or (mode == 'eq' and tonumber(score) == tonumber(ARGV[i + 2]))) then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  end
end
return removed
