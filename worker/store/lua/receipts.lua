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
-- Only SENT records are marked, each once (a replayed webhook changes nothing); each mark is
-- counted in the delivery's campaign (delivered, read).
-- Returns a JSON list of the new marks: [delivery id, 'delivered' or 'read', seconds since it was
-- sent, external_id or '', {attribution}].
--!include _campaign.lua
camp_init(1)
local out = {}

local function mark(id, field, at)
  local key = CAMP.d .. id
  local rec = redis.call('HMGET', key, 'status', field, 'sent_at', 'external_id', unpack(ATTRIBUTION))
  if rec[1] ~= S.SENT or rec[2] then return end
  redis.call('HSET', key, field, at)
  local attribution = {}
  for k, name in ipairs(ATTRIBUTION) do
    if rec[4 + k] then attribution[name] = rec[4 + k] end
  end
  local camp = camp_of(rec[5], rec[6])
  local name = field == 'read_at' and 'read' or 'delivered'
  if camp then camp_count(camp, name) end
  table.insert(out, {id, name, math.max(0, tonumber(at) - tonumber(rec[3] or at)), rec[4] or '', attribution})
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
        if wanted[redis.call('HGET', CAMP.d .. id, 'message_id') or ''] then mark(id, 'delivered_at', when) end
      end
    end
    if wm ~= '' then
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', unread, '-inf', wm)) do mark(id, 'delivered_at', when) end
    end
  elseif kind == 'read' and wm ~= '' then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', unread, '-inf', wm)) do
      mark(id, 'delivered_at', when)
      mark(id, 'read_at', when)
      redis.call('HDEL', CAMP.d .. id, 'external_id')
    end
    redis.call('ZREMRANGEBYSCORE', unread, '-inf', wm)
  end
  i = i + 6 + n
end
camp_flush()
return cjson.encode(out)
