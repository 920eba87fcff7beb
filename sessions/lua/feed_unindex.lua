-- Remove stale entries of one user from the shown-items index (see feed_write.lua), only if the
-- user's feed is still as the caller saw it: absent, or at the version read (which does not show
-- those items). A write landing in between keeps its entries.
-- KEYS[1] feed hash
-- ARGV[1] epoch seen ('' = no feed)   ARGV[2] n seen   ARGV[3] index key prefix
-- ARGV[4] member (the user id)   ARGV[5] item ids ('\n'-separated)
-- Returns how many entries were removed. Caveat (Cluster): item-side key names derived here.
local cur = redis.call('HMGET', KEYS[1], 'e', 'n')
if (cur[1] or '') ~= ARGV[1] or (ARGV[1] ~= '' and tonumber(cur[2]) ~= tonumber(ARGV[2])) then
  return 0
end
local removed = 0
for id in string.gmatch(ARGV[5], '[^\n]+') do
  removed = removed + redis.call('ZREM', ARGV[3] .. id, ARGV[4])
end
return removed
