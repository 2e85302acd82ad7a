-- All sessions of an exam and the exam seq they include, atomically: a dashboard that loads
-- this and then applies events with a greater seq misses nothing and applies nothing twice.
--
-- KEYS[1] exam seq counter, KEYS[2] set of the exam's session ids
-- ARGV[1] key prefix of the exam's session hashes (the id is appended; same hash slot)
-- ARGV[2 ..] only these fields (none: every field)
--
-- Returns {seq, json}: the sessions as ONE JSON array (the stored values are JSON already, so
-- the script only joins them; the caller decodes 5,000 sessions in one call, not 150,000
-- values one by one): objects {"field": value, ...}, or with fields given, arrays of their
-- values in that order (null where missing).

local rows = {}
local some = #ARGV > 1
local names = {}
for i = 2, #ARGV do
  names[#names + 1] = ARGV[i]
end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if some then
    local values = redis.call('HMGET', ARGV[1] .. id, unpack(names))
    if values[1] then
      for i = 1, #names do
        if not values[i] then
          values[i] = 'null'
        end
      end
      rows[#rows + 1] = '[' .. table.concat(values, ',') .. ']'
    end
  else
    local fields = redis.call('HGETALL', ARGV[1] .. id)
    if #fields > 0 then
      local parts = {}
      for k = 1, #fields, 2 do
        parts[#parts + 1] = '"' .. fields[k] .. '":' .. fields[k + 1]
      end
      rows[#rows + 1] = '{' .. table.concat(parts, ',') .. '}'
    end
  end
end
return {tonumber(redis.call('GET', KEYS[1]) or '0'), '[' .. table.concat(rows, ',') .. ']'}
