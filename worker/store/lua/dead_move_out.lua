-- DEAD_MOVE_OUT: the shard a dead letter was moved from lets it go, once the shard of its page
-- holds it (dead_move_in.lua; worker/store/deadletters.py's move). KEYS[1] dead. ARGV[1] delivery
-- key prefix (P:d:), ARGV[2] history key prefix (P:hist:), ARGV[3] campaign prefix (P:camp:),
-- then per letter: id, its campaign ('' = none), '1' when the other shard counted its death
-- (dead_move_in.lua's ARGV[4]).
-- Only a record that is still DEAD is deleted (with its history and its place in `dead`); a
-- counted death leaves this shard's counters (`dead` and `accepted` - 1) when they still count
-- it: the campaign's hash began before the death and has a `dead` to take it from (the rule of
-- replay.lua), so no counter goes negative. Returns the ids let go.
local out = {}
local taken = {}
for i = 4, #ARGV, 3 do
  local id, camp, counted = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'status') == S.DEAD then
    local died = redis.call('ZSCORE', KEYS[1], id)
    redis.call('DEL', key, ARGV[2] .. id)
    redis.call('ZREM', KEYS[1], id)
    if camp ~= '' and counted == '1' then
      local ckey = ARGV[3] .. camp
      local first, dead = unpack(redis.call('HMGET', ckey, 'first_at', S.DEAD))
      local left = (tonumber(dead) or 0) - (taken[camp] or 0)
      if first and not (died and tonumber(died) < tonumber(first)) and left > 0 then
        redis.call('HINCRBY', ckey, S.DEAD, -1)
        redis.call('HINCRBY', ckey, 'accepted', -1)
        taken[camp] = (taken[camp] or 0) + 1
      end
    end
    table.insert(out, id)
  end
end
return out
