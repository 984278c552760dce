-- SLOW_DOWN: the usage header crossed the threshold: lower the page bucket's adaptive factor
-- (taking the recovery so far into account). KEYS[1] page bucket. ARGV[1] factor multiplier,
-- ARGV[2] minimum factor, ARGV[3] recovery per second. Returns the new factor as a string.
--!include _gcra.lua
local b = redis.call('HMGET', KEYS[1], 'f', 'ft')
local f = recovered(tonumber(b[1] or '1'), b[2], tonumber(ARGV[3]))
f = math.max(tonumber(ARGV[2]), f * tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'f', f, 'ft', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], 3600000)
return tostring(f)
