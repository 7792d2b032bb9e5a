-- submit.lua: create a job record and its stream entry, or return the job that already exists.
--
-- Idempotent: the same video_id with the same payload returns the existing job, whatever its
-- state; a different payload is a conflict (the caller turns it into a clear error).
--
-- KEYS[1]  {prefix}job:{video_id}  hash    the job record (created here)
-- KEYS[2]  {prefix}idem:{key}      string  idempotency key -> video_id (read/written only when
--                                          ARGV[4] is not "")
-- KEYS[3]  {prefix}stream[:lane]   stream  the job's lane: one entry {payload=ARGV[2]} for a new job
-- ARGV[1]  video_id
-- ARGV[2]  payload, the job's canonical JSON
-- ARGV[3]  sha256 hex of the payload
-- ARGV[4]  idempotency key, "" for none
-- ARGV[5]  lane (rush | normal | bulk), kept so retries go back to it
-- Returns  {"created"|"exists", video_id, state}
--          {"conflict", video_id, state}        the job exists with another payload
--          {"key_conflict", other_video_id, ""} the key already names another job
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)

if ARGV[4] ~= '' then
  local named = redis.call('GET', KEYS[2])
  if named and named ~= ARGV[1] then
    return {'key_conflict', named, ''}
  end
end

local existing = redis.call('HMGET', KEYS[1], 'payload_sha', 'state')
if existing[2] then
  if existing[1] ~= ARGV[3] then
    return {'conflict', ARGV[1], existing[2]}
  end
  return {'exists', ARGV[1], existing[2]}
end

local entry = redis.call('XADD', KEYS[3], '*', 'payload', ARGV[2])
redis.call('HSET', KEYS[1], 'video_id', ARGV[1], 'payload', ARGV[2], 'payload_sha', ARGV[3],
           'idempotency_key', ARGV[4], 'state', 'queued', 'token', 0, 'attempts', 0,
           'entry_id', entry, 'created_ms', now, 'updated_ms', now, 'lane', ARGV[5])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1])
end
return {'created', ARGV[1], 'queued'}
