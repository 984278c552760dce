-- RETRY: put a batch back where it came from (the outbox's right end, oldest rightmost, so it is
-- the next batch and order is kept) and schedule the next attempt.
-- KEYS[1] inflight, KEYS[2] outbox, KEYS[3] retry_at, KEYS[4] failures.
-- ARGV[1] now, ARGV[2] server wait in seconds ('' for none), ARGV[3] backoff base, ARGV[4] cap,
-- ARGV[5] jitter fraction in [0, 1), ARGV[6] highest backoff exponent, ARGV[7] '1' when the
-- server wait is a floor under the backoff (a 5xx's Retry-After: 0 must not make every retry
-- come a second after the last), '' when it is the wait (a 429's: Braze's own window),
-- ARGV[8..] the items, oldest first.
-- Backoff: min(cap, base * 2^min(failures - 1, max exponent)), equal jitter.
-- retry_at only moves forward. An item no longer in inflight (a concurrent recover moved it back)
-- is not pushed twice. Returns {items put back, failures, wait as a string}.
local n = 0
for i = #ARGV, 8, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
local failures = redis.call('INCR', KEYS[4])
local exponent = math.min(failures - 1, tonumber(ARGV[6]))
local raw = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ exponent)
local wait = raw / 2 + raw / 2 * tonumber(ARGV[5])
if ARGV[2] ~= '' then
  if ARGV[7] == '1' then wait = math.max(wait, tonumber(ARGV[2])) else wait = tonumber(ARGV[2]) end
end
local at = tonumber(ARGV[1]) + wait
local current = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if at > current then redis.call('SET', KEYS[3], string.format('%.6f', at)) end
return {n, failures, string.format('%.6f', wait)}
