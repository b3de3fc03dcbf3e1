-- Take one half-open probe permit, fleet-wide.
-- KEYS[1] breakers hash          {P:E}:breakers
-- KEYS[2] probe permit counter   {P:E}:breaker-probes:<name>
-- ARGV[1] breaker name
-- ARGV[2] the epoch of the half-open state the caller is in
-- ARGV[3] permitted probes (half_open_calls)
-- ARGV[4] lifetime of the counter in milliseconds (set when it is created)
-- Returns {status, detail, server time as text}:
--   { 1, permits taken, now}  granted
--   { 0, PTTL of counter, now} denied: every permit of this half-open state is taken
--                              (the counter is left as it was)
--   {-1, stored document, now} the stored epoch differs: adopt the document
--   {-2, stored document, now} same epoch, but not half-open at the server's time
--   {-3, nil, now}             no shared state: the caller limits probes locally
local now = server_now()
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local current = decode(raw)
if not current then return {-3, false, tostring(now)} end
if current['epoch'] ~= tonumber(ARGV[2]) then return {-1, raw, tostring(now)} end
if effective(current, now) ~= 'half_open' then return {-2, raw, tostring(now)} end
local taken = redis.call('INCR', KEYS[2])
if taken == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
if taken <= tonumber(ARGV[3]) then return {1, taken, tostring(now)} end
-- A denial takes nothing: a permit given back (release) is then free for the next caller.
redis.call('DECR', KEYS[2])
return {0, redis.call('PTTL', KEYS[2]), tostring(now)}
