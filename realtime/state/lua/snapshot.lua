-- All sessions of an exam and the exam seq they include, atomically: a dashboard that loads
-- this and then applies events with a greater seq misses nothing and applies nothing twice.
--
-- KEYS[1] exam seq counter, KEYS[2] set of the exam's session ids
-- ARGV[1] key prefix of the exam's session hashes (the id is appended; same hash slot)
-- ARGV[2 ..] only these fields (none: every field)
--
-- Returns {seq, {field, value, ...}, ...} (every field), or {seq, {value, ...}, ...} in the
-- order of ARGV[2 ..] (some fields).

local result = {tonumber(redis.call('GET', KEYS[1]) or '0')}
local some = #ARGV > 1
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local fields
  if some then
    fields = redis.call('HMGET', ARGV[1] .. id, unpack(ARGV, 2))
    if fields[1] then
      result[#result + 1] = fields
    end
  else
    fields = redis.call('HGETALL', ARGV[1] .. id)
    if #fields > 0 then
      result[#result + 1] = fields
    end
  end
end
return result
