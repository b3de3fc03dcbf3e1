-- GCRA (generic cell rate algorithm) rate-limit check: one atomic step on the
-- Redis server's clock. Protocol: docs/protocol.md, "Rate-limit state".
--   KEYS[1]  string <base>:gcra   TAT, the theoretical arrival time (unix microseconds)
--   ARGV[1]  limit                requests per period
--   ARGV[2]  period               milliseconds (may have a fraction)
--   ARGV[3]  burst                requests that may arrive at once
--   ARGV[4]  cost                 requests this one counts for (>= 1)
--   ARGV[5]  "1": peek (decide, change nothing), otherwise "0"
-- Emission interval T = period / limit; a request is admitted when
-- max(TAT, now) + cost * T - now <= burst * T.
-- Returns {allowed (1|0), burst, remaining, reset_after_ms, retry_after_ms}.
-- A rejected request (or a peek) writes nothing.
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2]) * 1000
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local peek = ARGV[5] == '1'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local MAX_MS = 9007199254740991

local function ms(us)
  if us <= 0 then return 0 end
  return math.min(math.ceil(us / 1000), MAX_MS)
end

local T = period / limit
local tolerance = burst * T
-- The clock counts whole microseconds: differences below half of one are float noise.
local slack = math.min(0.5, T / 4)
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + cost * T
local allow_at = new_tat - tolerance

local allowed = 0
local retry = 0
if now + slack >= allow_at then
  allowed = 1
  if not peek then
    tat = new_tat
    redis.call('SET', KEYS[1], tat, 'PX', math.min(ms(tat - now), 63244800000) + 1)
  end
else
  retry = allow_at - now
end
local remaining = math.floor((now + tolerance - tat + slack) / T)
if remaining < 0 then remaining = 0 end
return {allowed, burst, remaining, ms(tat - now), ms(retry)}
