-- wrk script: POST pre-signed Rivya deliveries, each request with its own body and headers.
--
-- BENCH_REQUESTS: file with one request per line, "webhook-id<TAB>timestamp<TAB>signature<TAB>body"
-- (written by bench/run.py just before the load phase). BENCH_THREADS: wrk's -t value; thread k
-- takes lines k, k+T, k+2T... so threads never send the same line. When a thread runs out of
-- lines it starts over (those repeats answer 200 duplicate; "wrapped" reports it).
-- All requests are formatted once in init(), so request() only returns a prepared string.
-- done() prints one line "BENCH_JSON {...}" that bench/run.py parses.

local file = os.getenv("BENCH_REQUESTS")
local path = os.getenv("BENCH_PATH") or "/webhooks/rivya"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local reqs = {}
local n = 0
local i = 0
c202 = 0
c200 = 0
cother = 0
wrapped = 0

function init(args)
  local lineno = 0
  for line in io.lines(file) do
    if lineno % nthreads == tid then
      local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      n = n + 1
      reqs[n] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["webhook-id"] = id,
        ["webhook-timestamp"] = ts,
        ["webhook-signature"] = sig,
      }, body)
    end
    lineno = lineno + 1
  end
end

function request()
  i = i + 1
  if i > n then
    i = 1
    wrapped = wrapped + 1
  end
  return reqs[i]
end

function response(status, headers, body)
  if status == 202 then
    c202 = c202 + 1
  elseif status == 200 then
    c200 = c200 + 1
  else
    cother = cother + 1
  end
end

function done(summary, latency, requests)
  local a, b, o, w = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("c202")
    b = b + t:get("c200")
    o = o + t:get("cother")
    w = w + t:get("wrapped")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"s202":%d,"s200":%d,"other":%d,"wrapped":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, a, b, o, w,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
