-- Propose a shared transition of one breaker (compare-and-set on the epoch).
-- KEYS[1] breakers hash          {P:E}:breakers
-- KEYS[2] probe permit counter   {P:E}:breaker-probes:<name>
-- ARGV[1] breaker name
-- ARGV[2] from_state: the state the proposer saw (closed, half_open)
-- ARGV[3] to_state: open or closed
-- ARGV[4] base epoch: the epoch the proposer's view comes from (0: none)
-- ARGV[5] open_for in seconds (used when to_state is open)
-- ARGV[6] instance id of the proposer
-- ARGV[7] reason
-- ARGV[8] failure rate (percent) or ""
-- ARGV[9] slow call rate (percent) or ""
-- ARGV[10] breaker events channel {P:E}:breaker-events
-- Returns {accepted (1 or 0), the document now stored, server time as text}.
-- Accepted when the hash holds no (valid) document, or when the stored epoch
-- equals ARGV[4] and the stored state, at the server's time, equals ARGV[2]:
-- of two instances tripping at once only the first is written, the second
-- gets the first one's document back and adopts it.
local to_state = ARGV[3]
if to_state ~= 'open' and to_state ~= 'closed' then
  return redis.error_reply('to_state must be open or closed')
end
local now = server_now()
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local current = decode(raw)
local base = tonumber(ARGV[4]) or 0
if current then
  if current['epoch'] ~= base or effective(current, now) ~= ARGV[2] then
    return {0, raw, tostring(now)}
  end
end
local written = write_state(KEYS[1], KEYS[2], ARGV[10], ARGV[1], to_state, base, now,
  ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return {1, written, tostring(now)}
