-- Helpers shared by the breaker scripts; prepended to each of them when loaded
-- (every breaker_*.lua: controlplane.protocol.scripts.load does it).
-- A shared breaker state is a JSON document stored in the breakers hash under
-- the breaker's name; see docs/protocol.md, "Shared breaker state".

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The stored document, or nil when it is missing or not a version-1 document
-- (a malformed value is treated as missing and overwritten by the next write).
local function decode(raw)
  if not raw then return nil end
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' or doc['schema'] ~= 1 then return nil end
  if type(doc['epoch']) ~= 'number' or type(doc['state']) ~= 'string' then return nil end
  return doc
end

-- The state the document stands for at time `now`: an open breaker whose
-- open_until has passed is half-open (that step is never written).
local function effective(doc, now)
  if doc['state'] == 'open' then
    local open_until = tonumber(doc['open_until'])  -- cjson.null gives nil
    if open_until == nil or now >= open_until then return 'half_open' end
  end
  return doc['state']
end

local function number_or_null(text)
  local value = tonumber(text)
  if value == nil then return cjson.null end
  return value
end

-- Write a new state with the next epoch, forget the probe permits of the
-- previous one and announce it; returns the document written.
-- Epochs only grow: at least the previous epoch + 1, and at least the server
-- time in milliseconds, so they keep growing after Redis lost the hash.
local function write_state(hash, probes, channel, name, state, previous_epoch, now,
                           open_for, instance, reason, failure_rate, slow_call_rate)
  local epoch = math.max(previous_epoch + 1, math.floor(now * 1000))
  local doc = {
    schema = 1,
    name = name,
    state = state,
    epoch = epoch,
    since = now,
    opened_at = cjson.null,
    open_until = cjson.null,
    instance = instance,
    reason = reason,
    failure_rate = number_or_null(failure_rate),
    slow_call_rate = number_or_null(slow_call_rate),
    half_open = {completed = 0, failures = 0, slow = 0},
  }
  if state == 'open' then
    doc['opened_at'] = now
    doc['open_until'] = now + tonumber(open_for)
  end
  local raw = cjson.encode(doc)
  redis.call('HSET', hash, name, raw)
  redis.call('DEL', probes)
  redis.call('PUBLISH', channel, raw)
  return raw
end
