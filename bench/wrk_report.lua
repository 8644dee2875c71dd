-- wrk script for bench/http_bench.py: prints the run's summary as one JSON line, prefixed WRK_JSON.
-- Only done() is defined, so wrk keeps its fast path (no per-response Lua). Latencies are in microseconds.
-- wrk counts responses with a status >= 400 in errors.status; the benchmark app never redirects, so that is
-- every non-2xx response it can get.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "lat_mean_us": %.1f, "lat_max_us": %d, ' ..
    '"lat_p50_us": %d, "lat_p90_us": %d, "lat_p99_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
