-- ACCEPT: the intake's group commit, one call per batch of requests.
-- KEYS[1] pending zset, KEYS[2] Celery queue list, KEYS[3] open zset, KEYS[4] the queue's gather
-- pointer (P:gather:{queue}).
-- ARGV[1] now, ARGV[2] idempotency ttl, ARGV[3] sweep_after, ARGV[4] idempotency key prefix
-- (P:idem:), ARGV[5] delivery key prefix (P:d:), ARGV[6] batch key prefix (P:batch:),
-- ARGV[7] the Celery message of a new batch (`worker.deliver_batch(ARGV[8])`, serialised),
-- ARGV[8] the new batch's id, ARGV[9] QUEUE_BATCH_MAX, ARGV[10] a batch list's TTL (s),
-- ARGV[11] fields per item (F), ARGV[12..26] the campaign context (_campaign.lua), then from
-- ARGV[27] F values per item:
--   id, idempotency key ('' for none; scoped by the intake to the caller and the page), page_id,
--   psid (the recipient's store key: worker/messenger/recipients.py), body, caller (the sending
--   token's public id: who may read the delivery), fallbacks (JSON list of routes: tag:<TAG>,
--   utility:<name>), request id, Braze external_id ('' for none), the utility template (JSON, ''
--   for none), then the attribution (ATTRIBUTION: campaign_id, canvas_id, canvas_step_id,
--   variation_id, send_id; '' for none). No token is ever stored.
-- A delivery of a campaign that is stopped (P:campstop) is not queued: it is written as a
-- CANCELLED outcome (_outcome.lua) and its item's answer is '-'. Every other item with a
-- campaign joins the campaign's open index; both are counted (accepted, cancelled).
-- Each accepted item becomes a QUEUED record, in pending (deadline now + sweep_after) and open.
-- Returns, per item, '' when accepted, '-' when cancelled (its campaign is stopped), or the
-- existing delivery id for a repeated idempotency key.
-- The accepted ids join the queue's newest batch while it is still queued (its list exists: no
-- worker has taken it) and has room for them all; otherwise they start a new batch and its
-- message is pushed. A backlog thus travels in messages of up to QUEUE_BATCH_MAX ids, while an
-- idle queue still gets one message per commit. The list outlives sweep_after, so a message
-- that is lost leaves its ids to the sweeper (their pending deadline), never to nobody.
--!include _campaign.lua
local now = ARGV[1]
local idem_ttl = tonumber(ARGV[2])
local deadline = tonumber(now) + tonumber(ARGV[3])
local cap = tonumber(ARGV[9])
local ttl = tonumber(ARGV[10])
local per = tonumber(ARGV[11])
local OPTIONAL = {fallbacks = 6, external_id = 8, utility = 9}  -- ARGV[i + n]; '' or [] = none
local out = {}
local accepted = {}
local pending, opened = {}, {}  -- ZADD members, sent once each (_bulk.lua)
camp_init(12)
local i = 27
while i <= #ARGV do
  local id = ARGV[i]
  local idem = ARGV[i + 1]
  local existing = false
  if idem ~= '' then
    local key = ARGV[4] .. idem
    if redis.call('SET', key, id, 'NX', 'EX', idem_ttl) == false then
      existing = redis.call('GET', key)
    end
  end
  local attr = {}
  for k, name in ipairs(ATTRIBUTION) do
    local v = ARGV[i + 9 + k]
    if v ~= '' then
      table.insert(attr, name)
      table.insert(attr, v)
    end
  end
  local camp = camp_of(ARGV[i + 10], ARGV[i + 11])
  if existing then
    table.insert(out, existing)
  elseif camp and camp_stopped(camp) then
    local rec = {status = S.CANCELLED, page_id = ARGV[i + 2], caller = ARGV[i + 5],
      request_id = ARGV[i + 7], created_at = now, updated_at = now, attempts = '0',
      error = '{"reason":"campaign_stopped","code":null,"subcode":null,"message":"campaign_stopped","fbtrace_id":null}'}
    for k = 1, #attr, 2 do rec[attr[k]] = attr[k + 1] end
    outcome_write(ARGV[5], id, rec, tonumber(now), CAMP.record_retention, true)
    camp_count(camp, 'accepted')
    camp_count(camp, S.CANCELLED)
    table.insert(out, '-')
  else
    if camp then
      redis.call('ZADD', CAMP.open .. camp, now, id)
      camp_count(camp, 'accepted')
    end
    -- only what the delivery has: no empty optional fields, no attempts (0) and no updated_at
    -- (= created_at) until they change, and not the idempotency key (its own key holds it)
    local rec = {'status', S.QUEUED, 'page_id', ARGV[i + 2], 'psid', ARGV[i + 3], 'body', ARGV[i + 4],
      'caller', ARGV[i + 5], 'request_id', ARGV[i + 7], 'created_at', now}
    for name, n in pairs(OPTIONAL) do
      local v = ARGV[i + n]
      if v ~= '' and v ~= '[]' then
        rec[#rec + 1] = name
        rec[#rec + 1] = v
      end
    end
    for _, v in ipairs(attr) do rec[#rec + 1] = v end
    redis.call('HSET', ARGV[5] .. id, unpack(rec))
    pending[#pending + 1] = deadline
    pending[#pending + 1] = id
    opened[#opened + 1] = now
    opened[#opened + 1] = id
    table.insert(accepted, id)
    table.insert(out, '')
  end
  i = i + per
end
if #accepted > 0 then
  bulk('ZADD', KEYS[1], pending)
  bulk('ZADD', KEYS[3], opened)
  local batch = nil
  local newest = redis.call('GET', KEYS[4])
  if newest then
    local key = ARGV[6] .. newest
    local n = redis.call('LLEN', key)
    if n > 0 and n + #accepted <= cap then batch = key end
  end
  if not batch then
    batch = ARGV[6] .. ARGV[8]
    redis.call('LPUSH', KEYS[2], ARGV[7])
    redis.call('SET', KEYS[4], ARGV[8], 'EX', ttl)
  end
  redis.call('RPUSH', batch, unpack(accepted))
  redis.call('EXPIRE', batch, ttl)
end
camp_flush()
return out
