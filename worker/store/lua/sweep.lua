-- SWEEP: re-enqueue open deliveries that made no progress in time (lost Celery messages, a
-- holder that stopped renewing its lease). KEYS[1] pending, KEYS[2] sched, KEYS[3] open,
-- KEYS[4] the Celery queue (optional).
-- ARGV[1] now, ARGV[2] limit (ids looked at per call: an entry for a batch counts its ids),
-- ARGV[3] sweep_after, ARGV[4] delivery key prefix (P:d:), ARGV[5] batch key prefix (P:batch:).
-- pending holds three kinds of entries (a delivery id has no ':'):
--   b:{batch}          a batch waiting in the queue (accept.lua). Past its deadline while messages
--                      still wait in the queue, it is merely waiting in a backlog: its deadline
--                      moves on. Once the queue has drained, its message was lost: its list is
--                      taken (LRANGE + DEL, so a late copy of the message finds nothing) and its
--                      ids are re-enqueued, each with an entry of its own. With no list left (a
--                      claim or a purge took it) the entry just goes.
--   t:{batch}:{token}  the deliveries one claim took from a batch (claim.lua; renewed by the
--                      heartbeat, removed by the worker when it is done with them). Past its
--                      deadline, each of its ids still open under that claim is looked at: one
--                      whose lease was renewed keeps the entry until the lease ends; one whose
--                      lease ended (its holder died or was cut off) is re-enqueued with an entry
--                      of its own. Ids no longer under that claim have their own indexes (an
--                      outcome, sched, a park, another claim). When none is held, the entry and
--                      the taken list go.
--   {id}               one delivery (named ids, retries, parks, replays, the two above when
--                      re-enqueued). A delivery still held (IN_FLIGHT with a lease that was
--                      renewed) only gets its deadline moved to the lease's end; one waiting in
--                      sched gets it moved to its due time + sweep_after; final or vanished records
--                      leave pending (and a vanished one leaves open). A QUEUED delivery is
--                      re-enqueued only when the queue is empty (as a batch above).
-- Returns the ids to enqueue.
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local after = tonumber(ARGV[3])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local out = {}
local backlog = KEYS[4] ~= nil and redis.call('LLEN', KEYS[4]) > 0
local budget = limit

local function requeue(id)
  redis.call('ZADD', KEYS[1], now + after, id)
  table.insert(out, id)
end

local function sweep_batch(member, bid)
  local key = ARGV[5] .. bid
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', KEYS[1], member)
  elseif backlog then
    redis.call('ZADD', KEYS[1], now + after, member)
  else
    local ids = redis.call('LRANGE', key, 0, -1)
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], member)
    for _, id in ipairs(ids) do requeue(id) end
    budget = budget - #ids
  end
end

local function sweep_claim(member, bid, token)
  local key = ARGV[5] .. bid .. ':t:' .. token
  local ids = redis.call('LRANGE', key, 0, -1)
  local keep = nil
  for _, id in ipairs(ids) do
    local st = redis.call('HMGET', ARGV[4] .. id, 'status', 'lease_until', 'claim')
    if st[1] and OPEN[st[1]] and st[3] == token then
      local lease = tonumber(st[2] or '0') or 0
      if lease > now then
        keep = math.max(keep or 0, lease)
      else
        requeue(id)
      end
    end
  end
  budget = budget - #ids
  if keep then
    redis.call('ZADD', KEYS[1], keep + 1, member)
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('DEL', key)
  end
end

local function sweep_one(id)
  local st = redis.call('HMGET', ARGV[4] .. id, 'status', 'lease_until')
  local lease = tonumber(st[2] or '0') or 0
  if st[1] and OPEN[st[1]] then
    local due = redis.call('ZSCORE', KEYS[2], id)
    if st[1] == S.IN_FLIGHT and lease > now then
      redis.call('ZADD', KEYS[1], lease + 1, id)
    elseif due then
      redis.call('ZADD', KEYS[1], tonumber(due) + after, id)
    elseif backlog and st[1] == S.QUEUED then
      redis.call('ZADD', KEYS[1], now + after, id)
    else
      requeue(id)
    end
  else
    redis.call('ZREM', KEYS[1], id)
    if not st[1] then redis.call('ZREM', KEYS[3], id) end
  end
  budget = budget - 1
end

for _, member in ipairs(members) do
  if budget <= 0 then break end  -- the rest are still due: the next call takes them
  local kind, rest = string.match(member, '^([bt]):(.*)$')
  if kind == 'b' then
    sweep_batch(member, rest)
  elseif kind == 't' then
    local bid, token = string.match(rest, '^([^:]*):(.*)$')
    if bid then sweep_claim(member, bid, token) else redis.call('ZREM', KEYS[1], member) end
  else
    sweep_one(member)
  end
end
return out
