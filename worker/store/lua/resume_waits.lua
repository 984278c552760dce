-- RESUME_WAITS: make due now the deliveries that waited for a page that was just resumed.
-- KEYS[1] the schedule (sched zset). ARGV[1] the delivery key prefix (P:d:), ARGV[2..] ids.
-- A delivery is made due only while it is still in the schedule and its record is there: one
-- that a worker claimed (and maybe ended) since the caller looked is left alone, so no stub
-- record without an expiry is written next to its outcome. Returns how many were made due.
local released = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  if redis.call('ZSCORE', KEYS[1], id) and redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'not_before', '0')
    redis.call('ZADD', KEYS[1], 0, id)
    released = released + 1
  end
end
return released
