-- Save a stored document (rules, experiments) and announce its new version, unless the body is
-- unchanged (streams/docstore.py).
-- KEYS[1] the document hash; ARGV[1] the normalized body, ARGV[2] the channel.
-- Returns {1 when written else 0, the version now stored}.
local body = redis.call('HGET', KEYS[1], 'body')
if body == ARGV[1] then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'v') or '0')}
end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'body', ARGV[1])
redis.call('PUBLISH', ARGV[2], tostring(v))
return {1, v}
