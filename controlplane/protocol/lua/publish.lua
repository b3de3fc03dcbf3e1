-- Write one document into a section hash and announce it, atomically.
-- KEYS[1] section hash ({prefix:env}:policies or :overrides)
-- KEYS[2] meta key    ({prefix:env}:meta)
-- ARGV[1] hash field (kind:name), or "" to only raise the meta revision
-- ARGV[2] document JSON
-- ARGV[3] revision of this write
-- ARGV[4] changes channel
-- ARGV[5] change message JSON
-- ARGV[6] meta document JSON carrying ARGV[3] as its revision, or "" to leave
--         the meta key alone (the reconciler raises it once a repair is done)
-- ARGV[7] optional: the exact value the field must hold now for the write to
--         happen whatever the revisions (the reconciler's compare-and-set, used
--         to repair a document that is corrupt or newer than the database)
-- Returns {written, meta_raised}. A write older than what the hash holds is
-- dropped, so publishes that arrive out of order never roll a policy back.
local revision = tonumber(ARGV[3])

local function revision_of(raw)
  if not raw then return -1 end
  local ok, doc = pcall(cjson.decode, raw)
  -- A JSON number only: a revision written as a string ("9") is no revision.
  if ok and type(doc) == 'table' and type(doc['revision']) == 'number' then
    return doc['revision']
  end
  return -1
end

local written = 0
if ARGV[1] ~= '' then
  local current = redis.call('HGET', KEYS[1], ARGV[1])
  local replace
  if ARGV[7] and ARGV[7] ~= '' then
    replace = (current == ARGV[7])
  else
    replace = revision_of(current) < revision
  end
  if replace then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    redis.call('PUBLISH', ARGV[4], ARGV[5])
    written = 1
  end
end

local raised = 0
if ARGV[6] ~= '' and revision_of(redis.call('GET', KEYS[2])) < revision then
  redis.call('SET', KEYS[2], ARGV[6])
  raised = 1
end
return {written, raised}
