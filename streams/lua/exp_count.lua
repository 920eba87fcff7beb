-- Count one impression or click of a list for the experiment variants that made it, once per list.
-- KEYS[1] the user's counted-lists hash (field 'i' .. rec id / 'c' .. rec id)
-- KEYS[2] the user's exposures hash (field '<experiment>:<revision>', value the variant)
-- ARGV[1] 'i' (impression) or 'c' (click)   ARGV[2] rec id   ARGV[3] now ms
-- ARGV[4] TTL of the counted-lists hash, s   ARGV[5] TTL of the exposures hash, s
-- ARGV[6] TTL of the statistics keys, s   ARGV[7] most fields the counted-lists hash keeps
-- ARGV[8..] triples: experiment, revision, variant (already checked against the user's variant)
-- Returns 1 when counted, 0 when this list's impression (or click) was counted before.
--
-- Once per list: a list shown in two tabs, re-rendered, or an event retried by the pipeline
-- counts once; a click on a list whose impression never arrived counts the impression too, so
-- a variant's clicks never exceed its impressions (CTR is a proportion, its interval binomial).
-- Caveat (Cluster): the statistics keys are derived here, like the event script's item keys.
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
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[7]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], kind .. rec, ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
for i = 8, #ARGV, 3 do
  local exp, rev, variant = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local stats = 'pr:xs:' .. exp .. ':' .. rev
  if shown == 1 then redis.call('HINCRBY', stats, variant .. ':i', 1) end
  if kind == 'c' then redis.call('HINCRBY', stats, variant .. ':c', 1) end
  if redis.call('HSETNX', KEYS[2], exp .. ':' .. rev, variant) == 1 then
    redis.call('HINCRBY', stats, variant .. ':u', 1)
  end
  redis.call('EXPIRE', stats, ARGV[6])
  -- The revisions of an experiment, by first count (so stopped experiments stay readable).
  redis.call('ZADD', 'pr:xs:' .. exp, 'NX', ARGV[3], rev)
  redis.call('EXPIRE', 'pr:xs:' .. exp, ARGV[6])
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
