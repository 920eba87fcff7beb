-- Guard of an offers write (streams/triggers.py, Offers.apply): the prelude of a guarded feed
-- store (sessions.feeds.FeedStore.guarded), run in the write's own script, so the guard and the
-- write are atomic: an unless event recorded by trigger_record.lua either lands before the write
-- (the write is refused here) or after it (Triggers.record then takes the entry back out). The
-- write's own KEYS and ARGV stay in place; the guard's are appended after them and read from the
-- end, so the guard does not depend on how many the write takes.
--
-- KEYS after the write's own: one key per guard, in order (event-time hashes, merge markers).
-- ARGV after the write's own: 3 per guard -- item, since ms ('' = the key must not exist), owner
--   (1-based: the offer it protects) -- then the number of guards, last.
-- A guard fails when its key exists ('' since), or when the hash holds under the item an entry
-- "<ts>/<event_id>" with ts >= since. Then nothing is written and the reply is {0, '', -1,
-- owner}: a conflict to FeedStore (n = -1: no stored version looks like that), and the owner
-- tells the caller which offer to drop.
do
  local guards = tonumber(ARGV[#ARGV])
  local at = #ARGV - 3 * guards
  for g = 0, guards - 1 do
    local item, since, owner = ARGV[at + 3 * g], ARGV[at + 3 * g + 1], ARGV[at + 3 * g + 2]
    local key = KEYS[#KEYS - guards + 1 + g]
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
