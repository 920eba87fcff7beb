-- Clear a withdrawal's erasure marker only if it is still the one the erasure was for: a newer
-- withdrawal that arrived meanwhile keeps its own, and its own erasure (streams/consent.py).
-- KEYS[1] the consent hash; ARGV[1] the marker. Returns 1 when cleared.
if redis.call('HGET', KEYS[1], 'erase') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'erase')
end
return 0
