-- claim.lua: take the job behind a stream entry: a new fencing token, a lease, an attempt record.
--
-- The job record is the source of truth; the entry only says "look at this job". An entry that
-- is not the job's live entry (a duplicate, or one left from before a retry) is acked and
-- skipped. A running job whose lease expired lost its holder: that attempt is closed as
-- lease_expired (it counts, so a job that crashes every node ends in the DLQ) and the job is
-- claimed again with token + 1, which fences off every later write of the silent holder.
--
-- KEYS[1]  {prefix}job:{video_id}  hash    the job record (created here for an entry written
--                                          straight to the stream by another producer)
-- KEYS[2]  {prefix}stream[:lane]   stream  the entry's lane: XACK of skipped or exhausted entries
-- KEYS[3]  {prefix}running         zset    video_id -> lease expiry ms
-- KEYS[4]  {prefix}dlq             zset    video_id -> ms it was dead-lettered
-- ARGV[1]  entry id
-- ARGV[2]  consumer group
-- ARGV[3]  owner: the consumer (node/slot) taking the lease
-- ARGV[4]  node id, for the attempt record
-- ARGV[5]  lease in ms
-- ARGV[6]  payload (canonical JSON), ARGV[7] its sha256 hex
-- ARGV[8]  max attempts
-- ARGV[9]  video_id
-- ARGV[10] the entry's lane, for a record created here
-- Returns  {"claimed", token, attempts}  (also when ARGV[3] already holds it: a replayed call)
--          {"busy"}                      another owner holds a live lease; entry left pending
--          {"skipped", why}              entry acked, nothing to do
--          {"exhausted"}                 crashed holders used every attempt: job failed, in DLQ
--          {"conflict"}                  the job exists with another payload; entry left for
--                                        the caller to dead-letter
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local job, vid = KEYS[1], ARGV[9]

if redis.call('EXISTS', job) == 0 then
  redis.call('HSET', job, 'video_id', vid, 'payload', ARGV[6], 'payload_sha', ARGV[7],
             'idempotency_key', '', 'state', 'queued', 'token', 0, 'attempts', 0,
             'entry_id', ARGV[1], 'created_ms', now, 'updated_ms', now, 'lane', ARGV[10])
end

local j = redis.call('HMGET', job, 'payload_sha', 'state', 'entry_id', 'token', 'attempts',
                     'lease_owner', 'lease_until_ms')
local sha, state, entry_id, token = j[1], j[2], j[3], tonumber(j[4])
local attempts, owner, lease_until = tonumber(j[5]), j[6], tonumber(j[7] or 0)

if entry_id ~= ARGV[1] then
  if sha ~= ARGV[7] then return {'conflict'} end
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  return {'skipped', 'stale_entry'}
end

if state == 'running' then
  if lease_until > now then
    if owner == ARGV[3] then return {'claimed', token, attempts} end
    return {'busy'}
  end
  local key = 'attempt:' .. token
  local attempt = cjson.decode(redis.call('HGET', job, key) or '{}')
  attempt['ended_ms'] = lease_until
  attempt['outcome'] = 'lease_expired'
  attempt['error_code'] = 'lease_expired'
  redis.call('HSET', job, key, cjson.encode(attempt))
  redis.call('ZREM', KEYS[3], vid)
  if attempts >= tonumber(ARGV[8]) then
    local err = cjson.encode({code = 'lease_expired', retryable = true,
      message = 'the node running the job went silent on every attempt (' .. attempts .. ')'})
    redis.call('HSET', job, 'state', 'failed', 'error', err, 'finished_ms', now, 'updated_ms', now,
               'lease_owner', '', 'lease_until_ms', 0, 'entry_id', '')
    redis.call('ZADD', KEYS[4], now, vid)
    redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
    return {'exhausted'}
  end
elseif state ~= 'queued' then
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  return {'skipped', state}
end

token = redis.call('HINCRBY', job, 'token', 1)
attempts = redis.call('HINCRBY', job, 'attempts', 1)
local attempt = cjson.encode({token = token, node = ARGV[4], owner = ARGV[3], started_ms = now,
                              outcome = 'running'})
redis.call('HSET', job, 'state', 'running', 'lease_owner', ARGV[3],
           'lease_until_ms', now + tonumber(ARGV[5]), 'updated_ms', now, 'attempt:' .. token, attempt)
redis.call('HDEL', job, 'progress', 'next_attempt_ms')
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), vid)
return {'claimed', token, attempts}
