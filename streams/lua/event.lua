-- Apply one event to a user's profile and return everything the recommender needs, in one round
-- trip. Atomic: a duplicate event_id changes nothing.
-- KEYS: 1 dedup zset, 2 recent zset, 3 affinity zset, 4 cart set, 5 bought zset, 6 profile hash,
--       7 home feed hash
-- ARGV: 1 event_id, 2 type, 3 item_id ('' = none), 4 categories ('\n'-separated), 5 ts ms,
--       6 user ttl s, 7 dedup window ms, 8 dedup max, 9 recent max, 10 neighbours kept per item,
--       11 recent fetched, 12 neighbours fetched per recent item, 13 categories fetched,
--       14 trending fetched, 15 affinity half-life ms, 16 trending half-life ms, 17 bought fetched,
--       18 affinity weight, 19 co-visitation weight, 20 trending weight, 21 co-visited recent items
-- Returns {0} for a duplicate, {2} when the event cannot change a feed, else
--   {1, recent, cats, neighbours, cat_trending, global_trending, cart, bought, feed_e, feed_n, feed_b}
local eid, etype, item, ts = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])

-- type 'refresh' is no event: it changes nothing and only gathers the inputs (first connect).
if etype ~= 'refresh' then
  if redis.call('ZSCORE', KEYS[1], eid) then
    return {0}
  end
  redis.call('ZADD', KEYS[1], ts, eid)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ts - tonumber(ARGV[7]))
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[8]) - 1)
  redis.call('EXPIRE', KEYS[1], ttl)
end

local cats = {}
for c in string.gmatch(ARGV[4], '[^\n]+') do cats[#cats + 1] = c end
local w_aff, w_cov, w_trend = tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20])

if etype == 'impression' then
  return {2}
end

-- Decay by time-scaled increments: an increment at time t weighs 2^((t - t0)/half-life), so older
-- increments shrink relative to newer ones without rewriting them. When the exponent grows large
-- the whole set is rescaled once and t0 moves forward.
local function scale(t0, halflife)
  return math.pow(2, (ts - t0) / halflife)
end
local function rescale(key, factor)
  local flat = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for i = 1, #flat, 2 do
    redis.call('ZADD', key, tonumber(flat[i + 1]) * factor, flat[i])
  end
end

-- The decay origin kept in field `field` of hash `hkey`. Past 200 half-lives the scores would
-- head for overflow: every key `keys()` names is rescaled once and the origin moves to now.
local function origin(hkey, field, hl, keys)
  local t0 = tonumber(redis.call('HGET', hkey, field) or '')
  if t0 and (ts - t0) / hl <= 200 then
    return t0
  end
  if t0 then
    local factor = math.pow(2, -(ts - t0) / hl)
    for _, key in ipairs(keys()) do rescale(key, factor) end
  end
  redis.call('HSET', hkey, field, ts)
  return ts
end

-- Per-user affinity to categories.
if w_aff ~= 0 and #cats > 0 then
  local hl = tonumber(ARGV[15])
  local t0 = origin(KEYS[6], 'a0', hl, function() return {KEYS[3]} end)
  local inc = w_aff * scale(t0, hl)
  for _, c in ipairs(cats) do redis.call('ZINCRBY', KEYS[3], inc, c) end
end

if item ~= '' then
  local nb_max = tonumber(ARGV[10])
  if w_cov > 0 then
    -- Co-visitation with the user's latest distinct items, closer ones weighing more.
    local prev = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[21]) - 1)
    local nb_item = 'pr:nb:' .. item
    for i, p in ipairs(prev) do
      if p ~= item then
        local nb_p = 'pr:nb:' .. p
        redis.call('ZINCRBY', nb_item, w_cov / i, p)
        redis.call('ZINCRBY', nb_p, w_cov / i, item)
        redis.call('ZREMRANGEBYRANK', nb_p, 0, -nb_max - 1)
      end
    end
    redis.call('ZREMRANGEBYRANK', nb_item, 0, -nb_max - 1)
    redis.call('ZADD', KEYS[2], ts, item)
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[9]) - 1)
  end
  if etype == 'add_to_cart' then
    redis.call('SADD', KEYS[4], item)
  elseif etype == 'remove_from_cart' then
    redis.call('SREM', KEYS[4], item)
  elseif etype == 'purchase' then
    redis.call('SREM', KEYS[4], item)
    redis.call('ZADD', KEYS[5], ts, item)
    redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -501)
  end
  if w_trend > 0 then
    local hl = tonumber(ARGV[16])
    local t0 = origin('pr:meta', 't0', hl, function()
      local keys = {'pr:trend'}
      for _, c in ipairs(redis.call('SMEMBERS', 'pr:trend:cats')) do
        keys[#keys + 1] = 'pr:trend:c:' .. c
      end
      return keys
    end)
    local inc = w_trend * scale(t0, hl)
    redis.call('ZINCRBY', 'pr:trend', inc, item)
    redis.call('ZREMRANGEBYRANK', 'pr:trend', 0, -5001)
    for _, c in ipairs(cats) do
      redis.call('SADD', 'pr:trend:cats', c)
      redis.call('ZINCRBY', 'pr:trend:c:' .. c, inc, item)
      redis.call('ZREMRANGEBYRANK', 'pr:trend:c:' .. c, 0, -1001)
    end
  end
end
if etype ~= 'refresh' then
  for i = 2, 6 do redis.call('EXPIRE', KEYS[i], ttl) end
end

-- Everything the recommender needs.
local recent = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[11]) - 1, 'WITHSCORES')
local nb_fetch = tonumber(ARGV[12]) - 1
local neighbours = {}
for i = 1, #recent, 2 do
  neighbours[#neighbours + 1] =
    redis.call('ZREVRANGE', 'pr:nb:' .. recent[i], 0, nb_fetch, 'WITHSCORES')
end
local top = redis.call('ZREVRANGE', KEYS[3], 0, tonumber(ARGV[13]) - 1, 'WITHSCORES')
local trend_fetch = tonumber(ARGV[14]) - 1
local cat_trending = {}
for i = 1, #top, 2 do
  cat_trending[#cat_trending + 1] =
    redis.call('ZREVRANGE', 'pr:trend:c:' .. top[i], 0, trend_fetch, 'WITHSCORES')
end
local global = redis.call('ZREVRANGE', 'pr:trend', 0, trend_fetch, 'WITHSCORES')
local cart = redis.call('SRANDMEMBER', KEYS[4], 50)
local bought = redis.call('ZREVRANGE', KEYS[5], 0, tonumber(ARGV[17]) - 1)
local feed = redis.call('HMGET', KEYS[7], 'e', 'n', 'b')
return {1, recent, top, neighbours, cat_trending, global, cart, bought,
        feed[1] or '', feed[2] or '0', feed[3] or ''}
