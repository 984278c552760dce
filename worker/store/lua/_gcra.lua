-- Shared by acquire, acquire_many and slow_down: Redis's clock (µs) and a page bucket as it stands now.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- the adaptive factor, recovered linearly since it was lowered (at ft)
local function recovered(f, ft, recover)
  if f < 1 then f = math.min(1, f + (now - tonumber(ft or now)) / 1000000 * recover) end
  return f
end
-- a page bucket's slot interval and burst tolerance (µs, at the recovered factor) and its tat
local function bucket(key, rate, burst, recover)
  local b = redis.call('HMGET', key, 'tat', 'f', 'ft')
  local interval = 1000000 / (rate * recovered(tonumber(b[2] or '1'), b[3], recover))
  return interval, (burst - 1) * interval, math.max(tonumber(b[1] or now), now)
end
