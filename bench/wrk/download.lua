-- D64: GET /files/<id> with a session cookie; lorebase streams a 64 KiB file from disk.
-- Environment (set by bench/run.py): COOKIE, COOKIE_NAME, PEER, WORKLOAD. Prints the same
-- RESULT line as the seed's scripts, so run.py reads every workload alike:
--   RESULT <peer> <workload> <req/s> <p50 ms> <p99 ms> <non-2xx> <socket errors> <requests>
local cookie = os.getenv("COOKIE")
assert(cookie and cookie ~= "", "COOKIE is not set")
wrk.method = "GET"
wrk.headers["Cookie"] = (os.getenv("COOKIE_NAME") or "lorebase") .. "=" .. cookie

function done(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local failed = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
   print(string.format("RESULT %s %s %.1f %.3f %.3f %d %d %d", os.getenv("PEER") or "-",
      os.getenv("WORKLOAD") or "-", summary.requests / seconds, latency:percentile(50) / 1000,
      latency:percentile(99) / 1000, summary.errors.status, failed, summary.requests))
end
