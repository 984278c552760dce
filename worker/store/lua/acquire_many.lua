-- ACQUIRE_MANY: `count` consecutive slots of the same GCRA as acquire.lua in one round trip (a
-- batch's first sends to each recipient, when RECIPIENT_RATE_LIMIT is off).
-- KEYS[1] page bucket, KEYS[2] page pause hash, KEYS[3] buckets in use (zset:
-- member -> its last use, Redis seconds).
-- ARGV[1] rate, ARGV[2] burst, ARGV[3] member for the buckets in use, ARGV[4] factor recovery per
-- second, ARGV[5] count.
-- Returns {now µs, delay µs for each of count}; just {now} when the page has a pause hash (each
-- send then asks acquire.lua, which runs the pause and probe logic).
--!include _gcra.lua
-- a pause hash (paused, or its probe pending or due): every send asks on its own (ACQUIRE)
if redis.call('EXISTS', KEYS[2]) == 1 then return {now} end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local recover = tonumber(ARGV[4])
local count = tonumber(ARGV[5])
local interval, tau, tat = bucket(KEYS[1], rate, burst, recover)
local out = {now}
for i = 1, count do
  out[i + 1] = math.floor(math.max(tat - tau, now) - now)
  tat = tat + interval
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
redis.call('PEXPIRE', KEYS[1], 3600000 + math.floor((tat - now) / 1000))
redis.call('ZADD', KEYS[3], math.floor(now / 1000000), ARGV[3])
return out
