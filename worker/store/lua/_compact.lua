-- Compacting a final record (included by _campaign.lua, so by record.lua and every script that
-- cancels): COMPACT_DROP goes, and the Braze user unless keep_external, and the field `extra`
-- when given (a sent record's earlier error); the record then expires after ttl: one HDEL. A record Redis holds as a hashtable (a value once passed hash-max-listpack-value:
-- a body longer than it) is written anew instead, so that what remains is a listpack again when
-- its values allow: Redis never converts a hash back by itself (README "Redis memory").
local COMPACT_DROP_SET = {}
for _, f in ipairs(COMPACT_DROP) do COMPACT_DROP_SET[f] = true end

local function compact_record(key, keep_external, ttl, extra)
  if redis.call('OBJECT', 'ENCODING', key) == 'hashtable' then
    local all = redis.call('HGETALL', key)
    local kept = {}
    for j = 1, #all, 2 do
      local f = all[j]
      if not COMPACT_DROP_SET[f] and f ~= extra and (keep_external or f ~= 'external_id') then
        kept[#kept + 1] = f
        kept[#kept + 1] = all[j + 1]
      end
    end
    redis.call('DEL', key)
    if #kept > 0 then redis.call('HSET', key, unpack(kept)) end
  else
    local drop = {unpack(COMPACT_DROP)}
    if not keep_external then drop[#drop + 1] = 'external_id' end
    if extra then drop[#drop + 1] = extra end
    redis.call('HDEL', key, unpack(drop))
  end
  redis.call('EXPIRE', key, ttl)
end
