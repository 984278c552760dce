-- Final records as outcomes (included by _campaign.lua, so by record.lua and every script that
-- cancels or reads receipts; worker/store/outcomes.py has the layout and the reasons). A final
-- delivery that is not a dead letter leaves its hash P:d:{id} and becomes one value, the
-- OUTCOME fields in order as a MessagePack array ('' for a missing one, trailing ones cut; the
-- OUTCOME_TIMES as numbers, the rest strings, a 0 of OUTCOME_ZERO_ABSENT as ''; a value written
-- before is a JSON array), the field of its id's raw bytes (outcome_field) in the bucket
-- P:o:{hour it ended}:{the id's last OUTCOME_SUFFIX characters}, which expires whole
-- RECORD_RETENTION after its hour (the seal pass gives it that expiry: outcome_store). The
-- bucket prefix is the delivery prefix's sibling (P:d: -> P:o:; worker/store/keys.py builds the
-- same names).
--!include _windows.lua
local function outcome_prefix(dprefix) return string.sub(dprefix, 1, -3) .. 'o:' end

-- An outcome's field in its bucket: the id's 16 raw bytes (worker/store/outcomes.py's field; a
-- test's id that is not 32 lowercase hex characters as it is). Written before (an upgrade): the
-- id's hex, read in the buckets of the hours up to when raw fields first ran (`raw` in P:o:meta).
local function outcome_field(id)
  if #id == 32 and not string.find(id, '[^0-9a-f]') then return bytes_of_hex(id) end
  return id
end

-- `raw` of P:o:meta, read once per script call (nil: not set, every hour may hold a hex field);
-- `noted`: this call has set it (HSETNX with its first outcome).
local OUTCOME_META = {read = false, raw = nil, noted = false}

-- The field an outcome may have been written under before raw fields in the bucket of `hour`,
-- or nil (`field`: the id's outcome_field; an id kept as it is has no other).
local function outcome_hex_field(dprefix, id, hour, field)
  if field == id then return nil end
  if not OUTCOME_META.read then
    OUTCOME_META.raw = tonumber(redis.call('HGET', outcome_prefix(dprefix) .. 'meta', 'raw'))
    OUTCOME_META.read = true
  end
  if OUTCOME_META.raw and hour > OUTCOME_META.raw then return nil end
  return id
end

local function outcome_pack(rec)
  local values, last = {}, 0
  for j, f in ipairs(OUTCOME) do
    local v = rec[f]
    if v == nil or v == false or (OUTCOME_ZERO_ABSENT[f] and v == '0') then v = '' end
    if OUTCOME_TIMES[f] and type(v) == 'string' and v ~= '' then v = tonumber(v) or v end
    values[j] = v
    if v ~= '' then last = j end
  end
  return cmsgpack.pack({unpack(values, 1, last)})
end

local function outcome_unpack(raw)
  local rec = {}
  local values
  if string.sub(raw, 1, 1) == '[' then values = cjson.decode(raw) else values = cmsgpack.unpack(raw) end
  for j, v in ipairs(values) do
    if v ~= '' then rec[OUTCOME[j]] = v end
  end
  return rec
end

-- A flat HGETALL reply -> field -> value.
local function as_table(flat)
  local t = {}
  for j = 1, #flat, 2 do t[flat[j]] = flat[j + 1] end
  return t
end

-- A record's fields with what the intake packed (its `in` field: PACKED's values in order as a
-- MessagePack array, worker/store/records.py's pack_intake) given back as fields.
local function record_expand(rec)
  local packed = rec[PACKED_FIELD]
  if packed then
    local values = cmsgpack.unpack(packed)
    for j, name in ipairs(PACKED) do
      local v = values[j]
      if v and v ~= '' and rec[name] == nil then rec[name] = v end
    end
    rec[PACKED_FIELD] = nil
  end
  return rec
end

-- A record's HGETALL reply -> its fields (record_expand).
local function record_table(flat) return record_expand(as_table(flat)) end

-- Per call, per hour an outcome is stored in: its buckets' prefix and expiry, and whether a write
-- gives them that expiry itself (one script call writes all its outcomes with one dprefix).
local OUTCOME_HOURS = {}
local function outcome_hour(dprefix, hour, retention)
  local at = OUTCOME_HOURS[hour]
  if not at then
    local meta = outcome_prefix(dprefix) .. 'meta'
    if not OUTCOME_META.noted then
      redis.call('HSETNX', meta, 'raw', hour)
      OUTCOME_META.noted, OUTCOME_META.read = true, false
    end
    at = {bucket = outcome_prefix(dprefix) .. hour .. ':', expires = (hour + 1) * OUTCOME_SPAN + retention,
      self_expires = window_self_expires(meta, OUTCOME_SPAN, hour)}
    OUTCOME_HOURS[hour] = at
  end
  return at
end

-- Stores an outcome's value (packed) for a delivery ended at `now`; deletes the open hash unless
-- `no_hash` (a record that never had one). One write to the bucket: the value; the bucket gets
-- its expiry from the seal pass once its hour is over (_windows.lua's window_self_expires), or
-- here (EXPIREAT NX: one expiry per bucket) when the pass has begun that hour or the id is not
-- hex (a test's: no pass can name its bucket). `field`: the id's outcome_field when the caller
-- has it (record.lua: the worker sends it, worker/store/outcomes.py's field).
local function outcome_store(dprefix, id, value, now, retention, no_hash, field)
  local at = outcome_hour(dprefix, math.floor(now / OUTCOME_SPAN), retention)
  local key = at.bucket .. string.sub(id, -OUTCOME_SUFFIX)
  field = field or outcome_field(id)
  redis.call('HSET', key, field, value)
  if at.self_expires or field == id then  -- outcome_field keeps an id that is not hex as it is
    redis.call('EXPIREAT', key, at.expires, 'NX')
  end
  if not no_hash then redis.call('DEL', dprefix .. id) end
end

-- The same for `rec` (field -> value), packed here (a cancel; record.lua gets its values packed
-- by the worker, worker/delivery/recorder.py).
local function outcome_write(dprefix, id, rec, now, retention, no_hash)
  outcome_store(dprefix, id, outcome_pack(rec), now, retention, no_hash)
end

-- A delivery's outcome in the bucket of `hour`: its bucket, field and fields; nil when there is
-- none.
local function outcome_in(dprefix, id, hour)
  local key = outcome_prefix(dprefix) .. hour .. ':' .. string.sub(id, -OUTCOME_SUFFIX)
  local field = outcome_field(id)
  local raw = redis.call('HGET', key, field)
  if not raw then
    field = outcome_hex_field(dprefix, id, hour, field)
    raw = field and redis.call('HGET', key, field)
  end
  if raw then return key, field, outcome_unpack(raw) end
  return nil, nil, nil
end

-- The same, looking in the hours it may have ended in (newest first; one hour ahead for a
-- writer's clock a little ahead).
local function outcome_find(dprefix, id, now, retention)
  for hour = math.floor(now / OUTCOME_SPAN) + 1, math.floor((now - retention) / OUTCOME_SPAN), -1 do
    local key, field, rec = outcome_in(dprefix, id, hour)
    if key then return key, field, rec end
  end
  return nil, nil, nil
end

-- An outcome keeps of the claim it ended under (`done`) only a digest: enough to recognise the
-- same token (worker/store/outcomes.py, done_digest), OUTCOME_DONE hex characters stored as half
-- as many raw bytes (the worker packs them; written before: the hex).
-- Whether a delivery that is an outcome now ended under `token` (record.lua: a call sent again
-- after its answer was lost is told "already written", not "refused").
local function outcome_done(dprefix, id, now, retention, token)
  local _, _, rec = outcome_find(dprefix, id, now, retention)
  if rec == nil or not rec.done then return false end
  local hex = string.sub(redis.sha1hex(token), 1, OUTCOME_DONE)
  return rec.done == bytes_of_hex(hex) or rec.done == hex
end
