-- REPLAY: dead letters back to the queue (DEAD -> QUEUED). KEYS[1] dead, KEYS[2] pending,
-- KEYS[3] P:open (a replayed delivery is counted in the open deliveries' ages of its new
-- acceptance second: _ages.lua). ARGV[1] now, ARGV[2] sweep_after, ARGV[3] delivery key prefix (P:d:),
-- ARGV[4..20] the campaign context (_campaign.lua), ARGV[21..] ids. A replayed delivery of a
-- campaign rejoins its open index and moves from its campaign's `dead` to `replayed` (so the
-- counters still add up); a stopped campaign's delivery is cancelled when it is claimed. Attempts,
-- failures and routes tried start afresh, a cancel asked while it was held is dropped (a
-- replay after it is the operator's later word), the TTL clock restarts (the first
-- acceptance is kept in first_created_at) and the error stays until a new outcome replaces it.
-- Only a delivery that is still DEAD is touched, so replaying twice sends nothing twice.
-- A dead letter outlives its campaign's counters (no expiry against CAMPAIGN_RETENTION): when
-- its death is not counted in the campaign's hash (the hash expired since, perhaps made anew by
-- later activity: it began after the death), the replay takes nothing from `dead` and counts the
-- delivery `accepted` instead, so a campaign that comes back holds what is known (accepted 1,
-- open 1, replayed 1), the counters still add up and none goes negative.
-- Returns the ids replayed.
--!include _campaign.lua
local now = tonumber(ARGV[1])
camp_init(4)

-- Whether the campaign's `dead` still counts this letter, that died at `died` (its score in
-- KEYS[1]; false if it has none), net of what this call already took from it.
local function camp_counts_dead(camp, died)
  local first, dead = unpack(redis.call('HMGET', CAMP.prefix .. camp, 'first_at', S.DEAD))
  if first and died and tonumber(died) < tonumber(first) then return false end
  local taken = camp_counts[camp] and camp_counts[camp][S.DEAD] or 0
  return (tonumber(dead) or 0) + taken > 0
end

local out = {}
for i = 21, #ARGV do
  local id = ARGV[i]
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'status') == S.DEAD then
    local first = redis.call('HGET', key, 'first_created_at') or redis.call('HGET', key, 'created_at')
    redis.call('HSET', key, 'status', S.QUEUED, 'attempts', 0, 'failures', 0, 'not_before', 0,
      'lease_until', 0, 'claim', '', 'created_at', now, 'first_created_at', first,
      'updated_at', now, 'active_route', '', 'routes_tried', '[]')
    -- a cancel asked while it was last held is spent: the replay is the operator's word now
    redis.call('HDEL', key, 'active_tag', 'tags_tried', 'cancel')
    redis.call('HINCRBY', key, 'replays', 1)
    redis.call('PERSIST', key)
    local died = redis.call('ZSCORE', KEYS[1], id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
    ages_join(KEYS[3], id, now, true)  -- a dead letter had left every count
    local camp = camp_of(redis.call('HGET', key, 'campaign_id'), redis.call('HGET', key, 'canvas_id'))
    if camp then
      redis.call('ZADD', CAMP.open .. camp, now, id)
      if camp_counts_dead(camp, died) then
        camp_count(camp, S.DEAD, -1)
      else
        camp_count(camp, 'accepted')  -- its first acceptance went with the hash that counted it
      end
      camp_count(camp, 'replayed')
    end
    table.insert(out, id)
  end
end
camp_flush()
return out
