-- Campaign counters and cancellation, shared by accept, claim, record, cancel, replay, receipts
-- (included with --!include; not a script itself). The including script calls camp_init(i)
-- with the index of the 17 context arguments in ARGV (worker/store/campaign_ctx.py):
-- campaign prefix (P:camp:), open-index prefix (P:campopen:), the campaigns index (P:camps),
-- the stopped campaigns (P:campstop), CAMPAIGN_RETENTION, RECORD_RETENTION, delivery prefix
-- (P:d:), park prefix (P:park:), pending, P:open (the open deliveries' ages derive from it:
-- _ages.lua), sched, parked (zsets), stats prefix (P:stats:), this minute, now, the Braze
-- outbox for outcome events ('' = BRAZE_OUTCOME_EVENTS is off) and now as an event's time
-- (ISO 8601). Counters are
-- gathered per call and written by camp_flush(): one HINCRBY per counter and campaign, whatever
-- the number of deliveries; camp_flush() also writes the ages the call changed.
--!include _outcome.lua
--!include _bulk.lua
--!include _ages.lua
local CAMP = {}
local camp_counts = {}
local camp_stop_cache = {}
local camp_cancelled = {}  -- reason -> page_id -> deliveries this call cancelled (camp_cancels)

local function camp_init(i)
  CAMP.prefix, CAMP.open, CAMP.index, CAMP.stopped = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  CAMP.retention, CAMP.record_retention = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  CAMP.d, CAMP.park = ARGV[i + 6], ARGV[i + 7]
  CAMP.pending, CAMP.open_all, CAMP.sched, CAMP.parked = ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], ARGV[i + 11]
  CAMP.stats, CAMP.minute, CAMP.now = ARGV[i + 12], ARGV[i + 13], ARGV[i + 14]
  CAMP.events, CAMP.event_time = ARGV[i + 15], ARGV[i + 16]
end

-- The `messenger_delivery` Braze event of a delivery this script ends (worker/braze/items.py's
-- outcome_event_item, the same shape), into the outbox in the same script as the outcome: once,
-- whatever retries the call. Nothing when outcome events are off or it has no Braze user.
local function camp_event(id, rec, status, reason)
  if CAMP.events == '' or not rec.external_id or rec.external_id == '' then return end
  local properties = {status = status, delivery_id = id, reason = reason}
  for _, name in ipairs(ATTRIBUTION) do
    if rec[name] and rec[name] ~= '' then properties[name] = rec[name] end
  end
  redis.call('LPUSH', CAMP.events, cjson.encode({type = 'event', external_id = rec.external_id,
    name = 'messenger_delivery', time = CAMP.event_time, properties = properties}))
end

-- A delivery belongs to its campaign, or to its Canvas when it has no campaign id.
local function camp_of(campaign_id, canvas_id)
  if campaign_id and campaign_id ~= '' then return campaign_id end
  if canvas_id and canvas_id ~= '' then return canvas_id end
  return nil
end

local function camp_count(camp, field, n)
  local c = camp_counts[camp]
  if not c then
    c = {}
    camp_counts[camp] = c
  end
  c[field] = (c[field] or 0) + (n or 1)
end

local function camp_stopped(camp)
  local v = camp_stop_cache[camp]
  if v == nil then
    v = redis.call('ZSCORE', CAMP.stopped, camp) ~= false
    camp_stop_cache[camp] = v
  end
  return v
end

-- Writes the gathered counters; refreshes each campaign's retention and its place in the index.
local function camp_flush()
  local any = false
  for camp, c in pairs(camp_counts) do
    any = true
    local key = CAMP.prefix .. camp
    for field, n in pairs(c) do redis.call('HINCRBY', key, field, n) end
    redis.call('HSETNX', key, 'first_at', CAMP.now)
    redis.call('HSET', key, 'last_at', CAMP.now)
    redis.call('EXPIRE', key, CAMP.retention)
    redis.call('EXPIRE', CAMP.open .. camp, CAMP.retention)
    redis.call('ZADD', CAMP.index, tonumber(CAMP.now), camp)
  end
  if any then
    local horizon = tonumber(CAMP.now) - CAMP.retention
    redis.call('ZREMRANGEBYSCORE', CAMP.index, '-inf', horizon)
    -- a stop is kept CAMPAIGN_RETENTION after its campaign's last activity, as its counters
    -- are: one older than the horizon goes only if its campaign has had none since (it left the
    -- index above), else it moves on to that activity (the stop's own time is in the hash)
    local old = redis.call('ZRANGEBYSCORE', CAMP.stopped, '-inf', horizon, 'LIMIT', 0, 100)
    for _, camp in ipairs(old) do
      local last = redis.call('ZSCORE', CAMP.index, camp)
      if last then redis.call('ZADD', CAMP.stopped, last, camp) else redis.call('ZREM', CAMP.stopped, camp) end
    end
  end
  ages_flush()
end

-- Ends an open delivery CANCELLED (the caller checked that it may: an open state, not held by a
-- live claim): it leaves every index, it becomes an outcome (_outcome.lua), it is counted, and
-- its Braze user gets its event (camp_event).
local function camp_cancel(id, reason)
  local key = CAMP.d .. id
  local rec = record_table(redis.call('HGETALL', key))
  local by_page = camp_cancelled[reason] or {}
  camp_cancelled[reason] = by_page
  by_page[rec.page_id or ''] = (by_page[rec.page_id or ''] or 0) + 1
  if rec.parked_at then
    redis.call('ZREM', CAMP.parked, id)
    redis.call('ZREM', CAMP.park .. rec.page_id .. ':' .. rec.psid, id)
  end
  redis.call('ZREM', CAMP.pending, id)
  ages_leave(CAMP.open_all, id, rec.created_at, rec.parked_at)
  redis.call('ZREM', CAMP.sched, id)
  camp_event(id, rec, S.CANCELLED, reason)
  -- no claim ended it: an earlier claim's token (`done`, kept by a retry) is not kept either
  rec.status, rec.updated_at, rec.external_id, rec.done = S.CANCELLED, CAMP.now, nil, nil
  rec.error = '{"reason":"' .. reason .. '","code":null,"subcode":null,"message":"' .. reason ..
    '","fbtrace_id":null}'
  outcome_write(CAMP.d, id, rec, tonumber(CAMP.now), CAMP.record_retention)
  local camp = camp_of(rec.campaign_id, rec.canvas_id)
  if camp then
    redis.call('ZREM', CAMP.open .. camp, id)
    camp_count(camp, S.CANCELLED)
  end
  local stats = CAMP.stats .. CAMP.minute .. ':' .. S.CANCELLED
  redis.call('INCRBY', stats, 1)
  redis.call('EXPIRE', stats, 3600)
end

-- What this call's camp_cancel ended, flat: {page_id, reason, count, ...} (claim.lua and
-- cancel.lua answer it; worker/store/scripts.py's cancels reads it for bmw_deliveries_total).
local function camp_cancels()
  local flat = {}
  for reason, by_page in pairs(camp_cancelled) do
    for page, n in pairs(by_page) do
      flat[#flat + 1], flat[#flat + 2], flat[#flat + 3] = page, reason, n
    end
  end
  return flat
end
