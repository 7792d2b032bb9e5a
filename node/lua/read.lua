-- read.lua: the next new entry for a consumer, looking at the lanes' streams in the given order.
--
-- One round trip whatever the number of lanes; XREADGROUP does not block inside a script (the
-- caller blocks on every lane at once when this finds nothing).
--
-- KEYS[1..n]  {prefix}stream[:lane]  stream  the lanes' streams, in the order to look at them
-- ARGV[1]     consumer group
-- ARGV[2]     consumer
-- Returns     {lane index (1-based), entry id, {field, value, ...}} or {} when every lane is empty
for i, stream in ipairs(KEYS) do
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', stream, '>')
  if reply then
    local entry = reply[1][2][1]
    return {i, entry[1], entry[2]}
  end
end
return {}
