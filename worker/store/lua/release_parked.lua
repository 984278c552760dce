-- RELEASE_PARKED: the user wrote; their parked deliveries go back to the queue (PARKED -> QUEUED).
-- KEYS[1] the recipient's park zset, KEYS[2] parked zset, KEYS[3] pending zset, KEYS[4] P:open
-- (a released delivery is counted again in the open deliveries' ages: _ages.lua).
-- ARGV[1] now, ARGV[2] sweep_after, ARGV[3] delivery key prefix (P:d:).
-- Returns the ids released, oldest first.
--!include _ages.lua
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local st = redis.call('HMGET', key, 'status', 'created_at')
  if st[1] == S.PARKED then
    ages_join(KEYS[4], id, st[2], false)
    redis.call('HSET', key, 'status', S.QUEUED, 'not_before', 0, 'lease_until', 0, 'updated_at', ARGV[1])
    redis.call('HDEL', key, 'parked_at')
    redis.call('ZADD', KEYS[3], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    table.insert(out, id)
  end
  redis.call('ZREM', KEYS[2], id)
end
redis.call('DEL', KEYS[1])
ages_flush()
return out
