-- finish.lua: end the caller's attempt, fenced by its token: commit, retry, fail or release.
--
-- Only the holder of the job's current token may finish it. A node that lost its lease (paused,
-- partitioned) gets 0 and must discard its work, so it can never overwrite the result of the
-- node that took over. A replay of a call that already went through (the reply was lost) gets 2.
-- The stream entry is acked here, in the same step as the state write, never before.
--
-- KEYS[1]  {prefix}job:{video_id}  hash    state, result/error, attempt:{token}, lease fields
-- KEYS[2]  {prefix}stream[:lane]   stream  the job's lane: XACK of its entry; XADD of a new one (released)
-- KEYS[3]  {prefix}running         zset    video_id removed
-- KEYS[4]  {prefix}delayed         zset    video_id -> due ms (retry)
-- KEYS[5]  {prefix}dlq             zset    video_id -> ms (failed, dead)
-- KEYS[6]  {prefix}finished        zset    video_id -> ms (succeeded; cleanup reads it)
-- KEYS[7]  {prefix}refusals        hash    "{node}|commit" or "{node}|finish" -> refused calls
-- KEYS[8]  {prefix}results         stream  one entry per finished render (node/fleet_stats.py),
--                                          in this same step, so the fleet's figures lose none
-- ARGV[1]  fencing token
-- ARGV[2]  owner (consumer)
-- ARGV[3]  consumer group
-- ARGV[4]  outcome: succeeded | retry | failed | dead | released
-- ARGV[5]  result JSON (succeeded), else ""
-- ARGV[6]  error JSON {code, message, retryable}, else ""
-- ARGV[7]  retry delay in ms (retry)
-- ARGV[8]  node id (refusal counting)
-- ARGV[9]  the render's summary for {prefix}results: JSON {field: value}, "" for none (the
--          entry gets the outcome beside it)
-- ARGV[10] {prefix}results is trimmed to about this many entries
-- Returns  {1, state} written, {2, state} already written by this token, {0, state} refused
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local job, token, outcome = KEYS[1], ARGV[1], ARGV[4]
local j = redis.call('HMGET', job, 'token', 'state', 'lease_owner', 'finished_token', 'entry_id',
                     'video_id', 'payload')

if j[4] == token then
  return {2, j[2]}
end
if j[1] ~= token or j[2] ~= 'running' or j[3] ~= ARGV[2] then
  local kind = (outcome == 'succeeded') and 'commit' or 'finish'
  redis.call('HINCRBY', KEYS[7], ARGV[8] .. '|' .. kind, 1)
  return {0, j[2] or 'missing'}
end

local vid = j[6]
local key = 'attempt:' .. token
local attempt = cjson.decode(redis.call('HGET', job, key) or '{}')
attempt['ended_ms'] = now
if ARGV[6] ~= '' then
  local err = cjson.decode(ARGV[6])
  attempt['error_code'] = err['code']
  attempt['message'] = err['message']
end

redis.call('XACK', KEYS[2], ARGV[3], j[5])
redis.call('ZREM', KEYS[3], vid)
redis.call('HSET', job, 'finished_token', token, 'lease_owner', '', 'lease_until_ms', 0,
           'updated_ms', now, 'entry_id', '')

if outcome == 'succeeded' then
  attempt['outcome'] = 'succeeded'
  redis.call('HSET', job, 'state', 'succeeded', 'result', ARGV[5], 'committed_token', token,
             'finished_ms', now)
  redis.call('HDEL', job, 'error', 'next_attempt_ms')
  redis.call('ZADD', KEYS[6], now, vid)
elseif outcome == 'retry' then
  local due = now + tonumber(ARGV[7])
  attempt['outcome'] = 'failed'
  redis.call('HSET', job, 'state', 'retrying', 'error', ARGV[6], 'next_attempt_ms', due)
  redis.call('ZADD', KEYS[4], due, vid)
elseif outcome == 'failed' or outcome == 'dead' then
  attempt['outcome'] = 'failed'
  redis.call('HSET', job, 'state', outcome, 'error', ARGV[6], 'finished_ms', now)
  redis.call('ZADD', KEYS[5], now, vid)
elseif outcome == 'released' then
  -- stopped at a batch boundary (drain, lost lease): back in the queue at once, and the
  -- attempt does not count
  attempt['outcome'] = 'released'
  redis.call('HINCRBY', job, 'attempts', -1)
  local entry = redis.call('XADD', KEYS[2], '*', 'payload', j[7])
  redis.call('HSET', job, 'state', 'queued', 'entry_id', entry)
else
  return redis.error_reply('finish.lua: unknown outcome ' .. outcome)
end
redis.call('HSET', job, key, cjson.encode(attempt))
if ARGV[9] ~= '' then
  local fields = {'outcome', outcome}
  for name, value in pairs(cjson.decode(ARGV[9])) do
    fields[#fields + 1] = name
    fields[#fields + 1] = tostring(value)
  end
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[10], '*', unpack(fields))
end
return {1, outcome == 'retry' and 'retrying' or (outcome == 'released' and 'queued' or outcome)}
