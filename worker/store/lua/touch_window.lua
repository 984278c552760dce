-- TOUCH_WINDOW: remember when (page, PSID)s' windows close, only ever later.
-- KEYS[i] a window key (P:wu:{page}:{psid}).
-- ARGV[1] the keys' TTL (WINDOW_MEMORY_SECONDS), ARGV[i + 1] when the window an interaction
-- opened closes, for KEYS[i] (epoch s: its time + 24 h, or + 7 days for a Click-to-Messenger ad).
-- A key that is absent, not a number or earlier is set, with the TTL; one that is later or
-- equal is left as it is, TTL included: a webhook that arrives late or is replayed cannot move
-- a window's end back (nor can a plain message shorten an ad's longer window).
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
