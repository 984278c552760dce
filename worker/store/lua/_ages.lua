-- The open deliveries' ages (included by _campaign.lua, so by every script that accepts, ends or
-- parks a delivery, and by release_parked.lua; worker/store/ages.py has the layout and the reads).
-- Beside the key O = P:open: O:n is a hash, second -> how many deliveries accepted in that second
-- are open and not parked (a parked one waits for its user on purpose: not a backlog), and O:s
-- a zset of those seconds (score = the second), O:c their sum (a string: the status's count of
-- open deliveries, with parked's size). The status's backlog age is O:s's first member. A script
-- gathers its changes per second with
-- ages_join / ages_leave and writes them in ages_flush(): one HINCRBY per second it touched (a
-- second that gets its first delivery joins O:s, one that empties leaves both) and one INCRBY of
-- O:c, not a sorted-set entry per delivery (146 bytes each, and a ZADD and a ZREM).
-- O itself is the layout before: a zset of every open delivery. Its members are not counted in
-- O:n; while it exists (until its last member ends, at most MESSAGE_TTL after the upgrade) a
-- delivery that stops being counted, or is counted anew, leaves it first, and is decremented
-- only when it was not one of them.
local AGES = {open = nil, legacy = nil, delta = {}}

-- The second is the time's integer digits, kept as text: a time is epoch seconds as Python's
-- repr writes them ("1796631411.9826589"), so its digits before the point are floor(t); no
-- strtod per delivery, and no number formatted back for HINCRBY and ZADD (about 2k and 3k
-- instructions each).
local function ages_add(open, created_at, n)
  if type(created_at) == 'number' then created_at = string.format('%d', math.floor(created_at)) end
  local second = created_at and string.match(created_at, '^%d+')
  if not second then return end  -- a record without its time (never written so): nothing to count
  AGES.open = open
  AGES.delta[second] = (AGES.delta[second] or 0) + n
end

-- Whether `id` is a member of O (the layout before); it leaves O. One EXISTS per script call,
-- then a ZREM per delivery only while O exists.
local function ages_legacy(open, id)
  if AGES.legacy == nil then AGES.legacy = redis.call('EXISTS', open) == 1 end
  return AGES.legacy and redis.call('ZREM', open, id) == 1
end

-- A delivery is counted from now on: accepted, released from its park, replayed.
local function ages_join(open, id, created_at, fresh)
  if not fresh then ages_legacy(open, id) end
  ages_add(open, created_at, 1)
end

-- A delivery stops being counted: it ended, or it was parked. One parked already (`parked_at`
-- set) was not counted: it only leaves O.
local function ages_leave(open, id, created_at, parked_at)
  if ages_legacy(open, id) or parked_at then return end
  ages_add(open, created_at, -1)
end

local function ages_flush()
  if not AGES.open then return end
  local counts, seconds, total = AGES.open .. ':n', AGES.open .. ':s', AGES.open .. ':c'
  if redis.call('EXISTS', total) == 0 then  -- the first call of this layout: O:n's sum so far
    local sum = 0
    for _, v in ipairs(redis.call('HVALS', counts)) do sum = sum + tonumber(v) end
    redis.call('SET', total, sum)
  end
  local all = 0
  for second, n in pairs(AGES.delta) do
    if n ~= 0 then
      local v = redis.call('HINCRBY', counts, second, n)
      all = all + n - math.min(v, 0)  -- what a pruned second lost was taken off O:c then
      if v <= 0 then  -- emptied (below zero: a second the housekeeping pruned, ages.py)
        redis.call('HDEL', counts, second)
        redis.call('ZREM', seconds, second)
      elseif v == n then  -- its first delivery
        redis.call('ZADD', seconds, second, second)
      end
    end
  end
  if all ~= 0 then redis.call('INCRBY', total, all) end
  AGES.delta = {}
end
