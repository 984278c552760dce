-- A recipient's sent, unread deliveries (included by record.lua and receipts.lua; the layout and
-- the reasons are worker/store/unread.py's): a field of the bucket P:u:{window}:{suffix}, window
-- = floor(sent time / RECORD_RETENTION). The SHA-1 of "{page}:{psid}" names both: its first
-- UNREAD_SUFFIX hex characters the bucket, the next UNREAD_FIELD the field (as raw bytes, half
-- as many). The value is the deliveries' entries, oldest first, one after the other, each
-- worker/store/unread.py's entry, UNREAD_ENTRY bytes (a tag, the id's 16 raw bytes, the hour of
-- its outcome's bucket, which holds its send time, in 3 bytes). A bucket expires at the end of
-- the next window (given by the seal pass once its window is over: window_self_expires;
-- _windows.lua: after a change of RECORD_RETENTION, the windows numbered by the one before are
-- read too, P:u:meta). Written before (read while they may live: `raw` and `fields`
-- in P:u:meta, below): the field as its hex characters, and before those "{page}:{psid}"
-- itself; a value of text entries "{id},{hour}" or "{id},{sent_at},{hour}", space-separated.
--!include _windows.lua

local UNREAD = {hex = false, plain = false}

-- The window lengths the receipts read by; notes a change of RECORD_RETENTION (record.lua and
-- receipts.lua both call it), and when digest fields (`fields`) and raw ones (`raw`) first ran
-- on this shard: a field written before then lives at most two windows of the longest span, and
-- is read until then (`raw` 0: no hex field was ever written here).
local function unread_spans(prefix, now, retention)
  local meta = prefix .. 'meta'
  local spans = window_spans(meta, now, retention)
  local fields, raw = window_raw_since(meta, 'fields', now)
  local lives = window_lives(spans)
  UNREAD.plain = now < fields + lives
  UNREAD.hex = now < raw + lives
  return spans
end

-- The recipient's bucket suffix, field, and the fields written before: hex, "{page}:{psid}".
local function unread_names(page, psid)
  local plain = page .. ':' .. psid
  local digest = redis.sha1hex(plain)
  local hex = string.sub(digest, UNREAD_SUFFIX + 1, UNREAD_SUFFIX + UNREAD_FIELD)
  return string.sub(digest, 1, UNREAD_SUFFIX), bytes_of_hex(hex), hex, plain
end

-- The bucket prefix entries written at `now` go into ("{prefix}{window}:"), when its buckets
-- expire, and whether a write must give them that expiry itself (window_self_expires): once per
-- call (record.lua).
local function unread_window(prefix, now, retention)
  local bucket, expires, window = window_bucket(prefix, now, retention)
  return {bucket = bucket, expires = expires,
    self_expires = window_self_expires(prefix .. 'meta', retention, window)}
end

-- A sent delivery joins its recipient's unread deliveries. `named`: what the worker built
-- (worker/store/unread.py's locator, then entry): the bucket suffix (UNREAD_SUFFIX characters),
-- the field (UNREAD_FIELD / 2 raw bytes) and the entry (a byte 0x10, the id's 16 raw bytes and
-- its outcome's hour in 3; a test's id that is not hex as text after a byte 0x80 + its length).
local function unread_add(window, named)
  local key = window.bucket .. string.sub(named, 1, UNREAD_SUFFIX)
  local field = string.sub(named, UNREAD_SUFFIX + 1, UNREAD_SUFFIX + UNREAD_FIELD / 2)
  local entry = string.sub(named, UNREAD_SUFFIX + UNREAD_FIELD / 2 + 1)
  if redis.call('HSETNX', key, field, entry) == 1 then  -- the recipient's first in this window
    -- the bucket's expiry: the seal pass's once the window is over, or this write's
    if window.self_expires then redis.call('EXPIREAT', key, window.expires, 'NX') end
  else  -- the bucket exists: it has its expiry, or the pass gives it one
    redis.call('HSET', key, field, redis.call('HGET', key, field) .. entry)
  end
end

-- A value's entries, appended to `out` as {id, hour (number), key, field, raw entry, sep (what
-- joins them), sent (number; only in a text entry with it: the outcome has it)}.
local function unread_parse(value, key, field, out)
  local b = string.byte(value, 1)
  if b == 16 or b >= 128 then
    local at = 1
    while at <= #value do
      local tag = string.byte(value, at)
      local size = tag == 16 and 16 or tag - 128
      if size < 0 or at + size + 3 > #value then break end  -- not an entry: what is read stops
      local id = string.sub(value, at + 1, at + size)
      if tag == 16 then id = hex_of_bytes(id) end
      local h1, h2, h3 = string.byte(value, at + size + 1, at + size + 3)
      out[#out + 1] = {id = id, hour = (h1 * 256 + h2) * 256 + h3, key = key, field = field, sep = '',
        raw = string.sub(value, at, at + size + 3)}
      at = at + size + 4
    end
    return
  end
  for raw in string.gmatch(value, '%S+') do
    local id, hour = string.match(raw, '^([^,]+),([^,]+)$')
    local sent = nil
    if not id then id, sent, hour = string.match(raw, '^([^,]+),([^,]+),([^,]+)$') end
    if id then
      out[#out + 1] = {id = id, sent = tonumber(sent), hour = tonumber(hour), key = key, field = field,
        sep = ' ', raw = raw}
    end
  end
end

-- The recipient's unread deliveries in the buckets a lookup reads (window_prefixes of `spans`;
-- the fields written before too while one may live), oldest first (unread_parse's entries).
local function unread_list(prefix, page, psid, now, spans)
  local suffix, raw, hex, plain = unread_names(page, psid)
  local fields = {}
  if UNREAD.plain then fields[#fields + 1] = plain end
  if UNREAD.hex then fields[#fields + 1] = hex end
  fields[#fields + 1] = raw
  local buckets = window_prefixes(prefix, now, spans)
  local out = {}
  for b = #buckets, 1, -1 do
    local key = buckets[b] .. suffix
    for _, field in ipairs(fields) do
      local value = redis.call('HGET', key, field)
      if value and #value > 0 then unread_parse(value, key, field, out) end
    end
  end
  return out
end

-- Removes the entries of `list` (unread_list's; others, without a bucket, are skipped) whose id
-- is in `gone` (id -> true).
local function unread_drop(list, gone)
  local kept, places = {}, {}
  for _, e in ipairs(list) do
    if e.key then
      kept[e.key] = kept[e.key] or {}
      if not kept[e.key][e.field] then
        kept[e.key][e.field] = {}
        places[#places + 1] = {e.key, e.field, e.sep}
      end
      if not gone[e.id] then table.insert(kept[e.key][e.field], e.raw) end
    end
  end
  for _, p in ipairs(places) do
    local key, field = p[1], p[2]
    if #kept[key][field] == 0 then
      redis.call('HDEL', key, field)
    else
      redis.call('HSET', key, field, table.concat(kept[key][field], p[3]))
    end
  end
end
