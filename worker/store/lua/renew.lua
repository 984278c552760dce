-- RENEW: the heartbeat. A worker extends the leases of the deliveries it still holds.
-- KEYS[1] pending zset. ARGV[1] now, ARGV[2] lease seconds, ARGV[3] delivery key prefix (P:d:),
-- ARGV[4] the fence token of one claim, ARGV[5..] ids claimed under it that are still held.
-- A delivery whose claim is no longer this token (its lease ended and another worker claimed
-- it, or it was released) is not touched. Returns those lost ids.
local lease = tonumber(ARGV[1]) + tonumber(ARGV[2])
local lost = {}
for i = 5, #ARGV do
  local key = ARGV[3] .. ARGV[i]
  if redis.call('HGET', key, 'claim') == ARGV[4] then
    redis.call('HSET', key, 'lease_until', lease)
    redis.call('ZADD', KEYS[1], lease + 1, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
