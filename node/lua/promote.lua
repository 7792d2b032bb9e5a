-- promote.lua: move one due retry from the delayed set back onto the stream.
--
-- Several nodes promote concurrently; the ZREM decides which one does it, so a job gets exactly
-- one new entry.
--
-- KEYS[1]  {prefix}job:{video_id}  hash    state retrying -> queued, entry_id
-- KEYS[2]  {prefix}delayed         zset    video_id -> due ms
-- KEYS[3]  {prefix}stream:rush     stream  the job's lane (its record's `lane`; none = normal)
-- KEYS[4]  {prefix}stream          stream  gets the job's new entry {payload}
-- KEYS[5]  {prefix}stream:bulk     stream
-- ARGV[1]  video_id
-- Returns  1 promoted, 0 not due, already promoted, or no longer retrying
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not due or tonumber(due) > now then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local j = redis.call('HMGET', KEYS[1], 'state', 'payload', 'lane')
if j[1] ~= 'retrying' then return 0 end
local stream = ({rush = KEYS[3], bulk = KEYS[5]})[j[3]] or KEYS[4]
local entry = redis.call('XADD', stream, '*', 'payload', j[2])
redis.call('HSET', KEYS[1], 'state', 'queued', 'entry_id', entry, 'updated_ms', now)
redis.call('HDEL', KEYS[1], 'next_attempt_ms')
return 1
