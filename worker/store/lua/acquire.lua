-- ACQUIRE: one send's pacing slot (GCRA on Redis's clock; worker/ratelimit.py).
-- KEYS[1] page bucket, KEYS[2] recipient bucket or '', KEYS[3] page pause hash, KEYS[4] buckets in use
-- (zset: member -> its last use, Redis seconds).
-- ARGV[1] rate per second, ARGV[2] burst (slots), ARGV[3] probe window µs, ARGV[4] recipient rate
-- (0 = off), ARGV[5] member for the buckets in use, ARGV[6] factor recovery per second.
-- Returns {granted (1/0), delay µs, probe (1/0), now µs (Redis TIME), paused (1/0)}: granted -> a
-- slot is reserved `delay` after `now` (probe: the first send after a pause; the engine lifts
-- the pause when it is answered); not granted -> the page is paused (paused 1: until its pause
-- ends, a wait for the page that resuming it cuts short), or a probe's answer is awaited, or the
-- recipient's pace is not due, for `delay` (nothing reserved: the delivery asks again then).
--!include _gcra.lua
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local rrate = tonumber(ARGV[4])
local recover = tonumber(ARGV[6])
local is_probe = 0
local pz = redis.call('HMGET', KEYS[3], 'until', 'probe')
if pz[1] then
  local until_us = tonumber(pz[1]) * 1000000
  if until_us > now then return {0, math.floor(until_us - now), 0, now, 1} end
  -- the pause is over: one probe goes first; the others wait for its answer (or its expiry)
  local probe_us = tonumber(pz[2] or '0') * 1000000
  if probe_us > now then return {0, math.floor(probe_us - now), 0, now, 0} end
  redis.call('HSET', KEYS[3], 'probe', string.format('%.3f', (now + tonumber(ARGV[3])) / 1000000))
  is_probe = 1
end
local interval, tau, tat = bucket(KEYS[1], rate, burst, recover)
local slot = math.max(tat - tau, now)
local rtat = nil
if rrate > 0 and KEYS[2] ~= '' then
  rtat = math.max(tonumber(redis.call('HGET', KEYS[2], 'tat') or now), now)
  -- the recipient is not due before the page slot: reserve nothing, come back when it is
  if rtat > slot then return {0, math.floor(rtat - now), 0, now, 0} end
end
-- integers as %.0f: Lua would print 16-digit µs timestamps with 14 significant digits
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat + interval))
redis.call('PEXPIRE', KEYS[1], 3600000 + math.floor((tat - now) / 1000))
if rtat then
  redis.call('HSET', KEYS[2], 'tat', string.format('%.0f', slot + 1000000 / rrate))
  redis.call('PEXPIRE', KEYS[2], 600000)
end
redis.call('ZADD', KEYS[4], math.floor(now / 1000000), ARGV[5])
return {1, math.floor(slot - now), is_probe, now, 0}
