-- A recipient's sent, unread deliveries (included by record.lua and receipts.lua; the layout and
-- the reasons are worker/store/unread.py's): a field of the bucket P:u:{window}:{suffix}, window
-- = floor(sent time / RECORD_RETENTION). The SHA-1 of "{page}:{psid}" names both: its first
-- UNREAD_SUFFIX hex characters the bucket, the next UNREAD_FIELD the field. The value is
-- "{id},{hour}" per delivery (hour: its outcome's bucket, which holds its send time),
-- space-separated, oldest first. A bucket expires at the end of the next window (_windows.lua:
-- after a change of RECORD_RETENTION, the windows numbered by the one before are read too,
-- P:u:meta). Written before (read while they may live: `fields` in P:u:meta, below): the field
-- "{page}:{psid}" itself, and entries "{id},{sent_at},{hour}".
--!include _windows.lua

local UNREAD = {plain = false}

-- The window lengths the receipts read by; notes a change of RECORD_RETENTION (record.lua and
-- receipts.lua both call it), and when digest fields first ran on this shard: a plain field
-- written before then lives at most two windows of the longest span, and is read until then.
local function unread_spans(prefix, now, retention)
  local meta = prefix .. 'meta'
  local spans = window_spans(meta, now, retention)
  local since = redis.call('HGET', meta, 'fields')
  if not since then
    since = now
    redis.call('HSET', meta, 'fields', now)
  end
  UNREAD.plain = now < tonumber(since) + 2 * math.max(unpack(spans))
  return spans
end

-- The recipient's bucket suffix, field, and the field written before digest fields.
local function unread_names(page, psid)
  local plain = page .. ':' .. psid
  local digest = redis.sha1hex(plain)
  local field = string.sub(digest, UNREAD_SUFFIX + 1, UNREAD_SUFFIX + UNREAD_FIELD)
  return string.sub(digest, 1, UNREAD_SUFFIX), field, plain
end

-- A sent delivery joins its recipient's unread deliveries.
local function unread_add(prefix, page, psid, id, hour, now, retention)
  local suffix, field = unread_names(page, psid)
  local bucket, expires = window_bucket(prefix, now, retention)
  local key = bucket .. suffix
  local entry = id .. ',' .. hour
  if redis.call('HSETNX', key, field, entry) == 1 then  -- the recipient's first in this window
    redis.call('EXPIREAT', key, expires, 'NX')
  else  -- the bucket exists: it got its expiry when it was made
    redis.call('HSET', key, field, redis.call('HGET', key, field) .. ' ' .. entry)
  end
end

-- The recipient's unread deliveries in the buckets a lookup reads (window_prefixes of `spans`;
-- the plain field too while one may live), oldest first: {id, hour (number), key, field, raw
-- entry, sent (number; only in an entry written before: the outcome has it)} each.
local function unread_list(prefix, page, psid, now, spans)
  local suffix, digest, plain = unread_names(page, psid)
  local fields = UNREAD.plain and {plain, digest} or {digest}
  local buckets = window_prefixes(prefix, now, spans)
  local out = {}
  for b = #buckets, 1, -1 do
    local key = buckets[b] .. suffix
    for _, field in ipairs(fields) do
      local value = redis.call('HGET', key, field)
      if value then
        for raw in string.gmatch(value, '%S+') do
          local id, hour = string.match(raw, '^([^,]+),([^,]+)$')
          local sent = nil
          if not id then id, sent, hour = string.match(raw, '^([^,]+),([^,]+),([^,]+)$') end
          if id then
            out[#out + 1] = {id = id, sent = tonumber(sent), hour = tonumber(hour), key = key, field = field,
              raw = raw}
          end
        end
      end
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
        places[#places + 1] = {e.key, e.field}
      end
      if not gone[e.id] then table.insert(kept[e.key][e.field], e.raw) end
    end
  end
  for _, p in ipairs(places) do
    local key, field = p[1], p[2]
    if #kept[key][field] == 0 then
      redis.call('HDEL', key, field)
    else
      redis.call('HSET', key, field, table.concat(kept[key][field], ' '))
    end
  end
end
