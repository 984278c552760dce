-- CLAIM: a worker takes the deliveries of one Celery message, under one fence token.
-- KEYS[1] pending zset; for a `worker.deliver_batch` message also KEYS[2] its batch list,
-- KEYS[3] the queue's gather pointer and KEYS[4] where this claim keeps the list it took.
-- ARGV[1] now, ARGV[2] lease seconds, ARGV[3] delivery key prefix (P:d:), ARGV[4] the claim's
-- fence token, ARGV[5] how long a taken list is kept (s), ARGV[6..22] the campaign context
-- (_campaign.lua), ARGV[23..] the ids (`worker.deliver`; a repeated id counts once) or the batch
-- id (`worker.deliver_batch`).
-- A batch list is taken whole (renamed to KEYS[4]; the gather pointer is cleared, so later
-- commits start a new batch); a second copy of the message finds nothing to take.
-- A delivery is claimed when it is CLAIMABLE, due (not_before <= now) and not held (no lease, or
-- a lease that ended: its holder stopped renewing it). It becomes IN_FLIGHT with claim = the
-- token, previous = its status before, lease_until = now + lease; its pending deadline (just
-- after the lease) is the claim's for a batch (one entry), its own for named ids.
-- A claimable delivery of a stopped campaign (P:campstop), or one an operator asked to cancel
-- while it was held (`cancel`), is not claimed: it ends CANCELLED here, without a Graph call.
-- The same call sent again with the same token (its answer was lost) takes back the same
-- deliveries: a delivery whose claim is already this token is returned again.
-- Returns {ids looked at, cancels, id claimed, ...}: one HMGET per id of what decides; the worker
-- reads the records it claimed itself (worker/store/records.py's read_claimed), so a record does
-- not travel through Lua strings and back (about a third of this script's instructions).
-- `cancels`: what this call ended CANCELLED, {page_id, reason, count, ...} per page and reason
-- (operator, campaign_stopped; _campaign.lua's camp_cancels), empty when none: the worker counts
-- them in bmw_deliveries_total, as it counts the outcomes it writes itself.
--!include _campaign.lua
local now = tonumber(ARGV[1])
local lease = now + tonumber(ARGV[2])
-- as text once: a Lua number handed to redis.call is formatted (%.17g) on every call, about 4k
-- instructions each
local lease_at = string.format('%.17g', lease)
local token = ARGV[4]
camp_init(6)
local ids
if #KEYS == 4 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('RENAME', KEYS[2], KEYS[4])
    redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
  end
  ids = redis.call('LRANGE', KEYS[4], 0, -1)
  if redis.call('GET', KEYS[3]) == ARGV[23] then redis.call('DEL', KEYS[3]) end
else
  -- named ids, each once: the scheduler may release an id and sweep it in one round, and the
  -- same-token rule below would hand a repeat out a second time (two sends)
  ids = {}
  local named = {}
  for i = 23, #ARGV do
    if not named[ARGV[i]] then
      named[ARGV[i]] = true
      ids[#ids + 1] = ARGV[i]
    end
  end
end
local out = {#ids, {}}  -- out[2]: the cancels, at the end
local leased = {}  -- pending ZADD members, sent once (_bulk.lua)
-- what decides; a delivery's campaign matters here only while some campaign is stopped (one
-- EXISTS per call)
local stops = redis.call('EXISTS', CAMP.stopped) == 1
local wanted = {'status', 'claim', 'lease_until', 'not_before', 'cancel'}
if stops then wanted[6], wanted[7] = 'campaign_id', 'canvas_id' end
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local h = redis.call('HMGET', key, unpack(wanted))
  local status, cancel = h[1], h[5]
  local camp = stops and camp_of(h[6], h[7]) or nil
  if h[2] == token and status == S.IN_FLIGHT then
    table.insert(out, id)
  elseif status and CLAIMABLE[status] and tonumber(h[3] or '0') <= now
      and (cancel == '1' or (camp and camp_stopped(camp))) then
    camp_cancel(id, cancel == '1' and 'operator' or 'campaign_stopped')
  elseif status and CLAIMABLE[status] and tonumber(h[4] or '0') <= now and tonumber(h[3] or '0') <= now then
    table.insert(out, id)
    redis.call('HSET', key, 'status', S.IN_FLIGHT, 'previous', status, 'claim', token, 'lease_until', lease_at)
    leased[#leased + 1] = lease + 1
    leased[#leased + 1] = id
  end
end
if #KEYS == 4 then
  -- the batch's deadline becomes the claim's: `t:{batch}:{token}`, until the lease (renewed by
  -- the heartbeat, renew.lua), removed when the worker is done with every delivery it holds
  -- (the sweeper looks at the ids of one that stays past it: sweep.lua); the taken list lives
  -- as long as it does. A claim that holds nothing leaves the list to expire.
  redis.call('ZREM', KEYS[1], 'b:' .. ARGV[23])
  if #out > 2 then  -- it claimed some
    redis.call('ZADD', KEYS[1], lease + 1, 't:' .. ARGV[23] .. ':' .. token)
    redis.call('PERSIST', KEYS[4])
  end
else
  bulk('ZADD', KEYS[1], leased)
end
camp_flush()
out[2] = camp_cancels()
return out
