-- RELEASE_DUE: the scheduler moves due waits back to the queue. KEYS[1] sched zset, KEYS[2] the
-- scheduler's tick key. ARGV[1] now, ARGV[2] limit.
-- It first writes the tick key (now, 60 s): a Redis that refuses writes (maxmemory, a read-only
-- replica after a failover) fails this call on every tick, so the scheduler knows and holds its
-- sweeper back, even when nothing is due. Returns the released ids (removed from sched
-- atomically; a worker that dies before publishing them leaves them in `pending`, where the
-- sweeper finds them) and when the next wait left in sched falls due ('' for none), from which
-- an idle scheduler knows how long it may sleep.
redis.call('SET', KEYS[2], ARGV[1], 'PX', 60000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {ids, first[2] or ''}
