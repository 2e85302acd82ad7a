-- Hand undrained outbox entries of one exam to one drainer (consumer), under a lease so that
-- one consumer drains an exam at a time, in order. Entries a previous consumer read but never
-- acknowledged (it died, or its SQL write failed) are claimed again first.
--
-- KEYS[1] exam outbox (stream), KEYS[2] the exam's drain lease
-- ARGV[1] consumer name, ARGV[2] max entries, ARGV[3] lease (ms)
--
-- Returns false when another consumer holds the lease, else a list of {id, fields}.

local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return false
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
redis.pcall('XGROUP', 'CREATE', KEYS[1], 'drain', '0')
local claimed = redis.call('XAUTOCLAIM', KEYS[1], 'drain', ARGV[1], 0, '0-0', 'COUNT', ARGV[2])
local entries = {}
for _, entry in ipairs(claimed[2]) do
  if entry and entry[2] then
    entries[#entries + 1] = entry
  end
end
if #entries > 0 then
  return entries
end
local read = redis.call('XREADGROUP', 'GROUP', 'drain', ARGV[1], 'COUNT', ARGV[2],
                        'STREAMS', KEYS[1], '>')
if not read then
  return {}
end
return read[1][2]
