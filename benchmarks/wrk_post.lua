-- wrk script for the intake step: Braze-style Send API POSTs, each with its own Idempotency-Key,
-- PSIDs cycling over 512 like the Python load generator; prints one JSON line at the end.
-- Environment: INTAKE_TOKEN (bearer), RUN (makes the keys unique to this round).
local TEXT = "Hi Alex, your order #48213 has shipped and will arrive on Thursday. Track it any time in "
  .. "the app, reply STOP to opt out of shipping updates, or HELP to reach our support team. Thanks!"
local threads = {}
local counter = 0
statuses = {}  -- a global: done() reads it from each thread with thread:get

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("INTAKE_TOKEN")
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local body = '{"recipient":{"id":"01' .. string.format("%014d", counter % 512)
    .. '"},"messaging_type":"UPDATE","message":{"text":"' .. TEXT .. '"}}'
  wrk.headers["Idempotency-Key"] = "wrk:" .. os.getenv("RUN") .. ":" .. tid .. ":" .. counter
  return wrk.format(nil, wrk.path, nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"socket_errors":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, table.concat(parts, ",")))
end
