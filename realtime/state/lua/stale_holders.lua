-- Sessions of an exam still marked connected whose holder was last heard of before a time, or
-- whose holder's connection was made on a node that stopped beating: the sweeper's question,
-- answered inside Redis so only the few ids cross the network.
--
-- KEYS[1] set of the exam's session ids
-- ARGV[1] key prefix of the exam's session hashes, ARGV[2] the cut-off time (seconds),
-- ARGV[3..] dead node ids (a connection id is "<node>-<random>", stored JSON-encoded)
--
-- Returns the session ids.

local cutoff = tonumber(ARGV[2])
local dead = {}
for i = 3, #ARGV do
  dead[ARGV[i]] = true
end
local stale = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'connected', 'last_seen', 'conn_id')
  if fields[1] == 'true' then
    local seen = tonumber(fields[2] or '')
    local node = string.match(fields[3] or '', '^"([^-"]+)%-')
    if seen == nil or seen < cutoff or (node and dead[node]) then
      stale[#stale + 1] = id
    end
  end
end
return stale
