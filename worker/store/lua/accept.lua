-- ACCEPT: the intake's group commit, one call per batch of requests.
-- KEYS[1] pending zset, KEYS[2] Celery queue list, KEYS[3] P:open (the open deliveries' ages
-- derive from it: _ages.lua), KEYS[4] the queue's gather pointer (P:gather:{queue}).
-- ARGV[1] now, ARGV[2] IDEMPOTENCY_TTL, ARGV[3] sweep_after, ARGV[4] idempotency bucket prefix
-- (P:i:), ARGV[5] delivery key prefix (P:d:), ARGV[6] batch key prefix (P:batch:),
-- ARGV[7] the Celery message of a new batch (`worker.deliver_batch(ARGV[8])`, serialised),
-- ARGV[8] the new batch's id, ARGV[9] QUEUE_BATCH_MAX, ARGV[10] the gather pointer's TTL (s),
-- ARGV[11..27] the campaign context (_campaign.lua), then from ARGV[28] per item: id, its
-- idempotency key's digest and the value to remember ('' for none: worker/store/idempotency.py's
-- entry, of the key scoped by the intake to the caller and the page: IDEM_SUFFIX hex characters,
-- the field as IDEM_FIELD / 2 raw bytes, then the id's raw bytes), the key as the previous version stored it (P:idem:...,
-- '' for none) and its campaign ('' for none: the campaign id, else the Canvas id).
-- The records themselves are written before this script, in the same MULTI/EXEC, by plain
-- HSETs (worker/intake/committer.py: status QUEUED, created_at = ARGV[1], `in`, what the
-- request said packed in one value (worker/store/records.py), and those it has of external_id
-- and the attribution; no token is ever stored): a record's bytes never travel through Lua.
-- Until this script has queued an id nothing reads its record; an item it does not queue
-- loses it here (a repeated key: deleted; a stopped campaign: it becomes the outcome).
-- Idempotency: a digest is looked up in the bucket of the current window (Redis time /
-- IDEMPOTENCY_TTL) and of the previous one, and written into the current one, which expires at
-- the end of the next: a key is remembered at least IDEMPOTENCY_TTL, at most twice that (the
-- expiry comes from the seal pass once the window is over, _windows.lua's window_self_expires).
-- P:i:meta remembers when buckets first ran on this Redis (since: for one IDEMPOTENCY_TTL after
-- it the previous version's key is read too), when raw fields did (raw: for two windows after
-- it a field written as its hex is read too; 0 on a shard no bucket was written to before) and
-- the TTL the windows were numbered by: after a
-- change, the windows of the TTL before are read too for as long as their buckets live (two of
-- its TTLs, _windows.lua), so a retry across the change is still a repeat.
-- A delivery of a campaign that is stopped (P:campstop) is not queued: it is written as a
-- CANCELLED outcome (_outcome.lua), with its `messenger_delivery` Braze event when outcome events
-- are on (_campaign.lua's camp_event), and its item's answer is '-'. Every other item with a
-- campaign joins the campaign's open index; both are counted (accepted, cancelled).
-- Each accepted item becomes a QUEUED record, counted in its second's open deliveries (_ages.lua:
-- one HINCRBY per call). Its deadline is its batch's: pending holds `b:{batch id}` (deadline
-- now + sweep_after, moved on by every commit that joins it), not an entry per delivery; the
-- claim moves it to the claim's unit (claim.lua), the sweeper re-enqueues a batch whose message
-- was lost (sweep.lua).
-- Returns, per item, '' when accepted, '-' when cancelled (its campaign is stopped), or the
-- existing delivery id for a repeated idempotency key (as remembered: raw bytes, or hex).
-- The accepted ids join the queue's newest batch while it is still queued (its list exists: no
-- worker has taken it) and has room for them all; otherwise they start a new batch and its
-- message is pushed. A backlog thus travels in messages of up to QUEUE_BATCH_MAX ids, while an
-- idle queue still gets one message per commit. The list has no expiry: it is the only place its
-- ids are listed until a claim takes it (or the sweeper, when the message is lost); ARGV[10] is
-- the gather pointer's TTL.
--!include _campaign.lua
--!include _windows.lua
local now = ARGV[1]
local idem_ttl = tonumber(ARGV[2])
local deadline = tonumber(now) + tonumber(ARGV[3])
local cap = tonumber(ARGV[9])
local ttl = tonumber(ARGV[10])
local out = {}
local accepted = {}
-- the idempotency windows (_windows.lua), by the server's clock (one clock for every intake)
local clock = tonumber(redis.call('TIME')[1])
local meta = ARGV[4] .. 'meta'
local current, forget_at, window = window_bucket(ARGV[4], clock, idem_ttl)
local spans = window_spans(meta, clock, idem_ttl)
local lookup = window_prefixes(ARGV[4], clock, spans)
local since, raw_since = window_raw_since(meta, 'since', clock)  -- `since`: when buckets first ran
local legacy = clock < since + idem_ttl
local hex_fields = clock < raw_since + window_lives(spans)
local field_bytes = IDEM_FIELD / 2
local self_expires = nil  -- this call's window: whether its writes set the expiry (once, at the first)
camp_init(11)
local i = 28
while i <= #ARGV do
  local id, idem, old, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local existing = false
  if idem ~= '' then
    local suffix = string.sub(idem, 1, IDEM_SUFFIX)
    local field = string.sub(idem, IDEM_SUFFIX + 1, IDEM_SUFFIX + field_bytes)
    local bucket = current .. suffix  -- lookup[1]'s: the current window's
    -- written first, only if the current window does not have it (one command for the common
    -- case, a new key); then the older windows are asked (and, while one may live, the field as
    -- its hex, as written before), and a key found there is taken back
    if redis.call('HSETNX', bucket, field, string.sub(idem, IDEM_SUFFIX + field_bytes + 1)) == 0 then
      existing = redis.call('HGET', bucket, field)
    else
      local hex = hex_fields and hex_of_bytes(field) or nil
      for k = 1, #lookup do
        if k > 1 then existing = existing or redis.call('HGET', lookup[k] .. suffix, field) end
        if hex then existing = existing or redis.call('HGET', lookup[k] .. suffix, hex) end
      end
      if not existing and legacy and old ~= '' then existing = redis.call('GET', old) end
      if existing then
        redis.call('HDEL', bucket, field)  -- a bucket it made alone goes with it
      else
        if self_expires == nil then self_expires = window_self_expires(meta, idem_ttl, window) end
        if self_expires then redis.call('EXPIREAT', bucket, forget_at, 'NX') end  -- else the seal pass's
      end
    end
  end
  local camp = owner ~= '' and owner or nil
  if existing then
    redis.call('DEL', ARGV[5] .. id)  -- the record written for it: the first request's stands
    table.insert(out, existing)
  elseif camp and camp_stopped(camp) then
    local rec = {status = S.CANCELLED, created_at = now, updated_at = now, attempts = '0',
      error = '{"reason":"campaign_stopped","code":null,"subcode":null,"message":"campaign_stopped","fbtrace_id":null}'}
    for k, v in pairs(record_table(redis.call('HGETALL', ARGV[5] .. id))) do rec[k] = rec[k] or v end
    camp_event(id, rec, S.CANCELLED, 'campaign_stopped')  -- its messenger_delivery, as every cancel's
    outcome_write(ARGV[5], id, rec, tonumber(now), CAMP.record_retention, false)  -- the hash goes
    camp_count(camp, 'accepted')
    camp_count(camp, S.CANCELLED)
    table.insert(out, '-')
  else
    if camp then
      redis.call('ZADD', CAMP.open .. camp, now, id)
      camp_count(camp, 'accepted')
    end
    table.insert(accepted, id)
    table.insert(out, '')
  end
  i = i + 4
end
if #accepted > 0 then
  ages_add(KEYS[3], now, #accepted)
  local batch, bid = nil, nil
  local newest = redis.call('GET', KEYS[4])
  if newest then
    local key = ARGV[6] .. newest
    local n = redis.call('LLEN', key)
    if n > 0 and n + #accepted <= cap then batch, bid = key, newest end
  end
  if not batch then
    bid = ARGV[8]
    batch = ARGV[6] .. bid
    redis.call('LPUSH', KEYS[2], ARGV[7])
    redis.call('SET', KEYS[4], bid, 'EX', ttl)
  end
  redis.call('RPUSH', batch, unpack(accepted))
  if batch ~= ARGV[6] .. ARGV[8] then redis.call('PERSIST', batch) end  -- one from before kept a TTL
  redis.call('ZADD', KEYS[1], deadline, 'b:' .. bid)  -- the batch's deadline: its ids' (sweep.lua)
end
camp_flush()
return out
