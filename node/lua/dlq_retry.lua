-- dlq_retry.lua: put a failed or dead job back on the queue with its attempt count reset.
--
-- The attempt history stays in the record (tokens keep growing), so `status` shows every try.
--
-- KEYS[1]  {prefix}job:{video_id}  hash    state -> queued, attempts -> 0, entry_id
-- KEYS[2]  {prefix}dlq             zset    video_id removed
-- KEYS[3]  {prefix}stream:rush     stream  the job's lane (its record's `lane`; none = normal)
-- KEYS[4]  {prefix}stream          stream  gets the job's new entry {payload}
-- KEYS[5]  {prefix}stream:bulk     stream
-- ARGV[1]  video_id
-- Returns  1 requeued, 0 not in the DLQ, -1 a malformed entry (nothing to run)
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local j = redis.call('HMGET', KEYS[1], 'state', 'payload', 'malformed', 'lane')
if j[1] ~= 'failed' and j[1] ~= 'dead' then return 0 end
if j[3] == '1' then return -1 end
local stream = ({rush = KEYS[3], bulk = KEYS[5]})[j[4]] or KEYS[4]
local entry = redis.call('XADD', stream, '*', 'payload', j[2])
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'entry_id', entry, 'updated_ms', now)
redis.call('HDEL', KEYS[1], 'finished_ms', 'finished_token')
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
