-- AGES_PRUNE: the housekeeping drops the seconds of open deliveries before a horizon
-- (worker/store/ages.py). KEYS[1] P:open:n, KEYS[2] P:open:s, KEYS[3] P:open:c.
-- ARGV[1] the horizon (epoch s), ARGV[2] the most seconds dropped per call.
-- Their counts leave O:c with them (in one call, so no script's change falls in between).
-- Returns how many seconds went.
local seconds = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #seconds == 0 then return 0 end
local gone = 0
for _, v in ipairs(redis.call('HMGET', KEYS[1], unpack(seconds))) do gone = gone + (tonumber(v) or 0) end
redis.call('HDEL', KEYS[1], unpack(seconds))
redis.call('ZREM', KEYS[2], unpack(seconds))
if gone ~= 0 and redis.call('EXISTS', KEYS[3]) == 1 then redis.call('DECRBY', KEYS[3], gone) end
return #seconds
