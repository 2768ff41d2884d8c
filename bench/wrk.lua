-- wrk script of bench/harness.py `run_wrk`: wrk -s bench/wrk.lua URL -- BODIES THREADS [PAUSE_MS]
--
-- POSTs the JSON bodies of BODIES (one per line) in turn, each of THREADS threads starting at its own
-- offset so no two send the same text at once; checks every answer (status 200 and a complete body:
-- `"choices"`, and for an SSE stream its `data: [DONE]` and no error event); and prints the run as one
-- line, `WRK_JSON {...}`: requests, duration, socket errors, statuses, bad bodies and the whole latency
-- histogram as [microseconds, count] pairs, from which the harness computes percentiles. With PAUSE_MS,
-- each connection waits after an answer before its next request, PAUSE_MS on average, drawn from an
-- exponential distribution: a paced load below the server's capacity instead of a closed loop that
-- saturates it. A fixed pause would keep the connections in step: their requests arrive as one burst,
-- are answered together, and come back together after the pause, so each waits for the whole burst.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local headers = { ["Content-Type"] = "application/json" }
   requests = {}
   for line in io.lines(args[1]) do
      if #line > 0 then
         requests[#requests + 1] = wrk.format("POST", nil, headers, line)
      end
   end
   local count = tonumber(args[2]) or 1
   index = math.floor(id * #requests / count)
   bad = 0
   statuses = {}
   local pause_ms = tonumber(args[3]) or 0
   if pause_ms > 0 then
      math.randomseed(1000 + id)
      -- Defined only when pacing: wrk sends through a timer whenever a script has delay(), even one returning 0.
      function delay()
         return math.floor(-pause_ms * math.log(1 - math.random()) + 0.5)
      end
   end
end

function request()
   index = index % #requests + 1
   return requests[index]
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   if status ~= 200 then
      return
   end
   local complete
   if body:sub(1, 5) == "data:" then
      complete = body:find("data: [DONE]", 1, true) and not body:find('data: {"error"', 1, true)
   else
      complete = body:find('"choices"', 1, true)
   end
   if not complete then
      bad = bad + 1
   end
end

function done(summary, latency, requests)
   local histogram = {}
   for i = 1, #latency do
      local value, count = latency(i)
      histogram[#histogram + 1] = string.format("[%d,%d]", value, count)
   end
   local total_bad, merged = 0, {}
   for _, thread in ipairs(threads) do
      total_bad = total_bad + thread:get("bad")
      for status, count in pairs(thread:get("statuses")) do
         merged[status] = (merged[status] or 0) + count
      end
   end
   local statuses = {}
   for status, count in pairs(merged) do
      statuses[#statuses + 1] = string.format('"%s":%d', status, count)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"bad_bodies":%d,"statuses":{%s},"latency_us":[%s]}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      total_bad, table.concat(statuses, ","), table.concat(histogram, ",")))
end
