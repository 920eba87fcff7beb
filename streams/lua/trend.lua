-- Trending increments of one slot: one trending bucket ({t:<b>}) or one category ({c:<cat>}),
-- the increments of a whole lane merged (streams/aggregates.py).
-- KEYS: 1 trending zset, 2 its meta hash (decay origin t0; buckets: users, their share of the
--       users seen, the N of the session idf)
-- ARGV[1]: msgpack map: items (flat member, increment relative to `ref`, …), ref (the lane's
--   decay clock, ms: its latest event time, never past the worker's clock), hl (half-life, ms),
--   cap (members kept), users (new users to count: trending buckets only; a category request
--   has no users field, and its users count is neither read nor written)
-- Reply: msgpack map: t0, rescaled (bool), scores (flat member, new score as text, …), users
--   (buckets: the users count, false when none)
-- Decay by time-scaled increments: an increment at time t weighs 2^((t - t0)/half-life), so older
-- increments shrink relative to newer ones without rewriting them. Past 200 half-lives the scores
-- would head for overflow: the zset is rescaled once and the origin moves to `ref`.
local req = cmsgpack.unpack(ARGV[1])
local ref, hl = tonumber(req['ref']), tonumber(req['hl'])
local t0 = tonumber(redis.call('HGET', KEYS[2], 't0') or '')
local rescaled = false
if not t0 or (ref - t0) / hl > 200 then
  if t0 then
    local factor = math.pow(2, -(ref - t0) / hl)
    local flat = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #flat, 2 do
      redis.call('ZADD', KEYS[1], tonumber(flat[i + 1]) * factor, flat[i])
    end
    rescaled = true
  end
  redis.call('HSET', KEYS[2], 't0', string.format('%d', ref))
  t0 = ref
end
local scale = math.pow(2, (ref - t0) / hl)
local flat, scores, grew = req['items'], {}, false
for i = 1, #flat, 2 do
  local by = flat[i + 1] * scale
  local s = redis.call('ZINCRBY', KEYS[1], by, flat[i])
  if tonumber(s) == by then grew = true end
  scores[#scores + 1] = flat[i]
  scores[#scores + 1] = s
end
if grew then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -req['cap'] - 1) end
local users = false
if req['users'] and req['users'] > 0 then
  users = redis.call('HINCRBY', KEYS[2], 'users', req['users'])
elseif req['users'] then
  users = redis.call('HGET', KEYS[2], 'users')
end
return cmsgpack.pack({t0 = string.format('%d', t0), rescaled = rescaled, scores = scores,
                      users = users and tostring(users) or false})
