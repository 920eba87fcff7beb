-- Claim a model version for removal, never the current one (streams/train.py).
-- KEYS[1] the model hash; ARGV[1] the version. Returns 1 when it may be deleted.
if redis.call('HGET', KEYS[1], 'nb') == ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'v:' .. ARGV[1])
return 1
