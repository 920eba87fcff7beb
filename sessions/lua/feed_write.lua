-- Compare-and-set write of one feed version, plus its diff appended to the user's history,
-- atomically. Touches the user's slot only: the index of which users' feed shows which item is
-- item-side (one key per item, another slot) and written by the caller around this script
-- (sessions/feeds.py); this script only keeps, in field x, when the index last confirmed every
-- item of the list, and says when that is due again.
-- KEYS[1] feed hash (e, n, b, r, x, g)   KEYS[2] history list (newest first; see sessions/feeds.py)
-- ARGV[1] base epoch ('' = the feed must not exist yet)   ARGV[2] base n
-- ARGV[3] new body (msgpack)   ARGV[4] diff (msgpack, '' when the write starts a new epoch)
-- ARGV[5] history max length   ARGV[6] ttl seconds   ARGV[7] epoch to use when starting one
-- ARGV[8] checksum of the new body (stored with its diff, so a replay need not recompute it)
-- ARGV[9] '1' when the caller keeps the index for this write ('' = not indexed)
-- ARGV[10] now, ms (the caller's clock, as the index scores)   ARGV[11] full refresh interval, ms
-- ARGV[12] the new version's tag: '1' .. tag to set it ('1' alone: untagged), '0' to keep the
-- stored one (an edit of the list rather than a new computation; see FeedState.tag)
-- ARGV[13] history time bound, ms   ARGV[14] largest diff kept in the history, bytes
-- ARGV[15] '1' when items leave the list and their index entries stay (stale): field g is set,
-- so a denial of consent erases the index by scan (streams/lua/user_event.lua)
-- Returns {1, epoch, n, tag, confirm} on success (confirm 1: the caller confirms every item of
-- the list in the index now; field x was set), {0, epoch|'' , n} with the stored version on
-- conflict.
-- One read of the stored fields this script needs (version, tag, last full confirmation).
local cur = redis.call('HMGET', KEYS[1], 'e', 'n', 'r', 'x', 'g')
local cur_e = cur[1] or ''
local cur_n = tonumber(cur[2] or '0')
if cur_e ~= ARGV[1] or (ARGV[1] ~= '' and cur_n ~= tonumber(ARGV[2])) then
  return {0, cur_e, cur_n}
end
local tag
if ARGV[12] and string.sub(ARGV[12], 1, 1) == '1' then
  tag = string.sub(ARGV[12], 2)
else
  tag = cur[3] or ''
end
local epoch, n
if ARGV[1] == '' then
  epoch, n = ARGV[7], 1
  -- A new epoch: history of any older epoch can never be replayed onto it.
  redis.call('DEL', KEYS[2])
else
  epoch, n = cur_e, cur_n + 1
  -- The history, bounded by entries, time and bytes. An entry is msgpack (ms, n, sum, tag)
  -- followed by the diff's own msgpack; ms is Redis's clock, which both scripts read.
  -- A diff larger than the byte bound is not kept, and neither is anything before it (the
  -- list is emptied): no chain can cross that version, so a client holding an older one gets a
  -- snapshot (all or nothing), and the snapshot is no larger than that diff anyway. A key of
  -- another type (a history stream written by an older version) is replaced the same way.
  -- (The type is found by the push failing, not asked on every write.)
  if #ARGV[4] > tonumber(ARGV[14]) then
    redis.call('DEL', KEYS[2])
  else
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local bound = tonumber(ARGV[13])
    local entry = cmsgpack.pack(now, n, ARGV[8], tag) .. ARGV[4]
    local pushed = redis.pcall('LPUSH', KEYS[2], entry)
    if type(pushed) == 'table' and pushed.err then
      redis.call('DEL', KEYS[2])
      pushed = redis.call('LPUSH', KEYS[2], entry)
    end
    -- LPUSH answers the length: the list is trimmed only when it is over its bound, and the
    -- time bound is checked only when an older entry is there (the new one is now).
    if pushed > tonumber(ARGV[5]) then
      redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
      pushed = tonumber(ARGV[5])
    end
    -- Oldest last: drop the entries past the time bound (the reader ignores them anyway).
    while pushed > 1 do
      local ok, _, ms = pcall(cmsgpack.unpack_one, redis.call('LINDEX', KEYS[2], -1))
      if ok and type(ms) == 'number' and now - ms <= bound then break end
      redis.call('RPOP', KEYS[2])
      pushed = pushed - 1
    end
    -- The newest entry is never older than the bound: the key lives no longer than it.
    redis.call('PEXPIRE', KEYS[2], bound)
  end
end
local fields = {'e', epoch, 'n', n, 'b', ARGV[3], 'r', tag}

-- When the last full confirmation of the index (field x) is older than the refresh interval
-- (or in the future: a clock went back), this write is the one that confirms every item.
local confirm = 0
if ARGV[9] == '1' then
  local now = tonumber(ARGV[10])
  local last = tonumber(cur[4] or '')
  if not last or now - last >= tonumber(ARGV[11]) or now < last then
    fields[#fields + 1], fields[#fields + 2] = 'x', ARGV[10]
    confirm = 1
  end
end
if ARGV[15] == '1' and not cur[5] then
  fields[#fields + 1], fields[#fields + 2] = 'g', '1'
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {1, epoch, n, tag, confirm}
