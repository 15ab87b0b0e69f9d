-- POSTs the captured Alertmanager 0.25 firing notification, shaped by BENCH_MODE:
--   new:    a new fingerprint per request (every request creates an alert occurrence, as in a storm)
--   resend: the same 100 firing alerts over and over, unchanged (Alertmanager's repeat_interval and
--           group changes: every firing alert of a group re-sent byte for byte)
--   mix:    9 re-sends to 1 new or changed alert (every 20th request a new alert, every 20th, ten
--           later, one of the 100 with a new summary, which its re-sends repeat from then on)
-- BENCH_SEED keeps the new fingerprints of one wrk run apart from those of the runs before it.
local template = os.getenv("BENCH_BODY")
local mode = os.getenv("BENCH_MODE") or "new"
local seed = tonumber(os.getenv("BENCH_SEED") or "0")
local pool = 100
local versions = {}
for i = 1, pool do
  versions[i] = 0
end
local counter = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Alertmanager/0.25.0"

local function alert(fingerprint, version)
  local body = template:gsub("16ff7ec28276970a", fingerprint)
  if version > 0 then
    body = body:gsub("JetStream unhealthy on", "JetStream unhealthy (" .. version .. ") on")
  end
  return body
end

local function new_alert()
  return alert(string.format("%016x", seed + counter), 0)
end

local function resend()
  local member = counter % pool + 1
  return alert(string.format("%016x", member), versions[member])
end

request = function()
  counter = counter + 1
  local body
  if mode == "new" or (mode == "mix" and counter % 20 == 0) then
    body = new_alert()
  elseif mode == "mix" and counter % 20 == 10 then
    local member = math.floor(counter / 20) % pool + 1
    versions[member] = versions[member] + 1
    body = alert(string.format("%016x", member), versions[member])
  else
    body = resend()
  end
  return wrk.format(nil, nil, nil, body)
end
