-- Guard of an offers write (streams/triggers.py, Offers.apply). Put in front of
-- sessions/lua/feed_write.lua as one script, so the guard and the write are atomic: an unless
-- event recorded by trigger_record.lua either lands before the write (the write is refused here)
-- or after it (Triggers.record then takes the entry back out). The write's own KEYS and ARGV
-- stay in place; the guard's are appended after them and read from the end, so the guard does
-- not depend on how many arguments the write takes.
--
-- KEYS after the write's own: the keys the guards read (event-time hashes, merge markers).
-- ARGV after the write's own: 4 per guard -- key index (into KEYS), item, since ms ('' = the key
--   must not exist), owner (1-based: the offer it protects) -- then the number of guards, last.
-- A guard fails when its key exists ('' since), or when the hash holds under the item an entry
-- "<ts>/<event_id>" with ts >= since. Then nothing is written and the reply is {0, '', -1,
-- owner}: a conflict to FeedStore (n = -1: no stored version looks like that), and the owner
-- tells the caller which offer to drop.
do
  local guards = tonumber(ARGV[#ARGV])
  local at = #ARGV - 4 * guards
  for g = 0, guards - 1 do
    local ki, item, since, owner = ARGV[at + 4 * g], ARGV[at + 4 * g + 1],
      ARGV[at + 4 * g + 2], ARGV[at + 4 * g + 3]
    local key = KEYS[tonumber(ki)]
    if since == '' then
      if redis.call('EXISTS', key) == 1 then return {0, '', -1, tonumber(owner)} end
    else
      local raw = redis.call('HGET', key, item)
      if raw then
        local from = tonumber(since)
        for line in string.gmatch(raw, '[^\n]+') do
          local t = tonumber(string.match(line, '^(%-?%d+)/') or '')
          if t and t >= from then return {0, '', -1, tonumber(owner)} end
        end
      end
    end
  end
end
