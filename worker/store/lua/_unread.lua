-- A recipient's sent, unread deliveries (included by record.lua and receipts.lua; the layout and
-- the reasons are worker/store/unread.py's): the field "{page}:{psid}" of the bucket
-- P:u:{window}:{suffix}, window = floor(sent time / RECORD_RETENTION), suffix = the first
-- UNREAD_SUFFIX hex characters of the field's SHA-1; its value is "{id},{hour}" per delivery
-- (hour: its outcome's bucket, which holds its send time), space-separated, oldest first; entries
-- written before this layout are "{id},{sent_at},{hour}" and still read. A bucket expires at the
-- end of the next window (_windows.lua: after a change of RECORD_RETENTION, the windows
-- numbered by the one before are read too, P:u:meta).
--!include _windows.lua

-- The window lengths the receipts read by; notes a change of RECORD_RETENTION (record.lua and
-- receipts.lua both call it).
local function unread_spans(prefix, now, retention)
  return window_spans(prefix .. 'meta', now, retention)
end

local function unread_suffix(field)
  return string.sub(redis.sha1hex(field), 1, UNREAD_SUFFIX)
end

-- A sent delivery joins its recipient's unread deliveries.
local function unread_add(prefix, page, psid, id, hour, now, retention)
  local field = page .. ':' .. psid
  local bucket, expires = window_bucket(prefix, now, retention)
  local key = bucket .. unread_suffix(field)
  local entry = id .. ',' .. hour
  if redis.call('HSETNX', key, field, entry) == 1 then  -- the recipient's first in this window
    redis.call('EXPIREAT', key, expires, 'NX')
  else  -- the bucket exists: it got its expiry when it was made
    redis.call('HSET', key, field, redis.call('HGET', key, field) .. ' ' .. entry)
  end
end

-- The recipient's unread deliveries in the buckets a lookup reads (window_prefixes of `spans`),
-- oldest first: {id, hour (number), key, raw entry, sent (number; only in an entry written before
-- this layout: the outcome has it)} each.
local function unread_list(prefix, page, psid, now, spans)
  local field = page .. ':' .. psid
  local suffix = unread_suffix(field)
  local buckets = window_prefixes(prefix, now, spans)
  local out = {}
  for b = #buckets, 1, -1 do
    local key = buckets[b] .. suffix
    local value = redis.call('HGET', key, field)
    if value then
      for raw in string.gmatch(value, '%S+') do
        local id, hour = string.match(raw, '^([^,]+),([^,]+)$')
        local sent = nil
        if not id then id, sent, hour = string.match(raw, '^([^,]+),([^,]+),([^,]+)$') end
        if id then out[#out + 1] = {id = id, sent = tonumber(sent), hour = tonumber(hour), key = key, raw = raw} end
      end
    end
  end
  return out
end

-- Removes the entries of `list` (unread_list's; others, without a bucket, are skipped) whose id
-- is in `gone` (id -> true).
local function unread_drop(list, page, psid, gone)
  local field = page .. ':' .. psid
  local kept, keys = {}, {}
  for _, e in ipairs(list) do
    if e.key then
      if not kept[e.key] then
        kept[e.key] = {}
        keys[#keys + 1] = e.key
      end
      if not gone[e.id] then table.insert(kept[e.key], e.raw) end
    end
  end
  for _, key in ipairs(keys) do
    if #kept[key] == 0 then
      redis.call('HDEL', key, field)
    else
      redis.call('HSET', key, field, table.concat(kept[key], ' '))
    end
  end
end
