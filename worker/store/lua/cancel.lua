-- CANCEL: open deliveries end CANCELLED without a Graph call (an operator: `campaigns stop`,
-- `deliveries cancel`). ARGV[1..17] the campaign context (_campaign.lua), ARGV[18] the reason
-- (campaign_stopped, operator, purged), ARGV[19] the mode:
--   'campaign': ARGV[20] the campaign id, ARGV[21] offset, ARGV[22] limit: looks at that slice of
--               the campaign's open index (P:campopen:{id}, oldest first);
--   'ids':      ARGV[20..] delivery ids.
-- A delivery in an open state that no claim holds is cancelled (camp_cancel: it leaves
-- pending, open, sched, parks and its campaign's index; an outcome, RECORD_RETENTION). One a
-- worker claimed (IN_FLIGHT) is left to that worker: in 'ids' mode it is marked `cancel`, so
-- record.lua and claim.lua cancel it at its next outcome unless it was sent; in 'campaign' mode
-- the stop itself (P:campstop) does that. Its lease is not looked at: after a Redis stall a live
-- holder may not have renewed it yet while its call is under way (cancelling it here would
-- record a sent message as cancelled); a holder that died leaves it to the sweeper, and the
-- claim that takes it next ends it cancelled without a call. An index member whose record is gone
-- or final leaves the index.
-- Returns {cancelled, held, looked at, {page_id, reason, count, ...}}: the last, what it
-- cancelled per page (_campaign.lua's camp_cancels, as claim.lua answers it), for the caller's
-- bmw_deliveries_total.
--!include _campaign.lua
camp_init(1)
local reason, mode = ARGV[18], ARGV[19]
local ids
local camp_index = nil
if mode == 'campaign' then
  camp_index = CAMP.open .. ARGV[20]
  local offset = tonumber(ARGV[21])
  ids = redis.call('ZRANGE', camp_index, offset, offset + tonumber(ARGV[22]) - 1)
else
  ids = {unpack(ARGV, 20)}
end
local cancelled, held = 0, 0
for _, id in ipairs(ids) do
  local st = redis.call('HMGET', CAMP.d .. id, 'status')
  if st[1] and OPEN[st[1]] then
    if st[1] == S.IN_FLIGHT then
      held = held + 1
      if mode == 'ids' then redis.call('HSET', CAMP.d .. id, 'cancel', '1') end
    else
      camp_cancel(id, reason)
      cancelled = cancelled + 1
    end
  elseif camp_index then
    redis.call('ZREM', camp_index, id)
  end
end
camp_flush()
return {cancelled, held, #ids, camp_cancels()}
