-- Compare-and-set write of one feed version, plus its diff appended to the user's history, and
-- (optionally) the index of which users' feed shows which item, all atomically.
-- KEYS[1] feed hash (e, n, b, x)   KEYS[2] history list (newest first; see sessions/feeds.py)
-- ARGV[1] base epoch ('' = the feed must not exist yet)   ARGV[2] base n
-- ARGV[3] new body (msgpack)   ARGV[4] diff (msgpack, '' when the write starts a new epoch)
-- ARGV[5] history max length   ARGV[6] ttl seconds   ARGV[7] epoch to use when starting one
-- ARGV[8] checksum of the new body (stored with its diff, so a replay need not recompute it)
-- Index (optional; absent or ARGV[9] == '' = not maintained), see sessions/feeds.py:
-- ARGV[9] index key prefix (an item's key is prefix .. item id)   ARGV[10] member (the user id)
-- ARGV[11] now, ms   ARGV[12] full refresh interval, ms   ARGV[13] index bound, s
-- ARGV[14] ids entering the list, ARGV[15] ids kept, ARGV[16] ids leaving ('\n'-separated)
-- ARGV[17] the new version's tag: '1' .. tag to set it ('1' alone: untagged), '0' to keep the
-- stored one (an edit of the list rather than a new computation; see FeedState.tag)
-- ARGV[18] history time bound, ms   ARGV[19] largest diff kept in the history, bytes
-- Returns {1, epoch, n, tag} on success, {0, epoch|'' , n} with the stored version on conflict.
local cur = redis.call('HMGET', KEYS[1], 'e', 'n')
local cur_e = cur[1] or ''
local cur_n = tonumber(cur[2] or '0')
if cur_e ~= ARGV[1] or (ARGV[1] ~= '' and cur_n ~= tonumber(ARGV[2])) then
  return {0, cur_e, cur_n}
end
local tag
if ARGV[17] and string.sub(ARGV[17], 1, 1) == '1' then
  tag = string.sub(ARGV[17], 2)
else
  tag = redis.call('HGET', KEYS[1], 'r') or ''
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
  if #ARGV[4] > tonumber(ARGV[19]) or redis.call('TYPE', KEYS[2]).ok ~= 'list' then
    redis.call('DEL', KEYS[2])
  end
  if #ARGV[4] <= tonumber(ARGV[19]) then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local bound = tonumber(ARGV[18])
    redis.call('LPUSH', KEYS[2], cmsgpack.pack(now, n, ARGV[8], tag) .. ARGV[4])
    redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
    -- Oldest last: drop the entries past the time bound (the reader ignores them anyway).
    while true do
      local ok, _, ms = pcall(cmsgpack.unpack_one, redis.call('LINDEX', KEYS[2], -1))
      if ok and type(ms) == 'number' and now - ms <= bound then break end
      redis.call('RPOP', KEYS[2])
    end
    -- The newest entry is never older than the bound: the key lives no longer than it.
    redis.call('PEXPIRE', KEYS[2], bound)
  end
end
redis.call('HSET', KEYS[1], 'e', epoch, 'n', n, 'b', ARGV[3], 'r', tag)

-- The index: zset per item, member = user, score = when this write last confirmed the entry.
-- Items entering the list are added and items leaving it removed on every write; every item of
-- the list is confirmed again when the last full confirmation (field x) is older than ARGV[12].
-- So an entry older than the feed TTL plus that interval is surely stale (the feed expired or
-- was deleted): those are trimmed whenever the set gains a member, and a set untouched that long
-- expires. Caveat (Cluster): the item-side key names are derived here, like the event script's.
if ARGV[9] and ARGV[9] ~= '' then
  local prefix, member, now = ARGV[9], ARGV[10], tonumber(ARGV[11])
  local bound_s = tonumber(ARGV[13])
  local oldest = string.format('(%d', now - bound_s * 1000)
  local function confirm(ids)
    for id in string.gmatch(ids, '[^\n]+') do
      local key = prefix .. id
      if redis.call('ZADD', key, ARGV[11], member) == 1 then
        redis.call('ZREMRANGEBYSCORE', key, '-inf', oldest)
      end
      redis.call('EXPIRE', key, bound_s)
    end
  end
  confirm(ARGV[14])
  local last = tonumber(redis.call('HGET', KEYS[1], 'x') or '')
  if not last or now - last >= tonumber(ARGV[12]) or now < last then
    confirm(ARGV[15])
    redis.call('HSET', KEYS[1], 'x', ARGV[11])
  end
  for id in string.gmatch(ARGV[16], '[^\n]+') do
    redis.call('ZREM', prefix .. id, member)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {1, epoch, n, tag}
