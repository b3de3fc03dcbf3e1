-- Record the outcome of one half-open probe; decide once all permitted probes completed.
-- KEYS[1] breakers hash          {P:E}:breakers
-- KEYS[2] probe permit counter   {P:E}:breaker-probes:<name>
-- ARGV[1] breaker name
-- ARGV[2] the epoch the probe permit was taken in
-- ARGV[3] outcome: success, failure, slow_success, slow_failure, or release
--         (the call ended with an ignored exception: give the permit back)
-- ARGV[4] permitted probes (half_open_calls)
-- ARGV[5] failure rate threshold (percent)
-- ARGV[6] slow call rate threshold (percent)
-- ARGV[7] open_for in seconds, if the probes reopen the breaker
-- ARGV[8] instance id
-- ARGV[9] breaker events channel
-- Returns {status, document, server time as text}:
--   {0, stored document or nil, now}  stale: another epoch or not half-open; nothing done
--   {1, nil, now}                     counted (or permit released)
--   {2, new document, now}            that was the last probe: closed or reopened
local now = server_now()
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local current = decode(raw)
if not current or current['epoch'] ~= tonumber(ARGV[2]) or effective(current, now) ~= 'half_open' then
  return {0, raw or false, tostring(now)}
end
local outcome = ARGV[3]
if outcome == 'release' then
  local taken = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if taken > 0 then redis.call('DECR', KEYS[2]) end
  return {1, false, tostring(now)}
end
local tally = current['half_open']
if type(tally) ~= 'table' then tally = {} end
local completed = (tonumber(tally['completed']) or 0) + 1
local failures = tonumber(tally['failures']) or 0
local slow = tonumber(tally['slow']) or 0
if outcome == 'failure' or outcome == 'slow_failure' then failures = failures + 1 end
if outcome == 'slow_success' or outcome == 'slow_failure' then slow = slow + 1 end
if completed >= tonumber(ARGV[4]) then
  local failure_rate = failures * 100 / completed
  local slow_rate = slow * 100 / completed
  local state, reason = 'closed', 'probes_succeeded'
  if failure_rate >= tonumber(ARGV[5]) or slow_rate >= tonumber(ARGV[6]) then
    state, reason = 'open', 'probes_failed'
  end
  local written = write_state(KEYS[1], KEYS[2], ARGV[9], ARGV[1], state, current['epoch'], now,
    ARGV[7], ARGV[8], reason, tostring(failure_rate), tostring(slow_rate))
  return {2, written, tostring(now)}
end
current['half_open'] = {completed = completed, failures = failures, slow = slow}
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(current))
return {1, false, tostring(now)}
