-- POSTs the captured Alertmanager 0.25 firing notification, a new fingerprint per request
-- (every request creates a new alert occurrence, as in a storm).
local template = os.getenv("BENCH_BODY")
local counter = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Alertmanager/0.25.0"

request = function()
  counter = counter + 1
  local body = template:gsub("16ff7ec28276970a", string.format("%016x", counter))
  return wrk.format(nil, nil, nil, body)
end
