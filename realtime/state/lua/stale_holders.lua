-- Sessions of an exam still marked connected whose holder was last heard of before a time:
-- the sweeper's question, answered inside Redis so only the few ids cross the network.
--
-- KEYS[1] set of the exam's session ids
-- ARGV[1] key prefix of the exam's session hashes, ARGV[2] the cut-off time (seconds)
--
-- Returns the session ids.

local cutoff = tonumber(ARGV[2])
local stale = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'connected', 'last_seen')
  if fields[1] == 'true' then
    local seen = tonumber(fields[2] or '')
    if seen == nil or seen < cutoff then
      stale[#stale + 1] = id
    end
  end
end
return stale
