-- One slice of an exam's sessions (SSCAN), those fields of each, and the exam's seq before
-- them: what a process's copy of the exam (`RedisStore.command_view`) is made from, slice by
-- slice, so Redis is never held for the whole exam at once. A session read here includes every
-- event up to the seq returned, and maybe later ones: its version tells which.
--
-- KEYS[1] exam seq counter, KEYS[2] set of the exam's session ids
-- ARGV[1] key prefix of the exam's session hashes, ARGV[2] SSCAN cursor ("0" to begin),
-- ARGV[3] sessions per slice (SSCAN COUNT), ARGV[4] a key of the exam that never exists,
-- ARGV[5 ..] the fields. A member whose hash reads as missing is confirmed missing as in
-- snapshot.lua (refused on the master importing the slot mid-migration).
--
-- Returns {seq, next cursor, json}: json as snapshot.lua's with fields (arrays of the values
-- in that order, null where missing).

local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local scan = redis.call('SSCAN', KEYS[2], ARGV[2], 'COUNT', ARGV[3])
local names = {}
for i = 5, #ARGV do
  names[#names + 1] = ARGV[i]
end
local rows = {}
for _, id in ipairs(scan[2]) do
  local values = redis.call('HMGET', ARGV[1] .. id, unpack(names))
  if values[1] then
    for i = 1, #names do
      if not values[i] then
        values[i] = 'null'
      end
    end
    rows[#rows + 1] = '[' .. table.concat(values, ',') .. ']'
  else
    redis.call('EXISTS', ARGV[1] .. id, ARGV[4])
  end
end
return {seq, scan[1], '[' .. table.concat(rows, ',') .. ']'}
