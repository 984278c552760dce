-- TOUCH_WINDOW: remember (page, PSID)s' last interactions, only ever forward in time.
-- KEYS[i] a window key (P:win:{page}:{psid}).
-- ARGV[1] the keys' TTL (WINDOW_MEMORY_SECONDS), ARGV[i + 1] the interaction time for KEYS[i]
-- (epoch s). A key that is absent, not a number ("0", learned closed, is a number: 0) or older
-- is set, with the TTL; one that is newer or equal is left as it is, TTL included: a webhook
-- that arrives late or is replayed cannot move a last interaction back.
-- Returns one flag per key: 1 set (moved forward), 0 left.
local ttl = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local at = tonumber(ARGV[i + 1])
  local current = tonumber(redis.call('GET', key) or '')
  if at ~= nil and (current == nil or current < at) then
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
