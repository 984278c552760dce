-- ACQUIRE_MANY: consecutive slots of the same GCRA as acquire.lua, for each (page, class) group of
-- a batch in one round trip (a batch's first sends to each recipient, when RECIPIENT_RATE_LIMIT
-- is off): a batch spread over many pages costs one call, not one per page.
-- KEYS[1] buckets in use (zset: member -> its last use, Redis seconds).
-- ARGV[1] factor recovery per second, then per group: its page bucket, its page pause hash, rate,
-- burst, member for the buckets in use, count.
-- Returns {now µs, then per group: n and n delays µs}; n = 0 when the page has a pause hash (each
-- send then asks acquire.lua, which runs the pause and probe logic).
--!include _gcra.lua
local recover = tonumber(ARGV[1])
local out = {now}
local used = {}
local i = 2
while i <= #ARGV do
  local key, pause, member, count = ARGV[i], ARGV[i + 1], ARGV[i + 4], tonumber(ARGV[i + 5])
  if redis.call('EXISTS', pause) == 1 then
    out[#out + 1] = 0
  else
    local interval, tau, tat = bucket(key, tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), recover)
    out[#out + 1] = count
    for _ = 1, count do
      out[#out + 1] = math.floor(math.max(tat - tau, now) - now)
      tat = tat + interval
    end
    redis.call('HSET', key, 'tat', string.format('%.0f', tat))
    redis.call('PEXPIRE', key, 3600000 + math.floor((tat - now) / 1000))
    used[#used + 1] = math.floor(now / 1000000)
    used[#used + 1] = member
  end
  i = i + 6
end
if #used > 0 then redis.call('ZADD', KEYS[1], unpack(used)) end
return out
