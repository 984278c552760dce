-- One command for many members (included by _campaign.lua): a script gathers the members of its
-- per-delivery ZADDs and ZREMs and sends each key one command, in chunks that stay far below
-- Lua's unpack limit. Per delivery that saves the redis.call round of a command (about 1 µs of
-- glue each) and the key's lookup.
local BULK_CHUNK = 1000

local function bulk(cmd, key, args)
  for s = 1, #args, BULK_CHUNK do
    redis.call(cmd, key, unpack(args, s, math.min(s + BULK_CHUNK - 1, #args)))
  end
end
