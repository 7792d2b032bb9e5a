-- unread.lua: give back an entry read but not claimed (the node began draining meanwhile).
--
-- The entry is acked and the job gets a fresh one, so any node can read it now instead of
-- waiting for XAUTOCLAIM after a lease timeout. A job that is not queued on this entry is left.
--
-- KEYS[1]  {prefix}job:{video_id}  hash    entry_id
-- KEYS[2]  {prefix}stream[:lane]   stream  the entry's lane: XACK of the old entry, XADD of the new one
-- ARGV[1]  entry id
-- ARGV[2]  consumer group
-- Returns  1 given back, 0 left as it was
local j = redis.call('HMGET', KEYS[1], 'state', 'entry_id', 'payload')
if j[1] ~= 'queued' or j[2] ~= ARGV[1] then return 0 end
local entry = redis.call('XADD', KEYS[2], '*', 'payload', j[3])
redis.call('HSET', KEYS[1], 'entry_id', entry)
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
return 1
