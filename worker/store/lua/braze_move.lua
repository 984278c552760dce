-- MOVE: take the oldest items out of the outbox into inflight, unless a retry wait is running.
-- KEYS[1] outbox, KEYS[2] inflight, KEYS[3] retry_at. ARGV[1] now (epoch s), ARGV[2] limit.
-- Returns the moved items, oldest first ({} while retry_at is in the future or the outbox is empty).
local wait_until = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if wait_until > tonumber(ARGV[1]) then return {} end
local out = {}
for i = 1, tonumber(ARGV[2]) do
  local v = redis.call('RPOP', KEYS[1])
  if not v then break end
  redis.call('LPUSH', KEYS[2], v)
  out[#out + 1] = v
end
return out
