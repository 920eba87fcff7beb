-- Compare-and-set write of one feed version, plus its diff appended to the user's history.
-- KEYS[1] feed hash (e, n, b)   KEYS[2] history stream
-- ARGV[1] base epoch ('' = the feed must not exist yet)   ARGV[2] base n
-- ARGV[3] new body (msgpack)   ARGV[4] diff (msgpack, '' when the write starts a new epoch)
-- ARGV[5] history max length   ARGV[6] ttl seconds   ARGV[7] epoch to use when starting one
-- ARGV[8] checksum of the new body (stored with its diff, so a replay need not recompute it)
-- Returns {1, epoch, n} on success, {0, epoch|'' , n} with the stored version on conflict.
local cur = redis.call('HMGET', KEYS[1], 'e', 'n')
local cur_e = cur[1] or ''
local cur_n = tonumber(cur[2] or '0')
if cur_e ~= ARGV[1] or (ARGV[1] ~= '' and cur_n ~= tonumber(ARGV[2])) then
  return {0, cur_e, cur_n}
end
local epoch, n
if ARGV[1] == '' then
  epoch, n = ARGV[7], 1
  -- A new epoch: history of any older epoch can never be replayed onto it.
  redis.call('DEL', KEYS[2])
else
  epoch, n = cur_e, cur_n + 1
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'n', n, 'd', ARGV[4], 's', ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
redis.call('HSET', KEYS[1], 'e', epoch, 'n', n, 'b', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return {1, epoch, n}
