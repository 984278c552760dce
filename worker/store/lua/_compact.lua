-- Compacting a final record (included by _campaign.lua, so by record.lua and every script that
-- cancels): COMPACT_DROP goes, and the Braze user unless keep_external; the record then expires
-- after ttl. A record Redis holds as a hashtable (a value once passed hash-max-listpack-value:
-- a body longer than it) is written anew instead, so that what remains is a listpack again when
-- its values allow: Redis never converts a hash back by itself (README "Redis memory").
local COMPACT_DROP_SET = {}
for _, f in ipairs(COMPACT_DROP) do COMPACT_DROP_SET[f] = true end

local function compact_record(key, keep_external, ttl)
  if redis.call('OBJECT', 'ENCODING', key) == 'hashtable' then
    local all = redis.call('HGETALL', key)
    local kept = {}
    for j = 1, #all, 2 do
      local f = all[j]
      if not COMPACT_DROP_SET[f] and (keep_external or f ~= 'external_id') then
        kept[#kept + 1] = f
        kept[#kept + 1] = all[j + 1]
      end
    end
    redis.call('DEL', key)
    if #kept > 0 then redis.call('HSET', key, unpack(kept)) end
  else
    redis.call('HDEL', key, unpack(COMPACT_DROP))
    if not keep_external then redis.call('HDEL', key, 'external_id') end
  end
  redis.call('EXPIRE', key, ttl)
end
