-- Item-side aggregates of one item, one slot ({i:<item>}): co-visitation neighbours, complements
-- and the session-kNN index, the increments of a whole lane merged (streams/aggregates.py).
-- KEYS: 1 neighbours zset, 2 complements zset, 3 session index zset
-- ARGV[1]: msgpack map: nb and cb (flat member, increment, …), is (flat encoded user id, ts, …),
--   nb_cap (neighbours and complements kept), is_cap (users kept in the index)
-- Reply: msgpack map: nb and cb (flat member, new score as text, …), is_card (the index's size)
-- A sorted set only grows when a member is new, so it is trimmed to its cap only then: ZINCRBY
-- returns the new score, which equals the increment exactly for a new member.
local req = cmsgpack.unpack(ARGV[1])
local out = {}
local function incr(key, flat, cap)
  local scores, grew = {}, false
  for i = 1, #flat, 2 do
    local s = redis.call('ZINCRBY', key, flat[i + 1], flat[i])
    if tonumber(s) == flat[i + 1] then grew = true end
    scores[#scores + 1] = flat[i]
    scores[#scores + 1] = s
  end
  if grew then redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1) end
  return scores
end
if req['nb'] and #req['nb'] > 0 then out['nb'] = incr(KEYS[1], req['nb'], req['nb_cap']) end
if req['cb'] and #req['cb'] > 0 then out['cb'] = incr(KEYS[2], req['cb'], req['nb_cap']) end
if req['is'] and #req['is'] > 0 then
  local flat, grew = req['is'], false
  for i = 1, #flat, 2 do
    if redis.call('ZADD', KEYS[3], flat[i + 1], flat[i]) == 1 then grew = true end
  end
  if grew then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -req['is_cap'] - 1) end
  out['is_card'] = redis.call('ZCARD', KEYS[3])
end
return cmsgpack.pack(out)
