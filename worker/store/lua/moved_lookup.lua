-- MOVED_LOOKUP: whether this shard remembers a request's Idempotency-Key; asked by the intake
-- for a page that `shards move` took from this shard to another (P:moved there;
-- worker/store/pagemove.py), so that a Braze retry of a request this shard accepted is answered
-- as a repeat on the new one. accept.lua's lookups without its writes.
-- ARGV[1] IDEMPOTENCY_TTL, ARGV[2] the idempotency bucket prefix (P:i:), ARGV[3] the scoped key's
-- digest (IDEM_SUFFIX hex characters, then the field as IDEM_FIELD / 2 raw bytes), ARGV[4] the
-- key as the previous version stored it (P:idem:..., '' for none).
-- Returns the delivery id as remembered (raw bytes, or hex), or false.
--!include _windows.lua
local ttl = tonumber(ARGV[1])
local clock = tonumber(redis.call('TIME')[1])
local meta = ARGV[2] .. 'meta'
local spans = window_spans(meta, clock, ttl)
local since, raw_since = window_raw_since(meta, 'since', clock)
local suffix = string.sub(ARGV[3], 1, IDEM_SUFFIX)
local field = string.sub(ARGV[3], IDEM_SUFFIX + 1, IDEM_SUFFIX + IDEM_FIELD / 2)
local hex = clock < raw_since + window_lives(spans) and hex_of_bytes(field) or nil
for _, prefix in ipairs(window_prefixes(ARGV[2], clock, spans)) do
  local found = redis.call('HGET', prefix .. suffix, field)
  if not found and hex then found = redis.call('HGET', prefix .. suffix, hex) end
  if found then return found end
end
if ARGV[4] ~= '' and clock < since + ttl then return redis.call('GET', ARGV[4]) end
return false
