-- Apply one event to a user's profile and score the user's candidates, in one round trip.
-- Atomic: a duplicate event_id changes nothing.
--
-- Tuning constants (the upper-case placeholders) are filled in once, from typed numeric settings,
-- when the script is registered (streams/profile.py): fewer arguments to encode per event.
--
-- KEYS: 1 dedup zset, 2 recent zset, 3 affinity zset, 4 cart set, 5 bought zset, 6 profile hash,
--       7 home feed hash, 8 similar feed hash, 9 cart feed hash, 10 consent hash;
--       consent events only: 11 offers feed hash, 12.. the user's other keys a withdrawal deletes
-- ARGV: 1 event_id, 2 type ('refresh' = no event, only score), 3 item_id ('' = none),
--       4 categories ('\n'-separated), 5 ts ms, 6 affinity weight, 7 co-visitation weight,
--       8 trending weight, 9 epoch and 10 n of the feed version the caller holds ('' / 0: none),
--       11 '1' to score the candidates, '0' when a later event of the batch will, 12 the user id,
--       13 context feeds to score even when the user has none stored yet ('\n'-separated),
--       14 the user id as encoded in key names (sessions/keys.py encode_user: the session-kNN
--       index lists users by it, so that a neighbour's key name is 'pr:{u:' .. member .. '}:…');
--       consent events only: 15 the decision ('granted' / 'denied'), 16 its source ('event' /
--       'api'), 17-20 the pr:shown prefixes of the feeds KEYS[7], [8], [9], [11]
-- Returns {0} for a duplicate, {2} when the event cannot change a feed, {3} when applied but not
-- scored (ARGV[11] = '0'), {4} for a user without personalization consent (nothing stored), else
--   {1, candidates (flat id, score, … best first), feed_e, feed_n, feed_b, 1 if feed_b omitted,
--    context: {{feed name, candidates, e, n, b}, …}}
-- or the same with 5 for a user without consent (scored as a visitor with no profile).
-- When the consent record holds a pending withdrawal, or for a consent event, every reply ends
-- with {withdrawal marker or '', what recording the decision did or '', the record's time or ''}.
-- Consent (streams/consent.py): the policy constant CONSENT_REQUIRED (1: only after a recorded
-- grant) and the record decide whether the user is personalized, in this same atomic step.
-- Context feeds ('similar': neighbours of the item being looked at; 'cart': complements of the
-- cart) are scored only for users who have one stored (they subscribed to it) or when ARGV[13]
-- names it: nobody else pays for them.
local eid, etype, item, ts = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
local w_aff, w_cov, w_trend = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local me = ARGV[12]
local me_key = ARGV[14]  -- `me` encoded for key names (never build a key name from `me`)
local ttl = ${TTL_S}

local consent = redis.call('HMGET', KEYS[10], 'state', 'at', 'erase')
local change  -- what a consent event did to the record
if etype == 'consent' then
  -- A grant older than the recorded decision changes nothing (a replayed or late grant cannot
  -- undo a newer denial); a denial always takes effect, and the record's time never goes back
  -- (so no older grant can follow it): clients' clocks only ever err on the private side. A
  -- future stamp counts as now. Consent events are not deduplicated: equal decisions are
  -- idempotent, and a denied user must have no dedup window.
  local decision = ARGV[15]
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local at = (ts > 0 and ts < now) and ts or now
  local recorded = tonumber(consent[2] or '')
  if consent[1] == decision then
    change = 'unchanged'
  elseif decision == 'granted' and recorded and at < recorded then
    change = 'stale'
  else
    if recorded and at < recorded then at = recorded end
    change = decision
    consent[1], consent[2] = decision, string.format('%d', at)
    redis.call('HSET', KEYS[10], 'state', decision, 'at', consent[2], 'source', ARGV[16])
    if decision == 'denied' then
      -- A withdrawal: the profile goes now (so a grant that follows starts empty), the rest of
      -- the user's data at the processor's erasure, which this marker asks for.
      local data = {KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
      for i = 12, #KEYS do data[#data + 1] = KEYS[i] end
      if redis.call('EXISTS', unpack(data)) > 0 then
        redis.call('DEL', unpack(data))
        consent[3] = t[1] .. '.' .. t[2]
        redis.call('HSET', KEYS[10], 'erase', consent[3])
        change = 'withdrawn'
      end
      -- Stored lists leave the index naming the user (pr:shown, sessions/feeds.py: its entries
      -- are exactly the items of the stored lists); later writes do not index them.
      local feeds = {KEYS[7], KEYS[8], KEYS[9], KEYS[11]}
      for j, key in ipairs(feeds) do
        local body = redis.call('HGET', key, 'b')
        if body and body ~= '' then
          for _, p in ipairs(cmsgpack.unpack(body)) do
            if type(p) == 'table' and p['id'] then
              redis.call('ZREM', ARGV[16 + j] .. tostring(p['id']), me)
            end
          end
          redis.call('HDEL', key, 'x')  -- a later indexed write confirms every item again
        end
      end
    end
  end
  etype = 'refresh'  -- otherwise like a refresh: scored when asked, nothing else stored
end
-- Anonymous visitors' records live as long as their profile would (streams/consent.py).
if consent[1] and string.sub(me, 1, 5) == 'anon:' then redis.call('EXPIRE', KEYS[10], ttl) end
local personal = consent[1] == 'granted' or (not consent[1] and ${CONSENT_REQUIRED} == 0)
local function reply(r)
  if consent[3] or change then
    r[#r + 1] = consent[3] or ''
    r[#r + 1] = change or ''
    r[#r + 1] = consent[2] or ''
  end
  return r
end
if not personal then
  -- Nothing of this event is stored, not even its id; scored as a visitor with no profile.
  if etype == 'impression' or ARGV[11] == '0' then
    return reply({4})
  end
  etype, item = 'refresh', ''
end

if etype ~= 'refresh' then
  if redis.call('ZSCORE', KEYS[1], eid) then
    return reply({0})
  end
  redis.call('ZADD', KEYS[1], ts, eid)
  -- Trims cost a call each; an id older than the window does no harm for a while, so expire
  -- them on one event in 16 (the cap by count still holds within 16 ids).
  if ts % 16 == 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ts - ${DEDUP_WINDOW_MS})
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -${DEDUP_MAX} - 1)
  end
  redis.call('EXPIRE', KEYS[1], ttl)
end
if etype == 'impression' then
  return reply({2})
end

local cats = {}
if personal then
  for c in string.gmatch(ARGV[4], '[^\n]+') do cats[#cats + 1] = c end
end

-- Decay by time-scaled increments: an increment at time t weighs 2^((t - t0)/half-life), so older
-- increments shrink relative to newer ones without rewriting them. The decay clock is the event's
-- time but never past Redis's own: one event stamped far ahead (a producer's clock, a replay of
-- bad data) would otherwise move the origins there and rescale every score to zero; at most it
-- moves them to now. Replays of past events keep their own time.
local dts = ts
do
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if dts > now then dts = now end
end
local function scale(t0, halflife)
  return math.pow(2, (dts - t0) / halflife)
end
-- A sorted set only grows when a member is new, so it is trimmed to its cap only then:
-- ZINCRBY returns the new score, which equals the increment exactly for a new member.
local function incr(key, by, member, cap)
  if tonumber(redis.call('ZINCRBY', key, by, member)) == by then
    redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1)
  end
end
local touched = {}  -- per-user keys this event wrote: only they need their TTL refreshed
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
  if t0 and (dts - t0) / hl <= 200 then
    return t0
  end
  if t0 then
    local factor = math.pow(2, -(dts - t0) / hl)
    for _, key in ipairs(keys()) do rescale(key, factor) end
  end
  redis.call('HSET', hkey, field, dts)
  return dts
end

-- Per-user affinity to categories.
if w_aff ~= 0 and #cats > 0 then
  local hl = ${AFFINITY_HALFLIFE_MS}
  local t0 = origin(KEYS[6], 'a0', hl, function() return {KEYS[3]} end)
  local inc = w_aff * scale(t0, hl)
  for _, c in ipairs(cats) do redis.call('ZINCRBY', KEYS[3], inc, c) end
  touched[#touched + 1] = KEYS[3]
  touched[#touched + 1] = KEYS[6]
end

if item ~= '' then
  if w_cov > 0 then
    -- Co-visitation with the user's latest distinct items, closer ones weighing more.
    local prev = redis.call('ZREVRANGE', KEYS[2], 0, ${COVISIT_WINDOW} - 1)
    local nb_item = 'pr:nb:' .. item
    for i, p in ipairs(prev) do
      if p ~= item then
        incr(nb_item, w_cov / i, p, ${NEIGHBOURS_KEPT})
        incr('pr:nb:' .. p, w_cov / i, item, ${NEIGHBOURS_KEPT})
      end
    end
    if redis.call('EXISTS', KEYS[2]) == 0 then
      redis.call('HINCRBY', 'pr:meta', 'users', 1)  -- users seen: the N of the session idf
    end
    if redis.call('ZADD', KEYS[2], ts, item) == 1 then
      redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -${RECENT_MAX} - 1)
    end
    touched[#touched + 1] = KEYS[2]
    -- Which users touched this item lately (the session-kNN index), capped to the latest; by
    -- encoded id, which is what a neighbour's key name is made of below.
    local sessions = 'pr:is:' .. item
    if redis.call('ZADD', sessions, ts, me_key) == 1 then
      redis.call('ZREMRANGEBYRANK', sessions, 0, -${SESSION_INDEX_MAX} - 1)
    end
  end
  if etype == 'add_to_cart' or etype == 'purchase' then
    -- Complements: items carted (or bought within the hour) together, a stronger signal of "goes
    -- with" than co-views, which mostly find alternatives. Bounded: 20 partners per event.
    local partners = redis.call('SRANDMEMBER', KEYS[4], 20)
    if etype == 'purchase' then
      for _, b in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], ts - 3600000, '+inf', 'LIMIT', 0, 20)) do
        partners[#partners + 1] = b
      end
    end
    local w = etype == 'purchase' and 2 or 1
    for _, p in ipairs(partners) do
      if p ~= item then
        incr('pr:cb:' .. item, w, p, ${NEIGHBOURS_KEPT})
        incr('pr:cb:' .. p, w, item, ${NEIGHBOURS_KEPT})
      end
    end
  end
  if etype == 'add_to_cart' then
    redis.call('SADD', KEYS[4], item)
    touched[#touched + 1] = KEYS[4]
  elseif etype == 'remove_from_cart' then
    redis.call('SREM', KEYS[4], item)
  elseif etype == 'purchase' then
    redis.call('SREM', KEYS[4], item)
    redis.call('ZADD', KEYS[5], ts, item)
    redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -501)
    touched[#touched + 1] = KEYS[5]
  end
  if w_trend > 0 then
    local hl = ${TRENDING_HALFLIFE_MS}
    local t0 = origin('pr:meta', 't0', hl, function()
      local keys = {'pr:trend'}
      for _, c in ipairs(redis.call('SMEMBERS', 'pr:trend:cats')) do
        keys[#keys + 1] = 'pr:trend:c:' .. c
      end
      return keys
    end)
    local inc = w_trend * scale(t0, hl)
    incr('pr:trend', inc, item, 5000)
    for _, c in ipairs(cats) do
      local key = 'pr:trend:c:' .. c
      if redis.call('EXISTS', key) == 0 then redis.call('SADD', 'pr:trend:cats', c) end
      incr(key, inc, item, 1000)
    end
  end
end
-- TTLs: the keys this event wrote get theirs now (so a new key never lacks one); once an hour
-- every key of the user is refreshed, so an active user's older keys (cart, bought) live on.
if etype ~= 'refresh' then
  local refreshed = tonumber(redis.call('HGET', KEYS[6], 'x') or '0')
  if ts - refreshed > 3600000 or ts < refreshed then
    redis.call('HSET', KEYS[6], 'x', ts)
    touched = {KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
  end
end
for _, key in ipairs(touched) do redis.call('EXPIRE', key, ttl) end
if ARGV[11] == '0' then
  return reply({3})  -- a later event of this user in the same batch will score (coalesced)
end

-- Scoring, next to the data: each source is normalised by its best score so no source drowns
-- the others by scale, then weighted. See streams/recommender.py for the sources and weights.
local scores = {}
local function add(flat, weight, into)
  into = into or scores
  local top = tonumber(flat[2])
  if weight <= 0 or not top or top <= 0 then return end
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i + 1])
    if s > 0 then into[flat[i]] = (into[flat[i]] or 0) + weight * s / top end
  end
end
-- A user without consent: none of their keys is read (left over, e.g. after the policy changed).
local recent = personal and redis.call('ZREVRANGE', KEYS[2], 0, ${RECENT_FETCHED} - 1) or {}
local w = ${NEIGHBOUR_W}
for _, r in ipairs(recent) do
  add(redis.call('ZREVRANGE', 'pr:nb:' .. r, 0, ${NEIGHBOURS_FETCHED} - 1, 'WITHSCORES'), w)
  w = w * ${RECENCY_DECAY}
end
-- Offline model (`pushrec train`, streams/train.py): a nightly batch's neighbours of the same
-- latest items, under the version `pr:model` names (read once per scoring; the versioned keys
-- are complete before the pointer names them). No model loaded, or MODEL_W = 0: nothing read.
if ${MODEL_W} > 0 then
  local version = redis.call('HGET', 'pr:model', 'nb')
  if version then
    local mw = ${MODEL_W}
    for _, r in ipairs(recent) do
      add(redis.call('ZREVRANGE', 'pr:nbm:' .. version .. ':' .. r, 0, ${MODEL_FETCHED} - 1,
                     'WITHSCORES'), mw)
      mw = mw * ${RECENCY_DECAY}
    end
  end
end
local top = personal and redis.call('ZREVRANGE', KEYS[3], 0, ${CATEGORIES_FETCHED} - 1,
                                     'WITHSCORES') or {}
local total = 0
for i = 2, #top, 2 do total = total + math.max(tonumber(top[i]), 0) end
for i = 1, #top, 2 do
  if total > 0 then
    local share = math.max(tonumber(top[i + 1]), 0) / total
    add(redis.call('ZREVRANGE', 'pr:trend:c:' .. top[i], 0, ${TRENDING_FETCHED} - 1, 'WITHSCORES'),
        ${CATEGORY_W} * share)
  end
end
add(redis.call('ZREVRANGE', 'pr:trend', 0, ${TRENDING_FETCHED} - 1, 'WITHSCORES'), ${GLOBAL_W})

-- Session kNN (after V-SKNN / VSTAN): other users whose recent items overlap this user's latest
-- ones are neighbours, each shared item counting by how recent it is here (position decay) and
-- how rare it is (idf); the best neighbours' items score by their distance, in that user's
-- order, to the last item shared with this user.
local mine = personal and redis.call('ZRANGE', KEYS[2], -${SESSION_ITEMS}, -1) or {}  -- oldest 1st
local L = #mine
if ${SESSION_W} > 0 and L > 0 then
  local users = tonumber(redis.call('HGET', 'pr:meta', 'users') or '1')
  local sim, pos = {}, {}
  for p, it in ipairs(mine) do
    pos[it] = p
    local key = 'pr:is:' .. it
    local n = redis.call('ZCARD', key)
    if n > 0 then
      local w = math.exp((p - L) / ${SESSION_POSITION_DECAY}) * math.log(math.max(users / n, 1.0001))
      for _, o in ipairs(redis.call('ZREVRANGE', key, 0, ${SESSION_SAMPLE} - 1)) do
        if o ~= me_key then sim[o] = (sim[o] or 0) + w end
      end
    end
  end
  local nb = {}
  for o, v in pairs(sim) do nb[#nb + 1] = {o, v} end
  table.sort(nb, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] < b[1]
  end)
  local knn, best = {}, 0
  for i = 1, math.min(#nb, ${SESSION_NEIGHBOURS}) do
    local v = nb[i][2]
    -- Only the neighbour's latest items: far from the shared one they barely count (item
    -- decay), and reading whole lists of 100 neighbours was most of Redis's time per event.
    -- The index lists encoded ids (ARGV[14]): this is the neighbour's user_tag(...) .. 'recent'.
    local seq = redis.call('ZRANGE', 'pr:{u:' .. nb[i][1] .. '}:recent', -${SESSION_SEQ}, -1)
    local last = 0
    for q, it in ipairs(seq) do
      if pos[it] then last = q end
    end
    for q, it in ipairs(seq) do
      local s = (knn[it] or 0) + v * math.exp(-math.abs(q - last) / ${SESSION_ITEM_DECAY})
      knn[it] = s
      if s > best then best = s end
    end
  end
  if best > 0 then
    for it, s in pairs(knn) do scores[it] = (scores[it] or 0) + ${SESSION_W} * s / best end
  end
end
-- Repeat views: the item the user looks at now is the likeliest next click (a quarter of the
-- next clicks on YOOCHOOSE); with REPEAT_W > 0 it leads the list, else it is never in it.
local latest = item ~= '' and item or mine[L]
local repeat_w = ${REPEAT_W}
if repeat_w > 0 and latest then
  local top = 0
  for _, s in pairs(scores) do
    if s > top then top = s end
  end
  scores[latest] = (scores[latest] or 0) + repeat_w * math.max(top, 1)
end
local excluded = repeat_w > 0 and '' or item

-- Best first, ties by id; bought items are never candidates (nor `skip`'s). Only the best few
-- need ordering: a plain numeric sort of the eligible scores (no Lua comparator) finds the
-- cut-off, and only the entries at or above it are sorted with the tie-break. (Within each
-- source, Redis itself decides which of several members tied at its fetch limit are fetched:
-- the ones with the greater ids.)
local bought = {}
if personal and redis.call('ZCARD', KEYS[5]) > 0 then  -- most bought nothing: one cheap call
  for _, b in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do bought[b] = true end
end
local function best(sc, skip)
  local values = {}
  for id, s in pairs(sc) do
    if not skip[id] and not bought[id] then values[#values + 1] = s end
  end
  table.sort(values)
  local cut = values[math.max(#values - ${CANDIDATES} + 1, 1)] or 0
  local ranked = {}
  for id, s in pairs(sc) do
    if s >= cut and not skip[id] and not bought[id] then ranked[#ranked + 1] = {id, s} end
  end
  table.sort(ranked, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] < b[1]
  end)
  local flat = {}
  for i = 1, math.min(#ranked, ${CANDIDATES}) do
    flat[#flat + 1] = ranked[i][1]
    flat[#flat + 1] = tostring(ranked[i][2])  -- a Lua number would reach the client as an integer
  end
  return flat
end
local out = best(scores, {[excluded] = true})

-- Context feeds, for users who have them (or when asked): see the header.
local forced = {}
for f in string.gmatch(ARGV[13] or '', '[^\n]+') do forced[f] = true end
local context = {}
local function feed_state(key)
  local st = redis.call('HMGET', key, 'e', 'n', 'b')
  return st[1] or '', st[2] or '0', st[3] or ''
end
if forced['similar'] or redis.call('EXISTS', KEYS[8]) == 1 then
  -- More like the item being looked at: its co-visitation (and offline model) neighbours, then
  -- trending of its category, then global trending, so the list is never empty.
  local sim = {}
  if latest then
    add(redis.call('ZREVRANGE', 'pr:nb:' .. latest, 0, 2 * ${NEIGHBOURS_FETCHED} - 1,
                   'WITHSCORES'), 1.0, sim)
    if ${MODEL_W} > 0 then
      local version = redis.call('HGET', 'pr:model', 'nb')
      if version then
        add(redis.call('ZREVRANGE', 'pr:nbm:' .. version .. ':' .. latest, 0,
                       ${MODEL_FETCHED} - 1, 'WITHSCORES'), ${MODEL_W}, sim)
      end
    end
  end
  if cats[1] then
    add(redis.call('ZREVRANGE', 'pr:trend:c:' .. cats[1], 0, ${TRENDING_FETCHED} - 1,
                   'WITHSCORES'), 0.3, sim)
  end
  add(redis.call('ZREVRANGE', 'pr:trend', 0, ${TRENDING_FETCHED} - 1, 'WITHSCORES'), 0.05, sim)
  local e, n, b = feed_state(KEYS[8])
  context[#context + 1] = {'similar', best(sim, latest and {[latest] = true} or {}), e, n, b}
end
if forced['cart'] or redis.call('EXISTS', KEYS[9]) == 1 then
  -- Goes with the cart: items carted or bought together with its items (pr:cb), co-views as a
  -- weaker fallback; never an item already in it. An empty cart has no complements.
  local comp, skip = {}, {}
  for _, c in ipairs(personal and redis.call('SRANDMEMBER', KEYS[4], 20) or {}) do
    skip[c] = true
    add(redis.call('ZREVRANGE', 'pr:cb:' .. c, 0, ${NEIGHBOURS_FETCHED} - 1, 'WITHSCORES'), 1.0,
        comp)
    add(redis.call('ZREVRANGE', 'pr:nb:' .. c, 0, ${NEIGHBOURS_FETCHED} - 1, 'WITHSCORES'), 0.25,
        comp)
  end
  local e, n, b = feed_state(KEYS[9])
  context[#context + 1] = {'cart', best(comp, skip), e, n, b}
end
-- The stored feed is the base of the next version. The caller usually holds it already (it wrote
-- it): then only its version comes back, not the body.
local status = personal and 1 or 5
local feed = redis.call('HMGET', KEYS[7], 'e', 'n')
if feed[1] and feed[1] == ARGV[9] and feed[2] == ARGV[10] then
  return reply({status, out, feed[1], feed[2], '', 1, context})
end
return reply({status, out, feed[1] or '', feed[2] or '0', redis.call('HGET', KEYS[7], 'b') or '', 0,
              context})
