-- QUARANTINE: items that cannot be decoded leave inflight for the invalid list.
-- KEYS[1] inflight, KEYS[2] invalid. ARGV: the items. Returns how many moved.
local n = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
