-- Reset a breaker for the whole fleet: write "closed" with the next epoch.
-- Preceded by breaker_common.lua (server_now, decode,
-- write_state), exactly as the client's breaker scripts are.
-- KEYS[1] {P:E}:breakers   KEYS[2] {P:E}:breaker-probes:<name>
-- ARGV[1] breaker name     ARGV[2] writer ("controlplane")   ARGV[3] {P:E}:breaker-events
local now = server_now()
local current = decode(redis.call('HGET', KEYS[1], ARGV[1]))
local previous = 0
if current then previous = current['epoch'] end
return write_state(KEYS[1], KEYS[2], ARGV[3], ARGV[1], 'closed', previous, now,
                   0, ARGV[2], 'reset', '', '')
