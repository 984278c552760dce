-- RECEIPTS: Messenger's delivery and read webhooks mark sent deliveries delivered_at / read_at.
-- ARGV[1..15] the campaign context (_campaign.lua), ARGV[16] unread prefix (P:unread:), then
-- per event: kind ('delivery' or 'read'), page id, PSID, watermark (epoch s, '' = none), its
-- time (epoch s), n, and n message ids (mids).
-- delivery: each delivery of the recipient's unread set whose message_id is one of the mids
--           (at most MID_SCAN of them looked at: a recipient's unread sends of the retention),
--           and every one sent at or before the watermark, gets delivered_at (the watermark,
--           else the event's time). No key per mid: the unread set is the index
-- read:     every delivery of the unread set sent at or before the watermark gets delivered_at
--           (if it had none) and read_at; they leave the unread set, and the Braze user kept for
--           the receipt events is dropped from their record
-- A sent delivery's record is its outcome (_outcome.lua), found in the buckets of the hours it
-- may have ended in; a record written before outcomes is its compacted hash.
-- Only SENT records are marked, each once (a replayed webhook changes nothing); each mark is
-- counted in the delivery's campaign (delivered, read).
-- Returns a JSON list of the new marks: [delivery id, 'delivered' or 'read', seconds since it was
-- sent, external_id or '', {attribution}].
--!include _campaign.lua
camp_init(1)
local out = {}

-- A delivery's record for the receipts: its outcome (bucket key, fields), or for a record
-- written before outcomes (a compacted hash: it expires with its retention) its hash.
local function find(id)
  local key, rec = outcome_find(CAMP.d, id, tonumber(CAMP.now), CAMP.record_retention)
  if key then return key, rec end
  local flat = redis.call('HGETALL', CAMP.d .. id)
  if #flat > 0 then return nil, as_table(flat) end
  return nil, nil
end

-- Marks one found record (bucket key or nil for a hash; its fields) and saves it. `forget` drops
-- the Braze user kept for the receipt events (a read receipt: the last one).
local function mark(id, key, rec, field, at, forget)
  if not rec or rec.status ~= S.SENT then return end
  local fresh = not rec[field]
  if not fresh and not (forget and rec.external_id) then return end
  if fresh then rec[field] = at end
  local user = rec.external_id
  if forget then rec.external_id = nil end
  if key then
    redis.call('HSET', key, id, outcome_pack(rec))
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
  table.insert(out, {id, name, math.max(0, tonumber(at) - tonumber(rec.sent_at or at)), user or '', attribution})
end

local MID_SCAN = 200
local i = 17
while i <= #ARGV do
  local kind, page, psid, wm, at, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5])
  local unread = ARGV[16] .. page .. ':' .. psid
  local when = wm ~= '' and wm or at
  if kind == 'delivery' then
    if n > 0 then
      local wanted = {}
      for j = 1, n do wanted[ARGV[i + 5 + j]] = true end
      for _, id in ipairs(redis.call('ZREVRANGE', unread, 0, MID_SCAN - 1)) do
        local key, rec = find(id)
        if rec and wanted[rec.message_id or ''] then mark(id, key, rec, 'delivered_at', when, false) end
      end
    end
    if wm ~= '' then
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', unread, '-inf', wm)) do
        local key, rec = find(id)
        mark(id, key, rec, 'delivered_at', when, false)
      end
    end
  elseif kind == 'read' and wm ~= '' then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', unread, '-inf', wm)) do
      local key, rec = find(id)
      mark(id, key, rec, 'delivered_at', when, false)
      mark(id, key, rec, 'read_at', when, true)
    end
    redis.call('ZREMRANGEBYSCORE', unread, '-inf', wm)
  end
  i = i + 6 + n
end
camp_flush()
return cjson.encode(out)
