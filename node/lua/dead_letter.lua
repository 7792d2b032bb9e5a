-- dead_letter.lua: a malformed stream entry goes to the DLQ under its own record, and is acked.
--
-- The record id is "entry:{stream id}", which no valid video_id can be, so a bad entry never
-- touches a real job's record.
--
-- KEYS[1]  {prefix}job:entry:{id}  hash    the dead-letter record (created)
-- KEYS[2]  {prefix}stream[:lane]   stream  XACK of the entry
-- KEYS[3]  {prefix}dlq             zset    record id -> ms
-- ARGV[1]  entry id
-- ARGV[2]  consumer group
-- ARGV[3]  record id ("entry:{entry id}")
-- ARGV[4]  the entry as received, truncated
-- ARGV[5]  error JSON {code, message, retryable}
-- Returns  1
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'video_id', ARGV[3], 'state', 'dead', 'malformed', 1,
           'entry_raw', ARGV[4], 'error', ARGV[5], 'token', 0, 'attempts', 0,
           'created_ms', now, 'updated_ms', now, 'finished_ms', now)
redis.call('ZADD', KEYS[3], now, ARGV[3])
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
return 1
