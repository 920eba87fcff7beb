-- The offline model's pointer swap (streams/train.py): point at a fully written version in one
-- step; refuse a version no longer registered (removed as stale by another loader meanwhile).
-- KEYS[1] the model hash; ARGV[1] version, ARGV[2] items, ARGV[3] edges, ARGV[4] load time (ms).
-- Returns the previous version (false: none).
if redis.call('HEXISTS', KEYS[1], 'v:' .. ARGV[1]) == 0 then
  return redis.error_reply('model version ' .. ARGV[1] .. ' is not registered')
end
local old = redis.call('HGET', KEYS[1], 'nb')
redis.call('HSET', KEYS[1], 'nb', ARGV[1], 'nb_items', ARGV[2], 'nb_edges', ARGV[3],
           'nb_loaded_ms', ARGV[4])
return old or false
