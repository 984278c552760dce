-- RELEASE_PARKED: the user wrote; their parked deliveries go back to the queue (PARKED -> QUEUED).
-- KEYS[1] the recipient's park zset, KEYS[2] parked zset, KEYS[3] pending zset.
-- ARGV[1] now, ARGV[2] sweep_after, ARGV[3] delivery key prefix (P:d:).
-- Returns the ids released, oldest first.
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'status') == S.PARKED then
    redis.call('HSET', key, 'status', S.QUEUED, 'not_before', 0, 'lease_until', 0, 'updated_at', ARGV[1])
    redis.call('HDEL', key, 'parked_at')
    redis.call('ZADD', KEYS[3], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    table.insert(out, id)
  end
  redis.call('ZREM', KEYS[2], id)
end
redis.call('DEL', KEYS[1])
return out
