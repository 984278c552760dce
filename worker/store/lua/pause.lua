-- PAUSE: pause a page (or extend its pause). KEYS[1] pause hash, KEYS[2] paused zset.
-- ARGV[1] now, ARGV[2] seconds asked, ARGV[3] reason, ARGV[4] Graph code, ARGV[5] token fingerprint,
-- ARGV[6] grow (1: a rate limit right after a pause ended doubles the next pause; answers of the
-- same wave while paused do not), ARGV[7] cap seconds for that growth,
-- ARGV[8] page id. A pause never shortens an existing one (but ends within 400 days). Returns
-- the pause's end (epoch s).
local now = tonumber(ARGV[1])
local seconds = tonumber(ARGV[2])
local prev = redis.call('HMGET', KEYS[1], 'until', 'strikes')
local prev_until = tonumber(prev[1] or '0')
local strikes = 1
if ARGV[6] == '1' then
  local prev_strikes = tonumber(prev[2] or '0')
  if prev_until > now then
    strikes = math.max(prev_strikes, 1)  -- the same wave of answers: no new strike
  elseif prev_until > now - 60 then
    strikes = prev_strikes + 1  -- throttled again right after a pause: double it
  end
  seconds = math.min(math.max(tonumber(ARGV[7]), seconds), seconds * 2 ^ (strikes - 1))
end
-- at most 400 days ahead (a year is the longest pause asked): a larger end (1e16 s) would
-- overflow EXPIRE below after the HSET, a half-written pause and a write that never lands
local until_t = math.min(math.max(prev_until, now + seconds), now + 34560000)
redis.call('HSET', KEYS[1], 'until', string.format('%.3f', until_t), 'reason', ARGV[3], 'code', ARGV[4],
  'token_fp', ARGV[5], 'strikes', strikes)
redis.call('HDEL', KEYS[1], 'probe')
redis.call('EXPIRE', KEYS[1], math.floor(until_t - now) + 120)
redis.call('ZADD', KEYS[2], until_t, ARGV[8])
return string.format('%.3f', until_t)
