-- ACK: Braze answered for good (accepted, or refused for good): forget the items.
-- KEYS[1] inflight, KEYS[2] failures. ARGV: the items. Returns how many were still in inflight.
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
redis.call('DEL', KEYS[2])
return n
