-- A recipient's sent, unread deliveries (included by record.lua and receipts.lua; the layout and
-- the reasons are worker/store/unread.py's): the field "{page}:{psid}" of the bucket
-- P:u:{window}:{suffix}, window = floor(sent time / RECORD_RETENTION), suffix = the first
-- UNREAD_SUFFIX hex characters of the field's SHA-1; its value is "{id},{sent_at},{hour}" per
-- delivery (hour: its outcome's bucket), space-separated, oldest first. A bucket expires at the
-- end of the next window. The windows are numbered by RECORD_RETENTION: P:u:meta keeps the one
-- they are numbered by (ttl) and, after a change, the one before (before, changed), whose windows
-- are read too while their buckets live (two of it).

-- The window lengths to read by (RECORD_RETENTION, then the one before a change while its buckets
-- live); notes a change in P:u:meta (record.lua and receipts.lua both call it).
local function unread_spans(prefix, now, retention)
  local meta = prefix .. 'meta'
  local numbered, before, changed = unpack(redis.call('HMGET', meta, 'ttl', 'before', 'changed'))
  if not numbered then
    redis.call('HSET', meta, 'ttl', retention)
  elseif tonumber(numbered) ~= retention then
    before, changed = numbered, now
    redis.call('HSET', meta, 'ttl', retention, 'before', before, 'changed', changed)
  end
  local spans = {retention}
  if before and now < tonumber(changed) + 2 * tonumber(before) then spans[2] = tonumber(before) end
  return spans
end

local function unread_where(prefix, field, window)
  return prefix .. window .. ':' .. string.sub(redis.sha1hex(field), 1, UNREAD_SUFFIX)
end

-- A sent delivery joins its recipient's unread deliveries.
local function unread_add(prefix, page, psid, id, sent, hour, now, retention)
  local window = math.floor(now / retention)
  local field = page .. ':' .. psid
  local key = unread_where(prefix, field, window)
  local entry = id .. ',' .. sent .. ',' .. hour
  local before = redis.call('HGET', key, field)
  if before then  -- the bucket exists: it got its expiry when it was made
    redis.call('HSET', key, field, before .. ' ' .. entry)
  else
    redis.call('HSET', key, field, entry)
    redis.call('EXPIREAT', key, (window + 2) * retention, 'NX')
  end
end

-- The recipient's unread deliveries in the buckets of this window and the last (of each span:
-- unread_spans), oldest first: {id, sent (number), hour (number), key, raw entry} each.
local function unread_list(prefix, page, psid, now, spans)
  local field = page .. ':' .. psid
  local out, seen = {}, {}
  for s = #spans, 1, -1 do
    local window = math.floor(now / spans[s])
    for w = window - 1, window do
      local key = unread_where(prefix, field, w)
      local value = not seen[key] and redis.call('HGET', key, field)
      seen[key] = true
      if value then
        for raw in string.gmatch(value, '%S+') do
          local id, sent, hour = string.match(raw, '^([^,]+),([^,]+),([^,]+)$')
          if id then out[#out + 1] = {id = id, sent = tonumber(sent), hour = tonumber(hour), key = key, raw = raw} end
        end
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
