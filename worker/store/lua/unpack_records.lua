-- UNPACK_RECORDS: turn records whose intake part is packed (the `in` field: PACKED's values as a
-- MessagePack array, worker/store/records.py) back into fields, as versions before it wrote
-- them: run before rolling back past the version that packs (`messenger-worker unpack-records`,
-- README). KEYS: delivery hashes (P:d:{id}). A field the record already has is kept.
-- Returns how many records it unpacked.
--!include _outcome.lua
local done = 0
for _, key in ipairs(KEYS) do
  local packed = redis.call('HGET', key, PACKED_FIELD)
  if packed then
    -- the fields as every reader gets them (_outcome.lua's record_expand)
    for name, v in pairs(record_expand({[PACKED_FIELD] = packed})) do redis.call('HSETNX', key, name, v) end
    redis.call('HDEL', key, PACKED_FIELD)
    done = done + 1
  end
end
return done
