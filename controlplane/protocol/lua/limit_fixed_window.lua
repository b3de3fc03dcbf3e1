-- Fixed-window rate-limit check: one atomic step on the Redis server's clock.
-- Windows are aligned to multiples of the period since the unix epoch.
-- Protocol: docs/protocol.md, "Rate-limit state".
--   KEYS[1]  hash <base>:fw   w = window index (floor(now / P)), P = period (us), n = count
--   ARGV[1]  limit            requests per window
--   ARGV[2]  period           milliseconds (may have a fraction)
--   ARGV[3]  burst            ignored (send the limit)
--   ARGV[4]  cost             requests this one counts for (>= 1)
--   ARGV[5]  "1": peek (decide, change nothing), otherwise "0"
-- Returns {allowed (1|0), limit, remaining, reset_after_ms, retry_after_ms}.
-- A rejected request (or a peek) writes nothing. The first admitted request of a
-- window writes the hash and its TTL (the end of the window); later ones in the
-- same window only add to n (HINCRBY).
local limit = tonumber(ARGV[1])
local P = tonumber(ARGV[2]) * 1000
local cost = tonumber(ARGV[4])
local peek = ARGV[5] == '1'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local MAX_MS = 9007199254740991

local function ms(us)
  if us <= 0 then return 0 end
  return math.min(math.ceil(us / 1000), MAX_MS)
end

local index = math.floor(now / P)
local state = redis.call('HMGET', KEYS[1], 'w', 'P', 'n')
local count = 0
local stored = false -- true: this window's count is stored, HINCRBY can add to it
if tonumber(state[1]) == index and tonumber(state[2]) == P then
  count = tonumber(state[3])
  stored = count ~= nil
  count = count or 0
end
local reset = (index + 1) * P - now

local allowed = 0
local retry = 0
if count + cost <= limit then
  allowed = 1
  if not peek then
    if stored then
      local added = redis.pcall('HINCRBY', KEYS[1], 'n', cost)
      stored = type(added) == 'number' -- else n is a number but no integer: write it anew
      if stored then count = added end
    end
    if not stored then
      count = count + cost
      redis.call('HSET', KEYS[1], 'w', index, 'P', P, 'n', count)
      redis.call('PEXPIRE', KEYS[1], ms(reset) + 1)
    end
  end
else
  retry = reset
end
local remaining = limit - count
if remaining < 0 then remaining = 0 end
return {allowed, limit, remaining, ms(reset), ms(retry)}
