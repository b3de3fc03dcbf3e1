-- Sliding-window rate-limit check (two-window weighted counter): one atomic step
-- on the Redis server's clock. Protocol: docs/protocol.md, "Rate-limit state".
--   KEYS[1]  hash <base>:sw   w = index of the current window (floor(now / P)),
--                             P = period (us), c = count in window w, p = count in window w - 1
--   ARGV[1]  limit            requests per period
--   ARGV[2]  period           milliseconds (may have a fraction)
--   ARGV[3]  burst            ignored (send the limit)
--   ARGV[4]  cost             requests this one counts for (>= 1)
--   ARGV[5]  "1": peek (decide, change nothing), otherwise "0"
-- Estimate = p * (P - elapsed) / P + c, where elapsed is the time since the
-- current window began: it assumes the previous window's requests were spread
-- evenly. A request is admitted when estimate + cost <= limit.
-- Returns {allowed (1|0), limit, remaining, reset_after_ms, retry_after_ms}.
-- A rejected request (or a peek) writes nothing. The first admitted request of a
-- window writes the hash and its TTL (the end of the next window); later ones in
-- the same window only add to c (HINCRBY).
local limit = tonumber(ARGV[1])
local P = tonumber(ARGV[2]) * 1000
local cost = tonumber(ARGV[4])
local peek = ARGV[5] == '1'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local MAX_MS = 9007199254740991
local EPSILON = 1e-9

local function ms(us)
  if us <= 0 then return 0 end
  return math.min(math.ceil(us / 1000), MAX_MS)
end

local index = math.floor(now / P)
local state = redis.call('HMGET', KEYS[1], 'w', 'P', 'c', 'p')
local cur, prev = 0, 0
local stored = false -- true: this window's count is stored, HINCRBY can add to it
if tonumber(state[2]) == P then
  local w = tonumber(state[1])
  if w == index then
    cur = tonumber(state[3])
    stored = cur ~= nil
    cur = cur or 0
    prev = tonumber(state[4]) or 0
  elseif w == index - 1 then
    prev = tonumber(state[3]) or 0
  end
end
local elapsed = now - index * P
local left = P - elapsed -- time until the current window ends
local estimate = prev * left / P + cur

local allowed = 0
local retry = 0
if estimate + cost <= limit + EPSILON then
  allowed = 1
  if not peek then
    estimate = estimate + cost
    if stored then
      local added = redis.pcall('HINCRBY', KEYS[1], 'c', cost)
      stored = type(added) == 'number' -- else c is a number but no integer: write it anew
      if stored then cur = added end
    end
    if not stored then
      cur = cur + cost
      redis.call('HSET', KEYS[1], 'w', index, 'P', P, 'c', cur, 'p', prev)
      -- After the next window ends, both counts are out of the estimate.
      redis.call('PEXPIRE', KEYS[1], ms(left + P) + 1)
    end
  end
else
  local need = limit - cost - cur
  if need >= 0 and prev > 0 then
    -- Wait in this window until prev's weight has fallen enough.
    retry = left - need * P / prev
  else
    -- Wait for the next window, where this window's count becomes the previous one.
    local need_next = limit - cost
    local wait_next = 0
    if need_next < 0 then
      wait_next = P -- never admitted: cost > limit
    elseif cur > need_next then
      wait_next = P - need_next * P / cur
    end
    retry = left + wait_next
  end
end
local reset = 0
if cur > 0 then
  reset = left + P
elseif prev > 0 then
  reset = left
end
local remaining = math.floor(limit - estimate + EPSILON)
if remaining < 0 then remaining = 0 end
return {allowed, limit, remaining, ms(reset), ms(retry)}
