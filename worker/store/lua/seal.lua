-- SEAL: the housekeeping's pass that gives the buckets of a finished window their expiry, so the
-- writes into a window need not (_windows.lua's window_self_expires; worker/store/seals.py runs
-- it for each bucketed layout and has the reasons).
-- KEYS[1] the layout's meta hash. ARGV[1] now, ARGV[2] the bucket prefix ("{prefix}{window}:"
-- + suffix names a bucket), ARGV[3] the window length this process's writers use, ARGV[4] k and
-- ARGV[5] extra: a bucket of window w expires at (w + k) * length + extra, ARGV[6] the suffix's
-- hex digits, ARGV[7] bucket names per call at most.
-- `meta` keeps per length: `open:{length}`, the first window no pass has begun (set by the first
-- write on the shard, _windows.lua; RETIRED: none is left to, every write sets its own expiry);
-- `sealing:{length}`, while a window (open - 1) is under way, the next suffix to do;
-- `found:{length}`, how many of its names had a bucket so far; `idle:{length}`, set when a whole
-- window of a length other than ARGV[3] had none.
-- A window is begun once it is over: `open:` moves past it first, so every write into it from
-- then on sets its own expiry, and then its names get theirs (EXPIREAT NX: a name nothing was
-- written to costs one lookup) in calls of at most ARGV[7]. A length other than ARGV[3] (the
-- setting changed, or another process has another) that is idle is retired: its windows up to
-- the one after now's are begun without waiting for them to end, then `open:` is RETIRED (a
-- write with it sets its own expiry; the pass of a process that uses it notes it again).
-- Returns the names done by this call (0: nothing is left to seal now).
local meta, now, prefix, used = KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local k, extra, digits, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local RETIRED = SEAL_RETIRED
local flat = redis.call('HGETALL', meta)
local fields = {}
for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end

-- Gives names [cursor, cursor + limit) of `window` their expiry; returns how many it did.
local function seal(length, window, cursor)
  local total = 16 ^ digits
  local stop = math.min(cursor + limit, total)
  local expires = (window + k) * length + extra
  local base = prefix .. window .. ':'
  local format = '%0' .. digits .. 'x'
  local found = 0
  for n = cursor, stop - 1 do
    found = found + redis.call('EXPIREAT', base .. string.format(format, n), expires, 'NX')
  end
  found = redis.call('HINCRBY', meta, 'found:' .. length, found)
  if stop < total then
    redis.call('HSET', meta, 'sealing:' .. length, stop)
  else
    redis.call('HDEL', meta, 'sealing:' .. length)
    if found == 0 and length ~= used then
      redis.call('HSET', meta, 'idle:' .. length, 1)
    else
      redis.call('HDEL', meta, 'idle:' .. length)
    end
  end
  return stop - cursor
end

for name, value in pairs(fields) do
  local length = tonumber(string.match(name, '^open:(%d+)$'))
  if length then
    local from, cursor = tonumber(value), tonumber(fields['sealing:' .. length])
    local current = math.floor(now / length)
    local idle = length ~= used and fields['idle:' .. length]
    if from >= RETIRED and length == used then  -- in use again: windows from the next one
      redis.call('HSET', meta, 'open:' .. length, current + 1)
      redis.call('HDEL', meta, 'idle:' .. length)
    elseif cursor then
      return seal(length, from - 1, cursor)
    elseif from < current or (idle and from <= current + 1) then
      redis.call('HSET', meta, 'open:' .. length, from + 1, 'found:' .. length, 0)
      return seal(length, from, 0)
    elseif idle and from < RETIRED then
      redis.call('HSET', meta, 'open:' .. length, RETIRED)
      redis.call('HDEL', meta, 'idle:' .. length, 'found:' .. length)
    end
  end
end
return 0
