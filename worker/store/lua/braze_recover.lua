-- RECOVER: everything in inflight goes back to the outbox's right end (sent next, order kept).
-- KEYS[1] inflight, KEYS[2] outbox. Returns how many moved.
local n = 0
while true do
  local v = redis.call('LPOP', KEYS[1])
  if not v then break end
  redis.call('RPUSH', KEYS[2], v)
  n = n + 1
end
return n
