-- Read an environment's policy store in one atomic step (its three keys share a slot).
-- Each reply comes with the error Redis gave instead of it (a key holding another
-- type): {reply, error}. See docs/protocol.md and protocol/connection.py.
-- KEYS[1] {P:E}:policies   KEYS[2] {P:E}:overrides   KEYS[3] {P:E}:meta
local function read(command, key)
  local reply = redis.pcall(command, key)
  if type(reply) == 'table' and reply['err'] then return {false, reply['err']} end
  return {reply, false}
end
return {read('HGETALL', KEYS[1]), read('HGETALL', KEYS[2]), read('GET', KEYS[3])}
