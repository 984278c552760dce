-- A recipient's sent, unread deliveries (included by record.lua and receipts.lua; the layout and
-- the reasons are worker/store/unread.py's): the field "{page}:{psid}" of the bucket
-- P:u:{window}:{suffix}, window = floor(sent time / RECORD_RETENTION), suffix = the first
-- UNREAD_SUFFIX hex characters of the field's SHA-1; its value is "{id},{sent_at},{hour}" per
-- delivery (hour: its outcome's bucket), space-separated, oldest first. A bucket expires at the
-- end of the next window.

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

-- The recipient's unread deliveries in the buckets of this window and the last, oldest first:
-- {id, sent (number), hour (number), key, raw entry} each.
local function unread_list(prefix, page, psid, now, retention)
  local window = math.floor(now / retention)
  local field = page .. ':' .. psid
  local out = {}
  for w = window - 1, window do
    local key = unread_where(prefix, field, w)
    local value = redis.call('HGET', key, field)
    if value then
      for raw in string.gmatch(value, '%S+') do
        local id, sent, hour = string.match(raw, '^([^,]+),([^,]+),([^,]+)$')
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
