-- The user lane: apply one event to one user's keys and return what the worker needs to update
-- the item-side aggregates and to score (streams/profile.py, streams/scoring.py). Atomic: a
-- duplicate event id changes nothing. Slot-local: KEYS are the user's own keys only, and its
-- cost does not depend on how many other visitors share an item (no item-side key is read).
--
-- Profile constants (the upper-case placeholders) are filled in once from typed numeric settings
-- when the script is registered (streams/profile.py, ProfileTuning).
--
-- KEYS: 1 dedup zset, 2 recent zset, 3 affinity zset, 4 cart set, 5 bought zset, 6 profile hash,
--       7 consent hash, 8 home feed hash, 9 similar feed hash, 10 cart feed hash;
--       consent events only: 11 offers feed hash, 12.. the user's other keys a withdrawal deletes
-- ARGV[1]: one msgpack map (streams/profile.py UserLaneRequest): id, type, item ('' = none),
--   cats (list), ts (ms), w_aff, w_cov, score (bool: false when a later event of the batch
--   will score), user, e and n (the home feed version the caller holds, '' / 0: none), context
--   (context feeds to report even when the user has none stored), recent_n and cats_n (how many
--   recent items and top categories scoring reads), seq_n (0: none; else how many of the user's
--   latest items to return with their times, for the worker's item cache), and for consent
--   events decision
--   ('granted' / 'denied') and source ('event' / 'api').
-- Reply: one msgpack map (UserLaneReply): outcome ('duplicate', 'applied', 'coalesced', 'noop',
--   'no_consent'), personal, and when relevant: prev (the user's latest distinct items before
--   this event, newest first: co-visitation), new_user (the first item of this user's recent
--   list: the users count), partners (cart sample and items bought within the hour:
--   complements); when scored: recent (newest first), seq (when seq_n > 0: flat item, time of
--   the latest max(seq_n, recent_n) items, oldest first, as ZRANGE … WITHSCORES), cats (flat name, score of the top
--   categories), bought, cart (a sample of 20), feeds (name -> {e, n, b, same}: the home feed,
--   and each context feed the user has or `context` names); consent: marker (a withdrawal's
--   erasure is pending), change (what recording a decision did), at (the record's time),
--   unindex (feed name -> stored body: the lists the worker must take out of the shown index).
local req = cmsgpack.unpack(ARGV[1])
local etype, item, ts = req['type'], req['item'] or '', tonumber(req['ts'])
local me = req['user']
local ttl = ${TTL_S}
-- How often (at most) every key's TTL is refreshed: hourly, or at half the TTL if that is less.
local refresh_ms = math.min(3600000, ttl * 500)
local out = {}

local consent = redis.call('HMGET', KEYS[7], 'state', 'at', 'erase')
local change  -- what a consent event did to the record
if etype == 'consent' then
  -- A grant older than the recorded decision changes nothing (a replayed or late grant cannot
  -- undo a newer denial); a denial always takes effect, and the record's time never goes back
  -- (so no older grant can follow it): clients' clocks only ever err on the private side. A
  -- future stamp counts as now. Consent events are not deduplicated: equal decisions are
  -- idempotent, and a denied user must have no dedup window.
  local decision = req['decision']
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
    redis.call('HSET', KEYS[7], 'state', decision, 'at', consent[2], 'source', req['source'])
    if decision == 'denied' then
      -- A withdrawal: the profile goes now (so a grant that follows starts empty), the rest of
      -- the user's data at the processor's erasure, which this marker asks for.
      -- Stored lists leave the index naming the user (the shown index, sessions/feeds.py): the
      -- worker removes the entries of these bodies (item-side keys are not this script's); a
      -- later indexed write confirms every item again. A feed marked g left entries of earlier
      -- lists behind (stale, which no body names): only the erasure's scan finds those, so it
      -- makes the denial a withdrawal even for a user with no other personal data.
      local unindex, left = {}, false
      for _, pair in ipairs({{'home', KEYS[8]}, {'similar', KEYS[9]}, {'cart', KEYS[10]},
                             {'offers', KEYS[11]}}) do
        local f = redis.call('HMGET', pair[2], 'b', 'g')
        if f[1] and f[1] ~= '' then
          unindex[pair[1]] = f[1]
          redis.call('HDEL', pair[2], 'x')
        end
        if f[2] then left = true end
      end
      local data = {KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
      for i = 12, #KEYS do data[#data + 1] = KEYS[i] end
      local held = redis.call('EXISTS', unpack(data)) > 0
      if held or left then
        if held then redis.call('DEL', unpack(data)) end
        consent[3] = t[1] .. '.' .. t[2]
        redis.call('HSET', KEYS[7], 'erase', consent[3])
        change = 'withdrawn'
      end
      out['unindex'] = unindex
    end
  end
  etype = 'refresh'  -- otherwise like a refresh: scored when asked, nothing else stored
end
-- Anonymous visitors' records live as long as their profile would (streams/consent.py): their
-- TTL is set when a decision is recorded, and refreshed with the profile's keys (below).
local anon_record = consent[1] and string.sub(me, 1, 5) == 'anon:'
if anon_record and change and change ~= 'unchanged' and change ~= 'stale' then
  redis.call('EXPIRE', KEYS[7], ttl)
end
-- Redis's clock (ms), read once when needed: the decay clock's bound and the TTL refresh.
local now_ms
local function now()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end
local personal = consent[1] == 'granted' or (not consent[1] and ${CONSENT_REQUIRED} == 0)
out['personal'] = personal
local function reply(outcome)
  out['outcome'] = outcome
  if consent[3] then out['marker'] = consent[3] end
  if change then
    out['change'] = change
    out['at'] = consent[2] or ''
  end
  return cmsgpack.pack(out)
end
if not personal then
  -- Nothing of this event is stored, not even its id; scored as a visitor with no profile.
  if etype == 'impression' or not req['score'] then
    return reply('no_consent')
  end
  etype, item = 'refresh', ''
end

if etype ~= 'refresh' then
  -- One call: NX adds the id only when it is not there, and says which (a duplicate keeps its
  -- first time: it changes nothing).
  if redis.call('ZADD', KEYS[1], 'NX', ts, req['id']) == 0 then
    return reply('duplicate')
  end
  -- Trims cost a call each; an id older than the window does no harm for a while, so they run
  -- on one new id in 16 of this user: when the set's size (ZCARD, O(1)) is a multiple of 16.
  -- The size grows by one per new id, so whatever the timestamps' granularity (whole seconds
  -- made `ts % 16` true for half the events, odd ms timestamps never) the set holds at most
  -- DEDUP_MAX + 15 ids, and an id past the window goes within 16 new ids of its user (at the
  -- cap, trims come every 16 - DEDUP_MAX % 16 new ids: 16 for the default 2,000).
  if redis.call('ZCARD', KEYS[1]) % 16 == 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ts - ${DEDUP_WINDOW_MS})
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -${DEDUP_MAX} - 1)
  end
  -- No EXPIRE here: see the TTL refresh below.
end
-- The profile hash's a0 (affinity origin) and x (when every key's TTL was last refreshed).
local marks = {}
if etype ~= 'refresh' then marks = redis.call('HMGET', KEYS[6], 'a0', 'x') end
local function refresh_due()
  local refreshed = tonumber(marks[2] or '')
  return not refreshed or now() - refreshed > refresh_ms or now() < refreshed
end
if etype == 'impression' then
  -- The dedup key alone was written: it needs a TTL unless the refresh (below) gave it one.
  if refresh_due() then redis.call('EXPIRE', KEYS[1], ttl) end
  return reply('noop')
end

local cats = {}
if personal then cats = req['cats'] or {} end

-- Decay by time-scaled increments: an increment at time t weighs 2^((t - t0)/half-life), so older
-- increments shrink relative to newer ones without rewriting them. The decay clock is the event's
-- time but never past Redis's own: one event stamped far ahead (a producer's clock, a replay of
-- bad data) would otherwise move the origin there and rescale every score to zero; at most it
-- moves it to now. Replays of past events keep their own time.
local touched = {}  -- per-user keys this event created: they get their TTL now
local w_aff = tonumber(req['w_aff'])
if w_aff ~= 0 and #cats > 0 then
  local hl = ${AFFINITY_HALFLIFE_MS}
  local dts = ts
  if dts > now() then dts = now() end
  -- The origin `a0` of this user's affinity; past 200 half-lives the scores would head for
  -- overflow: they are rescaled once and the origin moves to now. No origin: no affinity key
  -- either (they are written and expire together): this event creates it.
  local t0 = tonumber(marks[1] or '')
  if not t0 then
    touched[#touched + 1] = KEYS[3]
    touched[#touched + 1] = KEYS[6]
  end
  if not t0 or (dts - t0) / hl > 200 then
    if t0 then
      local factor = math.pow(2, -(dts - t0) / hl)
      local flat = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
      for i = 1, #flat, 2 do
        redis.call('ZADD', KEYS[3], tonumber(flat[i + 1]) * factor, flat[i])
      end
    end
    redis.call('HSET', KEYS[6], 'a0', dts)
    t0 = dts
  end
  local inc = w_aff * math.pow(2, (dts - t0) / hl)
  for _, c in ipairs(cats) do redis.call('ZINCRBY', KEYS[3], inc, c) end
end

if item ~= '' then
  if tonumber(req['w_cov']) > 0 then
    -- Co-visitation partners (the worker writes the pairs): the latest distinct items.
    out['prev'] = redis.call('ZREVRANGE', KEYS[2], 0, ${COVISIT_WINDOW} - 1)
    -- No previous item: no recent list (a zset is never empty). Users seen: the session idf's N.
    out['new_user'] = #out['prev'] == 0
    if redis.call('ZADD', KEYS[2], ts, item) == 1 and not out['new_user'] then
      redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -${RECENT_MAX} - 1)
    end
    if out['new_user'] then touched[#touched + 1] = KEYS[2] end
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
    out['partners'] = partners
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
end
-- TTLs: every key of the user is refreshed together at most once per refresh_ms (Redis's clock,
-- recorded in x of the profile hash), and a key this event created gets its TTL now (the cart
-- and bought keys on each write: rare events). So while x is within refresh_ms of now, every key
-- that existed at the refresh lives at least TTL - refresh_ms more: none has expired, and each key
-- holds a TTL. An active user's keys live at least TTL - refresh_ms past their last event. The
-- dedup key needs no TTL of its own: written by every event, it existed at the refresh (an
-- event whose user has no x refreshes; an impression, which stops earlier, gives it a TTL
-- itself then), and its trims never empty it.
if etype ~= 'refresh' then
  if refresh_due() then
    redis.call('HSET', KEYS[6], 'x', now())
    touched = {KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
    if anon_record then touched[#touched + 1] = KEYS[7] end
  end
end
for _, key in ipairs(touched) do redis.call('EXPIRE', key, ttl) end
if not req['score'] then
  return reply('coalesced')  -- a later event of this user in the same batch will score
end

-- What scoring needs of this user (a user without consent: none of their keys is read).
if personal then
  local rn, sn = tonumber(req['recent_n']), tonumber(req['seq_n'] or 0)
  if sn > 0 then
    -- The user's latest items with their times, oldest first: the worker's item cache keeps
    -- them (other users' session kNN reads this list), and `recent` is their newest end.
    local seq = redis.call('ZRANGE', KEYS[2], -math.max(sn, rn), -1, 'WITHSCORES')
    local recent = {}
    for i = #seq - 1, 1, -2 do
      if #recent >= rn then break end
      recent[#recent + 1] = seq[i]
    end
    out['seq'], out['recent'] = seq, recent
  else
    out['recent'] = redis.call('ZREVRANGE', KEYS[2], 0, rn - 1)
  end
  out['cats'] = redis.call('ZREVRANGE', KEYS[3], 0, tonumber(req['cats_n']) - 1, 'WITHSCORES')
  local bought = redis.call('ZRANGE', KEYS[5], 0, -1)  -- most bought nothing: an empty list
  if #bought > 0 then out['bought'] = bought end
end
local forced = {}
for _, f in ipairs(req['context'] or {}) do forced[f] = true end
local feeds = {}
-- The stored feed is the base of the next version. The caller usually holds it already (it wrote
-- it): then only its version comes back, not the body.
local home = redis.call('HMGET', KEYS[8], 'e', 'n')
if home[1] and home[1] == req['e'] and tonumber(home[2]) == tonumber(req['n']) then
  feeds['home'] = {e = home[1], n = home[2], same = true}
else
  feeds['home'] = {e = home[1] or '', n = home[2] or '0', b = redis.call('HGET', KEYS[8], 'b') or ''}
end
-- Context feeds, for users who have them (or when asked): nobody else pays for them (one EXISTS
-- of both keys for the many who have neither).
local any_context = next(forced) ~= nil or redis.call('EXISTS', KEYS[9], KEYS[10]) > 0
for _, pair in ipairs({{'similar', KEYS[9]}, {'cart', KEYS[10]}}) do
  if any_context and (forced[pair[1]] or redis.call('EXISTS', pair[2]) == 1) then
    local st = redis.call('HMGET', pair[2], 'e', 'n', 'b')
    feeds[pair[1]] = {e = st[1] or '', n = st[2] or '0', b = st[3] or ''}
    if pair[1] == 'cart' and personal then
      out['cart'] = redis.call('SRANDMEMBER', KEYS[4], 20)
    end
  end
end
out['feeds'] = feeds
return reply(personal and 'applied' or 'no_consent')
