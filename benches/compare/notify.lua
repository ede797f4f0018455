-- wrk script for benches/compare.sh: cycles through pre-signed WeChat Pay v3 notifications.
--
--   wrk -t T -c C -d D -s notify.lua URL -- FILE PATH THREADS [RATE]
--
-- FILE is presign.py's output (timestamp, nonce, signature, body; tab-separated, one per line).
-- Thread k of THREADS keeps the lines k, k+THREADS, k+2*THREADS, ...: the threads' slices are
-- disjoint, so no order is sent twice unless a slice runs out; it then starts over and `wrapped`
-- says so (for payhook that run is invalid: the repeats are duplicates, not new orders).
--
-- RATE (optional, requests/s over all threads): paced run. Each thread keeps its own schedule
-- (RATE/THREADS, evenly spaced) and `delay()` holds each connection's next request until its
-- slot; a thread that falls behind sends at once until it has caught up. wrk measures latency
-- from the moment a request is written, so a stall delays later sends rather than showing in
-- their latency (no coordinated-omission correction; see docs/performance.md).
--
-- `done` prints one line `BENCH key=value ...` for compare.sh to read.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local file, path, nthreads = args[1], args[2], tonumber(args[3])
   local rate = tonumber(args[4] or "0") or 0
   reqs = {}
   local i = 0
   for line in io.lines(file) do
      if i % nthreads == tid then
         local ts, nonce, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
         reqs[#reqs + 1] = wrk.format("POST", path, {
            ["Content-Type"] = "application/json",
            ["Wechatpay-Timestamp"] = ts,
            ["Wechatpay-Nonce"] = nonce,
            ["Wechatpay-Signature"] = sig,
            ["Wechatpay-Serial"] = "PUB_KEY_ID_0114232020240000000000000001",
            ["Wechatpay-Signature-Type"] = "WECHATPAY2-SHA256-RSA2048",
         }, body)
      end
      i = i + 1
   end
   slice = #reqs
   sent = 0
   wrapped = 0
   n = 0
   if slice == 0 then
      error("no requests for thread " .. tid .. " in " .. file)
   end

   if rate > 0 then
      local ffi = require("ffi")
      ffi.cdef [[
         typedef struct { long tv_sec; long tv_nsec; } payhook_bench_timespec;
         int clock_gettime(int clk_id, payhook_bench_timespec *tp);
      ]]
      local ts = ffi.new("payhook_bench_timespec")
      local function now_ms()
         ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
         return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
      end
      local interval = 1000 / (rate / nthreads)
      local due = nil
      -- Defined only in paced runs: wrk paces every request when the script has a delay().
      delay = function()
         local now = now_ms()
         if due == nil then
            due = now
         end
         local wait = due - now
         due = due + interval
         if wait <= 0 then
            return 0
         end
         return math.floor(wait + 0.5)
      end
   end
end

function request()
   n = n + 1
   sent = sent + 1
   if n > slice then
      n = 1
      wrapped = wrapped + 1
   end
   return reqs[n]
end

function done(summary, latency, requests)
   local wrapped_total, sent_total, slice_total = 0, 0, 0
   for _, t in ipairs(threads) do
      wrapped_total = wrapped_total + (t:get("wrapped") or 0)
      sent_total = sent_total + (t:get("sent") or 0)
      slice_total = slice_total + (t:get("slice") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d " ..
      "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f sent=%d slice=%d wrapped=%d\n",
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean, sent_total, slice_total, wrapped_total))
end
