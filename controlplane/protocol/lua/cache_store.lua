-- Store a cache entry and release its recompute lock, atomically (docs/protocol.md, cache).
--
-- KEYS[1]  the entry key   {P:E:c:<name>:<digest>}:g<generation>
-- KEYS[2]  its lock key    {P:E:c:<name>:<digest>}:g<generation>:lock   (same hash slot)
-- ARGV[1]  the envelope to store, or "" to store nothing (only release the lock)
-- ARGV[2]  the entry's time to live in milliseconds (ttl + stale_ttl), an integer >= 1
-- ARGV[3]  the lock token the caller set with SET NX PX, or "" when it holds no lock
--
-- Returns 1 when the lock was released, 0 otherwise (not held, expired or taken by another).
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
