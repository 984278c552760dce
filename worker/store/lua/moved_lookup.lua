-- MOVED_LOOKUP: whether this shard remembers requests' Idempotency-Keys; asked by the intake for
-- a page that `shards move` took from this shard to another (P:moved there;
-- worker/store/pagemove.py), so that a Braze retry of a request this shard accepted is answered
-- as a repeat on the new one. accept.lua's lookups without its writes, for a batch of keys.
-- ARGV[1] IDEMPOTENCY_TTL, ARGV[2] the idempotency bucket prefix (P:i:), then per key: its
-- scoped digest (IDEM_SUFFIX hex characters, then the field as IDEM_FIELD / 2 raw bytes) and the
-- key as the previous version stored it (P:idem:..., '' for none).
-- Returns per key the delivery id as remembered (raw bytes, or hex), or '' when it is not.
--!include _windows.lua
local ttl = tonumber(ARGV[1])
local clock = tonumber(redis.call('TIME')[1])
local meta = ARGV[2] .. 'meta'
local spans = window_spans(meta, clock, ttl)
local since, raw_since = window_raw_since(meta, 'since', clock)
local hex_fields = clock < raw_since + window_lives(spans)
local legacy = clock < since + ttl
local prefixes = window_prefixes(ARGV[2], clock, spans)
local out = {}
for i = 3, #ARGV, 2 do
  local suffix = string.sub(ARGV[i], 1, IDEM_SUFFIX)
  local field = string.sub(ARGV[i], IDEM_SUFFIX + 1, IDEM_SUFFIX + IDEM_FIELD / 2)
  local hex = hex_fields and hex_of_bytes(field) or nil
  local found = false
  for _, prefix in ipairs(prefixes) do
    found = redis.call('HGET', prefix .. suffix, field)
    if not found and hex then found = redis.call('HGET', prefix .. suffix, hex) end
    if found then break end
  end
  if not found and legacy and ARGV[i + 1] ~= '' then found = redis.call('GET', ARGV[i + 1]) end
  out[#out + 1] = found or ''
end
return out
