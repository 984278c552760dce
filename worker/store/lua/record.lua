-- RECORD: outcomes of claimed deliveries, each written only under its claim's fence token.
-- KEYS[1] pending, KEYS[2] P:open (the open deliveries' ages derive from it: _ages.lua),
-- KEYS[3] sched, KEYS[4] dead, KEYS[5] parked (zsets).
-- ARGV[1] now, ARGV[2] delivery key prefix (P:d:), ARGV[3] park key prefix (P:park:),
-- ARGV[4] stats key prefix (P:stats:), ARGV[5] final record retention (s), ARGV[6] this minute,
-- ARGV[7] history key prefix (P:hist:), ARGV[8] a history's TTL (s), ARGV[9] its entries kept,
-- ARGV[10] unread bucket prefix (P:u:), ARGV[11..27] the campaign context (_campaign.lua), then
-- per delivery:
-- id, fence token, status, its outcome's value when it ends here as an outcome ('' = none:
-- packed by the worker from the record it claimed, outcome_value in worker/delivery/recorder.py)
-- and its field then (the id's raw bytes: worker/store/outcomes.py's field, _outcome.lua's
-- outcome_field), where a sent one joins its recipient's unread deliveries ('' = it does not:
-- worker/store/unread.py's locator and entry, _unread.lua's unread_add), its created_at as
-- stored, the rest ('' when all of it is empty, as for a first-try send; else a MessagePack
-- array: due ('' = none), pending deadline ('' = none), a history entry ('' = none), a failure
-- class ('' = none: "{status}:{reason}" counted in P:stats:{minute}:reasons), reason
-- ('' = none), '1' when it was parked when claimed, its campaign ('' = none), "{page}:{psid}"
-- when it is or was parked ('' otherwise), its `messenger_delivery` Braze event ('' = none:
-- written to the outbox, CAMP.events, with a fresh write only)), n, and n field/value pairs (none with an outcome's
-- value: it holds them). created_at, parked, the campaign and the park are what the worker
-- read of the record after its claim: none of them changes while the claim is held, and only
-- the claim's holder gets past the fence, so the script reads only the fence and `cancel`.
-- The history entry and the failure class are written only with a fresh write (never twice,
-- whatever retries the call: the caller re-sends a pipeline whose answer it lost).
-- The token must be the record's claim; then the fields are written, the claim is cleared and
-- `done` remembers the token, so a retried call (its answer lost) is recognised, not refused.
-- By status (worker/states.py):
--   FINAL      leaves pending, sched, any park and its campaign's open index, and its second's
--              count of open deliveries (unless parked: not counted there); counted per
--              minute (`P:stats:`) and in its campaign (status, failed:{reason}); a dead letter
--              joins `dead` and keeps its body (replayable) with no expiry; any other final
--              delivery leaves its hash and becomes the outcome the worker built (_outcome.lua;
--              RECORD_RETENTION after its hour);
--              a sent one drops an earlier error, and joins its
--              recipient's unread deliveries (_unread.lua) for the receipts (which find a
--              receipt's mids there: no key per message id). Sent while its campaign
--              is stopped (a call that started before the worker saw the stop): sent_after_stop
--   open, while its campaign is stopped or an operator cancelled it (`cancel`): CANCELLED
--              instead (_campaign.lua's camp_cancel), answered 3 (its campaign stopped) or 4
--              (an operator's cancel)
--   PARKED     joins the recipient's park and `parked` (score: accepted at), and leaves its
--              second's count of open deliveries
--   otherwise  waits in sched until `due` when one is given
--   open       pending deadline = the given one
-- Returns per delivery: 1 written, 3 or 4 written as CANCELLED, 2 already written under this token
-- (its hash's `done`, or its outcome's digest of it),
-- 0 refused (the claim is another worker's now: this one's lease ended).
--!include _campaign.lua
--!include _unread.lua
local now = tonumber(ARGV[1])
local retention = tonumber(ARGV[5])
camp_init(11)
unread_spans(ARGV[10], now, retention)  -- notes a change of RECORD_RETENTION for the receipts
local window = nil  -- the unread entries' (unread_window), with the first
local counts = {}
local out = {}
local ended = {}  -- final deliveries: leave pending and sched in one ZREM each (_bulk.lua)
local reasons = ARGV[4] .. ARGV[6] .. ':reasons'
local i = 28
while i <= #ARGV do
  local id, token, status, value, field = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local named, created, rest, n = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  n = n == '0' and 0 or tonumber(n)  -- no strtod for the common case
  local first, last = i + 9, i + 8 + 2 * n  -- the field/value pairs
  local due, deadline, entry, class, reason, parked, camp, park = '', '', '', '', '', false, nil, ''
  local event = ''
  if rest ~= '' then
    local r = cmsgpack.unpack(rest)
    due, deadline, entry, class, reason, park, event = r[1], r[2], r[3], r[4], r[5], r[8], r[9]
    parked = r[6] == '1'
    if r[7] ~= '' then camp = r[7] end
  end
  local key = ARGV[2] .. id
  -- the fence alone (one field: no reply table); `cancel` only where it decides (an open
  -- outcome), `done` only when the fence is not this claim's
  local claim = redis.call('HGET', key, 'claim')
  if claim == token then
    if value ~= '' then  -- it ends as an outcome: the hash goes
      outcome_store(ARGV[2], id, value, now, retention, false, field)
    else
      redis.call('HSET', key, 'claim', '', 'lease_until', 0, 'done', token, 'status', status,
        'updated_at', ARGV[1], unpack(ARGV, first, last))
    end
    if entry ~= '' then
      local h = ARGV[7] .. id
      redis.call('RPUSH', h, entry)
      redis.call('LTRIM', h, -tonumber(ARGV[9]), -1)
      redis.call('EXPIRE', h, tonumber(ARGV[8]))
    end
    if class ~= '' then
      redis.call('HINCRBY', reasons, class, 1)
      redis.call('EXPIRE', reasons, 3600)
    end
    if FINAL[status] then
      if parked then  -- it leaves its recipient's park
        redis.call('ZREM', KEYS[5], id)
        redis.call('ZREM', ARGV[3] .. park, id)
      end
      ages_leave(KEYS[2], id, created, parked)
      ended[#ended + 1] = id
      if named ~= '' then
        window = window or unread_window(ARGV[10], now, retention)
        unread_add(window, named)
      end
      if KEEPS_BODY[status] then
        redis.call('ZADD', KEYS[4], now, id)
        redis.call('HDEL', key, 'parked_at', 'not_before', 'slot_at')
        redis.call('PERSIST', key)
      end
      counts[status] = (counts[status] or 0) + 1
      if event ~= '' and CAMP.events ~= '' then redis.call('LPUSH', CAMP.events, event) end
      if camp then
        redis.call('ZREM', CAMP.open .. camp, id)
        camp_count(camp, status)
        if status == S.FAILED and reason ~= '' then camp_count(camp, 'failed:' .. reason) end
        if status == S.SENT and camp_stopped(camp) then camp_count(camp, 'sent_after_stop') end
      end
      table.insert(out, 1)
    else
      local cancel = redis.call('HGET', key, 'cancel') == '1'  -- asked while it was held
      if cancel or (camp and camp_stopped(camp)) then
        camp_cancel(id, cancel and 'operator' or 'campaign_stopped')
        table.insert(out, cancel and 4 or 3)
      else
        if status == S.PARKED then
          ages_leave(KEYS[2], id, created, parked)
          redis.call('HSET', key, 'parked_at', ARGV[1])
          redis.call('ZADD', ARGV[3] .. park, tonumber(created), id)
          redis.call('ZADD', KEYS[5], tonumber(created), id)
        elseif due ~= '' then
          redis.call('ZADD', KEYS[3], tonumber(due), id)
        end
        if deadline ~= '' then redis.call('ZADD', KEYS[1], tonumber(deadline), id) end
        table.insert(out, 1)
      end
    end
  else
    local done = redis.call('HGET', key, 'done')
    if done == token then
      table.insert(out, 2)
    elseif not claim and not done and outcome_done(ARGV[2], id, now, retention, token) then
      table.insert(out, 2)  -- it ended under this token: its hash is an outcome now
    else
      table.insert(out, 0)
    end
  end
  i = last + 1
end
if #ended > 0 then
  bulk('ZREM', KEYS[1], ended)
  bulk('ZREM', KEYS[3], ended)
end
for status, count in pairs(counts) do
  local k = ARGV[4] .. ARGV[6] .. ':' .. status
  redis.call('INCRBY', k, count)
  redis.call('EXPIRE', k, 3600)
end
camp_flush()
return out
