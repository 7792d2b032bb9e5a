-- trim_stream.lua: drop stream entries every consumer group is done with, never an unacked one.
--
-- Keeps everything from the oldest entry still pending in any group, and everything a group has
-- not been delivered yet (after its last-delivered-id). ARGV[1] = "1" only reports.
--
-- KEYS[1]  {prefix}stream[:lane]  stream  XTRIM MINID (one lane per call)
-- ARGV[1]  "1" = dry run
-- Returns  {entries trimmed (or that would be), MINID kept from}
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end

if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local minid = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = {}
  for i = 1, #group, 2 do g[group[i]] = group[i + 1] end
  local ms, seq = parse(g['last-delivered-id'])
  local keep = ms .. '-' .. (seq + 1)
  if g['pending'] > 0 then
    local summary = redis.call('XPENDING', KEYS[1], g['name'])
    keep = summary[2]
  end
  if not minid or less(keep, minid) then minid = keep end
end
if not minid then return {0, ''} end
if ARGV[1] == '1' then
  local older = redis.call('XRANGE', KEYS[1], '-', '(' .. minid)
  return {#older, minid}
end
return {redis.call('XTRIM', KEYS[1], 'MINID', '=', minid), minid}
