-- RENEW: the heartbeat. A worker extends the leases of the deliveries it still holds.
-- KEYS[1] pending zset. ARGV[1] now, ARGV[2] lease seconds, ARGV[3] delivery key prefix (P:d:),
-- ARGV[4] the fence token of one claim, ARGV[5] the claim's entry in pending when it took a
-- batch (`t:{batch}:{token}`, claim.lua; '' for a claim of named ids, whose deliveries each have
-- their own), ARGV[6..] ids claimed under it that are still held.
-- A delivery whose outcome this claim has just written (done = the token) needs no renewal and
-- is not lost. One whose claim is another token (its lease ran out and another worker claimed
-- it) is not touched. Returns those lost ids.
local lease = tonumber(ARGV[1]) + tonumber(ARGV[2])
local unit = ARGV[5]
local lost = {}
local held_any = false
for i = 6, #ARGV do
  local key = ARGV[3] .. ARGV[i]
  local held = redis.call('HMGET', key, 'claim', 'done')
  if held[1] == ARGV[4] then
    redis.call('HSET', key, 'lease_until', lease)
    if unit == '' then redis.call('ZADD', KEYS[1], lease + 1, ARGV[i]) end
    held_any = true
  elseif held[2] ~= ARGV[4] then
    table.insert(lost, ARGV[i])
  end
end
if held_any and unit ~= '' then redis.call('ZADD', KEYS[1], lease + 1, unit) end
return lost
