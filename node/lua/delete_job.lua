-- delete_job.lua: delete a finished job's record if it is still in an allowed state and old enough.
--
-- Used by cleanup (succeeded jobs past JOBS_MAX_AGE_HOURS) and `dlq purge`. Re-checks inside
-- the script, so a job retried or resubmitted since the caller listed it is left alone.
--
-- KEYS[1]  {prefix}job:{video_id}  hash    deleted
-- KEYS[2]  {prefix}idem:{key}      string  deleted when it still names this job
-- KEYS[3]  index zset              zset    ({prefix}finished or {prefix}dlq) video_id removed
-- ARGV[1]  video_id
-- ARGV[2]  cutoff ms: only jobs finished at or before it
-- ARGV[3]  allowed states, comma-separated
-- Returns  1 deleted, 0 left
local j = redis.call('HMGET', KEYS[1], 'state', 'finished_ms', 'idempotency_key')
if not j[1] then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 0
end
if not string.find(',' .. ARGV[3] .. ',', ',' .. j[1] .. ',', 1, true) then return 0 end
if tonumber(j[2] or 0) > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
if j[3] and j[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
