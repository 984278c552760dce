-- DEAD_MOVE_IN: a dead letter arrives from another shard (its page lives here now: `shards move`;
-- worker/store/deadletters.py's move). KEYS[1] dead, KEYS[2] the record (P:d:{id}), KEYS[3] its
-- history (P:hist:{id}). ARGV[1] the id, ARGV[2] when it died (its score in the other shard's
-- `dead`), ARGV[3] its campaign ('' = none), ARGV[4] '1' when its death is counted in the
-- campaign's counters there (the other shard takes it out when it lets the letter go:
-- dead_move_out.lua), ARGV[5] campaign prefix (P:camp:), ARGV[6] the campaigns index (P:camps),
-- ARGV[7] CAMPAIGN_RETENTION, ARGV[8] now, ARGV[9] the history's remaining time (ms, 0 = none),
-- ARGV[10] n, n field/value pairs of the record as the other shard holds it, then the history's
-- entries, oldest first.
-- Nothing is written when this shard has the record already (an earlier move that stopped before
-- the other shard let it go, or the delivery itself: replayed here since): answered 0. Else the
-- record, its place in `dead` (the time of its death) and its history are written, and a counted
-- death is counted here: `accepted` and `dead` + 1, and `first_at` no later than the death, so
-- that a replay here takes it from `dead` (replay.lua) as it would have there. Answered 1.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local n = tonumber(ARGV[10])
local fields = {}
for i = 11, 10 + 2 * n do table.insert(fields, ARGV[i]) end
if n == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local history = {}
for i = 11 + 2 * n, #ARGV do table.insert(history, ARGV[i]) end
if #history > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('RPUSH', KEYS[3], unpack(history))
  if tonumber(ARGV[9]) > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[9]) end
end
if ARGV[3] ~= '' and ARGV[4] == '1' then
  local key = ARGV[5] .. ARGV[3]
  redis.call('HINCRBY', key, 'accepted', 1)
  redis.call('HINCRBY', key, S.DEAD, 1)
  local first = redis.call('HGET', key, 'first_at')
  if not first or tonumber(first) > tonumber(ARGV[2]) then redis.call('HSET', key, 'first_at', ARGV[2]) end
  redis.call('HSET', key, 'last_at', ARGV[8])
  redis.call('EXPIRE', key, tonumber(ARGV[7]))
  redis.call('ZADD', ARGV[6], tonumber(ARGV[8]), ARGV[3])
end
return 1
