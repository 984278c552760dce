-- Buckets by window (included by accept.lua for the idempotency keys and by _unread.lua for the
-- recipients' unread deliveries; worker/store/idempotency.py and unread.py have the layouts): an
-- entry written at `now` goes into the bucket of window floor(now / length), which expires at the
-- end of the next window; a lookup reads the current window's bucket and the previous one's, so
-- an entry is found for at least `length` and kept at most twice that. The windows are numbered
-- by the length, so a hash `meta` keeps the length they are numbered by (ttl) and, after a
-- change, the one before and when it changed (before, changed): the windows numbered by the one
-- before are read too while their buckets live (two of it).

-- The bucket prefix ("{prefix}{window}:") an entry written at `now` goes into, when that
-- bucket expires, and the window's number.
local function window_bucket(prefix, now, length)
  local window = math.floor(now / length)
  return prefix .. window .. ':', (window + 2) * length, window
end

-- Expiries set per window, not per write (seal.lua runs them; worker/store/seals.py has the
-- reasons): a bucket written into a window at or after `open:{length}` of its layout's `meta` is
-- left without an expiry by the write, and once the window is over the housekeeping gives every
-- bucket name the window may have (its suffixes are hex) its expiry in one pass. A write into a
-- window before `open:{length}` (the pass has begun it, or a writer's clock is behind) sets the
-- expiry itself, as does every write into windows shorter than SEAL_MIN (the pass would cost
-- more than it saves). The first call on a shard sets `open:{length}` to its own window: the
-- windows before it were written by a version that set expiries per write. Read once per call.
local SEALS = {}  -- meta -> length -> open:{length} (no key made of a number: formatting one costs)
local function window_self_expires(meta, length, window)
  if length < SEAL_MIN then return true end
  local of_meta = SEALS[meta]
  if of_meta == nil then
    of_meta = {}
    SEALS[meta] = of_meta
  end
  local from = of_meta[length]
  if from == nil then
    from = tonumber(redis.call('HGET', meta, 'open:' .. length))
    if not from then
      from = window
      redis.call('HSET', meta, 'open:' .. length, from)
    end
    of_meta[length] = from
  end
  return window < from
end

-- The window lengths to read by: `length`, then the one before a change while its buckets live.
-- Notes a change in `meta`.
local function window_spans(meta, now, length)
  local numbered, before, changed = unpack(redis.call('HMGET', meta, 'ttl', 'before', 'changed'))
  if not numbered then
    redis.call('HSET', meta, 'ttl', length)
  elseif tonumber(numbered) ~= length then
    before, changed = numbered, now
    redis.call('HSET', meta, 'ttl', length, 'before', before, 'changed', changed)
  end
  local spans = {length}
  if before and now < tonumber(changed) + 2 * tonumber(before) then spans[2] = tonumber(before) end
  return spans
end

-- How long an entry written now can live: two of the longest span (its bucket expires at the end
-- of the next window).
local function window_lives(spans) return 2 * math.max(unpack(spans)) end

-- When a layout's fields first were raw bytes on this shard (`raw` in `meta`, noted by the first
-- call), and when the layout before them first ran (its field `earlier`, set to `now` when
-- absent). Hex fields were written only by a version that set `earlier`: on a shard without it,
-- `raw` is 0 and no hex field is ever looked for.
local function window_raw_since(meta, earlier, now)
  local before, raw = unpack(redis.call('HMGET', meta, earlier, 'raw'))
  if not raw then
    raw = before and now or 0
    before = before or now
    redis.call('HSET', meta, earlier, before, 'raw', raw)
  end
  return tonumber(before), tonumber(raw)
end

-- The bucket prefixes a lookup at `now` reads, newest first (the first is where an entry written
-- now goes): the current and the previous window of each span, each once.
local function window_prefixes(prefix, now, spans)
  local out, seen = {}, {}
  for _, length in ipairs(spans) do
    local window = math.floor(now / length)
    for w = window, window - 1, -1 do
      local p = prefix .. w .. ':'
      if not seen[p] then
        seen[p] = true
        out[#out + 1] = p
      end
    end
  end
  return out
end

-- Hex characters <-> the bytes they spell: the buckets' fields are a digest's raw bytes, half
-- its hex (fields written before are the hex, read while they may live). Ids (32 characters) and
-- fields (16) go 8 characters at a time through `struct`, in one call (0.6 µs an id, measured
-- on redis-server 7.0.15, where a gsub of byte pairs took 3.2).
local function bytes_of_hex(hex)
  local sub = string.sub
  if #hex == 32 then
    return struct.pack('>I4I4I4I4', tonumber(sub(hex, 1, 8), 16), tonumber(sub(hex, 9, 16), 16),
      tonumber(sub(hex, 17, 24), 16), tonumber(sub(hex, 25, 32), 16))
  elseif #hex == 16 then
    return struct.pack('>I4I4', tonumber(sub(hex, 1, 8), 16), tonumber(sub(hex, 9, 16), 16))
  end
  return (string.gsub(hex, '..', function(h) return string.char(tonumber(h, 16)) end))
end

local function hex_of_bytes(raw)
  if #raw == 16 then return string.format('%08x%08x%08x%08x', struct.unpack('>I4I4I4I4', raw)) end
  if #raw == 8 then return string.format('%08x%08x', struct.unpack('>I4I4', raw)) end
  return (string.gsub(raw, '.', function(c) return string.format('%02x', string.byte(c)) end))
end
