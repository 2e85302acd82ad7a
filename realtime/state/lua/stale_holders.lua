-- Sessions of an exam still marked connected whose holder was last heard of before a time, or
-- whose holder's connection was made on a node that stopped beating: the sweeper's question,
-- answered inside Redis so only the few ids cross the network. One slice of the exam's
-- sessions per call (SSCAN), so Redis is never held for the whole exam at once: the caller
-- goes on from the cursor returned until it is "0".
--
-- KEYS[1] set of the exam's session ids
-- ARGV[1] key prefix of the exam's session hashes, ARGV[2] the cut-off time (seconds),
-- ARGV[3] SSCAN cursor ("0" to begin), ARGV[4] sessions per slice (SSCAN COUNT),
-- ARGV[5..] dead node ids (a connection id is "<node>-<random>", stored JSON-encoded)
--
-- Returns {next cursor, session id, ...}.

local cutoff = tonumber(ARGV[2])
local dead = {}
for i = 5, #ARGV do
  dead[ARGV[i]] = true
end
local scan = redis.call('SSCAN', KEYS[1], ARGV[3], 'COUNT', ARGV[4])
local out = {scan[1]}
for _, id in ipairs(scan[2]) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'connected', 'last_seen', 'conn_id')
  if fields[1] == 'true' then
    local seen = tonumber(fields[2] or '')
    local node = string.match(fields[3] or '', '^"([^-"]+)%-')
    if seen == nil or seen < cutoff or (node and dead[node]) then
      out[#out + 1] = id
    end
  end
end
return out
