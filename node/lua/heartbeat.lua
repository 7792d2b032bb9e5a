-- heartbeat.lua: a fenced write by the lease holder: extend the lease and/or record progress.
--
-- Refused unless the caller still holds the job's current fencing token and lease; a refusal is
-- counted under {node}|heartbeat or {node}|progress in the refusals hash.
-- Extending also resets the idle time of the job's pending stream entry (XCLAIM to the same
-- consumer, JUSTID), so XAUTOCLAIM on other nodes only ever picks up entries of silent holders.
--
-- KEYS[1]  {prefix}job:{video_id}  hash    lease_until_ms, progress, updated_ms
-- KEYS[2]  {prefix}stream[:lane]   stream  XCLAIM of the job's pending entry (idle reset)
-- KEYS[3]  {prefix}running         zset    video_id -> lease expiry ms
-- KEYS[4]  {prefix}refusals        hash    "{node}|{kind}" -> refused writes
-- ARGV[1]  fencing token
-- ARGV[2]  owner (consumer)
-- ARGV[3]  lease in ms; "0" = only write progress
-- ARGV[4]  consumer group
-- ARGV[5]  progress JSON; "" = none
-- ARGV[6]  node id (refusal counting)
-- Returns  1 held (written), 2 this token already finished the job (a renewal racing the
--          final write: nothing to do), 0 refused: the lease is lost
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local j = redis.call('HMGET', KEYS[1], 'token', 'state', 'lease_owner', 'entry_id', 'video_id',
                     'finished_token')
if j[6] == ARGV[1] then return 2 end
if j[1] ~= ARGV[1] or j[2] ~= 'running' or j[3] ~= ARGV[2] then
  local kind = (ARGV[5] ~= '') and 'progress' or 'heartbeat'
  redis.call('HINCRBY', KEYS[4], ARGV[6] .. '|' .. kind, 1)
  return 0
end
local lease_ms = tonumber(ARGV[3])
if lease_ms > 0 then
  redis.call('HSET', KEYS[1], 'lease_until_ms', now + lease_ms, 'updated_ms', now)
  redis.call('ZADD', KEYS[3], now + lease_ms, j[5])
  redis.call('XCLAIM', KEYS[2], ARGV[4], ARGV[2], 0, j[4], 'JUSTID')
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[5], 'updated_ms', now)
end
return 1
