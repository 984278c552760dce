-- SWEEP: re-enqueue open deliveries that made no progress in time (lost Celery messages, a
-- holder that stopped renewing its lease). KEYS[1] pending, KEYS[2] sched, KEYS[3] open,
-- KEYS[4] the Celery queue (optional).
-- ARGV[1] now, ARGV[2] limit, ARGV[3] sweep_after, ARGV[4] delivery key prefix (P:d:).
-- A delivery still held (IN_FLIGHT with a lease that was renewed) only gets its deadline moved
-- to the lease's end; one waiting in sched gets it moved to its due time + sweep_after; final or
-- vanished records leave pending (and a vanished one leaves open). A QUEUED delivery is
-- re-enqueued only when the queue is empty: while messages wait in it, an old one is merely
-- waiting in a backlog (re-enqueueing it would add a second message for it and amplify the
-- backlog); a lost message's ids go once the queue has drained. Returns the ids to enqueue.
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
local backlog = KEYS[4] ~= nil and redis.call('LLEN', KEYS[4]) > 0
for _, id in ipairs(ids) do
  local st = redis.call('HMGET', ARGV[4] .. id, 'status', 'lease_until')
  local lease = tonumber(st[2] or '0') or 0
  if st[1] and OPEN[st[1]] then
    local due = redis.call('ZSCORE', KEYS[2], id)
    if st[1] == S.IN_FLIGHT and lease > now then
      redis.call('ZADD', KEYS[1], lease + 1, id)
    elseif due then
      redis.call('ZADD', KEYS[1], tonumber(due) + tonumber(ARGV[3]), id)
    elseif backlog and st[1] == S.QUEUED then
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), id)
    else
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), id)
      table.insert(out, id)
    end
  else
    redis.call('ZREM', KEYS[1], id)
    if not st[1] then redis.call('ZREM', KEYS[3], id) end
  end
end
return out
