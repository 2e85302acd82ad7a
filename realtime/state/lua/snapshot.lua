-- All sessions of an exam and the exam seq they include, atomically: a dashboard that loads
-- this and then applies events with a greater seq misses nothing and applies nothing twice.
--
-- KEYS[1] exam seq counter, KEYS[2] set of the exam's session ids
-- ARGV[1] key prefix of the exam's session hashes (the id is appended; same hash slot)
-- ARGV[2] a key of the exam that never exists, ARGV[3 ..] only these fields (none: every field)
--
-- A member whose hash reads as missing is confirmed missing (EXISTS of it with ARGV[2]): on
-- the master importing the exam's slot mid-migration (a Redis Cluster), a session not moved
-- yet reads as missing, and that EXISTS is refused there (Redis's TRYAGAIN case), failing
-- the call rather than leaving an existing session out. At rest it answers 0 and the member
-- is left out.
--
-- Returns {seq, json}: the sessions as ONE JSON array (the stored values are JSON already, so
-- the script only joins them; the caller decodes 5,000 sessions in one call, not 150,000
-- values one by one): objects {"field": value, ...}, or with fields given, arrays of their
-- values in that order (null where missing).

local rows = {}
local some = #ARGV > 2
local names = {}
for i = 3, #ARGV do
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
    else
      redis.call('EXISTS', ARGV[1] .. id, ARGV[2])
    end
  else
    local fields = redis.call('HGETALL', ARGV[1] .. id)
    if #fields > 0 then
      local parts = {}
      for k = 1, #fields, 2 do
        parts[#parts + 1] = '"' .. fields[k] .. '":' .. fields[k + 1]
      end
      rows[#rows + 1] = '{' .. table.concat(parts, ',') .. '}'
    else
      redis.call('EXISTS', ARGV[1] .. id, ARGV[2])
    end
  end
end
return {tonumber(redis.call('GET', KEYS[1]) or '0'), '[' .. table.concat(rows, ',') .. ']'}
