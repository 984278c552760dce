-- RECEIPTS: Messenger's delivery and read webhooks mark sent deliveries delivered_at / read_at.
-- ARGV[1..17] the campaign context (_campaign.lua), ARGV[18] unread bucket prefix (P:u:),
-- ARGV[19] the previous version's unread set prefix (P:unread:), ARGV[20] the Braze outbox for
-- receipt events ('' = BRAZE_RECEIPT_EVENTS is off), then per event: kind ('delivery' or
-- 'read'), page id, PSID, watermark (epoch s, '' = none), its time (epoch s), that time as a
-- Braze event's (ISO 8601), n, and n message ids (mids).
-- The recipient's unread deliveries are its field in the unread buckets (_unread.lua: after a
-- change of RECORD_RETENTION, those of the windows numbered by the one before too), and the
-- members of its unread set from before buckets, while one remains.
-- delivery: each unread delivery whose message_id is one of the mids (the newest MID_SCAN
--           looked at), and every one sent at or before the watermark, gets delivered_at (the
--           watermark, else the event's time). No key per mid: the unread deliveries are the index
-- read:     every unread delivery sent at or before the watermark gets delivered_at (if it had
--           none) and read_at; they stop being unread, and the Braze user kept for the receipt
--           events is dropped from their record
-- A sent delivery's record is its outcome (_outcome.lua), read in the hour bucket its unread
-- entry names (else looked for in the hours it may have ended in); a record written before
-- outcomes is its compacted hash.
-- Only SENT records are marked, each once (a replayed webhook changes nothing); each mark is
-- counted in the delivery's campaign (delivered, read).
-- Each new mark of a delivery with a Braze user becomes its `messenger_delivered` or
-- `messenger_read` event (worker/braze/items.py's receipt_event_item, the same shape: the
-- receipt's time, the delivery id, its campaign fields) in the outbox, in this script: a
-- webhook's events applied again (Meta's retry, the inbound task's) add none, and none is lost
-- between the mark and its event.
-- Returns a JSON list of the new marks: [delivery id, 'delivered' or 'read', seconds since it was
-- sent].
--!include _campaign.lua
--!include _unread.lua
camp_init(1)
local out = {}

-- A delivery's record for the receipts: its outcome (bucket key, fields), or for a record
-- written before outcomes (a compacted hash: it expires with its retention) its hash. An unread
-- entry names its outcome's hour: the outcome is there, or gone with its retention.
local function find(id, hour)
  if hour then
    local key, field, rec = outcome_in(CAMP.d, id, hour)
    return key and {key, field}, rec
  end
  local key, field, rec = outcome_find(CAMP.d, id, tonumber(CAMP.now), CAMP.record_retention)
  if key then return {key, field}, rec end
  local flat = redis.call('HGETALL', CAMP.d .. id)
  if #flat > 0 then return nil, record_table(flat) end
  return nil, nil
end

-- Marks one found record (its place, {bucket key, field}, or nil for a hash; its fields) and
-- saves it. `forget` drops the Braze user kept for the receipt events (a read receipt: the last
-- one).
local event_time = ''  -- the current event's, as a Braze event's time
local function mark(id, place, rec, field, at, forget)
  if not rec or rec.status ~= S.SENT then return end
  local fresh = not rec[field]
  if not fresh and not (forget and rec.external_id) then return end
  if fresh then rec[field] = at end
  local user = rec.external_id
  if forget then rec.external_id = nil end
  if place then
    redis.call('HSET', place[1], place[2], outcome_pack(rec))
  else
    if fresh then redis.call('HSET', CAMP.d .. id, field, at) end
    if forget then redis.call('HDEL', CAMP.d .. id, 'external_id') end
  end
  if not fresh then return end
  local attribution = {}
  for _, name in ipairs(ATTRIBUTION) do
    if rec[name] then attribution[name] = rec[name] end
  end
  local camp = camp_of(rec.campaign_id, rec.canvas_id)
  local name = field == 'read_at' and 'read' or 'delivered'
  if camp then camp_count(camp, name) end
  if ARGV[20] ~= '' and user and user ~= '' then
    attribution.delivery_id = id
    redis.call('LPUSH', ARGV[20], cjson.encode({type = 'event', external_id = user,
      name = 'messenger_' .. name, time = event_time, properties = attribution}))
  end
  table.insert(out, {id, name, math.max(0, tonumber(at) - tonumber(rec.sent_at or at))})
end

-- An unread entry sent at or before `mark_to`, with its record (bucket key, fields): an entry
-- of this layout names no send time, its outcome has it (an entry from before, or a member of an
-- old set, has its own).
local function due(e, mark_to)
  local key, rec = find(e.id, e.hour)
  local sent = e.sent or (rec and tonumber(rec.sent_at or ''))
  return sent ~= nil and sent <= mark_to, key, rec
end

local MID_SCAN = 200
local now, retention = tonumber(CAMP.now), CAMP.record_retention
local spans = unread_spans(ARGV[18], now, retention)
local i = 21
while i <= #ARGV do
  local kind, page, psid, wm, at, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 6])
  event_time = ARGV[i + 5]
  local when = wm ~= '' and wm or at
  local mark_to = wm ~= '' and tonumber(wm) or nil
  -- the unread deliveries, oldest first: the buckets', then the set's from before buckets
  local list = unread_list(ARGV[18], page, psid, now, spans)
  local before = ARGV[19] .. page .. ':' .. psid
  local old = redis.call('ZRANGE', before, 0, -1, 'WITHSCORES')
  for j = 1, #old, 2 do list[#list + 1] = {id = old[j], sent = tonumber(old[j + 1])} end
  if kind == 'delivery' then
    if n > 0 then
      local wanted = {}
      for j = 1, n do wanted[ARGV[i + 6 + j]] = true end
      local scanned = 0
      for j = #list, 1, -1 do
        if scanned >= MID_SCAN then break end
        scanned = scanned + 1
        local key, rec = find(list[j].id, list[j].hour)
        if rec and wanted[rec.message_id or ''] then mark(list[j].id, key, rec, 'delivered_at', when, false) end
      end
    end
    if mark_to then
      for _, e in ipairs(list) do
        local ok, key, rec = due(e, mark_to)
        if ok then mark(e.id, key, rec, 'delivered_at', when, false) end
      end
    end
  elseif kind == 'read' and mark_to then
    local gone = {}
    for _, e in ipairs(list) do
      local ok, key, rec = due(e, mark_to)
      if ok then
        mark(e.id, key, rec, 'delivered_at', when, false)
        mark(e.id, key, rec, 'read_at', when, true)
        gone[e.id] = true
      elseif not rec and e.hour then
        gone[e.id] = true  -- its outcome is gone with its retention: nothing left to mark
      end
    end
    if next(gone) then unread_drop(list, gone) end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', before, '-inf', wm) end
  end
  i = i + 7 + n
end
camp_flush()
return cjson.encode(out)
