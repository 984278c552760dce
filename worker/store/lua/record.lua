-- RECORD: outcomes of claimed deliveries, each written only under its claim's fence token.
-- KEYS[1] pending, KEYS[2] open, KEYS[3] sched, KEYS[4] dead, KEYS[5] parked (zsets).
-- ARGV[1] now, ARGV[2] delivery key prefix (P:d:), ARGV[3] park key prefix (P:park:),
-- ARGV[4] stats key prefix (P:stats:), ARGV[5] final record retention (s), ARGV[6] this minute,
-- ARGV[7] history key prefix (P:hist:), ARGV[8] a history's TTL (s), ARGV[9] its entries kept,
-- then per delivery: id, fence token, status, due ('' = none), pending deadline ('' = none),
-- a history entry ('' = none), a failure class ('' = none: "{status}:{reason}" counted in
-- P:stats:{minute}:reasons), n, and n field/value pairs for its record.
-- The history entry and the failure class are written only with a fresh write (never twice,
-- whatever retries the call: the caller re-sends a pipeline whose answer it lost).
-- The token must be the record's claim; then the fields are written, the claim is cleared and
-- `done` remembers the token, so a retried call (its answer lost) is recognised, not refused.
-- By status (worker/states.py):
--   FINAL      leaves pending, open, sched and any park; counted per minute (`P:stats:`); a dead
--              letter joins `dead` and keeps its body (replayable) with no expiry; any other
--              final record is compacted (COMPACT_DROP: body, recipient, token, tags, working
--              fields) and expires after the retention; a sent record drops an earlier error
--   PARKED     joins the recipient's park and `parked` (score: accepted at)
--   otherwise  waits in sched until `due` when one is given
--   open       pending deadline = the given one
-- Returns per delivery: 1 written, 2 already written under this token, 0 refused (the claim is
-- another worker's now: this one's lease ended).
local now = tonumber(ARGV[1])
local counts = {}
local out = {}
local reasons = ARGV[4] .. ARGV[6] .. ':reasons'
local i = 10
while i <= #ARGV do
  local id, token, status = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local due, deadline, n = ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 7])
  local entry, class = ARGV[i + 5], ARGV[i + 6]
  local key = ARGV[2] .. id
  local held = redis.call('HMGET', key, 'claim', 'done')
  if held[1] == token then
    redis.call('HSET', key, 'claim', '', 'lease_until', 0, 'done', token, 'status', status,
      'updated_at', ARGV[1], unpack(ARGV, i + 8, i + 7 + 2 * n))
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
      local rec = redis.call('HMGET', key, 'parked_at', 'page_id', 'psid')
      if rec[1] then
        redis.call('ZREM', KEYS[5], id)
        redis.call('ZREM', ARGV[3] .. rec[2] .. ':' .. rec[3], id)
      end
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', KEYS[3], id)
      if status == S.SENT then redis.call('HDEL', key, 'error') end
      if KEEPS_BODY[status] then
        redis.call('ZADD', KEYS[4], now, id)
        redis.call('HDEL', key, 'parked_at', 'not_before', 'slot_at')
        redis.call('PERSIST', key)
      else
        redis.call('HDEL', key, unpack(COMPACT_DROP))
        redis.call('EXPIRE', key, tonumber(ARGV[5]))
      end
      counts[status] = (counts[status] or 0) + 1
    else
      if status == S.PARKED then
        local rec = redis.call('HMGET', key, 'page_id', 'psid', 'created_at')
        redis.call('HSET', key, 'parked_at', ARGV[1])
        redis.call('ZADD', ARGV[3] .. rec[1] .. ':' .. rec[2], tonumber(rec[3]), id)
        redis.call('ZADD', KEYS[5], tonumber(rec[3]), id)
      elseif due ~= '' then
        redis.call('ZADD', KEYS[3], tonumber(due), id)
      end
      if deadline ~= '' then redis.call('ZADD', KEYS[1], tonumber(deadline), id) end
    end
    table.insert(out, 1)
  elseif held[2] == token then
    table.insert(out, 2)
  else
    table.insert(out, 0)
  end
  i = i + 8 + 2 * n
end
for status, count in pairs(counts) do
  local k = ARGV[4] .. ARGV[6] .. ':' .. status
  redis.call('INCRBY', k, count)
  redis.call('EXPIRE', k, 3600)
end
return out
