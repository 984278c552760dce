-- PURGE_DEAD: delete dead letters (an operator's purge, or DEAD_LETTER_RETENTION).
-- KEYS[1] dead. ARGV[1] delivery key prefix (P:d:), ARGV[2] '' or a time: also every dead
-- letter that died before it (at most ARGV[3] of them), ARGV[4..] ids.
-- Only records that are still DEAD are deleted: an id replayed meanwhile is left alone.
-- Returns the ids deleted.
local ids = {unpack(ARGV, 4)}
if ARGV[2] ~= '' then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
    table.insert(ids, id)
  end
end
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local st = redis.call('HGET', key, 'status')
  if redis.call('ZREM', KEYS[1], id) == 1 and (st == S.DEAD or not st) then
    if st then redis.call('DEL', key) end
    table.insert(out, id)
  end
end
return out
