-- Step 3 of a merge (streams/merge.py), in the visitor's slot: mark the visitor as merged into
-- the user (when the user got its event times: the timer handler retargets the visitor's timers
-- then) and drop the snapshot of step 1. Idempotent.
-- KEYS[1] the visitor's merging hash   KEYS[2] the visitor's merge marker
-- ARGV[1] snapshot id   ARGV[2] the user   ARGV[3] marker lifetime, ms ('0': no marker)
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
