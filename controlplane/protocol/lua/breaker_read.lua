-- Read the shared states of several breakers and the server's clock together.
-- (One script rather than a TIME + HMGET pipeline: a cluster has no TIME of
-- its own, and the clock must be that of the node holding the states.)
-- KEYS[1] breakers hash          {P:E}:breakers
-- ARGV    breaker names
-- Returns {server time as text, {document or false, ...}}
return {tostring(server_now()), redis.call('HMGET', KEYS[1], unpack(ARGV))}
