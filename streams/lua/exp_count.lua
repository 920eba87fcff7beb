-- Count one impression or click of a list for the experiment variants that made it, once per list.
-- KEYS[1] the user's counted-lists hash (field 'i' .. rec id / 'c' .. rec id)
-- KEYS[2] the user's exposures hash (field '<experiment>:<revision>', value the variant)
-- ARGV[1] 'i' (impression) or 'c' (click)   ARGV[2] rec id   ARGV[3] now ms
-- ARGV[4] TTL of the counted-lists hash, s   ARGV[5] TTL of the exposures hash, s
-- ARGV[6] most fields the counted-lists hash keeps
-- ARGV[7..] triples: experiment, revision, variant (already checked against the user's variant)
-- Returns 0 when this list's impression (or click) was counted before; else, per triple, what
-- to add to its variant's counters: 4 (an impression) + 2 (a click) + 1 (a user newly exposed).
--
-- Once per list: a list shown in two tabs, re-rendered, or an event retried by the pipeline
-- counts once; a click on a list whose impression never arrived counts the impression too, so
-- a variant's clicks never exceed its impressions (CTR is a proportion, its interval binomial).
-- Touches the user's slot only: the statistics keys are per experiment and bucket (other slots),
-- incremented by the caller from what this returns (streams/experiment_stats.py).
local kind, rec = ARGV[1], ARGV[2]
local shown
if kind == 'c' then
  if redis.call('HSETNX', KEYS[1], 'c' .. rec, ARGV[3]) == 0 then return 0 end
  shown = redis.call('HSETNX', KEYS[1], 'i' .. rec, ARGV[3])
else
  if redis.call('HSETNX', KEYS[1], 'i' .. rec, ARGV[3]) == 0 then return 0 end
  shown = 1
end
-- A visitor of a very long session: start the marks afresh rather than grow without bound (a
-- list seen before the reset and counted again after it is the price, documented).
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[6]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], kind .. rec, ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
local out = {}
for i = 7, #ARGV, 3 do
  local exp, rev, variant = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local new_user = redis.call('HSETNX', KEYS[2], exp .. ':' .. rev, variant)
  out[#out + 1] = shown * 4 + (kind == 'c' and 2 or 0) + new_user
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
return out
