-- The wrk script of every run of bench/run.py.
--
-- wrk takes a single script, so this one does both jobs:
--  1. With BENCH_POST_BYTES=N in the environment, every request is a POST
--     with an N-byte body (built once per wrk thread, not per request, so
--     the client spends its time sending rather than building strings).
--     wrk adds the Content-Length itself.
--  2. done() prints one machine-readable line, "BENCH_JSON {...}", so the
--     harness does not depend on wrk's human output (units like "1.2ms" or
--     "3.4k" that change with magnitude). Latencies are in microseconds.
-- Headers given with -H (Connection: close) are already in wrk.headers when
-- this file runs, and are kept.

local post_bytes = tonumber(os.getenv("BENCH_POST_BYTES") or "0") or 0
if post_bytes > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", post_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
