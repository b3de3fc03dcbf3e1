-- Token bucket rate-limit check: one atomic step on the Redis server's clock.
-- Protocol: docs/protocol.md, "Rate-limit state". Keys and arguments:
--   KEYS[1]  hash <base>:tb   t = tokens left (float), ts = time of t (unix microseconds)
--   ARGV[1]  limit            tokens added per period
--   ARGV[2]  period           milliseconds (may have a fraction)
--   ARGV[3]  burst            capacity of the bucket
--   ARGV[4]  cost             tokens this request takes (>= 1)
--   ARGV[5]  "1": peek (decide, change nothing), otherwise "0"
-- Returns {allowed (1|0), capacity, remaining, reset_after_ms, retry_after_ms}.
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

local rate = limit / period -- tokens per microsecond
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
elseif now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
else
  tokens = math.min(burst, tokens) -- the clock went back (failover): no refill
end

local allowed = 0
local retry = 0
if tokens >= cost then
  allowed = 1
  if not peek then
    tokens = tokens - cost
    redis.call('HSET', KEYS[1], 't', tokens, 'ts', now)
    -- Once full again the state equals a missing key: let it expire then.
    redis.call('PEXPIRE', KEYS[1], math.min(ms((burst - tokens) / rate), 63244800000) + 1)
  end
else
  retry = (cost - tokens) / rate
end
return {allowed, burst, math.floor(tokens), ms((burst - tokens) / rate), ms(retry)}
