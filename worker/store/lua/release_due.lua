-- RELEASE: the scheduler moves due waits back to the queue. KEYS[1] sched zset.
-- ARGV[1] now, ARGV[2] limit. Returns the released ids (removed from sched atomically; a worker
-- that dies before publishing them leaves them in ``pending``, where the sweeper finds them).
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return ids
