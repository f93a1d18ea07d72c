-- wrk script for the bench: POST every request with the next body and the next API key, tally
-- the response status codes, and print one machine-readable summary line when wrk is done.
--
--   wrk -t2 -c32 -d20s --latency -s bench/peers/mixed_keys.lua URL -- BODIES_FILE [KEYS_FILE [TIER]]
--
-- BODIES_FILE: one JSON request body per line. KEYS_FILE: one API key per line (sent as
-- X-API-Key, rotating per request so the tiers mix); without it no key header is sent (peers).
-- TIER: sent as X-AIM-Tier on every request (a key lowered to that tier).
-- All requests are formatted once in init(), so the per-request Lua cost is a table lookup.
-- The last line of output is `AIMBENCH {json}` with counts, latency percentiles (µs) and the
-- count of each status code; compare_servers.py and soak.py parse it.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

local function read_lines(path)
   local lines = {}
   local fh = assert(io.open(path, "r"), "cannot open " .. tostring(path))
   for line in fh:lines() do
      if #line > 0 then
         table.insert(lines, line)
      end
   end
   fh:close()
   return lines
end

local prepared = {}
local counter = 0
statuses = {}

function init(args)
   local bodies = read_lines(args[1])
   local keys = args[2] and read_lines(args[2]) or {}
   local tier = args[3]
   assert(#bodies > 0, "no request bodies in " .. tostring(args[1]))
   local path = wrk.path
   if path == nil or path == "" or path == "/" then
      path = "/predict"
   end
   -- Every (body, key) pair once: consecutive requests take the next key, and the next body once
   -- every key has had the current one. Threads start at different offsets.
   local nk = math.max(#keys, 1)
   local total = #bodies * nk
   for i = 0, total - 1 do
      local headers = { ["Content-Type"] = "application/json" }
      if #keys > 0 then
         headers["X-API-Key"] = keys[(i % nk) + 1]
      end
      if tier ~= nil and #tier > 0 then
         headers["X-AIM-Tier"] = tier
      end
      prepared[i + 1] = wrk.format("POST", path, headers, bodies[math.floor(i / nk) + 1])
   end
   counter = (id or 0) * 7919
end

function request()
   counter = counter + 1
   return prepared[(counter % #prepared) + 1]
end

function response(status, headers, body)
   local code = tostring(status)
   statuses[code] = (statuses[code] or 0) + 1
end

function done(summary, latency, requests)
   local tally = {}
   for _, thread in ipairs(threads) do
      local counts = thread:get("statuses") or {}
      for code, n in pairs(counts) do
         tally[code] = (tally[code] or 0) + n
      end
   end
   local parts = {}
   for code, n in pairs(tally) do
      table.insert(parts, string.format('"%s": %d', code, n))
   end
   local e = summary.errors
   io.write(string.format(
      'AIMBENCH {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d, '
         .. '"max": %d}, "statuses": {%s}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, table.concat(parts, ", ")))
end
